//! The operations endpoint: `/healthz` and `/metrics` over HTTP, for supervisors and Prometheus.
//!
//! It binds where `[ops] bind` says (loopback by default) and serves until shutdown. `/healthz`
//! and `/metrics` read nothing but the shared [`Metrics`], so they can never block the gateway's
//! work. On a loopback address it also serves the admin routes of `grove fn` (the functions
//! component's) and of `grove device remove` ([`devices_router`]: apply a revocation now and
//! confirm it) and of `grove clients disconnect` ([`clients_router`], with the checks the web
//! console's disconnect shares: [`disconnect_client`]). Where `[console]` allows, it serves the web console under `/console`
//! (`grove-console`, with its own sign-in: see `crate::console`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use grove_broker::clients::Clients;
use grove_broker::Revocations;

/// The route `grove device remove` calls once it has written the devices file.
pub const REVOCATIONS_PATH: &str = "/admin/devices/revocations";

/// The route of `grove clients disconnect` (an operator ends a client's connection).
pub const DISCONNECT_PATH: &str = "/admin/clients/disconnect";

/// How long an operator's disconnect waits for the connection to end.
const DISCONNECT_WAIT: Duration = Duration::from_secs(10);

/// How long the gateway waits for the connections of removed devices to end before it answers
/// that some are still open. A connection ends within one batch of its packets, so this only
/// catches a gateway too loaded to answer.
pub(crate) const REVOCATION_WAIT: Duration = Duration::from_secs(10);

/// The content type of the OpenMetrics text format, which Prometheus reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    started: Instant,
}

/// Serves the endpoint on `listener` until `shutdown` completes; `routes` adds the admin routes of
/// the CLI (loopback only, see `run`) and the web console (`grove_console`, under `/console`).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    routes: Option<Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(Ops {
            metrics,
            started: Instant::now(),
        })
        .merge(routes.unwrap_or_default());
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

/// The admin route of `grove device remove` (served on loopback only, like `grove fn`'s):
/// `POST /admin/devices/revocations` re-reads the devices file and answers once the connections of
/// every device it removed (or whose credentials changed) have ended: `{"disconnected": n}`, or
/// 503 with `{"error": ...}` if some are still open after [`REVOCATION_WAIT`].
pub fn devices_router(revocations: Revocations) -> Router {
    Router::new()
        .route(REVOCATIONS_PATH, post(revoke))
        .with_state(revocations)
}

async fn revoke(State(revocations): State<Revocations>) -> impl IntoResponse {
    let (status, body) = match revocations.apply(REVOCATION_WAIT).await {
        Ok(n) => (StatusCode::OK, serde_json::json!({ "disconnected": n })),
        Err(open) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "error": format!("{open} connection(s) of revoked devices still open after {REVOCATION_WAIT:?}")
            }),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// An operator's disconnect of `client_id`, from `grove clients disconnect` (the admin route) or
/// the web console: the one set of checks both go through. How many connections ended, or the
/// refusal's status and message.
pub async fn disconnect_client(
    clients: &Clients,
    client_id: &str,
) -> Result<usize, (StatusCode, String)> {
    if client_id.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "a client id is required".to_owned(),
        ));
    }
    tracing::warn!(client_id, "an operator disconnects a client");
    match clients.disconnect(client_id, DISCONNECT_WAIT).await {
        Ok(0) => Err((
            StatusCode::NOT_FOUND,
            format!("no client {client_id:?} is connected"),
        )),
        Ok(n) => Ok(n),
        Err(open) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{open} connection(s) of {client_id:?} still open after {DISCONNECT_WAIT:?}"),
        )),
    }
}

/// The admin route of `grove clients disconnect` (loopback only, like the others):
/// `POST /admin/clients/disconnect` with `{"client_id": ...}` answers `{"disconnected": n}` once
/// the connections have ended, else `{"error": ...}` (see [`disconnect_client`]).
pub fn clients_router(clients: Clients) -> Router {
    Router::new()
        .route(DISCONNECT_PATH, post(disconnect))
        .with_state(clients)
}

async fn disconnect(State(clients): State<Clients>, body: String) -> impl IntoResponse {
    let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let client_id = request["client_id"].as_str().unwrap_or_default();
    let (status, body) = match disconnect_client(&clients, client_id).await {
        Ok(n) => (StatusCode::OK, serde_json::json!({ "disconnected": n })),
        Err((status, error)) => (status, serde_json::json!({ "error": error })),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// `grove clients disconnect`: asks the gateway whose ops endpoint is `addr` to end the
/// connections of `client_id` (blocking, for the CLI); what it answered, for the operator.
pub fn request_disconnect(addr: SocketAddr, client_id: &str) -> Result<String, String> {
    let body = serde_json::json!({ "client_id": client_id }).to_string();
    match admin_post(addr, DISCONNECT_PATH, body)? {
        Some((status, answer)) => match answer["disconnected"].as_u64() {
            Some(n) if status.is_success() => {
                Ok(format!("{client_id}: {n} connection(s) closed\n"))
            }
            _ => Err(answer["error"]
                .as_str()
                .map_or_else(|| format!("the gateway answered {status}"), str::to_owned)),
        },
        None => Err(format!("no gateway is running at {addr}")),
    }
}

/// A POST of `body` to the loopback admin route `path` (ureq, as `grove fn` uses: one request,
/// no runtime): the status and JSON answer, `None` when nothing listens at `addr`.
fn admin_post(
    addr: SocketAddr,
    path: &str,
    body: String,
) -> Result<Option<(ureq::http::StatusCode, serde_json::Value)>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REVOCATION_WAIT + Duration::from_secs(5)))
        .build()
        .into();
    let response = match agent
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .send(body.as_bytes())
    {
        Ok(r) => r,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot reach the gateway at {addr}: {e}")),
    };
    let status = response.status();
    let text = response
        .into_body()
        .read_to_string()
        .map_err(|e| format!("cannot read the gateway's answer: {e}"))?;
    let answer = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok(Some((status, answer)))
}

/// What `grove device remove` learns from the gateway.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The gateway applied the change; this many connections of revoked devices ended.
    Applied(u64),
    /// No gateway listens at the ops endpoint: the change applies when one starts (every CONNECT
    /// reads the devices file).
    NotRunning,
}

/// Asks the gateway whose ops endpoint is `addr` to apply a change of the devices file now (see
/// [`devices_router`]); blocking, for the CLI. ureq, as `grove fn` uses: one request, no runtime.
pub fn confirm_revocation(addr: SocketAddr) -> Result<Confirmation, String> {
    let Some((status, body)) = admin_post(addr, REVOCATIONS_PATH, String::new())? else {
        return Ok(Confirmation::NotRunning);
    };
    match body["disconnected"].as_u64() {
        Some(n) if status.is_success() => Ok(Confirmation::Applied(n)),
        _ => Err(format!(
            "the gateway at {addr} answered {status}: {}",
            body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned)
        )),
    }
}
