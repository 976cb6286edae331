//! Hostile peers: what a peer that never authenticates can make the gateway hold, against the real
//! `grove` binary. Each test runs one attack from issue 15 with its bound as the assertion:
//! memory (VmRSS from /proc) stays within 64 MiB of idle, devices and the operator still get in,
//! and every refusal is counted. Attackers use raw sockets from several loopback source addresses
//! (127.0.0.2, ...), so that per-address limits are exercised as on a real network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grove_tests::{free_port, options, workspace_bin, Client, Gateway};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The bound on memory an attack may add, from the issue.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Generous: a loaded 2-core machine running a debug build.
const WAIT: Duration = Duration::from_secs(30);

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Samples the gateway's RSS every 20 ms while `attack` runs; panics as soon as it passes
/// `idle + RSS_BOUND_KIB` (the attack is then dropped, so a regression cannot eat the machine).
/// Returns the attack's result and the peak seen.
async fn within_memory_bound<T>(
    pid: u32,
    idle: u64,
    attack: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let mut attack = std::pin::pin!(attack);
    let mut peak = idle;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            out = &mut attack => return (out, peak.max(rss_kib(pid))),
            _ = tick.tick() => {
                peak = peak.max(rss_kib(pid));
                assert!(
                    peak < idle + RSS_BOUND_KIB,
                    "gateway RSS {peak} KiB passed idle {idle} KiB + 64 MiB during the attack"
                );
            }
        }
    }
}

/// Polls a metric until it reaches `want`, within `WAIT`.
async fn metric_reaches(g: &Gateway, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = g.metric(series);
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {got}, wanted {want}\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The loopback source address `127.0.0.n`.
fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection to the gateway's `port` on 127.0.0.1 from `from` (any 127/8 address).
async fn connect_from(from: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s) with a username and password.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 30];
    for s in [client_id, username, password] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    assert!(body.len() < 128, "one-byte remaining length");
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Sends `packet` from `from` and returns the CONNACK's return code, or `None` if the gateway
/// closed the connection without one.
async fn raw_login(from: IpAddr, port: u16, packet: &[u8]) -> Option<u8> {
    let mut s = connect_from(from, port).await.ok()?;
    s.write_all(packet).await.ok()?;
    let mut ack = [0u8; 4];
    match tokio::time::timeout(WAIT, s.read_exact(&mut ack)).await {
        Ok(Ok(_)) if ack[0] == 0x20 => Some(ack[3]),
        _ => None,
    }
}

/// Runs `grove device ...` against the prepared directory's config.
fn device(dir: &Path, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
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
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "grove device {args:?}: {out:?}");
}

const PASSWORD: &str = "correct horse";

struct Site {
    gateway: Gateway,
    mtls_port: u16,
    password_port: u16,
    pki: PathBuf,
}

/// A gateway with the harness's anonymous loopback listener (the operator's), a mutual-TLS one
/// and a password one; devices `dev-a`, `dev-b` (certificates) and `pw-dev` (password).
fn site(broker: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("pre.toml"),
        format!("data_dir = {data:?}\n"),
    )
    .unwrap();
    device(dir.path(), &["init-ca", "--server-name", "127.0.0.1"], None);
    for id in ["dev-a", "dev-b"] {
        device(dir.path(), &["add", id, "--cert"], None);
    }
    device(
        dir.path(),
        &["add", "pw-dev", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let pki = data.join("pki");
    let (mtls_port, password_port) = (free_port(), free_port());
    let extra = format!(
        "[broker]\n{broker}\n[[broker.listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:{mtls_port}\"\nauth = \"certificate\"\n\
         tls = {{ cert = {cert:?}, key = {key:?}, client_ca = {ca:?} }}\n\
         [[broker.listeners]]\nname = \"pw\"\nbind = \"127.0.0.1:{password_port}\"\nauth = \"password\"\n",
        cert = pki.join("server.pem"),
        key = pki.join("server.key"),
        ca = pki.join("ca.pem"),
    );
    Site {
        gateway: Gateway::start_in(dir, &extra),
        mtls_port,
        password_port,
        pki,
    }
}

/// Options for a device with its certificate on the mutual-TLS listener.
fn tls_options(site: &Site, id: &str) -> MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(site.pki.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let devices = site.pki.join("devices");
    let chain = CertificateDer::pem_file_iter(devices.join(format!("{id}.pem")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(devices.join(format!("{id}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let mut o = MqttOptions::new(id, "127.0.0.1", site.mtls_port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    o
}

/// Connects; `Ok` on CONNACK success, else what went wrong.
async fn try_connect(o: MqttOptions) -> Result<AsyncClient, String> {
    let (client, mut events) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(WAIT, events.poll()).await {
            Err(_) => return Err("no answer".into()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                tokio::spawn(async move { while events.poll().await.is_ok() {} });
                return Ok(client);
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// A storm of wrong-password logins: `attackers` tasks, spread over source addresses 127.0.0.2
/// and up (`per_address` each), log in with a wrong password again and again until told to stop.
struct Storm {
    stop: Arc<AtomicBool>,
    /// Attempts made so far.
    attempts: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Storm {
    fn start(port: u16, attackers: u8, per_address: u8) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for a in 0..attackers {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            let from = source(2 + a / per_address);
            tasks.spawn(async move {
                let packet = connect_packet("pw-dev", "pw-dev", "wrong guess");
                while !stop.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    raw_login(from, port, &packet).await;
                }
            });
        }
        Storm {
            stop,
            attempts,
            tasks,
        }
    }

    /// Stops the attackers; returns how many attempts they made.
    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        self.attempts.load(Ordering::Relaxed)
    }
}

/// The refusals an attacker's connection can end in.
fn attacker_refusals(g: &Gateway) -> f64 {
    [
        "bad_credentials",
        "auth_busy",
        "pending_limit",
        "connect_timeout",
    ]
    .iter()
    .map(|r| g.metric(&format!("grove_broker_refused_total{{reason=\"{r}\"}}")))
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_storm_keeps_memory_bounded_and_a_device_still_gets_in() {
    let site = site("");
    let g = &site.gateway;
    let pid = g.pid();
    let idle = rss_kib(pid);
    let login = || {
        let mut o = options("pw-dev", site.password_port);
        o.set_credentials("pw-dev", PASSWORD);
        o
    };
    const STORM: u64 = 600;
    let run = async {
        try_connect(login()).await.expect("pw-dev's first login");
        // 64 attackers from 8 addresses: the password queue is full the whole time.
        let storm = Storm::start(site.password_port, 64, 8);
        metric_reaches(g, "grove_broker_refused_total{reason=\"auth_busy\"}", 1.0).await;
        // The device reconnects during the storm; its login is remembered, so it does not queue.
        for n in 0..3 {
            let c = try_connect(login())
                .await
                .unwrap_or_else(|e| panic!("pw-dev refused during the storm ({n}): {e}"));
            c.disconnect().await.unwrap();
        }
        let deadline = Instant::now() + WAIT;
        while storm.attempts.load(Ordering::Relaxed) < STORM {
            assert!(Instant::now() < deadline, "the storm is too slow");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        storm.stop().await
    };
    let (attempts, peak) = within_memory_bound(pid, idle, run).await;
    eprintln!(
        "{attempts} wrong-password logins; RSS idle {idle} KiB, peak {peak} KiB (+{} KiB)",
        peak - idle
    );
    assert!(
        g.metric("grove_broker_password_checks_total{outcome=\"remembered\"}") >= 3.0,
        "the reconnects skipped argon2"
    );
    // Every attempt ended in a counted refusal.
    let deadline = Instant::now() + WAIT;
    while attacker_refusals(g) < attempts as f64 {
        assert!(
            Instant::now() < deadline,
            "{} of {attempts} refusals counted",
            attacker_refusals(g)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_cannot_lock_out_devices_or_the_operator() {
    let site = site("max_connections = 2\n");
    let g = &site.gateway;
    // 60 clients looping wrong-password logins on the password listener, as in the issue.
    let storm = Storm::start(site.password_port, 60, 8);
    metric_reaches(
        g,
        "grove_broker_refused_total{reason=\"bad_credentials\"}",
        1.0,
    )
    .await;
    // An mTLS device connects and leaves again and again; every time it gets in.
    for n in 0..5 {
        let c = try_connect(tls_options(&site, "dev-a"))
            .await
            .unwrap_or_else(|e| panic!("dev-a refused on attempt {n}: {e}\n{}", g.log()));
        c.disconnect().await.unwrap();
        // Wait until its slot is free again before the next attempt.
        let deadline = Instant::now() + WAIT;
        while g.metric("grove_broker_connected_clients") > 0.0 {
            assert!(
                Instant::now() < deadline,
                "dev-a's slot was never given back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The operator on the loopback listener, and the device, take the two slots...
    let operator = Client::connect(&format!("operator-{}", std::process::id()), g.mqtt_port).await;
    let a = try_connect(tls_options(&site, "dev-a"))
        .await
        .expect("dev-a");
    // ... and `max_connections` still holds for authenticated devices.
    let refused = try_connect(tls_options(&site, "dev-b")).await;
    assert!(refused.is_err(), "a third authenticated client got in");
    metric_reaches(
        g,
        "grove_broker_refused_total{reason=\"max_connections\"}",
        1.0,
    )
    .await;
    storm.stop().await;
    a.disconnect().await.unwrap();
    operator.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_half_sent_connects_keep_memory_bounded_and_are_counted() {
    // Budgets wide open, so that only the CONNECT size limit stands between them and memory.
    let g = Gateway::start("[broker]\nmax_pending_connections = 1000\n");
    let pid = g.pid();
    let idle = rss_kib(pid);
    const PEERS: usize = 300;
    // Each announces a 1 MiB CONNECT and sends as much of it as the gateway takes, then holds
    // the connection open.
    let attack = async {
        let mut held = Vec::new();
        for _ in 0..PEERS {
            let mut s = connect_from(source(1), g.mqtt_port).await.expect("connect");
            let mut head = vec![0x10, 0x80, 0x80, 0x40, 0x00, 0x04];
            head.extend_from_slice(b"MQTT\x04\x02\x00\x1e");
            let _ = s.write_all(&head).await;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..15 {
                if tokio::time::timeout(Duration::from_secs(1), s.write_all(&chunk))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
            }
            held.push(s);
        }
        held
    };
    let (held, peak) = within_memory_bound(pid, idle, attack).await;
    metric_reaches(
        &g,
        "grove_broker_refused_total{reason=\"connect_too_large\"}",
        PEERS as f64,
    )
    .await;
    eprintln!(
        "{} half-sent 1 MiB CONNECTs; RSS idle {idle} KiB, peak {peak} KiB (+{} KiB)",
        held.len(),
        peak - idle
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_pre_auth_share_is_refused_and_counted() {
    let g = Gateway::start("[broker]\nconnect_timeout_ms = 3000\nmax_pending_per_address = 8\n");
    // 20 silent connections from one address: 8 (its share) are held until the connect timeout,
    // the other 12 are closed at once.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from(source(1), g.mqtt_port).await.expect("connect"));
    }
    metric_reaches(
        &g,
        "grove_broker_refused_total{reason=\"pending_limit\"}",
        12.0,
    )
    .await;
    assert_eq!(g.metric("grove_broker_pending_connections"), 8.0);
    assert_eq!(
        g.metric("grove_broker_refused_total{reason=\"pending_limit\"}"),
        12.0
    );
    // Another address has a share of its own.
    let packet = connect_packet("neighbour", "neighbour", "-");
    assert_eq!(raw_login(source(2), g.mqtt_port, &packet).await, Some(0));
    // The held ones time out and give their places back.
    metric_reaches(
        &g,
        "grove_broker_refused_total{reason=\"connect_timeout\"}",
        8.0,
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while g.metric("grove_broker_pending_connections") > 0.0 {
        assert!(Instant::now() < deadline, "places not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = connect_packet("again", "again", "-");
    assert_eq!(raw_login(source(1), g.mqtt_port, &again).await, Some(0));
    drop(silent);
}
