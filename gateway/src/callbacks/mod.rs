//! Callbacks (webhooks): a route that allows them delivers the reply of a
//! `Prefer: respond-async` request to a URL — the client's `Callback-URL`
//! or the route's own — POSTed and signed the Standard Webhooks way.
//!
//! * [`config`]: the `[callbacks]` settings and a route's `callbacks` option;
//! * [`url_safety`]: which URLs may be called, and the resolver that pins the
//!   checked addresses;
//! * [`signing`]: the `webhook-signature`;
//! * [`request`]: reading and checking the URL of a request, before anything
//!   is produced;
//! * [`payload`]: the POSTed body;
//! * [`worker`]: every gateway's delivery worker over the Redis stream of
//!   deliveries (retries along the schedule, take-over of a dead worker's);
//! * [`visibility`]: the delivery's state on `GET /v1/replies/{id}`.

pub mod config;
pub mod payload;
pub mod request;
pub mod signing;
pub mod url_safety;
pub mod visibility;
pub mod worker;

pub use config::{CallbackSettings, RouteCallbacks, RouteCallbacksConfig};
pub use signing::WebhookSecret;

/// The request header naming a callback URL.
pub const CALLBACK_URL: &str = "callback-url";
