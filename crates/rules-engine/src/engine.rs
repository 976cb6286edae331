//! The rules component's shell: the rule set on its bus link, the shadow service's answers,
//! windows' timers, reload. What a message does (matching, outputs, fan-out, actions, error
//! actions) is the pure `dispatch` module.
//!
//! Every rule of a set shares one bus link, subscribed to every distinct `FROM` filter: the router
//! sends a session one copy of a message however many of its filters match (`grove_router`,
//! "Overlapping subscriptions"), and the dispatch's index finds every rule it matches.
//!
//! A `shadow` action's update goes through the in-process shadow client ([`LocalShadows`]) with a
//! client token the engine chooses (a `clientToken` in the rule's output is replaced), so that the
//! service's answer can be told apart: a rejection (409 version conflict, 413 too large, 400 bad
//! document...) or no answer within [`SHADOW_ANSWER`] is a failure of the action, and goes to the
//! rule's error action like the failures found before the hand-off. The rule loop does not wait
//! for answers: each update is sent in the order of its message, then waits in a task of the
//! rule set, whose failures the loop takes up like messages. Once [`PENDING_SHADOWS`] updates wait,
//! the rule set reads no more messages until
//! one is answered (one batch read at once can pass the bound), so a stalled shadow service slows
//! the rules down instead of growing memory. The one rejection that cannot be matched is a payload
//! over the service's 128 KiB request limit: it is refused unparsed, so its answer carries no
//! client token, and it is reported when [`SHADOW_ANSWER`] has passed, as not answered.
//!
//! A reload builds the new rule set and waits until the router has confirmed its subscriptions
//! before it stops the old one, so no message published during a reload is missed. A replaced
//! set drains what was routed to it until its link is quiet or [`DRAIN_MAX`] has passed, so a
//! message published in that window may be handled by both the old and the new rules (at least
//! once), and a reload returns within that bound even under a steady flow.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use grove_rules::{Context, UuidSource};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::dispatch::{
    rejection_message, Dispatch, FunctionTargets, LateFailure, ShadowRequest, Step,
};
use crate::metrics::RulesMetrics;
use crate::RuleConfig;
use grove_broker::bus::{Bus, Closed, Outgoing};
use grove_broker::BusMaker;
use grove_functions_host::service::Functions;
use grove_shadow_api::local::{LocalError, LocalShadows};
use grove_shadow_api::names::Operation;
use grove_shadow_api::token::client_token_of;

/// Grove's topic for reloading rules over MQTT (`grove rules reload`); answered on `…/accepted`
/// or `…/rejected`.
pub const RELOAD_TOPIC: &str = "$grove/rules/reload";

/// How long a replaced rule set's link must stay quiet before it leaves.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// The longest a replaced rule set keeps draining. Under a steady flow its link is never quiet: it
/// would go on handling every new message beside its successor, and the reload would never
/// return (seen with one message a millisecond). Past this bound it leaves; what the router had
/// routed to it before the switch is long handled by then, and everything after the switch is
/// the successor's. Messages of the last `DRAIN_MAX` may be handled by both (at least once).
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// How long a `shadow` action waits for the shadow service's answer before it counts as failed.
/// The service answers in milliseconds; this only catches a service that stopped answering.
pub const SHADOW_ANSWER: Duration = Duration::from_secs(10);

/// How many `shadow` action updates the rule set lets wait for their answers before it stops reading
/// messages.
pub const PENDING_SHADOWS: usize = 1024;

/// Asks the engine to re-read the rules from the configuration file.
pub struct Reload {
    /// Where to report the outcome (the names of the rules now running, or why nothing changed).
    pub done: oneshot::Sender<Result<Vec<String>, String>>,
}

/// The running engine.
pub struct RulesEngine {
    buses: BusMaker,
    load_rules: Option<LoadRules>,
    metrics: RulesMetrics,
    /// The running rule set (none before the first start or after shutdown).
    running: Option<RunningSet>,
    generation: u64,
    /// The shadow client of `shadow` actions, made when a rule set first needs one (so a gateway
    /// without shadow actions does not receive every shadow answer on one more link).
    shadows: Option<LocalShadows>,
    /// Stops the shadow client's task (on shutdown, before the rule set waits for its answers).
    shadows_stop: watch::Sender<bool>,
    /// The functions component, when it runs: `function` actions check their target with it.
    functions: Option<Arc<dyn FunctionTargets>>,
}

/// Reads the rules anew for a reload: the whole configuration file, loaded and checked as at
/// startup (the binary's `config.rs` provides it), then its `[[rules]]`; `Err`: why it failed.
pub type LoadRules = Box<dyn Fn() -> Result<Vec<RuleConfig>, String> + Send + Sync>;

/// A running rule set: its stop signal and task.
struct RunningSet {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RulesEngine {
    /// Starts the engine on `rules`; the listeners should open only after this returns, so the
    /// rules see every message.
    pub async fn start(
        buses: BusMaker,
        load_rules: Option<LoadRules>,
        rules: &[RuleConfig],
        metrics: RulesMetrics,
        functions: Option<Functions>,
    ) -> Result<RulesEngine, Closed> {
        let mut engine = RulesEngine {
            buses,
            load_rules,
            metrics,
            running: None,
            generation: 0,
            shadows: None,
            shadows_stop: watch::channel(false).0,
            functions: functions.map(|f| Arc::new(f) as Arc<dyn FunctionTargets>),
        };
        engine.apply(rules).await?;
        Ok(engine)
    }

    /// Serves reload requests (from SIGHUP and from `$grove/rules/reload`) until shutdown.
    pub async fn run(
        mut self,
        mut reloads: mpsc::Receiver<Reload>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let admin = self.admin().await;
        let (admin_tx, mut admin_rx) = mpsc::channel::<Reload>(4);
        if let Ok(bus) = admin {
            tokio::spawn(serve_admin(bus, admin_tx, shutdown.clone()));
        }
        loop {
            let request = tokio::select! {
                _ = shutdown.changed() => break,
                Some(r) = reloads.recv() => r,
                Some(r) = admin_rx.recv() => r,
            };
            let outcome = self.reload().await;
            match &outcome {
                Ok(names) => info!(rules = ?names, "rules reloaded"),
                Err(e) => warn!("rules not reloaded: {e}"),
            }
            let _ = request.done.send(outcome);
        }
        // Updates still waiting for an answer end now (as not answered), so the set can leave.
        let _ = self.shadows_stop.send(true);
        stop(self.running.take()).await;
    }

    async fn admin(&self) -> Result<Bus, Closed> {
        let mut bus = self
            .buses
            .bus("rules-admin")
            .await
            .map_err(|_| Closed::Link)?;
        bus.subscribe_confirmed(&[RELOAD_TOPIC.to_owned()]).await?;
        Ok(bus)
    }

    async fn reload(&mut self) -> Result<Vec<String>, String> {
        let Some(load_rules) = &self.load_rules else {
            return Err(
                "the gateway runs on the built-in defaults: there is no file to reload".into(),
            );
        };
        let rules = load_rules()?;
        self.apply(&rules).await.map_err(|e| e.to_string())?;
        Ok(rules
            .iter()
            .filter(|r| r.enabled)
            .map(|r| r.name.clone())
            .collect())
    }

    /// Starts the rule set `rules` on a link of its own, then stops the previous one.
    async fn apply(&mut self, rules: &[RuleConfig]) -> Result<(), Closed> {
        let enabled: Vec<Arc<RuleConfig>> = rules
            .iter()
            .filter(|r| r.enabled)
            .cloned()
            .map(Arc::new)
            .collect();
        self.buses.record_origins(!enabled.is_empty());
        if self.shadows.is_none() && enabled.iter().any(|r| r.uses_shadow()) {
            let bus = self
                .buses
                .bus("rules-shadow")
                .await
                .map_err(|_| Closed::Link)?;
            let shadows = LocalShadows::start(bus, self.shadows_stop.subscribe());
            self.shadows = Some(shadows);
        }
        // Each distinct filter once, in the rules' order (a set: 10,000 rules on topics of their
        // own made this a quadratic scan, seconds at startup).
        let mut seen = std::collections::HashSet::new();
        let filters: Vec<String> = enabled
            .iter()
            .map(|rule| rule.rule.topic_filter())
            .filter(|filter| seen.insert(*filter))
            .map(str::to_owned)
            .collect();
        self.generation += 1;
        let mut started = None;
        if !filters.is_empty() {
            let mut bus = self
                .buses
                .bus(&format!("rules-{}", self.generation))
                .await
                .map_err(|_| Closed::Link)?;
            bus.subscribe_confirmed(&filters).await?;
            let (stop, stopped) = oneshot::channel();
            let runner = RuleRunner::new(
                enabled,
                &self.metrics,
                self.shadows.clone(),
                self.functions.clone(),
            );
            let task = tokio::spawn(runner.run(bus, stopped));
            started = Some(RunningSet { stop, task });
        }
        let old = std::mem::replace(&mut self.running, started);
        self.metrics.status.applied(rules);
        stop(old).await;
        Ok(())
    }
}

/// Stops a rule set and waits until it has left the broker.
async fn stop(set: Option<RunningSet>) {
    if let Some(set) = set {
        let _ = set.stop.send(());
        let _ = set.task.await;
    }
}

/// Answers `$grove/rules/reload` requests.
async fn serve_admin(
    mut bus: Bus,
    reloads: mpsc::Sender<Reload>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    while bus.recv_until(&mut batch, &mut shutdown).await {
        for request in batch.drain(..) {
            let token = client_token_of(&request.payload);
            let (done, outcome) = oneshot::channel();
            if reloads.send(Reload { done }).await.is_err() {
                return;
            }
            let (topic, doc) = match outcome.await {
                Ok(Ok(rules)) => (
                    format!("{RELOAD_TOPIC}/accepted"),
                    json!({"rules": rules, "clientToken": token}),
                ),
                Ok(Err(message)) => (
                    format!("{RELOAD_TOPIC}/rejected"),
                    json!({"code": 400, "message": message, "clientToken": token}),
                ),
                Err(_) => return,
            };
            if bus
                .publish(vec![Outgoing::new(topic, Bytes::from(doc.to_string()))])
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A `function` action asks the functions component whether its target is deployed.
impl FunctionTargets for Functions {
    fn check_target(&self, target: &str) -> Result<(), String> {
        Functions::check_target(self, target).map_err(|e| e.to_string())
    }
}

/// The rule set, evaluated on its bus link: the [`Dispatch`] core, and the shadow updates it
/// made, sent and waiting for their answers.
struct RuleRunner {
    dispatch: Dispatch,
    shadows: Option<LocalShadows>,
    /// `shadow` action updates sent and waiting for the service's answer.
    pending: JoinSet<Option<LateFailure>>,
}

/// A `shadow` action's update: sends it, waits for the answer, and yields the failure if any.
type ShadowWait = Pin<Box<dyn Future<Output = Option<LateFailure>> + Send>>;

/// The rules' clock: the time of the rules' SQL functions, and the instant of the log rates.
fn clock(uuids: &dyn UuidSource) -> (Context<'_>, Instant) {
    (Context::new(now_ms(), uuids), Instant::now())
}

impl RuleRunner {
    fn new(
        rules: Vec<Arc<RuleConfig>>,
        metrics: &RulesMetrics,
        shadows: Option<LocalShadows>,
        functions: Option<Arc<dyn FunctionTargets>>,
    ) -> RuleRunner {
        RuleRunner {
            dispatch: Dispatch::new(rules, metrics, functions),
            shadows,
            pending: JoinSet::new(),
        }
    }

    /// Evaluates a batch of messages.
    fn on_batch(&mut self, batch: &mut Vec<grove_broker::bus::Message>, step: &mut Step) {
        let uuids = || uuid::Uuid::new_v4().to_string();
        let (ctx, now) = clock(&uuids);
        for m in batch.drain(..) {
            self.dispatch.on_message(m, &ctx, now, step);
        }
    }

    async fn run(mut self, mut bus: Bus, mut stop: oneshot::Receiver<()>) {
        let uuids = || uuid::Uuid::new_v4().to_string();
        let mut batch = Vec::new();
        // Set once replaced: when the drain must end at the latest.
        let mut draining: Option<tokio::time::Instant> = None;
        loop {
            let mut step = Step::default();
            if let Some(until) = draining {
                // Replaced by a new rule set whose subscriptions are confirmed: finish what the
                // router had already routed here (published before the switch), then leave.
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                match tokio::time::timeout_at(
                    (now + DRAIN_IDLE).min(until),
                    bus.recv_batch(&mut batch),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
                self.on_batch(&mut batch, &mut step);
            } else {
                let sleep = self
                    .dispatch
                    .next_deadline()
                    .map(|d| Duration::from_millis(u64::try_from(d - now_ms()).unwrap_or(0)));
                // A timer only when a window has a deadline: a disabled `select!` branch still
                // builds its future, and this loop turns once per batch (often one message).
                let tick = async {
                    match sleep {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut stop => {
                        draining = Some(tokio::time::Instant::now() + DRAIN_MAX);
                        continue;
                    }
                    r = bus.recv_batch(&mut batch) => {
                        if r.is_err() {
                            return;
                        }
                        self.on_batch(&mut batch, &mut step);
                    }
                    Some(joined) = self.pending.join_next(), if !self.pending.is_empty() => {
                        self.on_late(joined, &mut step);
                    }
                    _ = tick => {
                        let (ctx, now) = clock(&uuids);
                        self.dispatch.on_tick(&ctx, now, &mut step);
                    }
                }
            }
            self.send_shadow_updates(&mut step).await;
            // At the bound of pending shadow updates, read no more messages until one is answered.
            while self.pending.len() >= PENDING_SHADOWS {
                let Some(joined) = self.pending.join_next().await else {
                    break;
                };
                self.on_late(joined, &mut step);
                self.send_shadow_updates(&mut step).await;
            }
            if !publish(&mut bus, step.publish).await {
                return;
            }
        }
        // The answers of the last shadow updates may still bring failures for the error actions.
        while let Some(joined) = self.pending.join_next().await {
            let mut step = Step::default();
            self.on_late(joined, &mut step);
            self.send_shadow_updates(&mut step).await;
            if !publish(&mut bus, step.publish).await {
                return;
            }
        }
        bus.close().await;
    }

    /// Sends the step's shadow updates in the order they were made, then leaves their answers to
    /// `pending`. Each is polled once here, in order, before it becomes a task: that first poll
    /// puts the request in the shadow client's queue (or in line for it, tokio's channel being
    /// fair), so a thing's updates reach the service in the order of their messages. Spawned
    /// straight away, the tasks would race for the queue and could apply an older reading last.
    async fn send_shadow_updates(&mut self, step: &mut Step) {
        // An outcome known at the first poll goes through `on_late`, which may queue an error
        // action's update: loop until nothing is left unsent.
        while !step.shadow.is_empty() {
            for request in std::mem::take(&mut step.shadow) {
                let mut wait = self.shadow_wait(request);
                match std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await {
                    Poll::Pending => {
                        self.pending.spawn(wait);
                    }
                    Poll::Ready(late) => self.on_late(Ok(late), step),
                }
            }
        }
    }

    /// A `shadow` action's update sent to the service, with its answer checked.
    fn shadow_wait(&self, request: ShadowRequest) -> ShadowWait {
        let ShadowRequest { update, late } = request;
        let Some(shadows) = self.shadows.clone() else {
            // Cannot happen: the engine makes the client before it starts a rule set with a
            // shadow action. Reported rather than assumed.
            let late = late.with_message("the rules engine has no shadow client".to_owned());
            return Box::pin(std::future::ready(Some(late)));
        };
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + SHADOW_ANSWER;
            let answer = shadows
                .request(
                    &update.thing,
                    update.name.as_deref(),
                    Operation::Update,
                    update.body,
                    update.hops,
                    deadline,
                )
                .await;
            let error_message = match answer {
                Ok(a) if a.accepted => return None,
                Ok(a) => rejection_message(&a.doc),
                Err(e @ LocalError::Timeout) => e.to_string(),
                // The gateway is stopping: nobody is left to tell.
                Err(LocalError::Closed) => return None,
            };
            Some(late.with_message(error_message))
        })
    }

    /// A shadow update's outcome: nothing if it was accepted, else a failure to report.
    fn on_late(
        &mut self,
        joined: Result<Option<LateFailure>, tokio::task::JoinError>,
        step: &mut Step,
    ) {
        let late = match joined {
            Ok(Some(late)) => late,
            Ok(None) => return,
            Err(e) => {
                error!(error = %e, "a shadow action's task failed");
                return;
            }
        };
        let uuids = || uuid::Uuid::new_v4().to_string();
        let (ctx, _) = clock(&uuids);
        self.dispatch.on_shadow_failure(late, &ctx, step);
    }
}

/// Publishes what a step produced; `false` when the link is gone.
async fn publish(bus: &mut Bus, out: Vec<Outgoing>) -> bool {
    if out.is_empty() {
        return true;
    }
    match bus.publish(out).await {
        Ok(()) => true,
        Err(Closed::Link) => false,
        Err(e @ Closed::Store(_)) => {
            error!(error = %e, "a retained republish was not published");
            true
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
