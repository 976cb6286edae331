//! `grove run`: start every part in order, serve until a signal, then stop in reverse order.
//!
//! Startup order matters: the store first (it holds what must be restored), then the broker (which
//! restores retained messages before it binds its listeners), then the ops endpoint. Shutdown
//! closes the listeners and connections, then the ops endpoint, then the store, which finishes its
//! last group commit before the process exits.

use std::sync::Arc;

use std::path::PathBuf;
use tokio::net::TcpListener;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::Config;
use crate::metrics::Metrics;
use grove_auth::identity::{Identities, DEVICES_FILE};
use grove_broker::{Broker, BrokerError};
use grove_config::ConfigError;
use grove_deploy::cloud::{CloudPublish, LinkInput, StatusLines};
use grove_deploy::fetch::Fetcher;
use grove_deploy::machine::{Phase, Timeouts};
use grove_deploy::service::{DeployParts, DeployedRules, Deployer};
use grove_functions_host::service::Functions;
use grove_jobs::service::{JobsHandle, JobsService, KnownThings};
use grove_rules_engine::engine::{LoadRules, Reload, RulesEngine};
use grove_rules_engine::RuleConfig;
use grove_shadow::service::ShadowService;
use grove_store::{Store, StoreError};

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is wrong, or the machine refuses it (port in use, data directory not
    /// writable). Exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Anything else. Exit code 1.
    #[error(transparent)]
    Broker(BrokerError),
    /// Waiting for signals failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl RunError {
    /// The process exit code for this error: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl From<BrokerError> for RunError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Listen(c) => RunError::Config(c),
            other => RunError::Broker(other),
        }
    }
}

/// Runs the gateway until SIGINT or SIGTERM (SIGHUP reloads the rules from `config_path`).
pub async fn run(mut config: Config, config_path: Option<PathBuf>) -> Result<(), RunError> {
    // The handlers are installed first, so that a SIGTERM that arrives while the gateway is still
    // starting (a service manager's stop, a test's restart) is held and answered with an orderly
    // stop once it has started, instead of killing the process with the signal's default action.
    let signals = Signals::install().map_err(RunError::Signals)?;
    let data_dir = &config.data_dir;
    let (store, store_thread) = Store::open(&data_dir.value).map_err(|e| {
        let message = match e {
            StoreError::Locked { .. } => e.to_string(),
            other => format!(
                "cannot use data directory {}: {other}",
                data_dir.value.display()
            ),
        };
        ConfigError::Invalid {
            origin: data_dir.origin.clone(),
            message,
        }
    })?;
    let metrics = Arc::new(Metrics::new());
    let connected = metrics.broker.connected_clients.clone();
    crate::memory::give_back_freed_memory(move || connected.get());
    let (reload_tx, reload_rx) = mpsc::channel(4);
    // The rules go to the engine and are not kept here too: with many rules, every copy counts
    // (issue 18); a reload reads them from the file again.
    let rules = std::mem::take(&mut config.rules);
    let (broker, components, functions, deployer, jobs) = match start(
        &config,
        rules,
        config_path.clone(),
        store,
        &metrics,
        (reload_tx.clone(), reload_rx),
    )
    .await
    {
        Ok(started) => started,
        Err(e) => {
            store_thread.close().await;
            return Err(e);
        }
    };

    let (ops_stop, ops_stopped) = oneshot::channel::<()>();
    let ops_task = match &config.ops {
        None => None,
        Some(bind) => {
            let listener = match TcpListener::bind(bind.value).await {
                Ok(l) => l,
                Err(e) => {
                    broker.shutdown().await;
                    store_thread.close().await;
                    return Err(ConfigError::Invalid {
                        origin: bind.origin.clone(),
                        message: format!("cannot listen on {}: {e}", bind.value),
                    }
                    .into());
                }
            };
            info!(addr = %listener.local_addr().unwrap_or(bind.value), "ops endpoint ready (/healthz, /metrics)");
            let shutdown = async {
                let _ = ops_stopped.await;
            };
            // The admin routes deploy code and apply revocations: only for clients on this machine.
            let admin = match functions.clone() {
                Some(f) if bind.value.ip().is_loopback() => {
                    Some(grove_functions_host::admin::router(f))
                }
                Some(_) => {
                    tracing::warn!("the ops endpoint is not on a loopback address: `grove fn` admin routes are not served");
                    None
                }
                None => None,
            };
            let admin = match bind.value.ip().is_loopback() {
                true => Some(
                    admin
                        .unwrap_or_default()
                        .merge(crate::ops::devices_router(broker.revocations()))
                        .merge(crate::ops::clients_router(broker.clients()))
                        .merge(grove_deploy::admin::router(deployer.clone()))
                        .merge(grove_jobs::admin::router(jobs.clone())),
                ),
                false => admin,
            };
            // The web console, where `[console]` allows it (see grove_console::config).
            let console = config.console.as_ref().map(|c| {
                let view = crate::console::ConsoleView::new(
                    metrics.clone(),
                    broker.clients(),
                    broker.bus_maker(),
                    config_path,
                    crate::console::Handles {
                        functions,
                        deployer,
                        jobs,
                        data_dir: data_dir.value.clone(),
                        policies: config.broker.policies.keys().cloned().collect(),
                        revocations: broker.revocations(),
                    },
                );
                info!("web console at http://{}/console", bind.value);
                grove_console::router(c, &data_dir.value, Arc::new(view))
            });
            let routes = match (admin, console) {
                (Some(a), Some(c)) => Some(a.merge(c)),
                (a, c) => a.or(c),
            };
            Some(tokio::spawn(crate::ops::serve(
                listener,
                metrics.clone(),
                routes,
                shutdown,
            )))
        }
    };
    info!(version = env!("CARGO_PKG_VERSION"), data_dir = %data_dir.value.display(), "grove is running");
    // Startup's garbage (the parsed configuration file, the rules' compilation) goes back now
    // rather than at the trimmer's first round.
    crate::memory::trim();

    signals.wait(reload_tx).await;
    info!("shutting down");
    // How long the orderly stop took, as the gateway itself measured it (a service manager's stop
    // timeout is the budget it must fit in; systemd's default is 90 s, ours is much less).
    let stopping = std::time::Instant::now();
    broker.shutdown().await;
    for task in components {
        let _ = task.await;
    }
    let _ = ops_stop.send(());
    if let Some(task) = ops_task {
        let _ = task.await;
    }
    store_thread.close().await;
    info!(
        took_ms = u64::try_from(stopping.elapsed().as_millis()).unwrap_or(u64::MAX),
        "stopped"
    );
    Ok(())
}

/// Started components: the broker, tasks to wait for at shutdown, the functions component, the
/// deployments' handle and the jobs' handle.
type Started = (
    Broker,
    Vec<JoinHandle<()>>,
    Option<Functions>,
    Deployer,
    JobsHandle,
);

/// Starts the broker and the components on it (shadows, functions, rules: `file_rules`, the
/// configuration's, unless a deployment's are committed), then opens the listeners.
async fn start(
    config: &Config,
    file_rules: Vec<RuleConfig>,
    config_path: Option<PathBuf>,
    store: Store,
    metrics: &Metrics,
    (reload_tx, reloads): (mpsc::Sender<Reload>, mpsc::Receiver<Reload>),
) -> Result<Started, RunError> {
    let deploy_store = store.clone();
    let devices = config.data_dir.value.join(DEVICES_FILE);
    let identities = Identities::open(devices).map_err(|e| ConfigError::Invalid {
        origin: config.data_dir.origin.clone(),
        message: format!("cannot read the device identities: {e}"),
    })?;
    let mut broker = Broker::start(
        config.broker.clone(),
        store.clone(),
        identities,
        metrics.broker.clone(),
    )
    .await?;
    let shadow_bus = broker.bus("shadow").await?;
    let service = ShadowService::new(
        shadow_bus,
        store.clone(),
        &config.shadow,
        metrics.shadow.clone(),
    )
    .await
    .map_err(|e| RunError::Broker(BrokerError::Link(e.to_string())))?;
    let shadows = tokio::spawn(service.run(broker.shutdown_signal()));
    // Local jobs: subscribed (confirmed) before the listeners open, like the shadow service. A
    // pattern job targets the registered devices' things at once (read from the devices file at
    // each creation).
    let devices_file = config.data_dir.value.join(DEVICES_FILE);
    let known: KnownThings = Box::new(move || {
        grove_auth::identity::load(&devices_file)
            .map(|devices| devices.values().map(|d| d.thing().to_owned()).collect())
            .unwrap_or_default()
    });
    let (jobs_service, jobs) = JobsService::new(
        broker.bus("jobs").await?,
        store.clone(),
        metrics.jobs.clone(),
        known,
    )
    .await
    .map_err(|e| RunError::Broker(BrokerError::Link(format!("jobs: {e}"))))?;
    let mut components = vec![
        shadows,
        tokio::spawn(jobs_service.run(broker.shutdown_signal())),
    ];
    // The deployments ride on the cloud link (the Jobs topics, their lines in `grove cloud
    // status`); their side starts once the deployments' task has.
    let (rider_events, rider_rx) = mpsc::unbounded_channel();
    let (deploy_status, rider_status) = watch::channel(StatusLines::new());
    let cloud_jobs_thing = config
        .cloud
        .as_ref()
        .filter(|_| config.deploy.jobs.value)
        .map(|c| c.value.thing.clone());
    // Cloud sync installs the durable tap, so it starts before any other component can publish.
    match &config.cloud {
        Some(cloud) => {
            let rider = grove_cloud::Rider {
                name: "deploy".to_owned(),
                filters: cloud_jobs_thing
                    .as_deref()
                    .map(grove_deploy::jobs::Jobs::filters)
                    .unwrap_or_default(),
                events: rider_events,
                status: rider_status,
            };
            let started = grove_cloud::start(
                &cloud.value,
                &broker.bus_maker(),
                store.clone(),
                metrics.cloud.clone(),
                vec![rider],
                broker.shutdown_signal(),
            )
            .await;
            match started {
                Ok(tasks) => components.extend(tasks),
                Err(e) => {
                    broker.shutdown().await;
                    return Err(match e {
                        // Unusable TLS files, or subscriptions over the cloud's limits, are a
                        // configuration error, pointing at [cloud].
                        e @ (grove_cloud::CloudError::Link(_)
                        | grove_cloud::CloudError::Subscriptions(_)) => ConfigError::Invalid {
                            origin: cloud.origin.clone(),
                            message: e.to_string(),
                        }
                        .into(),
                        other => RunError::Broker(BrokerError::Link(other.to_string())),
                    });
                }
            }
            info!(
                host = cloud.value.host,
                port = cloud.value.port,
                "cloud sync running"
            );
        }
        None => components.extend(
            grove_cloud::serve_disabled(&broker.bus_maker(), broker.shutdown_signal()).await,
        ),
    }
    let functions = match &config.functions {
        None => None,
        Some(f) => Some(
            Functions::start(
                f,
                config.data_dir.value.clone(),
                store,
                broker.bus_maker(),
                metrics.functions.clone(),
                broker.shutdown_signal(),
            )
            .await
            .map_err(|e| RunError::Broker(BrokerError::Link(format!("functions: {e}"))))?,
        ),
    };
    // The rules of the newest committed deployment with rules, when there is one, run instead of
    // grove.toml's (at startup and on a reload); see grove-deploy.
    let link = |e: String| RunError::Broker(BrokerError::Link(format!("deployments: {e}")));
    let deployed = DeployedRules::committed(&deploy_store)
        .await
        .map_err(link)?;
    let rules = deployed.clone().unwrap_or(file_rules);
    let deployed = DeployedRules::new(deployed, reload_tx);
    let slot = deployed.clone();
    let load_rules: LoadRules = Box::new(move || match (slot.current(), &config_path) {
        (Some(rules), _) => Ok(rules),
        (None, Some(path)) => Config::load(path)
            .map(|c| c.rules)
            .map_err(|e| e.to_string()),
        // The gateway runs on the built-in defaults (no file), whose rules these are; not a
        // copy of the running ones kept for this (the engine's rules can be many).
        (None, None) => Ok(Config::defaults().rules),
    });
    let engine = RulesEngine::start(
        broker.bus_maker(),
        Some(load_rules),
        &rules,
        metrics.rules.clone(),
        functions.clone(),
    )
    .await
    .map_err(|e| RunError::Broker(BrokerError::Link(e.to_string())))?;
    info!(
        rules = rules.iter().filter(|r| r.enabled).count(),
        "rules running"
    );
    components.push(tokio::spawn(engine.run(reloads, broker.shutdown_signal())));
    let fetcher = Fetcher::new(
        config.data_dir.value.join("deploy"),
        config
            .deploy
            .artifact_ca
            .as_ref()
            .map(|c| c.value.as_path()),
    )
    .map_err(|e| match &config.deploy.artifact_ca {
        Some(ca) => RunError::Config(ConfigError::Invalid {
            origin: ca.origin.clone(),
            message: e.to_string(),
        }),
        None => link(e.to_string()),
    })?;
    let parts = DeployParts {
        store: deploy_store,
        functions: functions.clone(),
        cloud: config.cloud.is_some(),
        function_metrics: metrics.functions.clone(),
        rules_metrics: metrics.rules.clone(),
        rules: deployed,
        metrics: metrics.deploy.clone(),
        timeouts: Timeouts::default(),
        fetcher,
        // Test-only: see `DeployParts::hold`.
        hold: std::env::var("GROVE_DEPLOY_TEST_HOLD")
            .ok()
            .and_then(|hold| {
                let (id, step) = hold.split_once(':')?;
                Some((id.to_owned(), Phase::parse(step)?))
            }),
    };
    let (deployer, task) = grove_deploy::service::start(parts, broker.shutdown_signal())
        .await
        .map_err(|e| link(e.to_string()))?;
    components.push(task);
    if config.cloud.is_some() {
        components.push(grove_deploy::cloud::start(
            deployer.clone(),
            cloud_jobs_thing.as_deref(),
            rider_rx,
            link_input,
            deploy_status,
            metrics.deploy.clone(),
            broker.shutdown_signal(),
        ));
    }
    if let Err(e) = broker.listen().await {
        broker.shutdown().await;
        return Err(e.into());
    }
    Ok((broker, components, functions, deployer, jobs))
}

/// The cloud link's session, as the deployments publish on it.
struct CloudSession(grove_cloud::Session);

impl CloudPublish for CloudSession {
    fn publish_qos0(&self, topic: &str, payload: Vec<u8>) -> bool {
        self.0.publish_qos0(topic, payload.into())
    }
}

/// The cloud link's events for the deployments' rider, in the deployments' terms.
fn link_input(event: grove_cloud::RiderEvent) -> LinkInput {
    match event {
        grove_cloud::RiderEvent::Up(session) => LinkInput::Up(Box::new(CloudSession(session))),
        grove_cloud::RiderEvent::Down => LinkInput::Down,
        grove_cloud::RiderEvent::Message { topic, payload } => LinkInput::Message {
            topic,
            payload: payload.to_vec(),
        },
    }
}

/// SIGTERM, SIGINT (stop) and SIGHUP (reload the rules), registered with tokio.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns at SIGTERM or SIGINT (also one that arrived before the call); a SIGHUP asks for a
    /// reload of the rules.
    async fn wait(mut self, reloads: mpsc::Sender<Reload>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    info!("SIGHUP: reloading rules");
                    let (done, _outcome) = oneshot::channel();
                    // The engine logs the outcome; a full queue means reloads are already pending.
                    let _ = reloads.try_send(Reload { done });
                }
            }
        }
    }
}
