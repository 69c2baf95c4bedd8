//! `Idempotency-Key`: a retry of a request (same key, same route, same
//! caller, same body) is answered from the first request instead of producing
//! the command again.
//!
//! The first request claims the key in Redis with a lease; it marks the claim
//! produced once its command is on the broker, and releases it when the
//! command could not be produced. A retry follows the first request's
//! correlation id (its reply, `202` or its wait), or takes the claim over when
//! the first request died between claim and produce (its lease ran out
//! unproduced). Nothing is produced twice on purpose.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use axum::response::Response;

use replyway_shared::store::{Claim, Lookup};
use replyway_shared::waiters::Ticket;

use crate::digest::digest;
use crate::prefer::Prefer;
use crate::problem::GatewayError;
use crate::reply::{pending_response, route_reply};
use crate::routes::Route;
use crate::state::AppState;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Reads the `Idempotency-Key` header: a structured-field string
/// (`"8e03978e-…"`) as the IETF draft has it, or the same characters unquoted.
///
/// # Errors
/// [`GatewayError::BadRequest`] naming what is wrong with the key.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| GatewayError::BadRequest(format!("Idempotency-Key {why}"));
    if values.next().is_some() {
        return Err(bad("must be sent once"));
    }
    let text = value
        .to_str()
        .map_err(|_| bad("must be visible ASCII"))?
        .trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| bad("has an unterminated quote"))?,
        None => text,
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be 1 to 255 characters"));
    }
    if !key
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(bad("must be printable ASCII without quotes or backslashes"));
    }
    Ok(Some(key.to_owned()))
}

/// A request's claim on its idempotency key.
#[derive(Debug)]
pub struct Scope(String);

impl Scope {
    /// The key's scope: one route and one principal's key never meet another's.
    pub fn new(route: &Route, principal: Option<&str>, key: &str) -> Self {
        let owner = principal.unwrap_or_default();
        Self(digest(&[
            route.name.as_bytes(),
            owner.as_bytes(),
            key.as_bytes(),
        ]))
    }

    /// The request's command is on the broker: from now on a retry follows
    /// it instead of taking over.
    pub async fn produced(&self, state: &AppState, id: &str) {
        if let Err(e) = state.node.store().mark_produced(&self.0, id).await {
            tracing::warn!(correlation_id = %id, error = %e, "could not mark the idempotency claim produced; a retry after its lease may produce the command again");
        }
    }

    /// The request's command could not be produced: a retry with the same key
    /// must be able to go through.
    pub async fn release(&self, state: &AppState, id: &str) {
        if let Err(e) = state.node.store().release_idempotency(&self.0).await {
            tracing::warn!(correlation_id = %id, error = %e, "could not release the idempotency key of an unproduced request; it expires with its TTL");
        }
    }
}

/// What claiming an idempotency key decided for a request.
pub enum Claimed {
    /// The key is this request's: it goes on as a new request.
    Ours,
    /// The first request's claim expired unproduced: this request produces the
    /// command under the first request's correlation id.
    TookOver(String),
    /// Answered from the first request (its reply, `202`, or a problem).
    Answered(Response),
}

/// What a claim needs to know of its request.
pub struct Claiming<'a> {
    /// The request's route.
    pub route: &'a Route,
    /// The key's scope.
    pub scope: &'a Scope,
    /// The correlation id this request would use.
    pub id: &'a str,
    /// Method, path and body, hashed: a retry must be the same request.
    pub fingerprint: String,
    /// The request's preferences.
    pub prefer: &'a Prefer,
    /// How long the request waits in all.
    pub wait: Duration,
}

impl Claiming<'_> {
    /// The fingerprint of a request.
    pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
        digest(&[method.as_str().as_bytes(), path.as_bytes(), body])
    }
}

/// Claims the key for the request, or follows the request that claimed it
/// first. `ticket` is the request's place among the waiting requests; a
/// follow uses it (and the request takes another one if it goes on after).
///
/// A first request that has not marked its command produced may have died
/// between claim and produce: a synchronous retry follows it until its lease
/// ends and then claims again, which takes the key over if it is still
/// unproduced (`idempotency_lease`). A retry of a produced command only ever
/// follows it.
///
/// # Errors
/// [`GatewayError::IdempotencyMismatch`] for the same key with another
/// request; Redis failures; a follow's timeout.
pub async fn claim(
    state: &AppState,
    claiming: Claiming<'_>,
    ticket: &mut Option<Ticket>,
) -> Result<Claimed, GatewayError> {
    let started = Instant::now();
    let (ttl, lease) = (
        state.settings.idempotency_ttl(),
        state.settings.idempotency_lease(),
    );
    let mut retried = false;
    loop {
        let found = state
            .node
            .store()
            .claim_idempotency(
                &claiming.scope.0,
                claiming.id,
                &claiming.fingerprint,
                ttl,
                lease,
            )
            .await
            .map_err(GatewayError::Redis)?;
        let (first, lease_left) = match found {
            Claim::Claimed => return Ok(Claimed::Ours),
            Claim::TookOver(first) => return Ok(Claimed::TookOver(first)),
            Claim::First {
                id: first,
                fingerprint,
                lease_left,
            } => {
                if fingerprint != claiming.fingerprint {
                    return Err(GatewayError::IdempotencyMismatch);
                }
                (first, lease_left)
            }
        };
        let left = claiming.wait.saturating_sub(started.elapsed());
        let respond_async = claiming.prefer.respond_async;
        let follow_for = match lease_left {
            // Just after the lease: the claim script reads Redis's clock.
            Some(lease) if !retried && !respond_async && lease < left => {
                lease + Duration::from_millis(50)
            }
            _ => left,
        };
        let following = Following {
            route: claiming.route,
            id: first,
            respond_async,
            wait: follow_for,
        };
        match follow(state, following, ticket.take()).await {
            // Followed until the lease ended: claim again (not when the
            // wait was cut short by the end of the shutdown grace).
            Err(GatewayError::Timeout(..))
                if follow_for < left && !state.grace_over.is_cancelled() =>
            {
                retried = true;
            }
            answered => return answered.map(Claimed::Answered),
        }
    }
}

/// A retry following the request that came first.
struct Following<'a> {
    route: &'a Route,
    id: String,
    respond_async: bool,
    wait: Duration,
}

/// Answers a retry with the reply of the request that came first, which may
/// still be in flight: nothing is produced.
async fn follow(
    state: &AppState,
    following: Following<'_>,
    ticket: Option<Ticket>,
) -> Result<Response, GatewayError> {
    let Following {
        route,
        id,
        respond_async,
        wait,
    } = following;
    // A retry of a streamed reply is answered `202`: its stream is at
    // `GET /v1/replies/{id}`.
    let answer = |reply: &replyway_shared::Reply| {
        if reply.part.is_some() {
            Ok(pending_response(&id))
        } else {
            route_reply(state, &id, reply, Some(route))
        }
    };
    let store = state.node.store();
    if respond_async {
        return match store.lookup(&id, None).await.map_err(GatewayError::Redis)? {
            Lookup::Reply(reply, _) => answer(&reply),
            _ => Ok(pending_response(&id)),
        };
    }
    let ticket = match ticket {
        Some(ticket) => ticket,
        None => state.node.admit().map_err(|_| GatewayError::Overloaded)?,
    };
    let mut waiter = ticket.register(&id);
    // Join unconditionally: the first request may not have written its pending
    // record yet.
    let found = store
        .rejoin(std::slice::from_ref(&id), state.node.id())
        .await
        .map_err(GatewayError::Redis)?;
    if let Some((_, reply)) = found.into_iter().next() {
        return answer(&reply);
    }
    let started = Instant::now();
    let reply = state
        .within_grace(async { tokio::time::timeout(wait, waiter.reply()).await.ok() })
        .await;
    match reply {
        Some(reply) => answer(&reply),
        // How long it waited: the whole wait, or until the grace ran out.
        None => Err(GatewayError::Timeout(
            wait.min(started.elapsed()).as_millis(),
            id,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(value: &str) -> Result<Option<String>, GatewayError> {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
        key(&headers)
    }

    #[test]
    fn idempotency_keys_are_read_strictly() {
        assert_eq!(
            parse("\"8e03978e-40d5\"").unwrap().as_deref(),
            Some("8e03978e-40d5")
        );
        assert_eq!(parse("plain-key").unwrap().as_deref(), Some("plain-key"));
        assert!(parse("\"unterminated").is_err());
        assert!(parse("\"\"").is_err());
        assert!(parse(&"k".repeat(256)).is_err());
        assert!(parse("a\"b").is_err());
        assert_eq!(key(&HeaderMap::new()).unwrap(), None);
    }
}
