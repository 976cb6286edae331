//! `grove deploy ...`: the CLI side of the admin routes ([`crate::admin`]), over plain HTTP to the
//! gateway's ops endpoint on loopback (ureq: one blocking request at a time, no runtime). Fully
//! offline: the document's artifacts are local files or inline. [`DeployAction`] is the
//! subcommand as the binary parses it; [`run`] sends the requests and says what to print.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::Value;

use crate::machine::Phase;
use crate::service::{Overview, Summary};

/// How long `grove deploy apply` waits for the deployment to end (a soak included) by default.
const WAIT: Duration = Duration::from_secs(600);
/// Between two looks at a deployment being applied.
const POLL: Duration = Duration::from_millis(200);

/// `grove deploy` subcommands.
#[derive(Subcommand)]
pub enum DeployAction {
    /// Apply a deployment document (JSON) and wait until it is committed, rolled back or failed;
    /// the exit status is 0 only when it is committed.
    Apply {
        /// The document.
        file: PathBuf,
        /// Return once the gateway has taken it, without waiting for its end.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait, in seconds.
        #[arg(long, default_value_t = WAIT.as_secs())]
        wait_s: u64,
    },
    /// The committed deployment, the one being applied, and the last one that ended.
    Status {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// The newest deployments with their outcome, newest first.
    History {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Roll back the deployment being applied, or else revert the committed one to what ran
    /// before it.
    Rollback,
}

struct Client {
    agent: ureq::Agent,
    addr: SocketAddr,
}

impl Client {
    fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value, String> {
        let url = format!("http://{}{path}", self.addr);
        let result = match (method, body) {
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&body[..]),
            ("POST", None) => self.agent.post(&url).send_empty(),
            _ => self.agent.get(&url).call(),
        };
        let unreachable = |e: ureq::Error| {
            format!(
                "cannot talk to the gateway's ops endpoint at {}: {e}",
                self.addr
            )
        };
        let mut response = result.map_err(unreachable)?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|_| format!("the gateway answered {status}: {text}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(body["error"].as_str().unwrap_or(&text).to_owned())
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        serde_json::from_value(self.request("GET", path, None)?)
            .map_err(|e| format!("unexpected answer from the gateway: {e}"))
    }
}

fn line(s: &Summary) -> String {
    let from = s
        .job
        .as_ref()
        .map(|job| format!(" (job {job})"))
        .unwrap_or_default();
    match &s.reason {
        Some(reason) => format!(
            "{} {}{from} (attempt {}): {reason}\n",
            s.id, s.phase, s.attempt
        ),
        None => format!("{} {}{from}\n", s.id, s.phase),
    }
}

/// Runs a `grove deploy` command against the ops endpoint at `addr`: what to print, or the exit
/// code and message.
pub fn run(action: DeployAction, addr: SocketAddr) -> Result<String, (u8, String)> {
    let client = Client {
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into(),
        addr,
    };
    let failed = |e: String| (1, format!("grove deploy: {e}"));
    match action {
        DeployAction::Apply {
            file,
            no_wait,
            wait_s,
        } => {
            let document = std::fs::read(&file).map_err(|e| {
                (
                    2,
                    format!("grove deploy: cannot read {}: {e}", file.display()),
                )
            })?;
            let taken = client
                .request("POST", "/admin/deployments", Some(document))
                .map_err(failed)?;
            let id = taken["id"].as_str().unwrap_or_default().to_owned();
            if no_wait {
                return Ok(format!("{id} received\n"));
            }
            let until = Instant::now() + Duration::from_secs(wait_s);
            loop {
                let s: Summary = client
                    .get(&format!("/admin/deployments/{id}"))
                    .map_err(failed)?;
                match Phase::parse(&s.phase) {
                    Some(Phase::Committed) => return Ok(line(&s)),
                    Some(p) if p.is_final() => return Err((1, line(&s).trim_end().to_owned())),
                    _ if Instant::now() >= until => {
                        return Err((
                            1,
                            format!(
                                "grove deploy: {id} is still {} after {wait_s} s (it goes on; \
                                 see `grove deploy status`)",
                                s.phase
                            ),
                        ))
                    }
                    _ => std::thread::sleep(POLL),
                }
            }
        }
        DeployAction::Status { json } => {
            if json {
                let raw = client.request("GET", "/admin/deployments", None);
                return raw.map(|v| format!("{v}\n")).map_err(failed);
            }
            let o: Overview = client.get("/admin/deployments").map_err(failed)?;
            let mut out = match &o.committed {
                Some(c) => format!("committed: {}\n", c.id),
                None => "committed: none (the gateway runs grove.toml's rules and the functions deployed with `grove fn`)\n".to_owned(),
            };
            for a in &o.applying {
                out += &format!("applying: {}", line(a));
            }
            if let Some(last) = &o.last {
                out += &format!("last: {}", line(last));
            }
            Ok(out)
        }
        DeployAction::History { json } => {
            if json {
                let raw = client.request("GET", "/admin/deployments/history", None);
                return raw.map(|v| format!("{v}\n")).map_err(failed);
            }
            let h: Vec<Summary> = client.get("/admin/deployments/history").map_err(failed)?;
            Ok(h.iter().map(line).collect())
        }
        DeployAction::Rollback => {
            let r = client
                .request("POST", "/admin/deployments/rollback", None)
                .map_err(failed)?;
            Ok(format!(
                "{} {}\n",
                r["action"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            ))
        }
    }
}
