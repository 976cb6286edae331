//! The cloud side of deployments from AWS IoT Jobs, for the end-to-end tests and the deployment
//! benchmark: a mosquitto as the cloud broker, [`AwsJobs`] on it, and [`Artifacts`], the HTTPS
//! server the job documents' presigned-URL placeholders point at; and the gateway's configuration
//! to reach them.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::functions::Fixture;
use crate::{Artifacts, AwsJobs, Mosquitto};

/// The thing the gateway is in the cloud.
pub const THING: &str = "edge-1";

/// The cloud side: its broker, the Jobs service and the artifact server.
pub struct JobsCloud {
    /// The cloud broker.
    pub m: Mosquitto,
    /// The Jobs service on it.
    pub jobs: AwsJobs,
    /// The artifact server.
    pub files: Artifacts,
}

impl JobsCloud {
    /// Starts the three.
    pub async fn start() -> JobsCloud {
        let m = Mosquitto::start();
        let jobs = AwsJobs::start(m.port).await;
        let files = Artifacts::start().await;
        JobsCloud { m, jobs, files }
    }

    /// The gateway's `[cloud]` (with `more` keys) and `[deploy]` sections, jobs on, the artifact
    /// server's CA trusted, as [`THING`].
    pub fn toml(&self, more: &str) -> String {
        self.toml_for(THING, more)
    }

    /// [`JobsCloud::toml`] as `thing` (also the client id).
    pub fn toml_for(&self, thing: &str, more: &str) -> String {
        format!(
            "[cloud]\nhost = \"127.0.0.1\"\nport = {}\nplain_tcp = true\nclient_id = \"{thing}\"\nthing = \"{thing}\"\nmax_backoff_ms = 1000\n{more}\n\
             [deploy]\njobs = true\nartifact_ca = {:?}\n",
            self.m.port,
            self.files.ca_file()
        )
    }

    /// A gateway with jobs on (and `env`), once its link is up and subscribed: its first
    /// start-next reached the Jobs service (the link subscribes before it publishes).
    pub fn gateway(&self, env: &[(&str, &str)]) -> Fixture {
        let f = Fixture::start_with_env(&self.toml(""), env);
        self.jobs.wait_requests(THING, "start-next", 1);
        f
    }

    /// Serves `module` at `/{name}` and returns the `module` object of a document fetching it by
    /// a presigned-URL placeholder.
    pub fn module(&self, name: &str, module: &[u8]) -> Value {
        placeholder(&self.files.put(name, module.to_vec()), module)
    }

    /// Creates job `job` deploying `document` (a deployment document's text) to the thing.
    pub async fn job(&self, job: &str, document: &str) {
        let doc: Value = serde_json::from_str(document).expect("a JSON document");
        self.jobs.create_job(job, &[THING], doc).await;
    }

    /// Waits for the job's execution to end with `status`; returns its last `statusDetails`.
    pub fn ended(&self, job: &str, status: &str) -> Map<String, Value> {
        self.jobs.wait_status(job, THING, status).status_details
    }
}

/// The `module` object fetching `module` from `url` by AWS IoT Jobs' placeholder for a presigned
/// S3 URL.
pub fn placeholder(url: &str, module: &[u8]) -> Value {
    json!({
        "sha256": sha256_hex(module),
        "size": module.len(),
        "url": format!("${{aws:iot:s3-presigned-url:{url}}}"),
    })
}

/// A deployment document `id` deploying `module` (its `module` object) as function `name` with
/// `manifest`, alias `live` at 100%, with `extra` top-level keys (JSON text without braces).
pub fn deployment(id: &str, name: &str, manifest: &str, module: Value, extra: &str) -> String {
    let doc = json!({
        "format": 1,
        "id": id,
        "functions": [{
            "name": name,
            "manifest": manifest,
            "module": module,
            "aliases": {"live": 100},
        }],
    });
    let mut text = doc.to_string();
    if !extra.is_empty() {
        text.pop();
        text = format!("{text}, {extra}}}");
    }
    text
}

/// The SHA-256 of `bytes` in lower-case hex, as a deployment document names a module.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
