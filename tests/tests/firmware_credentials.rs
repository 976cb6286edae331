//! The firmware's device core joins a gateway that requires credentials, with its identity read
//! from the provisioning record `grove device provision` wrote: a password on the password listener (plain TCP, the blocking shell), a client
//! certificate on the mutual-TLS listener and a password inside TLS (TLS 1.3 by embedded-tls, the
//! async shell), each syncing its shadow, applying a delta and reporting back. And the refusals:
//! a wrong password comes back from the core as the CONNACK's code, a gateway certificate from
//! another CA or for another name ends the handshake on the device.

use grove_firmware::mqtt::ConnectReturnCode;
use grove_firmware::shadow::State;
use grove_firmware::transport::tls::TlsFailure;
use grove_firmware::{Config, Event};
use grove_tests::device::{provisioned_config, Seen, Shell, TlsDevice};
use grove_tests::{blocking, free_port, grove, Devices, Gateway, Provision, Site, SERVER_NAME};
use serde_json::{json, Value};

const PASSWORD: &str = "fw s3cret";

/// A device's configuration: its thing name from the record, a short reconnect backoff.
fn base(thing: &str) -> Config {
    Config::new(thing).unwrap().with_backoff(100, 400)
}

/// An operator sets desired state through the gateway's anonymous loopback listener.
fn set_desired(g: &Gateway, thing: &str, desired: Value) {
    let addr = format!("127.0.0.1:{}", g.mqtt_port);
    let doc = json!({"state": {"desired": desired}}).to_string();
    let (code, out) = blocking(|| {
        grove(
            &["shadow", "--mqtt", &addr, "update", thing, "--json", &doc],
            g.dir.path(),
        )
    });
    assert_eq!(code, 0, "{out}");
}

/// A site whose devices are `fw-pw` (password), `fw-cert` (certificate) and `fw-tls-pw`
/// (password, used inside TLS), with one more listener besides the site's: TLS with passwords
/// (`auth = "password"`, the site's server certificate, no client CA). Returns its port.
fn site() -> (Site, u16) {
    let devices = Devices::with_ca("");
    for id in ["fw-pw", "fw-tls-pw"] {
        devices.run(
            &["add", id, "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        );
    }
    devices.run(&["add", "fw-cert", "--cert"], None);
    let pki = devices.pki();
    let tls_password_port = free_port();
    let listener = format!(
        "[[broker.listeners]]\nname = \"tls-pw\"\nbind = \"127.0.0.1:{tls_password_port}\"\n\
         auth = \"password\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n",
        cert = pki.join("server.pem"),
        key = pki.join("server.key"),
    );
    (devices.start_site(&listener), tls_password_port)
}

/// After `Connected`: the boot report is in the shadow; a desired change reaches the device as a
/// delta, is applied and reported; the shadow converges.
fn boot_report_is_stored(g: &Gateway, thing: &str) {
    let doc = g.wait_shadow(thing, |d| d["state"]["reported"]["relay"] == false);
    assert_eq!(
        doc["state"]["reported"],
        json!({"relay": false, "interval_s": 10})
    );
}

fn change_is_reported(g: &Gateway, thing: &str) {
    let doc = g.wait_shadow(thing, |d| d["state"]["reported"]["relay"] == true);
    assert!(
        doc["state"].get("delta").is_none(),
        "in sync, no delta: {doc}"
    );
}

const RELAY_ON: Event = Event::Applied(State {
    relay: true,
    interval_s: 10,
});

#[test]
fn a_provisioned_device_logs_in_with_its_password_and_syncs_its_shadow() {
    let (site, _) = site();
    let record = site.provision("fw-pw", Some(PASSWORD), None);
    let mut shell = Shell::new(provisioned_config(&record, base), false, site.password_port);
    shell.run_until(|e| *e == Event::Connected);
    boot_report_is_stored(&site.gateway, "fw-pw");

    set_desired(&site.gateway, "fw-pw", json!({"relay": true}));
    let events = shell.run_until(|e| matches!(e, Event::Applied(_)));
    assert_eq!(events.last(), Some(&RELAY_ON));
    assert!(shell.device.actuator().0, "the relay is on");
    change_is_reported(&site.gateway, "fw-pw");
}

#[test]
fn a_wrong_or_unknown_login_is_refused_with_the_connack_code() {
    let (site, _) = site();
    // A device of another site, `nobody`, is unknown here.
    let elsewhere = Devices::new("");
    elsewhere.run(&["add", "nobody", "--password-stdin"], Some("x\n"));
    let records = [
        (
            "wrong password",
            site.provision("fw-pw", Some("wrong"), None),
        ),
        (
            "unknown device",
            elsewhere.provision("nobody", Some(PASSWORD), None),
        ),
    ];
    for (case, record) in records {
        let mut shell = Shell::new(provisioned_config(&record, base), false, site.password_port);
        let events = shell.run_until(|e| matches!(e, Event::Disconnected(_)));
        assert_eq!(
            events.last(),
            Some(&Event::Disconnected(
                grove_firmware::device::DisconnectReason::Refused(
                    ConnectReturnCode::BadUserNameOrPassword
                )
            )),
            "{case}: {events:?}"
        );
        assert!(!events.contains(&Event::Connected), "{events:?}");
    }
    // Without credentials the password listener refuses too.
    let mut shell = Shell::new(base("fw-pw"), false, site.password_port);
    let events = shell.run_until(|e| matches!(e, Event::Disconnected(_)));
    assert!(
        matches!(
            events.last(),
            Some(Event::Disconnected(
                grove_firmware::device::DisconnectReason::Refused(
                    ConnectReturnCode::BadUserNameOrPassword | ConnectReturnCode::NotAuthorized
                )
            ))
        ),
        "{events:?}"
    );
}

/// A TLS device's session: connected, boot report stored, a delta applied and reported.
async fn tls_round_trip(device: &mut TlsDevice, g: &Gateway, thing: &str) {
    let seen = device.until(|s| *s == Seen::Event(Event::Connected)).await;
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Tls(_))),
        "no TLS failure: {seen:?}"
    );
    blocking(|| boot_report_is_stored(g, thing));
    set_desired(g, thing, json!({"relay": true}));
    device.until(|s| *s == Seen::Event(RELAY_ON)).await;
    blocking(|| change_is_reported(g, thing));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_over_mutual_tls_checks_the_gateway_and_syncs_its_shadow() {
    let (site, _) = site();
    let record = blocking(|| site.provision("fw-cert", None, Some(SERVER_NAME)));
    let mut device = TlsDevice::spawn(record, site.mtls_port, base);
    tls_round_trip(&mut device, &site.gateway, "fw-cert").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_over_tls_logs_in_with_its_password_and_syncs_its_shadow() {
    let (site, tls_password_port) = site();
    let record = blocking(|| site.provision("fw-tls-pw", Some(PASSWORD), Some(SERVER_NAME)));
    let mut device = TlsDevice::spawn(record, tls_password_port, base);
    tls_round_trip(&mut device, &site.gateway, "fw-tls-pw").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_certificate_from_another_ca_or_for_another_name_is_refused() {
    let (site, tls_password_port) = site();
    // Another site's CA, with the same device and password registered there.
    let stranger = Devices::with_ca("");
    stranger.run(
        &["add", "fw-tls-pw", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let cases = blocking(|| {
        [
            (
                "another site's CA",
                stranger.provision("fw-tls-pw", Some(PASSWORD), Some(SERVER_NAME)),
            ),
            (
                "another server name",
                site.provision("fw-tls-pw", Some(PASSWORD), Some("gw.example")),
            ),
        ]
    });
    for (case, record) in cases {
        let mut device = TlsDevice::spawn(record, tls_password_port, base);
        // Twice: the refusal is every attempt's, after the backoff too.
        for _ in 0..2 {
            let seen = device.until(|s| matches!(s, Seen::Tls(_))).await;
            assert_eq!(
                seen.last(),
                Some(&Seen::Tls(TlsFailure::Untrusted)),
                "{case}"
            );
            assert!(
                !seen.contains(&Seen::Event(Event::Connected)),
                "{case}: {seen:?}"
            );
        }
    }
    // Nothing reached the gateway's shadow.
    assert!(blocking(|| site.gateway.shadow("fw-tls-pw")).is_none());
}
