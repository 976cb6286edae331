//! The brokers under test: writing each one's config, spawning it on a free loopback port, timing its
//! start (spawn to first CONNACK), reading its memory, and stopping it. A spawned broker is killed when its
//! [`RunningPeer`] is dropped, so an error, a panic or Ctrl-C in the harness never leaves one behind.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rumqttc::{ConnectReturnCode, Packet};
use serde::Serialize;
use tempfile::TempDir;

/// How long a broker may take from spawn to its first CONNACK before the start counts as failed:
/// generous, as `grove-bench rules-startup` starts grove on 10,000 rules (10 s in issue 18, more
/// in a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Pause between connection attempts while a broker starts; it bounds the start-time resolution.
const PROBE_INTERVAL: Duration = Duration::from_micros(500);

/// How long a broker gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Which broker a peer is; each one has its own config format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// The grove gateway (`grove run --config FILE`).
    Grove,
    /// mosquitto (`mosquitto -c FILE`), the reference.
    Mosquitto,
}

impl PeerKind {
    /// Name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Grove => "grove",
            PeerKind::Mosquitto => "mosquitto",
        }
    }
}

/// A broker binary to benchmark.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Which broker it is.
    pub kind: PeerKind,
    /// Path (or bare name, looked up on PATH) of its binary.
    pub binary: PathBuf,
    /// Settings added to the generated config, to try a tuning: for mosquitto, lines appended to its
    /// config file (`--mosquitto-conf`); for grove, TOML snippets such as `broker.queue_max_messages = 64`
    /// merged into its config (`--grove-conf`).
    pub extra_config: Vec<String>,
}

/// Why a broker could not be started, probed or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The binary is missing or not executable.
    #[error("cannot run {name} binary `{binary}`: {source}{hint}")]
    Spawn {
        /// Peer name.
        name: &'static str,
        /// Binary as given.
        binary: PathBuf,
        /// A hint on how to fix it, or empty.
        hint: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the config or preparing the temp dir failed.
    #[error("cannot prepare {name}'s config in {dir}: {source}")]
    Prepare {
        /// Peer name.
        name: &'static str,
        /// The temp dir.
        dir: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// An extra config snippet is not valid TOML.
    #[error("bad extra config for {name}: {source}")]
    Config {
        /// Peer name.
        name: &'static str,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// The broker exited before it accepted a connection.
    #[error(
        "{name} exited with {status} before accepting a connection; its stderr ends with:\n{tail}"
    )]
    Exited {
        /// Peer name.
        name: &'static str,
        /// Exit status.
        status: ExitStatus,
        /// Last lines of that log.
        tail: String,
    },
    /// The broker did not answer CONNECT with CONNACK in time.
    #[error("{name} did not accept an MQTT connection on 127.0.0.1:{port} within {timeout:?}; its stderr ends with:\n{tail}")]
    StartTimeout {
        /// Peer name.
        name: &'static str,
        /// Port it was told to listen on.
        port: u16,
        /// The limit.
        timeout: Duration,
        /// Last lines of that log.
        tail: String,
    },
    /// Reading the broker's memory from /proc failed.
    #[error("cannot read /proc/{pid}/ of {name}: {source}")]
    Proc {
        /// Peer name.
        name: &'static str,
        /// Its process id.
        pid: u32,
        /// The procfs error.
        source: procfs::ProcError,
    },
    /// Waiting for or signalling the process failed.
    #[error("cannot manage the {name} process: {source}")]
    Process {
        /// Peer name.
        name: &'static str,
        /// The IO error.
        source: io::Error,
    },
}

/// Memory of a running broker, from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kb: u64,
    /// Peak resident set size since start (VmHWM).
    pub peak_kb: u64,
}

impl PeerSpec {
    /// Name used in tables and JSON.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The first line the binary prints about its version, if it prints one.
    pub fn version(&self) -> Option<String> {
        // mosquitto has no --version; `-h` prints "mosquitto version X" first (and exits with 3).
        let arg = match self.kind {
            PeerKind::Grove => "--version",
            PeerKind::Mosquitto => "-h",
        };
        let output = Command::new(&self.binary)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(str::to_owned)
    }

    /// Spawns the broker on a free loopback port in a fresh temp dir and waits for its first CONNACK.
    pub fn start(&self) -> Result<RunningPeer, PeerError> {
        let name = self.name();
        let prepare = |dir: &Path, source| PeerError::Prepare {
            name,
            dir: dir.to_owned(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("grove-bench-{name}-"))
            .tempdir()
            .map_err(|e| prepare(&std::env::temp_dir(), e))?;
        let port = free_port().map_err(|e| prepare(dir.path(), e))?;
        let config = dir.path().join(match self.kind {
            PeerKind::Grove => "grove.toml",
            PeerKind::Mosquitto => "mosquitto.conf",
        });
        let text = match self.kind {
            PeerKind::Grove => grove_config(&dir.path().join("data"), port, &self.extra_config)
                .map_err(|source| PeerError::Config { name, source })?,
            PeerKind::Mosquitto => mosquitto_config(port, &self.extra_config),
        };
        fs::write(&config, text).map_err(|e| prepare(dir.path(), e))?;
        let log = dir.path().join("stderr.log");
        let spawned_at = Instant::now();
        let child = spawn(self.kind, &self.binary, &config, dir.path(), &log)?;
        let mut peer = RunningPeer {
            name,
            kind: self.kind,
            binary: self.binary.clone(),
            config,
            child,
            port,
            log,
            startup: Duration::ZERO,
            _dir: dir,
        };
        peer.startup = peer.wait_for_connack(spawned_at)?;
        Ok(peer)
    }
}

/// Spawns a broker on its config file, in `dir`, with stderr appended to `log` (a restart keeps the
/// log of the previous run).
fn spawn(
    kind: PeerKind,
    binary: &Path,
    config: &Path,
    dir: &Path,
    log: &Path,
) -> Result<Child, PeerError> {
    let name = kind.name();
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| PeerError::Prepare {
            name,
            dir: dir.to_owned(),
            source,
        })?;
    let mut command = Command::new(binary);
    match kind {
        PeerKind::Grove => command.arg("run").arg("--config").arg(config),
        PeerKind::Mosquitto => command.arg("-c").arg(config),
    };
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    command.spawn().map_err(|source| PeerError::Spawn {
        name,
        binary: binary.to_owned(),
        hint: match (kind, source.kind()) {
            (PeerKind::Mosquitto, io::ErrorKind::NotFound) => {
                " (install it with `apt-get install mosquitto`, or pass --mosquitto /path/to/mosquitto)"
            }
            (PeerKind::Grove, io::ErrorKind::NotFound) => {
                " (build it with `cargo build -p grove-gateway`, then pass --grove target/debug/grove)"
            }
            _ => "",
        },
        source,
    })
}

/// A broker process under test. Dropping it kills the process.
#[derive(Debug)]
pub struct RunningPeer {
    /// Peer name, for messages.
    name: &'static str,
    /// Which broker, its binary and its config file: what a restart runs again.
    kind: PeerKind,
    /// See `kind`.
    binary: PathBuf,
    /// See `kind`.
    config: PathBuf,
    /// The broker process.
    child: Child,
    /// Its MQTT port on 127.0.0.1.
    port: u16,
    /// Its captured stderr.
    log: PathBuf,
    /// Time from spawn to the first CONNACK.
    startup: Duration,
    /// Holds the config and data dir; removed when the peer is dropped, after the process is gone.
    _dir: TempDir,
}

impl RunningPeer {
    /// The MQTT port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Time from spawn to the first CONNACK.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The broker process's /proc/PID/status (memory, threads, ...).
    pub fn status(&self) -> Result<procfs::process::Status, PeerError> {
        self.proc(|process| process.status())
    }

    /// Bytes the broker has written to its captured stderr (its log) so far.
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// Current and peak resident memory of the broker process.
    pub fn memory(&self) -> Result<Memory, PeerError> {
        let status = self.status()?;
        Ok(Memory {
            rss_kb: status.vmrss.unwrap_or(0),
            peak_kb: status.vmhwm.unwrap_or(0),
        })
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the broker process has used so far.
    pub fn cpu_time(&self) -> Result<Duration, PeerError> {
        self.proc(cpu_time)
    }

    /// Reads something about the broker process from /proc.
    fn proc<T>(
        &self,
        read: impl FnOnce(&procfs::process::Process) -> procfs::ProcResult<T>,
    ) -> Result<T, PeerError> {
        let pid = self.child.id();
        let proc_error = |source| PeerError::Proc {
            name: self.name,
            pid,
            source,
        };
        // Linux pids fit in i32 (pid_max is at most 2^22).
        let process = procfs::process::Process::new(pid as i32).map_err(proc_error)?;
        read(&process).map_err(proc_error)
    }

    /// Asks the broker to stop (SIGTERM), kills it if it has not exited in time, and returns its status.
    pub fn stop(mut self) -> Result<ExitStatus, PeerError> {
        self.terminate()
    }

    /// Stops the broker like [`RunningPeer::stop`] but keeps its directory (config, data) and port, for
    /// [`RunningPeer::restart`]: a cloud that goes away and comes back.
    pub fn halt(&mut self) -> Result<ExitStatus, PeerError> {
        self.terminate()
    }

    /// Starts the broker again (stopping it first if it runs) on the same config, data and port;
    /// returns the time from spawn to its first CONNACK.
    pub fn restart(&mut self) -> Result<Duration, PeerError> {
        self.terminate()?;
        let spawned_at = Instant::now();
        self.child = spawn(
            self.kind,
            &self.binary,
            &self.config,
            self._dir.path(),
            &self.log,
        )?;
        self.startup = self.wait_for_connack(spawned_at)?;
        Ok(self.startup)
    }

    fn terminate(&mut self) -> Result<ExitStatus, PeerError> {
        let process_error = |source| PeerError::Process {
            name: self.name,
            source,
        };
        if let Some(status) = self.child.try_wait().map_err(process_error)? {
            return Ok(status);
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // The process may exit between try_wait and kill; ESRCH then is fine.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().map_err(process_error)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Killing an already exited child is not an error worth reporting; wait() reaps it either way.
        let _ = self.child.kill();
        self.child.wait().map_err(process_error)
    }

    /// Connects and sends CONNECT until a CONNACK comes back; returns the time since `spawned_at`.
    fn wait_for_connack(&mut self, spawned_at: Instant) -> Result<Duration, PeerError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            // A broker may accept TCP before it speaks MQTT, so only a CONNACK counts as started.
            if mqtt_handshake(addr).is_ok() {
                return Ok(spawned_at.elapsed());
            }
            if let Some(status) = self.child.try_wait().map_err(|source| PeerError::Process {
                name: self.name,
                source,
            })? {
                return Err(PeerError::Exited {
                    name: self.name,
                    status,
                    tail: log_tail(&self.log),
                });
            }
            if spawned_at.elapsed() > START_TIMEOUT {
                return Err(PeerError::StartTimeout {
                    name: self.name,
                    port: self.port,
                    timeout: START_TIMEOUT,
                    tail: log_tail(&self.log),
                });
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        // Nothing useful can be done with a failure while dropping; the process is killed if at all possible.
        if self.terminate().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat (in clock ticks, usually 10 ms).
pub fn cpu_time(process: &procfs::process::Process) -> procfs::ProcResult<Duration> {
    let stat = process.stat()?;
    let ticks = stat.utime + stat.stime;
    Ok(Duration::from_secs_f64(
        ticks as f64 / procfs::ticks_per_second().max(1) as f64,
    ))
}

/// One MQTT 3.1.1 CONNECT/CONNACK exchange on a blocking socket, then DISCONNECT.
fn mqtt_handshake(addr: SocketAddr) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    rumqttc::Connect::new("grove-bench-probe")
        .write(&mut out)
        .map_err(|e| invalid(format!("encoding CONNECT: {e:?}")))?;
    stream.write_all(&out)?;

    let mut incoming = BytesMut::new();
    let mut chunk = [0u8; 64];
    loop {
        match Packet::read(&mut incoming, 1024) {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => break,
            Ok(other) => return Err(invalid(format!("expected CONNACK, got {other:?}"))),
            Err(rumqttc::Error::InsufficientBytes(_)) => {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                incoming.extend_from_slice(&chunk[..n]);
            }
            Err(e) => return Err(invalid(format!("decoding CONNACK: {e:?}"))),
        }
    }
    let mut out = BytesMut::new();
    rumqttc::Disconnect
        .write(&mut out)
        .map_err(|e| invalid(format!("encoding DISCONNECT: {e:?}")))?;
    stream.write_all(&out)
}

/// A port that was free on 127.0.0.1 a moment ago. The broker binds it itself, so another process could
/// take it in between; the start then fails with a clear message instead of measuring the wrong thing.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The last lines of a broker's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}

/// mosquitto's config: one loopback listener, anonymous clients, nothing on disk, then `extra` lines.
fn mosquitto_config(port: u16, extra: &[String]) -> String {
    let mut text = format!(
        "# Written by grove-bench.\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_connections -1\n\
         # Bounded runs only: do not drop queued QoS 1 messages for a slow subscriber (default limit 1000),\n\
         # so a QoS 1 loss means a broker fault, not a configured limit.\n\
         max_queued_messages 0\n\
         # grove sets TCP_NODELAY on device sockets; without the same, mosquitto's QoS 0 latency at a\n\
         # fixed rate is Nagle's algorithm waiting for delayed ACKs (measured: p50 2.4 ms instead of 0.16 ms).\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n"
    );
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// grove's config, in the format `grove run --config` reads (TOML, serialised by the toml crate so the
/// data dir path is quoted correctly whatever it contains), with the `extra` TOML snippets merged in.
pub fn grove_config(
    data_dir: &Path,
    port: u16,
    extra: &[String],
) -> Result<String, toml::de::Error> {
    #[derive(Serialize)]
    struct Config {
        data_dir: PathBuf,
        broker: Broker,
        ops: Ops,
    }
    #[derive(Serialize)]
    struct Broker {
        max_connections: u32,
        listeners: Vec<Listener>,
    }
    #[derive(Serialize)]
    struct Listener {
        bind: String,
    }
    #[derive(Serialize)]
    struct Ops {
        enabled: bool,
    }
    let config = Config {
        data_dir: data_dir.to_owned(),
        broker: Broker {
            max_connections: 10_000,
            listeners: vec![Listener {
                bind: format!("127.0.0.1:{port}"),
            }],
        },
        ops: Ops { enabled: false },
    };
    let mut table = toml::Table::try_from(&config)
        .expect("a config of plain strings, numbers and booleans converts to TOML");
    for snippet in extra {
        merge(&mut table, toml::from_str(snippet)?);
    }
    Ok(format!("# Written by grove-bench.\n{table}"))
}

/// Merges `from` into `into`: tables merge key by key, anything else replaces what was there.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge(inner, value),
            // Arrays of tables merge element by element, so `[[broker.listeners]]` with only
            // `policy = "x"` changes the generated listener instead of dropping its address.
            (Some(toml::Value::Array(inner)), toml::Value::Array(values)) => {
                for (i, value) in values.into_iter().enumerate() {
                    match (inner.get_mut(i), value) {
                        (Some(toml::Value::Table(t)), toml::Value::Table(v)) => merge(t, v),
                        (Some(slot), v) => *slot = v,
                        (None, v) => inner.push(v),
                    }
                }
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grove_config_is_the_documented_shape() {
        let text = grove_config(Path::new("/tmp/x y/data"), 18830, &[]).expect("no snippets");
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(value["data_dir"].as_str(), Some("/tmp/x y/data"));
        assert_eq!(
            value["broker"]["max_connections"].as_integer(),
            Some(10_000)
        );
        assert_eq!(
            value["broker"]["listeners"][0]["bind"].as_str(),
            Some("127.0.0.1:18830")
        );
        assert_eq!(value["ops"]["enabled"].as_bool(), Some(false));
    }

    /// Merges TOML snippets into grove's config and reads one value back by dotted path.
    fn check_grove_snippets(snippets: &[&str], path: &str, expected: toml::Value) {
        let snippets: Vec<String> = snippets.iter().map(|s| (*s).to_owned()).collect();
        let text = grove_config(Path::new("/d"), 1883, &snippets).expect("valid snippets");
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        let found = path
            .split('.')
            .try_fold(&value, |v, key| v.get(key))
            .unwrap_or_else(|| panic!("no {path} in:\n{text}"));
        assert_eq!(found, &expected, "{snippets:?}");
        // The listener survives every merge.
        assert_eq!(
            value["broker"]["listeners"][0]["bind"].as_str(),
            Some("127.0.0.1:1883")
        );
    }

    #[test]
    fn grove_config_takes_extra_snippets() {
        use toml::Value::{Boolean, Integer};
        check_grove_snippets(
            &["broker.queue_max_messages = 64"],
            "broker.queue_max_messages",
            Integer(64),
        );
        check_grove_snippets(
            &["broker.max_connections = 5"],
            "broker.max_connections",
            Integer(5),
        );
        check_grove_snippets(&["[ops]\nenabled = true"], "ops.enabled", Boolean(true));
        check_grove_snippets(
            &["broker.queue_max_bytes = 1", "broker.queue_max_bytes = 2"],
            "broker.queue_max_bytes",
            Integer(2),
        );
        check_grove_snippets(
            &["[[broker.listeners]]\nauth = \"anonymous\"\npolicy = \"bench\""],
            "broker.listeners",
            toml::Value::Array(vec![toml::Value::Table(
                toml::from_str(
                    "bind = \"127.0.0.1:1883\"\nauth = \"anonymous\"\npolicy = \"bench\"",
                )
                .expect("a table"),
            )]),
        );
    }

    #[test]
    fn bad_grove_snippet_is_an_error() {
        assert!(grove_config(
            Path::new("/d"),
            1883,
            &["broker.queue_max_messages =".to_owned()]
        )
        .is_err());
    }

    #[test]
    fn mosquitto_config_listens_on_loopback_only() {
        let text = mosquitto_config(18831, &["max_inflight_messages 20".to_owned()]);
        assert!(text.ends_with("\nmax_inflight_messages 20\n"), "{text}");
        let listeners: Vec<&str> = text.lines().filter(|l| l.starts_with("listener")).collect();
        assert_eq!(listeners, ["listener 18831 127.0.0.1"]);
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let spec = PeerSpec {
            kind: PeerKind::Mosquitto,
            binary: PathBuf::from("/nonexistent/mosquitto"),
            extra_config: Vec::new(),
        };
        let message = spec.start().expect_err("no such binary").to_string();
        assert!(
            message.contains("/nonexistent/mosquitto")
                && message.contains("apt-get install mosquitto"),
            "{message}"
        );
    }
}
