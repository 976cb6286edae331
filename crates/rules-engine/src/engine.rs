//! The rules component: rule sets on bus links, evaluation, actions, windows, reload.
//!
//! rumqttd delivers a message once per matching subscription of a link, so two overlapping `FROM`
//! filters on one link would evaluate a message twice. The engine therefore puts filters that can
//! match a common topic on different links ("groups"): within a group each message matches exactly
//! one filter, which the group's [`RuleIndex`] finds without scanning the rules. Most rule sets need
//! one or two groups.
//!
//! A `shadow` action's update goes through the in-process shadow client ([`LocalShadows`]) with a
//! client token the engine chooses (a `clientToken` in the rule's output is replaced), so that the
//! service's answer can be told apart: a rejection (409 version conflict, 413 too large, 400 bad
//! document...) or no answer within [`SHADOW_ANSWER`] is a failure of the action, and goes to the
//! rule's error action like the failures found before the hand-off. The rule loop does not wait
//! for answers: each update is sent in the order of its message, then waits in a task of the
//! group's set, whose failures the loop takes up like messages. Once [`PENDING_SHADOWS`] updates wait, the group reads no more messages until
//! one is answered (one batch read at once can pass the bound), so a stalled shadow service slows
//! the rules down instead of growing memory. The one rejection that cannot be matched is a payload
//! over the service's 128 KiB request limit: it is refused unparsed, so its answer carries no
//! client token, and it is reported when [`SHADOW_ANSWER`] has passed, as not answered.
//!
//! A reload builds the new groups and waits until the router has confirmed their subscriptions
//! before it stops the old ones, so no message published during a reload is missed. A replaced
//! group drains what was routed to it until its link is quiet or [`DRAIN_MAX`] has passed, so a
//! message published in that window may be handled by both the old and the new rules (at least
//! once), and a reload returns within that bound even under a steady flow.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use grove_rules::{Context, ErrorActionPayload, Failure, Output, RuleIndex, Window};
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::metrics::RulesMetrics;
use crate::{fan_out, Action, RuleConfig, SHADOW_ACTION};
use grove_auth::policy::{matches, overlaps};
use grove_broker::bus::MAX_HOPS;
use grove_broker::bus::{Bus, Closed, Message, Outgoing};
use grove_broker::BusMaker;
use grove_functions_host::service::Functions;
use grove_shadow_api::local::{LocalError, LocalShadows};
use grove_shadow_api::names::{validate_shadow_name, validate_thing_name, Operation};
use grove_shadow_api::token::client_token_of;

/// Grove's topic for reloading rules over MQTT (`grove rules reload`); answered on `…/accepted`
/// or `…/rejected`.
pub const RELOAD_TOPIC: &str = "$grove/rules/reload";

/// How long a replaced group's link must stay quiet before the group leaves.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// The longest a replaced group keeps draining. Under a steady flow its link is never quiet: it
/// would go on handling every new message beside its successor, and the reload would never
/// return (seen with one message a millisecond). Past this bound it leaves; what the router had
/// routed to it before the switch is long handled by then, and everything after the switch is
/// the successor's. Messages of the last `DRAIN_MAX` may be handled by both (at least once).
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// How long a `shadow` action waits for the shadow service's answer before it counts as failed.
/// The service answers in milliseconds; this only catches a service that stopped answering.
pub const SHADOW_ANSWER: Duration = Duration::from_secs(10);

/// How many `shadow` action updates one group lets wait for their answers before it stops reading
/// messages.
pub const PENDING_SHADOWS: usize = 1024;

/// At most one WARN line per rule and interval about outputs cut at the hop limit or the fan-out
/// bound; the others are counted in the line that follows.
const CUT_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    groups: Vec<Group>,
    generation: u64,
    /// The shadow client of `shadow` actions, made when a rule set first needs one (so a gateway
    /// without shadow actions does not receive every shadow answer on one more link).
    shadows: Option<LocalShadows>,
    /// Stops the shadow client's task (on shutdown, before the groups wait for their answers).
    shadows_stop: watch::Sender<bool>,
    /// The functions component, when it runs: `function` actions check their target with it.
    functions: Option<Functions>,
}

/// Reads the rules anew for a reload: the whole configuration file, loaded and checked as at
/// startup (the binary's `config.rs` provides it), then its `[[rules]]`; `Err`: why it failed.
pub type LoadRules = Box<dyn Fn() -> Result<Vec<RuleConfig>, String> + Send + Sync>;

/// A running group: its stop signal and task.
struct Group {
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
            groups: Vec::new(),
            generation: 0,
            shadows: None,
            shadows_stop: watch::channel(false).0,
            functions,
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
        // Updates still waiting for an answer end now (as not answered), so the groups can leave.
        let _ = self.shadows_stop.send(true);
        let groups = std::mem::take(&mut self.groups);
        stop_groups(groups).await;
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

    /// Starts groups for `rules`, then stops the previous ones.
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
            let shadows = LocalShadows::start(bus, self.shadows_stop.subscribe()).await?;
            self.shadows = Some(shadows);
        }
        let mut groups: Vec<(Vec<String>, Vec<Arc<RuleConfig>>)> = Vec::new();
        for rule in enabled {
            let filter = rule.rule.topic_filter().to_owned();
            // Same filter: same group. Otherwise the first group none of whose filters overlaps.
            let slot = groups
                .iter()
                .position(|(filters, _)| filters.contains(&filter))
                .or_else(|| {
                    groups
                        .iter()
                        .position(|(filters, _)| filters.iter().all(|f| !overlaps(f, &filter)))
                });
            match slot {
                Some(i) => {
                    if !groups[i].0.contains(&filter) {
                        groups[i].0.push(filter);
                    }
                    groups[i].1.push(rule);
                }
                None => groups.push((vec![filter], vec![rule])),
            }
        }
        self.generation += 1;
        // Every group's filters, for each group to know how many others take a message too.
        let all_filters: Arc<Vec<Vec<String>>> =
            Arc::new(groups.iter().map(|(f, _)| f.clone()).collect());
        let mut started = Vec::new();
        for (i, (filters, rules)) in groups.into_iter().enumerate() {
            let mut bus = self
                .buses
                .bus(&format!("rules-{}-{i}", self.generation))
                .await
                .map_err(|_| Closed::Link)?;
            bus.subscribe_confirmed(&filters).await?;
            let (stop, stopped) = oneshot::channel();
            let runner = GroupRunner::new(
                rules,
                all_filters.clone(),
                &self.metrics,
                self.shadows.clone(),
                self.functions.clone(),
            );
            let task = tokio::spawn(runner.run(bus, stopped));
            started.push(Group { stop, task });
        }
        let old = std::mem::replace(&mut self.groups, started);
        stop_groups(old).await;
        Ok(())
    }
}

/// Stops groups and waits until each has left the broker.
async fn stop_groups(groups: Vec<Group>) {
    for g in groups {
        let _ = g.stop.send(());
        let _ = g.task.await;
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

/// One rule with its counters and window state.
struct Running {
    config: Arc<RuleConfig>,
    window: Option<Window>,
    matched: Counter,
    outputs: Counter,
    hop_dropped: Counter,
    fanout_dropped: Counter,
    /// Rate-limits the WARN lines about cut outputs.
    cut_log: Throttle,
}

/// At most one event per [`CUT_LOG_INTERVAL`] passes; the others are counted until then.
/// Hand-written: a dozen lines, where tracing has no rate limit of its own.
#[derive(Default)]
struct Throttle {
    next: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(events suppressed since the last one passed)` if this one may pass.
    fn pass(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + CUT_LOG_INTERVAL);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A `shadow` action's update that the service rejected or did not answer.
struct LateFailure {
    /// The rule whose action it was.
    rule: usize,
    /// The message the rule acted on.
    msg: grove_rules::Message,
    /// The hop count of the action's messages, which its error action's message gets too.
    hops: u32,
    /// What failed.
    failure: Failure,
    /// Whether the update was the rule's error action (then the failure is only logged).
    of_error_action: bool,
}

/// The rules of one group, evaluated on its bus link.
struct GroupRunner {
    rules: Vec<Running>,
    index: RuleIndex<usize>,
    /// The filters of every group of the rule set (this one's included).
    all_filters: Arc<Vec<Vec<String>>>,
    action_failures: HashMap<String, Counter>,
    shadows: Option<LocalShadows>,
    functions: Option<Functions>,
    /// `shadow` action updates made by the last step, not yet sent, in the order of their
    /// messages (see [`GroupRunner::dispatch`]).
    queued: Vec<ShadowWait>,
    /// `shadow` action updates sent and waiting for the service's answer.
    pending: JoinSet<Option<LateFailure>>,
}

/// A `shadow` action's update: sends it, waits for the answer, and yields the failure if any.
type ShadowWait = Pin<Box<dyn Future<Output = Option<LateFailure>> + Send>>;

impl GroupRunner {
    fn new(
        rules: Vec<Arc<RuleConfig>>,
        all_filters: Arc<Vec<Vec<String>>>,
        metrics: &RulesMetrics,
        shadows: Option<LocalShadows>,
        functions: Option<Functions>,
    ) -> GroupRunner {
        let mut index = RuleIndex::new();
        let mut running = Vec::with_capacity(rules.len());
        let mut action_failures = HashMap::new();
        for (i, config) in rules.into_iter().enumerate() {
            // The filter was validated when the rule compiled.
            let _ = index.insert(config.rule.topic_filter(), i);
            let name = config.name.clone();
            action_failures.insert(
                name.clone(),
                metrics.counter(&metrics.action_failures, &name),
            );
            running.push(Running {
                window: config.rule.window(),
                matched: metrics.counter(&metrics.matched, &name),
                outputs: metrics.counter(&metrics.outputs, &name),
                hop_dropped: metrics.counter(&metrics.hop_dropped, &name),
                fanout_dropped: metrics.counter(&metrics.fanout_dropped, &name),
                cut_log: Throttle::default(),
                config,
            });
        }
        GroupRunner {
            rules: running,
            index,
            all_filters,
            action_failures,
            shadows,
            functions,
            queued: Vec::new(),
            pending: JoinSet::new(),
        }
    }

    async fn run(mut self, mut bus: Bus, mut stop: oneshot::Receiver<()>) {
        let uuids = || uuid::Uuid::new_v4().to_string();
        let mut batch = Vec::new();
        // Set once replaced: when the drain must end at the latest.
        let mut draining: Option<tokio::time::Instant> = None;
        loop {
            let mut out = Vec::new();
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
                let ctx = Context::new(now_ms(), &uuids);
                for m in batch.drain(..) {
                    self.on_message(m, &ctx, &mut out);
                }
            } else {
                let deadline = self
                    .rules
                    .iter()
                    .filter_map(|r| r.window.as_ref()?.next_deadline())
                    .min();
                let sleep = deadline
                    .map(|d| Duration::from_millis(u64::try_from(d - now_ms()).unwrap_or(0)));
                tokio::select! {
                    _ = &mut stop => {
                        draining = Some(tokio::time::Instant::now() + DRAIN_MAX);
                        continue;
                    }
                    r = bus.recv_batch(&mut batch) => {
                        if r.is_err() {
                            return;
                        }
                        let ctx = Context::new(now_ms(), &uuids);
                        for m in batch.drain(..) {
                            self.on_message(m, &ctx, &mut out);
                        }
                    }
                    Some(joined) = self.pending.join_next(), if !self.pending.is_empty() => {
                        let ctx = Context::new(now_ms(), &uuids);
                        self.on_late(joined, &ctx, &mut out);
                    }
                    _ = tokio::time::sleep(sleep.unwrap_or(Duration::MAX)), if sleep.is_some() => {
                        let ctx = Context::new(now_ms(), &uuids);
                        self.on_tick(&ctx, &mut out);
                    }
                }
            }
            self.dispatch(&mut out).await;
            // At the bound of pending shadow updates, read no more messages until one is answered.
            while self.pending.len() >= PENDING_SHADOWS {
                let Some(joined) = self.pending.join_next().await else {
                    break;
                };
                self.on_late(joined, &Context::new(now_ms(), &uuids), &mut out);
                self.dispatch(&mut out).await;
            }
            if !publish(&mut bus, out).await {
                return;
            }
        }
        // The answers of the last shadow updates may still bring failures for the error actions.
        while let Some(joined) = self.pending.join_next().await {
            let mut out = Vec::new();
            self.on_late(joined, &Context::new(now_ms(), &uuids), &mut out);
            self.dispatch(&mut out).await;
            if !publish(&mut bus, out).await {
                return;
            }
        }
        bus.close().await;
    }

    fn on_message(&mut self, m: Message, ctx: &Context<'_>, out: &mut Vec<Outgoing>) {
        let hops = m.hops;
        let msg = grove_rules::Message::new(
            &m.topic,
            m.origin.as_deref().unwrap_or(""),
            m.payload.to_vec(),
        );
        let mut matched = Vec::new();
        self.index.for_each_match(&m.topic, |i| matched.push(*i));
        let mut outputs: Vec<(usize, Output, u32)> = Vec::new();
        for i in matched {
            let rule = &mut self.rules[i];
            rule.matched.inc();
            match &mut rule.window {
                Some(w) => outputs.extend(
                    w.on_message_with_hops(&msg, hops, ctx)
                        .into_iter()
                        .map(|row| (i, row.output, row.hops)),
                ),
                // `evaluate` fails only for windowed rules, which take the branch above.
                None => outputs.extend(
                    rule.config
                        .rule
                        .evaluate(&msg, ctx)
                        .ok()
                        .flatten()
                        .map(|o| (i, o, hops)),
                ),
            }
        }
        if outputs.is_empty() {
            return;
        }
        // The other groups whose filters take this topic act on it too, each on its own.
        let consumers = self
            .all_filters
            .iter()
            .filter(|filters| filters.iter().any(|f| matches(f, &m.topic)))
            .count();
        // A window's row is as deep as the deepest message that fed it.
        let deepest = outputs.iter().map(|(_, _, h)| *h).max().unwrap_or(hops);
        self.act_on(&msg, outputs, deepest, consumers, ctx, out);
    }

    /// Acts on the outputs one message (or one window tick) made, as many as [`fan_out`] allows;
    /// the others are counted and cut.
    fn act_on(
        &mut self,
        msg: &grove_rules::Message,
        outputs: Vec<(usize, Output, u32)>,
        hops: u32,
        consumers: usize,
        ctx: &Context<'_>,
        out: &mut Vec<Outgoing>,
    ) {
        let children: Vec<usize> = outputs
            .iter()
            .map(|(i, _, _)| {
                let config = &self.rules[*i].config;
                config.actions.len() + usize::from(config.error_action.is_some())
            })
            .collect();
        let (next, kept) = fan_out(hops, consumers, &children);
        for (n, (i, output, _)) in outputs.into_iter().enumerate() {
            if n < kept {
                self.act(i, msg, &output, next, ctx, out);
            } else {
                self.cut(i, msg, hops, children[n]);
            }
        }
    }

    /// Counts and (rate-limited) logs an output that is not acted on.
    fn cut(&mut self, i: usize, msg: &grove_rules::Message, hops: u32, messages: usize) {
        let rule = &mut self.rules[i];
        let at_hop_limit = hops >= MAX_HOPS;
        if at_hop_limit {
            rule.hop_dropped.inc();
        } else {
            rule.fanout_dropped.inc();
        }
        let Some(suppressed) = rule.cut_log.pass(Instant::now()) else {
            return;
        };
        if at_hop_limit {
            warn!(
                rule = rule.config.name,
                topic = msg.topic(),
                hops,
                suppressed,
                "republish loop cut at the hop limit (suppressed: similar lines not logged since the last)"
            );
        } else {
            warn!(
                rule = rule.config.name,
                topic = msg.topic(),
                hops,
                messages,
                suppressed,
                "output cut: its messages would exceed what one message may cause (suppressed: similar lines not logged since the last)"
            );
        }
    }

    /// Windows that closed: their rows, acted on against a message standing for the window (its
    /// topic is the rule's filter, its payload the row), as deep in hops as the deepest message
    /// that fed the row, so that a windowed rule republishing into its own `FROM` meets the hop
    /// limit too.
    fn on_tick(&mut self, ctx: &Context<'_>, out: &mut Vec<Outgoing>) {
        for i in 0..self.rules.len() {
            let rows = match &mut self.rules[i].window {
                Some(w) => w.poll_with_hops(ctx),
                None => continue,
            };
            for row in rows {
                let msg = grove_rules::Message::new(
                    self.rules[i].config.rule.topic_filter(),
                    "",
                    row.output.to_bytes(),
                );
                self.act_on(&msg, vec![(i, row.output, row.hops)], row.hops, 1, ctx, out);
            }
        }
    }

    /// Runs rule `i`'s actions for one output, their messages `hops` deep; failures go to its
    /// error action.
    fn act(
        &mut self,
        i: usize,
        msg: &grove_rules::Message,
        output: &Output,
        hops: u32,
        ctx: &Context<'_>,
        out: &mut Vec<Outgoing>,
    ) {
        let rule = &self.rules[i];
        rule.outputs.inc();
        let config = Arc::clone(&rule.config);
        let mut failures = Vec::new();
        for action in &config.actions {
            let origin = Origin {
                rule: i,
                msg,
                hops,
                of_error_action: false,
            };
            if let Err(failure) = self.run_action(action, output, origin, ctx, out) {
                failures.push(failure);
            }
        }
        self.report(i, msg, failures, hops, ctx, out);
    }

    /// Runs one action (of rule `origin.rule`, or its error action) for one output: a publish
    /// joins `out`, a shadow update is queued for the service.
    fn run_action(
        &mut self,
        action: &Action,
        output: &Output,
        origin: Origin<'_>,
        ctx: &Context<'_>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), Failure> {
        match perform(
            action,
            origin.msg,
            output,
            origin.hops,
            ctx,
            self.functions.as_ref(),
        )? {
            Performed::Publish(o) => {
                out.push(o);
                Ok(())
            }
            Performed::Shadow(update) => self.update_shadow(update, origin),
        }
    }

    /// Counts and logs `failures` of rule `i`'s actions on `msg`, and sends them to its error
    /// action.
    fn report(
        &mut self,
        i: usize,
        msg: &grove_rules::Message,
        failures: Vec<Failure>,
        hops: u32,
        ctx: &Context<'_>,
        out: &mut Vec<Outgoing>,
    ) {
        if failures.is_empty() {
            return;
        }
        let config = Arc::clone(&self.rules[i].config);
        let name = &config.name;
        if let Some(c) = self.action_failures.get(name) {
            c.inc_by(failures.len() as u64);
        }
        for f in &failures {
            warn!(
                rule = name,
                action = f.failed_action,
                resource = f.failed_resource,
                "action failed: {}",
                f.error_message
            );
        }
        let Some(error_action) = &config.error_action else {
            return;
        };
        let payload = ErrorActionPayload::new(name, msg, failures);
        let doc = Output::Json(serde_json::to_value(&payload).unwrap_or_default());
        let origin = Origin {
            rule: i,
            msg,
            hops,
            of_error_action: true,
        };
        let Err(failed) = self.run_action(error_action, &doc, origin, ctx, out) else {
            return;
        };
        error!(
            rule = name,
            "the error action failed too: {}", failed.error_message
        );
    }

    /// Sends the queued shadow updates in the order they were made, then leaves their answers to
    /// `pending`. Each is polled once here, in order, before it becomes a task: that first poll
    /// puts the request in the shadow client's queue (or in line for it, tokio's channel being
    /// fair), so a thing's updates reach the service in the order of their messages. Spawned
    /// straight away, the tasks would race for the queue and could apply an older reading last.
    async fn dispatch(&mut self, out: &mut Vec<Outgoing>) {
        let uuids = || uuid::Uuid::new_v4().to_string();
        // An outcome known at the first poll goes through `on_late`, which may queue an error
        // action's update: loop until nothing is left unsent.
        while !self.queued.is_empty() {
            for mut wait in std::mem::take(&mut self.queued) {
                match std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await {
                    Poll::Pending => {
                        self.pending.spawn(wait);
                    }
                    Poll::Ready(late) => {
                        self.on_late(Ok(late), &Context::new(now_ms(), &uuids), out);
                    }
                }
            }
        }
    }

    /// Queues a `shadow` action's update for [`GroupRunner::dispatch`].
    fn update_shadow(&mut self, update: ShadowUpdate, origin: Origin<'_>) -> Result<(), Failure> {
        let failure = |error_message: String| Failure {
            failed_action: SHADOW_ACTION.to_owned(),
            failed_resource: update.thing.clone(),
            error_message,
        };
        let Some(shadows) = self.shadows.clone() else {
            // Cannot happen: the engine makes the client before it starts a rule set with a
            // shadow action. Reported rather than assumed.
            return Err(failure("the rules engine has no shadow client".to_owned()));
        };
        let late = LateFailure {
            rule: origin.rule,
            msg: origin.msg.clone(),
            hops: origin.hops,
            failure: failure(String::new()),
            of_error_action: origin.of_error_action,
        };
        self.queued.push(Box::pin(async move {
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
            Some(LateFailure {
                failure: Failure {
                    error_message,
                    ..late.failure
                },
                ..late
            })
        }));
        Ok(())
    }

    /// A shadow update's outcome: nothing if it was accepted, else a failure to report.
    fn on_late(
        &mut self,
        joined: Result<Option<LateFailure>, tokio::task::JoinError>,
        ctx: &Context<'_>,
        out: &mut Vec<Outgoing>,
    ) {
        let late = match joined {
            Ok(Some(late)) => late,
            Ok(None) => return,
            Err(e) => {
                error!(error = %e, "a shadow action's task failed");
                return;
            }
        };
        if late.of_error_action {
            error!(
                rule = self.rules[late.rule].config.name,
                "the error action failed too: {}", late.failure.error_message
            );
            return;
        }
        self.report(
            late.rule,
            &late.msg,
            vec![late.failure],
            late.hops,
            ctx,
            out,
        );
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

/// Where a shadow update came from, for its late failure.
struct Origin<'a> {
    rule: usize,
    msg: &'a grove_rules::Message,
    /// The hop count of the action's messages (see [`fan_out`]).
    hops: u32,
    of_error_action: bool,
}

/// A `shadow` action's update, checked, for the shadow client.
struct ShadowUpdate {
    thing: String,
    name: Option<String>,
    /// The update document (the rule's output).
    body: Value,
    /// The hop count the update carries.
    hops: u32,
}

/// What one action does with one output.
enum Performed {
    /// Publish this message.
    Publish(Outgoing),
    /// Send this shadow update and watch its answer.
    Shadow(ShadowUpdate),
}

/// The error message of a shadow service rejection (`{"code": 409, "message": "Version
/// conflict", ...}`): the code and the message, as AWS reports a failed shadow action.
fn rejection_message(doc: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(doc).ok();
    let code = parsed
        .as_ref()
        .and_then(|d| d.get("code"))
        .and_then(Value::as_i64);
    let message = parsed
        .as_ref()
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => {
            format!("the shadow service rejected the update: {code} {message}")
        }
        _ => format!(
            "the shadow service rejected the update: {}",
            String::from_utf8_lossy(doc)
        ),
    }
}

/// One action for one output: what to send, or why not.
fn perform(
    action: &Action,
    msg: &grove_rules::Message,
    output: &Output,
    hops: u32,
    ctx: &Context<'_>,
    functions: Option<&Functions>,
) -> Result<Performed, Failure> {
    let fail = |resource: String, message: String| Failure {
        failed_action: action.kind().to_owned(),
        failed_resource: resource,
        error_message: message,
    };
    let publish = |topic: String, qos: u8, retain: bool| {
        Performed::Publish(Outgoing {
            topic,
            payload: Bytes::from(output.to_bytes()),
            qos,
            retain,
            hops,
        })
    };
    match action {
        Action::Republish { topic, qos, retain } => {
            let topic = topic_name(topic.render(msg, ctx)).map_err(|(t, m)| fail(t, m))?;
            // As for devices (the connection layer refuses it too): a retained message on a
            // reserved topic would be replayed, e.g. to the shadow service at every restart.
            if *retain && !grove_broker::namespace::may_retain(&topic) {
                let message = format!("a retained message on the reserved topic {topic}");
                return Err(fail(topic, message));
            }
            Ok(publish(topic, *qos, *retain))
        }
        Action::Cloud { topic } => {
            let topic = topic_name(topic.render(msg, ctx)).map_err(|(t, m)| fail(t, m))?;
            // The cloud component takes everything under this prefix into the outbox.
            Ok(publish(
                format!("{}{topic}", grove_broker::namespace::UP_PREFIX),
                0,
                false,
            ))
        }
        Action::Shadow { thing, name } => {
            let thing = thing.render(msg, ctx);
            let name = name.as_ref().map(|n| n.render(msg, ctx));
            if let Err(e) = validate_thing_name(&thing) {
                return Err(fail(thing, format!("invalid thing name: {e}")));
            }
            if let Some(Err(e)) = name.as_deref().map(validate_shadow_name) {
                return Err(fail(thing, format!("invalid shadow name: {e}")));
            }
            let body =
                match output.as_json() {
                    Some(v) if v.get("state").is_some_and(|s| s.is_object() || s.is_null()) => {
                        v.clone()
                    }
                    _ => return Err(fail(
                        thing,
                        "the rule's output is not a shadow update document ({\"state\": {...}})"
                            .to_owned(),
                    )),
                };
            Ok(Performed::Shadow(ShadowUpdate {
                thing,
                name,
                body,
                hops,
            }))
        }
        // A target that resolves to no deployed version fails here, into the error action; the
        // functions component then queues what arrives on the event topic (see the module doc of
        // `rules` for what it cannot report back).
        Action::Function { target } => {
            if let Some(Err(e)) = functions.map(|f| f.check_target(target)) {
                return Err(fail(target.clone(), e.to_string()));
            }
            Ok(publish(
                grove_functions_host::service::event_topic(target),
                1,
                false,
            ))
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A rendered topic template that must be a topic name (not empty, no wildcard, no NUL); the
/// error is the resource and message of the rule's error action.
fn topic_name(topic: String) -> Result<String, (String, String)> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        let message = format!("{topic:?} is not a valid topic name");
        return Err((topic, message));
    }
    Ok(topic)
}
