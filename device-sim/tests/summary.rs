//! The verdict on a scenario's expectations (`summary::evaluate`), one case per line: each case takes a
//! healthy run of 10 devices, spoils (or keeps) one figure, and checks the outcome of one expectation.

use std::collections::BTreeMap;

use grove_device_sim::controller::FinalCheck;
use grove_device_sim::fleet::Percentiles;
use grove_device_sim::probe::Usage;
use grove_device_sim::scenario::Expectations;
use grove_device_sim::summary::{
    evaluate, ConnectionSummary, Outcome, ShadowSummary, Summary, TelemetrySummary,
};

/// A run in which every expectation holds: 10 devices, every sample delivered, every change applied
/// within a second, every shadow converged, the gateway at 40 MiB.
fn healthy() -> Summary {
    let ms = |p99: f64, max: f64| Percentiles {
        count: 100,
        p50: 1.0,
        p90: 2.0,
        p99,
        max,
        mean: 1.0,
    };
    Summary {
        scenario: "case".into(),
        seed: 1,
        target: "127.0.0.1:1883".into(),
        devices: 10,
        started_unix_s: 0,
        warmup_s: 1.0,
        measured_s: 10.0,
        settle_s: 5.0,
        telemetry: TelemetrySummary {
            sent: 100,
            delivered: 100,
            lost: 0,
            unmatched: 0,
            delivery_ratio: 1.0,
            delivered_per_s: 10.0,
            skipped_offline: 0,
            backpressure: 0,
            sensor_errors: 0,
            latency_ms: ms(3.0, 4.0),
        },
        connections: ConnectionSummary {
            connected_at_start: 10,
            connected_at_end: 10,
            connects: 10,
            reconnects: 0,
            disconnects: 0,
            disconnect_reasons: BTreeMap::new(),
            connect_failures: 0,
            chaos_disconnects: 0,
            reboots: 0,
            slow_links: 0,
        },
        shadow: ShadowSummary {
            desired_sent: 20,
            desired_accepted: 20,
            desired_rejected: 0,
            desired_unanswered: 0,
            applied_by_devices: 20,
            converged_changes: 20,
            unconverged_changes: 0,
            convergence_ms: ms(500.0, 900.0),
            final_check: FinalCheck {
                checked: 10,
                converged: 10,
                relays_match: 10,
                unreadable: 0,
            },
        },
        gateway: Some(Usage {
            pid: 42,
            rss_mb_peak: 40.0,
            ..Usage::default()
        }),
        simulator: None,
        expectations: Vec::new(),
        passed: false,
    }
}

#[test]
fn each_expectation_passes_or_fails_on_its_figure() {
    type Spoil = fn(&mut Summary);
    let keep: Spoil = |_| {};
    #[rustfmt::skip]
    let cases: &[(&str, Spoil, bool, &str)] = &[
        // (the [expect] table, what goes wrong, passed, a piece of the reported actual value)
        ("delivery_ratio_min = 0.99", keep, true, "1.0000 (100 of 100)"),
        ("delivery_ratio_min = 0.99", |s| { s.telemetry.delivered = 98; s.telemetry.delivery_ratio = 0.98 }, false, "98 of 100"),
        // Nothing sent proves nothing: a ratio over zero samples fails whatever it computes to.
        ("delivery_ratio_min = 0.5", |s| { s.telemetry.sent = 0; s.telemetry.delivered = 0; s.telemetry.delivery_ratio = 1.0 }, false, "0 of 0"),
        ("latency_p99_ms_max = 50", keep, true, "3 ms over 100 samples"),
        ("latency_p99_ms_max = 50", |s| s.telemetry.latency_ms.p99 = 50.0, false, "50 ms"),
        ("latency_p99_ms_max = 50", |s| s.telemetry.latency_ms = Percentiles::default(), false, "over 0 samples"),
        ("apply_within_s = 5", keep, true, "slowest 0.900 s of 20 changes, 0 never applied"),
        ("apply_within_s = 5", |s| s.shadow.convergence_ms.max = 5_001.0, false, "slowest 5.001 s"),
        // Fast, but some changes were never applied.
        ("apply_within_s = 5", |s| s.shadow.unconverged_changes = 2, false, "2 never applied"),
        ("converged = true", keep, true, "10 of 10 shadows converged"),
        ("converged = true", |s| s.shadow.final_check.converged = 9, false, "9 of 10 shadows converged"),
        ("converged = true", |s| s.shadow.final_check.relays_match = 9, false, "9 relays as desired"),
        ("converged = true", |s| { s.shadow.final_check.checked = 8; s.shadow.final_check.unreadable = 2 }, false, "2 unreadable"),
        ("converged = false", keep, false, "10 of 10"),
        ("all_connected = true", keep, true, "10 of 10 connected"),
        ("all_connected = true", |s| s.connections.connected_at_start = 9, false, "9 of 10 connected"),
        ("gateway_rss_mb_max = 61", keep, true, "peak 40 MiB"),
        ("gateway_rss_mb_max = 61", |s| s.gateway.as_mut().unwrap().rss_mb_peak = 61.0, false, "peak 61 MiB"),
        ("gateway_rss_mb_max = 61", |s| s.gateway = None, false, "not measured: pass --gateway-pid"),
    ];
    for &(expect, spoil, passed, actual) in cases {
        let expectations: Expectations = toml::from_str(expect).expect(expect);
        let mut summary = healthy();
        spoil(&mut summary);
        let outcomes = evaluate(&expectations, &summary);
        let [Outcome {
            passed: got,
            actual: got_actual,
            ..
        }] = &outcomes[..]
        else {
            panic!("{expect}: one outcome expected, got {outcomes:?}");
        };
        assert_eq!(*got, passed, "{expect}: {got_actual}");
        assert!(
            got_actual.contains(actual),
            "{expect}: {got_actual:?} lacks {actual:?}"
        );
    }
}

#[test]
fn no_expectations_no_outcomes() {
    assert_eq!(evaluate(&Expectations::default(), &healthy()), []);
}
