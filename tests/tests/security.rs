//! End-to-end tests of device security: TLS with client certificates from a local CA made by
//! `grove device`, passwords, and per-topic policies, against the real `grove` binary with real
//! clients. Every hostile attempt is counted; the test prints how many were tried and how many
//! succeeded (must be 0).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grove_tests::{free_port, grove, options, workspace_bin, Client, Gateway};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const WAIT: Duration = Duration::from_secs(10);

static TRIED: AtomicUsize = AtomicUsize::new(0);
static SUCCEEDED: AtomicUsize = AtomicUsize::new(0);

/// Records a hostile attempt and whether it got through.
fn hostile(what: &str, got_through: bool) {
    TRIED.fetch_add(1, Ordering::SeqCst);
    if got_through {
        SUCCEEDED.fetch_add(1, Ordering::SeqCst);
        eprintln!("HOSTILE CASE SUCCEEDED: {what}");
    }
}

/// Runs `grove device ...` against the prepared directory's config.
fn device(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(workspace_bin("grove"))
        .arg("device")
        .arg("--config")
        .arg(dir.join("pre.toml"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grove device {args:?}: {text}");
    text
}

struct Site {
    gateway: Gateway,
    mtls_port: u16,
    password_port: u16,
    pki: PathBuf,
}

/// A gateway with three listeners: the harness's anonymous loopback one (allow-all, for the
/// observer), a mutual-TLS one and a password one (both with the built-in device policy).
fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("pre.toml"),
        format!("data_dir = {data:?}\n"),
    )
    .unwrap();
    let out = device(dir.path(), &["init-ca", "--server-name", "127.0.0.1"], None);
    assert!(out.contains("created the local CA"), "{out}");
    for id in ["dev-a", "dev-b", "dev-gone"] {
        device(dir.path(), &["add", id, "--cert"], None);
    }
    device(
        dir.path(),
        &["add", "pw-dev", "--password-stdin", "--thing", "pump-7"],
        Some("correct horse\n"),
    );
    let listing = device(dir.path(), &["list"], None);
    assert!(
        listing.contains("pw-dev") && listing.contains("pump-7"),
        "{listing}"
    );
    let pki = data.join("pki");
    let (mtls_port, password_port) = (free_port(), free_port());
    let extra = format!(
        "[[broker.listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:{mtls_port}\"\nauth = \"certificate\"\n\
         tls = {{ cert = {cert:?}, key = {key:?}, client_ca = {ca:?} }}\n\
         [[broker.listeners]]\nname = \"pw\"\nbind = \"127.0.0.1:{password_port}\"\nauth = \"password\"\n",
        cert = pki.join("server.pem"),
        key = pki.join("server.key"),
        ca = pki.join("ca.pem"),
    );
    let gateway = Gateway::start_in(dir, &extra);
    Site {
        gateway,
        mtls_port,
        password_port,
        pki,
    }
}

fn tls_options(site: &Site, client_id: &str, cert: Option<(&Path, &Path)>) -> MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(site.pki.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let mut o = MqttOptions::new(client_id, "127.0.0.1", site.mtls_port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    o
}

fn device_cert(site: &Site, id: &str) -> (PathBuf, PathBuf) {
    let d = site.pki.join("devices");
    (d.join(format!("{id}.pem")), d.join(format!("{id}.key")))
}

/// Tries to connect; returns the error text, or `None` if the broker accepted.
async fn try_connect(o: MqttOptions) -> Option<String> {
    let (_client, mut events) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("an answer")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return None,
            Ok(_) => continue,
            Err(e) => return Some(e.to_string()),
        }
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
    let site = site();
    let g = &site.gateway;
    let scratch = tempfile::tempdir().unwrap();

    // An observer on the trusted loopback listener sees everything that really gets published.
    let mut observer = Client::connect("observer", g.mqtt_port).await;
    observer.subscribe("devices/#", QoS::AtLeastOnce).await;
    observer.subscribe("$aws/things/#", QoS::AtLeastOnce).await;

    // Legitimate devices connect: certificate (mutual TLS) and password.
    let (ca_cert, ca_key) = device_cert(&site, "dev-a");
    let mut a = Client::connect_with(tls_options(&site, "dev-a", Some((&ca_cert, &ca_key)))).await;
    let (cb_cert, cb_key) = device_cert(&site, "dev-b");
    let mut b = Client::connect_with(tls_options(&site, "dev-b", Some((&cb_cert, &cb_key)))).await;
    let mut pw = options("pw-dev", site.password_port);
    pw.set_credentials("pw-dev", "correct horse");
    let pw = Client::connect_with(pw).await;

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
        hostile(
            &format!("dev-a subscribes {filter}"),
            codes
                .iter()
                .any(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)),
        );
    }
    // Mixed: the allowed filter is granted, the denied one refused, in order.
    let codes = a.subscribe("devices/dev-a/cmd", QoS::AtLeastOnce).await;
    assert!(
        matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
        "{codes:?}"
    );
    b.publish("devices/dev-b/secret", QoS::AtLeastOnce, false, "b-only")
        .await;
    let leaked = a.recv(Duration::from_millis(500)).await;
    hostile("dev-a receives dev-b's messages", leaked.is_some());
    assert_eq!(
        &b.recv(WAIT).await.unwrap().payload[..],
        b"b-only",
        "b still gets its own"
    );
    observer.recv_n(1, WAIT).await;

    // Device A publishing into B's space is refused: MQTT 3.1.1 closes the connection.
    a.publish("devices/dev-b/cmd", QoS::AtLeastOnce, false, "evil")
        .await;
    hostile(
        "dev-a publishes to dev-b",
        b.recv(Duration::from_millis(500)).await.is_some(),
    );
    assert!(
        a.closed(WAIT).await.is_some(),
        "a 3.1.1 client that publishes outside its policy is disconnected"
    );
    let a = Client::connect_with(tls_options(&site, "dev-a", Some((&ca_cert, &ca_key)))).await;
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
    hostile("dev-a updates dev-b's shadow", shadow_leak);

    // Identity attacks on the TLS listener.
    let expired = forged_cert(&site, scratch.path(), "dev-a", true, true);
    let stranger = forged_cert(&site, scratch.path(), "dev-a", false, false);
    let unregistered = forged_cert(&site, scratch.path(), "dev-a", true, false);
    let attempts: Vec<(&str, MqttOptions)> = vec![
        (
            "expired certificate",
            tls_options(&site, "dev-a", Some((&expired.0, &expired.1))),
        ),
        (
            "certificate from another CA",
            tls_options(&site, "dev-a", Some((&stranger.0, &stranger.1))),
        ),
        (
            "unregistered certificate from the right CA",
            tls_options(&site, "dev-a", Some((&unregistered.0, &unregistered.1))),
        ),
        (
            "client id that does not match the certificate",
            tls_options(&site, "dev-b", Some((&ca_cert, &ca_key))),
        ),
        ("no client certificate", tls_options(&site, "dev-a", None)),
    ];
    for (what, o) in attempts {
        let refused = try_connect(o).await;
        hostile(what, refused.is_none());
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
        hostile(
            &format!("password login {user}/{client}"),
            refused.is_none(),
        );
    }
    let refused = try_connect(options("pw-dev", site.password_port)).await;
    hostile("no credentials on a password listener", refused.is_none());
    assert!(
        refused.unwrap().contains("BadUserNamePassword"),
        "CONNACK 4"
    );

    // A removed device is revoked immediately, without a restart.
    let (gone_cert, gone_key) = device_cert(&site, "dev-gone");
    assert!(try_connect(tls_options(
        &site,
        "dev-gone",
        Some((&gone_cert, &gone_key))
    ))
    .await
    .is_none());
    let pre = site.pki.parent().unwrap().parent().unwrap();
    device(pre, &["remove", "dev-gone"], None);
    let refused = try_connect(tls_options(
        &site,
        "dev-gone",
        Some((&gone_cert, &gone_key)),
    ))
    .await;
    hostile("removed device reconnects", refused.is_none());

    assert!(g.metric("grove_broker_denied_total{action=\"subscribe\"}") >= 5.0);
    assert!(g.metric("grove_broker_denied_total{action=\"publish\"}") >= 2.0);
    assert!(g.metric("grove_broker_refused_total{reason=\"tls_handshake\"}") >= 3.0);
    assert!(g.metric("grove_broker_refused_total{reason=\"bad_credentials\"}") >= 4.0);
    assert!(
        g.log().contains("publish denied by policy"),
        "denials are logged with client id and topic"
    );

    let (tried, succeeded) = (
        TRIED.load(Ordering::SeqCst),
        SUCCEEDED.load(Ordering::SeqCst),
    );
    let summary = format!("hostile cases tried: {tried}, succeeded: {succeeded}");
    println!("{summary}");
    // The test command prints this file, so the count is in its output even when tests pass.
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-cases.txt"),
        &summary,
    )
    .unwrap();
    assert!(tried >= 16);
    assert_eq!(succeeded, 0);
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
    client
        .publish("devices/someone-else/x", Q5::AtLeastOnce, false, "no")
        .await
        .unwrap();
    client
        .publish("devices/pw-dev/x", Q5::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("answers")
            .expect("connection stays up")
        {
            E5::Incoming(P5::PubAck(ack)) => reasons.push(ack.reason),
            _ => continue,
        }
    }
    assert_eq!(
        reasons,
        [PubAckReason::NotAuthorized, PubAckReason::Success]
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
