//! Logging: `tracing` to stderr, filtered by `GROVE_LOG`, else `RUST_LOG`, else `[log] filter`.
//!
//! One more layer watches rumqttd's own warnings for the one event that means messages were lost:
//! a subscriber that fell further behind than the router's in-memory log keeps (`broker.segment_size
//! x broker.segment_count` per filter) has its cursor moved to the oldest message still held, and
//! rumqttd says so only in a log line ("... jumping to head"). Each such jump is counted in
//! `grove_broker_subscriber_overruns_total`, so no loss is silent.

use std::io::IsTerminal;
use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Overruns seen since start (see the module doc).
pub fn subscriber_overruns() -> Counter {
    static OVERRUNS: OnceLock<Counter> = OnceLock::new();
    OVERRUNS.get_or_init(Counter::default).clone()
}

/// Counts rumqttd's "a reader fell behind the log and jumped ahead" warnings.
struct OverrunCounter(Counter);

impl<S: Subscriber> Layer<S> for OverrunCounter {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == Level::WARN && meta.target().starts_with("rumqttd::segments") {
            self.0.inc();
        }
    }
}

/// Installs the global subscriber. An invalid filter in the environment is reported and the
/// configured filter used instead, rather than running silently without logs.
pub fn init(config_filter: &str) {
    let from_env = ["GROVE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| std::env::var(var).ok().map(|v| (*var, v)));
    let (filter, problem) = match from_env {
        Some((var, value)) => match EnvFilter::try_new(&value) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(config_filter),
                Some(format!("ignoring {var}={value:?}: {e}")),
            ),
        },
        None => (EnvFilter::new(config_filter), None),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    // The counter sees rumqttd's segment warnings whatever the log filter says.
    let overruns =
        OverrunCounter(subscriber_overruns()).with_filter(EnvFilter::new("rumqttd::segments=warn"));
    tracing_subscriber::registry()
        .with(fmt)
        .with(overruns)
        .init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}
