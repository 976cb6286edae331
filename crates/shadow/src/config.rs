//! The `[shadow]` section, in its raw (as written) and resolved forms.

use grove_config::{ConfigError, Resolver};
use serde::Deserialize;
use toml::Spanned;

/// The `[shadow]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    max_state_bytes: Option<Spanned<usize>>,
    max_depth: Option<Spanned<usize>>,
    max_inflight_per_client: Option<Spanned<usize>>,
}

/// The device shadow service's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Largest state (desired plus reported, compact JSON) a shadow may hold; AWS's is 8 KiB.
    pub max_state_bytes: usize,
    /// Deepest nesting of a request's `desired` or `reported` section, the section's object being
    /// level 1 (AWS's Device Shadow limits; see `shadow::document::DEFAULT_MAX_DEPTH`); AWS's is 6.
    pub max_depth: usize,
    /// Requests one client may have unanswered at once (taken by the shadow service and not yet
    /// answered, across batches) before the next one gets 429; AWS's is 10.
    pub max_inflight_per_client: usize,
}

/// Resolves `[shadow]`; `max_payload_size` is the broker's payload limit, which bounds the state.
pub fn resolve(
    r: &Resolver<'_>,
    raw: RawShadow,
    max_payload_size: usize,
) -> Result<ShadowConfig, ConfigError> {
    Ok(ShadowConfig {
        max_state_bytes: r.ranged(
            "shadow.max_state_bytes",
            raw.max_state_bytes,
            // AWS's 8 KiB, unless the broker's payload limit is smaller.
            (8 * 1024).min(max_payload_size),
            16..=max_payload_size,
        )?,
        max_depth: r.ranged("shadow.max_depth", raw.max_depth, 6, 1..=64)?,
        max_inflight_per_client: r.ranged(
            "shadow.max_inflight_per_client",
            raw.max_inflight_per_client,
            10,
            1..=100_000,
        )?,
    })
}
