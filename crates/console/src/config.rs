//! The `[console]` section, in its raw (as written) and resolved forms, and where the console may
//! be served.
//!
//! The console is served on the ops endpoint, which speaks plain HTTP (no TLS). A password and a
//! session cookie must not cross a network in the clear, so the console is served only when the
//! ops endpoint binds a loopback address, unless `allow_network_without_tls = true` says that the
//! operator has put TLS in front (a reverse proxy) or accepts the risk. With the ops endpoint on
//! another address the console is off by default, and an explicit `enabled = true` without that
//! allowance is a configuration error.
//!
//! The console answers only requests addressed to an IP address, `localhost` or a name in
//! `console.hosts` (the `Host` header): a page of another site whose name was made to resolve to
//! the gateway's address (DNS rebinding) reaches it with that name, and its own origin, so the
//! same-origin checks alone would let it try passwords and, signed in, act.

use std::net::SocketAddr;
use std::time::Duration;

use grove_config::{ConfigError, Located, Resolver};
use serde::Deserialize;
use toml::Spanned;

use crate::core::Limits;

/// The `[console]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    enabled: Option<Spanned<bool>>,
    allow_network_without_tls: Option<Spanned<bool>>,
    idle_timeout_s: Option<Spanned<u64>>,
    session_max_s: Option<Spanned<u64>>,
    hosts: Option<Spanned<Vec<String>>>,
}

/// The console, as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Sessions' lifetimes and the budgets.
    pub limits: Limits,
    /// Host names the console answers to besides IP addresses and `localhost` (lower case).
    pub hosts: Vec<String>,
}

/// Resolves `[console]` against the ops endpoint's address (`None`: the ops endpoint is off, and
/// the console with it). `None`: the console is not served.
pub fn resolve(
    r: &Resolver<'_>,
    raw: RawConsole,
    ops: Option<&Located<SocketAddr>>,
) -> Result<Option<ConsoleConfig>, ConfigError> {
    let explicit = raw.enabled.as_ref().map(|e| *e.get_ref());
    let enabled: Located<bool> = r.located("console.enabled", raw.enabled, true);
    let network = r
        .located(
            "console.allow_network_without_tls",
            raw.allow_network_without_tls,
            false,
        )
        .value;
    let defaults = Limits::default();
    let idle = r.ranged(
        "console.idle_timeout_s",
        raw.idle_timeout_s,
        defaults.idle.as_secs(),
        1..=86_400,
    )?;
    let max = r.ranged(
        "console.session_max_s",
        raw.session_max_s,
        defaults.absolute.as_secs(),
        1..=7 * 86_400,
    )?;
    let hosts = r.located("console.hosts", raw.hosts, Vec::new());
    if let Some(bad) = hosts.value.iter().find(|h| !valid_host_name(h)) {
        return Err(r.invalid(
            &hosts,
            format!("{bad:?} is not a host name (letters, digits, `-` and `.`; no port)"),
        ));
    }
    let hosts = hosts.value.iter().map(|h| h.to_ascii_lowercase()).collect();
    let Some(ops) = ops.filter(|_| enabled.value) else {
        return Ok(None);
    };
    if !ops.value.ip().is_loopback() && !network {
        return match explicit {
            Some(true) => Err(r.invalid(
                &enabled,
                format!(
                    "the console would be served on {} in plain HTTP: bind `ops.bind` to a \
                     loopback address, or set `console.allow_network_without_tls = true` if TLS \
                     is put in front of it",
                    ops.value
                ),
            )),
            _ => {
                tracing::info!(ops = %ops.value, "the console is off: the ops endpoint is not on loopback (see [console] allow_network_without_tls)");
                Ok(None)
            }
        };
    }
    Ok(Some(ConsoleConfig {
        limits: Limits {
            idle: Duration::from_secs(idle),
            absolute: Duration::from_secs(max),
            ..defaults
        },
        hosts,
    }))
}

fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str, ops: &str) -> Result<Option<ConsoleConfig>, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            console: RawConsole,
        }
        let file: File = toml::from_str(text).unwrap();
        let r = Resolver::new(text, None);
        let ops = r.located("ops.bind", None, ops.parse().unwrap());
        resolve(&r, file.console, Some(&ops))
    }

    #[test]
    fn on_loopback_the_console_is_on_by_default_with_the_default_limits() {
        let c = resolve_text("", "127.0.0.1:9464").unwrap().unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = resolve_text("[console]\nidle_timeout_s = 2\n", "[::1]:9464")
            .unwrap()
            .unwrap();
        assert_eq!(c.limits.idle, Duration::from_secs(2));
        assert_eq!(
            resolve_text("[console]\nenabled = false\n", "127.0.0.1:1").unwrap(),
            None
        );
    }

    #[test]
    fn off_loopback_the_console_needs_the_allowance() {
        assert_eq!(resolve_text("", "0.0.0.0:9464").unwrap(), None);
        let e = resolve_text("[console]\nenabled = true\n", "0.0.0.0:9464").unwrap_err();
        assert!(e.to_string().contains("allow_network_without_tls"), "{e}");
        let allowed = "[console]\nenabled = true\nallow_network_without_tls = true\n";
        assert!(resolve_text(allowed, "0.0.0.0:9464").unwrap().is_some());
    }

    #[test]
    fn hosts_are_names_without_ports() {
        let c = resolve_text("[console]\nhosts = [\"Gateway.lan\"]\n", "127.0.0.1:1")
            .unwrap()
            .unwrap();
        assert_eq!(c.hosts, ["gateway.lan"]);
        let e = resolve_text("[console]\nhosts = [\"gw:9464\"]\n", "127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("console.hosts"), "{e}");
    }

    #[test]
    fn a_zero_idle_timeout_is_refused() {
        let e = resolve_text("[console]\nidle_timeout_s = 0\n", "127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("console.idle_timeout_s"), "{e}");
    }
}
