//! What the router tests share: a gateway whose Redis and Kafka are ports
//! nothing listens on, so everything decided before them can be driven with
//! `oneshot`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use replyway_gateway::routes::RouteConfig;
use replyway_gateway::{AppState, Settings, router};

/// A local port that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Settings with unreachable Redis (answering within 500 ms) and Kafka, and
/// `route` as the only route.
pub fn unreachable_settings(route: RouteConfig) -> Settings {
    let mut settings = Settings::default();
    settings.redis.url = format!("redis://127.0.0.1:{}", closed_port()).into();
    settings.redis.timeout = Duration::from_millis(500);
    settings.kafka.brokers = format!("127.0.0.1:{}", closed_port());
    settings.routes = vec![route];
    settings
}

/// The router of a gateway with [`unreachable_settings`].
pub fn app(route: RouteConfig) -> axum::Router {
    let config = unreachable_settings(route).build().expect("valid settings");
    router(AppState::new(config, CancellationToken::new()))
}
