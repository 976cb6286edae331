//! The deployments' side of the cloud link: the AWS IoT Jobs client's shell ([`crate::jobs`] is
//! its pure core) and the lines `grove cloud status` shows about deployments.
//!
//! This crate does not depend on `grove-cloud`, nor it on this one: the binary wires them. It
//! registers a rider on the link (the Jobs topics, [`Jobs::filters`], and the status lines this
//! task keeps) and hands this task the link's events, converted to [`LinkInput`] with the session
//! wrapped in [`CloudPublish`]. So cloud sync knows nothing of deployments, and deployments know
//! nothing of rumqttc or the outbox.
//!
//! A job's deployment goes through [`Deployer::apply_job`], the very path of `grove deploy apply`:
//! one machine, one history. Its steps come back from [`Deployer::steps`] and go up as the job's
//! status.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::jobs::{Jobs, Output};
use crate::machine::Status;
use crate::metrics::DeployMetrics;
use crate::service::{until, Deployer, Overview, Summary};

/// Publishing on the cloud link's current session.
pub trait CloudPublish: Send {
    /// Hands a QoS 0 publish to the session without waiting; false if it is gone or full (the
    /// Jobs client sends again after its timeout).
    fn publish_qos0(&self, topic: &str, payload: Vec<u8>) -> bool;
}

/// What the cloud link tells the deployments.
pub enum LinkInput {
    /// A session is up.
    Up(Box<dyn CloudPublish>),
    /// The session ended.
    Down,
    /// A cloud message on one of the rider's filters.
    Message {
        /// The cloud topic.
        topic: String,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// The lines for `grove cloud status` (label, text).
pub type StatusLines = Vec<(String, String)>;

/// Starts the task: a Jobs client for `thing` when jobs are on (`None`: only the status lines,
/// kept in `status`). `link` carries the link's events for the rider, `convert` makes them
/// [`LinkInput`]s.
pub fn start<T: Send + 'static>(
    deployer: Deployer,
    thing: Option<&str>,
    link: mpsc::UnboundedReceiver<T>,
    convert: fn(T) -> LinkInput,
    status: watch::Sender<StatusLines>,
    metrics: DeployMetrics,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Client tokens start with this run's start time, so an answer to an earlier run's request,
    // queued in the persistent session, is not taken for one of this run's.
    let tag = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    let steps = deployer.steps();
    let side = Side {
        deployer,
        jobs: thing.map(|t| Jobs::new(t, &tag)),
        publisher: None,
        metrics,
        status,
    };
    tokio::spawn(side.run(link, convert, steps, shutdown))
}

struct Side {
    deployer: Deployer,
    jobs: Option<Jobs>,
    publisher: Option<Box<dyn CloudPublish>>,
    metrics: DeployMetrics,
    status: watch::Sender<StatusLines>,
}

impl Side {
    async fn run<T>(
        mut self,
        mut link: mpsc::UnboundedReceiver<T>,
        convert: fn(T) -> LinkInput,
        mut steps: broadcast::Receiver<Status>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.show().await;
        loop {
            let timer = until(self.jobs.as_ref().and_then(Jobs::poll_timeout));
            tokio::select! {
                _ = shutdown.changed() => break,
                input = link.recv() => match input {
                    Some(input) => self.link(convert(input)),
                    None => break,
                },
                step = steps.recv() => match step {
                    Ok(status) => {
                        if let Some(jobs) = &mut self.jobs {
                            jobs.progress(&status.id, status.phase, status.reason.as_deref(), Instant::now());
                        }
                    }
                    // Fell behind: the job's deployment is read from the store instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = timer => {
                    if let Some(jobs) = &mut self.jobs {
                        jobs.handle_timeout(Instant::now());
                    }
                }
            }
            self.perform().await;
            self.show().await;
        }
    }

    fn link(&mut self, input: LinkInput) {
        let now = Instant::now();
        match input {
            LinkInput::Up(publisher) => {
                self.publisher = Some(publisher);
                if let Some(jobs) = &mut self.jobs {
                    jobs.connected(now);
                }
            }
            LinkInput::Down => {
                self.publisher = None;
                if let Some(jobs) = &mut self.jobs {
                    jobs.disconnected();
                }
            }
            LinkInput::Message { topic, payload } => {
                if let Some(jobs) = &mut self.jobs {
                    jobs.message(&topic, &payload, now);
                }
            }
        }
    }

    /// Reports the job's deployment's step as the store has it.
    async fn catch_up(&mut self) {
        let Some(id) = self
            .jobs
            .as_ref()
            .and_then(|j| j.deployment())
            .map(String::from)
        else {
            return;
        };
        self.report_stored(&id).await;
    }

    async fn report_stored(&mut self, id: &str) {
        match self.deployer.get(id).await {
            Ok(Some(s)) => {
                if let (Some(jobs), Some(phase)) =
                    (&mut self.jobs, crate::machine::Phase::parse(&s.phase))
                {
                    jobs.progress(id, phase, s.reason.as_deref(), Instant::now());
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, deployment = id, "cannot read a job's deployment"),
        }
    }

    /// Performs what the Jobs client asks for, until it asks nothing more.
    async fn perform(&mut self) {
        loop {
            let Some(output) = self.jobs.as_mut().and_then(Jobs::poll) else {
                return;
            };
            match output {
                Output::Publish { topic, payload } => {
                    // Offline or full: the client sends it again after its timeout or on the
                    // next connection.
                    if let Some(p) = &self.publisher {
                        p.publish_qos0(&topic, payload);
                    }
                }
                Output::Apply { job, document } => {
                    info!(job, "AWS IoT job received");
                    let result = self.deployer.apply_job(&job, &document).await;
                    let taken = result.as_ref().map(Clone::clone).map_err(|e| e.to_string());
                    if let Err(why) = &taken {
                        warn!(job, reason = why, "AWS IoT job rejected");
                    }
                    if let Some(jobs) = &mut self.jobs {
                        jobs.taken(&job, taken, Instant::now());
                    }
                    // Taken again after a restart, its deployment may be past its first steps
                    // or finished: its step now is the first to report.
                    if let Ok(id) = result {
                        self.report_stored(&id).await;
                    }
                }
                Output::Reported { job, status } => {
                    info!(job, status = status.as_str(), "AWS IoT job status reported");
                    self.metrics.job_reported(status.as_str());
                }
                Output::Warn(message) => warn!("AWS IoT Jobs: {message}"),
            }
        }
    }

    /// Updates the status lines.
    async fn show(&mut self) {
        let mut lines = Vec::new();
        if let Ok(overview) = self.deployer.overview().await {
            lines.push(("deployment".to_owned(), deployments(&overview)));
        }
        if let Some(jobs) = &self.jobs {
            let view = jobs.view();
            let mut text = match &view.current {
                Some((job, Some(d), step)) => format!("{job} (deployment {d}) {step}"),
                Some((job, None, step)) => format!("{job} {step}"),
                None => "none in progress".to_owned(),
            };
            if let Some((job, status, reason)) = &view.last {
                text += &format!("; last {job} {status}");
                if let Some(reason) = reason {
                    text += &format!(": {}", short(reason));
                }
            }
            lines.push(("job".to_owned(), text));
        }
        self.status.send_if_modified(|shown| {
            let changed = *shown != lines;
            *shown = lines;
            changed
        });
    }
}

/// One line: the committed deployment, the ones applying, the last that ended.
fn deployments(o: &Overview) -> String {
    let mut parts = vec![format!(
        "committed {}",
        o.committed.as_ref().map_or("none", |c| c.id.as_str())
    )];
    parts.extend(
        o.applying
            .iter()
            .map(|a| format!("applying {} ({})", a.id, a.phase)),
    );
    if let Some(last) = &o.last {
        parts.push(format!("last {}", ended(last)));
    }
    parts.join("; ")
}

fn ended(s: &Summary) -> String {
    match &s.reason {
        Some(reason) => format!("{} {}: {}", s.id, s.phase, short(reason)),
        None => format!("{} {}", s.id, s.phase),
    }
}

/// A reason cut for one status line.
fn short(text: &str) -> String {
    const MAX: usize = 160;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
