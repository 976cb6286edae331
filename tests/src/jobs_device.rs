//! A device that runs AWS IoT Jobs, written by someone else: `tests/paho/aws_jobs_device.py`, on
//! Eclipse paho-mqtt (Python), following AWS's Jobs device topics. The tests start it as a process
//! and read what it prints: each message it received as a JSON line, and its steps (`READY`,
//! `DONE <job> <status>`, `STOPPED ...`, `SUBACK <codes>`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::{blocking, eventually, WAIT};

/// A running `aws_jobs_device.py`.
pub struct JobsDevice {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl JobsDevice {
    /// Starts the device for `thing` against the MQTT port `port`; `args` are the script's other
    /// options (`--outcome FAILED`, `--password P`, `--stale-update`, ...).
    pub fn start(port: u16, thing: &str, args: &[&str]) -> JobsDevice {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("paho/aws_jobs_device.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--thing", thing])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (the test command installs paho-mqtt)");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        JobsDevice { child, lines }
    }

    /// Everything it printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits for a line starting with `prefix` and returns it.
    pub fn wait_line(&self, prefix: &str) -> String {
        eventually(WAIT, || {
            let lines = self.lines();
            lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned()
                .ok_or_else(|| format!("no line starting with {prefix:?} in {lines:#?}"))
        })
    }

    /// The payloads of the messages it received on `topic`, in order.
    pub fn received(&self, topic: &str) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["topic"] == topic)
            .map(|m| m["payload"].clone())
            .collect()
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        blocking(|| self.child.wait()).expect("wait for the device")
    }
}

impl Drop for JobsDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
