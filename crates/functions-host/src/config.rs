//! The `[functions]` section, in its raw (as written) and resolved forms.

use grove_config::{ConfigError, Resolver};
use serde::Deserialize;
use toml::Spanned;

/// The `[functions]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunctions {
    enabled: Option<bool>,
    max_memory_mb: Option<Spanned<u32>>,
    workers: Option<Spanned<usize>>,
    queue_bound: Option<Spanned<usize>>,
    pool_size: Option<Spanned<u32>>,
}

/// The local functions' section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionsConfig {
    /// The most memory any function instance may have, in MiB (manifests ask for less).
    pub max_memory_mb: u32,
    /// Invocations running at once across all functions (threads of the blocking pool).
    pub workers: usize,
    /// Async events one function may have queued; further events go to its dead-letter topic.
    pub queue_bound: usize,
    /// Function instances that may exist at once (the pooling allocator's slots).
    pub pool_size: u32,
}

/// Resolves `[functions]`; `None` when disabled.
pub fn resolve(
    r: &Resolver<'_>,
    raw: RawFunctions,
) -> Result<Option<FunctionsConfig>, ConfigError> {
    Ok(match raw.enabled.unwrap_or(true) {
        false => None,
        true => {
            let f = raw;
            Some(FunctionsConfig {
                max_memory_mb: r.ranged(
                    "functions.max_memory_mb",
                    f.max_memory_mb,
                    64,
                    1..=4096,
                )?,
                workers: r.ranged("functions.workers", f.workers, 2, 1..=256)?,
                queue_bound: r.ranged(
                    "functions.queue_bound",
                    f.queue_bound,
                    1000,
                    1..=1_000_000,
                )?,
                pool_size: r.ranged("functions.pool_size", f.pool_size, 100, 2..=10_000)?,
            })
        }
    })
}
