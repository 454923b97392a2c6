//! Sandboxed job execution: runs WebAssembly jobs (WASI preview 1 commands) under wasmtime and
//! turns whatever happens into a protocol [`Outcome`] and metered [`Usage`].
//!
//! Owns the wasmtime [`Engine`] and its pooling allocator, the WASI [`Linker`], the compile pool,
//! the cache of compiled modules, the epoch ticker thread and the job slots (a semaphore as wide
//! as the pool).
//!
//! ```text
//!  market ──prepare(module)──▶ Executor ─┐ (submission: is the module acceptable?)
//!  market ──run(JobInput)────▶ Executor ─┤
//!                                        ▼
//!     spawn_blocking: SHA-256, cache lookup ──hit──────────────────────────────┐
//!                     WAT → binary, complexity caps (complexity.rs) ──refused──▶ error
//!                                        │ miss                                 │
//!                                        ▼                                      │
//!     compile pool: ≤ compile_threads at once on blocking threads, ≤ compile_queue│waiting
//!                   (prepare: beyond it "busy"; run: waits, cancellable)        │
//!                     Module::from_binary, link ──▶ cache (LRU, bytes + count) ─┤
//!                                                                               ▼ run only
//!     wait for a slot (≤ max_concurrency, cancellable) ──▶ spawn_blocking: one Store per job:
//!     compile fuel charged, fuel, memory limiter, WASI context, in-memory stdio, and a
//!     callback at every epoch tick (ticker thread, 10 ms) that ends the run on cancellation
//!     or at its wall-time deadline
//! ```
//!
//! Files: `complexity.rs` decides whether a module may be compiled at all; `job.rs` runs one
//! job and classifies how it ended; `wasi.rs` is what the guest sees (stdio, virtual clocks,
//! fixed random, a non-blocking `poll_oneoff`); `limiter.rs` enforces and measures memory;
//! `cache.rs` keeps compiled modules.
//!
//! Compiling is work that fuel does not meter, so it is bounded three ways: the protocol's
//! complexity caps ([`suanli_protocol::job::complexity`]) refuse, before compiling, any module
//! whose estimated compile cost is above about half a second here (a 300,000-function bomb is
//! refused after reading its function section); at most `compile_threads` modules compile at
//! once; and every run is charged [`compile_fuel`] for its module, deducted from its fuel
//! budget before the module runs, on a cache hit too, so every provider bills a job alike.
//!
//! A job can be stopped: [`JobInput::cancel`] is checked while it waits for the compile pool or
//! a slot, and at every epoch tick while it runs; a cancelled run ends within a tick or two as
//! `Failed { reason: Cancelled }` and gives its slot back.
//!
//! Must never:
//! - let a wasmtime type escape: callers see `suanli-protocol` types, bytes and strings only;
//! - call wasmtime's sync API on a tokio worker (the WASI shims block on a runtime and panic
//!   there): every compile and run goes through `spawn_blocking`;
//! - compile a module it has not checked against the complexity caps, or more modules at once
//!   than the compile pool allows;
//! - hand a job anything of the host: no files, no network, no inherited arguments, environment
//!   or stdio, no real clock, no real entropy. Besides safety, that is what makes a job give the
//!   same output and the same fuel on every provider, so receipts can be compared;
//! - fail or crash the node because of a job: a bad module, a trap, an exhausted budget or even a
//!   panic inside wasmtime comes back as `Outcome::Failed` with a reason.
//!
//! Determinism: fuel counts wasm operators, so it is identical across runs, machines and engine
//! configurations; the compile charge depends on the module's length only; NaN bit patterns and
//! relaxed SIMD are canonicalised so floating point agrees across CPU architectures; guest
//! clocks are virtual (see `wasi.rs`) and random bytes are a fixed stream. Only wall time is not
//! deterministic, which is why it is never the basis of the cost.

mod cache;
mod complexity;
mod job;
mod limiter;
mod wasi;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use suanli_protocol::Hash32;
use suanli_protocol::Limits;
use suanli_protocol::job::{MAX_MEMORY_BYTES, MAX_MODULE_BYTES, MAX_WALL_TIME_MS, compile_fuel};
use suanli_protocol::negotiation::{
    FailureReason, MAX_MESSAGE_BYTES, Outcome, Usage, WALL_TIME_GRACE_MS,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

use self::cache::ModuleCache;
use self::complexity::Refusal;
use self::job::JobState;

/// How often the ticker advances the engine epoch: the granularity of wall-time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Compiled modules kept; beyond it (or beyond `module_cache_bytes`) the least recently used is
/// dropped.
const MAX_CACHED_MODULES: usize = 64;
/// Most compiles an executor may be configured to run at once.
pub const MAX_COMPILE_THREADS: u32 = 64;
/// How long `run` still waits, after its job was cancelled, for the run to end by itself and
/// report what it used; after that it answers without it (the run ends a tick or two later).
const CANCEL_GRACE: Duration = Duration::from_millis(100);
/// A compile slower than this is logged as a warning: the complexity caps should prevent it.
const SLOW_COMPILE: Duration = Duration::from_secs(1);
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
    /// Compiled code the module cache may hold, bytes (at most 64 modules besides). Default:
    /// 128 MiB.
    pub module_cache_bytes: u64,
    /// Modules compiled at once (1 to [`MAX_COMPILE_THREADS`]). Default: half the cores, at
    /// least 1.
    pub compile_threads: u32,
    /// Modules waiting for the compile pool at submission; beyond it `prepare` answers
    /// [`ExecutorError::Busy`]. Default: 16.
    pub compile_queue: u32,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let cores = u32::try_from(cores).unwrap_or(MAX_CONCURRENCY);
        ExecutorConfig {
            max_concurrency: cores.min(MAX_CONCURRENCY),
            max_memory_bytes: 256 * 1024 * 1024,
            module_cache_bytes: 128 * 1024 * 1024,
            compile_threads: (cores / 2).clamp(1, MAX_COMPILE_THREADS),
            compile_queue: 16,
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
    /// The module is beyond a complexity cap of the protocol (functions, code size, locals,
    /// compile cost); it was not compiled. The message names the cap and the numbers.
    #[error("module too complex: {0}")]
    ModuleTooComplex(String),
    /// The compile pool and its queue are full; try again later.
    #[error("busy: {0}")]
    Busy(String),
    /// The caller cancelled while waiting for the compile pool.
    #[error("cancelled")]
    Cancelled,
}

impl From<Refusal> for ExecutorError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Invalid(message) => ExecutorError::InvalidModule(message),
            Refusal::TooComplex(message) => ExecutorError::ModuleTooComplex(message),
        }
    }
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
    /// Stops the job: checked while it waits for the compile pool or a slot, and at every
    /// epoch tick while it runs. A cancelled job ends as `Failed { reason: Cancelled }`.
    pub cancel: CancellationToken,
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
            .field("cancelled", &self.cancel.is_cancelled())
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
    /// A run whose module could not be prepared: nothing ran and nothing is billed.
    fn refused(error: &ExecutorError) -> RunResult {
        let (reason, message) = match error {
            ExecutorError::ModuleTooComplex(message) => {
                (FailureReason::ModuleTooComplex, message.clone())
            }
            ExecutorError::Cancelled => (
                FailureReason::Cancelled,
                "cancelled while waiting to compile".to_owned(),
            ),
            ExecutorError::InvalidModule(message) => {
                (FailureReason::InvalidModule, message.clone())
            }
            other => (FailureReason::InvalidModule, other.to_string()),
        };
        RunResult::failed(reason, &message, Usage::default())
    }

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
    compile_pool: CompilePool,
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
            .field("cached_bytes", &self.inner.cache.bytes())
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
        if config.compile_threads == 0 || config.compile_threads > MAX_COMPILE_THREADS {
            return Err(ExecutorError::Config(format!(
                "compile_threads must be between 1 and {MAX_COMPILE_THREADS}, got {}",
                config.compile_threads
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
                cache: ModuleCache::new(MAX_CACHED_MODULES, config.module_cache_bytes),
                compile_pool: CompilePool::new(config.compile_threads, config.compile_queue),
                slots: Arc::new(Semaphore::new(config.max_concurrency as usize)),
                pooling,
                random: wasi::random_bytes(),
            }),
        })
    }

    /// Checks and compiles (or takes from the cache) a module on the calling thread, outside
    /// the compile pool; an unacceptable module is an error with a clear message. Returns the
    /// module hash (SHA-256 of the bytes as given). For tests and tools: from async code use
    /// [`Executor::prepare`].
    pub fn check_module(&self, module: &[u8]) -> Result<Hash32, ExecutorError> {
        match self.inner.lookup(module)? {
            Lookup::Hit { hash, .. } => Ok(hash),
            Lookup::Miss { hash, binary } => {
                self.inner.compile(hash, &binary)?;
                Ok(hash)
            }
        }
    }

    /// Checks a module as a submission needs: the complexity caps, then a compile on the
    /// compile pool (or a cache hit), so that a module the mesh would refuse is refused here.
    /// Returns the module hash (SHA-256 of the bytes as given). With the pool and its queue
    /// full, answers [`ExecutorError::Busy`] at once.
    pub async fn prepare(&self, module: Arc<Vec<u8>>) -> Result<Hash32, ExecutorError> {
        self.prepared(module, Waiting::Bounded)
            .await
            .map(|(hash, _)| hash)
    }

    /// Runs one job to completion on a blocking thread; never panics, never fails the node.
    ///
    /// Checks and compiles the module first (on the compile pool, waiting for it as long as it
    /// takes), then waits for a free slot (at most `max_concurrency` jobs run at once). Both
    /// waits and the run itself end when `job.cancel` is cancelled; the answer then comes
    /// within [`CANCEL_GRACE`] even if the run has not noticed yet. Dropping the returned
    /// future does not stop a job that has started: cancel it.
    pub async fn run(&self, job: JobInput) -> RunResult {
        let cancel = job.cancel.clone();
        let started = Instant::now();
        // The module's verdict first (a linear check), then whether the budget pays for
        // compiling it (its length alone, like on every other provider), then the compile: a
        // module that cannot run is not compiled.
        let lookup = match self.lookup(job.module.clone()).await {
            Ok(lookup) => lookup,
            Err(error) => return RunResult::refused(&error),
        };
        let compile_charge = compile_fuel(job.module.len());
        if job.limits.fuel <= compile_charge {
            return RunResult::failed(
                FailureReason::FuelExhausted,
                &format!(
                    "fuel budget of {} does not cover the compile charge of {compile_charge}",
                    job.limits.fuel
                ),
                Usage {
                    fuel: job.limits.fuel,
                    ..Usage::default()
                },
            );
        }
        let pre = match self.compiled(lookup, Waiting::Cancellable(&cancel)).await {
            Ok((_, pre)) => pre,
            Err(error) => return RunResult::refused(&error),
        };
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            permit = self.inner.slots.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = slot else {
            return RunResult::failed(
                FailureReason::Cancelled,
                "cancelled while waiting for a slot",
                Usage::default(),
            );
        };
        let inner = self.inner.clone();
        let limits = job.limits;
        let mut task = tokio::task::spawn_blocking(move || {
            // Declared first, dropped last: after the job's Store has released its pool slot.
            let _permit = permit;
            job::run(
                &inner.engine,
                &pre,
                job,
                inner.config.max_memory_bytes,
                &inner.random,
            )
        });
        let joined = tokio::select! {
            biased;
            joined = &mut task => joined,
            _ = cancel.cancelled() => {
                match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
                    Ok(joined) => joined,
                    // The run notices at its next epoch tick and gives its slot back then; the
                    // caller need not wait for that. What it used is not known yet: its compile
                    // charge, and the time so far.
                    Err(_) => {
                        let usage = Usage {
                            fuel: compile_charge,
                            wall_time_ms: elapsed_ms(started).min(
                                limits
                                    .wall_time_ms
                                    .min(MAX_WALL_TIME_MS)
                                    .saturating_add(WALL_TIME_GRACE_MS),
                            ),
                            ..Usage::default()
                        };
                        return RunResult::failed(FailureReason::Cancelled, "cancelled", usage);
                    }
                }
            }
        };
        match joined {
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

    /// The cached or freshly compiled, linked module, compiled on the pool.
    async fn prepared(
        &self,
        module: Arc<Vec<u8>>,
        waiting: Waiting<'_>,
    ) -> Result<(Hash32, InstancePre<JobState>), ExecutorError> {
        let lookup = self.lookup(module).await?;
        self.compiled(lookup, waiting).await
    }

    /// [`Inner::lookup`] on a blocking thread. Hashing, WAT conversion and the complexity check
    /// are linear in a module of at most MAX_MODULE_BYTES: a blocking thread, but not the
    /// compile pool, so a bomb is refused at once even while the pool is busy.
    async fn lookup(&self, module: Arc<Vec<u8>>) -> Result<Lookup, ExecutorError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.lookup(&module))
            .await
            .map_err(unfinished)?
    }

    /// The looked-up module, compiled on the pool unless it was cached.
    async fn compiled(
        &self,
        lookup: Lookup,
        waiting: Waiting<'_>,
    ) -> Result<(Hash32, InstancePre<JobState>), ExecutorError> {
        let (hash, binary) = match lookup {
            Lookup::Hit { hash, pre } => return Ok((hash, pre)),
            Lookup::Miss { hash, binary } => (hash, binary),
        };
        let permit = self.inner.compile_pool.enter(waiting).await?;
        let inner = self.inner.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Another job may have compiled the same module while this one waited.
            match inner.cache.get(&hash) {
                Some(pre) => Ok(pre),
                None => inner.compile(hash, &binary),
            }
        });
        let pre = compiled.await.map_err(unfinished)??;
        Ok((hash, pre))
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

    /// Modules being compiled right now.
    pub fn compiles_running(&self) -> usize {
        let pool = &self.inner.compile_pool;
        (pool.threads as usize).saturating_sub(pool.permits.available_permits())
    }

    /// Compiled modules in the cache, and the bytes of compiled code they hold.
    pub fn cached_modules(&self) -> (usize, u64) {
        (self.inner.cache.len(), self.inner.cache.bytes())
    }

    /// Whether a job with these limits runs with the memory it asks for on this node. A job
    /// asking for more still runs, capped at `max_memory_bytes`, and may end as `MemoryLimit`
    /// where a bigger node would succeed: the market should decline it instead.
    pub fn fits(&self, limits: &Limits) -> bool {
        limits.memory_bytes <= self.inner.config.max_memory_bytes
    }
}

/// What the cache and the complexity check say of a module.
enum Lookup {
    Hit {
        hash: Hash32,
        pre: InstancePre<JobState>,
    },
    /// Not cached; `binary` (the module, WAT converted) passed the complexity caps.
    Miss { hash: Hash32, binary: Vec<u8> },
}

impl Inner {
    /// The module's hash and cached compiled form, or its binary after the complexity check.
    fn lookup(&self, module: &[u8]) -> Result<Lookup, ExecutorError> {
        if module.len() > MAX_MODULE_BYTES {
            return Err(ExecutorError::InvalidModule(format!(
                "module is {} bytes, at most {MAX_MODULE_BYTES}",
                module.len()
            )));
        }
        let hash = Hash32::of(module);
        if let Some(pre) = self.cache.get(&hash) {
            return Ok(Lookup::Hit { hash, pre });
        }
        let binary = wat::parse_bytes(module)
            .map_err(|error| ExecutorError::InvalidModule(format!("{error:#}")))?
            .into_owned();
        let measured = complexity::check(&binary)?;
        debug!(
            %hash,
            functions = measured.functions,
            code_bytes = measured.code_bytes,
            operators = measured.operators,
            compile_cost = measured.cost,
            "module within the complexity caps"
        );
        Ok(Lookup::Miss { hash, binary })
    }

    /// Compiles and links a module that passed [`Inner::lookup`], and caches it.
    fn compile(&self, hash: Hash32, binary: &[u8]) -> Result<InstancePre<JobState>, ExecutorError> {
        let invalid = ExecutorError::InvalidModule;
        let started = Instant::now();
        let compiled = Module::from_binary(&self.engine, binary)
            .map_err(|error| invalid(format!("{error:#}")))?;
        let elapsed = started.elapsed();
        if elapsed > SLOW_COMPILE {
            warn!(%hash, ?elapsed, bytes = binary.len(), "slow compile despite the complexity caps");
        } else {
            debug!(%hash, ?elapsed, bytes = binary.len(), "compiled");
        }
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
        // The compiled image (code, read-only data, metadata) is what a cached module keeps
        // mapped; the wasm bytes are not kept.
        let image = compiled.image_range();
        let bytes = (image.end as usize).saturating_sub(image.start as usize) as u64;
        self.cache.insert(hash, pre.clone(), bytes);
        Ok(pre)
    }
}

/// How a caller waits for the compile pool.
#[derive(Clone, Copy)]
enum Waiting<'a> {
    /// At most `compile_queue` callers wait; beyond them, [`ExecutorError::Busy`] at once.
    Bounded,
    /// As long as it takes, until the token is cancelled. Runs wait this way: they are bounded
    /// by the provider's slots and queue already, and an accepted contract should not fail
    /// because a submission was compiling.
    Cancellable(&'a CancellationToken),
}

/// At most `threads` compiles at once, and a bounded number of submissions waiting.
struct CompilePool {
    threads: u32,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl CompilePool {
    fn new(threads: u32, max_waiting: u32) -> CompilePool {
        CompilePool {
            threads,
            permits: Arc::new(Semaphore::new(threads as usize)),
            waiting: AtomicUsize::new(0),
            max_waiting: max_waiting as usize,
        }
    }

    /// A permit to compile one module.
    async fn enter(&self, waiting: Waiting<'_>) -> Result<OwnedSemaphorePermit, ExecutorError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match waiting {
            Waiting::Bounded => {
                let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
                let _leave = Leave(&self.waiting);
                if queued >= self.max_waiting {
                    return Err(ExecutorError::Busy(format!(
                        "{} modules are compiling and {queued} waiting; try again later",
                        self.threads
                    )));
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ExecutorError::Busy("the compile pool is closed".into()))
            }
            Waiting::Cancellable(cancel) => tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(ExecutorError::Cancelled),
                permit = self.permits.clone().acquire_owned() => {
                    permit.map_err(|_| ExecutorError::Busy("the compile pool is closed".into()))
                }
            },
        }
    }
}

/// Leaves the compile queue when dropped (also when the waiting future is dropped).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A blocking task that panicked or was cancelled, as an executor error.
fn unfinished(error: tokio::task::JoinError) -> ExecutorError {
    ExecutorError::InvalidModule(format!(
        "compilation did not finish: {}",
        join_error_message(error)
    ))
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
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
