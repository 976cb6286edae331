//! `grove-tests`: the harness for Grove's end-to-end tests.
//!
//! The tests in `tests/tests/` start the real `grove` binary on free loopback ports with a
//! temporary data directory and drive it with real clients: rumqttc (MQTT 3.1.1 and 5), the
//! mosquitto command-line clients and Python paho-mqtt scripts ([`paho()`]). Nothing is mocked.
//! The binary is the one `cargo build` put next to the test executable (`target/<profile>/grove`),
//! or `$GROVE_BIN`; the test command builds it first.
//!
//! One harness for every test file: one way to start a gateway ([`Gateway`]) or a mosquitto
//! ([`Mosquitto`]), one MQTT client ([`Client`]), one way to speak raw MQTT ([`RawClient`]), one
//! way to register devices and reach them over TLS or passwords ([`Devices`], [`Site`]), one way to
//! read a shadow ([`Gateway::shadow`]) or the gateway's memory ([`Gateway::rss_kib`]), one cloud
//! shadow service written from AWS's documentation ([`AwsShadows`]), one TLS endpoint that checks
//! client certificates and ALPN as AWS IoT Core's port 443 does ([`TlsFront`]), one device that
//! runs AWS IoT Jobs written with paho-mqtt ([`JobsDevice`]), one client of the web console
//! ([`console`]: HTTP, and a real Chromium through WebDriver). Tests wait on facts, never on time:
//! [`eventually`] polls a fact (a metric, a log line, a shadow's version) until a generous deadline,
//! and every wait on the wire waits for the packet that proves it (CONNACK, SUBACK, PUBACK).
//! Blocking work (a process, an HTTP request) runs through [`blocking`], so an async test's own
//! tasks (its clients' event loops) keep running while it waits.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

mod artifacts;
pub mod aws_jobs;
pub mod aws_shadow;
pub mod console;
pub mod device;
pub mod functions;
pub mod jobs_cloud;
mod jobs_device;
mod mosquitto;
mod paho;
mod raw;
mod responder;
mod site;
mod tls_front;

pub use artifacts::{Artifacts, Fetch};
pub use aws_jobs::AwsJobs;
pub use aws_shadow::AwsShadows;
pub use jobs_device::JobsDevice;
pub use mosquitto::{mosquitto_client, mosquitto_pub, Mosquitto, MosquittoSub};
pub use paho::{paho, Mqtt};
pub use raw::{connect5, Malformed, Packet5, RawClient};
pub use site::{Devices, Provision, Site, SERVER_NAME};
pub use tls_front::TlsFront;

/// How long a test waits for a fact before it fails: generous, because the test command runs on a
/// loaded 2-core machine; a fact that holds arrives long before it.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs blocking work (a child process, an HTTP request, a poll with pauses) from a test that may
/// be async. On a multi-thread tokio runtime the worker thread is handed over first
/// (`block_in_place`), so the test's other tasks, such as its clients' event loops, keep running;
/// elsewhere it just runs.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Polls `probe` until it returns `Ok`, and returns that; fails with the last `Err` (which says
/// what was seen instead) if that does not happen within `timeout`. This is how a test waits on a
/// fact it cannot be told about (a metric, a log line, a file, a shadow's version): the pause
/// between polls is only the polling interval, never what the test relies on.
pub fn eventually<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    blocking(|| {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(v) => return v,
                Err(e) if Instant::now() >= deadline => panic!("not within {timeout:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// Path of a binary built by this workspace (`grove`, `grove-sim`, ...).
pub fn workspace_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`) or set ${var}",
        bin.display()
    );
    bin
}

/// A loopback port that is free now and that no other call in this process has returned.
///
/// Asking the kernel for port 0 is not enough: it hands the same port out again as soon as the
/// probe socket is closed (two listeners of one test got the same port that way), and ports in
/// the ephemeral range (32768-60999 on Linux) can be taken by any outgoing connection before the
/// gateway binds them. So ports come from below that range, from a process-wide counter that never
/// repeats; the start is spread by process id so test binaries running side by side rarely meet,
/// and a port someone else holds is skipped.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(397) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < SPAN,
            "no free loopback port left in {LOW}..{}",
            LOW + SPAN
        );
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `grove run` process with its own ports and data directory.
pub struct Gateway {
    /// The MQTT port.
    pub mqtt_port: u16,
    /// The ops HTTP port.
    pub ops_port: u16,
    /// Holds the config, the data directory and the log.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra TOML given at start, kept for restarts.
    extra: String,
    /// Environment variables the process gets, kept for restarts.
    env: Vec<(String, String)>,
    /// The address the ops endpoint binds (with `ops_port`).
    ops_ip: std::net::IpAddr,
}

impl Gateway {
    /// Starts a gateway on free ports; `extra` is appended to the generated config (use it for
    /// `[broker]` keys and other sections; the listener and ops sections are generated).
    pub fn start(extra: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().expect("tempdir"), extra)
    }

    /// Like [`Gateway::start`], in a directory the test has prepared (the data directory is its
    /// `data/`, e.g. with a CA and devices made by `grove device`).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Gateway {
        Gateway::start_in_with_env(dir, extra, &[])
    }

    /// Like [`Gateway::start`], with these environment variables set for the process (and its
    /// restarts), e.g. a secret the configuration names.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_in_with_env(tempfile::tempdir().expect("tempdir"), extra, env)
    }

    /// Like [`Gateway::start`], with the ops endpoint bound to `ip` (on `ops_port`) instead of
    /// 127.0.0.1: what the ops endpoint serves on another address. The test still connects to
    /// it on 127.0.0.1 only (an unspecified address, 0.0.0.0, includes loopback).
    pub fn start_with_ops_on(ip: std::net::IpAddr, extra: &str) -> Gateway {
        let mut g = Gateway::prepare(tempfile::tempdir().expect("tempdir"), extra, &[]);
        g.ops_ip = ip;
        g.write_config();
        g.spawn();
        g
    }

    fn start_in_with_env(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Gateway {
        let mut g = Gateway::prepare(dir, extra, env);
        g.write_config();
        g.spawn();
        g
    }

    fn prepare(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway {
            mqtt_port: free_port(),
            ops_port: free_port(),
            dir,
            child: None,
            extra: extra.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ops_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// The generated config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("grove.toml")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt_port))
    }

    fn write_config(&self) {
        let text = format!(
            "data_dir = {data:?}\n{extra}\n[[broker.listeners]]\nname = \"test\"\nbind = \"127.0.0.1:{mqtt}\"\n\n[ops]\nbind = \"{ops}\"\n",
            data = self.data_dir(),
            extra = self.extra,
            mqtt = self.mqtt_port,
            ops = SocketAddr::new(self.ops_ip, self.ops_port),
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn spawn(&mut self) {
        blocking(|| self.spawn_and_wait());
    }

    fn spawn_and_wait(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("grove.log"))
            .expect("log file");
        let child = Command::new(workspace_bin("grove"))
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("GROVE_LOG", "debug,rumqttd=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn grove");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until both the MQTT and the ops port accept connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.mqtt_port, self.ops_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("grove exited during startup ({status}):\n{}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "grove did not open port {port}:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Everything grove wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("grove.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal and waits for the exit, returning its status and how long it took.
    pub fn stop_with(&mut self, signal: &str) -> (ExitStatus, Duration) {
        blocking(|| self.stop_and_wait(signal))
    }

    fn stop_and_wait(&mut self, signal: &str) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "grove did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal (`HUP`: reload) and returns at once.
    pub fn signal(&self, signal: &str) {
        let ok = blocking(|| {
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string())
                .status()
                .expect("kill")
                .success()
        });
        assert!(ok, "kill -{signal} failed");
    }

    /// Stops (SIGTERM) and starts again on the same ports and data directory.
    pub fn restart(&mut self) {
        let (status, _) = self.stop_with("TERM");
        assert!(
            status.success(),
            "grove exited with {status} on SIGTERM:\n{}",
            self.log()
        );
        self.spawn();
    }

    /// Starts again after [`Gateway::stop_with`].
    pub fn restart_stopped(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Kills with SIGKILL (no chance to clean up) and starts again.
    pub fn kill_and_restart(&mut self) {
        self.stop_with("KILL");
        self.spawn();
    }

    /// GET a path of the ops endpoint; returns (status, content type, body).
    pub fn http_get(&self, path: &str) -> (u16, String, String) {
        http_get(("127.0.0.1", self.ops_port), path)
    }

    /// The value of a metric line (`name{labels} value`) in `/metrics`, or 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, _, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().expect("metric value"))
    }

    /// Waits until a metric satisfies `ok` (counters are raised after the packet that caused
    /// them is written, so a client can see the effect before the count); returns its value.
    pub fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        eventually(WAIT, || {
            let v = self.metric(series);
            ok(v)
                .then_some(v)
                .ok_or_else(|| format!("{series} = {v}\n{}", self.log()))
        })
    }

    /// How many lines of the gateway's log (across restarts: the log file is appended to) contain
    /// every one of `needles`.
    pub fn log_count(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until at least `n` lines of the gateway's log contain every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], n: usize) {
        eventually(WAIT, || {
            let seen = self.log_count(needles);
            (seen >= n)
                .then_some(())
                .ok_or_else(|| format!("{seen} of {n} log lines with {needles:?}:\n{}", self.log()))
        });
    }

    /// `grove shadow get THING --json` over this gateway's MQTT API: the classic shadow's
    /// document, or `None` when the command fails (e.g. no shadow yet) or prints no JSON.
    pub fn shadow(&self, thing: &str) -> Option<serde_json::Value> {
        let addr = self.mqtt_addr().to_string();
        let (code, out) = grove(
            &["shadow", "--mqtt", &addr, "get", thing, "--json"],
            self.dir.path(),
        );
        let doc = serde_json::from_str(out.lines().last().unwrap_or_default()).ok();
        doc.filter(|_| code == 0)
    }

    /// Waits until `thing`'s classic shadow satisfies `ok`, and returns it.
    pub fn wait_shadow(
        &self,
        thing: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(WAIT, || match self.shadow(thing) {
            Some(s) if ok(&s) => Ok(s),
            other => Err(format!("{thing}'s shadow is {other:?}")),
        })
    }

    /// `grove jobs ARGS` against this gateway's ops endpoint: (exit code, output).
    pub fn jobs(&self, args: &[&str]) -> (i32, String) {
        let ops = format!("127.0.0.1:{}", self.ops_port);
        let mut all = vec!["jobs", "--ops", &ops];
        all.extend_from_slice(args);
        grove(&all, self.dir.path())
    }

    /// `grove jobs describe ID --json`: the job with its executions (fails the test if the
    /// command does).
    pub fn job(&self, id: &str) -> serde_json::Value {
        let (code, out) = self.jobs(&["describe", id, "--json"]);
        assert_eq!(code, 0, "grove jobs describe {id}: {out}");
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("JSON")
    }

    /// The process's resident set size in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid()).expect("VmRSS in /proc/PID/status")
    }

    /// Starts sampling [`Gateway::rss_kib`] every 20 ms on a thread of its own, so that the peak
    /// is seen while the test waits on something else (a blocking [`eventually`] included).
    pub fn watch_rss(&self) -> RssWatch {
        let pid = self.pid();
        let peak = Arc::new(AtomicU64::new(self.rss_kib()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Sampling, not waiting: the pause is the sampling interval.
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = vm_rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch {
            pid,
            peak,
            stop,
            thread: Some(thread),
        }
    }
}

/// `VmRSS` of a process in KiB, if it still runs.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The highest resident set size of a gateway seen since [`Gateway::watch_rss`]; sampling stops
/// when it is dropped.
pub struct RssWatch {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    /// The peak so far, in KiB, with a sample taken now.
    pub fn peak_kib(&self) -> u64 {
        let now = vm_rss_kib(self.pid).unwrap_or(0);
        self.peak.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET (the ops endpoint's protocol is plain HTTP; the test needs no client
/// library beyond this). Returns (status, content type, body).
pub fn http_get(addr: impl std::net::ToSocketAddrs, path: &str) -> (u16, String, String) {
    blocking(|| http_get_now(addr, path))
}

fn http_get_now(addr: impl std::net::ToSocketAddrs, path: &str) -> (u16, String, String) {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).expect("connect to ops endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Runs `grove` with arguments to completion; returns (exit code, stderr).
pub fn grove(args: &[&str], cwd: &Path) -> (i32, String) {
    grove_with_input(args, cwd, None)
}

/// `grove device --config CONFIG ARGS` (the device identities of the data directory CONFIG names)
/// with `stdin` (a password line), run in CONFIG's directory; checks that it succeeded and
/// returns its output.
pub fn grove_device(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let dir = config.parent().expect("the config's directory");
    let mut all = vec!["device", "--config", config.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    let (code, out) = grove_with_input(&all, dir, stdin);
    assert_eq!(code, 0, "grove device {args:?}: {out}");
    out
}

/// Like [`grove`], with `stdin` written to the command's standard input (a password prompt).
pub fn grove_with_input(args: &[&str], cwd: &Path, stdin: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let out = blocking(|| {
        let mut child = Command::new(workspace_bin("grove"))
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run grove");
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("run grove")
    });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// An MQTT 3.1.1 client (rumqttc) whose event loop runs in a task; received publishes arrive on a
/// channel.
pub struct Client {
    /// The rumqttc client handle.
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    subacks: mpsc::UnboundedReceiver<rumqttc::SubAck>,
    /// How many PUBACKs the broker has sent this client so far.
    acked: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<Option<String>>,
}

/// Options for [`Client::connect_with`].
pub fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

impl Client {
    /// Connects with a clean session and waits for CONNACK.
    pub async fn connect(id: &str, port: u16) -> Client {
        Client::connect_with(options(id, port)).await
    }

    /// Connects with the given options and waits for CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Client {
        Client::try_connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("connect failed: {e}"))
    }

    /// Connects with the given options and waits for the broker's answer: the client when its
    /// CONNACK accepts it, else what ended the attempt (the refusing CONNACK's code, a failed TLS
    /// handshake). Fails when there is no answer within [`WAIT`].
    pub async fn try_connect_with(options: MqttOptions) -> Result<Client, String> {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        // A device's small packets must not wait for Nagle's algorithm behind its own delayed
        // acknowledgements (40 ms a round trip otherwise): devices and the gateway set it too.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::unbounded_channel();
        let (suback_tx, subacks) = mpsc::unbounded_channel();
        let (acked_tx, acked) = tokio::sync::watch::channel(0);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(drive(
            eventloop,
            Forward {
                publishes: tx,
                subacks: suback_tx,
                acked: acked_tx,
                ready: Some(ready_tx),
            },
        ));
        match tokio::time::timeout(WAIT, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Client {
                client,
                rx,
                subacks,
                acked,
                task,
            }),
            Ok(Ok(Err(e))) => Err(e),
            other => panic!("no CONNACK within {WAIT:?}: {other:?}"),
        }
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.suback().await
    }

    /// Subscribes to several filters in one SUBSCRIBE and waits for the SUBACK; returns its
    /// return codes, in order.
    pub async fn subscribe_many(
        &mut self,
        filters: &[&str],
        qos: QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), qos));
        self.client
            .subscribe_many(filters)
            .await
            .expect("subscribe");
        self.suback().await
    }

    async fn suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
        let ack = tokio::time::timeout(Duration::from_secs(10), self.subacks.recv())
            .await
            .expect("no SUBACK within 10 s")
            .expect("connection closed before SUBACK");
        ack.return_codes
    }

    /// Publishes.
    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("publish");
    }

    /// Waits until the broker has acknowledged (PUBACK) `n` QoS 1 publishes of this client in
    /// all, counted from its connection.
    pub async fn acked(&mut self, n: usize) {
        let seen = tokio::time::timeout(WAIT, self.acked.wait_for(|&a| a >= n))
            .await
            .map(|r| r.is_ok());
        let now = *self.acked.borrow();
        match seen {
            Ok(true) => {}
            Ok(false) => panic!("connection closed after {now} of {n} PUBACKs"),
            Err(_) => panic!("{now} of {n} PUBACKs within {WAIT:?}"),
        }
    }

    /// The next received publish, or `None` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Receives exactly `n` publishes within `timeout`, panicking with what was missing.
    pub async fn recv_n(&mut self, n: usize, timeout: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) => got.push(p),
                _ => panic!("received {} of {n} messages", got.len()),
            }
        }
        got
    }

    /// Waits for the connection to end; returns the error that ended it.
    pub async fn closed(self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.task)
            .await
            .expect("connection still open")
            .expect("event loop task")
    }

    /// Ends the connection without DISCONNECT, as a device that loses power: its will is due.
    pub async fn vanish(self) {
        self.task.abort();
        // Once the task is gone, so is its event loop and with it the socket.
        let _ = self.task.await;
    }

    /// Sends DISCONNECT.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Where a client's event loop hands what it receives.
struct Forward {
    publishes: mpsc::UnboundedSender<Publish>,
    subacks: mpsc::UnboundedSender<rumqttc::SubAck>,
    acked: tokio::sync::watch::Sender<usize>,
    ready: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

impl Forward {
    fn event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if let Some(r) = self.ready.take() {
                    let _ = r.send(if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", ack.code))
                    });
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let _ = self.publishes.send(p);
            }
            Event::Incoming(Packet::SubAck(a)) => {
                let _ = self.subacks.send(a);
            }
            Event::Incoming(Packet::PubAck(_)) => self.acked.send_modify(|n| *n += 1),
            _ => {}
        }
    }
}

/// Polls the event loop, forwarding what it receives; ends at the first error (returned), without
/// reconnecting, so tests see exactly what the broker did.
async fn drive(mut eventloop: EventLoop, mut forward: Forward) -> Option<String> {
    loop {
        match eventloop.poll().await {
            Ok(event) => forward.event(event),
            Err(e) => {
                // What was read together with the end of the connection is still queued in the
                // event loop; a message the broker sent just before closing is part of what it
                // did (the gateway's cloud link does the same, crates/cloud/src/link.rs).
                for event in eventloop.state.events.drain(..) {
                    forward.event(event);
                }
                if let Some(r) = forward.ready.take() {
                    let _ = r.send(Err(e.to_string()));
                }
                return Some(e.to_string());
            }
        }
    }
}
