//! Signing a callback the Standard Webhooks way
//! (<https://www.standardwebhooks.com/>): the secret is `whsec_` and the
//! base64 of the key; the signature is the base64 of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, sent as `v1,<signature>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header naming the delivery (the same on every attempt).
pub const WEBHOOK_ID: &str = "webhook-id";
/// The header with the attempt's time, unix seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The header with the signature, `v1,<base64>`.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// A signing key, from its `whsec_<base64>` form.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Reads `whsec_<base64>`: at least 24 bytes of key (the Standard
    /// Webhooks secrets are 24 to 64).
    ///
    /// # Errors
    /// What is wrong with it (never the secret itself).
    pub fn parse(secret: &str) -> Result<Self, &'static str> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "must be whsec_ followed by base64")?;
        if key.len() < 24 {
            return Err("the key must be at least 24 bytes");
        }
        Ok(Self { key })
    }

    /// The `webhook-signature` header value for `body` sent as message `id`
    /// at `timestamp` (unix seconds).
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // The vector of the Standard Webhooks reference libraries.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_secrets_that_are_not_whsec() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
    }
}
