//! The web console's view of this gateway (`grove_console::Gateway`): the overview's readings
//! from the metrics and the process, the broker's connected clients, and their disconnect, and
//! topic filters watched through a bus link of their own; shadows, the cloud link's status and
//! the rules' reload asked as a device or the CLI asks them; the rules' counters and status, and
//! a rule's SQL changed in the configuration file ([`crate::rule_file`]); the functions,
//! deployments and jobs through their components' handles; devices registered and removed with
//! `grove device`'s own code.

use std::path::PathBuf;
use std::sync::Arc;

use grove_broker::clients::Clients;
use grove_broker::{BusMaker, Revocations};
use grove_console::{
    Alias, Client, DeploymentRow, Deployments, FunctionRow, Gateway, JobRow, Pending, Reading,
    RuleRow, ShadowDoc, ShadowEntry, Watched, SHOWN_PAYLOAD,
};
use grove_deploy::service::Deployer;
use grove_functions_host::routing::Qualifier;
use grove_functions_host::service::Functions;
use grove_jobs::service::JobsHandle;
use grove_rules_engine::engine::RELOAD_TOPIC;
use grove_rules_engine::metrics::RuleLabels;
use grove_shadow::cli::{call, Request};
use grove_shadow_api::names::{
    response_topic, validate_shadow_name, validate_thing_name, Response,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::info;

use crate::metrics::Metrics;

/// Messages a watched filter's channel holds for the console's stream (which takes them as they
/// come); beyond, they are dropped for that viewer.
const WATCH_QUEUE: usize = 256;

/// How long the console waits for the shadow service's answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The gateway as the console sees it.
pub struct ConsoleView {
    metrics: Arc<Metrics>,
    clients: Clients,
    buses: BusMaker,
    /// The configuration file, where the gateway has one (the rule editor changes it).
    config_path: Option<PathBuf>,
    /// One rule edit at a time: each reads, changes and perhaps restores the whole file.
    editing: Arc<tokio::sync::Mutex<()>>,
    /// The components the console works with beside the broker.
    handles: Handles,
}

/// The handles of the components the console works with beside the broker and the metrics.
pub struct Handles {
    /// The functions component, when it runs.
    pub functions: Option<Functions>,
    /// The deployments.
    pub deployer: Deployer,
    /// The jobs for devices.
    pub jobs: JobsHandle,
    /// The data directory (its devices file and local CA).
    pub data_dir: PathBuf,
    /// The names of the policies the configuration defines (a device may name one).
    pub policies: Vec<String>,
    /// Applies a change of the devices file at once.
    pub revocations: Revocations,
}

impl ConsoleView {
    /// A view of the gateway whose counters are `metrics`, whose broker's clients are `clients`,
    /// whose topics, shadows and rules' reload are reached through links `buses` makes, whose
    /// configuration file (if any) is `config_path`, and whose other components are `handles`.
    pub fn new(
        metrics: Arc<Metrics>,
        clients: Clients,
        buses: BusMaker,
        config_path: Option<PathBuf>,
        handles: Handles,
    ) -> ConsoleView {
        ConsoleView {
            metrics,
            clients,
            buses,
            config_path,
            editing: Arc::default(),
            handles,
        }
    }

    /// The functions component, or why the console cannot use it.
    fn functions_component(&self) -> Result<Functions, String> {
        self.handles.functions.clone().ok_or_else(|| {
            "the functions component does not run ([functions] is off in the configuration)".into()
        })
    }

    /// One shadow request, made as a device (or `grove shadow`) makes it (see [`ask_component`]).
    fn ask(
        &self,
        request: Request,
        thing: &str,
        shadow: Option<&str>,
    ) -> Pending<Result<Value, String>> {
        let names = match request {
            Request::List => Ok(()),
            _ => check_names(thing, shadow),
        };
        let asked = call(thing, shadow, request).map_err(|e| e.to_string());
        let buses = self.buses.clone();
        Box::pin(async move {
            names?;
            let (topic, body) = asked?;
            ask_component(&buses, topic, body).await
        })
    }
}

/// One request to a component of this gateway, made as a device makes it: through a bus link of
/// its own, subscribed to `{topic}/+`, the body published on `topic` with a client token; the
/// accepted answer, or why not (a rejection's message, no answer within [`ANSWER_TIMEOUT`]).
async fn ask_component(buses: &BusMaker, topic: String, mut body: Value) -> Result<Value, String> {
    static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = format!("grove-console-{n}");
    if let Value::Object(map) = &mut body {
        map.insert("clientToken".into(), token.clone().into());
    }
    let mut bus = buses.bus("console").await.map_err(|e| e.to_string())?;
    let answer = async {
        (bus.subscribe_confirmed(&[format!("{topic}/+")]).await).map_err(|e| e.to_string())?;
        let request = grove_broker::bus::Outgoing::new(topic.clone(), body.to_string().into());
        bus.publish(vec![request])
            .await
            .map_err(|e| e.to_string())?;
        let mut batch = Vec::new();
        loop {
            bus.recv_batch(&mut batch)
                .await
                .map_err(|e| e.to_string())?;
            for m in batch.drain(..) {
                let answer = crate::mqtt_request::answer_to(&topic, &token, &m.topic, &m.payload);
                if let Some(answer) = answer {
                    return answer.map_err(|e| e.to_string());
                }
            }
        }
    };
    let result = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Err(format!("no answer on {topic} within {ANSWER_TIMEOUT:?}")));
    bus.close().await;
    result
}

impl Gateway for ConsoleView {
    fn reading(&self) -> Reading {
        let (cpu_seconds, rss_bytes) = process();
        let broker = &self.metrics.broker;
        Reading {
            connected: u64::try_from(broker.connected_clients.get()).unwrap_or(0),
            received: broker.messages_received.get(),
            sent: broker.messages_sent.get(),
            outbox: u64::try_from(self.metrics.cloud.outbox_messages.get()).unwrap_or(0),
            drained: self.metrics.cloud.acked.get(),
            cpu_seconds,
            rss_bytes,
        }
    }

    fn clients(&self) -> Vec<Client> {
        self.clients
            .list()
            .into_iter()
            .map(|c| Client {
                client_id: c.client_id,
                peer: c.peer,
                protocol: c.protocol,
                since: c.since,
                received: c.received,
                sent: c.sent,
            })
            .collect()
    }

    /// Through the checks of `grove clients disconnect` (`crate::ops::disconnect_client`); a
    /// client that has already gone counts as done (the operator wanted it gone).
    fn disconnect(&self, client_id: String) -> Pending<Result<usize, String>> {
        let clients = self.clients.clone();
        Box::pin(async move {
            match crate::ops::disconnect_client(&clients, &client_id).await {
                Ok(n) => Ok(n),
                Err((axum::http::StatusCode::NOT_FOUND, _)) => Ok(0),
                Err((_, why)) => Err(why),
            }
        })
    }

    /// A bus link of its own subscribed to `filter` (QoS 0: the link's session queue in the
    /// router is bounded like a device's), forwarding each message's first [`SHOWN_PAYLOAD`]
    /// bytes into a bounded channel without ever waiting on it (a slow viewer loses messages;
    /// the link keeps up, so it never holds a device's publisher). It ends, and the link leaves
    /// the broker, once the console drops the receiver or the gateway shuts down.
    fn watch(&self, filter: String) -> Pending<Result<mpsc::Receiver<Watched>, String>> {
        let buses = self.buses.clone();
        Box::pin(async move {
            grove_broker::namespace::check_filter(&filter)?;
            if filter.starts_with("$share/") {
                return Err(format!(
                    "{filter:?} is a shared subscription: a viewer would take messages from the \
                     group's members"
                ));
            }
            let mut bus = buses.bus("console").await.map_err(|e| e.to_string())?;
            (bus.subscribe_confirmed(std::slice::from_ref(&filter)).await)
                .map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::channel(WATCH_QUEUE);
            tokio::spawn(async move {
                let mut batch = Vec::new();
                loop {
                    tokio::select! {
                        _ = tx.closed() => break,
                        received = bus.recv_batch(&mut batch) => if received.is_err() { break },
                    }
                    for m in batch.drain(..) {
                        let size = m.payload.len();
                        let shown = m.payload.slice(..size.min(SHOWN_PAYLOAD));
                        // Full: this viewer is behind, and this message is not shown to it.
                        let _ = tx.try_send(Watched {
                            topic: m.topic,
                            payload: shown.to_vec(),
                            size,
                        });
                    }
                }
                bus.close().await;
            });
            Ok(rx)
        })
    }

    fn shadows(&self) -> Pending<Result<Vec<ShadowEntry>, String>> {
        let asked = self.ask(Request::List, "", None);
        Box::pin(async move {
            let doc = asked.await?;
            Ok((doc["shadows"].as_array().into_iter().flatten())
                .map(|s| ShadowEntry {
                    thing: s["thing"].as_str().unwrap_or_default().to_owned(),
                    shadow: s["shadow"].as_str().map(str::to_owned),
                    version: s["version"].as_u64().unwrap_or(0),
                })
                .collect())
        })
    }

    fn shadow(&self, thing: String, shadow: Option<String>) -> Pending<Result<ShadowDoc, String>> {
        let asked = self.ask(Request::Get, &thing, shadow.as_deref());
        Box::pin(async move {
            let doc = asked.await?;
            let section = |name: &str| doc["state"].get(name).cloned();
            Ok(ShadowDoc {
                version: doc["version"].as_u64().unwrap_or(0),
                desired: section("desired"),
                reported: section("reported"),
                delta: section("delta"),
            })
        })
    }

    fn set_desired(
        &self,
        thing: String,
        shadow: Option<String>,
        desired: Value,
    ) -> Pending<Result<u64, String>> {
        let update = serde_json::json!({ "state": { "desired": desired } }).to_string();
        let asked = self.ask(Request::Update(update), &thing, shadow.as_deref());
        Box::pin(async move {
            let doc = asked.await?;
            let version = doc["version"].as_u64().unwrap_or(0);
            info!(
                thing,
                shadow, version, "console: desired state updated by an operator"
            );
            Ok(version)
        })
    }

    fn cloud(&self) -> Pending<Result<Vec<(String, String)>, String>> {
        let buses = self.buses.clone();
        let cloud = self.metrics.cloud.clone();
        Box::pin(async move {
            let status = serde_json::json!({});
            let doc = ask_component(&buses, grove_cloud::STATUS_TOPIC.to_owned(), status).await?;
            let mut lines = grove_cloud::cli::lines(&doc);
            if doc["state"] != "disabled" {
                let dropped = cloud.dropped_by_reason();
                let dropped = match dropped.is_empty() {
                    true => "none".to_owned(),
                    false => (dropped.iter())
                        .map(|(reason, n)| format!("{n} {reason}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                lines.push(("dropped".into(), dropped));
                let way = |direction| {
                    let labels = grove_cloud::metrics::SyncLabels { direction };
                    cloud.sync_updates.get_or_create(&labels).get()
                };
                lines.push((
                    "shadow sync".into(),
                    format!(
                        "{} updates to the cloud, {} to the edge, {} conflicts merged, {} rounds given up",
                        way("to_cloud"),
                        way("to_edge"),
                        cloud.sync_conflicts.get(),
                        cloud.sync_failures.get()
                    ),
                ));
            }
            Ok(lines)
        })
    }

    fn rules(&self) -> Vec<RuleRow> {
        let rules = &self.metrics.rules;
        rules
            .status
            .rules()
            .into_iter()
            .map(|r| {
                let labels = RuleLabels {
                    rule: r.name.clone(),
                };
                let count = |family| read(family, &labels);
                RuleRow {
                    matched: count(&rules.matched),
                    outputs: count(&rules.outputs),
                    failures: count(&rules.action_failures),
                    dropped: count(&rules.hop_dropped) + count(&rules.fanout_dropped),
                    last_failure: r.last_failure.map(|f| {
                        let line = format!("{} on {}: {}", f.action, f.resource, f.message);
                        (f.at, line)
                    }),
                    name: r.name,
                    enabled: r.enabled,
                    sql: r.sql,
                    actions: r.actions,
                    error_action: r.error_action,
                }
            })
            .collect()
    }

    fn test_rule(
        &self,
        sql: &str,
        topic: &str,
        payload: &str,
        client_id: &str,
    ) -> Result<String, String> {
        grove_rules_engine::cli::test(sql, topic, payload.to_owned(), client_id)
    }

    fn reload_rules(&self) -> Pending<Result<Vec<String>, String>> {
        let buses = self.buses.clone();
        Box::pin(async move {
            let names = reload(&buses).await?;
            info!(rules = ?names, "console: rules reloaded by an operator");
            Ok(names)
        })
    }

    /// The statement checked, the file changed (`crate::rule_file`), the rules reloaded; the
    /// file put back as it was when the reload fails or the rule running is not the file's (the
    /// rules of a committed deployment run instead of the file's).
    fn save_rule(&self, name: String, sql: String) -> Pending<Result<Vec<String>, String>> {
        let buses = self.buses.clone();
        let status = self.metrics.rules.status.clone();
        let path = self.config_path.clone();
        let editing = self.editing.clone();
        Box::pin(async move {
            grove_rules_engine::cli::compile(&sql)?;
            let Some(path) = path else {
                return Err("the gateway runs on the built-in defaults: there is no configuration file to change".into());
            };
            let _one_at_a_time = editing.lock().await;
            let cannot = |e: std::io::Error| format!("cannot change {}: {e}", path.display());
            let before = std::fs::read_to_string(&path).map_err(cannot)?;
            let after = crate::rule_file::with_rule_sql(&before, &name, &sql)?;
            crate::rule_file::replace(&path, &after).map_err(cannot)?;
            let running = match reload(&buses).await {
                Ok(names) if (status.rules().iter()).any(|r| r.name == name && r.sql == sql) => {
                    Ok(names)
                }
                Ok(_) => Err(format!(
                    "the rule {name:?} running is not the configuration file's: a deployment's rules run instead"
                )),
                Err(why) => Err(format!("the rules were not reloaded: {why}")),
            };
            match running {
                Ok(names) => {
                    info!(
                        rule = name,
                        sql, "console: a rule changed and applied by an operator"
                    );
                    Ok(names)
                }
                Err(why) => {
                    crate::rule_file::replace(&path, &before).map_err(cannot)?;
                    Err(format!("{why}; the file is as it was"))
                }
            }
        })
    }

    fn functions(&self) -> Result<Vec<FunctionRow>, String> {
        let functions = self.functions_component()?;
        let metrics = &self.metrics.functions;
        Ok((functions.list().into_iter())
            .map(|f| {
                let ok = grove_functions_host::metrics::InvocationLabels {
                    function: f.name.clone(),
                    result: "ok",
                };
                FunctionRow {
                    succeeded: metrics.invocations.get(&ok).map_or(0, |c| c.get()),
                    failed: metrics.errors(&f.name),
                    dead_letters: metrics.dead_letters(&f.name),
                    versions: f.versions,
                    latest: f.latest,
                    aliases: (f.aliases.into_iter())
                        .map(|(name, (version, weight))| Alias {
                            name,
                            version,
                            weight,
                        })
                        .collect(),
                    triggers: f.triggers,
                    unavailable: f.unavailable.into_iter().collect(),
                    name: f.name,
                }
            })
            .collect())
    }

    fn function_logs(&self, name: &str) -> Result<Vec<String>, String> {
        (self.functions_component()?.logs(name)).map_err(|e| e.to_string())
    }

    /// As the admin route of `grove fn invoke` does (`Functions::invoke_by_operator`): the answer
    /// envelope whatever the handler did (an error envelope when the function is not found).
    fn invoke(
        &self,
        name: String,
        qualifier: String,
        payload: String,
    ) -> Pending<Result<Value, String>> {
        let functions = self.functions_component();
        Box::pin(async move {
            let functions = functions?;
            let qualifier = match qualifier.trim() {
                "" => Qualifier::Latest,
                q => Qualifier::parse(q).map_err(|e| e.to_string())?,
            };
            info!(
                function = name,
                ?qualifier,
                "console: function invoked by an operator"
            );
            let invoked = functions
                .invoke_by_operator(&name, &qualifier, payload.into())
                .await;
            Ok(match invoked {
                Ok(invoked) => grove_functions_host::protocol::answer(&invoked),
                Err(e) => grove_functions_host::protocol::error_answer(&e),
            })
        })
    }

    fn set_alias(
        &self,
        name: String,
        alias: String,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Pending<Result<(), String>> {
        let functions = self.functions_component();
        Box::pin(async move {
            (functions?.set_alias(&name, &alias, version, weight).await)
                .map_err(|e| e.to_string())?;
            info!(
                function = name,
                alias,
                version,
                ?weight,
                "console: alias set by an operator"
            );
            Ok(())
        })
    }

    fn deploy(
        &self,
        manifest: String,
        module: Vec<u8>,
        alias: Option<String>,
    ) -> Pending<Result<(String, u64), String>> {
        let functions = self.functions_component();
        Box::pin(async move {
            let deployed =
                (functions?.deploy(&manifest, module, alias).await).map_err(|e| e.to_string())?;
            info!(
                function = deployed.name,
                version = deployed.version,
                "console: function deployed by an operator"
            );
            Ok((deployed.name, deployed.version))
        })
    }

    /// Through `grove device add`'s own code (`grove_auth::cli::add`, on a blocking thread:
    /// argon2), then applied as `grove device add` has the ops endpoint apply it.
    fn add_device(
        &self,
        id: String,
        thing: Option<String>,
        password: Option<String>,
        certificate: bool,
    ) -> Pending<Result<Option<String>, String>> {
        let (data_dir, policies) = (self.handles.data_dir.clone(), self.handles.policies.clone());
        let revocations = self.handles.revocations.clone();
        Box::pin(async move {
            let new = grove_auth::cli::NewDevice {
                id: id.clone(),
                thing,
                policy: None,
                password,
                cert: certificate,
            };
            let added = tokio::task::spawn_blocking(move || {
                let issued =
                    grove_auth::cli::add(&data_dir, new, |p| policies.iter().any(|n| n == p))?;
                let read = |path: &std::path::Path| {
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
                };
                issued
                    .map(|i| {
                        Ok::<_, anyhow::Error>(format!(
                            "{}{}{}",
                            read(&i.certificate)?,
                            read(&i.key)?,
                            read(&i.ca)?
                        ))
                    })
                    .transpose()
            });
            let bundle = (added.await.map_err(|e| e.to_string())?).map_err(|e| format!("{e:#}"))?;
            revocations
                .apply(crate::ops::REVOCATION_WAIT)
                .await
                .map_err(|open| format!("registered, but {open} connection(s) with its old credentials are still open"))?;
            info!(
                device = id,
                certificate = bundle.is_some(),
                "console: device registered by an operator"
            );
            Ok(bundle)
        })
    }

    fn remove_device(&self, id: String) -> Pending<Result<usize, String>> {
        let data_dir = self.handles.data_dir.clone();
        let revocations = self.handles.revocations.clone();
        Box::pin(async move {
            grove_auth::cli::remove(&data_dir, &id).map_err(|e| format!("{e:#}"))?;
            let closed = revocations
                .apply(crate::ops::REVOCATION_WAIT)
                .await
                .map_err(|open| {
                    format!("removed, but {open} of its connection(s) are still open")
                })?;
            info!(
                device = id,
                closed, "console: device removed by an operator"
            );
            Ok(closed)
        })
    }

    fn deployments(&self) -> Pending<Result<Deployments, String>> {
        let (deployer, jobs) = (self.handles.deployer.clone(), self.handles.jobs.clone());
        Box::pin(async move {
            let overview = deployer.overview().await.map_err(|e| e.to_string())?;
            let history = deployer.history().await.map_err(|e| e.to_string())?;
            let jobs = jobs.list().await.map_err(|e| e.to_string());
            Ok(Deployments {
                committed: overview.committed.map(|c| c.id),
                history: (history.into_iter())
                    .map(|d| DeploymentRow {
                        id: d.id,
                        phase: d.phase,
                        reason: d.reason,
                        received: unix_ms(u64::try_from(d.received_ms).unwrap_or(0)),
                        job: d.job,
                    })
                    .collect(),
                jobs: jobs.map(|jobs| {
                    (jobs.into_iter())
                        .map(|j| JobRow {
                            targets: match j.targets {
                                grove_jobs::machine::Targets::Things(things) => things.join(", "),
                                grove_jobs::machine::Targets::Pattern(p) => {
                                    format!("every thing matching {p}")
                                }
                            },
                            id: j.id,
                            status: j.status,
                            reason: j.reason,
                            created: unix_ms(j.created_ms),
                            counts: j.counts.into_iter().collect(),
                        })
                        .collect()
                }),
            })
        })
    }

    fn rollback(&self) -> Pending<Result<String, String>> {
        let deployer = self.handles.deployer.clone();
        Box::pin(async move {
            let started = deployer.rollback().await?;
            info!(
                deployment = started.id,
                action = started.action,
                "console: rollback asked by an operator"
            );
            Ok(format!("{} {}", started.action, started.id))
        })
    }

    fn cancel_job(&self, id: String, force: bool) -> Pending<Result<(), String>> {
        let jobs = self.handles.jobs.clone();
        Box::pin(async move {
            jobs.cancel(&id, force).await.map_err(|e| e.to_string())?;
            info!(job = id, force, "console: job canceled by an operator");
            Ok(())
        })
    }

    fn shadow_documents_topic(&self, thing: &str, shadow: Option<&str>) -> Result<String, String> {
        check_names(thing, shadow)?;
        Ok(response_topic(thing, shadow, Response::UpdateDocuments))
    }
}

/// The request `grove rules reload` makes, through a bus link: the names of the rules now
/// running, or why nothing changed.
async fn reload(buses: &BusMaker) -> Result<Vec<String>, String> {
    let doc = ask_component(buses, RELOAD_TOPIC.to_owned(), serde_json::json!({})).await?;
    Ok((doc["rules"].as_array().into_iter().flatten())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect())
}

/// A time given in milliseconds since the Unix epoch.
fn unix_ms(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// A rule's counter in `family`, read without creating it (a disabled rule has none).
fn read(family: &Family<RuleLabels, Counter>, labels: &RuleLabels) -> u64 {
    family.get(labels).map_or(0, |c| c.get())
}

/// Whether a thing (and shadow) name is one a shadow can have (AWS's rules): a name with `/`,
/// `+` or `#` would make another topic.
fn check_names(thing: &str, shadow: Option<&str>) -> Result<(), String> {
    validate_thing_name(thing).map_err(|e| format!("thing name: {e}"))?;
    shadow.map_or(Ok(()), |s| {
        validate_shadow_name(s).map_err(|e| format!("shadow name: {e}"))
    })
}

/// Clock ticks per second in `/proc/self/stat`: USER_HZ, 100 in Linux's ABI on every
/// architecture Grove builds for (asking `sysconf` would be the binary's second `unsafe` call).
const USER_HZ: f64 = 100.0;

/// The process's CPU time (user + system, seconds) and resident memory (bytes), from
/// `/proc/self/stat` and `/proc/self/status`; zeros where they cannot be read (not Linux).
fn process() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The command name (field 2) may hold spaces: fields are counted after its ')'.
            // utime and stime are fields 14 and 15, the 12th and 13th after it.
            let rest = stat.get(stat.rfind(')')? + 2..)?;
            let mut fields = rest.split(' ');
            let utime: f64 = fields.nth(11)?.parse().ok()?;
            let stime: f64 = fields.next()?.parse().ok()?;
            Some((utime + stime) / USER_HZ)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    (cpu, rss)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_has_used_cpu_and_is_resident() {
        let spin = std::time::Instant::now();
        // Some CPU time to see: a tick is 10 ms.
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        let (cpu, rss) = super::process();
        assert!(cpu > 0.0, "{cpu}");
        assert!(rss > 1 << 20, "{rss}");
    }
}
