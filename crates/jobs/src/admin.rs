//! The admin routes `grove jobs` talks to, served by the ops endpoint on loopback only (like
//! `grove deploy`'s: the gateway owns its database, so the CLI asks the gateway, and it works with
//! the site offline). Answers are JSON; errors are `{"error": "..."}` with a 4xx/5xx status.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /admin/jobs` | a [`JobSpec`] | `201` [`JobInfo`] (counts) |
//! | `GET /admin/jobs` | | `[JobInfo]`, oldest first (counts) |
//! | `GET /admin/jobs/{id}` | | [`JobInfo`] with its document and executions |
//! | `POST /admin/jobs/{id}/cancel` | `{"force": bool}` (optional) | [`JobInfo`] |

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::machine::{CancelError, CreateError, JobSpec};
#[cfg(doc)]
use crate::service::JobInfo;
use crate::service::{AdminError, JobsHandle};

/// Largest request body: a job document (32 KiB) and a target list of 10,000 thing names.
const MAX_BODY: usize = 2 << 20;

/// The admin routes, to merge into the ops endpoint's router.
pub fn router(jobs: JobsHandle) -> Router {
    Router::new()
        .route("/admin/jobs", get(list).post(create))
        .route("/admin/jobs/:id", get(describe))
        .route("/admin/jobs/:id/cancel", post(cancel))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(jobs)
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn failed(e: AdminError) -> Response {
    let status = match &e {
        AdminError::Create(CreateError::Invalid(_)) => StatusCode::BAD_REQUEST,
        AdminError::Create(CreateError::Exists(_)) | AdminError::Cancel(CancelError::Ended(..)) => {
            StatusCode::CONFLICT
        }
        AdminError::Create(CreateError::TooMany(_)) => StatusCode::TOO_MANY_REQUESTS,
        AdminError::Cancel(CancelError::NotFound(_)) => StatusCode::NOT_FOUND,
        AdminError::Store(_) | AdminError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    reply(status, json!({ "error": e.to_string() }))
}

async fn create(State(jobs): State<JobsHandle>, body: Bytes) -> Response {
    let spec: JobSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("not a job: {e}") }),
            )
        }
    };
    match jobs.create(spec).await {
        Ok(info) => reply(StatusCode::CREATED, json!(info)),
        Err(e) => failed(e),
    }
}

async fn list(State(jobs): State<JobsHandle>) -> Response {
    match jobs.list().await {
        Ok(list) => reply(StatusCode::OK, json!(list)),
        Err(e) => failed(e),
    }
}

async fn describe(State(jobs): State<JobsHandle>, Path(id): Path<String>) -> Response {
    match jobs.describe(&id).await {
        Ok(Some(info)) => reply(StatusCode::OK, json!(info)),
        Ok(None) => reply(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no job `{id}`") }),
        ),
        Err(e) => failed(e),
    }
}

async fn cancel(State(jobs): State<JobsHandle>, Path(id): Path<String>, body: Bytes) -> Response {
    let force = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["force"].as_bool())
        .unwrap_or(false);
    match jobs.cancel(&id, force).await {
        Ok(info) => reply(StatusCode::OK, json!(info)),
        Err(e) => failed(e),
    }
}
