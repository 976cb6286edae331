//! The operations endpoint: `/healthz` and `/metrics` over HTTP, for supervisors and Prometheus.
//!
//! It binds where `[ops] bind` says (loopback by default) and serves until shutdown. `/healthz`
//! and `/metrics` read nothing but the shared [`Metrics`], so they can never block the gateway's
//! work. On a loopback address it also serves the functions' admin routes for `grove fn`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The content type of the OpenMetrics text format, which Prometheus reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    started: Instant,
}

/// Serves the endpoint on `listener` until `shutdown` completes; `admin` adds the routes `grove fn`
/// uses (the functions component's, see `functions::admin`).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    admin: Option<Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(Ops {
            metrics,
            started: Instant::now(),
        })
        .merge(admin.unwrap_or_default());
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "the ops endpoint failed");
    }
}

async fn healthz(State(ops): State<Ops>) -> impl IntoResponse {
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ops.started.elapsed().as_secs(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn render_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], ops.metrics.render())
}
