//! The admin routes `grove fn` talks to, served by the ops endpoint (loopback only).
//!
//! The gateway's database is opened exclusively by the running gateway, so the CLI asks the
//! gateway. HTTP rather than MQTT because a module can be larger than the broker's payload limit
//! and a deploy is a plain request/response. Bodies and answers are JSON; errors are
//! `{"error": "..."}` with a 4xx/5xx status.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /admin/functions` | | `[{name, versions, latest, aliases, triggers, unavailable}]` |
//! | `POST /admin/functions` | `{manifest, module (base64), alias?}` | `{name, version, from_cache}` |
//! | `DELETE /admin/functions/{name}` | | `{}` |
//! | `POST /admin/functions/{name}/invoke` | `{qualifier?, payload}` | the invocation's answer envelope |
//! | `PUT /admin/functions/{name}/aliases/{alias}` | `{version, weight?: {version, percent}}` | `{}` |
//! | `GET /admin/functions/{name}/logs` | | `{lines: [...]}` |

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::protocol::{answer, error_answer};
use crate::routing::Qualifier;
use crate::service::{FunctionError, Functions};

/// Largest admin request body (a deploy carries the module, base64-encoded).
const MAX_BODY: usize = 64 << 20;

/// The admin routes, to merge into the ops endpoint's router.
pub fn router(functions: Functions) -> Router {
    Router::new()
        .route("/admin/functions", get(list).post(deploy))
        .route("/admin/functions/:name", axum::routing::delete(remove))
        .route("/admin/functions/:name/invoke", post(invoke))
        .route("/admin/functions/:name/aliases/:alias", put(alias))
        .route("/admin/functions/:name/logs", get(logs))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(functions)
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn failed(e: FunctionError) -> Response {
    let status = match e {
        FunctionError::NotFound(_) => StatusCode::NOT_FOUND,
        FunctionError::Manifest(_)
        | FunctionError::Deploy(super::runtime::DeployError::Malformed(_))
        | FunctionError::Deploy(super::runtime::DeployError::Abi(_))
        | FunctionError::Deploy(super::runtime::DeployError::Limit(_))
        | FunctionError::Routing(_)
        | FunctionError::BadRequest(_) => StatusCode::BAD_REQUEST,
        FunctionError::LoadFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply(status, json!({"error": e.to_string()}))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))
}

fn bad_request(message: String) -> Response {
    reply(StatusCode::BAD_REQUEST, json!({ "error": message }))
}

async fn list(State(f): State<Functions>) -> Response {
    reply(StatusCode::OK, json!(f.list()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    manifest: String,
    module: String,
    alias: Option<String>,
}

async fn deploy(State(f): State<Functions>, body: Bytes) -> Response {
    let request: DeployRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Ok(module) = base64::engine::general_purpose::STANDARD.decode(&request.module) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "`module` is not base64"}),
        );
    };
    match f.deploy(&request.manifest, module, request.alias).await {
        Ok(d) => reply(StatusCode::OK, json!(d)),
        Err(e) => failed(e),
    }
}

async fn remove(State(f): State<Functions>, Path(name): Path<String>) -> Response {
    match f.remove(&name).await {
        Ok(()) => reply(StatusCode::OK, json!({})),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeRequest {
    qualifier: Option<String>,
    #[serde(default)]
    payload: String,
}

async fn invoke(State(f): State<Functions>, Path(name): Path<String>, body: Bytes) -> Response {
    let request: InvokeRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let qualifier = match request.qualifier.as_deref().map(Qualifier::parse) {
        None => Qualifier::Latest,
        Some(Ok(q)) => q,
        Some(Err(e)) => return failed(e.into()),
    };
    match f
        .invoke_by_operator(&name, &qualifier, request.payload.into())
        .await
    {
        Ok(invoked) => reply(StatusCode::OK, answer(&invoked)),
        Err(e @ FunctionError::NotFound(_)) => reply(StatusCode::NOT_FOUND, error_answer(&e)),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Weight {
    version: u64,
    percent: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasRequest {
    version: u64,
    weight: Option<Weight>,
}

async fn alias(
    State(f): State<Functions>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request: AliasRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let weight = request.weight.map(|w| (w.version, w.percent));
    match f.set_alias(&name, &alias, request.version, weight).await {
        Ok(()) => reply(StatusCode::OK, json!({})),
        Err(e) => failed(e),
    }
}

async fn logs(State(f): State<Functions>, Path(name): Path<String>) -> Response {
    match f.logs(&name) {
        Ok(lines) => reply(StatusCode::OK, json!({ "lines": lines })),
        Err(e) => failed(e),
    }
}
