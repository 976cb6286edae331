//! Logging: `tracing` to stderr, filtered by `GROVE_LOG`, else `RUST_LOG`, else `[log] filter`.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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
    tracing_subscriber::registry().with(fmt).init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}
