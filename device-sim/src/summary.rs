//! The run's summary (printed, and written as JSON with `--json`) and the verdict on the scenario's
//! expectations.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::controller::FinalCheck;
use crate::fleet::Percentiles;
use crate::probe::Usage;
use crate::scenario::Expectations;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// The gateway address.
    pub target: String,
    /// Devices simulated.
    pub devices: usize,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// Seconds from start until the measured phase began (devices connecting).
    pub warmup_s: f64,
    /// Length of the measured phase, seconds.
    pub measured_s: f64,
    /// Length of the settle phase actually used, seconds.
    pub settle_s: f64,
    /// Telemetry figures.
    pub telemetry: TelemetrySummary,
    /// Connection figures.
    pub connections: ConnectionSummary,
    /// Shadow figures.
    pub shadow: ShadowSummary,
    /// The gateway's resource use, with `--gateway-pid`.
    pub gateway: Option<Usage>,
    /// The simulator's own resource use (it shares the machine with the gateway).
    pub simulator: Option<Usage>,
    /// Every expectation of the scenario, checked.
    pub expectations: Vec<Outcome>,
    /// Whether every expectation held.
    pub passed: bool,
}

/// Telemetry: what the devices sent and the observer saw.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetrySummary {
    /// Samples the firmware cores accepted for sending during the measured phase.
    pub sent: u64,
    /// Samples the observer saw within the loss timeout.
    pub delivered: u64,
    /// Samples not seen within the loss timeout.
    pub lost: u64,
    /// Messages that matched no sample (late after being counted lost, or duplicates).
    pub unmatched: u64,
    /// `delivered / sent`.
    pub delivery_ratio: f64,
    /// Delivered samples per second of the measured phase.
    pub delivered_per_s: f64,
    /// Samples due while a device had no session (the firmware does not queue telemetry).
    pub skipped_offline: u64,
    /// Samples refused for a full transmit buffer or, at QoS 1, an unacknowledged previous sample.
    pub backpressure: u64,
    /// Failed sensor reads (injected faults).
    pub sensor_errors: u64,
    /// End-to-end latency, milliseconds.
    pub latency_ms: Percentiles,
}

/// Connections of the simulated devices.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSummary {
    /// Devices with a session when the measured phase began.
    pub connected_at_start: usize,
    /// Devices with a session at the end of the settle phase.
    pub connected_at_end: usize,
    /// Sessions established.
    pub connects: u64,
    /// Sessions established after a device's first.
    pub reconnects: u64,
    /// Sessions lost (any reason; a chaos reboot's as reason `Reboot`).
    pub disconnects: u64,
    /// Sessions lost, by the firmware's reason.
    pub disconnect_reasons: BTreeMap<String, u64>,
    /// Failed TCP connects.
    pub connect_failures: u64,
    /// Connections dropped by chaos.
    pub chaos_disconnects: u64,
    /// Reboots by chaos.
    pub reboots: u64,
    /// Devices on slow links.
    pub slow_links: usize,
}

/// Desired-state changes and convergence.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSummary {
    /// Desired updates the controller sent.
    pub desired_sent: u64,
    /// ... accepted by the gateway.
    pub desired_accepted: u64,
    /// ... rejected by the gateway.
    pub desired_rejected: u64,
    /// ... not answered within 10 s.
    pub desired_unanswered: u64,
    /// Desired changes the firmware cores applied (including re-applications after reboots).
    pub applied_by_devices: u64,
    /// Accepted changes seen reported as applied.
    pub converged_changes: u64,
    /// Accepted changes never seen reported as applied.
    pub unconverged_changes: u64,
    /// Time from a change's request to its report, milliseconds.
    pub convergence_ms: Percentiles,
    /// The final read-back of every shadow.
    pub final_check: FinalCheck,
}

/// One expectation, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The expectation's key in `[expect]`.
    pub name: &'static str,
    /// The limit, as written.
    pub limit: String,
    /// What was measured.
    pub actual: String,
    /// Whether it held.
    pub passed: bool,
}

/// Checks every expectation that is set against `summary`.
pub fn evaluate(expect: &Expectations, summary: &Summary) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut push = |name, limit: String, actual: String, passed| {
        outcomes.push(Outcome {
            name,
            limit,
            actual,
            passed,
        })
    };
    let telemetry = &summary.telemetry;
    if let Some(min) = expect.delivery_ratio_min {
        push(
            "delivery_ratio_min",
            format!(">= {min}"),
            format!(
                "{:.4} ({} of {})",
                telemetry.delivery_ratio, telemetry.delivered, telemetry.sent
            ),
            telemetry.sent > 0 && telemetry.delivery_ratio >= min,
        );
    }
    if let Some(max) = expect.latency_p99_ms_max {
        let latency = &telemetry.latency_ms;
        push(
            "latency_p99_ms_max",
            format!("< {max} ms"),
            format!("{} ms over {} samples", latency.p99, latency.count),
            latency.count > 0 && latency.p99 < max,
        );
    }
    if let Some(max_s) = expect.apply_within_s {
        let shadow = &summary.shadow;
        let slowest_s = shadow.convergence_ms.max / 1_000.0;
        push(
            "apply_within_s",
            format!("<= {max_s} s"),
            format!(
                "slowest {slowest_s:.3} s of {} changes, {} never applied",
                shadow.converged_changes, shadow.unconverged_changes
            ),
            shadow.unconverged_changes == 0 && slowest_s <= max_s,
        );
    }
    if let Some(wanted) = expect.converged {
        let check = &summary.shadow.final_check;
        let all = check.checked == summary.devices
            && check.converged == summary.devices
            && check.relays_match == summary.devices;
        push(
            "converged",
            wanted.to_string(),
            format!(
                "{} of {} shadows converged, {} relays as desired, {} unreadable",
                check.converged, summary.devices, check.relays_match, check.unreadable
            ),
            all == wanted,
        );
    }
    if let Some(wanted) = expect.all_connected {
        let connections = &summary.connections;
        let all = connections.connected_at_start == summary.devices;
        push(
            "all_connected",
            wanted.to_string(),
            format!(
                "{} of {} connected",
                connections.connected_at_start, summary.devices
            ),
            all == wanted,
        );
    }
    if let Some(max) = expect.gateway_rss_mb_max {
        match &summary.gateway {
            Some(gateway) => push(
                "gateway_rss_mb_max",
                format!("< {max} MiB"),
                format!("peak {} MiB", gateway.rss_mb_peak),
                gateway.rss_mb_peak < max,
            ),
            None => push(
                "gateway_rss_mb_max",
                format!("< {max} MiB"),
                "not measured: pass --gateway-pid".into(),
                false,
            ),
        }
    }
    outcomes
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.telemetry;
        let c = &self.connections;
        let s = &self.shadow;
        let l = &t.latency_ms;
        let cv = &s.convergence_ms;
        writeln!(
            f,
            "scenario {} (seed {}): {} devices against {}, measured {:.1} s (warmup {:.1} s, settle {:.1} s)",
            self.scenario, self.seed, self.devices, self.target, self.measured_s, self.warmup_s, self.settle_s
        )?;
        writeln!(
            f,
            "telemetry   sent {} delivered {} lost {} unmatched {} ratio {:.4} ({:.1}/s); skipped offline {}, backpressure {}, sensor errors {}",
            t.sent, t.delivered, t.lost, t.unmatched, t.delivery_ratio, t.delivered_per_s, t.skipped_offline, t.backpressure, t.sensor_errors
        )?;
        writeln!(
            f,
            "latency     p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  (mean {} ms, n={})",
            l.p50, l.p90, l.p99, l.max, l.mean, l.count
        )?;
        writeln!(
            f,
            "connections at start {}/{} at end {}/{}; connects {} reconnects {} disconnects {} failed connects {}; chaos: {} drops, {} reboots, {} slow links",
            c.connected_at_start, self.devices, c.connected_at_end, self.devices, c.connects, c.reconnects, c.disconnects, c.connect_failures, c.chaos_disconnects, c.reboots, c.slow_links
        )?;
        if !c.disconnect_reasons.is_empty() {
            let reasons: Vec<String> = c
                .disconnect_reasons
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            writeln!(f, "disconnects by reason: {}", reasons.join(", "))?;
        }
        writeln!(
            f,
            "shadow      desired sent {} accepted {} rejected {} unanswered {}; applied by devices {}; converged {} never {}",
            s.desired_sent, s.desired_accepted, s.desired_rejected, s.desired_unanswered, s.applied_by_devices, s.converged_changes, s.unconverged_changes
        )?;
        writeln!(
            f,
            "convergence p50 {} ms  p99 {} ms  max {} ms; final check: {}/{} converged, {} relays as desired, {} unreadable",
            cv.p50, cv.p99, cv.max, s.final_check.converged, s.final_check.checked, s.final_check.relays_match, s.final_check.unreadable
        )?;
        for (name, usage) in [("gateway", &self.gateway), ("simulator", &self.simulator)] {
            if let Some(u) = usage {
                writeln!(
                    f,
                    "{name:<11} pid {}: RSS peak {} MiB (end {}, high-water {}), CPU mean {} % peak {} % of one core",
                    u.pid, u.rss_mb_peak, u.rss_mb_end, u.rss_mb_hwm, u.cpu_pct_mean, u.cpu_pct_peak
                )?;
            }
        }
        for o in &self.expectations {
            let verdict = if o.passed { "ok  " } else { "FAIL" };
            writeln!(f, "expect {verdict} {} {}: {}", o.name, o.limit, o.actual)?;
        }
        f.write_str(if self.passed { "PASSED" } else { "FAILED" })
    }
}
