//! The agent's HTTP endpoint.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tiermon_exposition::{Format, encode};
use tower_http::compression::CompressionLayer;

use crate::Agent;

/// Serves `/metrics` (Prometheus text, or OpenMetrics when the `Accept`
/// header prefers it; gzip when accepted), `/-/healthy` and a landing page
/// on `listener` until `shutdown` completes. Starts and stops the agent's
/// background work with it.
pub async fn serve(
    agent: Agent,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let background = agent.start_background();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(|| async { "OK\n" }))
        .route("/", get(index))
        .layer(CompressionLayer::new())
        .with_state(agent);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    for t in background {
        t.abort();
    }
    r
}

async fn metrics(State(agent): State<Agent>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::negotiate(accept);
    let fams = agent.gather().await;
    let body = encode(&fams, format);
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

async fn index() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><title>tiermon agent</title></head><body>",
        "<h1>tiermon agent</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
    ))
}
