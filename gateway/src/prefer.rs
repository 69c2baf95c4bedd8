//! The `Prefer` request header (RFC 7240): `respond-async` and `wait=N`.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::HeaderName;

/// The `Prefer` header name.
pub static PREFER: HeaderName = HeaderName::from_static("prefer");

/// Preferences the gateway honours; others are ignored, as RFC 7240 says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prefer {
    /// `respond-async`: answer 202 at once.
    pub respond_async: bool,
    /// `wait=N`: wait at most N seconds.
    pub wait: Option<Duration>,
}

/// A `Prefer` header the gateway cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed Prefer header: {0}")]
pub struct PreferError(pub String);

impl Prefer {
    /// Reads every `Prefer` header of a request.
    ///
    /// # Errors
    /// [`PreferError`] when a header is not visible ASCII or `wait` is not a
    /// number of seconds.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, PreferError> {
        let mut prefer = Self::default();
        for value in headers.get_all(&PREFER) {
            let text = value
                .to_str()
                .map_err(|_| PreferError("not visible ASCII".into()))?;
            for preference in text.split(',') {
                // Parameters after ';' do not apply to the preferences we honour.
                let token = preference.split(';').next().unwrap_or_default().trim();
                let (name, value) = match token.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (token, None),
                };
                if name.eq_ignore_ascii_case("respond-async") {
                    prefer.respond_async = true;
                } else if name.eq_ignore_ascii_case("wait") {
                    let seconds: u32 = value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                        PreferError(format!("wait must be a number of seconds, got {token:?}"))
                    })?;
                    prefer.wait = Some(Duration::from_secs(seconds.into()));
                }
            }
        }
        Ok(prefer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<Prefer, PreferError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(&PREFER, v.parse().unwrap());
        }
        Prefer::from_headers(&headers)
    }

    #[test]
    fn reads_preferences() {
        assert_eq!(parse(&[]).unwrap(), Prefer::default());
        let p = parse(&["respond-async, wait=10"]).unwrap();
        assert!(p.respond_async);
        assert_eq!(p.wait, Some(Duration::from_secs(10)));
        let p = parse(&[
            "handling=lenient",
            "Wait = \"3\"; foo=bar",
            "return=minimal",
        ])
        .unwrap();
        assert!(!p.respond_async);
        assert_eq!(p.wait, Some(Duration::from_secs(3)));
    }

    #[test]
    fn rejects_bad_wait() {
        assert!(parse(&["wait=soon"]).is_err());
        assert!(parse(&["wait"]).is_err());
        assert!(parse(&["wait=-1"]).is_err());
    }
}
