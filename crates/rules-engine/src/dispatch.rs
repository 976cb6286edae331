//! The rules' dispatch, a pure core: which rules a message matches, their outputs (windows
//! included), how many of them the fan-out budget lets act, what each action does with an
//! output, and where failures go (counted, logged, sent to the rule's error action).
//!
//! No IO, no tokio, no clock: the shell (`engine.rs`) passes the time in (the rules' [`Context`]
//! and an [`Instant`] for the log rate), publishes what a step made ([`Step::publish`]), sends its
//! shadow updates ([`Step::shadow`]) to the shadow service and hands a rejected or unanswered one
//! back with [`Dispatch::on_shadow_failure`], which routes it to the error action like the
//! failures found here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grove_rules::{Context, ErrorActionPayload, Failure, Output, RuleIndex, Window};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tracing::{error, warn};

use crate::metrics::RulesMetrics;
use crate::status::RuleStatus;
use crate::{fan_out, Action, RuleConfig, SHADOW_ACTION};
use grove_broker::bus::{Message, Outgoing, MAX_HOPS};
use grove_shadow_api::names::{validate_shadow_name, validate_thing_name};

/// At most one WARN line per rule and interval about outputs cut at the hop limit or the fan-out
/// bound; the others are counted in the line that follows.
const CUT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a `function` action's target (`name` or `name:qualifier`) reaches a deployed version
/// now; `Err` says why not. The functions component answers (`Functions::check_target`), so that
/// invoking a function that does not exist fails into the rule's error action, as an AWS IoT
/// rule's Lambda action does.
pub trait FunctionTargets: Send + Sync {
    /// Checks `target`.
    fn check_target(&self, target: &str) -> Result<(), String>;
}

/// What one step of the dispatch made, for the shell to send.
#[derive(Default)]
pub struct Step {
    /// Messages to publish (republish, cloud, function actions), in order.
    pub publish: Vec<Outgoing>,
    /// Shadow updates to send, in the order of their messages; each with the failure to report if
    /// the service rejects it or does not answer.
    pub shadow: Vec<ShadowRequest>,
}

/// A `shadow` action's update, checked, for the shadow client.
pub struct ShadowUpdate {
    /// The thing.
    pub thing: String,
    /// The named shadow, or the classic one.
    pub name: Option<String>,
    /// The update document (the rule's output).
    pub body: Value,
    /// The hop count the update carries.
    pub hops: u32,
}

/// A shadow update to send, and what to report if it fails.
pub struct ShadowRequest {
    /// The update.
    pub update: ShadowUpdate,
    /// Its failure, with an empty message for the shell to fill in.
    pub late: LateFailure,
}

/// A `shadow` action's update that the service rejected or did not answer.
pub struct LateFailure {
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

impl LateFailure {
    /// The failure with its error message.
    pub fn with_message(self, error_message: String) -> LateFailure {
        LateFailure {
            failure: Failure {
                error_message,
                ..self.failure
            },
            ..self
        }
    }
}

/// One rule with its counters and window state.
struct Running {
    config: Arc<RuleConfig>,
    window: Option<Window>,
    matched: Counter,
    outputs: Counter,
    action_failures: Counter,
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

/// Where an action's output came from, for its failures.
struct Origin<'a> {
    rule: usize,
    msg: &'a grove_rules::Message,
    /// The hop count of the action's messages (see [`fan_out`]).
    hops: u32,
    of_error_action: bool,
}

/// What one action does with one output.
enum Performed {
    /// Publish this message.
    Publish(Outgoing),
    /// Send this shadow update and watch its answer.
    Shadow(ShadowUpdate),
}

/// The rule set with its index, windows and counters.
pub struct Dispatch {
    rules: Vec<Running>,
    /// The rules with a window (indices into `rules`): the shell asks for the next deadline once
    /// per batch, which must not cost a pass over every rule (issue 18: per-message cost flat in
    /// the number of rules).
    windowed: Vec<usize>,
    index: RuleIndex<usize>,
    functions: Option<Arc<dyn FunctionTargets>>,
    /// Where each rule's last failure is kept for the console.
    status: RuleStatus,
}

impl Dispatch {
    /// The dispatch of `rules`, counting into `metrics`; `function` actions check their target
    /// with `functions` (none: the functions component does not run, and the configuration has
    /// refused `function` actions).
    pub fn new(
        rules: Vec<Arc<RuleConfig>>,
        metrics: &RulesMetrics,
        functions: Option<Arc<dyn FunctionTargets>>,
    ) -> Dispatch {
        let mut index = RuleIndex::new();
        let mut running = Vec::with_capacity(rules.len());
        for (i, config) in rules.into_iter().enumerate() {
            // The filter was validated when the rule compiled.
            let _ = index.insert(config.rule.topic_filter(), i);
            let name = config.name.clone();
            running.push(Running {
                window: config.rule.window(),
                matched: metrics.counter(&metrics.matched, &name),
                outputs: metrics.counter(&metrics.outputs, &name),
                action_failures: metrics.counter(&metrics.action_failures, &name),
                hop_dropped: metrics.counter(&metrics.hop_dropped, &name),
                fanout_dropped: metrics.counter(&metrics.fanout_dropped, &name),
                cut_log: Throttle::default(),
                config,
            });
        }
        let windowed = (0..running.len())
            .filter(|&i| running[i].window.is_some())
            .collect();
        Dispatch {
            rules: running,
            windowed,
            index,
            functions,
            status: metrics.status.clone(),
        }
    }

    /// When the next window closes (milliseconds since the epoch, the rules' clock), if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.windowed
            .iter()
            .filter_map(|&i| self.rules[i].window.as_ref()?.next_deadline())
            .min()
    }

    /// Evaluates one message: every rule whose filter matches its topic, once.
    pub fn on_message(&mut self, m: Message, ctx: &Context<'_>, now: Instant, step: &mut Step) {
        let hops = m.hops;
        let mut matched = Vec::new();
        self.index.for_each_match(&m.topic, |i| matched.push(*i));
        if matched.is_empty() {
            return;
        }
        // The bus message's own topic and origin are moved, not copied: this is per message.
        let msg = grove_rules::Message::new(m.topic, m.origin.unwrap_or_default(), m.payload);
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
        // A window's row is as deep as the deepest message that fed it.
        let deepest = outputs.iter().map(|(_, _, h)| *h).max().unwrap_or(hops);
        self.act_on(&msg, outputs, deepest, ctx, now, step);
    }

    /// Windows that closed: their rows, acted on against a message standing for the window (its
    /// topic is the rule's filter, its payload the row), as deep in hops as the deepest message
    /// that fed the row, so that a windowed rule republishing into its own `FROM` meets the hop
    /// limit too.
    pub fn on_tick(&mut self, ctx: &Context<'_>, now: Instant, step: &mut Step) {
        for w in 0..self.windowed.len() {
            let i = self.windowed[w];
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
                let outputs = vec![(i, row.output, row.hops)];
                self.act_on(&msg, outputs, row.hops, ctx, now, step);
            }
        }
    }

    /// A shadow update of [`Step::shadow`] that failed: reported to its rule's error action (an
    /// error action's own failure is only logged).
    pub fn on_shadow_failure(&mut self, late: LateFailure, ctx: &Context<'_>, step: &mut Step) {
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
            step,
        );
    }

    /// Acts on the outputs one message (or one window tick) made, as many as [`fan_out`] allows;
    /// the others are counted and cut.
    fn act_on(
        &mut self,
        msg: &grove_rules::Message,
        outputs: Vec<(usize, Output, u32)>,
        hops: u32,
        ctx: &Context<'_>,
        now: Instant,
        step: &mut Step,
    ) {
        let children: Vec<usize> = outputs
            .iter()
            .map(|(i, _, _)| {
                let config = &self.rules[*i].config;
                config.actions.len() + usize::from(config.error_action.is_some())
            })
            .collect();
        let (next, kept) = fan_out(hops, &children);
        for (n, (i, output, _)) in outputs.into_iter().enumerate() {
            if n < kept {
                self.act(i, msg, &output, next, ctx, step);
            } else {
                self.cut(i, msg, hops, children[n], now);
            }
        }
    }

    /// Counts and (rate-limited) logs an output that is not acted on.
    fn cut(
        &mut self,
        i: usize,
        msg: &grove_rules::Message,
        hops: u32,
        messages: usize,
        now: Instant,
    ) {
        let rule = &mut self.rules[i];
        let at_hop_limit = hops >= MAX_HOPS;
        if at_hop_limit {
            rule.hop_dropped.inc();
        } else {
            rule.fanout_dropped.inc();
        }
        let Some(suppressed) = rule.cut_log.pass(now) else {
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

    /// Runs rule `i`'s actions for one output, their messages `hops` deep; failures go to its
    /// error action.
    fn act(
        &mut self,
        i: usize,
        msg: &grove_rules::Message,
        output: &Output,
        hops: u32,
        ctx: &Context<'_>,
        step: &mut Step,
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
            if let Err(failure) = self.run_action(action, output, origin, ctx, step) {
                failures.push(failure);
            }
        }
        self.report(i, msg, failures, hops, ctx, step);
    }

    /// Runs one action (of rule `origin.rule`, or its error action) for one output: a publish
    /// joins [`Step::publish`], a shadow update [`Step::shadow`].
    fn run_action(
        &mut self,
        action: &Action,
        output: &Output,
        origin: Origin<'_>,
        ctx: &Context<'_>,
        step: &mut Step,
    ) -> Result<(), Failure> {
        let functions = self.functions.as_deref();
        match perform(action, origin.msg, output, origin.hops, ctx, functions)? {
            Performed::Publish(o) => step.publish.push(o),
            Performed::Shadow(update) => {
                let late = LateFailure {
                    rule: origin.rule,
                    msg: origin.msg.clone(),
                    hops: origin.hops,
                    failure: Failure {
                        failed_action: SHADOW_ACTION.to_owned(),
                        failed_resource: update.thing.clone(),
                        error_message: String::new(),
                    },
                    of_error_action: origin.of_error_action,
                };
                step.shadow.push(ShadowRequest { update, late });
            }
        }
        Ok(())
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
        step: &mut Step,
    ) {
        if failures.is_empty() {
            return;
        }
        let config = Arc::clone(&self.rules[i].config);
        let name = &config.name;
        self.rules[i].action_failures.inc_by(failures.len() as u64);
        for f in &failures {
            warn!(
                rule = name,
                action = f.failed_action,
                resource = f.failed_resource,
                "action failed: {}",
                f.error_message
            );
        }
        if let Some(last) = failures.last() {
            self.status.failed(name, last);
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
        let Err(failed) = self.run_action(error_action, &doc, origin, ctx, step) else {
            return;
        };
        error!(
            rule = name,
            "the error action failed too: {}", failed.error_message
        );
    }
}

/// The error message of a shadow service rejection (`{"code": 409, "message": "Version
/// conflict", ...}`): the code and the message, as AWS reports a failed shadow action.
pub fn rejection_message(doc: &[u8]) -> String {
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
    functions: Option<&dyn FunctionTargets>,
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
        // functions component then queues what arrives on the event topic (see the crate's doc
        // for what it cannot report back).
        Action::Function { target } => {
            if let Some(Err(e)) = functions.map(|f| f.check_target(target)) {
                return Err(fail(target.clone(), e));
            }
            Ok(publish(
                grove_functions_host::protocol::event_topic(target),
                1,
                false,
            ))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawAction, RawRule};
    use serde_json::json;

    fn rule(
        name: &str,
        sql: &str,
        actions: Vec<RawAction>,
        error: Option<RawAction>,
    ) -> Arc<RuleConfig> {
        let raw = RawRule {
            name: name.to_owned(),
            sql: sql.to_owned(),
            enabled: true,
            actions,
            error_action: error,
        };
        Arc::new(raw.compile().expect("the rule compiles"))
    }

    fn republish(topic: &str) -> RawAction {
        RawAction::Republish {
            topic: topic.to_owned(),
            qos: 1,
            retain: false,
        }
    }

    fn shadow(thing: &str) -> RawAction {
        RawAction::Shadow {
            thing: thing.to_owned(),
            name: None,
        }
    }

    fn message(topic: &str, payload: Value, hops: u32) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_string()),
            origin: Some("dev-1".to_owned()),
            hops,
            response_topic: None,
            correlation_data: None,
        }
    }

    /// Runs one message through `rules` and returns the step.
    fn step(d: &mut Dispatch, m: &Message) -> Step {
        let uuids = || "uuid".to_owned();
        let ctx = Context::new(1_000, &uuids);
        let mut step = Step::default();
        d.on_message(m.clone(), &ctx, Instant::now(), &mut step);
        step
    }

    fn json_of(o: &Outgoing) -> Value {
        serde_json::from_slice(&o.payload).expect("JSON")
    }

    /// A function target check the tests decide: the names in the list exist.
    struct Deployed(Vec<&'static str>);

    impl FunctionTargets for Deployed {
        fn check_target(&self, target: &str) -> Result<(), String> {
            match self.0.contains(&target) {
                true => Ok(()),
                false => Err(format!("no function named {target:?}")),
            }
        }
    }

    #[test]
    fn a_matching_message_is_republished_on_its_rendered_topic_one_hop_deeper() {
        let metrics = RulesMetrics::default();
        let rules = vec![
            rule(
                "hot",
                "SELECT temp FROM 'sensors/+/temp' WHERE temp > 30",
                vec![republish("alerts/${topic(2)}")],
                None,
            ),
            rule(
                "other",
                "SELECT * FROM 'other/#'",
                vec![republish("x")],
                None,
            ),
        ];
        let mut d = Dispatch::new(rules, &metrics, None);
        let out = step(&mut d, &message("sensors/s1/temp", json!({"temp": 35}), 0));
        assert_eq!(out.publish.len(), 1);
        assert_eq!(out.publish[0].topic, "alerts/s1");
        assert_eq!((out.publish[0].qos, out.publish[0].hops), (1, 1));
        assert_eq!(json_of(&out.publish[0]), json!({"temp": 35}));
        // Matched but filtered out by WHERE: counted as matched, no output.
        let out = step(&mut d, &message("sensors/s1/temp", json!({"temp": 20}), 0));
        assert!(out.publish.is_empty());
        assert_eq!(metrics.counter(&metrics.matched, "hot").get(), 2);
        assert_eq!(metrics.counter(&metrics.outputs, "hot").get(), 1);
        assert_eq!(metrics.counter(&metrics.matched, "other").get(), 0);
    }

    /// Among many rules without a window, the one with a window sets the next deadline and its
    /// row comes out at the tick; without windowed rules there is no deadline at all.
    #[test]
    fn only_windowed_rules_set_deadlines_and_their_rows_come_out_at_the_tick() {
        let metrics = RulesMetrics::default();
        let plain = |n: usize| {
            (0..n)
                .map(|i| {
                    rule(
                        &format!("p{i}"),
                        &format!("SELECT * FROM 'p/{i}'"),
                        vec![republish("x")],
                        None,
                    )
                })
                .collect::<Vec<_>>()
        };
        let d = Dispatch::new(plain(100), &metrics, None);
        assert_eq!(d.next_deadline(), None);

        let mut rules = plain(100);
        rules.push(rule(
            "w",
            "SELECT count(*) AS n FROM 'w' GROUP BY TUMBLINGWINDOW(ss, 1)",
            vec![republish("w/out")],
            None,
        ));
        let mut d = Dispatch::new(rules, &metrics, None);
        let out = step(&mut d, &message("w", json!({}), 0));
        assert!(out.publish.is_empty(), "a window publishes when it closes");
        let deadline = d.next_deadline().expect("the window has a deadline");
        assert!(deadline > 1_000, "{deadline}");
        let uuids = || "uuid".to_owned();
        let ctx = Context::new(deadline, &uuids);
        let mut tick = Step::default();
        d.on_tick(&ctx, Instant::now(), &mut tick);
        assert_eq!(tick.publish.len(), 1);
        assert_eq!(tick.publish[0].topic, "w/out");
        assert_eq!(json_of(&tick.publish[0]), json!({"n": 1}));
    }

    #[test]
    fn a_failed_action_goes_to_the_error_action_in_aws_shape_and_the_others_still_run() {
        let metrics = RulesMetrics::default();
        let rules = vec![rule(
            "r",
            "SELECT * FROM 'in/#'",
            vec![republish("ok/${topic(2)}"), shadow("bad/thing")],
            Some(republish("errors")),
        )];
        let mut d = Dispatch::new(rules, &metrics, None);
        let out = step(&mut d, &message("in/a", json!({"state": {}}), 0));
        let topics: Vec<&str> = out.publish.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(topics, ["ok/a", "errors"]);
        let error = json_of(&out.publish[1]);
        assert_eq!(error["ruleName"], "r");
        assert_eq!(error["topic"], "in/a");
        assert_eq!(error["clientId"], "dev-1");
        assert_eq!(error["failures"][0]["failedAction"], "IotShadowAction");
        assert_eq!(error["failures"][0]["failedResource"], "bad/thing");
        assert!(out.shadow.is_empty());
        assert_eq!(metrics.counter(&metrics.action_failures, "r").get(), 1);
    }

    #[test]
    fn a_shadow_update_is_handed_out_and_its_rejection_comes_back_to_the_error_action() {
        let metrics = RulesMetrics::default();
        let rules = vec![rule(
            "r",
            "SELECT * FROM 'in/+'",
            vec![shadow("${topic(2)}")],
            Some(republish("errors")),
        )];
        let mut d = Dispatch::new(rules, &metrics, None);
        let mut out = step(
            &mut d,
            &message("in/dev-1", json!({"state": {"reported": {"t": 1}}}), 0),
        );
        assert!(out.publish.is_empty());
        let request = out.shadow.pop().expect("one shadow update");
        assert_eq!(request.update.thing, "dev-1");
        assert_eq!(request.update.hops, 1);
        assert_eq!(
            request.update.body,
            json!({"state": {"reported": {"t": 1}}})
        );
        // The service rejected it: the shell hands the failure back with its message.
        let late = request.late.with_message(rejection_message(
            br#"{"code":409,"message":"Version conflict"}"#,
        ));
        let uuids = || "uuid".to_owned();
        let mut back = Step::default();
        d.on_shadow_failure(late, &Context::new(2_000, &uuids), &mut back);
        assert_eq!(back.publish.len(), 1);
        let error = json_of(&back.publish[0]);
        assert_eq!(
            error["failures"][0]["errorMessage"],
            "the shadow service rejected the update: 409 Version conflict"
        );
        assert_eq!(back.publish[0].hops, 1);
        assert_eq!(metrics.counter(&metrics.action_failures, "r").get(), 1);
    }

    #[test]
    fn an_error_action_that_fails_too_is_only_logged() {
        let metrics = RulesMetrics::default();
        let rules = vec![rule(
            "r",
            "SELECT * FROM 'in/+'",
            // `topic(3)` of `in/a` is empty: no topic to republish on.
            vec![republish("${topic(3)}")],
            // AWS's error payload has no `state`: it is no shadow update document.
            Some(shadow("errors-thing")),
        )];
        let mut d = Dispatch::new(rules, &metrics, None);
        let out = step(&mut d, &message("in/a", json!({}), 0));
        assert!(out.publish.is_empty() && out.shadow.is_empty());
        assert_eq!(metrics.counter(&metrics.action_failures, "r").get(), 1);
    }

    #[test]
    fn a_function_action_publishes_an_event_only_for_a_deployed_target() {
        let metrics = RulesMetrics::default();
        let rules = vec![rule(
            "r",
            "SELECT * FROM 'in/+'",
            vec![
                RawAction::Function("known:live".to_owned()),
                RawAction::Function("gone".to_owned()),
            ],
            Some(republish("errors")),
        )];
        let targets: Arc<dyn FunctionTargets> = Arc::new(Deployed(vec!["known:live"]));
        let mut d = Dispatch::new(rules, &metrics, Some(targets));
        let out = step(&mut d, &message("in/a", json!({"v": 1}), 0));
        let topics: Vec<&str> = out.publish.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(topics, ["$grove/functions/known:live/event", "errors"]);
        assert_eq!(out.publish[0].qos, 1);
        let error = json_of(&out.publish[1]);
        assert_eq!(error["failures"][0]["failedAction"], "LambdaAction");
        assert_eq!(
            error["failures"][0]["errorMessage"],
            "no function named \"gone\""
        );
    }

    #[test]
    fn outputs_past_the_hop_limit_or_the_fan_out_budget_are_cut_and_counted() {
        let metrics = RulesMetrics::default();
        let rules = vec![rule(
            "loop",
            "SELECT * FROM 'in/#'",
            vec![republish("in/again")],
            None,
        )];
        let mut d = Dispatch::new(rules, &metrics, None);
        let out = step(&mut d, &message("in/a", json!({}), MAX_HOPS));
        assert!(out.publish.is_empty());
        assert_eq!(metrics.counter(&metrics.hop_dropped, "loop").get(), 1);
        let out = step(&mut d, &message("in/a", json!({}), MAX_HOPS - 1));
        assert_eq!(out.publish[0].hops, MAX_HOPS);

        // 300 actions on one output: more than one message may cause.
        let wide = (0..300).map(|i| republish(&format!("out/{i}"))).collect();
        let rules = vec![rule("wide", "SELECT * FROM 'w'", wide, None)];
        let mut d = Dispatch::new(rules, &metrics, None);
        let out = step(&mut d, &message("w", json!({}), 0));
        assert!(out.publish.is_empty());
        assert_eq!(metrics.counter(&metrics.fanout_dropped, "wide").get(), 1);
    }

    #[test]
    fn the_cut_log_passes_one_line_per_interval_and_counts_the_rest() {
        let mut t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.pass(start), Some(0));
        assert_eq!(t.pass(start + Duration::from_secs(1)), None);
        assert_eq!(t.pass(start + Duration::from_secs(9)), None);
        assert_eq!(t.pass(start + CUT_LOG_INTERVAL), Some(2));
    }
}
