//! `grove-console`: the local web console (issue 21), served by the gateway on its ops endpoint
//! under `/console`.
//!
//! A pure core ([`core`]: sessions with idle and absolute expiry and a CSRF token each, the
//! sign-in attempt budget, the overview's last hour of readings; time passed in) and a thin axum
//! shell ([`shell`]: the routes, one table of them, [`ROUTES`], from which the router is built and
//! which the security tests enumerate; the guard every route passes; the live streams). Pages are
//! rendered on the server ([`pages`], maud: every value is HTML-escaped, a device's client id
//! included) and kept live by server-sent events that carry the re-rendered fragment; the one
//! script and style sheet are embedded in the binary (`assets/`, `include_str!`).
//!
//! What the console shows comes from the gateway through [`Gateway`] (readings, connected
//! clients, the disconnect, a watched topic filter, shadows, the cloud link's status, the rules, the functions, deployments and jobs), so that this crate stays low in the layering: it depends on
//! `grove-auth` (argon2 for the operator's password, the devices file) and `grove-config` (its
//! `[console]` section) only.
//!
//! Architecture invariant: every route is in [`ROUTES`] with its [`Access`]; the guard, chosen by
//! the table, runs before any handler: a page or stream needs a live session, a change also its
//! CSRF token and a same-origin request.

pub mod config;
pub mod core;
mod pages;
pub mod password;
mod shell;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::SystemTime;

pub use crate::core::Reading;
pub use shell::{router, Access, Route, ROUTES};

/// Why a console operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The password is too short.
    #[error("the password must have at least {0} characters")]
    WeakPassword(usize),
    /// Hashing or storing the password failed.
    #[error("cannot set the console password: {0}")]
    Password(String),
}

/// A client connected now, as the devices page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its MQTT client id.
    pub client_id: String,
    /// Where it connects from.
    pub peer: SocketAddr,
    /// The MQTT protocol level: 4 (3.1.1) or 5.
    pub protocol: u8,
    /// Connected since.
    pub since: SystemTime,
    /// Messages received from it.
    pub received: u64,
    /// Messages sent to it.
    pub sent: u64,
}

/// A boxed future, for [`Gateway`]'s asynchronous calls.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The most of a payload the topics page shows (and the gateway hands over): 4 KiB.
pub const SHOWN_PAYLOAD: usize = 4096;

/// A message seen on a watched filter (the topics page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its topic.
    pub topic: String,
    /// Its payload's first [`SHOWN_PAYLOAD`] bytes at most.
    pub payload: Vec<u8>,
    /// The payload's whole size, in bytes.
    pub size: usize,
}

/// A shadow as the shadows page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowEntry {
    /// Its thing.
    pub thing: String,
    /// Its name; `None`: the thing's classic (unnamed) shadow.
    pub shadow: Option<String>,
    /// Its version.
    pub version: u64,
}

/// A shadow's document, as a device would get it (AWS IoT Device Shadow).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowDoc {
    /// Its version.
    pub version: u64,
    /// `state.desired` (absent when empty).
    pub desired: Option<serde_json::Value>,
    /// `state.reported` (absent when empty).
    pub reported: Option<serde_json::Value>,
    /// `state.delta`: what desired asks and reported does not say yet (absent when none).
    pub delta: Option<serde_json::Value>,
}

/// A rule as the rules page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Its SQL statement.
    pub sql: String,
    /// Its actions, one line each.
    pub actions: Vec<String>,
    /// Its error action, if any.
    pub error_action: Option<String>,
    /// Messages that matched its FROM filter.
    pub matched: u64,
    /// Outputs it handed to its actions.
    pub outputs: u64,
    /// Failed actions.
    pub failures: u64,
    /// Outputs dropped at the hop or fan-out bound.
    pub dropped: u64,
    /// Its last failure: when, and what failed and why, in one line.
    pub last_failure: Option<(SystemTime, String)>,
}

/// A deployment as the deployments page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRow {
    /// Its id.
    pub id: String,
    /// Its step (`committed`, `rolled_back`, `applying`, ...).
    pub phase: String,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// When it was received.
    pub received: SystemTime,
    /// The AWS IoT job it came from (`None`: `grove deploy` or the console).
    pub job: Option<String>,
}

/// A job this gateway runs for its devices (AWS IoT Jobs, local), as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Its id.
    pub id: String,
    /// `IN_PROGRESS`, `CANCELED` or `COMPLETED`.
    pub status: String,
    /// Why it was canceled.
    pub reason: Option<String>,
    /// Who runs it: things, or a pattern of names.
    pub targets: String,
    /// When it was created.
    pub created: SystemTime,
    /// Its executions by status.
    pub counts: Vec<(String, u64)>,
}

/// Deployments and jobs, for their page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployments {
    /// The id of the deployment the gateway runs, if any.
    pub committed: Option<String>,
    /// The deployments, newest first.
    pub history: Vec<DeploymentRow>,
    /// The jobs for devices, or why they cannot be listed.
    pub jobs: Result<Vec<JobRow>, String>,
}

/// A function's alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// Its name.
    pub name: String,
    /// The version it names.
    pub version: u64,
    /// For a weighted alias, the other version and the percent of invocations it takes.
    pub weight: Option<(u64, u8)>,
}

/// A function as the functions page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRow {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<u64>,
    /// The version `$LATEST` names.
    pub latest: u64,
    /// Its aliases.
    pub aliases: Vec<Alias>,
    /// `$LATEST`'s triggers (topic filters).
    pub triggers: Vec<String>,
    /// Versions that cannot be invoked, and why.
    pub unavailable: Vec<(u64, String)>,
    /// Invocations that succeeded.
    pub succeeded: u64,
    /// Invocations that failed, every kind together.
    pub failed: u64,
    /// Events given up and sent to its dead-letter topic.
    pub dead_letters: u64,
}

/// What the console reads from, and asks of, the gateway it runs in.
pub trait Gateway: Send + Sync + 'static {
    /// The overview's counters now.
    fn reading(&self) -> Reading;
    /// The clients connected now.
    fn clients(&self) -> Vec<Client>;
    /// Ends the connections of `client_id` and waits, for a bounded time, for them to end: how
    /// many ended, or why not. The gateway logs it (an operator's action).
    fn disconnect(&self, client_id: String) -> Pending<Result<usize, String>>;
    /// Subscribes to `filter` (the operator sees every topic it matches; no shared
    /// subscriptions) once the subscription is in place: its messages, until the receiver is
    /// dropped. The channel is bounded; what a full channel cannot take is dropped (a viewer,
    /// never a device's publisher, falls behind). `Err`: why the filter is refused.
    fn watch(
        &self,
        filter: String,
    ) -> Pending<Result<tokio::sync::mpsc::Receiver<Watched>, String>>;
    /// Every shadow, as `grove shadow list` lists them.
    fn shadows(&self) -> Pending<Result<Vec<ShadowEntry>, String>>;
    /// One shadow's document (`Err`: why not, "not found" included).
    fn shadow(&self, thing: String, shadow: Option<String>) -> Pending<Result<ShadowDoc, String>>;
    /// Updates one shadow's desired state with `desired` (merged as an AWS update merges: a
    /// `null` removes a key); the new version, or why not. The gateway logs it.
    fn set_desired(
        &self,
        thing: String,
        shadow: Option<String>,
        desired: serde_json::Value,
    ) -> Pending<Result<u64, String>>;
    /// The topic a shadow's accepted updates are announced on (`update/documents`), for its page
    /// to follow with [`Gateway::watch`]; `Err` for names a shadow cannot have.
    fn shadow_documents_topic(&self, thing: &str, shadow: Option<&str>) -> Result<String, String>;
    /// The cloud link as `grove cloud status` shows it (link state, outbox depth and age, last
    /// error, dead letters, deployments and jobs) and shadow sync's counters, as labelled lines
    /// (an empty label: a note).
    fn cloud(&self) -> Pending<Result<Vec<(String, String)>, String>>;
    /// The rules running now (as last applied), with their counters and last failures.
    fn rules(&self) -> Vec<RuleRow>;
    /// Evaluates the rule `sql` on one message from `client_id` on `topic`, as `grove rules
    /// test` does (nothing is published): what it would output, one output a line, or why there
    /// is none; `Err`: why the rule cannot be tested (a compile error, with its line and column).
    fn test_rule(
        &self,
        sql: &str,
        topic: &str,
        payload: &str,
        client_id: &str,
    ) -> Result<String, String>;
    /// Re-reads the rules from the configuration file, as `grove rules reload` does: the names
    /// of the rules now running, or why nothing changed. The gateway logs it.
    fn reload_rules(&self) -> Pending<Result<Vec<String>, String>>;
    /// Sets the SQL of rule `name` in the configuration file and reloads the rules: the names of
    /// the rules now running, or why not (a statement that does not compile, with its line and
    /// column; a rule not in the file; a reload that failed), the file then as it was. The
    /// gateway logs it.
    fn save_rule(&self, name: String, sql: String) -> Pending<Result<Vec<String>, String>>;
    /// The functions deployed, with their counters; `Err`: why there are none to show (the
    /// functions component does not run).
    fn functions(&self) -> Result<Vec<FunctionRow>, String>;
    /// A function's recent log lines (its own and the gateway's about it), oldest first.
    fn function_logs(&self, name: &str) -> Result<Vec<String>, String>;
    /// Invokes `name` (at `qualifier`: a version, an alias or `$LATEST`; empty: `$LATEST`)
    /// with `payload`, as `grove fn invoke` does: the answer envelope (JSON), or why it could
    /// not run. The gateway logs it.
    fn invoke(
        &self,
        name: String,
        qualifier: String,
        payload: String,
    ) -> Pending<Result<serde_json::Value, String>>;
    /// Points alias `alias` of `name` at `version`, with `weight` (another version and the
    /// percent of invocations it takes), as `grove fn alias` does. The gateway logs it.
    fn set_alias(
        &self,
        name: String,
        alias: String,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Pending<Result<(), String>>;
    /// Deploys `module` (WebAssembly) with `manifest` (TOML text) as a new version, pointing
    /// `alias` at it if given, as `grove fn deploy` does: the function's name and the new
    /// version, or why not. The gateway logs it.
    fn deploy(
        &self,
        manifest: String,
        module: Vec<u8>,
        alias: Option<String>,
    ) -> Pending<Result<(String, u64), String>>;
    /// Registers device `id` (or updates it) with `password` and/or a client certificate from
    /// the gateway's local CA (`certificate`), with `thing` as its thing name, as `grove device
    /// add` does, and has the running gateway apply it (old credentials stop working): the new
    /// certificate with its key and the CA's certificate, as one PEM text, when one was issued.
    /// The gateway logs it.
    fn add_device(
        &self,
        id: String,
        thing: Option<String>,
        password: Option<String>,
        certificate: bool,
    ) -> Pending<Result<Option<String>, String>>;
    /// Removes device `id`, as `grove device remove` does, and waits for the gateway to close its
    /// connections: how many it closed. The gateway logs it.
    fn remove_device(&self, id: String) -> Pending<Result<usize, String>>;
    /// The deployments (the one running, the history) and the jobs for devices.
    fn deployments(&self) -> Pending<Result<Deployments, String>>;
    /// Rolls back the deployment being applied, or else reverts the committed one to what ran
    /// before it, as `grove deploy rollback` does: which deployment and what is done, or why
    /// not. The gateway logs it.
    fn rollback(&self) -> Pending<Result<String, String>>;
    /// Cancels job `id` (`force`: executions in progress too), as `grove jobs cancel` does. The
    /// gateway logs it.
    fn cancel_job(&self, id: String, force: bool) -> Pending<Result<(), String>>;
}
