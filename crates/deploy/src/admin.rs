//! The admin routes `grove deploy` talks to, served by the ops endpoint (loopback only, like
//! `grove fn`'s: the gateway owns its database, so the CLI asks the gateway, and works offline).
//! Answers are JSON; errors are `{"error": "..."}` with a 4xx/5xx status.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /admin/deployments` | the deployment document | `202 {id}` (applying or waiting) |
//! | `GET /admin/deployments` | | [`Overview`]: committed, applying, last |
//! | `GET /admin/deployments/history` | | `[Summary]`, newest first |
//! | `GET /admin/deployments/{id}` | | [`Summary`](crate::service::Summary) |
//! | `POST /admin/deployments/rollback` | | `202 {id, action}` |

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::document::MAX_DOCUMENT;
#[cfg(doc)]
use crate::service::Overview;
use crate::service::{ApplyError, Deployer};

/// The admin routes, to merge into the ops endpoint's router.
pub fn router(deployer: Deployer) -> Router {
    Router::new()
        .route("/admin/deployments", get(overview).post(apply))
        .route("/admin/deployments/history", get(history))
        .route("/admin/deployments/rollback", post(rollback))
        .route("/admin/deployments/:id", get(one))
        // The document's own limit, plus room for the parser to say it is too large.
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT + 1))
        .with_state(deployer)
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    reply(status, json!({ "error": message.to_string() }))
}

async fn apply(State(d): State<Deployer>, body: Bytes) -> Response {
    match d.apply(&body).await {
        Ok(id) => reply(StatusCode::ACCEPTED, json!({ "id": id })),
        Err(e @ ApplyError::Document(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ (ApplyError::Duplicate(_) | ApplyError::DuplicateFrom(..))) => {
            error(StatusCode::CONFLICT, e)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn overview(State(d): State<Deployer>) -> Response {
    match d.overview().await {
        Ok(o) => reply(StatusCode::OK, json!(o)),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn history(State(d): State<Deployer>) -> Response {
    match d.history().await {
        Ok(h) => reply(StatusCode::OK, json!(h)),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn one(State(d): State<Deployer>, Path(id): Path<String>) -> Response {
    match d.get(&id).await {
        Ok(Some(s)) => reply(StatusCode::OK, json!(s)),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no deployment `{id}`")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn rollback(State(d): State<Deployer>) -> Response {
    match d.rollback().await {
        Ok(started) => reply(StatusCode::ACCEPTED, json!(started)),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}
