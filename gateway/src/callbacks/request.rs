//! A request's callback, read and checked before anything is written or
//! produced, and recorded in Redis before its command is produced (so that
//! the collector's script finds it when the reply comes).

use std::time::Duration;

use axum::http::HeaderMap;
use url::Url;

use crate::prefer::Prefer;
use crate::problem::GatewayError;
use crate::routes::Route;
use crate::state::AppState;

use super::CALLBACK_URL;

/// Longest callback URL taken.
const MAX_URL: usize = 2048;
/// Longest a request waits for the resolution of its callback URL's host.
const RESOLVE_WITHIN: Duration = Duration::from_secs(2);

/// The URL a request's reply is to be POSTed to, checked: `None` when it
/// asks for no callback.
///
/// # Errors
/// `400` when the request names a callback the route does not take, without
/// `Prefer: respond-async`, or a URL the route's policy refuses.
pub async fn read(
    route: &Route,
    prefer: &Prefer,
    headers: &HeaderMap,
) -> Result<Option<Url>, GatewayError> {
    let asked = headers.get(CALLBACK_URL);
    let refuse = |detail: String| Err(GatewayError::BadRequest(detail));
    let Some(callbacks) = &route.callbacks else {
        return match asked {
            Some(_) => refuse("this route takes no callbacks (Callback-URL)".into()),
            None => Ok(None),
        };
    };
    if !prefer.respond_async {
        return match asked {
            Some(_) => refuse("Callback-URL needs Prefer: respond-async".into()),
            None => Ok(None),
        };
    }
    if let Some(fixed) = &callbacks.url {
        return match asked {
            Some(_) => {
                refuse("this route calls back its own URL; Callback-URL is not taken".into())
            }
            None => Ok(Some(fixed.clone())),
        };
    }
    let Some(asked) = asked else {
        return Ok(None);
    };
    let Ok(text) = asked.to_str() else {
        return refuse("Callback-URL is not visible ASCII".into());
    };
    if text.len() > MAX_URL {
        return refuse(format!("Callback-URL is longer than {MAX_URL} bytes"));
    }
    let url = callbacks
        .policy
        .check(text)
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    callbacks
        .policy
        .check_resolved(&url, RESOLVE_WITHIN)
        .await
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    Ok(Some(url))
}

/// Records request `id`'s callback in Redis (before its command is
/// produced).
///
/// # Errors
/// `503` when Redis does not acknowledge: nothing is produced.
pub async fn record(
    state: &AppState,
    route: &Route,
    id: &str,
    url: &Url,
) -> Result<(), GatewayError> {
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    state
        .node
        .store()
        .create_callback(
            id,
            url.as_str(),
            &route.name,
            created_ms,
            route
                .callbacks
                .as_ref()
                .is_some_and(|c| c.policy.allow_private),
        )
        .await
        .map_err(GatewayError::Redis)
}
