//! Routes from the configuration: which HTTP requests become which Kafka commands.
//!
//! A path pattern is a `/`-separated list of literal segments and `{name}`
//! parameters (`/accounts/{account}/transfers`); each route is served by axum's
//! router (see `app.rs`), where a literal segment takes precedence over a
//! parameter. A route's record key is a template of literal text,
//! `{correlation_id}` and `{param.<name>}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use axum::http::{HeaderName, Method};
use axum::routing::MethodFilter;
use serde::{Deserialize, Serialize};

use replyway_shared::settings::{InvalidSetting, is_valid_topic};

use crate::auth::RouteAuth;
use crate::lanes::{LaneRuleConfig, Lanes};
use crate::ratelimit::RateLimitConfig;

/// One route as written in the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and the pending record; defaults to `METHOD path`.
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP method (`POST`, `PUT`, …).
    pub method: String,
    /// Path pattern, e.g. `/orders/{id}`.
    pub path: String,
    /// Kafka topic the command is produced to (unset with `lanes`).
    #[serde(default)]
    pub topic: String,
    /// Priority lanes: a request topic per lane name, instead of `topic`.
    #[serde(default)]
    pub lanes: BTreeMap<String, String>,
    /// The lane of a request no rule matches (required with `lanes`).
    #[serde(default)]
    pub default_lane: Option<String>,
    /// Rules that pick a request's lane; the first that matches wins.
    #[serde(default)]
    pub lane_rules: Vec<LaneRuleConfig>,
    /// What a client that goes away before its reply means: `cancel`
    /// (default: the command is cancelled) or `keep` (it is served, and its
    /// reply stored for a later pick-up).
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    /// Record key template (default `{correlation_id}`).
    #[serde(default = "default_key")]
    pub key: String,
    /// How long a synchronous request waits for its reply.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// Request headers forwarded to the service as `header-<name>`.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Reply headers passed to the HTTP response; when unset, every reply header
    /// except hop-by-hop and framing headers.
    #[serde(default)]
    pub reply_headers: Option<Vec<String>>,
    /// Also set Spring for Apache Kafka's `kafka_replyTopic` and
    /// `kafka_correlationId` headers, for services whose `@KafkaListener` replies
    /// with `@SendTo`.
    #[serde(default)]
    pub spring_headers: bool,
    /// Who may call: `none` (default), `api_key`, `jwt` or `any`.
    #[serde(default)]
    pub auth: RouteAuth,
    /// Scopes the caller must have (with `auth` other than `none`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Requests allowed per caller (principal, or client address without
    /// authentication), shared by all replicas; unset: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Consumer group of the service that reads `topic`. When Kafka reports it
    /// has no active member, requests are answered `503` `no-responders` at
    /// once instead of waiting out `timeout`. Unset: not checked.
    #[serde(default)]
    pub responder_group: Option<String>,
    /// A JSON Schema (draft 2020-12) file that request bodies must match;
    /// a mismatch is answered `422` `invalid-body`. Unset: not checked.
    #[serde(default)]
    pub schema: Option<std::path::PathBuf>,
    /// Also check replies against the schema a service declares in
    /// `reply_schema`: a mismatch is answered `502` `invalid-reply`.
    #[serde(default)]
    pub reply_schema: Option<std::path::PathBuf>,
    /// Callbacks (webhooks): the reply of a `Prefer: respond-async` request
    /// is POSTed to its `Callback-URL` (or the fixed `url`), within these
    /// bounds. Unset: the route takes no callbacks.
    #[serde(default)]
    pub callbacks: Option<crate::callbacks::RouteCallbacksConfig>,
}

/// What a client's disconnect before its reply does to its command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// The command is cancelled (see `Node::cancel`).
    #[default]
    Cancel,
    /// The command is served; its reply is stored for a pick-up.
    Keep,
}

impl Default for RouteConfig {
    /// A `POST /` route to topic `requests` with every optional field at its default.
    fn default() -> Self {
        Self {
            name: None,
            method: "POST".into(),
            path: "/".into(),
            topic: "requests".into(),
            lanes: BTreeMap::new(),
            default_lane: None,
            lane_rules: Vec::new(),
            on_disconnect: OnDisconnect::Cancel,
            key: default_key(),
            timeout: default_timeout(),
            body_limit: default_body_limit(),
            forward_headers: Vec::new(),
            reply_headers: None,
            spring_headers: false,
            auth: RouteAuth::None,
            scopes: Vec::new(),
            rate_limit: None,
            responder_group: None,
            schema: None,
            reply_schema: None,
            callbacks: None,
        }
    }
}

fn default_key() -> String {
    "{correlation_id}".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_limit() -> usize {
    1024 * 1024
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Literal(String),
    CorrelationId,
    Param(String),
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs and the pending record.
    pub name: String,
    /// HTTP method.
    pub method: Method,
    /// Kafka request topic (with lanes: the default lane's).
    pub topic: String,
    /// The priority lanes, when the route has them.
    pub lanes: Option<Lanes>,
    /// Whether a client's disconnect cancels its command.
    pub on_disconnect: OnDisconnect,
    /// Synchronous wait bound.
    pub timeout: Duration,
    /// Body bound in bytes.
    pub body_limit: usize,
    /// Forwarded request headers.
    pub forward_headers: Vec<HeaderName>,
    /// Reply headers allowed through, or `None` for all but the denied ones.
    pub reply_headers: Option<HashSet<HeaderName>>,
    /// Whether commands also carry Spring's reply headers.
    pub spring_headers: bool,
    /// Who may call.
    pub auth: RouteAuth,
    /// Scopes required.
    pub scopes: Vec<String>,
    /// The rate limit, validated.
    pub rate_limit: Option<replyway_shared::store::RateLimit>,
    /// Consumer group whose members serve the topic, when checked.
    pub responder_group: Option<String>,
    /// The schema bodies must match, compiled.
    pub schema: Option<crate::schema::RouteSchema>,
    /// The schema replies must match, compiled.
    pub reply_schema: Option<crate::schema::RouteSchema>,
    /// Its callbacks, when it takes them.
    pub callbacks: Option<crate::callbacks::RouteCallbacks>,
    pattern: Vec<Segment>,
    key: Vec<KeyPart>,
}

/// Path parameters of a matched request, decoded.
pub type Params = BTreeMap<String, String>;

impl Route {
    /// Validates one configured route (`index` names it in errors).
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the bad field.
    pub fn from_config(index: usize, c: &RouteConfig) -> Result<Self, InvalidSetting> {
        let at = |field: &str| format!("routes[{index}].{field}");
        let method = parse_method(&c.method).ok_or_else(|| {
            InvalidSetting::new(
                at("method"),
                "not an HTTP method the gateway routes (GET, POST, PUT, PATCH, DELETE, …)",
            )
        })?;
        let (pattern, names) =
            parse_pattern(&c.path).map_err(|reason| InvalidSetting::new(at("path"), reason))?;
        let lanes = if c.lanes.is_empty() {
            if !is_valid_topic(&c.topic) {
                return Err(InvalidSetting::new(
                    at("topic"),
                    "not a legal Kafka topic name",
                ));
            }
            if c.default_lane.is_some() || !c.lane_rules.is_empty() {
                return Err(InvalidSetting::new(
                    at("lanes"),
                    "default_lane and lane_rules need lanes",
                ));
            }
            None
        } else {
            if !c.topic.is_empty() {
                return Err(InvalidSetting::new(
                    at("topic"),
                    "a route with lanes names its topics in `lanes`, not `topic`",
                ));
            }
            Some(Lanes::parse(
                &c.lanes,
                c.default_lane.as_deref(),
                &c.lane_rules,
                &at,
            )?)
        };
        let key =
            parse_key(&c.key, &names).map_err(|reason| InvalidSetting::new(at("key"), reason))?;
        if c.timeout.is_zero() {
            return Err(InvalidSetting::new(at("timeout"), "must be more than 0"));
        }
        let responder_group = parse_responder_group(c.responder_group.as_deref())
            .map_err(|reason| InvalidSetting::new(at("responder_group"), reason))?;
        let header_list = |field: &str, list: &[String]| {
            parse_header_names(list).map_err(|reason| InvalidSetting::new(at(field), reason))
        };
        let forward_headers = header_list("forward_headers", &c.forward_headers)?;
        let reply_headers = c
            .reply_headers
            .as_deref()
            .map(|l| header_list("reply_headers", l).map(|v| v.into_iter().collect()))
            .transpose()?;
        let rate_limit = c
            .rate_limit
            .as_ref()
            .map(|r| r.parse(&at("rate_limit")))
            .transpose()?;
        let load = |field: &str, path: Option<&std::path::Path>| {
            path.map(crate::schema::RouteSchema::load)
                .transpose()
                .map_err(|e| {
                    InvalidSetting::new(at(field), format!("route {} {}: {e}", c.method, c.path))
                })
        };
        let schema = load("schema", c.schema.as_deref())?;
        let reply_schema = load("reply_schema", c.reply_schema.as_deref())?;
        let callbacks = c.callbacks.as_ref().map(|cb| cb.parse(&at)).transpose()?;
        Ok(Self {
            name: c
                .name
                .clone()
                .unwrap_or_else(|| format!("{} {}", method, c.path)),
            method,
            topic: lanes
                .as_ref()
                .map_or_else(|| c.topic.clone(), |l| l.default_lane().topic.to_owned()),
            lanes,
            on_disconnect: c.on_disconnect,
            timeout: c.timeout,
            body_limit: c.body_limit,
            forward_headers,
            reply_headers,
            spring_headers: c.spring_headers,
            auth: c.auth,
            scopes: c.scopes.clone(),
            responder_group,
            rate_limit,
            schema,
            reply_schema,
            callbacks,
            pattern,
            key,
        })
    }

    /// The decoded path parameters, by name, from axum's match.
    pub fn params<'a>(&self, matched: impl IntoIterator<Item = (&'a str, &'a str)>) -> Params {
        matched
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// The record key for a request.
    pub fn key(&self, correlation_id: &str, params: &Params) -> String {
        let mut key = String::new();
        for part in &self.key {
            match part {
                KeyPart::Literal(s) => key.push_str(s),
                KeyPart::CorrelationId => key.push_str(correlation_id),
                KeyPart::Param(name) => key.push_str(params.get(name).map_or("", String::as_str)),
            }
        }
        key
    }

    /// The path pattern as configured, e.g. `/accounts/{account}/transfers`.
    pub fn path_pattern(&self) -> String {
        let mut path = String::new();
        for segment in &self.pattern {
            path.push('/');
            match segment {
                Segment::Literal(lit) => path.push_str(lit),
                Segment::Param(name) => {
                    path.push('{');
                    path.push_str(name);
                    path.push('}');
                }
            }
        }
        path
    }

    /// The names of the path parameters, in path order.
    pub fn param_names(&self) -> Vec<&str> {
        self.pattern
            .iter()
            .filter_map(|segment| match segment {
                Segment::Param(name) => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }
}

/// The method of `method` (any case), when axum's router can route it.
fn parse_method(method: &str) -> Option<Method> {
    Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|m| MethodFilter::try_from(m.clone()).is_ok())
}

/// The segments of path pattern `path`, and the names of its parameters; or
/// what is wrong with it.
fn parse_pattern(path: &str) -> Result<(Vec<Segment>, HashSet<String>), String> {
    if !path.starts_with('/') {
        return Err("must start with /".into());
    }
    let mut pattern = Vec::new();
    let mut names = HashSet::new();
    for seg in path.split('/').skip(1) {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if !is_param_name(name) {
                return Err(format!("bad parameter name {seg:?}"));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("parameter {name} appears twice"));
            }
            pattern.push(Segment::Param(name.to_owned()));
        } else if seg.contains(['{', '}']) {
            return Err(format!(
                "segment {seg:?}: a parameter must be a whole segment"
            ));
        } else {
            pattern.push(Segment::Literal(seg.to_owned()));
        }
    }
    if pattern.first() == Some(&Segment::Literal("v1".into())) {
        return Err("/v1/ is reserved for the gateway's own endpoints".into());
    }
    Ok((pattern, names))
}

/// Whether `name` can name a path parameter: ASCII letters, digits, `_` and
/// `-`, at least one.
fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The responder group, when it can be a consumer group id; or what is wrong.
fn parse_responder_group(group: Option<&str>) -> Result<Option<String>, &'static str> {
    if group.is_some_and(|g| g.is_empty() || g.len() > 255) {
        return Err("must be a consumer group id of 1 to 255 bytes");
    }
    Ok(group.map(str::to_owned))
}

/// The header names of `list`, in lower case; or which one is not a header name.
fn parse_header_names(list: &[String]) -> Result<Vec<HeaderName>, String> {
    list.iter()
        .map(|h| {
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{h:?} is not a header name"))
        })
        .collect()
}

fn parse_key(template: &str, names: &HashSet<String>) -> Result<Vec<KeyPart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(KeyPart::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or("unclosed {")? + open;
        let name = &rest[open + 1..close];
        parts.push(match name {
            "correlation_id" => KeyPart::CorrelationId,
            _ => match name.strip_prefix("param.") {
                Some(p) if names.contains(p) => KeyPart::Param(p.to_owned()),
                _ => return Err(format!("unknown placeholder {{{name}}}: use {{correlation_id}} or {{param.<name>}} of the path")),
            },
        });
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched }".into());
    }
    if !rest.is_empty() {
        parts.push(KeyPart::Literal(rest.to_owned()));
    }
    if parts.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(parts)
}

/// Paths the gateway serves itself: no configured route may take them.
pub const OWN_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/v1/replies/{id}",
    "/v1/ws",
];

/// All routes, validated, with no two that axum's router could not tell apart.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Validates the configured routes and refuses conflicts: the same method
    /// and path twice, paths that differ only in parameter names
    /// (`/a/{x}` and `/a/{y}`), or a path of the gateway's own.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad route field, or both routes of a
    /// conflict.
    pub fn new(configs: &[RouteConfig]) -> Result<Self, InvalidSetting> {
        let routes = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Route::from_config(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut matcher = matchit::Router::new();
        // Who holds each path: the gateway, or the first route with it.
        let mut owners: HashMap<String, String> = HashMap::new();
        for path in OWN_PATHS {
            let _ = matcher.insert(*path, ());
            owners.insert(
                (*path).to_owned(),
                format!("the gateway's own endpoint {path}"),
            );
        }
        let mut taken: HashMap<(String, Method), usize> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            let path = route.path_pattern();
            let conflict = |with: &str| {
                InvalidSetting::new(
                    format!("routes[{i}].path"),
                    format!("route {:?} conflicts with {with}", route.name),
                )
            };
            if let Some(first) = taken.insert((path.clone(), route.method.clone()), i) {
                return Err(conflict(&format!(
                    "route {:?} (routes[{first}]): same method and path",
                    routes[first].name
                )));
            }
            if owners.contains_key(&path) {
                if OWN_PATHS.contains(&path.as_str()) {
                    return Err(conflict(&owners[&path]));
                }
                // Another method on a path seen before: one axum route serves both.
                continue;
            }
            match matcher.insert(path.clone(), ()) {
                Ok(()) => {
                    owners.insert(path, format!("route {:?} (routes[{i}])", route.name));
                }
                Err(matchit::InsertError::Conflict { with }) => {
                    let holder = owners.get(&with).cloned().unwrap_or(with);
                    return Err(conflict(&format!(
                        "{holder}: their paths cannot be told apart"
                    )));
                }
                Err(e) => return Err(conflict(&e.to_string())),
            }
        }
        Ok(Self { routes })
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route named `name`.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(method: &str, path: &str, key: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            method: method.into(),
            path: path.into(),
            topic: "t".into(),
            key: key.into(),
            timeout: Duration::from_secs(1),
            body_limit: 10,
            forward_headers: vec!["X-Request-Id".into()],
            ..RouteConfig::default()
        }
    }

    #[test]
    fn key_templates() {
        let table = RouteTable::new(&[config(
            "POST",
            "/o/{id}",
            "order-{param.id}/{correlation_id}",
        )])
        .unwrap();
        let route = &table.routes()[0];
        let params = route.params([("id", "7")]);
        assert_eq!(route.key("c", &params), "order-7/c");
        assert_eq!(route.forward_headers[0].as_str(), "x-request-id");
    }

    #[test]
    fn a_route_names_its_topic_or_its_lanes() {
        let lanes: BTreeMap<String, String> = [
            ("high".to_owned(), "t.high".to_owned()),
            ("low".to_owned(), "t".to_owned()),
        ]
        .into();
        let with_lanes = RouteConfig {
            topic: String::new(),
            lanes: lanes.clone(),
            default_lane: Some("low".into()),
            ..config("POST", "/o", "{correlation_id}")
        };
        let route = Route::from_config(0, &with_lanes).unwrap();
        assert_eq!(route.topic, "t", "the default lane's topic");
        let error = |c: &RouteConfig| Route::from_config(3, c).unwrap_err().to_string();
        let both = RouteConfig {
            topic: "t".into(),
            ..with_lanes.clone()
        };
        assert!(error(&both).contains("routes[3].topic"), "{}", error(&both));
        let stray = RouteConfig {
            default_lane: Some("low".into()),
            ..config("POST", "/o", "{correlation_id}")
        };
        assert!(
            error(&stray).contains("routes[3].lanes"),
            "{}",
            error(&stray)
        );
        let none = RouteConfig {
            topic: String::new(),
            ..config("POST", "/o", "{correlation_id}")
        };
        assert!(error(&none).contains("routes[3].topic"), "{}", error(&none));
    }

    #[test]
    fn conflicts_name_both_routes() {
        let conflict = |routes: &[RouteConfig]| RouteTable::new(routes).unwrap_err();
        let twice = conflict(&[
            config("POST", "/o/{id}", "{correlation_id}"),
            config("POST", "/o/{id}", "{correlation_id}"),
        ]);
        assert_eq!(twice.setting, "routes[1].path");
        assert!(twice.to_string().contains("routes[0]"), "{twice}");
        let renamed = conflict(&[
            config("POST", "/o/{id}", "{correlation_id}"),
            config("GET", "/o/{key}", "{correlation_id}"),
        ]);
        assert!(renamed.to_string().contains("POST /o/{id}"), "{renamed}");
        assert!(renamed.to_string().contains("GET /o/{key}"), "{renamed}");
        let own = conflict(&[config("GET", "/healthz", "{correlation_id}")]);
        assert!(own.to_string().contains("own endpoint /healthz"), "{own}");
        // Two methods on one path, and a literal beside a parameter, are fine.
        RouteTable::new(&[
            config("POST", "/o/{id}", "{correlation_id}"),
            config("GET", "/o/{id}", "{correlation_id}"),
            config("GET", "/o/new", "{correlation_id}"),
        ])
        .unwrap();
    }

    #[test]
    fn bad_routes_are_named() {
        let cases = [
            (config("POST", "/o/{id}", "{param.nope}"), "routes[0].key"),
            (config("POST", "/o/{id}", "{x"), "routes[0].key"),
            (config("POST", "o", "{correlation_id}"), "routes[0].path"),
            (
                config("POST", "/o/a{id}", "{correlation_id}"),
                "routes[0].path",
            ),
            (
                config("POST", "/v1/replies", "{correlation_id}"),
                "routes[0].path",
            ),
            (
                config("PO ST", "/o", "{correlation_id}"),
                "routes[0].method",
            ),
            (
                config("PURGE", "/o", "{correlation_id}"),
                "routes[0].method",
            ),
            (
                RouteConfig {
                    topic: "a/b".into(),
                    ..config("POST", "/o", "{correlation_id}")
                },
                "routes[0].topic",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(RouteTable::new(&[c]).unwrap_err().setting, field);
        }
    }
}
