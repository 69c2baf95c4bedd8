//! Who is calling: API keys (stored as SHA-256 digests) and JWTs (HS256,
//! RS256, ES256; issuer, audience and expiry checked; keys from the
//! configuration or a JWKS file). Each route says which it accepts and which
//! scopes it requires.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

use replyway_shared::settings::{InvalidSetting, Secret};

/// How a route authenticates its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    /// Anyone (the default).
    #[default]
    None,
    /// An API key.
    ApiKey,
    /// A JWT.
    Jwt,
    /// An API key or a JWT.
    Any,
}

/// One API key of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The principal's id (sent to services as `client-id`).
    pub id: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// JWT settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` (one of).
    pub audience: Vec<String>,
    /// Accepted algorithms (`HS256`, `RS256`, `ES256`).
    pub algorithms: Vec<String>,
    /// Shared secret for HS256.
    pub hs256_secret: Option<Secret>,
    /// PEM public keys (RSA or EC P-256).
    pub public_keys_pem: Vec<String>,
    /// A JWKS file (`{"keys": [...]}`), read at start.
    pub jwks_file: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim naming the principal.
    pub principal_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: Vec::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            hs256_secret: None,
            public_keys_pem: Vec::new(),
            jwks_file: None,
            leeway: Duration::from_secs(30),
            principal_claim: "sub".into(),
        }
    }
}

/// The `[auth]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Header carrying API keys: `authorization` (as `Bearer <key>`) or a header
    /// of its own (the raw key), e.g. `x-api-key`.
    pub api_key_header: String,
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// The API keys.
    pub api_keys: Vec<ApiKeyConfig>,
    /// JWT validation; unset: JWTs are refused.
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_key_header: "authorization".into(),
            realm: "replyway".into(),
            api_keys: Vec::new(),
            jwt: None,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its id.
    pub id: String,
    /// Its scopes.
    pub scopes: HashSet<String>,
    /// A JWT's top-level claims of a string, number or boolean value, as
    /// text (at most [`MAX_CLAIMS`], each at most 256 bytes); none for an API key.
    pub claims: BTreeMap<String, String>,
}

/// Most claims of a JWT kept for lane rules.
pub const MAX_CLAIMS: usize = 32;

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials.
    #[error("authentication required")]
    Missing,
    /// Credentials that do not check out.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// Authenticated, but without a required scope.
    #[error("the scope {0} is required")]
    Forbidden(String),
}

struct JwtKey {
    kid: Option<String>,
    key: DecodingKey,
}

struct Jwt {
    keys: Vec<JwtKey>,
    validation: Validation,
    principal_claim: String,
}

/// The validated authentication settings.
pub struct Authenticator {
    api_key_header: axum::http::HeaderName,
    bearer_api_keys: bool,
    realm: String,
    api_keys: Vec<([u8; 32], Principal)>,
    jwt: Option<Jwt>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.api_keys.len())
            .field("jwt", &self.jwt.is_some())
            .finish_non_exhaustive()
    }
}

fn algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

impl Authenticator {
    /// Validates `[auth]`.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the bad setting.
    pub fn new(config: &AuthConfig) -> Result<Self, InvalidSetting> {
        let api_key_header = axum::http::HeaderName::from_bytes(
            config.api_key_header.to_ascii_lowercase().as_bytes(),
        )
        .map_err(|_| InvalidSetting::new("auth.api_key_header", "not a header name"))?;
        let mut api_keys = Vec::new();
        let mut ids = HashSet::new();
        for (i, k) in config.api_keys.iter().enumerate() {
            let at = |f: &str| format!("auth.api_keys[{i}].{f}");
            if k.id.is_empty() || k.id.len() > 128 || k.id.chars().any(char::is_control) {
                return Err(InvalidSetting::new(
                    at("id"),
                    "must be 1-128 printable characters",
                ));
            }
            if !ids.insert(k.id.clone()) {
                return Err(InvalidSetting::new(at("id"), "is used twice"));
            }
            let digest = <[u8; 32] as hex::FromHex>::from_hex(&k.sha256).map_err(|_| {
                InvalidSetting::new(at("sha256"), "must be 64 hex digits (SHA-256 of the key)")
            })?;
            api_keys.push((
                digest,
                Principal {
                    id: k.id.clone(),
                    scopes: k.scopes.iter().cloned().collect(),
                    claims: BTreeMap::new(),
                },
            ));
        }
        let jwt = config.jwt.as_ref().map(Self::jwt).transpose()?;
        Ok(Self {
            bearer_api_keys: api_key_header == axum::http::header::AUTHORIZATION,
            api_key_header,
            realm: config.realm.clone(),
            api_keys,
            jwt,
        })
    }

    fn jwt(c: &JwtConfig) -> Result<Jwt, InvalidSetting> {
        let mut algorithms = Vec::new();
        for a in &c.algorithms {
            algorithms.push(algorithm(a).ok_or_else(|| {
                InvalidSetting::new(
                    "auth.jwt.algorithms",
                    format!("{a:?} is not HS256, RS256 or ES256"),
                )
            })?);
        }
        if algorithms.is_empty() {
            return Err(InvalidSetting::new(
                "auth.jwt.algorithms",
                "name at least one",
            ));
        }
        let mut keys = Vec::new();
        if let Some(secret) = &c.hs256_secret {
            if secret.expose().len() < 32 {
                return Err(InvalidSetting::new(
                    "auth.jwt.hs256_secret",
                    "must be at least 32 bytes",
                ));
            }
            keys.push(JwtKey {
                kid: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
        }
        for (i, pem) in c.public_keys_pem.iter().enumerate() {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
                .map_err(|_| {
                    InvalidSetting::new(
                        format!("auth.jwt.public_keys_pem[{i}]"),
                        "not an RSA or EC public key in PEM",
                    )
                })?;
            keys.push(JwtKey { kid: None, key });
        }
        if let Some(path) = &c.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InvalidSetting::new("auth.jwt.jwks_file", e.to_string()))?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .map_err(|e| InvalidSetting::new("auth.jwt.jwks_file", e.to_string()))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| InvalidSetting::new("auth.jwt.jwks_file", e.to_string()))?;
                keys.push(JwtKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(InvalidSetting::new(
                "auth.jwt",
                "configure hs256_secret, public_keys_pem or jwks_file",
            ));
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = c.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &c.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => return Err(InvalidSetting::new("auth.jwt.issuer", "is required")),
        }
        if c.audience.is_empty() {
            return Err(InvalidSetting::new(
                "auth.jwt.audience",
                "name at least one",
            ));
        }
        validation.set_audience(&c.audience);
        Ok(Jwt {
            keys,
            validation,
            principal_claim: c.principal_claim.clone(),
        })
    }

    /// Whether JWTs are configured.
    pub fn has_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// The `WWW-Authenticate` value for a refusal.
    pub fn challenge(&self, error: &AuthError) -> String {
        let scheme = if self.bearer_api_keys || self.jwt.is_some() {
            "Bearer"
        } else {
            "ApiKey"
        };
        let realm = &self.realm;
        match error {
            AuthError::Missing => format!("{scheme} realm=\"{realm}\""),
            AuthError::Invalid(_) => format!("{scheme} realm=\"{realm}\", error=\"invalid_token\""),
            AuthError::Forbidden(scope) => {
                format!(
                    "{scheme} realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
                )
            }
        }
    }

    /// The header API keys come in.
    pub fn api_key_header(&self) -> axum::http::HeaderName {
        self.api_key_header.clone()
    }

    /// Authenticates a request for a route that accepts `mode` and requires
    /// `scopes`. `Ok(None)` for a route open to anyone.
    ///
    /// # Errors
    /// [`AuthError`]: `Missing`/`Invalid` → `401`, `Forbidden` → `403`.
    pub fn check(
        &self,
        mode: RouteAuth,
        scopes: &[String],
        headers: &HeaderMap,
    ) -> Result<Option<Principal>, AuthError> {
        let principal = match mode {
            RouteAuth::None => return Ok(None),
            RouteAuth::ApiKey => self.api_key(headers)?,
            RouteAuth::Jwt => self.jwt_principal(headers)?,
            RouteAuth::Any => match self.api_key(headers) {
                Ok(p) => p,
                Err(AuthError::Missing) | Err(AuthError::Invalid(_)) if self.jwt.is_some() => {
                    self.jwt_principal(headers)?
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(missing) = scopes.iter().find(|s| !principal.scopes.contains(*s)) {
            return Err(AuthError::Forbidden(missing.clone()));
        }
        Ok(Some(principal))
    }

    /// The caller, if it presents valid credentials of any configured kind
    /// (for reply pick-up); `Ok(None)` when it presents none.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for credentials that do not check out.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
        if self.api_keys.is_empty() && self.jwt.is_none() {
            // Nothing to check against: credentials mean nothing here.
            return Ok(None);
        }
        match self.check(RouteAuth::Any, &[], headers) {
            Ok(p) => Ok(p),
            Err(AuthError::Missing) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("malformed authorization header"))?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid(
            "authorization is not \"Bearer <credentials>\"",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Invalid(
                "authorization is not \"Bearer <credentials>\"",
            ));
        }
        Ok(Some(token.trim()))
    }

    fn api_key(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let key = if self.bearer_api_keys {
            Self::bearer(headers)?
        } else {
            headers
                .get(&self.api_key_header)
                .map(|v| {
                    v.to_str()
                        .map_err(|_| AuthError::Invalid("malformed API key"))
                })
                .transpose()?
        };
        let key = key.ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        // Compare every digest in full and in constant time, whatever
        // matches: no early exit.
        let mut found = None;
        for (stored, principal) in &self.api_keys {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(principal);
            }
        }
        found.cloned().ok_or(AuthError::Invalid("unknown API key"))
    }

    fn jwt_principal(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let jwt = self
            .jwt
            .as_ref()
            .ok_or(AuthError::Invalid("JWTs are not accepted"))?;
        let token = Self::bearer(headers)?.ok_or(AuthError::Missing)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token"))?;
        if !jwt.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid("algorithm not accepted"));
        }
        let family = header.alg.family();
        let candidates = jwt.keys.iter().filter(|k| {
            k.key.family() == family
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    _ => true,
                }
        });
        // One algorithm per attempt: the token's, which is accepted and of the key's family.
        let mut validation = jwt.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut last = AuthError::Invalid("no key for this token");
        for candidate in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &candidate.key, &validation) {
                Ok(data) => return principal_of(&data.claims, &jwt.principal_claim),
                Err(e) => {
                    last = AuthError::Invalid(match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                        jsonwebtoken::errors::ErrorKind::ImmatureSignature => "token not yet valid",
                        jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer",
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience",
                        jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                            "a required claim is missing"
                        }
                        _ => "invalid token",
                    });
                }
            }
        }
        Err(last)
    }
}

fn principal_of(claims: &serde_json::Value, claim: &str) -> Result<Principal, AuthError> {
    let id = claims
        .get(claim)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
        .ok_or(AuthError::Invalid("the token names no principal"))?
        .to_owned();
    let mut scopes = HashSet::new();
    if let Some(text) = claims.get("scope").and_then(serde_json::Value::as_str) {
        scopes.extend(text.split_whitespace().map(str::to_owned));
    }
    if let Some(list) = claims.get("scp").and_then(serde_json::Value::as_array) {
        scopes.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    let claims = claims
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            (name.len() <= 256 && text.len() <= 256).then(|| (name.clone(), text))
        })
        .take(MAX_CLAIMS)
        .collect();
    Ok(Principal { id, scopes, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn sha(key: &str) -> String {
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_jwts_plain_claims_are_kept_bounded() {
        let mut claims = serde_json::json!({
            "sub": "c-7", "scope": "a b", "tier": "gold", "level": 3, "vip": true,
            "nested": { "x": 1 }, "list": [1], "long": "x".repeat(300),
        });
        let principal = principal_of(&claims, "sub").unwrap();
        assert_eq!(principal.claims["tier"], "gold");
        assert_eq!(principal.claims["level"], "3");
        assert_eq!(principal.claims["vip"], "true");
        for dropped in ["nested", "list", "long"] {
            assert!(!principal.claims.contains_key(dropped), "{dropped}");
        }
        for n in 0..100 {
            claims[format!("c{n}")] = serde_json::json!("v");
        }
        let principal = principal_of(&claims, "sub").unwrap();
        assert_eq!(principal.claims.len(), MAX_CLAIMS);
    }

    #[test]
    fn api_keys_are_checked_against_their_digests() {
        let auth = Authenticator::new(&AuthConfig {
            api_keys: vec![ApiKeyConfig {
                id: "shop-7".into(),
                sha256: sha("k-123"),
                scopes: vec!["orders:write".into()],
            }],
            ..AuthConfig::default()
        })
        .unwrap();
        let ok = auth
            .check(
                RouteAuth::ApiKey,
                &["orders:write".into()],
                &headers(&[("authorization", "Bearer k-123")]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(ok.id, "shop-7");
        assert_eq!(
            auth.check(
                RouteAuth::ApiKey,
                &[],
                &headers(&[("authorization", "Bearer nope")])
            ),
            Err(AuthError::Invalid("unknown API key"))
        );
        assert_eq!(
            auth.check(RouteAuth::ApiKey, &[], &HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.check(
                RouteAuth::ApiKey,
                &["admin".into()],
                &headers(&[("authorization", "Bearer k-123")])
            ),
            Err(AuthError::Forbidden("admin".into()))
        );
        assert_eq!(
            auth.check(RouteAuth::None, &[], &HeaderMap::new()),
            Ok(None)
        );
    }

    #[test]
    fn digests_are_read_in_either_case() {
        let auth = Authenticator::new(&AuthConfig {
            api_keys: vec![ApiKeyConfig {
                id: "shop-7".into(),
                sha256: sha("k-123").to_ascii_uppercase(),
                scopes: vec![],
            }],
            ..AuthConfig::default()
        })
        .unwrap();
        let who = auth.check(
            RouteAuth::ApiKey,
            &[],
            &headers(&[("authorization", "Bearer k-123")]),
        );
        assert_eq!(who.unwrap().unwrap().id, "shop-7");
    }

    #[test]
    fn gateway_settings_debug_shows_no_secret() {
        let mut settings = crate::config::Settings::default();
        settings.redis.url = "redis://:redis-password-0@127.0.0.1:6379".into();
        settings.correlation_secret = Some("correlation secret of 32 bytes or more".into());
        settings.auth.jwt = Some(JwtConfig {
            hs256_secret: Some("hs256 secret of 32 bytes or more!".into()),
            ..JwtConfig::default()
        });
        let shown = format!("{settings:?}");
        for secret in ["redis-password-0", "correlation secret", "hs256 secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = AuthConfig {
            api_keys: vec![ApiKeyConfig {
                id: "a".into(),
                sha256: "k-123".into(),
                scopes: vec![],
            }],
            ..AuthConfig::default()
        };
        assert_eq!(
            Authenticator::new(&bad).unwrap_err().setting,
            "auth.api_keys[0].sha256"
        );
        let bad = AuthConfig {
            jwt: Some(JwtConfig {
                issuer: Some("i".into()),
                audience: vec!["a".into()],
                ..JwtConfig::default()
            }),
            ..AuthConfig::default()
        };
        assert_eq!(Authenticator::new(&bad).unwrap_err().setting, "auth.jwt");
    }
}
