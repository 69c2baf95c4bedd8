//! The HTTP API as one axum router: each configured route registered under its
//! path as its own service ([`RouteService`]), the gateway's own endpoints
//! beside them, and the observing layer around all of it.
//!
//! Conflicts between routes were refused when the route table was built
//! (`RouteTable::new`), so building the router cannot fail. axum answers a
//! path that is served with other methods `405` with `Allow` (turned into a
//! problem by the observing layer), and the fallback answers `404` `no-route`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get};

use crate::problem::GatewayError;
use crate::serving::RouteService;
use crate::state::AppState;

/// The HTTP API.
pub fn router(state: AppState) -> Router {
    // One method router per path, with a handler per method.
    let mut paths: BTreeMap<String, MethodRouter<AppState>> = BTreeMap::new();
    for route in state.routes.routes() {
        let Ok(filter) = MethodFilter::try_from(route.method.clone()) else {
            // Refused when the route table was built.
            continue;
        };
        let service = RouteService::new(state.clone(), Arc::new(route.clone()));
        let methods = paths.remove(&route.path_pattern()).unwrap_or_default();
        paths.insert(route.path_pattern(), methods.on_service(filter, service));
    }
    let mut api = Router::new();
    for (path, methods) in paths {
        api = api.route(&path, methods);
    }
    api.route(
        "/v1/replies/{id}",
        get(crate::pickup::get_reply).delete(crate::cancel::delete_reply),
    )
    .route("/v1/ws", get(crate::websocket::upgrade))
    .route("/healthz", get(crate::health::healthz))
    .route("/readyz", get(crate::health::readyz))
    .route("/openapi.json", get(openapi))
    .fallback(no_route)
    .layer(crate::observe::ObserveLayer::new(state.clone()))
    .with_state(state)
}

/// The admin port: `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    replyway_shared::admin::router(Arc::clone(&state.registry))
        .route("/readyz", get(crate::health::readyz))
        .with_state(state)
}

/// `GET /openapi.json`: the document built at start.
async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

/// Any path no route serves.
///
/// Unlabelled: the observing layer counts a `404` without a route label as
/// unmatched.
async fn no_route(uri: Uri) -> Response {
    GatewayError::NoRoute(uri.path().to_owned()).into_response()
}
