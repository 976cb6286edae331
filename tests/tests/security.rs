//! End-to-end tests of device security: TLS with client certificates from a local CA made by
//! `grove device`, passwords, and per-topic policies, against the real `grove` binary with real
//! clients. Every hostile attempt is counted; the test prints how many were tried and how many
//! succeeded (must be 0).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grove_tests::{free_port, grove, options, Client, Devices, Gateway, Site};
use rumqttc::{MqttOptions, QoS};

const WAIT: Duration = Duration::from_secs(10);

static TRIED: AtomicUsize = AtomicUsize::new(0);
static SUCCEEDED: AtomicUsize = AtomicUsize::new(0);

/// Records a hostile attempt and whether it got through, and writes the running totals where the
/// test command prints them (each test that tries some calls this, so the last one to finish
/// leaves the totals of all). A case that got through fails its test.
fn hostile(what: &str, got_through: bool) {
    TRIED.fetch_add(1, Ordering::SeqCst);
    if got_through {
        SUCCEEDED.fetch_add(1, Ordering::SeqCst);
    }
    let summary = format!(
        "hostile cases tried: {}, succeeded: {}",
        TRIED.load(Ordering::SeqCst),
        SUCCEEDED.load(Ordering::SeqCst)
    );
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-cases.txt"),
        &summary,
    )
    .unwrap();
    assert!(!got_through, "HOSTILE CASE SUCCEEDED: {what} ({summary})");
}

/// The hostile cases one test tried (each also goes into the binary's totals).
#[derive(Default)]
struct Cases(AtomicUsize);

impl Cases {
    /// [`hostile`], counted for this test.
    fn hostile(&self, what: &str, got_through: bool) {
        self.0.fetch_add(1, Ordering::SeqCst);
        hostile(what, got_through);
    }

    fn tried(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A policy that lets its device subscribe to everything but receive only its own space: what
/// reaches it must be filtered message by message.
const WIDE_POLICY: &str = "[[policies]]\nname = \"wide\"\nsubscribe = [\"#\"]\n\
    publish = [\"devices/${client_id}/#\"]\nreceive = [\"devices/${client_id}/#\"]\n";

/// A site (see [`Devices::start_site`]) whose certificate and password listeners have the
/// built-in device policy, and the `wide` policy; devices `dev-a`, `dev-b`, `dev-gone`
/// (certificates), `dev-wide` (certificate, policy `wide`) and `pw-dev` (password, thing `pump-7`).
fn site() -> Site {
    let devices = Devices::with_ca(WIDE_POLICY);
    for id in ["dev-a", "dev-b", "dev-gone"] {
        devices.run(&["add", id, "--cert"], None);
    }
    devices.run(&["add", "dev-wide", "--cert", "--policy", "wide"], None);
    devices.run(
        &["add", "pw-dev", "--password-stdin", "--thing", "pump-7"],
        Some("correct horse\n"),
    );
    let listing = devices.run(&["list"], None);
    assert!(
        listing.contains("pw-dev") && listing.contains("pump-7"),
        "{listing}"
    );
    devices.start_site(WIDE_POLICY)
}

/// Tries to connect; returns the error text, or `None` if the broker accepted (the connection is
/// then dropped without DISCONNECT).
async fn try_connect(o: MqttOptions) -> Option<String> {
    match Client::try_connect_with(o).await {
        Ok(c) => {
            c.vanish().await;
            None
        }
        Err(e) => Some(e),
    }
}

/// A certificate for `cn` signed by the site's CA (or by a stranger CA), valid or expired.
fn forged_cert(
    site: &Site,
    dir: &Path,
    cn: &str,
    own_ca: bool,
    expired: bool,
) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let (ca, ca_key) = if own_ca {
        let key =
            KeyPair::from_pem(&std::fs::read_to_string(site.pki.join("ca.key")).unwrap()).unwrap();
        let params = CertificateParams::from_ca_cert_pem(
            &std::fs::read_to_string(site.pki.join("ca.pem")).unwrap(),
        )
        .unwrap();
        (params.self_signed(&key).unwrap(), key)
    } else {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "stranger CA");
        (params.self_signed(&key).unwrap(), key)
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let name = format!("{cn}-{own_ca}-{expired}");
    let (cp, kp) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cp, cert.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_and_policies_hold_against_hostile_devices() {
    let cases = Cases::default();
    let site = site();
    let g = &site.gateway;
    let scratch = tempfile::tempdir().unwrap();

    // An observer on the trusted loopback listener sees everything that really gets published.
    let mut observer = Client::connect("observer", g.mqtt_port).await;
    observer.subscribe("devices/#", QoS::AtLeastOnce).await;
    observer.subscribe("$aws/things/#", QoS::AtLeastOnce).await;

    // Legitimate devices connect: certificate (mutual TLS) and password.
    let mut a = Client::connect_with(site.device_options("dev-a")).await;
    let mut b = Client::connect_with(site.device_options("dev-b")).await;
    let pw = Client::connect_with(site.password_options("pw-dev", "correct horse")).await;

    // Policy variables resolve per client: each may use its own space.
    a.subscribe("devices/dev-a/#", QoS::AtLeastOnce).await;
    b.subscribe("devices/dev-b/#", QoS::AtLeastOnce).await;
    a.publish("devices/dev-a/telemetry", QoS::AtLeastOnce, false, "a1")
        .await;
    b.publish("devices/dev-b/telemetry", QoS::AtLeastOnce, false, "b1")
        .await;
    pw.publish(
        "$aws/things/pump-7/shadow/update",
        QoS::AtLeastOnce,
        false,
        "{\"state\":{}}",
    )
    .await;
    // (The shadow service answers pw-dev too: update/accepted and update/documents.)
    let mut seen: Vec<String> = observer
        .recv_n(5, WAIT)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "$aws/things/pump-7/shadow/update",
            "$aws/things/pump-7/shadow/update/accepted",
            "$aws/things/pump-7/shadow/update/documents",
            "devices/dev-a/telemetry",
            "devices/dev-b/telemetry"
        ]
    );
    assert_eq!(&a.recv(WAIT).await.unwrap().payload[..], b"a1");
    assert_eq!(&b.recv(WAIT).await.unwrap().payload[..], b"b1");

    // Device A may not subscribe to B's topics, nor to everything.
    for filter in [
        "devices/dev-b/#",
        "#",
        "$aws/things/dev-b/shadow/#",
        "$aws/things/+/shadow/#",
        "devices/+/telemetry",
    ] {
        let codes = a.subscribe(filter, QoS::AtLeastOnce).await;
        cases.hostile(
            &format!("dev-a subscribes {filter}"),
            codes
                .iter()
                .any(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)),
        );
    }
    // Mixed in one SUBSCRIBE: the allowed filters are granted, the denied one refused, in order.
    let codes = a
        .subscribe_many(
            &["devices/dev-a/cmd", "devices/dev-b/#", "devices/dev-a/cfg"],
            QoS::AtLeastOnce,
        )
        .await;
    use rumqttc::SubscribeReasonCode::{Failure, Success};
    assert!(
        matches!(codes[..], [Success(_), Failure, Success(_)]),
        "{codes:?}"
    );
    cases.hostile(
        "dev-a subscribes devices/dev-b/# among allowed filters",
        codes[1] != Failure,
    );
    b.publish("devices/dev-b/secret", QoS::AtLeastOnce, false, "b-only")
        .await;
    let leaked = a.recv(Duration::from_millis(500)).await;
    cases.hostile("dev-a receives dev-b's messages", leaked.is_some());
    assert_eq!(
        &b.recv(WAIT).await.unwrap().payload[..],
        b"b-only",
        "b still gets its own"
    );
    observer.recv_n(1, WAIT).await;

    // Device A publishing into B's space is refused: MQTT 3.1.1 closes the connection.
    a.publish("devices/dev-b/cmd", QoS::AtLeastOnce, false, "evil")
        .await;
    cases.hostile(
        "dev-a publishes to dev-b",
        b.recv(Duration::from_millis(500)).await.is_some(),
    );
    assert!(
        a.closed(WAIT).await.is_some(),
        "a 3.1.1 client that publishes outside its policy is disconnected"
    );
    let a = Client::connect_with(site.device_options("dev-a")).await;
    a.publish(
        "$aws/things/dev-b/shadow/update",
        QoS::AtLeastOnce,
        false,
        "{\"state\":{}}",
    )
    .await;
    assert!(a.closed(WAIT).await.is_some());
    let mut shadow_leak = false;
    while let Some(p) = observer.recv(Duration::from_millis(500)).await {
        shadow_leak |= p.topic.contains("dev-b");
    }
    cases.hostile("dev-a updates dev-b's shadow", shadow_leak);

    // Identity attacks on the TLS listener.
    let expired = forged_cert(&site, scratch.path(), "dev-a", true, true);
    let stranger = forged_cert(&site, scratch.path(), "dev-a", false, false);
    let unregistered = forged_cert(&site, scratch.path(), "dev-a", true, false);
    let (a_cert, a_key) = site.device_cert("dev-a");
    let attempts: Vec<(&str, MqttOptions)> = vec![
        (
            "expired certificate",
            site.tls_options("dev-a", Some((&expired.0, &expired.1))),
        ),
        (
            "certificate from another CA",
            site.tls_options("dev-a", Some((&stranger.0, &stranger.1))),
        ),
        (
            "unregistered certificate from the right CA",
            site.tls_options("dev-a", Some((&unregistered.0, &unregistered.1))),
        ),
        (
            "client id that does not match the certificate",
            site.tls_options("dev-b", Some((&a_cert, &a_key))),
        ),
        ("no client certificate", site.tls_options("dev-a", None)),
    ];
    for (what, o) in attempts {
        let refused = try_connect(o).await;
        cases.hostile(what, refused.is_none());
    }
    // Passwords.
    for (user, pass, client) in [
        ("pw-dev", "wrong", "pw-dev"),
        ("pw-dev", "correct horse", "other-id"),
        ("nobody", "x", "nobody"),
    ] {
        let mut o = options(client, site.password_port);
        o.set_credentials(user, pass);
        let refused = try_connect(o).await;
        cases.hostile(
            &format!("password login {user}/{client}"),
            refused.is_none(),
        );
    }
    let refused = try_connect(options("pw-dev", site.password_port)).await;
    cases.hostile("no credentials on a password listener", refused.is_none());
    assert!(
        refused.unwrap().contains("BadUserNamePassword"),
        "CONNACK 4"
    );

    // A removed device is revoked at once, without a restart: its live connection is closed
    // and it cannot connect again.
    let gone = Client::connect_with(site.device_options("dev-gone")).await;
    site.device(&["remove", "dev-gone"], None);
    let closed = tokio::time::timeout(Duration::from_secs(5), gone.closed(WAIT)).await;
    cases.hostile(
        "a removed device keeps its live connection",
        closed.is_err(),
    );
    assert!(g.metric("grove_broker_refused_total{reason=\"revoked\"}") >= 1.0);
    let refused = try_connect(site.device_options("dev-gone")).await;
    cases.hostile("removed device reconnects", refused.is_none());

    assert!(g.metric("grove_broker_denied_total{action=\"subscribe\"}") >= 5.0);
    assert!(g.metric("grove_broker_denied_total{action=\"publish\"}") >= 2.0);
    assert!(g.metric("grove_broker_refused_total{reason=\"tls_handshake\"}") >= 3.0);
    assert!(g.metric("grove_broker_refused_total{reason=\"bad_credentials\"}") >= 4.0);
    assert!(
        g.metric("grove_broker_refused_total{reason=\"identity_mismatch\"}") >= 1.0,
        "the client id / certificate mismatch is refused for that reason"
    );
    assert!(g.metric("grove_broker_refused_total{reason=\"unknown_certificate\"}") >= 2.0);
    let log = g.log();
    assert!(
        log.lines().any(|l| l.contains("publish denied by policy")
            && l.contains("dev-a")
            && l.contains("devices/dev-b/cmd")),
        "denials are logged with client id and topic:\n{log}"
    );

    // This test's own cases (the totals above are the whole binary's): each got its refusal.
    assert!(cases.tried() >= 16, "{} cases tried", cases.tried());
}

/// A client that connects with a will on `topic` and returns whether the broker accepted it;
/// when it did, the connection is then dropped without DISCONNECT, so the will is due.
async fn connect_with_will_and_drop(mut o: MqttOptions, topic: &str) -> Option<String> {
    o.set_last_will(rumqttc::LastWill::new(
        topic,
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    try_connect(o).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_and_wildcard_subscriptions_stay_inside_the_policy() {
    let site = site();
    let g = &site.gateway;
    let mut observer = Client::connect("observer", g.mqtt_port).await;
    observer.subscribe("devices/#", QoS::AtLeastOnce).await;
    observer.subscribe("$aws/things/#", QoS::AtLeastOnce).await;
    let a = || site.device_options("dev-a");

    // A will in another device's space is refused at CONNECT (AWS IoT asks for publish rights on
    // the will topic when connecting), so it can never be published on the device's behalf.
    for topic in ["devices/dev-b/cmd", "$aws/things/dev-b/shadow/update", "#"] {
        let refused = connect_with_will_and_drop(a(), topic).await;
        hostile(
            &format!("dev-a leaves a will on {topic}"),
            refused.is_none(),
        );
        if topic != "#" {
            assert!(refused.unwrap().contains("NotAuthorized"), "CONNACK 5");
        }
    }
    // A will on its own topic is accepted and published when the connection drops.
    assert_eq!(
        connect_with_will_and_drop(a(), "devices/dev-a/status").await,
        None
    );
    let mut seen = Vec::new();
    while !seen.iter().any(|(t, _)| t == "devices/dev-a/status") {
        let p = observer.recv(WAIT).await.expect("the will");
        seen.push((p.topic, p.payload));
    }
    while let Some(p) = observer.recv(Duration::from_millis(500)).await {
        seen.push((p.topic, p.payload));
    }
    hostile(
        "a refused will is published anyway",
        seen.iter().any(|(t, _)| t != "devices/dev-a/status"),
    );
    assert_eq!(
        seen,
        [(
            "devices/dev-a/status".to_owned(),
            bytes::Bytes::from("gone")
        )]
    );

    // A device may subscribe to `#`, yet receives only what its policy lets it receive, while
    // more messages than rumqttd's in-flight window (100) pass by that it must not see.
    let mut wide = Client::connect_with(site.device_options("dev-wide")).await;
    let codes = wide.subscribe("#", QoS::AtLeastOnce).await;
    assert!(
        matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
        "{codes:?}"
    );
    let b = Client::connect_with(site.device_options("dev-b")).await;
    // Its own messages are interleaved with B's, so that dropped deliveries sit between ones the
    // device must acknowledge itself (the router takes acknowledgements only in order).
    for i in 0..150 {
        b.publish(
            "devices/dev-b/telemetry",
            QoS::AtLeastOnce,
            false,
            format!("b{i}"),
        )
        .await;
        if i % 10 == 0 {
            wide.publish(
                "devices/dev-wide/telemetry",
                QoS::AtLeastOnce,
                false,
                format!("mine{i}"),
            )
            .await;
        }
    }
    // The observer sees all 165, so all were routed before we look at what `#` got.
    observer.recv_n(165, WAIT).await;
    let mut mine = Vec::new();
    let mut leaked = 0;
    while let Some(p) = wide.recv(Duration::from_millis(500)).await {
        if p.topic == "devices/dev-wide/telemetry" {
            mine.push(String::from_utf8_lossy(&p.payload).into_owned());
        } else {
            leaked += 1;
        }
    }
    hostile(
        "a `#` subscriber receives another device's messages",
        leaked > 0,
    );
    let want: Vec<String> = (0..150).step_by(10).map(|i| format!("mine{i}")).collect();
    assert_eq!(mine, want, "its own messages, all and in order");
    assert!(g.metric("grove_broker_denied_total{action=\"receive\"}") >= 150.0);
    // The dropped QoS 1 deliveries were acknowledged to the router: the link still flows.
    wide.publish(
        "devices/dev-wide/telemetry",
        QoS::AtLeastOnce,
        false,
        "again",
    )
    .await;
    assert_eq!(
        &wide.recv(WAIT).await.expect("still delivered").payload[..],
        b"again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_listener_without_auth_settings_refuses_anonymous_clients() {
    // `auth` unset on a non-loopback bind means passwords (and the device policy); we reach the
    // wildcard bind through loopback.
    let port = free_port();
    let g = Gateway::start(&format!(
        "[[broker.listeners]]\nname = \"lan\"\nbind = \"0.0.0.0:{port}\"\n"
    ));
    let refused = try_connect(options("anyone", port)).await;
    hostile("anonymous client on a network listener", refused.is_none());
    assert!(
        refused.unwrap().contains("BadUserNamePassword"),
        "CONNACK 4"
    );
    assert!(
        g.log().contains("passwords from the network without TLS"),
        "a password listener without TLS on the network is warned about"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publishes_outside_the_policy_get_puback_0x87_and_the_connection_stays() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as E5, MqttOptions as O5};
    let site = site();
    let mut o = O5::new("pw-dev", "127.0.0.1", site.password_port);
    o.set_credentials("pw-dev", "correct horse");
    let (client, mut events) = Client5::new(o, 10);
    use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeReasonCode as S5};
    client
        .subscribe_many([
            Filter::new("devices/pw-dev/#", Q5::AtLeastOnce),
            Filter::new("devices/someone-else/#", Q5::AtLeastOnce),
        ])
        .await
        .unwrap();
    // A denied QoS 0 publish is dropped silently; the connection stays.
    client
        .publish("devices/someone-else/x", Q5::AtMostOnce, false, "no")
        .await
        .unwrap();
    client
        .publish("devices/someone-else/x", Q5::AtLeastOnce, false, "no")
        .await
        .unwrap();
    // QoS 2: PUBREC 0x87 ends the flow.
    client
        .publish("devices/someone-else/x", Q5::ExactlyOnce, false, "no")
        .await
        .unwrap();
    client
        .publish("devices/pw-dev/x", Q5::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let (mut reasons, mut granted, mut received, mut rec) = (Vec::new(), None, Vec::new(), None);
    while reasons.len() < 2 || received.is_empty() || rec.is_none() {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("answers")
            .expect("connection stays up")
        {
            E5::Incoming(P5::PubAck(ack)) => reasons.push(ack.reason),
            E5::Incoming(P5::SubAck(ack)) => granted = Some(ack.return_codes),
            E5::Incoming(P5::PubRec(r)) => rec = Some(r.reason),
            E5::Incoming(P5::Publish(p)) => received.push(p.topic),
            _ => continue,
        }
    }
    assert_eq!(
        reasons,
        [PubAckReason::NotAuthorized, PubAckReason::Success]
    );
    assert_eq!(
        granted.expect("SUBACK"),
        [S5::Success(Q5::AtLeastOnce), S5::NotAuthorized]
    );
    assert_eq!(received, [bytes::Bytes::from("devices/pw-dev/x")]);
    assert_eq!(
        rec,
        Some(rumqttc::v5::mqttbytes::v5::PubRecReason::NotAuthorized)
    );
}

#[test]
fn policy_and_tls_mistakes_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |text: String| {
        std::fs::write(d.join("g.toml"), text).unwrap();
        grove(&["run", "--config", "g.toml"], d)
    };
    let head = format!("data_dir = {:?}\n[ops]\nenabled = false\n", d.join("data"));
    std::fs::write(d.join("garbage.pem"), "not a pem").unwrap();
    let cases = [
        (
            format!("{head}[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\ntls = {{ cert = \"missing.pem\", key = \"missing.key\" }}\n", free_port()),
            "`broker.listeners[0].tls`: certificate",
        ),
        (
            format!("{head}[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\ntls = {{ cert = \"garbage.pem\", key = \"garbage.pem\" }}\n", free_port()),
            "no PEM certificate",
        ),
        (
            format!("{head}[[policies]]\nname = \"bad\"\nsubscribe = [\"a/${{nope}}\"]\n"),
            "`policies[0]`: policy `bad`: unknown variable",
        ),
    ];
    for (text, want) in cases {
        let (code, out) = write(text);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(want), "want {want:?} in {out}");
    }
    // A key that does not belong to the certificate.
    let pre = d.join("pre.toml");
    std::fs::write(&pre, format!("data_dir = {:?}\n", d.join("data"))).unwrap();
    let (code, out) = grove(&["device", "--config", "pre.toml", "init-ca"], d);
    assert_eq!(code, 0, "{out}");
    let pki = d.join("data/pki");
    let (code, out) = write(format!(
        "{head}[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\ntls = {{ cert = {:?}, key = {:?} }}\n",
        free_port(),
        pki.join("server.pem"),
        pki.join("ca.key")
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("does not fit the certificate"), "{out}");
}
