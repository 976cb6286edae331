//! The console's HTTP shell (axum): the route table, the guard, the handlers and the live streams.
//!
//! The router is built from [`ROUTES`] only, each route behind the guard its [`Access`] names, so
//! a route cannot be served without being in the table, and the security tests, which enumerate
//! the table, see every route.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Form, Router};
use futures_util::stream;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ConsoleConfig;
use crate::core::{History, Limits, Sessions, SignInBudget};
use crate::{pages, password, Gateway};

/// Who may use a route, and what the guard checks before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the sign-in page and the embedded assets.
    Open,
    /// The sign-in form's target: a same-origin request (no session yet).
    SignIn,
    /// A page: a live session, else a redirect to the sign-in page.
    Page,
    /// A live stream: a live session, else 401.
    Stream,
    /// A change: a live session, its CSRF token in the form and a same-origin request, else 401
    /// (no session) or 403.
    Change,
    /// An upload (a multipart form: a function's module): a live session, its CSRF token in the
    /// query string (`?csrf=`; the guard does not read a multipart body) and a same-origin
    /// request, else 401 (no session) or 403.
    Upload,
}

/// One route of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// Who may use it.
    pub access: Access,
}

const fn route(method: &'static str, path: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        access,
    }
}

/// Where the console lives on the ops endpoint.
pub(crate) const BASE: &str = "/console";
pub(crate) const SIGN_IN: &str = "/console/signin";
pub(crate) const SIGN_OUT: &str = "/console/signout";
pub(crate) const OVERVIEW: &str = "/console";
pub(crate) const DEVICES: &str = "/console/devices";
pub(crate) const DISCONNECT: &str = "/console/devices/disconnect";
pub(crate) const ADD_DEVICE: &str = "/console/devices/add";
pub(crate) const REMOVE_DEVICE: &str = "/console/devices/remove";
pub(crate) const OVERVIEW_EVENTS: &str = "/console/events/overview";
pub(crate) const DEVICES_EVENTS: &str = "/console/events/devices";
pub(crate) const TOPICS: &str = "/console/topics";
pub(crate) const SHADOWS: &str = "/console/shadows";
pub(crate) const CLOUD: &str = "/console/cloud";
pub(crate) const CLOUD_EVENTS: &str = "/console/events/cloud";
pub(crate) const SHADOW: &str = "/console/shadow";
pub(crate) const SHADOW_EVENTS: &str = "/console/events/shadow";
pub(crate) const SET_DESIRED: &str = "/console/shadow/desired";
pub(crate) const TOPICS_EVENTS: &str = "/console/events/topics";
pub(crate) const RULES: &str = "/console/rules";
pub(crate) const RULES_EVENTS: &str = "/console/events/rules";
pub(crate) const RULE_TEST: &str = "/console/rules/test";
pub(crate) const RULES_RELOAD: &str = "/console/rules/reload";
pub(crate) const RULE_SAVE: &str = "/console/rules/save";
pub(crate) const FUNCTIONS: &str = "/console/functions";
pub(crate) const FUNCTIONS_EVENTS: &str = "/console/events/functions";
pub(crate) const FUNCTION: &str = "/console/function";
pub(crate) const FUNCTION_EVENTS: &str = "/console/events/function";
pub(crate) const INVOKE: &str = "/console/function/invoke";
pub(crate) const SET_ALIAS: &str = "/console/function/alias";
pub(crate) const DEPLOY: &str = "/console/functions/deploy";
pub(crate) const DEPLOYMENTS: &str = "/console/deployments";
pub(crate) const DEPLOYMENTS_EVENTS: &str = "/console/events/deployments";
pub(crate) const ROLLBACK: &str = "/console/deployments/rollback";
pub(crate) const CANCEL_JOB: &str = "/console/jobs/cancel";
pub(crate) const STYLE: &str = "/console/assets/console.css";
pub(crate) const SCRIPT: &str = "/console/assets/console.js";

/// Every route of the console: the router is built from this table only.
pub const ROUTES: &[Route] = &[
    route("GET", SIGN_IN, Access::Open),
    route("POST", SIGN_IN, Access::SignIn),
    route("GET", STYLE, Access::Open),
    route("GET", SCRIPT, Access::Open),
    route("GET", OVERVIEW, Access::Page),
    route("GET", DEVICES, Access::Page),
    route("GET", OVERVIEW_EVENTS, Access::Stream),
    route("GET", DEVICES_EVENTS, Access::Stream),
    route("GET", TOPICS, Access::Page),
    route("GET", TOPICS_EVENTS, Access::Stream),
    route("GET", SHADOWS, Access::Page),
    route("GET", CLOUD, Access::Page),
    route("GET", CLOUD_EVENTS, Access::Stream),
    route("GET", SHADOW, Access::Page),
    route("GET", SHADOW_EVENTS, Access::Stream),
    route("POST", SET_DESIRED, Access::Change),
    route("GET", RULES, Access::Page),
    route("GET", RULES_EVENTS, Access::Stream),
    route("POST", RULE_TEST, Access::Change),
    route("POST", RULES_RELOAD, Access::Change),
    route("POST", RULE_SAVE, Access::Change),
    route("GET", FUNCTIONS, Access::Page),
    route("GET", FUNCTIONS_EVENTS, Access::Stream),
    route("GET", FUNCTION, Access::Page),
    route("GET", FUNCTION_EVENTS, Access::Stream),
    route("POST", INVOKE, Access::Change),
    route("POST", SET_ALIAS, Access::Change),
    route("POST", DEPLOY, Access::Upload),
    route("GET", DEPLOYMENTS, Access::Page),
    route("GET", DEPLOYMENTS_EVENTS, Access::Stream),
    route("POST", ROLLBACK, Access::Change),
    route("POST", CANCEL_JOB, Access::Change),
    route("POST", DISCONNECT, Access::Change),
    route("POST", ADD_DEVICE, Access::Change),
    route("POST", REMOVE_DEVICE, Access::Change),
    route("POST", SIGN_OUT, Access::Change),
];

/// The session cookie's name.
const COOKIE: &str = "grove_console";

/// How often the overview takes a reading, and how long it keeps them.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const HISTORY: Duration = Duration::from_secs(3600);

/// How often a devices stream looks at the connected clients (an in-memory table) and at the
/// devices file's modification time.
const DEVICES_EVERY: Duration = Duration::from_millis(500);

/// A topics stream sends its fragment at most this often, whatever the message rate: a busy
/// topic costs the gateway a few renders a second per viewer, not one per message.
const TOPICS_EVERY: Duration = Duration::from_millis(250);

/// The messages a topics stream shows, newest first.
pub(crate) const TOPICS_SHOWN: usize = 50;

/// How often a cloud stream asks the cloud link for its status, and a deployments stream the
/// deployments and jobs (from the store).
const CLOUD_EVERY: Duration = Duration::from_secs(2);

/// How often a rules stream reads the rules' counters, and a functions stream the functions'
/// list, counters and logs (all in memory).
const RULES_EVERY: Duration = Duration::from_secs(1);

/// How often an idle live stream sends a comment (see `live`).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The largest form a change may send (a rule to test with its sample message, a desired state,
/// a client id; and the token).
const FORM_LIMIT: usize = 16 * 1024;

/// The largest upload: a module (the functions host compiles modules of at most 4 MiB), its
/// manifest and the form's framing.
const UPLOAD_LIMIT: usize = 5 << 20;

/// The most of an upload read at all: past [`UPLOAD_LIMIT`] it is read and dropped, to answer
/// 413 to a browser that is still sending; past this, the connection is closed.
const DRAIN_LIMIT: usize = 64 << 20;

/// The longest a refused upload's body is read (see `discard`).
const DISCARD_FOR: Duration = Duration::from_secs(5);

/// The embedded assets (their byte budget: README "Web console", checked by a test).
const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

/// The shell's state, shared by every request.
#[derive(Clone)]
struct Shell(Arc<Inner>);

struct Inner {
    gateway: Arc<dyn Gateway>,
    limits: Limits,
    /// Host names answered besides IP addresses and `localhost` (`config::ConsoleConfig::hosts`).
    hosts: Vec<String>,
    sessions: Mutex<Sessions>,
    budget: Mutex<SignInBudget>,
    /// One argon2 run at a time: a burst of sign-ins queues nothing (see `sign_in`).
    argon2: Semaphore,
    /// The live streams' budget.
    streams: Arc<Semaphore>,
    /// One upload at a time (each holds up to [`UPLOAD_LIMIT`] in memory).
    uploads: Semaphore,
    history: Mutex<History>,
    /// Bumped at every reading, which wakes the overview streams.
    readings: watch::Sender<u64>,
    password_file: PathBuf,
    devices_file: PathBuf,
    /// The devices file as last read, with its modification time and length then: the devices
    /// streams look twice a second, and read the file again only when it changed.
    identities: Mutex<(Option<(std::time::SystemTime, u64)>, Identities)>,
    started: Instant,
    random: SystemRandom,
}

impl Shell {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.0.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn token(&self) -> String {
        let mut bytes = [0u8; 32];
        // The system's random source failing is not something to serve through.
        self.0
            .random
            .fill(&mut bytes)
            .expect("the system's random source");
        hex::encode(bytes)
    }
}

/// The session the guard found, for the handlers.
#[derive(Clone)]
struct Current {
    token: String,
    csrf: String,
}

/// The console's router (mounted by the gateway on its ops endpoint), reading the operator's
/// password and the devices file in `data_dir`. It starts the overview's sampler, which ends
/// when the router is dropped; so it must be called within a tokio runtime.
pub fn router(config: &ConsoleConfig, data_dir: &Path, gateway: Arc<dyn Gateway>) -> Router {
    let limits = config.limits;
    let shell = Shell(Arc::new(Inner {
        gateway,
        limits,
        hosts: config.hosts.clone(),
        sessions: Mutex::new(Sessions::new(limits)),
        budget: Mutex::new(SignInBudget::new(limits)),
        argon2: Semaphore::new(1),
        streams: Arc::new(Semaphore::new(limits.max_streams)),
        uploads: Semaphore::new(1),
        history: Mutex::new(History::new(HISTORY, SAMPLE_EVERY)),
        readings: watch::Sender::new(0),
        password_file: password::path(data_dir),
        devices_file: data_dir.join(grove_auth::identity::DEVICES_FILE),
        identities: Mutex::new((None, Ok(Vec::new()))),
        started: Instant::now(),
        random: SystemRandom::new(),
    }));
    tokio::spawn(sample(Arc::downgrade(&shell.0)));
    let mut app = Router::new();
    for r in ROUTES {
        let guarded = handler(r).route_layer(middleware::from_fn_with_state(
            (shell.clone(), r.access),
            guard,
        ));
        app = app.route(r.path, guarded);
    }
    app.layer(middleware::map_response(harden))
        .with_state(shell)
}

/// The handler of a route in [`ROUTES`].
fn handler(r: &Route) -> MethodRouter<Shell> {
    match (r.method, r.path) {
        ("GET", SIGN_IN) => get(sign_in_page),
        ("POST", SIGN_IN) => post(sign_in),
        ("GET", STYLE) => get(|| async { asset("text/css; charset=utf-8", CSS) }),
        ("GET", SCRIPT) => get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        ("GET", OVERVIEW) => get(overview),
        ("GET", DEVICES) => get(devices),
        ("GET", OVERVIEW_EVENTS) => get(overview_events),
        ("GET", DEVICES_EVENTS) => get(devices_events),
        ("GET", TOPICS) => get(topics),
        ("GET", TOPICS_EVENTS) => get(topics_events),
        ("GET", SHADOWS) => get(shadows),
        ("GET", CLOUD) => get(cloud),
        ("GET", CLOUD_EVENTS) => get(cloud_events),
        ("GET", SHADOW) => get(shadow),
        ("GET", SHADOW_EVENTS) => get(shadow_events),
        ("POST", SET_DESIRED) => post(set_desired),
        ("GET", RULES) => get(rules),
        ("GET", RULES_EVENTS) => get(rules_events),
        ("POST", RULE_TEST) => post(rule_test),
        ("POST", RULES_RELOAD) => post(rules_reload),
        ("POST", RULE_SAVE) => post(rule_save),
        ("GET", FUNCTIONS) => get(functions),
        ("GET", FUNCTIONS_EVENTS) => get(functions_events),
        ("GET", FUNCTION) => get(function),
        ("GET", FUNCTION_EVENTS) => get(function_events),
        ("POST", INVOKE) => post(invoke),
        ("POST", SET_ALIAS) => post(set_alias),
        ("POST", DEPLOY) => post(deploy).layer(DefaultBodyLimit::max(DRAIN_LIMIT)),
        ("GET", DEPLOYMENTS) => get(deployments),
        ("GET", DEPLOYMENTS_EVENTS) => get(deployments_events),
        ("POST", ROLLBACK) => post(rollback),
        ("POST", CANCEL_JOB) => post(cancel_job),
        ("POST", DISCONNECT) => post(disconnect),
        ("POST", ADD_DEVICE) => post(add_device),
        ("POST", REMOVE_DEVICE) => post(remove_device),
        ("POST", SIGN_OUT) => post(sign_out),
        (method, path) => unreachable!("route {method} {path} in ROUTES has no handler"),
    }
}

/// Every answer: not cached, not framed by another site, scripts and styles from the console
/// only (no inline script runs).
async fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it a browser sends `Origin: null` on the console's own form posts
    // (Fetch's origin serialization), which the same-origin check then refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The guard of every route, by its [`Access`].
async fn guard(
    State((shell, access)): State<(Shell, Access)>,
    request: Request,
    next: Next,
) -> Response {
    if !host_allowed(request.headers(), &shell.0.hosts) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "refused: the Host header names neither an IP address, localhost nor a name in \
             console.hosts (a guard against DNS rebinding)\n",
        )
            .into_response();
    }
    match access {
        Access::Open => return next.run(request).await,
        Access::SignIn if !same_origin(request.headers()) => return cross_site(),
        Access::SignIn => return next.run(request).await,
        Access::Page | Access::Stream | Access::Change | Access::Upload => {}
    }
    let (parts, body) = request.into_parts();
    let current = match admit(&shell, access, &parts) {
        Ok(current) => current,
        Err(refused) => {
            if access == Access::Upload {
                discard(body).await;
            }
            return refused.into_response();
        }
    };
    let body = match access {
        Access::Change => {
            let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
                return (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response();
            };
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
            if !carries_token(&form, &current.csrf) {
                return wrong_token();
            }
            Body::from(bytes)
        }
        _ => body,
    };
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(current);
    next.run(request).await
}

/// Why the guard refused a request.
enum Refusal {
    /// A page without a live session: sent to the sign-in page.
    SignInFirst,
    /// A stream, change or upload without a live session: 401.
    NoSession,
    /// A change or upload from another site: 403.
    CrossSite,
    /// A change or upload without this session's CSRF token: 403.
    WrongToken,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignInFirst => Redirect::to(SIGN_IN).into_response(),
            Refusal::NoSession => (StatusCode::UNAUTHORIZED, "sign in first\n").into_response(),
            Refusal::CrossSite => cross_site(),
            Refusal::WrongToken => wrong_token(),
        }
    }
}

/// The session a page, stream, change or upload comes with, checked as far as the request's
/// head allows: live, and for a change or an upload same-origin, and for an upload its CSRF token
/// in the query string (a change's is in its form, read by the guard).
fn admit(
    shell: &Shell,
    access: Access,
    head: &axum::http::request::Parts,
) -> Result<Current, Refusal> {
    let token = cookie(&head.headers);
    let session = token
        .as_deref()
        .and_then(|t| shell.sessions().touch(Instant::now(), t));
    let (Some(token), Some(session)) = (token, session) else {
        return Err(match access {
            Access::Page => Refusal::SignInFirst,
            _ => Refusal::NoSession,
        });
    };
    if matches!(access, Access::Change | Access::Upload) && !same_origin(&head.headers) {
        return Err(Refusal::CrossSite);
    }
    if access == Access::Upload {
        let query = head.uri.query().unwrap_or_default();
        let fields: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        if !carries_token(&fields, &session.csrf) {
            return Err(Refusal::WrongToken);
        }
    }
    Ok(Current {
        token,
        csrf: session.csrf,
    })
}

/// Reads a refused upload's body and drops it, [`UPLOAD_LIMIT`] bytes and [`DISCARD_FOR`] at
/// most: a browser still sending its upload when the refusal comes would otherwise see the
/// connection reset instead of the answer (the test's client did, now and then, on a loaded
/// machine).
async fn discard(body: Body) {
    use futures_util::StreamExt;
    let mut data = body.into_data_stream();
    let _ = tokio::time::timeout(DISCARD_FOR, async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = data.next().await {
            seen += chunk.len();
            if seen > UPLOAD_LIMIT {
                return;
            }
        }
    })
    .await;
}

/// Whether `fields` (a form's, or a query string's) carry the session's CSRF token `csrf`
/// (compared in constant time).
fn carries_token(fields: &[(String, String)], csrf: &str) -> bool {
    let sent = fields.iter().find(|(k, _)| k == "csrf");
    sent.is_some_and(|(_, sent)| bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())))
}

fn wrong_token() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: the form's CSRF token is missing or not this session's\n",
    )
        .into_response()
}

/// Whether the request is addressed (`Host`, without its port) to an IP address, `localhost` or
/// one of `hosts` (see `config`: DNS rebinding).
fn host_allowed(headers: &HeaderMap, hosts: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: not a same-origin request (Origin / Sec-Fetch-Site)\n",
    )
        .into_response()
}

/// Whether a request comes from the console's own pages: `Sec-Fetch-Site: same-origin` and an
/// `Origin` of this host, whichever the client sent, and at least one of them (every browser
/// that runs the console sends `Origin` with a POST; a request with neither is not a browser's
/// form and is refused too).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let site = text(header::HeaderName::from_static("sec-fetch-site")).map(|s| s == "same-origin");
    let origin = match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => {
            Some(origin == format!("http://{host}") || origin == format!("https://{host}"))
        }
        (Some(_), None) => Some(false),
        (None, _) => None,
    };
    site != Some(false) && origin != Some(false) && (site.is_some() || origin.is_some())
}

/// The session cookie's value. By hand rather than with a cookie crate: one cookie of ours is
/// read, and RFC 6265's `Cookie` header is `name=value` pairs separated by `; `.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn session_cookie(token: &str, max_age: Duration) -> String {
    format!(
        "{COOKIE}={token}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

async fn sign_in_page(State(shell): State<Shell>) -> Response {
    let set = password::load(&shell.0.password_file).is_some();
    pages::sign_in(set, None).into_response()
}

#[derive(Deserialize)]
struct SignIn {
    password: String,
}

/// Checks the operator's password within the budget: refused without running argon2 when the
/// failures' budget is spent or another check is running (429), so a burst of wrong passwords
/// costs at most one argon2 run at a time.
async fn sign_in(State(shell): State<Shell>, Form(form): Form<SignIn>) -> Response {
    let refused = |status, why: &str| (status, pages::sign_in(true, Some(why))).into_response();
    let Some(hash) = password::load(&shell.0.password_file) else {
        return (StatusCode::UNAUTHORIZED, pages::sign_in(false, None)).into_response();
    };
    let check = shell
        .0
        .budget
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(Instant::now());
    if let Err(wait) = check {
        return retry_after(
            refused(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins: wait a minute.",
            ),
            wait,
        );
    }
    let Ok(_running) = shell.0.argon2.try_acquire() else {
        return retry_after(
            refused(
                StatusCode::TOO_MANY_REQUESTS,
                "Another sign-in is being checked: try again.",
            ),
            Duration::from_secs(1),
        );
    };
    let matches = tokio::task::spawn_blocking(move || {
        grove_auth::identity::password_matches(&hash, &form.password)
    })
    .await
    .unwrap_or(false);
    if !matches {
        shell
            .0
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(Instant::now());
        tracing::warn!("console: a sign-in with a wrong password");
        return refused(StatusCode::UNAUTHORIZED, "Wrong password.");
    }
    let (token, csrf) = (shell.token(), shell.token());
    shell.sessions().open(Instant::now(), token.clone(), csrf);
    tracing::info!("console: operator signed in");
    (
        [(
            header::SET_COOKIE,
            session_cookie(&token, shell.0.limits.absolute),
        )],
        Redirect::to(OVERVIEW),
    )
        .into_response()
}

/// `response` with a `Retry-After` of `wait` (at least a second).
fn retry_after(mut response: Response, wait: Duration) -> Response {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs().max(1)),
    );
    response
}

async fn sign_out(State(shell): State<Shell>, Extension(current): Extension<Current>) -> Response {
    shell.sessions().close(&current.token);
    (
        [(header::SET_COOKIE, session_cookie("", Duration::ZERO))],
        Redirect::to(SIGN_IN),
    )
        .into_response()
}

fn overview_now(shell: &Shell) -> pages::Overview {
    let history = shell.0.history.lock().unwrap_or_else(|p| p.into_inner());
    pages::Overview {
        uptime: shell.0.started.elapsed(),
        points: history.points(),
        reading: shell.0.gateway.reading(),
    }
}

async fn overview(State(shell): State<Shell>, Extension(current): Extension<Current>) -> Response {
    pages::overview(&current.csrf, &overview_now(&shell)).into_response()
}

/// The registered devices, or why the devices file cannot be read.
type Identities = Result<Vec<grove_auth::identity::Device>, String>;

fn devices_now(shell: &Shell) -> pages::Devices {
    let file = &shell.0.devices_file;
    let stamp = std::fs::metadata(file)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    let mut cached = shell.0.identities.lock().unwrap_or_else(|p| p.into_inner());
    if stamp.is_none() || cached.0 != stamp {
        let identities = grove_auth::identity::load(file)
            .map(|d| d.into_values().collect())
            .map_err(|e| e.to_string());
        *cached = (stamp, identities);
    }
    pages::Devices {
        clients: shell.0.gateway.clients(),
        identities: cached.1.clone(),
    }
}

async fn devices(State(shell): State<Shell>, Extension(current): Extension<Current>) -> Response {
    pages::devices(&current.csrf, &devices_now(&shell), None).into_response()
}

/// The devices page's form that registers a device.
#[derive(Deserialize)]
struct AddDevice {
    id: String,
    #[serde(default)]
    thing: String,
    #[serde(default)]
    password: String,
    /// A checkbox: present when checked.
    #[serde(default)]
    certificate: Option<String>,
}

/// Registers a device; with a certificate, answers with its PEM (the certificate, its key and
/// the CA's) as a download, else goes back to the devices page (303); the page with why not
/// (400).
async fn add_device(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<AddDevice>,
) -> Response {
    let given = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let password = Some(form.password).filter(|p| !p.is_empty());
    let added = (shell.0.gateway)
        .add_device(
            form.id.trim().to_owned(),
            given(form.thing),
            password,
            form.certificate.is_some(),
        )
        .await;
    match added {
        Ok(None) => Redirect::to(DEVICES).into_response(),
        Ok(Some(pem)) => {
            // The id is free of / + # $ { } (a policy variable); the file name keeps it plain.
            let name: String = (form.id.trim().chars())
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let disposition = format!("attachment; filename=\"{name}.pem\"");
            (
                [
                    (header::CONTENT_TYPE, "application/x-pem-file".to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                pem,
            )
                .into_response()
        }
        Err(why) => devices_refused(&shell, &current.csrf, &why),
    }
}

/// The devices page again with why its form was refused (400).
fn devices_refused(shell: &Shell, csrf: &str, why: &str) -> Response {
    let page = pages::devices(csrf, &devices_now(shell), Some(why));
    (StatusCode::BAD_REQUEST, page).into_response()
}

/// The remove button of a registered device.
#[derive(Deserialize)]
struct RemoveDevice {
    id: String,
}

/// Removes a device and waits for its connections to close; the devices page (303), or the page
/// with why not (400).
async fn remove_device(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<RemoveDevice>,
) -> Response {
    match shell.0.gateway.remove_device(form.id).await {
        Ok(_) => Redirect::to(DEVICES).into_response(),
        Err(why) => devices_refused(&shell, &current.csrf, &why),
    }
}

#[derive(Deserialize)]
struct Disconnect {
    client_id: String,
}

/// The gateway logs the disconnect and bounds its wait (`Gateway::disconnect`).
async fn disconnect(State(shell): State<Shell>, Form(form): Form<Disconnect>) -> Response {
    match shell.0.gateway.disconnect(form.client_id.clone()).await {
        Ok(_) => Redirect::to(DEVICES).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot disconnect {:?}: {e}\n", form.client_id),
        )
            .into_response(),
    }
}

/// What wakes a live stream to render again.
enum Wake {
    /// A new reading (the overview).
    Readings(watch::Receiver<u64>),
    /// A new fragment from a page's task (see `live_fragments`).
    Fragments(watch::Receiver<String>),
    /// A look every so often (the devices: an in-memory table and a file's time).
    Every(Duration),
}

impl Wake {
    /// Waits for the next wake; `false` once nothing will wake it again.
    async fn wait(&mut self) -> bool {
        match self {
            Wake::Readings(r) => r.changed().await.is_ok(),
            Wake::Fragments(f) => f.changed().await.is_ok(),
            Wake::Every(d) => {
                tokio::time::sleep(*d).await;
                true
            }
        }
    }
}

/// A live stream's state.
struct Live<F> {
    shell: Shell,
    token: String,
    /// Its place in the streams' budget, given back when the stream is dropped.
    _slot: OwnedSemaphorePermit,
    wake: Wake,
    render: F,
    last: Option<String>,
}

/// A live stream of `render`'s fragments: one at once, then one whenever `wake` says and the
/// fragment changed, while the session lives (a sign-out or expiry ends it at its next wake).
fn live<F>(shell: Shell, current: Current, wake: Wake, render: F) -> Response
where
    F: Fn(&Shell) -> String + Send + 'static,
{
    let slot = match shell.0.streams.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many live streams open: close a console tab\n",
            )
                .into_response()
        }
    };
    let state = Live {
        shell,
        token: current.token,
        _slot: slot,
        wake,
        render,
        last: None,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if s.last.is_some() && !s.wake.wait().await {
                return None;
            }
            if !s.shell.sessions().is_live(Instant::now(), &s.token) {
                return None;
            }
            let fragment = (s.render)(&s.shell);
            if s.last.as_deref() != Some(fragment.as_str()) {
                s.last = Some(fragment.clone());
                return Some((
                    Ok::<_, std::convert::Infallible>(Event::default().data(fragment)),
                    s,
                ));
            }
        }
    });
    // A closed tab is noticed at the next write: a comment every few seconds gives its place in
    // the streams' budget back soon.
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// A live stream of the fragments a page's own task makes (it renders on its own events: a
/// topic's messages, a shadow's updates, a status asked every so often) and sends on the other
/// end of `fragments`, the first at once; the task sees the stream end as that end's `closed()`.
fn live_fragments(shell: Shell, current: Current, fragments: watch::Receiver<String>) -> Response {
    let shown = fragments.clone();
    live(shell, current, Wake::Fragments(fragments), move |_| {
        shown.borrow().clone()
    })
}

async fn overview_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    let wake = Wake::Readings(shell.0.readings.subscribe());
    live(shell, current, wake, |shell| {
        pages::overview_live(&overview_now(shell)).into_string()
    })
}

async fn devices_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    let csrf = current.csrf.clone();
    live(shell, current, Wake::Every(DEVICES_EVERY), move |shell| {
        pages::devices_live(&csrf, &devices_now(shell)).into_string()
    })
}

/// The topics page's query: the filter to watch, if any.
#[derive(Deserialize)]
struct Watch {
    #[serde(default)]
    filter: String,
}

async fn topics(
    State(_shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(q): Query<Watch>,
) -> Response {
    pages::topics(&current.csrf, q.filter.trim()).into_response()
}

/// The messages of one filter, rendered as they come, newest first: a task takes them from the
/// gateway's bounded channel into the last [`TOPICS_SHOWN`] and wakes the stream at most every
/// [`TOPICS_EVERY`]; it ends with the stream (its wake's receiver dropped), which drops the
/// gateway's subscription.
async fn topics_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(q): Query<Watch>,
) -> Response {
    let filter = q.filter.trim().to_owned();
    if filter.is_empty() {
        return (StatusCode::BAD_REQUEST, "no filter to watch\n").into_response();
    }
    let mut messages = match shell.0.gateway.watch(filter.clone()).await {
        Ok(rx) => rx,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let first = pages::topics_live(&filter, std::iter::empty()).into_string();
    let (fragments, stream) = watch::channel(first);
    tokio::spawn(async move {
        let mut shown = std::collections::VecDeque::new();
        let mut arrived = std::collections::VecDeque::new();
        loop {
            let first = tokio::select! {
                _ = fragments.closed() => return,
                m = messages.recv() => m,
            };
            let mut take = Some(first);
            while let Some(m) = take {
                let Some(m) = m else { return };
                // Of a burst, only the last TOPICS_SHOWN are rendered: a busy topic costs a
                // render per message shown, not per message.
                arrived.push_back(m);
                if arrived.len() > TOPICS_SHOWN {
                    arrived.pop_front();
                }
                take = messages.try_recv().ok().map(Some);
            }
            for m in arrived.drain(..) {
                shown.push_front(pages::watched(&m).into_string());
            }
            shown.truncate(TOPICS_SHOWN);
            fragments.send_replace(
                pages::topics_live(&filter, shown.iter().map(String::as_str)).into_string(),
            );
            // Rate limit of the renders (not a wait for anything): messages arriving
            // meanwhile wait in the channel and go into the next render together.
            tokio::time::sleep(TOPICS_EVERY).await;
        }
    });
    live_fragments(shell, current, stream)
}

/// The shadows page's query: a search in thing and shadow names.
#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn shadows(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(search): Query<Search>,
) -> Response {
    let q = search.q.trim();
    let listed = shell.0.gateway.shadows().await.map(|all| {
        let wanted = q.to_lowercase();
        all.into_iter()
            .filter(|s| {
                s.thing.to_lowercase().contains(&wanted)
                    || s.shadow
                        .as_deref()
                        .is_some_and(|n| n.to_lowercase().contains(&wanted))
            })
            .collect::<Vec<_>>()
    });
    pages::shadows(&current.csrf, q, &listed).into_response()
}

/// A shadow named in a query or a form: its thing and, for a named shadow, its name (empty:
/// the classic shadow).
#[derive(Deserialize)]
struct Named {
    thing: String,
    #[serde(default)]
    shadow: String,
}

impl Named {
    fn shadow(&self) -> Option<String> {
        (!self.shadow.is_empty()).then(|| self.shadow.clone())
    }
}

async fn shadow(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(named): Query<Named>,
) -> Response {
    let doc = shell
        .0
        .gateway
        .shadow(named.thing.clone(), named.shadow())
        .await;
    let status = if doc.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let page = pages::shadow(
        &current.csrf,
        &named.thing,
        named.shadow().as_deref(),
        &doc,
        None,
    );
    (status, page).into_response()
}

/// A shadow's page, live: rendered again whenever the shadow service announces an accepted
/// update of it (`update/documents`, watched through the gateway like a topic).
async fn shadow_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(named): Query<Named>,
) -> Response {
    let gateway = shell.0.gateway.clone();
    let topic = match gateway.shadow_documents_topic(&named.thing, named.shadow().as_deref()) {
        Ok(topic) => topic,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let mut updates = match gateway.watch(topic).await {
        Ok(rx) => rx,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let first = gateway.shadow(named.thing.clone(), named.shadow()).await;
    let (fragments, stream) = watch::channel(pages::shadow_live(&first).into_string());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = fragments.closed() => return,
                update = updates.recv() => if update.is_none() { return },
            }
            // Updates that came together make one render.
            while updates.try_recv().is_ok() {}
            let doc = gateway.shadow(named.thing.clone(), named.shadow()).await;
            fragments.send_replace(pages::shadow_live(&doc).into_string());
        }
    });
    live_fragments(shell, current, stream)
}

/// The shadow page's form: the desired state to set, as JSON text.
#[derive(Deserialize)]
struct SetDesired {
    thing: String,
    #[serde(default)]
    shadow: String,
    desired: String,
}

/// Sets a shadow's desired state as a device's update would; the shadow's page again, with the
/// error (400) when the JSON or the update is refused.
async fn set_desired(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<SetDesired>,
) -> Response {
    let named = Named {
        thing: form.thing,
        shadow: form.shadow,
    };
    let result = match serde_json::from_str::<serde_json::Value>(&form.desired) {
        Ok(desired) => {
            let set = shell
                .0
                .gateway
                .set_desired(named.thing.clone(), named.shadow(), desired);
            set.await
        }
        Err(e) => Err(format!("the desired state is not JSON: {e}")),
    };
    match result {
        Ok(_) => {
            let page = pages::shadow_link(SHADOW, &named.thing, named.shadow().as_deref());
            Redirect::to(&page).into_response()
        }
        Err(why) => {
            let doc = shell
                .0
                .gateway
                .shadow(named.thing.clone(), named.shadow())
                .await;
            let page = pages::shadow(
                &current.csrf,
                &named.thing,
                named.shadow().as_deref(),
                &doc,
                Some((&form.desired, &why)),
            );
            (StatusCode::BAD_REQUEST, page).into_response()
        }
    }
}

async fn cloud(State(shell): State<Shell>, Extension(current): Extension<Current>) -> Response {
    let status = shell.0.gateway.cloud().await;
    pages::cloud(&current.csrf, &status).into_response()
}

/// A live stream of a part rendered from what the gateway is asked every [`CLOUD_EVERY`] while
/// the stream lives (`ask`: a request through a bus link or the store, so a task of its own
/// asks, not the stream); the stream sends the part when it changed.
async fn asked_every(
    shell: Shell,
    current: Current,
    ask: impl Fn(Arc<dyn Gateway>) -> crate::Pending<String> + Send + 'static,
) -> Response {
    let gateway = shell.0.gateway.clone();
    let (fragments, stream) = watch::channel(ask(gateway.clone()).await);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = fragments.closed() => return,
                _ = tokio::time::sleep(CLOUD_EVERY) => {}
            }
            fragments.send_replace(ask(gateway.clone()).await);
        }
    });
    live_fragments(shell, current, stream)
}

/// The cloud page, live: the cloud link's status.
async fn cloud_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    asked_every(shell, current, |gateway| {
        Box::pin(async move { pages::cloud_live(&gateway.cloud().await).into_string() })
    })
    .await
}

/// The status of a page that answers a form: 200, or 400 when the form was refused.
fn answered<T, E>(outcome: &Result<T, E>) -> StatusCode {
    match outcome {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// The rules page's query: the rule whose statement the test form starts from (default: the
/// first).
#[derive(Deserialize)]
struct RuleQuery {
    #[serde(default)]
    rule: String,
}

async fn rules(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(q): Query<RuleQuery>,
) -> Response {
    let rows = shell.0.gateway.rules();
    let form = pages::RuleTest::of(&rows, &q.rule);
    pages::rules(&current.csrf, &rows, &form, None).into_response()
}

async fn rules_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    live(shell, current, Wake::Every(RULES_EVERY), |shell| {
        pages::rules_live(&shell.0.gateway.rules()).into_string()
    })
}

/// Runs the test form's rule on its message (nothing is published); the page again with what it
/// would output, or why it cannot (400).
async fn rule_test(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<pages::RuleTest>,
) -> Response {
    let gateway = &shell.0.gateway;
    let outcome = match form.topic.trim() {
        "" => Err("a test needs its message's topic".to_owned()),
        topic => gateway.test_rule(&form.sql, topic, &form.payload, &form.client_id),
    };
    let status = answered(&outcome);
    let said = pages::Said::Test(outcome);
    let page = pages::rules(&current.csrf, &gateway.rules(), &form, Some(&said));
    (status, page).into_response()
}

/// Re-reads the rules from the configuration file; the page again with the rules now running,
/// or why nothing changed (400).
async fn rules_reload(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    let gateway = &shell.0.gateway;
    let outcome = gateway.reload_rules().await;
    let status = answered(&outcome);
    let rows = gateway.rules();
    let form = pages::RuleTest::of(&rows, "");
    let said = pages::Said::Reload(outcome);
    (
        status,
        pages::rules(&current.csrf, &rows, &form, Some(&said)),
    )
        .into_response()
}

/// Sets the form's rule's SQL in the configuration file and reloads; the page again with the
/// rules now running, or with the text sent and why it was not applied (400).
async fn rule_save(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<pages::RuleTest>,
) -> Response {
    let gateway = &shell.0.gateway;
    let outcome = gateway.save_rule(form.rule.clone(), form.sql.clone()).await;
    let status = answered(&outcome);
    let said = pages::Said::Saved(outcome);
    let page = pages::rules(&current.csrf, &gateway.rules(), &form, Some(&said));
    (status, page).into_response()
}

async fn functions(State(shell): State<Shell>, Extension(current): Extension<Current>) -> Response {
    pages::functions_with(&current.csrf, &shell.0.gateway.functions(), None).into_response()
}

async fn functions_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    live(shell, current, Wake::Every(RULES_EVERY), |shell| {
        pages::functions_live(&shell.0.gateway.functions()).into_string()
    })
}

/// A function named in a query or a form.
#[derive(Deserialize)]
struct FunctionName {
    name: String,
}

/// One function, as its page and its stream show it: its row and its log (`Err`: why not, 404).
fn function_now(shell: &Shell, name: &str) -> Result<pages::Function, String> {
    let gateway = &shell.0.gateway;
    let row = (gateway.functions()?.into_iter())
        .find(|f| f.name == name)
        .ok_or_else(|| format!("no function named {name:?} is deployed"))?;
    let logs = gateway.function_logs(name)?;
    Ok(pages::Function { row, logs })
}

/// A function's page again, with the answer to a form; 404 when the function is not there.
fn function_page(
    shell: &Shell,
    csrf: &str,
    name: &str,
    said: Option<&pages::FunctionSaid>,
) -> Response {
    let now = function_now(shell, name);
    let status = match (&now, said) {
        (Err(_), _) => StatusCode::NOT_FOUND,
        (
            Ok(_),
            Some(pages::FunctionSaid::InvokeRefused(_) | pages::FunctionSaid::AliasRefused(_)),
        ) => StatusCode::BAD_REQUEST,
        (Ok(_), _) => StatusCode::OK,
    };
    (status, pages::function(csrf, name, &now, said)).into_response()
}

async fn function(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(q): Query<FunctionName>,
) -> Response {
    function_page(&shell, &current.csrf, &q.name, None)
}

async fn function_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Query(q): Query<FunctionName>,
) -> Response {
    live(shell, current, Wake::Every(RULES_EVERY), move |shell| {
        pages::function_live(&function_now(shell, &q.name)).into_string()
    })
}

/// The function page's invoke form.
#[derive(Deserialize)]
struct Invoke {
    name: String,
    #[serde(default)]
    qualifier: String,
    #[serde(default)]
    payload: String,
}

/// Invokes the function with the form's payload; its page again with the answer envelope.
async fn invoke(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<Invoke>,
) -> Response {
    let answer = (shell.0.gateway)
        .invoke(
            form.name.clone(),
            form.qualifier.clone(),
            form.payload.clone(),
        )
        .await;
    let said = match answer {
        Ok(envelope) => pages::FunctionSaid::Answer(envelope),
        Err(why) => pages::FunctionSaid::InvokeRefused(why),
    };
    function_page(&shell, &current.csrf, &form.name, Some(&said))
}

/// The function page's alias form: the alias, its version, and optionally a second version with
/// the percent of invocations it takes.
#[derive(Deserialize)]
struct SetAlias {
    name: String,
    alias: String,
    version: String,
    #[serde(default)]
    weight_version: String,
    #[serde(default)]
    weight_percent: String,
}

impl SetAlias {
    /// The version and the weight, or why the numbers are not.
    fn numbers(&self) -> Result<(u64, Option<(u64, u8)>), String> {
        let version = (self.version.trim().parse())
            .map_err(|_| format!("version {:?} is not a number", self.version))?;
        let weight = match (self.weight_version.trim(), self.weight_percent.trim()) {
            ("", "") => None,
            (v, p) => Some((
                v.parse()
                    .map_err(|_| format!("the weighted version {v:?} is not a number"))?,
                p.parse()
                    .map_err(|_| format!("the percent {p:?} is not a number from 0 to 100"))?,
            )),
        };
        Ok((version, weight))
    }
}

/// Points an alias; the function's page (303), or the page again with why not (400).
async fn set_alias(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<SetAlias>,
) -> Response {
    let result = match form.numbers() {
        Ok((version, weight)) => {
            let set =
                (shell.0.gateway).set_alias(form.name.clone(), form.alias.clone(), version, weight);
            set.await
        }
        Err(why) => Err(why),
    };
    match result {
        Ok(()) => Redirect::to(&pages::function_link(FUNCTION, &form.name)).into_response(),
        Err(why) => {
            let said = pages::FunctionSaid::AliasRefused(why);
            function_page(&shell, &current.csrf, &form.name, Some(&said))
        }
    }
}

/// The functions page's upload form as read.
#[derive(Default)]
struct Upload {
    /// The manifest (TOML text).
    manifest: String,
    /// The module (WebAssembly).
    module: Vec<u8>,
    /// An alias to point at the new version (empty: none).
    alias: String,
}

/// Deploys the module and manifest of the functions page's upload form (one upload at a time),
/// as `grove fn deploy` does; the new version's page (303), or the functions page with why not
/// (400; 503 while another upload runs).
async fn deploy(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    request: Request,
) -> Response {
    let Ok(_one_at_a_time) = shell.0.uploads.try_acquire() else {
        // Read and dropped, like a refused upload's (see `discard`).
        discard(request.into_body()).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "another upload is in progress: try again when it has finished\n",
        )
            .into_response();
    };
    let mut form = match Multipart::from_request(request, &()).await {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    tracing::info!("console: receiving an upload");
    let mut upload = Upload::default();
    // What cannot be read: its status and why (413: the upload holds more than UPLOAD_LIMIT).
    let unreadable = |e: axum::extract::multipart::MultipartError| (e.status(), e.body_text());
    let read = async {
        // What the form holds may not pass UPLOAD_LIMIT; past it, the rest is read and dropped
        // (up to DRAIN_LIMIT), so that the browser gets the answer, not a reset connection.
        let mut room = UPLOAD_LIMIT;
        let mut over = false;
        while let Some(mut field) = form.next_field().await.map_err(unreadable)? {
            let name = field.name().unwrap_or_default().to_owned();
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
                over |= chunk.len() > room;
                if !over {
                    room -= chunk.len();
                    value.extend_from_slice(&chunk);
                }
            }
            let text = || String::from_utf8_lossy(&value).into_owned();
            match name.as_str() {
                "manifest" => upload.manifest = text(),
                "alias" => upload.alias = text(),
                "module" => upload.module = value,
                _ => {}
            }
        }
        match over {
            true => Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload is over {} MiB", UPLOAD_LIMIT >> 20),
            )),
            false => Ok(()),
        }
    };
    let deployed = match read.await {
        Err((status, why)) => Err((status, format!("the upload could not be read: {why}"))),
        Ok(()) if upload.module.is_empty() => Err((
            StatusCode::BAD_REQUEST,
            "choose the module (.wasm) to deploy".into(),
        )),
        Ok(()) => {
            let alias = Some(upload.alias.trim().to_owned()).filter(|a| !a.is_empty());
            let deploy = (shell.0.gateway).deploy(upload.manifest, upload.module, alias);
            deploy.await.map_err(|why| (StatusCode::BAD_REQUEST, why))
        }
    };
    match deployed {
        Ok((name, _version)) => {
            Redirect::to(&pages::function_link(FUNCTION, &name)).into_response()
        }
        Err((status, why)) => {
            let rows = shell.0.gateway.functions();
            (
                status,
                pages::functions_with(&current.csrf, &rows, Some(&why)),
            )
                .into_response()
        }
    }
}

async fn deployments(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    let now = shell.0.gateway.deployments().await;
    pages::deployments(&current.csrf, &now, None).into_response()
}

/// The deployments page, live: the deployments and the jobs.
async fn deployments_events(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
) -> Response {
    let csrf = current.csrf.clone();
    asked_every(shell, current, move |gateway| {
        let csrf = csrf.clone();
        Box::pin(async move {
            pages::deployments_live(&csrf, &gateway.deployments().await).into_string()
        })
    })
    .await
}

/// The deployments page again with the answer to a form (400 when refused).
async fn deployments_with(shell: &Shell, csrf: &str, said: Result<String, String>) -> Response {
    let status = answered(&said);
    let now = shell.0.gateway.deployments().await;
    (status, pages::deployments(csrf, &now, Some(&said))).into_response()
}

async fn rollback(State(shell): State<Shell>, Extension(current): Extension<Current>) -> Response {
    let said = shell
        .0
        .gateway
        .rollback()
        .await
        .map(|done| format!("Rollback started: {done}"));
    deployments_with(&shell, &current.csrf, said).await
}

/// The cancel form of a job: its id, and whether executions in progress are canceled too.
#[derive(Deserialize)]
struct CancelJob {
    id: String,
    #[serde(default)]
    force: Option<String>,
}

async fn cancel_job(
    State(shell): State<Shell>,
    Extension(current): Extension<Current>,
    Form(form): Form<CancelJob>,
) -> Response {
    let canceled = shell
        .0
        .gateway
        .cancel_job(form.id.clone(), form.force.is_some())
        .await;
    let said = canceled.map(|()| format!("Job {} canceled", form.id));
    deployments_with(&shell, &current.csrf, said).await
}

/// Takes a reading every [`SAMPLE_EVERY`] until the console is dropped.
async fn sample(shell: Weak<Inner>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let Some(inner) = shell.upgrade() else {
            return;
        };
        let reading = inner.gateway.reading();
        inner
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now(), reading);
        inner.readings.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_needs_a_matching_origin_or_fetch_site_and_no_contrary_one() {
        let host = ("host", "127.0.0.1:9464");
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[host, ("origin", "http://127.0.0.1:9464")], true),
            (&[host, ("sec-fetch-site", "same-origin")], true),
            (&[host, ("origin", "http://evil.example")], false),
            (&[host, ("origin", "null")], false),
            (&[host, ("sec-fetch-site", "cross-site")], false),
            (&[host, ("sec-fetch-site", "same-site")], false),
            (
                &[
                    host,
                    ("origin", "http://127.0.0.1:9464"),
                    ("sec-fetch-site", "cross-site"),
                ],
                false,
            ),
            (&[host], false),
        ];
        for (pairs, expected) in cases {
            assert_eq!(same_origin(&headers(pairs)), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn only_requests_for_an_address_localhost_or_a_listed_name_are_answered() {
        let hosts = ["gateway.lan".to_owned()];
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("host", "127.0.0.1:9464")], true),
            (&[("host", "[::1]:9464")], true),
            (&[("host", "192.168.1.20")], true),
            (&[("host", "LocalHost:9464")], true),
            (&[("host", "Gateway.LAN:9464")], true),
            (&[("host", "rebind.example:9464")], false),
            (&[("host", "localhost.rebind.example")], false),
            (&[("host", "not a host")], false),
            (&[], false),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                host_allowed(&headers(pairs), &hosts),
                *expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; grove_console=abc; b=2")]);
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "grove_consolex=1")])), None);
    }

    #[test]
    fn the_embedded_assets_keep_to_their_budget() {
        // README "Web console": 8 KiB for the style sheet and the script together.
        assert!(
            CSS.len() + JS.len() <= 8 * 1024,
            "{} B",
            CSS.len() + JS.len()
        );
    }

    #[test]
    fn every_route_has_a_handler_and_one_access() {
        let mut seen = HashSet::new();
        for r in ROUTES {
            // Panics (unreachable) for a route without a handler.
            let _ = handler(r);
            assert!(seen.insert((r.method, r.path)), "{r:?} twice");
            assert!(r.path.starts_with(BASE), "{r:?}");
        }
    }
}
