//! `grove-bench auth-storm`: a storm of wrong-password CONNECTs on a password listener, against
//! mosquitto with a password file in the same run (issue 15, hardening item 1).
//!
//! Each broker gets `devices` registered devices `dev-0`, `dev-1`, ... with one password (grove:
//! `grove device add --password-stdin` into the data dir it then runs on; mosquitto:
//! `mosquitto_passwd -b` into its `password_file`). After one second its idle memory is read and
//! `dev-0` logs in once (its first login, before any storm). Then:
//!
//! - `attackers` raw clients, spread over the loopback source addresses 127.0.0.2 and up
//!   (`sources` of them), send `attempts` CONNECTs in all, each with a registered device's id
//!   (round robin over all devices, `dev-0` included) and a wrong password, one after the other
//!   per attacker: TCP connect, CONNECT, wait for the CONNACK or the close, next;
//! - `dev-0` logs in again every `login_interval` (from 127.0.0.1): TCP connect -> CONNECT ->
//!   CONNACK is timed, then DISCONNECT;
//! - every 250 ms a device that has not logged in yet (`dev-1`, `dev-2`, ...) makes its first
//!   login, once (no retry): on grove that is the login that must queue for argon2 with the
//!   attackers, where `dev-0`'s reconnects are remembered;
//! - the broker's VmRSS and Threads are sampled from /proc/PID/status every 10 ms.
//!
//! When the attempts are spent the storm ends; `settle` later memory and threads are read again.
//! The CPU of the broker and of this process (all clients) over the storm come from
//! /proc/PID/stat. On grove the refusal and password-check counters are read from `/metrics`
//! before and after the storm.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use rumqttc::{ConnectReturnCode, Packet};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use crate::flow::{self, mib, ms};
use crate::peer::{self, PeerKind, PeerSpec, RunningPeer};
use crate::stats::{LatencyRecorder, LatencySummary};

/// The registered devices' password.
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// What the attackers send instead.
pub(crate) const WRONG_PASSWORD: &str = "wrong guess";

/// How long an attacker waits for a CONNACK (or the close) before it counts "no answer".
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);

/// How long a legitimate login may take before it counts as failed.
pub(crate) const LOGIN_LIMIT: Duration = Duration::from_secs(10);

/// Pause between newcomers' first logins during the storm.
const NEWCOMER_INTERVAL: Duration = Duration::from_millis(250);

/// How often the broker's /proc/PID/status is sampled during the storm.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The bound from the issue: memory within this much of idle during the storm.
const RSS_GOAL_KIB: u64 = 64 * 1024;

/// The bound from the issue: a correct login's p99 during the storm.
const LOGIN_P99_GOAL: Duration = Duration::from_secs(1);

/// A broker that grows this much over idle is stopped before it eats the shared machine.
pub(crate) const RSS_ABORT_KIB: u64 = 2 * 1024 * 1024;

/// The shape of the storm.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Wrong-password CONNECTs in all.
    pub attempts: u64,
    /// Concurrent attacking clients.
    pub attackers: u32,
    /// Loopback source addresses they spread over (127.0.0.2 and up).
    pub sources: u8,
    /// Registered devices.
    pub devices: u32,
    /// Pause between the legitimate device's reconnects.
    pub login_interval: Duration,
    /// Pause after the storm before the last memory reading.
    pub settle: Duration,
    /// `max_connections` on both brokers (grove: `[broker] max_connections`, authenticated
    /// sessions; mosquitto: the listener's `max_connections`); `None`: the harness's defaults
    /// (grove 10,000, mosquitto unlimited). Issue 15 item 5 is the storm with 50.
    pub max_connections: Option<u32>,
}

/// How CONNECT attempts ended, as the client saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Answers {
    /// CONNACK accepted.
    pub accepted: u64,
    /// CONNACK "bad user name or password" or "not authorized".
    pub wrong_password: u64,
    /// CONNACK "server unavailable" (grove: the password queue was full).
    pub unavailable: u64,
    /// Any other CONNACK code.
    pub other_code: u64,
    /// Closed, refused or timed out without a CONNACK.
    pub no_connack: u64,
}

impl Answers {
    /// Counts one attempt's outcome: its CONNACK code, or `None` without one.
    pub fn count(&mut self, code: Option<ConnectReturnCode>) {
        use ConnectReturnCode::*;
        match code {
            Some(Success) => self.accepted += 1,
            Some(BadUserNamePassword | NotAuthorized) => self.wrong_password += 1,
            Some(ServiceUnavailable) => self.unavailable += 1,
            Some(RefusedProtocolVersion | BadClientId) => self.other_code += 1,
            None => self.no_connack += 1,
        }
    }

    /// Adds another tally.
    pub fn add(&mut self, other: &Answers) {
        self.accepted += other.accepted;
        self.wrong_password += other.wrong_password;
        self.unavailable += other.unavailable;
        self.other_code += other.other_code;
        self.no_connack += other.no_connack;
    }

    /// Attempts counted.
    pub fn total(&self) -> u64 {
        self.accepted + self.wrong_password + self.unavailable + self.other_code + self.no_connack
    }
}

/// Grove's own counters over the storm (after minus before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GroveCounters {
    /// `grove_broker_refused_total{reason="bad_credentials"}`.
    pub bad_credentials: f64,
    /// `grove_broker_refused_total{reason="auth_busy"}`.
    pub auth_busy: f64,
    /// `grove_broker_refused_total{reason="pending_limit"}`.
    pub pending_limit: f64,
    /// `grove_broker_refused_total{reason="connect_timeout"}`.
    pub connect_timeout: f64,
    /// `grove_broker_refused_total{reason="max_connections"}`: authenticated, but no slot.
    pub max_connections: f64,
    /// `grove_broker_refused_total{reason="connect_too_large"}`.
    pub connect_too_large: f64,
    /// `grove_broker_password_checks_total{outcome="verified"}`: argon2 ran and said yes.
    pub checks_verified: f64,
    /// `grove_broker_password_checks_total{outcome="remembered"}`: no argon2.
    pub checks_remembered: f64,
    /// `grove_broker_password_checks_total{outcome="rejected"}`: argon2 ran and said no.
    pub checks_rejected: f64,
}

impl GroveCounters {
    /// Reads the counters from a `/metrics` body (absent series count 0).
    pub fn parse(body: &str) -> GroveCounters {
        let refused = |r: &str| {
            metric(
                body,
                &format!("grove_broker_refused_total{{reason=\"{r}\"}}"),
            )
        };
        let checks = |o: &str| {
            metric(
                body,
                &format!("grove_broker_password_checks_total{{outcome=\"{o}\"}}"),
            )
        };
        GroveCounters {
            bad_credentials: refused("bad_credentials"),
            auth_busy: refused("auth_busy"),
            pending_limit: refused("pending_limit"),
            connect_timeout: refused("connect_timeout"),
            max_connections: refused("max_connections"),
            connect_too_large: refused("connect_too_large"),
            checks_verified: checks("verified"),
            checks_remembered: checks("remembered"),
            checks_rejected: checks("rejected"),
        }
    }

    /// `self - before`, counter by counter.
    pub fn since(&self, before: &GroveCounters) -> GroveCounters {
        GroveCounters {
            bad_credentials: self.bad_credentials - before.bad_credentials,
            auth_busy: self.auth_busy - before.auth_busy,
            pending_limit: self.pending_limit - before.pending_limit,
            connect_timeout: self.connect_timeout - before.connect_timeout,
            max_connections: self.max_connections - before.max_connections,
            connect_too_large: self.connect_too_large - before.connect_too_large,
            checks_verified: self.checks_verified - before.checks_verified,
            checks_remembered: self.checks_remembered - before.checks_remembered,
            checks_rejected: self.checks_rejected - before.checks_rejected,
        }
    }
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text body, 0 if
/// absent or unreadable.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Logins of legitimate devices: how many, how they ended, how long the accepted ones took
/// (TCP connect to CONNACK).
#[derive(Debug, Clone, Serialize)]
pub struct Logins {
    /// How each attempt ended.
    pub answers: Answers,
    /// Latency of the accepted ones.
    pub latency: LatencySummary,
}

/// Everything measured on one broker.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// `grove` or `mosquitto`.
    pub peer: &'static str,
    /// VmRSS after start, before any login (KiB).
    pub idle_rss_kib: u64,
    /// Threads then.
    pub idle_threads: u64,
    /// Highest VmRSS sampled during the storm (KiB).
    pub peak_rss_kib: u64,
    /// Most threads sampled during the storm.
    pub peak_threads: u64,
    /// Samples taken.
    pub samples: u64,
    /// VmHWM right after the storm: the process's peak since start, samples or not (KiB).
    pub hwm_kib: u64,
    /// VmRSS `settle` after the storm (KiB).
    pub after_rss_kib: u64,
    /// Threads then.
    pub after_threads: u64,
    /// `dev-0`'s first login, before the storm (ms).
    pub first_login_ms: f64,
    /// First attempt to the last attempt's end (s).
    pub storm_seconds: f64,
    /// How the attackers' attempts ended.
    pub attackers: Answers,
    /// grove's counters over the storm; `None` for mosquitto.
    pub counters: Option<GroveCounters>,
    /// `dev-0`'s reconnects during the storm.
    pub reconnects: Logins,
    /// Other devices' first logins during the storm.
    pub newcomers: Logins,
    /// The broker's CPU time over the storm (s).
    pub broker_cpu_s: f64,
    /// This process's CPU time (all clients) over the storm (s).
    pub clients_cpu_s: f64,
}

impl StormResult {
    fn growth_kib(&self) -> u64 {
        self.peak_rss_kib.saturating_sub(self.idle_rss_kib)
    }

    /// Whether the goals hold: (memory within 64 MiB of idle, correct logins' p99 < 1 s
    /// with none failed: `dev-0`'s reconnects, of which there must be some, and the newcomers'
    /// first logins).
    pub fn goals(&self) -> (bool, bool) {
        let memory = self
            .growth_kib()
            .max(self.hwm_kib.saturating_sub(self.idle_rss_kib))
            <= RSS_GOAL_KIB;
        let within = |l: &Logins| {
            u128::from(l.latency.p99_us) < LOGIN_P99_GOAL.as_micros()
                && l.answers.accepted == l.answers.total()
        };
        let login = self.reconnects.latency.samples > 0
            && within(&self.reconnects)
            && within(&self.newcomers);
        (memory, login)
    }
}

/// The name of registered device `n`.
pub(crate) fn device_id(n: u64) -> String {
    format!("dev-{n}")
}

/// The loopback source address of attacker `a`.
pub(crate) fn source(a: u32, sources: u8) -> IpAddr {
    // 127.0.0.2 ..= 127.0.0.(1 + sources); `sources` is at most 250.
    let host = 2 + (a % u32::from(sources.max(1))) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

/// One MQTT 3.1.1 login from `from` to 127.0.0.1:`port`: TCP connect, CONNECT (clean session,
/// username = client id), CONNACK. Returns its code (`None`: closed, refused or timed out
/// first) and the time from the start of the TCP connect. An accepted login is closed with
/// DISCONNECT.
pub(crate) async fn login(
    from: IpAddr,
    port: u16,
    id: &str,
    password: &str,
    limit: Duration,
) -> (Option<ConnectReturnCode>, Duration) {
    let mut packet = BytesMut::new();
    let mut connect = rumqttc::Connect::new(id);
    connect.keep_alive = 30;
    connect.set_login(id, password);
    if connect.write(&mut packet).is_err() {
        return (None, Duration::ZERO);
    }
    let start = Instant::now();
    let exchange = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(from, 0)).ok()?;
        let mut stream = socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .ok()?;
        stream.set_nodelay(true).ok()?;
        stream.write_all(&packet).await.ok()?;
        let mut incoming = BytesMut::with_capacity(16);
        let code = loop {
            match Packet::read(&mut incoming, 1024) {
                Ok(Packet::ConnAck(ack)) => break ack.code,
                Err(rumqttc::Error::InsufficientBytes(_)) => {
                    if stream.read_buf(&mut incoming).await.ok()? == 0 {
                        return None;
                    }
                }
                _ => return None,
            }
        };
        let elapsed = start.elapsed();
        if code == ConnectReturnCode::Success {
            let mut out = BytesMut::new();
            if rumqttc::Disconnect.write(&mut out).is_ok() {
                let _ = stream.write_all(&out).await;
            }
        }
        Some((code, elapsed))
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Some((code, elapsed))) => (Some(code), elapsed),
        _ => (None, start.elapsed()),
    }
}

/// A broker set up for the storm: the running process, its password port, and (grove) its ops
/// port for `/metrics`.
pub(crate) struct Target {
    pub(crate) peer: RunningPeer,
    pub(crate) port: u16,
    pub(crate) ops_port: Option<u16>,
    /// Holds grove's data dir or mosquitto's password file; dropped after the peer.
    _dir: tempfile::TempDir,
}

/// Runs a short command to completion, with `stdin` on its standard input.
fn run_tool(mut command: Command, stdin: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// grove with a password listener beside the generated (anonymous, loopback) one that the
/// harness's start probe uses, its ops endpoint on, and `devices` registered devices.
pub(crate) fn start_grove(grove: &Path, devices: u32, extra: &[&str]) -> anyhow::Result<Target> {
    let dir = tempfile::Builder::new()
        .prefix("grove-bench-auth-")
        .tempdir()?;
    let data = dir.path().join("data");
    let data_toml = toml::Value::String(data.to_string_lossy().into_owned());
    // `grove device` reads only the data dir; ops off, so it contacts no gateway.
    let pre = dir.path().join("devices.toml");
    std::fs::write(
        &pre,
        format!("data_dir = {data_toml}\n[ops]\nenabled = false\n"),
    )?;
    for n in 0..devices {
        let mut command = Command::new(grove);
        command.arg("device").arg("--config").arg(&pre).args([
            "add",
            &device_id(n.into()),
            "--password-stdin",
        ]);
        run_tool(command, Some(&format!("{PASSWORD}\n")))?;
    }
    let (port, ops_port) = (peer::free_port()?, peer::free_port()?);
    let section = format!(
        "data_dir = {data_toml}\n[ops]\nenabled = true\nbind = \"127.0.0.1:{ops_port}\"\n\
         [broker]\nlisteners = [{{}}, {{ name = \"pw\", bind = \"127.0.0.1:{port}\", auth = \"password\" }}]\n"
    );
    let config: Vec<&str> = std::iter::once(section.as_str())
        .chain(extra.iter().copied())
        .collect();
    let peer = crate::gateway::start(grove, &config)?;
    Ok(Target {
        peer,
        port,
        ops_port: Some(ops_port),
        _dir: dir,
    })
}

/// mosquitto with a `password_file` of `devices` devices. Anonymous clients stay allowed (the
/// start probe is one); a client that gives a username is checked against the file, so a wrong
/// password is refused after its hash is computed (PBKDF2-SHA512). `extra` lines follow the
/// listener's, so listener settings (`max_connections`) apply to it.
pub(crate) fn start_mosquitto(
    mosquitto: &Path,
    passwd_tool: &Path,
    devices: u32,
    extra: &[String],
) -> anyhow::Result<Target> {
    let dir = tempfile::Builder::new()
        .prefix("grove-bench-auth-mosquitto-")
        .tempdir()?;
    let file = dir.path().join("passwd");
    std::fs::write(&file, "")?;
    for n in 0..devices {
        let mut command = Command::new(passwd_tool);
        command
            .arg("-b")
            .arg(&file)
            .arg(device_id(n.into()))
            .arg(PASSWORD);
        run_tool(command, None).context(
            "mosquitto_passwd (it comes with mosquitto; --mosquitto-passwd PATH otherwise)",
        )?;
    }
    let peer = PeerSpec {
        kind: PeerKind::Mosquitto,
        binary: mosquitto.to_owned(),
        // Started as root, mosquitto would switch to the `mosquitto` user, which cannot read the
        // file in this private temp dir (see the cloud benchmark).
        extra_config: [
            format!("password_file {}", file.display()),
            "user root".to_owned(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect(),
    }
    .start()
    .context("starting mosquitto")?;
    let port = peer.port();
    Ok(Target {
        peer,
        port,
        ops_port: None,
        _dir: dir,
    })
}

/// `GET /metrics` of grove's ops endpoint over plain HTTP/1.0.
pub(crate) async fn read_counters(ops_port: u16) -> anyhow::Result<GroveCounters> {
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, ops_port))
        .await
        .context("connecting to grove's ops endpoint")?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
        .await
        .context("reading /metrics timed out")??;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("not an HTTP response")?;
    Ok(GroveCounters::parse(body))
}

/// The CPU time this process has used so far.
pub(crate) fn own_cpu() -> anyhow::Result<Duration> {
    let me = procfs::process::Process::myself()?;
    Ok(peer::cpu_time(&me)?)
}

/// Runs the storm on each broker in turn (mosquitto first, unless `mosquitto` is `None`).
pub async fn run(
    grove: &Path,
    mosquitto: Option<(&Path, &Path)>,
    settings: &Settings,
    extra: &[&str],
) -> anyhow::Result<Vec<StormResult>> {
    let mut out = Vec::new();
    let (mosquitto_lines, grove_snippet) = match settings.max_connections {
        Some(n) => (
            vec![format!("max_connections {n}")],
            Some(format!("[broker]\nmax_connections = {n}\n")),
        ),
        None => (Vec::new(), None),
    };
    if let Some((binary, passwd_tool)) = mosquitto {
        let target = start_mosquitto(binary, passwd_tool, settings.devices, &mosquitto_lines)?;
        out.push(storm(&target, PeerKind::Mosquitto, settings).await?);
        target.peer.stop()?;
    }
    // The command line's --grove-conf comes last, so it can still override the limit.
    let extra: Vec<&str> = grove_snippet
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    let target = start_grove(grove, settings.devices, &extra)?;
    out.push(storm(&target, PeerKind::Grove, settings).await?);
    target.peer.stop()?;
    Ok(out)
}

/// Legitimate logins during the storm, every `interval` until `done`: `dev-0`'s reconnects
/// (`newcomers` = `None`), or first logins of devices 1, 2, ... while there are any of the
/// `newcomers` registered devices left.
async fn legitimate(
    port: u16,
    interval: Duration,
    done: Arc<AtomicBool>,
    newcomers: Option<u32>,
) -> (Answers, LatencyRecorder) {
    let (mut answers, mut latency) = (Answers::default(), LatencyRecorder::new());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 1u32;
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let id = match newcomers {
            None => device_id(0),
            Some(devices) if next < devices => {
                next += 1;
                device_id((next - 1).into())
            }
            Some(_) => break,
        };
        let (code, elapsed) = login(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            &id,
            PASSWORD,
            LOGIN_LIMIT,
        )
        .await;
        answers.count(code);
        if code == Some(ConnectReturnCode::Success) {
            latency.record(elapsed);
        }
    }
    (answers, latency)
}

/// One broker's storm.
async fn storm(target: &Target, kind: PeerKind, s: &Settings) -> anyhow::Result<StormResult> {
    let name = kind.name();
    let peer = &target.peer;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = peer.status()?;
    let idle_rss_kib = idle.vmrss.unwrap_or(0);
    let (first, first_elapsed) = login(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        target.port,
        &device_id(0),
        PASSWORD,
        LOGIN_LIMIT,
    )
    .await;
    anyhow::ensure!(
        first == Some(ConnectReturnCode::Success),
        "{name}: dev-0's first login (before the storm) was not accepted: {first:?}"
    );
    let before = match target.ops_port {
        Some(p) => Some(read_counters(p).await?),
        None => None,
    };
    let (broker_cpu0, clients_cpu0) = (peer.cpu_time()?, own_cpu()?);
    eprintln!(
        "auth-storm: {name}: {} wrong-password CONNECTs from {} attackers ...",
        s.attempts, s.attackers
    );

    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let claimed = Arc::new(AtomicU64::new(0));
    let mut attackers = JoinSet::new();
    for a in 0..s.attackers {
        let (claimed, attempts, devices, port) = (
            claimed.clone(),
            s.attempts,
            u64::from(s.devices),
            target.port,
        );
        let from = source(a, s.sources);
        attackers.spawn(async move {
            let mut answers = Answers::default();
            loop {
                let n = claimed.fetch_add(1, Ordering::Relaxed);
                if n >= attempts {
                    break;
                }
                let id = device_id(n % devices);
                let (code, _) = login(from, port, &id, WRONG_PASSWORD, ATTEMPT_LIMIT).await;
                answers.count(code);
            }
            answers
        });
    }
    let reconnects = tokio::spawn(legitimate(
        target.port,
        s.login_interval,
        done.clone(),
        None,
    ));
    let newcomers = tokio::spawn(legitimate(
        target.port,
        NEWCOMER_INTERVAL,
        done.clone(),
        Some(s.devices),
    ));

    let (mut peak_rss_kib, mut peak_threads, mut samples) = (idle_rss_kib, idle.threads, 0u64);
    let mut sample = || -> anyhow::Result<()> {
        let st = peer.status()?;
        let rss = st.vmrss.unwrap_or(0);
        peak_rss_kib = peak_rss_kib.max(rss);
        peak_threads = peak_threads.max(st.threads);
        samples += 1;
        anyhow::ensure!(
            rss < idle_rss_kib + RSS_ABORT_KIB,
            "{name}: RSS {rss} KiB is more than 2 GiB over idle ({idle_rss_kib} KiB): storm stopped"
        );
        Ok(())
    };
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut attackers_answers = Answers::default();
    let storm_seconds = loop {
        tokio::select! {
            joined = attackers.join_next() => match joined {
                Some(answers) => attackers_answers.add(&answers?),
                None => break start.elapsed().as_secs_f64(),
            },
            _ = tick.tick() => sample()?,
        }
    };
    done.store(true, Ordering::Relaxed);
    // The legitimate logins in flight finish (each within LOGIN_LIMIT); keep sampling meanwhile.
    let mut legit = std::pin::pin!(async { (reconnects.await, newcomers.await) });
    let (reconnects, newcomers) = loop {
        tokio::select! {
            (r, n) = &mut legit => break (r?, n?),
            _ = tick.tick() => sample()?,
        }
    };
    sample()?;
    let (broker_cpu1, clients_cpu1) = (peer.cpu_time()?, own_cpu()?);
    let hwm_kib = peer.memory()?.peak_kb;
    let counters = match (target.ops_port, before) {
        (Some(p), Some(before)) => Some(read_counters(p).await?.since(&before)),
        _ => None,
    };
    eprintln!(
        "auth-storm: {name}: storm over in {storm_seconds:.1} s; waiting {:?} before the last reading",
        s.settle
    );
    tokio::time::sleep(s.settle).await;
    let after = peer.status()?;
    Ok(StormResult {
        peer: name,
        idle_rss_kib,
        idle_threads: idle.threads,
        peak_rss_kib,
        peak_threads,
        samples,
        hwm_kib,
        after_rss_kib: after.vmrss.unwrap_or(0),
        after_threads: after.threads,
        first_login_ms: first_elapsed.as_secs_f64() * 1e3,
        storm_seconds,
        attackers: attackers_answers,
        counters,
        reconnects: Logins {
            answers: reconnects.0,
            latency: reconnects.1.summary(),
        },
        newcomers: Logins {
            answers: newcomers.0,
            latency: newcomers.1.summary(),
        },
        broker_cpu_s: (broker_cpu1.saturating_sub(broker_cpu0)).as_secs_f64(),
        clients_cpu_s: (clients_cpu1.saturating_sub(clients_cpu0)).as_secs_f64(),
    })
}

/// One table cell per broker: the value as text, and as a number for the ratio (0: no ratio, for
/// counts whose ratio says nothing).
pub(crate) type Cell<T> = fn(&T) -> (String, f64);

/// A Markdown table: one row per figure, a column per broker (`-` where it did not run), and
/// grove / mosquitto.
pub(crate) fn side_by_side<T>(rows: &[(&str, Cell<T>)], g: Option<&T>, m: Option<&T>) -> String {
    let mut out = "| | grove | mosquitto | grove / mosquitto |\n|---|---:|---:|---:|\n".to_owned();
    for (label, cell) in rows {
        let (gt, gv) = g.map_or(("-".to_owned(), 0.0), cell);
        let (mt, mv) = m.map_or(("-".to_owned(), 0.0), cell);
        let ratio = if g.is_some() && m.is_some() && gv > 0.0 {
            flow::ratio(gv, mv)
        } else {
            "-".to_owned()
        };
        out.push_str(&format!("| {label} | {gt} | {mt} | {ratio} |\n"));
    }
    out
}

/// The Markdown section: one row per figure, a column per broker, and grove / mosquitto.
pub fn markdown(results: &[StormResult], settings: &Settings) -> String {
    let find = |peer: &str| results.iter().find(|r| r.peer == peer);
    let (g, m) = (find("grove"), find("mosquitto"));
    let mut out = format!(
        "{} wrong-password CONNECTs (MQTT 3.1.1, registered device ids, round robin) from {} \
         concurrent clients on 127.0.0.2-{}; {} registered devices; dev-0 reconnects every {} ms \
         during the storm (TCP connect to CONNACK timed), another device makes its first login \
         every {} ms; memory and threads sampled every {} ms; \"after\" = {} s after the storm{}.\n\n",
        settings.attempts,
        settings.attackers,
        1 + settings.sources.max(1),
        settings.devices,
        settings.login_interval.as_millis(),
        NEWCOMER_INTERVAL.as_millis(),
        SAMPLE_EVERY.as_millis(),
        settings.settle.as_secs(),
        match settings.max_connections {
            Some(n) => format!(
                "; max_connections = {n} on both brokers (grove: authenticated sessions; \
                 mosquitto: the listener's connections)"
            ),
            None => String::new(),
        },
    );
    // Each row: its label, and per broker the value as text and as a number for the ratio (0:
    // no ratio, for counts whose ratio says nothing).
    let rows: Vec<(&str, Cell<StormResult>)> = vec![
        ("idle RSS", |r| {
            (mib(Some(r.idle_rss_kib)), r.idle_rss_kib as f64)
        }),
        ("peak RSS during the storm (sampled)", |r| {
            (mib(Some(r.peak_rss_kib)), r.peak_rss_kib as f64)
        }),
        ("peak - idle", |r| {
            let k = r.growth_kib();
            (mib(Some(k)), k as f64)
        }),
        ("VmHWM after the storm (peak since start)", |r| {
            (mib(Some(r.hwm_kib)), r.hwm_kib as f64)
        }),
        ("RSS after", |r| {
            (mib(Some(r.after_rss_kib)), r.after_rss_kib as f64)
        }),
        ("threads idle / peak / after", |r| {
            (
                format!(
                    "{} / {} / {}",
                    r.idle_threads, r.peak_threads, r.after_threads
                ),
                r.peak_threads as f64,
            )
        }),
        ("storm duration", |r| {
            (format!("{:.2} s", r.storm_seconds), r.storm_seconds)
        }),
        ("attempts/s", |r| {
            let per_s = if r.storm_seconds > 0.0 {
                r.attackers.total() as f64 / r.storm_seconds
            } else {
                0.0
            };
            (format!("{per_s:.0}"), per_s)
        }),
        ("attackers: wrong password (CONNACK 4/5)", |r| {
            (r.attackers.wrong_password.to_string(), 0.0)
        }),
        ("attackers: server unavailable (CONNACK 3)", |r| {
            (r.attackers.unavailable.to_string(), 0.0)
        }),
        ("attackers: no CONNACK / other code / accepted", |r| {
            (
                format!(
                    "{} / {} / {}",
                    r.attackers.no_connack, r.attackers.other_code, r.attackers.accepted
                ),
                0.0,
            )
        }),
        (
            "grove: refused bad_credentials / auth_busy / pending_limit / connect_timeout / \
             max_connections",
            |r| match &r.counters {
                Some(c) => (
                    format!(
                        "{} / {} / {} / {} / {}",
                        c.bad_credentials,
                        c.auth_busy,
                        c.pending_limit,
                        c.connect_timeout,
                        c.max_connections
                    ),
                    0.0,
                ),
                None => ("-".to_owned(), 0.0),
            },
        ),
        (
            "grove: password checks rejected / verified / remembered",
            |r| match &r.counters {
                Some(c) => (
                    format!(
                        "{} / {} / {}",
                        c.checks_rejected, c.checks_verified, c.checks_remembered
                    ),
                    0.0,
                ),
                None => ("-".to_owned(), 0.0),
            },
        ),
        ("dev-0 first login, before the storm", |r| {
            (format!("{:.2} ms", r.first_login_ms), r.first_login_ms)
        }),
        ("dev-0 reconnects during the storm: ok / failed", |r| {
            let a = &r.reconnects.answers;
            (format!("{} / {}", a.accepted, a.total() - a.accepted), 0.0)
        }),
        ("reconnect latency p50", |r| {
            let l = &r.reconnects.latency;
            if l.samples == 0 {
                ("-".to_owned(), 0.0)
            } else {
                (ms(l.p50_us), l.p50_us as f64)
            }
        }),
        ("reconnect latency p99", |r| {
            let l = &r.reconnects.latency;
            if l.samples == 0 {
                ("-".to_owned(), 0.0)
            } else {
                (ms(l.p99_us), l.p99_us as f64)
            }
        }),
        ("reconnect latency max", |r| {
            let l = &r.reconnects.latency;
            if l.samples == 0 {
                ("-".to_owned(), 0.0)
            } else {
                (ms(l.max_us), l.max_us as f64)
            }
        }),
        (
            "first logins during the storm: ok / server unavailable / other failure",
            |r| {
                let a = &r.newcomers.answers;
                (
                    format!(
                        "{} / {} / {}",
                        a.accepted,
                        a.unavailable,
                        a.total() - a.accepted - a.unavailable
                    ),
                    0.0,
                )
            },
        ),
        (
            "first logins during the storm: p50 / max of the accepted",
            |r| {
                let l = &r.newcomers.latency;
                if l.samples == 0 {
                    ("-".to_owned(), 0.0)
                } else {
                    (
                        format!("{} / {}", ms(l.p50_us), ms(l.max_us)),
                        l.max_us as f64,
                    )
                }
            },
        ),
        ("broker CPU during the storm", |r| {
            (format!("{:.2} s", r.broker_cpu_s), r.broker_cpu_s)
        }),
        ("broker CPU per attempt", |r| {
            let per = r.broker_cpu_s * 1e3 / r.attackers.total().max(1) as f64;
            (format!("{per:.2} ms"), per)
        }),
        ("bench clients' CPU during the storm", |r| {
            (format!("{:.2} s", r.clients_cpu_s), r.clients_cpu_s)
        }),
    ];
    out.push_str(&side_by_side(&rows, g, m));
    out.push('\n');
    for r in results {
        let (memory, login) = r.goals();
        let (l, n) = (&r.reconnects.latency, &r.newcomers.latency);
        out.push_str(&format!(
            "Goals, {}: within 64 MiB of idle: **{}** (peak {} over idle, VmHWM {} over); correct \
             login p99 < 1 s: **{}** (reconnects p99 {}, {} of {} failed; first logins p99 {}, {} \
             of {} failed).\n",
            r.peer,
            if memory { "met" } else { "not met" },
            mib(Some(r.growth_kib())),
            mib(Some(r.hwm_kib.saturating_sub(r.idle_rss_kib))),
            if login { "met" } else { "not met" },
            ms(l.p99_us),
            r.reconnects.answers.total() - r.reconnects.answers.accepted,
            r.reconnects.answers.total(),
            ms(n.p99_us),
            r.newcomers.answers.total() - r.newcomers.answers.accepted,
            r.newcomers.answers.total(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_by_connack_code() {
        use ConnectReturnCode::*;
        let mut a = Answers::default();
        for code in [
            Some(Success),
            Some(BadUserNamePassword),
            Some(NotAuthorized),
            Some(ServiceUnavailable),
            Some(BadClientId),
            None,
            None,
        ] {
            a.count(code);
        }
        let expected = Answers {
            accepted: 1,
            wrong_password: 2,
            unavailable: 1,
            other_code: 1,
            no_connack: 2,
        };
        assert_eq!(a, expected);
        assert_eq!(a.total(), 7);
        a.add(&expected);
        assert_eq!((a.wrong_password, a.total()), (4, 14));
    }

    const METRICS: &str = "# HELP grove_broker_refused_total Packets and connections refused\n\
        # TYPE grove_broker_refused_total counter\n\
        grove_broker_refused_total{reason=\"auth_busy\"} 812\n\
        grove_broker_refused_total{reason=\"bad_credentials\"} 188\n\
        grove_broker_refused_total{reason=\"bad_credentials_x\"} 5\n\
        grove_broker_password_checks_total{outcome=\"remembered\"} 17\n\
        grove_broker_password_checks_total{outcome=\"verified\"} 1\n\
        grove_broker_password_checks_total{outcome=\"rejected\"} 188\n";

    #[test]
    fn metrics_are_read_by_exact_series() {
        assert_eq!(
            metric(METRICS, "grove_broker_refused_total{reason=\"auth_busy\"}"),
            812.0
        );
        // A series whose name starts like another is not confused with it; absent is 0.
        assert_eq!(
            metric(
                METRICS,
                "grove_broker_refused_total{reason=\"bad_credentials\"}"
            ),
            188.0
        );
        assert_eq!(metric(METRICS, "grove_broker_refused_total"), 0.0);
        assert_eq!(metric("x{a=\"b\"} not-a-number\n", "x{a=\"b\"}"), 0.0);
    }

    #[test]
    fn counters_over_the_storm_are_differences() {
        let after = GroveCounters::parse(METRICS);
        assert_eq!(
            after,
            GroveCounters {
                bad_credentials: 188.0,
                auth_busy: 812.0,
                pending_limit: 0.0,
                connect_timeout: 0.0,
                max_connections: 0.0,
                connect_too_large: 0.0,
                checks_verified: 1.0,
                checks_remembered: 17.0,
                checks_rejected: 188.0,
            }
        );
        let before = GroveCounters {
            checks_verified: 1.0,
            ..GroveCounters::default()
        };
        let d = after.since(&before);
        assert_eq!((d.checks_verified, d.auth_busy), (0.0, 812.0));
    }

    #[test]
    fn attackers_spread_over_loopback_sources() {
        let hosts: Vec<IpAddr> = (0..5).map(|a| source(a, 3)).collect();
        let v4 = |h| IpAddr::V4(Ipv4Addr::new(127, 0, 0, h));
        assert_eq!(hosts, [v4(2), v4(3), v4(4), v4(2), v4(3)]);
        assert_eq!(source(7, 250), v4(9));
        assert_eq!(source(300, 250), v4(52));
    }

    fn result(idle: u64, peak: u64, hwm: u64, p99_us: u64, failed: u64) -> StormResult {
        let logins = |accepted, failed| Logins {
            answers: Answers {
                accepted,
                no_connack: failed,
                ..Answers::default()
            },
            latency: LatencySummary {
                samples: accepted,
                p50_us: p99_us / 2,
                p99_us,
                p999_us: p99_us,
                max_us: p99_us,
            },
        };
        StormResult {
            peer: "grove",
            idle_rss_kib: idle,
            idle_threads: 10,
            peak_rss_kib: peak,
            peak_threads: 12,
            samples: 100,
            hwm_kib: hwm,
            after_rss_kib: idle,
            after_threads: 10,
            first_login_ms: 12.0,
            storm_seconds: 2.0,
            attackers: Answers {
                wrong_password: 100,
                unavailable: 900,
                ..Answers::default()
            },
            counters: None,
            reconnects: logins(20, failed),
            newcomers: logins(5, 0),
            broker_cpu_s: 1.0,
            clients_cpu_s: 0.5,
        }
    }

    #[test]
    fn goals_need_both_the_memory_and_the_latency_bound() {
        let mib = 1024;
        assert_eq!(
            result(20 * mib, 84 * mib, 84 * mib, 999_000, 0).goals(),
            (true, true)
        );
        // The sampled peak or the kernel's high-water mark over the bound.
        assert!(!result(20 * mib, 85 * mib, 30 * mib, 1000, 0).goals().0);
        assert!(!result(20 * mib, 30 * mib, 85 * mib, 1000, 0).goals().0);
        // p99 at 1 s, or any failed login.
        assert!(!result(20 * mib, 21 * mib, 21 * mib, 1_000_000, 0).goals().1);
        assert!(!result(20 * mib, 21 * mib, 21 * mib, 1000, 1).goals().1);
        // A newcomer's first login refused ("server unavailable") fails it too.
        let mut refused_newcomer = result(20 * mib, 21 * mib, 21 * mib, 1000, 0);
        refused_newcomer.newcomers.answers.unavailable = 1;
        assert!(!refused_newcomer.goals().1);
    }

    #[test]
    fn the_table_puts_the_peers_side_by_side() {
        let grove = result(20 * 1024, 40 * 1024, 40 * 1024, 2_000, 0);
        let mosquitto = StormResult {
            peer: "mosquitto",
            ..result(5 * 1024, 10 * 1024, 10 * 1024, 1_000, 0)
        };
        let settings = Settings {
            attempts: 1000,
            attackers: 100,
            sources: 10,
            devices: 50,
            login_interval: Duration::from_millis(100),
            settle: Duration::from_secs(10),
            max_connections: None,
        };
        let text = markdown(&[mosquitto, grove], &settings);
        let row = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("| {label} |")))
                .unwrap_or_else(|| panic!("no row {label} in\n{text}"))
                .to_owned()
        };
        assert_eq!(row("idle RSS"), "| idle RSS | 20.0 MiB | 5.0 MiB | 4.00 |");
        assert_eq!(
            row("reconnect latency p99"),
            "| reconnect latency p99 | 2.00 ms | 1.00 ms | 2.00 |"
        );
        assert_eq!(
            row("dev-0 reconnects during the storm: ok / failed"),
            "| dev-0 reconnects during the storm: ok / failed | 20 / 0 | 20 / 0 | - |"
        );
        assert!(text.contains("127.0.0.2-11"), "{text}");
        assert!(
            text.contains("Goals, grove: within 64 MiB of idle: **met**"),
            "{text}"
        );
    }
}
