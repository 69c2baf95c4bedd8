//! Replyway's end-to-end suite, one test binary: real Apache Kafka, real Redis,
//! real HTTP. Tests that only need topics and groups of their own share the
//! binary's broker (`Broker::shared`); those that stop or restart a broker
//! start their own.

mod callbacks;
mod cancellation;
mod cluster;
mod compose;
mod docs;
mod faults;
mod guarantees_collector;
mod guarantees_http;
mod guarantees_security;
mod idempotency;
mod kafka_faults;
mod lanes;
mod ledger;
mod operations;
mod outbox;
mod outbox_operations;
mod python_service;
mod replication;
mod request_reply;
mod responders;
mod route_intent;
mod schemas;
mod sdk;
mod security;
mod spring;
mod streams;
mod transactions;
mod websocket;
