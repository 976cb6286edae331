//! A real mosquitto broker for the tests: the cloud broker of the cloud tests, and a broker other
//! than Grove for the firmware's wire-compatibility test. One way to start it, for every test.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{blocking, eventually, free_port, WAIT};

/// A mosquitto process on a loopback port, with persistence in its own directory (so a
/// subscriber's persistent session and queue survive a restart of the broker); killed on drop.
pub struct Mosquitto {
    /// Its plain-TCP, anonymous listener.
    pub port: u16,
    /// Holds its configuration, persistence file and log.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Plain TCP, anonymous.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_, _| String::new())
    }

    /// `more` gives extra configuration lines (a TLS listener, an ACL file), from the port and
    /// the directory.
    pub fn start_with(more: impl Fn(u16, &Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // mosquitto started as root drops to its own user, which must be able to save its
        // persistence file here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nset_tcp_nodelay true\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\n{}",
            dir.path().display(),
            more(port, dir.path())
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    /// Starts the process (again, after [`Mosquitto::stop`]) and waits for its port.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log");
        // Debian puts mosquitto in /usr/sbin, which is not on every PATH.
        let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed by the test command");
        self.child = Some(child);
        let port = self.port;
        eventually(WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("mosquitto's port {port}: {e}\n{}", self.log()))
        });
    }

    /// SIGTERM (mosquitto saves its persistent state) and wait for the exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        blocking(|| {
            Command::new("kill")
                .arg(child.id().to_string())
                .status()
                .expect("kill");
            child.wait().expect("wait for mosquitto");
        });
    }

    /// Waits until mosquitto's log has `needle` at least `n` times (with `log_type all` in the
    /// configuration it logs every packet it sends and receives: a SUBACK, a PUBACK).
    pub fn wait_log(&self, needle: &str, n: usize) {
        eventually(WAIT, || {
            let log = self.log();
            if log.matches(needle).count() >= n {
                Ok(())
            } else {
                Err(format!(
                    "{needle:?} not {n} times in mosquitto's log:\n{log}"
                ))
            }
        });
    }

    /// Everything mosquitto logged so far.
    pub fn log(&self) -> String {
        // Lossy: mosquitto writes client ids and topics as they came.
        std::fs::read(self.dir.path().join("mosquitto.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `mosquitto_sub` process (mosquitto's own client, a stock client Grove did not write) that has
/// been granted its subscription: it runs with `-d`, and [`MosquittoSub::start`] returns once it
/// has printed that it received its SUBACK, so a message published afterwards is one it must see.
pub struct MosquittoSub {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub` with `args` (port, topic, `-C`, `-W`, ...) plus `-d`, and waits for
    /// its SUBACK.
    pub fn start(args: &[&str]) -> MosquittoSub {
        use std::io::BufRead;
        // Line-buffered (coreutils' stdbuf): into a pipe, mosquitto_sub's output is otherwise
        // block-buffered, and its SUBACK line would come only when it exits.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(args)
            .arg("-d")
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub is installed by the test command");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut sub = MosquittoSub {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        };
        blocking(|| {
            let mut seen = Vec::new();
            for line in sub.lines.by_ref() {
                let line = line.expect("mosquitto_sub output");
                if line.contains("received SUBACK") {
                    return;
                }
                seen.push(line);
            }
            panic!("mosquitto_sub ended before its SUBACK: {seen:?}");
        });
        sub
    }

    /// A `mosquitto_sub` connected to the local `port` with MQTT 5 as client `id`, subscribed to
    /// `filter`: a device that stays connected (until the broker closes its connection).
    pub fn connect_v5(port: u16, id: &str, filter: &str) -> MosquittoSub {
        MosquittoSub::connect_v5_with(port, id, filter, &[])
    }

    /// [`MosquittoSub::connect_v5`] signing in as user `id` with `password` (a password
    /// listener's device).
    pub fn connect_v5_with_password(
        port: u16,
        id: &str,
        password: &str,
        filter: &str,
    ) -> MosquittoSub {
        MosquittoSub::connect_v5_with(port, id, filter, &["-u", id, "-P", password])
    }

    fn connect_v5_with(port: u16, id: &str, filter: &str, more: &[&str]) -> MosquittoSub {
        let port = port.to_string();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-i",
            id,
            "-t",
            filter,
        ];
        args.extend_from_slice(more);
        MosquittoSub::start(&args)
    }

    /// Waits for the process to end (its `-C` count or `-W` timeout) and returns the messages it
    /// printed (its `-d` debug lines left out) and whether it exited successfully.
    pub fn finish(mut self) -> (Vec<String>, bool) {
        blocking(|| {
            let messages = self
                .lines
                .by_ref()
                .map(|l| l.expect("mosquitto_sub output"))
                .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed "))
                .collect();
            let ok = self.child.wait().expect("wait for mosquitto_sub").success();
            (messages, ok)
        })
    }
}

/// Runs one of mosquitto's own clients (`mosquitto_pub`, `mosquitto_sub`) against the local
/// port `port` with `args`, to completion; returns its exit status and output.
pub fn mosquitto_client(tool: &str, port: u16, args: &[&str]) -> std::process::Output {
    blocking(|| {
        Command::new(tool)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("mosquitto's clients are installed by the test command")
    })
}

/// Runs `mosquitto_pub` with `args` (topic, QoS, message, version) and checks that it succeeded;
/// with `-q 1` it exits only after its PUBACK, so the message has been accepted when this returns.
pub fn mosquitto_pub(port: u16, args: &[&str]) {
    let out = mosquitto_client("mosquitto_pub", port, args);
    assert!(out.status.success(), "mosquitto_pub {args:?}: {out:?}");
}
