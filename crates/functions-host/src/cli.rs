//! `grove fn ...`: the CLI side of the admin routes ([`crate::admin`]), over plain HTTP to the
//! gateway's ops endpoint (loopback). ureq is a small blocking client: the CLI makes one request
//! and needs no async runtime for it. [`FnAction`] is the subcommand as the binary parses it;
//! [`run`] sends the request and says what to print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::Subcommand;
use serde_json::{json, Value};

/// How long one admin request may take (a deploy compiles the module).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a `grove fn` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached.
    #[error("cannot talk to the gateway's ops endpoint at {addr}: {message}")]
    Connection {
        /// Where.
        addr: SocketAddr,
        /// What happened.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    File {
        /// Which.
        path: String,
        /// Why.
        message: String,
    },
    /// The gateway refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A client for one gateway's admin routes.
pub struct AdminClient {
    agent: ureq::Agent,
    addr: SocketAddr,
}

impl AdminClient {
    /// A client for the ops endpoint at `addr`.
    pub fn new(addr: SocketAddr) -> AdminClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        AdminClient { agent, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ClientError> {
        let connection = |e: ureq::Error| ClientError::Connection {
            addr: self.addr,
            message: e.to_string(),
        };
        let mut response = result.map_err(connection)?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(connection)?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|_| ClientError::Refused(format!("the gateway answered {status}: {text}")))?;
        if status.is_success() || body.get("status").is_some() {
            Ok(body)
        } else {
            Err(ClientError::Refused(
                body["error"].as_str().unwrap_or(&text).to_owned(),
            ))
        }
    }

    /// Deploys `module` with the manifest file; returns `{name, version, from_cache}`.
    pub fn deploy(
        &self,
        module: &Path,
        manifest: &Path,
        alias: Option<&str>,
    ) -> Result<Value, ClientError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| ClientError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let wasm = read(module)?;
        let manifest = String::from_utf8(read(manifest)?).map_err(|_| ClientError::File {
            path: manifest.display().to_string(),
            message: "not UTF-8 text".into(),
        })?;
        let body = json!({
            "manifest": manifest,
            "module": base64::engine::general_purpose::STANDARD.encode(wasm),
            "alias": alias,
        });
        self.finish(
            self.agent
                .post(self.url("/admin/functions"))
                .header("content-type", "application/json")
                .send(body.to_string()),
        )
    }

    /// Every function.
    pub fn list(&self) -> Result<Value, ClientError> {
        self.finish(self.agent.get(self.url("/admin/functions")).call())
    }

    /// Invokes synchronously; returns the answer envelope.
    pub fn invoke(
        &self,
        name: &str,
        qualifier: Option<&str>,
        payload: &str,
    ) -> Result<Value, ClientError> {
        let body = json!({"qualifier": qualifier, "payload": payload});
        self.finish(
            self.agent
                .post(self.url(&format!("/admin/functions/{name}/invoke")))
                .header("content-type", "application/json")
                .send(body.to_string()),
        )
    }

    /// Points an alias at a version, optionally with a weighted second version.
    pub fn alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Result<Value, ClientError> {
        let body = json!({
            "version": version,
            "weight": weight.map(|(v, p)| json!({"version": v, "percent": p})),
        });
        self.finish(
            self.agent
                .put(self.url(&format!("/admin/functions/{name}/aliases/{alias}")))
                .header("content-type", "application/json")
                .send(body.to_string()),
        )
    }

    /// Removes a function.
    pub fn remove(&self, name: &str) -> Result<Value, ClientError> {
        self.finish(
            self.agent
                .delete(self.url(&format!("/admin/functions/{name}")))
                .call(),
        )
    }

    /// A function's recent log lines.
    pub fn logs(&self, name: &str) -> Result<Value, ClientError> {
        self.finish(
            self.agent
                .get(self.url(&format!("/admin/functions/{name}/logs")))
                .call(),
        )
    }
}

/// Parses `--weight VERSION=PERCENT`.
pub fn parse_weight(text: &str) -> Result<(u64, u8), String> {
    let (v, p) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected VERSION=PERCENT, e.g. 3=10"))?;
    let v = v
        .parse()
        .map_err(|_| format!("{v:?} is not a version number"))?;
    let p: u8 = p
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("{p:?} is not a percentage from 0 to 100"))?;
    Ok((v, p))
}

/// The `grove fn list` table.
pub fn render_list(list: &Value) -> String {
    let mut out = format!(
        "{:<24} {:>7} {:<10} {:<32} {:<24} {}\n",
        "FUNCTION", "LATEST", "VERSIONS", "ALIASES", "TRIGGERS", "STATUS"
    );
    for f in list.as_array().into_iter().flatten() {
        let versions = f["versions"].as_array().map_or(0, Vec::len);
        let aliases: Vec<String> = f["aliases"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, a)| match a[1].as_array() {
                Some(w) => format!("{name}->{}+{}@{}%", a[0], w[0], w[1]),
                None => format!("{name}->{}", a[0]),
            })
            .collect();
        let triggers: Vec<&str> = f["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        // Versions that cannot run, with why: `v2 failed: ...` (the reason last, it may be long).
        let status: Vec<String> = f["unavailable"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(v, why)| match why.as_str() {
                Some("loading") => format!("v{v} loading"),
                other => format!("v{v} failed: {}", other.unwrap_or("")),
            })
            .collect();
        out.push_str(&format!(
            "{:<24} {:>7} {:<10} {:<32} {:<24} {}\n",
            f["name"].as_str().unwrap_or(""),
            // serde_json's Display ignores widths: format the number as a string.
            f["latest"].to_string(),
            versions,
            aliases.join(","),
            triggers.join(","),
            if status.is_empty() {
                "ready".to_owned()
            } else {
                status.join("; ")
            }
        ));
    }
    out
}

/// `grove fn ...`: the subcommands.
#[derive(Debug, Subcommand)]
pub enum FnAction {
    /// Deploy a module as a new immutable version of the function its manifest names.
    Deploy {
        /// The WebAssembly module (.wasm, Grove's function ABI v1).
        file: PathBuf,
        /// The manifest (TOML): name, handler, triggers, limits, config, grants.
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
    },
    /// List functions with their versions, aliases and triggers.
    List {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Invoke a function synchronously and print its answer.
    Invoke {
        /// The function.
        name: String,
        /// $LATEST (default), a version number or an alias.
        #[arg(long)]
        qualifier: Option<String>,
        /// The event payload.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// Point an alias at a version, optionally sending a share of traffic to another version.
    Alias {
        /// The function.
        name: String,
        /// The alias.
        alias: String,
        /// The version it points at.
        #[arg(value_name = "VERSION")]
        points_at: u64,
        /// OTHER_VERSION=PERCENT: that share of invocations goes to OTHER_VERSION (a canary).
        #[arg(long, value_name = "VERSION=PERCENT")]
        weight: Option<String>,
    },
    /// Remove a function: every version, alias and its key-value state.
    Remove {
        /// The function.
        name: String,
    },
    /// Show a function's recent log lines (its `log` calls and failed invocations).
    Logs {
        /// The function.
        name: String,
    },
}

/// Runs `grove fn ...` against the ops endpoint at `addr`: `Ok`, what to print on standard output;
/// `Err`, the exit code (2: a wrong argument, 1: the request failed) and the message for standard
/// error.
pub fn run(action: FnAction, addr: SocketAddr) -> Result<String, (u8, String)> {
    let client = AdminClient::new(addr);
    let result = match action {
        FnAction::Deploy {
            file,
            manifest,
            alias,
        } => client.deploy(&file, &manifest, alias.as_deref()).map(|d| {
            let cached = if d["from_cache"] == true {
                " (from the compile cache)"
            } else {
                ""
            };
            format!(
                "deployed {} version {}{cached}\n",
                d["name"].as_str().unwrap_or(""),
                d["version"]
            )
        }),
        FnAction::List { json } => client.list().map(|l| {
            if json {
                format!("{l}\n")
            } else {
                render_list(&l)
            }
        }),
        FnAction::Invoke {
            name,
            qualifier,
            payload,
        } => match client.invoke(&name, qualifier.as_deref(), &payload) {
            Ok(answer) if answer["status"] == "ok" => Ok(format!("{}\n", answer["result"])),
            Ok(answer) => {
                return Err((
                    1,
                    format!(
                        "grove fn invoke: {} failed ({}): {}",
                        name,
                        answer["error"]["kind"].as_str().unwrap_or("error"),
                        answer["error"]["message"].as_str().unwrap_or("")
                    ),
                ));
            }
            Err(e) => Err(e),
        },
        FnAction::Alias {
            name,
            alias,
            points_at: version,
            weight,
        } => {
            let weight = match weight.as_deref().map(parse_weight).transpose() {
                Ok(w) => w,
                Err(e) => return Err((2, format!("grove fn alias: --weight {e}"))),
            };
            client
                .alias(&name, &alias, version, weight)
                .map(|_| match weight {
                    Some((v, p)) => {
                        format!("{name}:{alias} -> version {version}, {p}% to version {v}\n")
                    }
                    None => format!("{name}:{alias} -> version {version}\n"),
                })
        }
        FnAction::Remove { name } => client.remove(&name).map(|_| format!("removed {name}\n")),
        FnAction::Logs { name } => client.logs(&name).map(|l| {
            l["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .map(|line| format!("{line}\n"))
                .collect()
        }),
    };
    result.map_err(|e| (1, format!("grove fn: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse() {
        type Case<'a> = (&'a str, Result<(u64, u8), &'a str>);
        let cases: &[Case] = &[
            ("3=10", Ok((3, 10))),
            ("3=10%", Ok((3, 10))),
            ("3=101", Err("percentage")),
            ("x=1", Err("version number")),
            ("3", Err("VERSION=PERCENT")),
        ];
        for (text, want) in cases {
            match (parse_weight(text), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{text}: {got:?} vs {want:?}"),
            }
        }
    }
}
