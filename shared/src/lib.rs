//! Replyway's shared library: the contracts every side agrees on and the client
//! pieces that backend services use.
//!
//! * [`admin`] — the admin port (`/healthz`, `/readyz`, `/metrics`);
//! * [`backoff`] — pacing of retries that gives way to shutdown;
//! * [`correlation`] — signed correlation ids (optional per deployment);
//! * [`consumer`] — leaving a consumer group at shutdown, bounded;
//! * `outbox` (cargo feature `outbox`) — the transactional outbox on
//!   PostgreSQL: a responder whose replies commit with the service's state,
//!   and the relay that publishes them;
//! * [`record`] — the Kafka record contract (header names, request and reply
//!   records) that the gateway, the collector and every backend service speak;
//! * [`store`] — the Redis contract (key names, the stored reply format, the
//!   collector's store-and-notify script);
//! * [`settings`] — configuration types and the layered loader shared by the
//!   binaries;
//! * [`responder`] — a consumer of commands that replies with the correlation
//!   kept, for backend services written in Rust;
//! * [`requester`] — request–reply between backend services over the same
//!   Redis-backed correlation as the gateway;
//! * [`waiters`] and [`subscriber`] — a node's bounded map of waiting requests
//!   and its one Redis subscription (used by the gateway and the requester);
//! * [`shutdown`] — SIGINT/SIGTERM handling for the binaries;
//! * [`telemetry`] — logging and span export set-up shared by the binaries;
//! * [`trace`] — W3C trace context carried from hop to hop.
#![warn(missing_docs)]

pub mod admin;
pub mod backoff;
pub mod consumer;
pub mod correlation;
pub mod exchange;
#[cfg(feature = "outbox")]
pub mod outbox;
pub mod record;
pub mod requester;
pub mod responder;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod subscriber;
pub mod telemetry;
pub mod trace;
pub mod waiters;

pub use record::{Reply, Request};
pub use requester::Requester;
pub use responder::Responder;
