//! The wasmtime shell: engine, instance pool, compile cache, instantiation, limits and host calls.
//!
//! - One [`Engine`] with the pooling allocator (instance slots are reserved once, so an
//!   instantiation allocates nothing), copy-on-write memory images (a fresh instance maps the
//!   module's data segments instead of copying them) and epoch interruption.
//! - Modules are compiled once: `Engine::precompile_module` writes a `.cwasm` into the data
//!   directory's cache, named by the module's SHA-256 and the engine's compatibility hash, and a
//!   restart (or a redeploy of the same bytes) maps that file with `Module::deserialize_file`.
//! - [`Prepared`] holds an `InstancePre` (imports resolved once), so an invocation only
//!   instantiates; with `instance = "reuse"` it keeps idle instances and does not even do that.
//! - Timeouts: one ticker thread increments the engine's epoch every [`TICK`]; each store gets a
//!   deadline in ticks, and wasmtime traps the guest when it passes (no polling cost beyond a load
//!   and compare at loop headers). Every guest call runs under one: an invocation's (instantiation
//!   and start function included) under the manifest's `timeout_ms`, the deploy/startup check
//!   (instantiation, start function, `grove_abi_version`) under [`CHECK_TIMEOUT`].
//! - Compile time: compiling cannot be interrupted, so what is compiled is bounded first: at most
//!   [`MAX_MODULE_BYTES`] and [`MAX_FUNCTIONS`], read from the module's sections before compiling,
//!   as is an initial memory larger than the manifest's limit (no instance could ever start).
//! - Memory: a [`ResourceLimiter`] per store refuses growth past the manifest's limit (the
//!   pool's slot size is the gateway's cap, so no manifest can exceed it).
//! - Host calls (module `grove`, ABI v1, see `functions/ABI.md`): grants are checked here against
//!   the manifest, then the effect is asked of the [`Host`], which the service implements on the
//!   bus and the store (and the benchmark with a no-op).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{
    Caller, Config, Engine, Instance, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    Module, PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc,
};

use crate::manifest::{InstanceMode, Manifest};

mod host_calls;

use host_calls::define_host_calls;

/// How often the epoch advances: a timeout fires at most this late (plus scheduling).
pub const TICK: Duration = Duration::from_millis(5);

/// Largest body `output` accepts and largest payload `publish` accepts.
pub const MAX_BODY: usize = 1 << 20;

/// Most host calls with effects (publish, shadow updates, kv writes and deletes) one invocation may
/// make.
pub const MAX_EFFECTS: u32 = 1000;

/// The deadline of the check at deploy and at startup: instantiation (the start function) and
/// `grove_abi_version`, which returns a constant. A module that loops there is refused at deploy,
/// and one that starts looping later fails to load instead of holding the gateway's startup.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest module deployed (compile time grows with it: 13 MB took 18.7 s on a 2-core VM).
pub const MAX_MODULE_BYTES: usize = 4 << 20;

/// Most functions a module may define (each is compiled; 60,000 small ones took 18.7 s).
pub const MAX_FUNCTIONS: u32 = 10_000;

/// Longest error message kept from wasmtime (a trap's message carries a backtrace with names the
/// guest chose, as deep as its stack).
const MAX_MESSAGE: usize = 4096;

/// ABI error codes returned to the guest (`functions/ABI.md`).
pub mod code {
    /// No grant for this call.
    pub const DENIED: i32 = -1;
    /// A bad argument.
    pub const INVALID: i32 = -2;
    /// Too large or too many.
    pub const LIMIT: i32 = -3;
    /// Absent.
    pub const NOT_FOUND: i32 = -4;
    /// Timeout or store error.
    pub const UNAVAILABLE: i32 = -5;
    /// The shadow service rejected the request.
    pub const REJECTED: i32 = -6;
}

/// What a host effect can answer besides success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// A bad argument (topic, thing name, document).
    Invalid,
    /// Over a limit (hop limit, size).
    Limit,
    /// Not there.
    NotFound,
    /// Timed out or failed.
    Unavailable,
    /// Refused, with the document saying why (it becomes the pending result).
    Rejected(Vec<u8>),
}

/// A log line's level, as the guest passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// 0.
    Error,
    /// 1.
    Warn,
    /// 2 (and anything unknown).
    Info,
    /// 3.
    Debug,
}

impl Level {
    fn from_i32(level: i32) -> Level {
        match level {
            0 => Level::Error,
            1 => Level::Warn,
            3 => Level::Debug,
            _ => Level::Info,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// The effects a function's host calls have, once the runtime has checked its grants.
///
/// The runtime gives each invocation its own `Host`, and calls [`Host::finish`] at the end, so an
/// implementation can hold effects (publishes, kv writes) until it knows whether the handler
/// succeeded.
pub trait Host: Send + 'static {
    /// Queue a message for the bus.
    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<(), HostError>;
    /// A shadow's `get/accepted` document.
    fn shadow_get(
        &mut self,
        thing: &str,
        name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError>;
    /// Send an update; the `update/accepted` document.
    fn shadow_update(
        &mut self,
        thing: &str,
        name: Option<&str>,
        doc: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError>;
    /// Read a key of the function's namespace.
    fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Write (or, with `None`, delete) a key.
    fn kv_put(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), HostError>;
    /// A guest log line, as the guest passed it (any length, maybe not UTF-8).
    fn log(&mut self, level: Level, message: &[u8]);
    /// A host call refused for lack of a grant.
    fn denied(&mut self, call: &'static str, detail: &str);
    /// The invocation ended (`ok` when the handler returned 0). An error turns a success into a
    /// failure (e.g. the kv writes could not be committed).
    fn finish(self: Box<Self>, ok: bool) -> Result<(), String>;
}

/// Why a module cannot be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    Malformed(String),
    /// Valid WebAssembly, but not Grove's ABI v1 (or its check trapped or timed out).
    #[error("the module does not implement Grove's function ABI v1: {0}")]
    Abi(String),
    /// Over one of the gateway's limits (size, functions, memory), checked before compiling or
    /// when the compiled module is loaded.
    #[error("the module exceeds a limit: {0}")]
    Limit(String),
    /// The compile cache could not be written.
    #[error("cannot write the compiled module cache {}: {message}", path.display())]
    Cache {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The wasmtime engine could not be set up (made at the first deploy or load).
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// How an invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler returned non-zero (its `output` is the message).
    Handler,
    /// The deadline passed (epoch interruption).
    Timeout,
    /// The guest wanted more memory than its limit and trapped.
    Memory,
    /// Any other trap (unreachable, out-of-bounds access, a Rust panic, stack overflow).
    Trap,
    /// No instance slot was free, or instantiation failed.
    Capacity,
    /// The module broke the ABI at run time (e.g. `grove_alloc` returned 0).
    Abi,
    /// The host could not commit the invocation's effects.
    Host,
}

impl FailureKind {
    /// Every kind (the deployments' soak sums a function's errors over them).
    pub const ALL: [FailureKind; 7] = [
        FailureKind::Handler,
        FailureKind::Timeout,
        FailureKind::Memory,
        FailureKind::Trap,
        FailureKind::Capacity,
        FailureKind::Abi,
        FailureKind::Host,
    ];

    /// The name used in answers, DLQ messages, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Handler => "handler_error",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory_limit",
            FailureKind::Trap => "trap",
            FailureKind::Capacity => "capacity",
            FailureKind::Abi => "abi",
            FailureKind::Host => "host",
        }
    }
}

/// A failed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind.
    pub kind: FailureKind,
    /// What happened, for people.
    pub message: String,
}

/// A finished invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The body (handler's `output`) or the failure.
    pub result: Result<Vec<u8>, Failure>,
    /// Wall time of the invocation, host calls included.
    pub duration: Duration,
    /// Host calls refused for lack of a grant.
    pub denied: u32,
}

/// The engine's settings the gateway chooses.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The memory cap of any instance, in MiB (the pool's slot size).
    pub max_memory_mb: u32,
    /// Instances that may exist at once (idle reused ones included).
    pub pool_size: u32,
    /// Where precompiled modules are cached.
    pub cache_dir: PathBuf,
}

/// The wasmtime engine, its host-call linker and the epoch ticker, made when the first module is
/// deployed or loaded: a gateway with no function deployed never builds them. (Built eagerly they
/// were ~2 MiB of its idle resident memory: wasmtime's and cranelift's code paged in to set up
/// the engine and the pooling allocator, and one more thread.)
pub struct Runtime {
    config: RuntimeConfig,
    wasm: OnceLock<Result<Wasm, String>>,
}

/// The engine and what is built with it.
struct Wasm {
    engine: Engine,
    linker: Linker<HostState>,
    engine_hash: u64,
    clock: Arc<EpochClock>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

/// What the epoch ticker waits on: it ticks only while invocations run, so an idle gateway does
/// not wake up 200 times a second (which costs a board's idle CPU for nothing).
#[derive(Default)]
struct EpochClock {
    /// Invocations running now.
    running: Mutex<usize>,
    wake: std::sync::Condvar,
    stop: AtomicBool,
}

/// Counts an invocation as running while it lives.
struct Running<'a>(&'a EpochClock);

impl EpochClock {
    fn start(&self) -> Running<'_> {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.wake.notify_one();
        Running(self)
    }

    /// The ticker's loop: waits while nothing runs, ticks every [`TICK`] while something does.
    fn tick(&self, engine: &Engine) {
        loop {
            {
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                while *running == 0 && !self.stop.load(Ordering::Relaxed) {
                    running = self.wake.wait(running).unwrap_or_else(|p| p.into_inner());
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    }
}

/// A compiled module ready to instantiate, with its manifest and idle instances.
pub struct Prepared {
    pre: InstancePre<HostState>,
    /// The engine it was compiled for, and its epoch clock.
    engine: Engine,
    clock: Arc<EpochClock>,
    manifest: Arc<Manifest>,
    idle: Mutex<Vec<Warm>>,
    /// Whether the compile cache already held this module.
    pub from_cache: bool,
}

impl Prepared {
    /// The manifest it was deployed with.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// A new instance in a new store, its start function under `timeout_ms`.
    fn instantiate(&self, timeout_ms: u64) -> Result<Warm, Failure> {
        let state = HostState {
            limiter: Limiter {
                max_bytes: self.manifest.memory_limit_mb as usize * 1024 * 1024,
                refused: false,
            },
            memory: None,
            manifest: self.manifest.clone(),
            call: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(timeout_ms));
        let fail = |kind, message: String| Failure { kind, message };
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            let (kind, message) = match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => (
                    FailureKind::Timeout,
                    format!("the module's start function did not finish within {timeout_ms} ms"),
                ),
                _ if store.data().limiter.refused => {
                    (FailureKind::Memory, format!("cannot instantiate: {e:#}"))
                }
                Some(_) => (FailureKind::Trap, format!("cannot instantiate: {e:#}")),
                None => (FailureKind::Capacity, format!("cannot instantiate: {e:#}")),
            };
            fail(kind, cut(&message))
        })?;
        let memory = instance.get_memory(&mut store, "memory");
        store.data_mut().memory = memory;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "grove_alloc")
            .map_err(|e| fail(FailureKind::Abi, format!("{e:#}")))?;
        let handler = instance
            .get_typed_func::<(i32, i32, i32, i32), i32>(&mut store, &self.manifest.handler)
            .map_err(|e| fail(FailureKind::Abi, format!("{e:#}")))?;
        Ok(Warm {
            store,
            instance,
            alloc,
            handler,
        })
    }

    /// Drops the idle instances, giving their pool slots back (a superseded version keeps
    /// none: it gets new ones if it is still invoked).
    pub fn release_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// A live instance with its store and exports.
struct Warm {
    store: Store<HostState>,
    instance: Instance,
    alloc: TypedFunc<i32, i32>,
    handler: TypedFunc<(i32, i32, i32, i32), i32>,
}

/// What a store carries: its limiter, the guest's memory, its manifest (set once, so an
/// invocation does not touch a shared reference count), and the current invocation.
struct HostState {
    limiter: Limiter,
    memory: Option<Memory>,
    manifest: Arc<Manifest>,
    call: Option<Call>,
}

/// Per-invocation state of the host calls.
struct Call {
    host: Box<dyn Host>,
    deadline: Instant,
    output: Vec<u8>,
    pending: Option<Vec<u8>>,
    /// The effects made, against [`MAX_EFFECTS`].
    effects: crate::effects::Budget,
    denied: u32,
}

/// Refuses memory growth past the manifest's limit and remembers that it did.
struct Limiter {
    max_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.max_bytes;
        self.refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any real module.
        Ok(desired <= 100_000)
    }
}

impl Wasm {
    /// Builds the engine (the pooling allocator sized by `config`) and starts the epoch ticker.
    fn new(config: &RuntimeConfig) -> Result<Wasm, String> {
        let max_bytes = config.max_memory_mb as usize * 1024 * 1024;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(config.pool_size)
            .total_memories(config.pool_size)
            .total_tables(config.pool_size)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(max_bytes);
        // The pool reserves every slot's address space up front (4 GiB + guards per memory on
        // 64-bit targets). A 32-bit process (armv7, where wasmtime runs its Pulley interpreter)
        // has too little of it, so there instances are allocated on demand; the limiter still
        // caps each one's memory.
        let strategy = if cfg!(target_pointer_width = "64") {
            InstanceAllocationStrategy::Pooling(pool)
        } else {
            InstanceAllocationStrategy::OnDemand
        };
        let mut wasm = Config::new();
        wasm.allocation_strategy(strategy)
            .memory_init_cow(true)
            .epoch_interruption(true);
        let engine = Engine::new(&wasm).map_err(|e| e.to_string())?;
        let mut linker = Linker::new(&engine);
        define_host_calls(&mut linker).map_err(|e| e.to_string())?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let clock = Arc::new(EpochClock::default());
        let ticker = {
            let engine = engine.clone();
            let clock = clock.clone();
            std::thread::Builder::new()
                .name("grove-fn-epoch".into())
                .spawn(move || clock.tick(&engine))
                .map_err(|e| e.to_string())?
        };
        Ok(Wasm {
            engine,
            linker,
            engine_hash: h.finish(),
            clock,
            ticker: Some(ticker),
        })
    }
}

impl Runtime {
    /// A runtime with these settings; the engine is built on first use.
    pub fn new(config: &RuntimeConfig) -> Runtime {
        Runtime {
            config: config.clone(),
            wasm: OnceLock::new(),
        }
    }

    /// The engine, built and its epoch ticker started the first time this is called.
    fn wasm(&self) -> Result<&Wasm, DeployError> {
        self.wasm
            .get_or_init(|| Wasm::new(&self.config))
            .as_ref()
            .map_err(|e| DeployError::Engine(e.clone()))
    }
    /// The cache file of a module's bytes for this engine.
    fn cache_path(&self, wasm: &Wasm, module: &[u8]) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, module);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.config
            .cache_dir
            .join(format!("{hex}-{:016x}.cwasm", wasm.engine_hash))
    }

    /// Compiles (or maps from the cache) and checks a module against the ABI and the manifest.
    pub fn prepare(&self, module: &[u8], manifest: Arc<Manifest>) -> Result<Prepared, DeployError> {
        check_shape(module, &manifest)?;
        let wasm = self.wasm()?;
        let path = self.cache_path(wasm, module);
        let cached = match path.exists().then(|| load_cached(&wasm.engine, &path)) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring an unusable compiled module");
                None
            }
            None => None,
        };
        let from_cache = cached.is_some();
        let module = match cached {
            Some(m) => m,
            None => {
                let compiled = wasm
                    .engine
                    .precompile_module(module)
                    .map_err(|e| DeployError::Malformed(cut(&format!("{e:#}"))))?;
                write_atomically(&path, &compiled).map_err(|e| DeployError::Cache {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                drop(compiled);
                // Loading checks the module against the engine's limits (the pool's slot sizes):
                // a refusal is the module's fault (the cause is the last in the chain, after the
                // file's name), and its file must not stay in the cache.
                load_cached(&wasm.engine, &path).map_err(|e| {
                    let _ = std::fs::remove_file(&path);
                    DeployError::Limit(cut(&e.root_cause().to_string()))
                })?
            }
        };
        check_exports(&module, &manifest.handler)?;
        let pre = wasm
            .linker
            .instantiate_pre(&module)
            .map_err(|e| DeployError::Abi(format!("{e:#}")))?;
        let prepared = Prepared {
            pre,
            engine: wasm.engine.clone(),
            clock: wasm.clock.clone(),
            manifest,
            idle: Mutex::new(Vec::new()),
            from_cache,
        };
        // The version check runs the guest: under the manifest's memory limit, like an
        // invocation, and under the check's own deadline (the ticker must run meanwhile).
        let clock = prepared.clock.clone();
        let _running = clock.start();
        let timeout_ms = CHECK_TIMEOUT.as_millis() as u64;
        let mut warm = prepared
            .instantiate(timeout_ms)
            .map_err(|f| DeployError::Abi(f.message))?;
        let version = warm
            .instance
            .get_typed_func::<(), i32>(&mut warm.store, "grove_abi_version")
            .map_err(|e| DeployError::Abi(format!("{e:#}")))?
            .call(&mut warm.store, ())
            .map_err(|e| match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => DeployError::Abi(format!(
                    "grove_abi_version did not return within {timeout_ms} ms"
                )),
                _ => DeployError::Abi(cut(&format!("grove_abi_version trapped: {e:#}"))),
            })?;
        if version != 1 {
            return Err(DeployError::Abi(format!(
                "grove_abi_version returned {version}; this gateway speaks version 1"
            )));
        }
        Ok(prepared)
    }

    /// Runs the handler of `p` on one event. Blocks the calling thread (host calls may wait on
    /// the shadow service): call it from a blocking thread, never from an async task.
    pub fn invoke(
        &self,
        p: &Prepared,
        topic: &str,
        payload: &[u8],
        host: Box<dyn Host>,
    ) -> Outcome {
        let _running = p.clock.start();
        let started = Instant::now();
        let reuse = p.manifest.instance == InstanceMode::Reuse;
        let idle = if reuse {
            p.idle.lock().map(|mut v| v.pop()).unwrap_or(None)
        } else {
            None
        };
        let mut warm = match idle
            .map(Ok)
            .unwrap_or_else(|| p.instantiate(p.manifest.timeout_ms))
        {
            Ok(w) => w,
            Err(failure) => {
                let _ = host.finish(false);
                return Outcome {
                    result: Err(failure),
                    duration: started.elapsed(),
                    denied: 0,
                };
            }
        };
        let deadline = started + Duration::from_millis(p.manifest.timeout_ms);
        warm.store.set_epoch_deadline(ticks(p.manifest.timeout_ms));
        warm.store.data_mut().limiter.refused = false;
        warm.store.data_mut().call = Some(Call {
            host,
            deadline,
            output: Vec::new(),
            pending: None,
            effects: crate::effects::Budget::default(),
            denied: 0,
        });
        let ran = run_handler(&mut warm, topic, payload);
        let refused = warm.store.data().limiter.refused;
        let Some(call) = warm.store.data_mut().call.take() else {
            unreachable!("the call was set above and only taken here")
        };
        let denied = call.denied;
        let result = match ran {
            Ok(0) => Ok(call.output),
            Ok(status) => Err(Failure {
                kind: FailureKind::Handler,
                message: if call.output.is_empty() {
                    format!("the handler returned {status}")
                } else {
                    String::from_utf8_lossy(&call.output).into_owned()
                },
            }),
            Err(RunError::Abi(message)) => Err(Failure {
                kind: FailureKind::Abi,
                message,
            }),
            Err(RunError::Wasm(e)) => Err(classify(&e, refused, p.manifest.timeout_ms)),
        };
        // A trapped instance may be in any state: only one that returned normally is kept.
        let keep = reuse
            && matches!(
                result,
                Ok(_)
                    | Err(Failure {
                        kind: FailureKind::Handler,
                        ..
                    })
            );
        let result = match call.host.finish(result.is_ok()) {
            Err(message) if result.is_ok() => Err(Failure {
                kind: FailureKind::Host,
                message,
            }),
            _ => result,
        };
        if keep {
            if let Ok(mut idle) = p.idle.lock() {
                if idle.len() < p.manifest.max_concurrency as usize {
                    idle.push(warm);
                }
            }
        }
        Outcome {
            result,
            duration: started.elapsed(),
            denied,
        }
    }
}

impl Drop for Wasm {
    fn drop(&mut self) {
        {
            // Under the lock, so the ticker cannot miss it between its check and its wait.
            let _running = self.clock.running.lock().unwrap_or_else(|p| p.into_inner());
            self.clock.stop.store(true, Ordering::Relaxed);
        }
        self.clock.wake.notify_all();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// Why running the handler stopped early.
enum RunError {
    /// The guest broke the ABI (bad pointer from `grove_alloc`).
    Abi(String),
    /// wasmtime's error: a trap, the deadline, or a host call's error.
    Wasm(wasmtime::Error),
}

/// Copies the event into the guest and calls the handler.
fn run_handler(warm: &mut Warm, topic: &str, payload: &[u8]) -> Result<i32, RunError> {
    let total = topic.len() + payload.len();
    let size = i32::try_from(total).map_err(|_| RunError::Abi("the event is too large".into()))?;
    let ptr = warm
        .alloc
        .call(&mut warm.store, size)
        .map_err(RunError::Wasm)?;
    let memory = warm
        .store
        .data()
        .memory
        .ok_or_else(|| RunError::Abi("the module exports no memory".into()))?;
    let start = usize::try_from(ptr).unwrap_or(0);
    if ptr == 0 && total > 0 {
        return Err(RunError::Abi(
            "grove_alloc returned 0 (out of memory)".into(),
        ));
    }
    let data = memory.data_mut(&mut warm.store);
    let dest = data
        .get_mut(start..start + total)
        .ok_or_else(|| RunError::Abi(format!("grove_alloc returned {ptr}, outside memory")))?;
    dest[..topic.len()].copy_from_slice(topic.as_bytes());
    dest[topic.len()..].copy_from_slice(payload);
    let topic_len = topic.len() as i32;
    warm.handler
        .call(
            &mut warm.store,
            (ptr, topic_len, ptr + topic_len, payload.len() as i32),
        )
        .map_err(RunError::Wasm)
}

/// Names a wasmtime error after what caused it.
fn classify(e: &wasmtime::Error, memory_refused: bool, timeout_ms: u64) -> Failure {
    let (kind, message) = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (
            FailureKind::Timeout,
            format!("the invocation did not finish within {timeout_ms} ms"),
        ),
        _ if memory_refused => (
            FailureKind::Memory,
            cut(&format!(
                "the function exceeded its memory limit and trapped: {e:#}"
            )),
        ),
        _ => (
            FailureKind::Trap,
            cut(&format!("the function trapped: {e:#}")),
        ),
    };
    Failure { kind, message }
}

/// The epoch deadline, in ticks, for a timeout: rounded up, plus one because the current tick may
/// be about to end.
fn ticks(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(TICK.as_millis() as u64) + 1
}

/// A wasmtime message cut to [`MAX_MESSAGE`].
fn cut(message: &str) -> String {
    super::logs::cut(message.as_bytes(), MAX_MESSAGE).into_owned()
}

/// Refuses, before compiling, a module over [`MAX_MODULE_BYTES`] or [`MAX_FUNCTIONS`], or whose
/// initial memory is larger than the manifest's limit. Only the section headers are read; a
/// malformed module is left for the compiler to describe.
fn check_shape(wasm: &[u8], manifest: &Manifest) -> Result<(), DeployError> {
    use wasmparser::Payload;
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(DeployError::Limit(format!(
            "it is {} bytes; the gateway compiles modules of at most {MAX_MODULE_BYTES} bytes",
            wasm.len()
        )));
    }
    let limit = u64::from(manifest.memory_limit_mb) << 20;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::FunctionSection(s)) if s.count() > MAX_FUNCTIONS => {
                return Err(DeployError::Limit(format!(
                    "it defines {} functions; the gateway compiles modules of at most \
                     {MAX_FUNCTIONS}",
                    s.count()
                )));
            }
            Ok(Payload::MemorySection(s)) => {
                for memory in s.into_iter().flatten() {
                    let bytes = memory.initial.saturating_mul(1 << 16);
                    if bytes > limit {
                        return Err(DeployError::Limit(format!(
                            "its initial memory is {} MiB, more than its memory_limit_mb ({})",
                            bytes >> 20,
                            manifest.memory_limit_mb
                        )));
                    }
                }
            }
            // The code itself is not needed: skip it unparsed.
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Maps a cached `.cwasm`, or says why it is unusable (then it is compiled again and
/// overwritten, or, just compiled, refused).
fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output. The cache directory
    // is inside Grove's data directory and only Grove writes it (`write_atomically`, from
    // `Engine::precompile_module`); the file name carries the engine's compatibility hash, and
    // wasmtime checks its header (version, target, engine settings) before using it. Anyone able
    // to write there could equally replace the database or the binary.
    #[allow(unsafe_code)]
    unsafe {
        Module::deserialize_file(engine, path)
    }
}

/// Writes a file so that readers see the old or the new content, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk must not also keep the part written.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks the exports ABI v1 requires, with their types, so a wrong module is refused by name.
fn check_exports(module: &Module, handler: &str) -> Result<(), DeployError> {
    use wasmtime::{ExternType, ValType};
    let func = |name: &str, params: &[&str], results: &[&str]| -> Result<(), DeployError> {
        let want = format!("({}) -> ({})", params.join(", "), results.join(", "));
        let Some(ty) = module.get_export(name) else {
            return Err(DeployError::Abi(format!(
                "it does not export `{name}`: {want}"
            )));
        };
        let ExternType::Func(f) = ty else {
            return Err(DeployError::Abi(format!(
                "export `{name}` is not a function"
            )));
        };
        let show = |t: ValType| match t {
            ValType::I32 => "i32".to_owned(),
            ValType::I64 => "i64".to_owned(),
            other => other.to_string(),
        };
        let got_params: Vec<String> = f.params().map(show).collect();
        let got_results: Vec<String> = f.results().map(show).collect();
        if got_params != params || got_results != results {
            return Err(DeployError::Abi(format!(
                "export `{name}` has type ({}) -> ({}), not {want}",
                got_params.join(", "),
                got_results.join(", ")
            )));
        }
        Ok(())
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        _ => return Err(DeployError::Abi("it does not export its `memory`".into())),
    }
    func("grove_abi_version", &[], &["i32"])?;
    func("grove_alloc", &["i32"], &["i32"])?;
    func(handler, &["i32", "i32", "i32", "i32"], &["i32"])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "grove_abi_version") (result i32) (i32.const 1))
      (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "grove_handle") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#;

    fn manifest() -> Arc<Manifest> {
        Arc::new(Manifest::parse("name = \"f\"", 64).unwrap())
    }

    #[test]
    fn the_compile_cache_is_reused_and_a_corrupt_entry_is_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(&RuntimeConfig {
            max_memory_mb: 64,
            pool_size: 4,
            cache_dir: dir.path().to_owned(),
        });
        let wasm = wat::parse_str(MODULE).unwrap();
        assert!(!rt.prepare(&wasm, manifest()).unwrap().from_cache);
        assert!(rt.prepare(&wasm, manifest()).unwrap().from_cache);
        let entry = rt.cache_path(rt.wasm().unwrap(), &wasm);
        std::fs::write(&entry, b"not a compiled module").unwrap();
        let p = rt.prepare(&wasm, manifest()).unwrap();
        assert!(!p.from_cache, "the corrupt entry was not trusted");
        assert!(rt.prepare(&wasm, manifest()).unwrap().from_cache);
    }

    /// A gateway with no function deployed never sets up wasmtime (memory, a thread).
    #[test]
    fn the_engine_is_built_by_the_first_module_only() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(&RuntimeConfig {
            max_memory_mb: 64,
            pool_size: 4,
            cache_dir: dir.path().to_owned(),
        });
        assert!(rt.wasm.get().is_none());
        rt.prepare(&wat::parse_str(MODULE).unwrap(), manifest())
            .unwrap();
        assert!(rt.wasm.get().is_some_and(Result::is_ok));
    }

    /// One case per line: the module's items, and a fragment of the refusal (or `None`).
    #[test]
    fn the_shape_check_refuses_what_would_compile_too_long_or_never_start() {
        let functions = "(func)".repeat(MAX_FUNCTIONS as usize + 1);
        let big = format!(
            "(memory 1) (data (i32.const 0) \"{}\")",
            "a".repeat(MAX_MODULE_BYTES)
        );
        let cases: &[(&str, Option<&str>)] = &[
            ("(memory 1)", None),
            ("(memory 256)", None),
            (
                "(memory 257)",
                Some("initial memory is 16 MiB, more than its memory_limit_mb (16)"),
            ),
            ("(memory 65536)", Some("initial memory is 4096 MiB")),
            (&functions, Some("it defines 10001 functions")),
            (&big, Some("modules of at most 4194304 bytes")),
        ];
        let manifest = Manifest::parse("name = \"f\"", 64).unwrap();
        for (items, want) in cases {
            let wasm = wat::parse_str(format!("(module {items})")).unwrap();
            match (check_shape(&wasm, &manifest), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e}"),
                (got, want) => panic!("{:.40}: {got:?}, wanted {want:?}", items),
            }
        }
    }

    #[test]
    fn deadlines_round_up_to_whole_ticks_plus_one() {
        let tick = TICK.as_millis() as u64;
        assert_eq!(ticks(1), 2);
        assert_eq!(ticks(tick), 2);
        assert_eq!(ticks(tick + 1), 3);
        assert_eq!(ticks(1000), 1000 / tick + 1);
    }
}
