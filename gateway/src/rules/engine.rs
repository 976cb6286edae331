//! The rules component: rule sets on bus links, evaluation, actions, windows, reload.
//!
//! rumqttd delivers a message once per matching subscription of a link, so two overlapping `FROM`
//! filters on one link would evaluate a message twice. The engine therefore puts filters that can
//! match a common topic on different links ("groups"): within a group each message matches exactly
//! one filter, which the group's [`RuleIndex`] finds without scanning the rules. Most rule sets need
//! one or two groups.
//!
//! A reload builds the new groups and waits until the router has confirmed their subscriptions
//! before it stops the old ones, so no message published during a reload is missed (one published
//! in that instant may be handled by both the old and the new rules: at least once).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use grove_rules::{Context, ErrorActionPayload, Failure, Output, RuleIndex, Window};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::{Action, RuleConfig, MAX_HOPS};
use crate::auth::policy::overlaps;
use crate::broker::BusMaker;
use crate::bus::{Bus, Closed, Message, Outgoing};
use crate::config::Config;
use crate::metrics::RulesMetrics;
use crate::shadow::document::client_token_of;
use crate::shadow::names::{request_topic, validate_shadow_name, validate_thing_name, Operation};

/// Grove's topic for reloading rules over MQTT (`grove rules reload`); answered on `…/accepted`
/// or `…/rejected`.
pub const RELOAD_TOPIC: &str = "$grove/rules/reload";

/// How long a replaced group's link must stay quiet before the group leaves.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// Asks the engine to re-read the rules from the configuration file.
pub struct Reload {
    /// Where to report the outcome (the names of the rules now running, or why nothing changed).
    pub done: oneshot::Sender<Result<Vec<String>, String>>,
}

/// The running engine.
pub struct RulesEngine {
    buses: BusMaker,
    config_path: Option<PathBuf>,
    metrics: RulesMetrics,
    groups: Vec<Group>,
    generation: u64,
}

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
        config_path: Option<PathBuf>,
        rules: &[RuleConfig],
        metrics: RulesMetrics,
    ) -> Result<RulesEngine, Closed> {
        let mut engine = RulesEngine {
            buses,
            config_path,
            metrics,
            groups: Vec::new(),
            generation: 0,
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
        let Some(path) = &self.config_path else {
            return Err(
                "the gateway runs on the built-in defaults: there is no file to reload".into(),
            );
        };
        let config = Config::load(path).map_err(|e| e.to_string())?;
        self.apply(&config.rules).await.map_err(|e| e.to_string())?;
        Ok(config
            .rules
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
        let mut started = Vec::new();
        for (i, (filters, rules)) in groups.into_iter().enumerate() {
            let mut bus = self
                .buses
                .bus(&format!("rules-{}-{i}", self.generation))
                .await
                .map_err(|_| Closed::Link)?;
            bus.subscribe_confirmed(&filters).await?;
            let (stop, stopped) = oneshot::channel();
            let runner = GroupRunner::new(rules, &self.metrics);
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
    errors: Counter,
    hop_dropped: Counter,
}

/// The rules of one group, evaluated on its bus link.
struct GroupRunner {
    rules: Vec<Running>,
    index: RuleIndex<usize>,
    action_failures: HashMap<String, Counter>,
}

impl GroupRunner {
    fn new(rules: Vec<Arc<RuleConfig>>, metrics: &RulesMetrics) -> GroupRunner {
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
                errors: metrics.counter(&metrics.errors, &name),
                hop_dropped: metrics.counter(&metrics.hop_dropped, &name),
                config,
            });
        }
        GroupRunner {
            rules: running,
            index,
            action_failures,
        }
    }

    async fn run(mut self, mut bus: Bus, mut stop: oneshot::Receiver<()>) {
        let uuids = || uuid::Uuid::new_v4().to_string();
        let mut batch = Vec::new();
        let mut draining = false;
        loop {
            if draining {
                // Replaced by a new rule set whose subscriptions are confirmed: finish what the
                // router had already routed here (published before the switch), then leave.
                match tokio::time::timeout(DRAIN_IDLE, bus.recv_batch(&mut batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
                let mut out = Vec::new();
                {
                    let ctx = Context::new(now_ms(), &uuids);
                    for m in batch.drain(..) {
                        self.on_message(m, &ctx, &mut out);
                    }
                }
                if !out.is_empty() && bus.publish(out).await.is_err() {
                    return;
                }
                continue;
            }
            let deadline = self
                .rules
                .iter()
                .filter_map(|r| r.window.as_ref()?.next_deadline())
                .min();
            let sleep =
                deadline.map(|d| Duration::from_millis(u64::try_from(d - now_ms()).unwrap_or(0)));
            let mut out = Vec::new();
            tokio::select! {
                _ = &mut stop => {
                    draining = true;
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
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::MAX)), if sleep.is_some() => {
                    let ctx = Context::new(now_ms(), &uuids);
                    self.on_tick(&ctx, &mut out);
                }
            }
            if out.is_empty() {
                continue;
            }
            match bus.publish(out).await {
                Ok(()) => {}
                Err(Closed::Link) => return,
                Err(e @ Closed::Store(_)) => {
                    error!(error = %e, "a retained republish was not published")
                }
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
        for i in matched {
            let rule = &mut self.rules[i];
            rule.matched.inc();
            let outputs = match &mut rule.window {
                Some(w) => w.on_message(&msg, ctx),
                None => match rule.config.rule.evaluate(&msg, ctx) {
                    Ok(o) => o.into_iter().collect(),
                    Err(e) => {
                        rule.errors.inc();
                        debug!(rule = rule.config.name, topic = m.topic, error = %e, "rule evaluation failed");
                        Vec::new()
                    }
                },
            };
            for output in outputs {
                self.act(i, &msg, &output, hops, ctx, out);
            }
        }
    }

    /// Windows that closed: their rows, acted on against a message standing for the window (its
    /// topic is the rule's filter, its payload the row).
    fn on_tick(&mut self, ctx: &Context<'_>, out: &mut Vec<Outgoing>) {
        for i in 0..self.rules.len() {
            let rows = match &mut self.rules[i].window {
                Some(w) => w.poll(ctx),
                None => continue,
            };
            for row in rows {
                let msg = grove_rules::Message::new(
                    self.rules[i].config.rule.topic_filter(),
                    "",
                    row.to_bytes(),
                );
                self.act(i, &msg, &row, 0, ctx, out);
            }
        }
    }

    /// Runs rule `i`'s actions for one output; failures go to its error action.
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
        if hops >= MAX_HOPS {
            rule.hop_dropped.inc();
            warn!(
                rule = rule.config.name,
                topic = msg.topic(),
                hops,
                "republish loop cut at the hop limit"
            );
            return;
        }
        let mut failures = Vec::new();
        for action in &rule.config.actions {
            match perform(action, msg, output, hops + 1, ctx) {
                Ok(o) => out.push(o),
                Err(failure) => failures.push(failure),
            }
        }
        if failures.is_empty() {
            return;
        }
        let name = rule.config.name.clone();
        if let Some(c) = self.action_failures.get(&name) {
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
        let Some(error_action) = &self.rules[i].config.error_action else {
            return;
        };
        let payload = ErrorActionPayload::new(&name, msg, failures);
        let doc = Output::Json(serde_json::to_value(&payload).unwrap_or_default());
        match perform(error_action, msg, &doc, hops + 1, ctx) {
            Ok(o) => out.push(o),
            Err(f) => error!(
                rule = name,
                "the error action failed too: {}", f.error_message
            ),
        }
    }
}

/// One action for one output: the message to publish, or why not.
fn perform(
    action: &Action,
    msg: &grove_rules::Message,
    output: &Output,
    hops: u32,
    ctx: &Context<'_>,
) -> Result<Outgoing, Failure> {
    let fail = |resource: String, message: String| Failure {
        failed_action: action.kind().to_owned(),
        failed_resource: resource,
        error_message: message,
    };
    match action {
        Action::Republish { topic, qos, retain } => {
            let topic = topic_name(topic.render(msg, ctx)).map_err(|(t, m)| fail(t, m))?;
            Ok(Outgoing {
                topic,
                payload: Bytes::from(output.to_bytes()),
                qos: *qos,
                retain: *retain,
                hops,
            })
        }
        Action::Cloud { topic } => {
            let topic = topic_name(topic.render(msg, ctx)).map_err(|(t, m)| fail(t, m))?;
            // The cloud component takes everything under this prefix into the outbox.
            Ok(Outgoing {
                topic: format!("{}{topic}", crate::cloud::UP_PREFIX),
                payload: Bytes::from(output.to_bytes()),
                qos: 0,
                retain: false,
                hops,
            })
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
            if !output
                .as_json()
                .is_some_and(|v| v.get("state").is_some_and(|s| s.is_object() || s.is_null()))
            {
                return Err(fail(
                    thing,
                    "the rule's output is not a shadow update document ({\"state\": {...}})"
                        .to_owned(),
                ));
            }
            Ok(Outgoing {
                topic: request_topic(&thing, name.as_deref(), Operation::Update),
                payload: Bytes::from(output.to_bytes()),
                qos: 1,
                retain: false,
                hops,
            })
        }
        // The functions component queues what arrives on the event topic.
        Action::Function { target } => Ok(Outgoing {
            topic: crate::functions::service::event_topic(target),
            payload: Bytes::from(output.to_bytes()),
            qos: 1,
            retain: false,
            hops,
        }),
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
