//! Tamper-proof correlation ids (optional per deployment).
//!
//! With a secret configured, gateways (and `Requester`s) issue ids of the form
//! `<uuid>.<tag>`, where the tag is the first 16 bytes of HMAC-SHA256(secret,
//! uuid) in hex. The collector then stores only replies whose id carries a
//! valid tag, so nobody who can write to the reply topic can plant a reply
//! under an id that no gateway of this deployment issued; and a gateway answers
//! `404` for an unsigned id without asking Redis.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::settings::{InvalidSetting, Secret};

/// Shortest secret accepted (bytes).
pub const MIN_SECRET_LEN: usize = 32;
/// Bytes of the HMAC kept in the id.
const TAG_BYTES: usize = 16;

/// Issues and checks signed correlation ids.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with `secret`; `setting` names it in errors.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the secret is shorter than [`MIN_SECRET_LEN`].
    pub fn new(setting: &str, secret: &str) -> Result<Self, InvalidSetting> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(InvalidSetting::new(
                setting,
                format!("must be at least {MIN_SECRET_LEN} bytes"),
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| InvalidSetting::new(setting, e.to_string()))?;
        Ok(Self { mac })
    }

    /// The signer of a `correlation_secret` setting, when it is set.
    ///
    /// # Errors
    /// As [`Signer::new`], naming `correlation_secret`.
    pub fn from_setting(secret: Option<&Secret>) -> Result<Option<Self>, InvalidSetting> {
        secret
            .map(|s| Self::new("correlation_secret", s.expose()))
            .transpose()
    }

    /// The tag of `base`, as written in an id: lower-case hex.
    fn tag(&self, base: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(base.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..TAG_BYTES])
    }

    /// A fresh signed id.
    pub fn issue(&self) -> String {
        let base = uuid::Uuid::new_v4().to_string();
        format!("{base}.{}", self.tag(&base))
    }

    /// Whether `id` was issued with this secret (constant-time comparison).
    pub fn verify(&self, id: &str) -> bool {
        let Some((base, tag)) = id.rsplit_once('.') else {
            return false;
        };
        // The tag exactly as issued, compared as text: no other spelling of an
        // issued id (upper case, another length) passes as a second valid id.
        self.tag(base).as_bytes().ct_eq(tag.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::is_valid_correlation_id;

    const SECRET: &str = "an example secret of at least 32 bytes";

    #[test]
    fn issued_ids_verify_and_others_do_not() {
        let signer = Signer::new("s", SECRET).unwrap();
        let id = signer.issue();
        assert!(is_valid_correlation_id(&id), "{id}");
        assert!(signer.verify(&id));
        let other = Signer::new("s", "another secret of at least 32 bytes!").unwrap();
        assert!(!other.verify(&id));
        let mut forged = id.clone();
        forged.replace_range(0..1, if id.starts_with('a') { "b" } else { "a" });
        assert!(!signer.verify(&forged));
        let (base, tag) = id.rsplit_once('.').unwrap();
        assert!(!signer.verify(&format!("{base}.{}", tag.to_ascii_uppercase())));
        for bad in [
            "",
            "x",
            &crate::record::new_correlation_id(),
            &format!("{id}0"),
            "a.zz",
        ] {
            assert!(!signer.verify(bad), "{bad}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            Signer::new("correlation_secret", "short")
                .unwrap_err()
                .setting,
            "correlation_secret"
        );
    }
}
