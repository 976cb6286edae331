//! `grove-rules-engine`: the rules engine in the gateway: `[[rules]]` from the configuration, evaluated by `grove-rules`
//! on the messages their `FROM` filters select, with actions and an error action.
//!
//! - [`RuleConfig`]: what a `[[rules]]` entry says, compiled and checked when the configuration is
//!   loaded (a bad rule stops startup with the rule's line and the SQL error with a caret).
//! - `dispatch` (pure, no IO, time passed in): which rules a message matches, their outputs
//!   (windows included), the fan-out budget and the hop limit ([`MAX_HOPS`](grove_broker::bus::MAX_HOPS)),
//!   what each action (`republish`, `shadow`, `cloud`, `function`) makes, and the routing of
//!   failures to the error action in AWS's payload shape.
//! - [`engine`]: the shell. It subscribes on the bus, drives the dispatch, sends the shadow
//!   actions' updates and takes their answers, runs windows on a timer, and swaps rule sets on
//!   reload without a gap.
//!
//! Actions, as AWS IoT's (a rule's output is the message the action sends):
//! - `republish = { topic = "alerts/${topic(2)}", qos = 1, retain = false }`: the topic is a
//!   substitution template evaluated against the original message.
//! - `shadow = { thing = "${topic(2)}", name = "optional" }`: the output (a JSON object with
//!   `state`) is sent as an update to that thing's (named) shadow through the shadow service,
//!   whose answer is watched: a rejected update (409 version conflict, 413, 400...) or one not
//!   answered in time goes to the error action with the service's code and message.
//! - `cloud = { topic = "site/${topic(2)}" }`: the output goes to the cloud on that topic, through
//!   the durable outbox (needs `[cloud]`).
//! - `function = "name"` or `function = "name:qualifier"` (a version or an alias): the output is
//!   an async event of that local function (AWS's Lambda action), published on
//!   `$grove/functions/{target}/event` for the functions component to queue (needs
//!   `[functions]`).
//!
//! Which failures reach the error action: everything found before the hand-off (a template that
//! renders to an invalid topic or thing name, an output that is not a shadow document) and, for
//! `shadow`, the service's rejection. For `republish` and `cloud` the hand-off is the end: the
//! broker and the durable outbox take the message (the outbox's own failures are its counters).
//! For `function`, the engine first asks the functions component whether the target resolves to
//! a deployed version now (`Functions::check_target`): an unknown function, version or alias
//! fails into the error action (`LambdaAction`, with the reason), as AWS reports a Lambda invoke
//! that fails for an unknown function or qualifier. Then the functions component's durable tap
//! takes the event (and commits it) as it is published. A function removed between that check and
//! the event's turn can no longer fail the rule: that event goes to the function's dead-letter
//! topic (error kind `not_found`), like any event the component cannot run. Failures of
//! the function itself (after its retries) go to its dead-letter topic
//! (`$grove/functions/{name}/dlq`), as AWS sends a failed asynchronous Lambda invocation to the
//! function's own dead-letter queue or destination, not to the rule.

//! The SQL itself (lexer, parser, evaluator, windows) is `grove-rules`, a pure crate; this one is
//! the component around it. [`metrics`]: the `grove_rule_*` counters; [`status`]: the rules as
//! applied and their last failures (the console's rules page); [`cli`]: `grove rules test`.
//!
//! Architecture invariant: this crate depends on `grove-rules`, `grove-broker`, `grove-shadow-api`,
//! `grove-functions-host` and `grove-auth`, never on cloud sync or the binary: the `cloud` action
//! publishes under `grove_broker::namespace::UP_PREFIX`, where cloud sync's durable tap takes it,
//! and a reload reads the file through the [`engine::LoadRules`] the binary hands in.

pub mod cli;
mod config;
mod dispatch;
pub mod engine;
pub mod metrics;
pub mod status;

pub use config::*;
