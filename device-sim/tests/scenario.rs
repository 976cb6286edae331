//! Scenario files: the shipped ones load, thing-name patterns expand, and every kind of mistake is a
//! clear error naming its key (one case per line).

use std::path::Path;

use grove_device_sim::scenario::expand_pattern;
use grove_device_sim::{Overrides, Scenario};

const MINIMAL: &str = "name = \"t\"\nduration_s = 5\n";

/// Parses `MINIMAL` plus `extra`; returns the error message, or "ok".
fn parse(extra: &str) -> String {
    match Scenario::parse(
        &format!("{MINIMAL}{extra}"),
        Path::new("case.toml"),
        &Overrides::default(),
    ) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mistakes_are_reported_by_key() {
    let cases: &[(&str, &str)] = &[
        ("", "ok"),
        ("[fleet]\ndevices = 10000\n", "ok"),
        (
            "[fleet]\ndevices = 0\n",
            "`fleet.devices`: must be 1 to 10000",
        ),
        (
            "[fleet]\ndevices = 10001\n",
            "`fleet.devices`: must be 1 to 10000",
        ),
        ("[fleet]\ndevicez = 3\n", "unknown field `devicez`"),
        (
            "[fleet]\nid_pattern = \"dev\"\n",
            "`fleet.id_pattern`: needs a `{n}`",
        ),
        ("[fleet]\nid_pattern = \"d{n}{n}\"\n", "only one `{n}`"),
        (
            "[fleet]\nid_pattern = \"d{n:x}\"\n",
            "unknown placeholder format",
        ),
        (
            "[fleet]\nid_pattern = \"bad/name-{n}\"\n",
            "not accepted by the firmware",
        ),
        (
            "[fleet]\nkeep_alive_s = 2\nack_timeout_ms = 2000\n",
            "`fleet.ack_timeout_ms`",
        ),
        (
            "[fleet]\nreconnect_min_ms = 0\n",
            "`fleet.reconnect_min_ms`",
        ),
        ("[telemetry]\ninterval_s = 0\n", "`telemetry.interval_s`"),
        ("[telemetry]\nqos = 2\n", "`telemetry.qos`"),
        ("[sensor]\nfault_rate = 1.5\n", "`sensor.fault_rate`"),
        (
            "[sensor]\ntemperature_c = 200.0\n",
            "`sensor.temperature_c`",
        ),
        (
            "[shadow]\ninterval_choices = [0]\n",
            "`shadow.interval_choices`",
        ),
        (
            "[shadow]\ncontroller_clients = 0\n",
            "`shadow.controller_clients`",
        ),
        ("[chaos]\nstorm_fraction = 2.0\n", "`chaos.storm_fraction`"),
        (
            "[chaos]\ndisconnects_per_s = -1.0\n",
            "`chaos.disconnects_per_s`",
        ),
        (
            "[expect]\ndelivery_ratio_min = 1.5\n",
            "`expect.delivery_ratio_min`",
        ),
        (
            "[expect]\nlatency_p99_ms_max = 0\n",
            "`expect.latency_p99_ms_max`",
        ),
        ("[expect]\nlatency_p99 = 5\n", "unknown field `latency_p99`"),
        ("settle_s = -1\n", "`settle_s`"),
        ("target = \"localhost\"\n", "invalid socket address"),
    ];
    for (extra, expected) in cases {
        let got = parse(extra);
        assert!(
            got.contains(expected),
            "{extra:?}: expected {expected:?}, got {got:?}"
        );
    }
}

#[test]
fn patterns_expand() {
    let cases: &[(&str, u64, usize, &[&str])] = &[
        ("d-{n}", 1, 3, &["d-1", "d-2", "d-3"]),
        ("d-{n:03}", 9, 2, &["d-009", "d-010"]),
        ("{n:02}-room", 0, 1, &["00-room"]),
        ("x{n}", 99, 0, &[]),
    ];
    for (pattern, first, count, expected) in cases {
        assert_eq!(
            expand_pattern(pattern, *first, *count).unwrap(),
            *expected,
            "{pattern}"
        );
    }
}

#[test]
fn shipped_scenarios_load() {
    let cases: &[(&str, usize, &str, &str)] = &[
        ("smoke", 10, "smoke-01", "smoke-10"),
        ("fleet", 1000, "fleet-00001", "fleet-01000"),
        ("chaos", 200, "chaos-0001", "chaos-0200"),
    ];
    for (name, devices, first, last) in cases {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(format!("{name}.toml"));
        let scenario = Scenario::load(&path, &Overrides::default()).unwrap();
        assert_eq!(scenario.things.len(), *devices, "{name}");
        assert_eq!(scenario.things.first().unwrap(), first, "{name}");
        assert_eq!(scenario.things.last().unwrap(), last, "{name}");
    }
}

#[test]
fn overrides_replace_the_file() {
    let overrides = Overrides {
        target: Some("127.0.0.1:4000".parse().unwrap()),
        devices: Some(3),
        duration_s: Some(2.5),
        seed: Some(42),
        ramp_s: Some(0.5),
    };
    let scenario = Scenario::parse(MINIMAL, Path::new("case.toml"), &overrides).unwrap();
    assert_eq!(scenario.file.target.port(), 4000);
    assert_eq!(scenario.things.len(), 3);
    assert_eq!(scenario.duration.as_secs_f64(), 2.5);
    assert_eq!(scenario.file.seed, 42);
    assert_eq!(scenario.ramp.as_secs_f64(), 0.5);
}
