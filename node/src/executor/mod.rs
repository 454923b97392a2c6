//! Sandboxed job execution: runs WebAssembly jobs (WASI preview 1 commands) under wasmtime and
//! turns whatever happens into a protocol [`Outcome`] and metered [`Usage`].
//!
//! Owns the wasmtime [`Engine`] and its pooling allocator, the WASI [`Linker`], the cache of
//! compiled modules, the epoch ticker thread and the job slots (a semaphore as wide as the pool).
//!
//! ```text
//!  market ──run(JobInput)──▶ Executor ──wait for a slot (≤ max_concurrency)──▶ spawn_blocking
//!                               │                                                   │
//!                               └──▶ cache: SHA-256(module) → compiled, linked ──▶  │
//!                                                                                   ▼
//!  ticker thread ──increment_epoch every 10 ms──▶ Engine        one Store per job: fuel, epoch
//!                                                               deadline, memory limiter, WASI
//!                                                               context, in-memory stdio
//! ```
//!
//! Files: `job.rs` runs one job and classifies how it ended; `wasi.rs` is what the guest sees
//! (stdio, virtual clocks, fixed random, a non-blocking `poll_oneoff`); `limiter.rs` enforces
//! and measures memory; `cache.rs` keeps compiled modules.
//!
//! Must never:
//! - let a wasmtime type escape: callers see `suanli-protocol` types, bytes and strings only;
//! - call wasmtime's sync API on a tokio worker (the WASI shims block on a runtime and panic
//!   there): every run goes through `spawn_blocking`;
//! - hand a job anything of the host: no files, no network, no inherited arguments, environment
//!   or stdio, no real clock, no real entropy. Besides safety, that is what makes a job give the
//!   same output and the same fuel on every provider, so receipts can be compared;
//! - fail or crash the node because of a job: a bad module, a trap, an exhausted budget or even a
//!   panic inside wasmtime comes back as `Outcome::Failed` with a reason.
//!
//! Determinism: fuel counts wasm operators, so it is identical across runs, machines and engine
//! configurations; NaN bit patterns and relaxed SIMD are canonicalised so floating point agrees
//! across CPU architectures; guest clocks are virtual (see `wasi.rs`) and random bytes are a
//! fixed stream. Only wall time is not deterministic, which is why it is never the basis of the
//! cost.

mod cache;
mod job;
mod limiter;
mod wasi;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use suanli_protocol::Hash32;
use suanli_protocol::Limits;
use suanli_protocol::job::{MAX_MEMORY_BYTES, MAX_MODULE_BYTES};
use suanli_protocol::negotiation::{FailureReason, MAX_MESSAGE_BYTES, Outcome, Usage};
use tokio::sync::Semaphore;
use tracing::warn;
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

use self::cache::ModuleCache;
use self::job::JobState;

/// How often the ticker advances the engine epoch: the granularity of wall-time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Compiled modules kept; beyond it the least recently used is dropped.
const MAX_CACHED_MODULES: usize = 64;
/// Most concurrent jobs an executor may be configured for. Every slot reserves about 4 GiB of
/// address space (not memory) in the pooling allocator, so this keeps the pool within reach.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Smallest memory ceiling an executor accepts: one wasm page.
const MIN_MEMORY_BYTES: u64 = 64 * 1024;
/// Most linear memories and tables a module may define. Rust and C toolchains emit one of each;
/// the limit is checked explicitly so a module is valid or invalid on every node alike, whatever
/// allocator the node ended up with.
const MAX_MEMORIES_PER_MODULE: u32 = 1;
const MAX_TABLES_PER_MODULE: u32 = 1;
/// Most elements of a module's table (8 bytes of host memory each, outside the memory limit).
const MAX_TABLE_ELEMENTS: u32 = 100_000;

/// How the executor is sized. Maps onto the node's `[executor]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Jobs run at once; more wait for a slot. Sizes the pooling allocator. Default: the number
    /// of available cores.
    pub max_concurrency: u32,
    /// The most linear memory any job gets, whatever its own limit says. Default: 256 MiB; at
    /// most 4 GiB (wasm32).
    pub max_memory_bytes: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        ExecutorConfig {
            max_concurrency: u32::try_from(cores)
                .unwrap_or(MAX_CONCURRENCY)
                .min(MAX_CONCURRENCY),
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why the executor could not start, or why a module cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid executor config: {0}")]
    Config(String),
    #[error("could not create the wasmtime engine: {0}")]
    Engine(String),
    #[error("could not start the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
    /// The module does not compile, does not link against WASI preview 1, has no `_start`, or
    /// breaks a size rule. The message says which.
    #[error("invalid module: {0}")]
    InvalidModule(String),
}

/// One job to run: the module and everything the guest sees.
#[derive(Clone)]
pub struct JobInput {
    /// A wasm binary or WAT text; its hash is plain SHA-256 of these bytes.
    pub module: Arc<Vec<u8>>,
    /// `argv[1..]`; `argv[0]` is always `"job"`.
    pub args: Vec<String>,
    /// The whole environment of the guest.
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    pub limits: Limits,
}

impl fmt::Debug for JobInput {
    // Modules and stdin can be megabytes: never dump them into a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobInput")
            .field("module_bytes", &self.module.len())
            .field("args", &self.args)
            .field("env", &self.env)
            .field("stdin_bytes", &self.stdin.len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// How a run ended, what it used, and what it wrote.
#[derive(Clone, PartialEq, Eq)]
pub struct RunResult {
    pub outcome: Outcome,
    pub usage: Usage,
    /// At most `limits.output_bytes` (truncated when the job wrote more).
    pub stdout: Vec<u8>,
    /// At most 64 KiB; not billed, not hashed, for diagnostics.
    pub stderr: Vec<u8>,
}

impl fmt::Debug for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunResult")
            .field("outcome", &self.outcome)
            .field("usage", &self.usage)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr_bytes", &self.stderr.len())
            .finish()
    }
}

impl RunResult {
    /// A run that failed before or without output.
    fn failed(reason: FailureReason, message: &str, usage: Usage) -> RunResult {
        RunResult {
            outcome: Outcome::Failed {
                reason,
                message: truncate_message(message),
            },
            usage,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}

/// Runs jobs. Cheap to clone; all clones share the engine, the cache and the slots.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    config: ExecutorConfig,
    engine: Engine,
    linker: Linker<JobState>,
    cache: ModuleCache<InstancePre<JobState>>,
    /// One permit per pool slot: a job holds one from before its Store exists until after it is
    /// dropped, so the pool is never asked for more instances than it has.
    slots: Arc<Semaphore>,
    pooling: bool,
    /// The bytes guests get from `random_get`, cycled (see `wasi.rs`).
    random: Arc<[u8]>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.inner.config)
            .field("pooling", &self.inner.pooling)
            .field("cached_modules", &self.inner.cache.len())
            .field("free_slots", &self.inner.slots.available_permits())
            .finish()
    }
}

/// Which instance allocator to build the engine with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allocation {
    /// The pooling allocator, falling back to on-demand if the pool cannot be reserved.
    PreferPooling,
    /// On-demand allocation only (tests compare the two).
    #[cfg_attr(not(test), allow(dead_code))]
    OnDemand,
}

impl Executor {
    /// Builds the engine (pooling allocator sized to `config`, or on-demand allocation if the
    /// pool's address space cannot be reserved), the WASI linker and the epoch ticker.
    pub fn new(config: ExecutorConfig) -> Result<Executor, ExecutorError> {
        Executor::with_allocation(config, Allocation::PreferPooling)
    }

    fn with_allocation(
        config: ExecutorConfig,
        allocation: Allocation,
    ) -> Result<Executor, ExecutorError> {
        if config.max_concurrency == 0 || config.max_concurrency > MAX_CONCURRENCY {
            return Err(ExecutorError::Config(format!(
                "max_concurrency must be between 1 and {MAX_CONCURRENCY}, got {}",
                config.max_concurrency
            )));
        }
        if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&config.max_memory_bytes) {
            return Err(ExecutorError::Config(format!(
                "max_memory_bytes must be between {MIN_MEMORY_BYTES} and {MAX_MEMORY_BYTES}, got \
                 {}",
                config.max_memory_bytes
            )));
        }
        let (engine, pooling) = match allocation {
            Allocation::PreferPooling => match Engine::new(&engine_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(error) => {
                    // Typically an address-space limit (ulimit -v): the pool reserves ~4 GiB
                    // per slot up front. On-demand allocation is slower to instantiate but
                    // enforces exactly the same limits.
                    warn!(
                        error = %format_args!("{error:#}"),
                        "pooling allocator unavailable, using on-demand allocation"
                    );
                    (on_demand_engine(&config)?, false)
                }
            },
            Allocation::OnDemand => (on_demand_engine(&config)?, false),
        };
        let linker = wasi::linker(&engine)
            .map_err(|error| ExecutorError::Engine(format!("WASI linker: {error:#}")))?;
        start_epoch_ticker(&engine)?;
        Ok(Executor {
            inner: Arc::new(Inner {
                config,
                engine,
                linker,
                cache: ModuleCache::new(MAX_CACHED_MODULES),
                slots: Arc::new(Semaphore::new(config.max_concurrency as usize)),
                pooling,
                random: wasi::random_bytes(),
            }),
        })
    }

    /// Compiles (or takes from the cache) a module; an invalid module is an error with a clear
    /// message. Returns the module hash (SHA-256 of the bytes as given).
    ///
    /// Compiling is CPU work (milliseconds for small modules, up to seconds for an 8 MiB one):
    /// from async code prefer [`Executor::prepare`].
    pub fn check_module(&self, module: &[u8]) -> Result<Hash32, ExecutorError> {
        self.inner.prepare(module).map(|(hash, _)| hash)
    }

    /// [`Executor::check_module`] on a blocking thread.
    pub async fn prepare(&self, module: Arc<Vec<u8>>) -> Result<Hash32, ExecutorError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.prepare(&module)).await {
            Ok(result) => result.map(|(hash, _)| hash),
            Err(error) => Err(ExecutorError::InvalidModule(format!(
                "compilation did not finish: {}",
                join_error_message(error)
            ))),
        }
    }

    /// Runs one job to completion on a blocking thread; never panics, never fails the node.
    ///
    /// Waits for a free slot first (at most `max_concurrency` jobs run at once). Dropping the
    /// returned future does not stop a job that has started: it runs on until it ends or hits
    /// its fuel or wall-time limit, holding its slot.
    pub async fn run(&self, job: JobInput) -> RunResult {
        let Ok(permit) = self.inner.slots.clone().acquire_owned().await else {
            // The semaphore is never closed; kept as a failure rather than a panic.
            return RunResult::failed(
                FailureReason::Cancelled,
                "executor is shut down",
                Usage::default(),
            );
        };
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Declared first, dropped last: after the job's Store has released its pool slot.
            let _permit = permit;
            inner.run_blocking(job)
        });
        match task.await {
            Ok(result) => result,
            Err(error) => {
                let message = join_error_message(error);
                warn!(%message, "executor task failed");
                // The protocol has no "provider fault" reason; Trap is the closest, and the
                // message says it was the executor, not the guest.
                RunResult::failed(
                    FailureReason::Trap,
                    &format!("internal executor error: {message}"),
                    Usage::default(),
                )
            }
        }
    }

    /// The configuration this executor was built with.
    pub fn config(&self) -> ExecutorConfig {
        self.inner.config
    }

    /// Whether the pooling allocator is in use (false after a fallback to on-demand).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Slots free right now (for load reporting).
    pub fn free_slots(&self) -> usize {
        self.inner.slots.available_permits()
    }

    /// Whether a job with these limits runs with the memory it asks for on this node. A job
    /// asking for more still runs, capped at `max_memory_bytes`, and may end as `MemoryLimit`
    /// where a bigger node would succeed: the market should decline it instead.
    pub fn fits(&self, limits: &Limits) -> bool {
        limits.memory_bytes <= self.inner.config.max_memory_bytes
    }
}

impl Inner {
    /// The cached or freshly compiled, linked module for `module`.
    fn prepare(&self, module: &[u8]) -> Result<(Hash32, InstancePre<JobState>), ExecutorError> {
        let invalid = ExecutorError::InvalidModule;
        if module.len() > MAX_MODULE_BYTES {
            return Err(invalid(format!(
                "module is {} bytes, at most {MAX_MODULE_BYTES}",
                module.len()
            )));
        }
        let hash = Hash32::of(module);
        if let Some(pre) = self.cache.get(&hash) {
            return Ok((hash, pre));
        }
        let compiled =
            Module::new(&self.engine, module).map_err(|error| invalid(format!("{error:#}")))?;
        let resources = compiled.resources_required();
        if resources.num_memories > MAX_MEMORIES_PER_MODULE
            || resources.num_tables > MAX_TABLES_PER_MODULE
        {
            return Err(invalid(format!(
                "module defines {} memories and {} tables, at most {MAX_MEMORIES_PER_MODULE} and \
                 {MAX_TABLES_PER_MODULE}",
                resources.num_memories, resources.num_tables
            )));
        }
        if resources
            .max_initial_table_size
            .is_some_and(|elements| elements > u64::from(MAX_TABLE_ELEMENTS))
        {
            return Err(invalid(format!(
                "module's table starts above {MAX_TABLE_ELEMENTS} elements"
            )));
        }
        match compiled.get_export("_start") {
            Some(ExternType::Func(start))
                if start.params().len() == 0 && start.results().len() == 0 => {}
            Some(_) => {
                return Err(invalid(
                    "export `_start` is not a function without parameters and results".into(),
                ));
            }
            None => {
                return Err(invalid(
                    "module exports no `_start` function (only WASI commands can run)".into(),
                ));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&compiled)
            .map_err(|error| invalid(format!("cannot link against WASI preview 1: {error:#}")))?;
        self.cache.insert(hash, pre.clone());
        Ok((hash, pre))
    }

    fn run_blocking(&self, job: JobInput) -> RunResult {
        let pre = match self.prepare(&job.module) {
            Ok((_, pre)) => pre,
            Err(ExecutorError::InvalidModule(message)) => {
                return RunResult::failed(FailureReason::InvalidModule, &message, Usage::default());
            }
            Err(error) => {
                return RunResult::failed(
                    FailureReason::InvalidModule,
                    &error.to_string(),
                    Usage::default(),
                );
            }
        };
        job::run(
            &self.engine,
            &pre,
            job,
            self.config.max_memory_bytes,
            &self.random,
        )
    }
}

/// Engine settings shared by both allocators.
fn engine_config(config: &ExecutorConfig, pooling: bool) -> Config {
    let mut wasm = Config::new();
    wasm.consume_fuel(true)
        .epoch_interruption(true)
        // Without these, NaN payloads and relaxed-SIMD results depend on the CPU, and two
        // providers could hash different outputs for the same job.
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true);
    if pooling {
        let slots = config.max_concurrency;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .total_stacks(slots)
            .total_component_instances(0)
            .max_memories_per_module(MAX_MEMORIES_PER_MODULE)
            .max_tables_per_module(MAX_TABLES_PER_MODULE)
            .table_elements(MAX_TABLE_ELEMENTS as usize)
            // Slots are sized to the 4 GiB wasm32 maximum, not to `max_memory_bytes`: a slot
            // takes the 4 GiB memory reservation in address space either way, and a smaller
            // pool maximum would make wasmtime reject, at compile time, modules whose initial
            // memory is above it: "invalid module" on this node, valid on a bigger one. The
            // per-job limiter enforces `max_memory_bytes` and reports MemoryLimit instead.
            .max_memory_size(MAX_MEMORY_BYTES as usize);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
}

fn on_demand_engine(config: &ExecutorConfig) -> Result<Engine, ExecutorError> {
    Engine::new(&engine_config(config, false))
        .map_err(|error| ExecutorError::Engine(format!("{error:#}")))
}

/// Starts the thread that advances the engine epoch, the clock of every Store's wall-time
/// deadline. It holds the engine weakly, so it ends within a tick of the last Executor clone.
fn start_epoch_ticker(engine: &Engine) -> Result<(), ExecutorError> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("suanli-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                engine.increment_epoch();
            }
        })
        .map_err(ExecutorError::Ticker)?;
    Ok(())
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] on a char boundary, as receipts require.
fn truncate_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// The panic message of a failed blocking task, or why it did not finish.
fn join_error_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let payload = error.into_panic();
    if let Some(message) = payload.downcast_ref::<&str>() {
        format!("panic: {message}")
    } else if let Some(message) = payload.downcast_ref::<String>() {
        format!("panic: {message}")
    } else {
        "panic".into()
    }
}
