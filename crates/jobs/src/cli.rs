//! `grove jobs ...`: the CLI side of the admin routes ([`crate::admin`]), over plain HTTP to the
//! gateway's ops endpoint on loopback (ureq: one blocking request, no runtime). [`JobsAction`] is
//! the subcommand as the binary parses it; [`run`] sends the request and says what to print.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use serde_json::Value;

use crate::machine::{Abort, JobSpec, Targets};
use crate::service::JobInfo;

/// `grove jobs` subcommands.
#[derive(Subcommand)]
pub enum JobsAction {
    /// Create a job: a JSON document for the devices, and its targets (a list of things or a
    /// thing-name pattern).
    Create {
        /// The job document (a JSON object), handed to each device as it is.
        #[arg(long, value_name = "FILE")]
        document: PathBuf,
        /// The job's id (1 to 64 of a-z, A-Z, 0-9, '_', '-'); default `job-` and the time.
        #[arg(long)]
        id: Option<String>,
        /// The things to run it, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "thing_pattern",
            conflicts_with = "thing_pattern"
        )]
        targets: Vec<String>,
        /// Every thing whose name matches this glob (e.g. 'sensor-*'), now and as they appear.
        #[arg(long, value_name = "GLOB")]
        thing_pattern: Option<String>,
        /// Executions rolled out per minute at most (1 to 1000); default all at once.
        #[arg(long, value_name = "N")]
        rollout_per_minute: Option<u32>,
        /// Cancel the job when this percentage of ended executions failed (FAILED, REJECTED or
        /// TIMED_OUT) ...
        #[arg(long, value_name = "PCT", requires = "abort_min")]
        abort_threshold: Option<f64>,
        /// ... once at least this many have ended.
        #[arg(long, value_name = "N", requires = "abort_threshold")]
        abort_min: Option<u32>,
        /// An execution in progress longer than this is TIMED_OUT (1 to 10080 minutes).
        #[arg(long, value_name = "N")]
        timeout_minutes: Option<u32>,
    },
    /// Every job with its execution counts.
    List {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// A job: its settings and its executions counted by status.
    Describe {
        /// The job's id.
        id: String,
        /// Print the raw JSON answer (the document and every execution).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: its executions not started are canceled; those in progress go on unless
    /// --force.
    Cancel {
        /// The job's id.
        id: String,
        /// Cancel the executions in progress too.
        #[arg(long)]
        force: bool,
    },
}

/// A GET, or a POST of `body`; the answer's JSON, or the gateway's error message.
fn request(addr: SocketAddr, path: &str, body: Option<Value>) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let result = match body {
        Some(body) => agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes()),
        None => agent.get(&url).call(),
    };
    let unreachable =
        |e: ureq::Error| format!("cannot talk to the gateway's ops endpoint at {addr}: {e}");
    let mut response = result.map_err(unreachable)?;
    let status = response.status();
    let text = response.body_mut().read_to_string().map_err(unreachable)?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| format!("the gateway answered {status}: {text}"))?;
    if status.is_success() {
        Ok(answer)
    } else {
        Err(answer["error"].as_str().unwrap_or(&text).to_owned())
    }
}

fn info(v: Value) -> Result<JobInfo, String> {
    serde_json::from_value(v).map_err(|e| format!("unexpected answer from the gateway: {e}"))
}

fn counts(job: &JobInfo) -> String {
    if job.counts.is_empty() {
        return "no executions".into();
    }
    job.counts
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(job: &JobInfo) -> String {
    let mut out = format!("job {}: {}\n", job.id, job.status);
    if let Some(reason) = &job.reason {
        out += &format!("reason: {reason}\n");
    }
    out += &match &job.targets {
        Targets::Things(things) => format!("targets: {}\n", things.join(", ")),
        Targets::Pattern(p) => format!("targets: things matching {p}\n"),
    };
    out += &match job.rollout_per_minute {
        Some(n) => format!("rollout: {n} per minute\n"),
        None => "rollout: all at once\n".into(),
    };
    if let Some(a) = &job.abort {
        out += &format!(
            "abort: when {}% of ended executions failed, once {} have ended\n",
            a.threshold_percent, a.min_executed
        );
    }
    if let Some(m) = job.timeout_minutes {
        out += &format!("timeout: {m} minutes in progress\n");
    }
    let total: u64 = job.counts.values().sum();
    out += &format!("executions: {total}\n");
    for (status, n) in &job.counts {
        out += &format!("  {status}: {n}\n");
    }
    out
}

/// Runs a `grove jobs` command against the ops endpoint at `addr`: what to print, or the exit
/// code and message.
pub fn run(action: JobsAction, addr: SocketAddr) -> Result<String, (u8, String)> {
    let failed = |e: String| (1, format!("grove jobs: {e}"));
    match action {
        JobsAction::Create {
            document,
            id,
            targets,
            thing_pattern,
            rollout_per_minute,
            abort_threshold,
            abort_min,
            timeout_minutes,
        } => {
            let text = std::fs::read(&document).map_err(|e| {
                (
                    2,
                    format!("grove jobs: cannot read {}: {e}", document.display()),
                )
            })?;
            let document: Value = serde_json::from_slice(&text).map_err(|e| {
                (
                    2,
                    format!("grove jobs: {} is not JSON: {e}", document.display()),
                )
            })?;
            let id = id.unwrap_or_else(|| {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                format!("job-{ms}")
            });
            let spec = JobSpec {
                id,
                document,
                targets: match thing_pattern {
                    Some(p) => Targets::Pattern(p),
                    None => Targets::Things(targets),
                },
                rollout_per_minute,
                abort: abort_threshold
                    .zip(abort_min)
                    .map(|(threshold_percent, min_executed)| Abort {
                        threshold_percent,
                        min_executed,
                    }),
                timeout_minutes,
            };
            let body = serde_json::to_value(&spec).expect("a spec serializes");
            let job =
                info(request(addr, "/admin/jobs", Some(body)).map_err(failed)?).map_err(failed)?;
            Ok(format!("{} created: {}\n", job.id, counts(&job)))
        }
        JobsAction::List { json } => {
            let raw = request(addr, "/admin/jobs", None).map_err(failed)?;
            if json {
                return Ok(format!("{raw}\n"));
            }
            let jobs: Vec<JobInfo> = serde_json::from_value(raw)
                .map_err(|e| failed(format!("unexpected answer from the gateway: {e}")))?;
            if jobs.is_empty() {
                return Ok("no jobs\n".into());
            }
            Ok(jobs
                .iter()
                .map(|j| format!("{} {}: {}\n", j.id, j.status, counts(j)))
                .collect())
        }
        JobsAction::Describe { id, json } => {
            let raw = request(addr, &format!("/admin/jobs/{id}"), None).map_err(failed)?;
            if json {
                return Ok(format!("{raw}\n"));
            }
            Ok(describe(&info(raw).map_err(failed)?))
        }
        JobsAction::Cancel { id, force } => {
            let body = serde_json::json!({ "force": force });
            let job = info(
                request(addr, &format!("/admin/jobs/{id}/cancel"), Some(body)).map_err(failed)?,
            )
            .map_err(failed)?;
            Ok(format!("{} {}: {}\n", job.id, job.status, counts(&job)))
        }
    }
}
