//! One run: a fresh Store with the job's limits, `_start`, and the translation of how it ended
//! into an [`Outcome`] and a [`Usage`]. Runs on a blocking thread, never on a tokio worker.
//!
//! The module's compile charge ([`compile_fuel`]) comes off the fuel budget first; the rest is
//! what the guest may burn. At every epoch tick a callback checks the job's cancellation token
//! and its own wall-time deadline (measured from the Store's creation, so the limit is exact to
//! a tick whatever the ticker's phase).

use std::time::{Duration, Instant};

use suanli_protocol::Hash32;
use suanli_protocol::job::{MAX_OUTPUT_BYTES, MAX_WALL_TIME_MS, compile_fuel};
use suanli_protocol::negotiation::{FailureReason, Outcome, Usage, WALL_TIME_GRACE_MS};
use tracing::warn;
use wasmtime::{Engine, InstancePre, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::limiter::MemoryLimiter;
use super::wasi::{self, VirtualTime};
use super::{JobInput, MAX_TABLE_ELEMENTS, RunResult, truncate_message};

/// Most stderr kept per job. Stderr is for diagnostics: not billed, not hashed.
pub(super) const MAX_STDERR_BYTES: usize = 64 * 1024;

/// The error the epoch callback ends a cancelled run with.
#[derive(Debug)]
struct JobCancelled;

impl std::fmt::Display for JobCancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("job cancelled")
    }
}

impl std::error::Error for JobCancelled {}

/// Everything a job's Store holds.
pub(super) struct JobState {
    pub(super) wasi: WasiP1Ctx,
    pub(super) limiter: MemoryLimiter,
    pub(super) time: VirtualTime,
}

/// Where a failure happened: a non-trap error while instantiating means the module cannot run
/// here (InvalidModule); during `_start` it is a host-side failure the guest caused (Trap).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Instantiate,
    Start,
}

/// How the guest's execution ended, before output and billing are considered.
enum Ended {
    Exited(i32),
    Failed {
        reason: FailureReason,
        message: String,
    },
}

/// Runs `job` from `pre` in a new Store and reports how it went.
pub(super) fn run(
    engine: &Engine,
    pre: &InstancePre<JobState>,
    job: JobInput,
    max_memory_bytes: u64,
    random: &[u8],
) -> RunResult {
    let JobInput {
        module,
        args,
        env,
        stdin,
        limits,
        cancel,
    } = job;
    let compile_charge = compile_fuel(module.len());
    drop(module);
    // The node's ceiling caps the job's own limit (see `Executor::fits`); the protocol's caps
    // bound what a spec that skipped validation could ask for.
    let memory_limit = limits.memory_bytes.min(max_memory_bytes);
    let output_limit = usize::try_from(limits.output_bytes.min(MAX_OUTPUT_BYTES)).unwrap_or(0);
    let wall_time_ms = limits.wall_time_ms.min(MAX_WALL_TIME_MS);

    // One byte more than allowed: holding limit + 1 bytes is how an overflow is detected. A
    // write beyond the pipe fails with EIO in the guest, which keeps host memory bounded.
    let stdout = MemoryOutputPipe::new(output_limit.saturating_add(1));
    let stderr = MemoryOutputPipe::new(MAX_STDERR_BYTES);
    let time = VirtualTime::default();
    let state = JobState {
        wasi: wasi::context(
            &args,
            &env,
            stdin,
            stdout.clone(),
            stderr.clone(),
            &time,
            random,
        ),
        limiter: MemoryLimiter::new(memory_limit, MAX_TABLE_ELEMENTS as usize),
        time,
    };

    let started = Instant::now();
    if limits.fuel <= compile_charge {
        // The budget does not even pay for compiling: nothing runs, and all of it is used.
        return RunResult::failed(
            FailureReason::FuelExhausted,
            &format!(
                "fuel budget of {} does not cover the compile charge of {compile_charge} for a \
                 module of this size",
                limits.fuel
            ),
            Usage {
                fuel: limits.fuel,
                ..Usage::default()
            },
        );
    }
    let run_fuel = limits.fuel - compile_charge;
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    if let Err(error) = store.set_fuel(run_fuel) {
        // Only possible if fuel metering were off in the engine config.
        return RunResult::failed(
            FailureReason::Trap,
            &format!("internal executor error: cannot set fuel: {error:#}"),
            Usage::default(),
        );
    }
    // Called at every tick: one more tick, unless the job was cancelled or its time is up.
    let deadline = started + Duration::from_millis(wall_time_ms);
    store.epoch_deadline_callback(move |_| {
        if cancel.is_cancelled() {
            return Err(wasmtime::Error::new(JobCancelled));
        }
        if Instant::now() >= deadline {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(1))
    });
    store.set_epoch_deadline(1);
    let ended = execute(&mut store, pre);

    let interrupted = matches!(
        &ended,
        Ended::Failed {
            reason: FailureReason::Timeout,
            ..
        }
    );
    let fuel = if interrupted {
        // After an epoch interrupt `get_fuel` under-reports what was burnt; the job used its
        // time budget, so it is billed its whole fuel budget.
        limits.fuel
    } else {
        // The compile charge plus what the guest burnt (after a cancellation, a lower bound).
        let remaining = store.get_fuel().unwrap_or(0);
        limits.fuel.saturating_sub(remaining)
    };
    let memory_bytes = store.data().limiter.peak_bytes();
    // Dropping the Store returns the instance to the pool and releases the pipes' other owner.
    drop(store);
    let wall_time_ms = measured_wall_time_ms(started, limits.wall_time_ms);

    let mut stdout = stdout.contents().to_vec();
    let stderr = stderr.contents().to_vec();
    let overflowed = stdout.len() > output_limit;
    stdout.truncate(output_limit);
    let usage = Usage {
        fuel,
        wall_time_ms,
        memory_bytes,
        output_bytes: stdout.len() as u64,
        prompt_tokens: 0,
        completion_tokens: 0,
        cluster: None,
    };
    // Too much output wins over whatever followed: a guest whose writes start failing usually
    // exits or traps because of it, and that is not the cause the requester needs to see.
    let outcome = match ended {
        _ if overflowed => Outcome::Failed {
            reason: FailureReason::OutputTooLarge,
            message: format!("stdout exceeded the limit of {output_limit} bytes"),
        },
        Ended::Exited(exit_code) => Outcome::Succeeded {
            exit_code,
            output_hash: Hash32::of(&stdout),
            output_len: stdout.len() as u64,
        },
        Ended::Failed { reason, message } => Outcome::Failed {
            reason,
            message: truncate_message(&message),
        },
    };
    RunResult {
        outcome,
        usage,
        stdout,
        stderr,
    }
}

/// Instantiates and calls `_start`, classifying any error.
fn execute(store: &mut Store<JobState>, pre: &InstancePre<JobState>) -> Ended {
    let instance = match pre.instantiate(&mut *store) {
        Ok(instance) => instance,
        // A start section runs during instantiation and can trap or run out like `_start`.
        Err(error) => return classify(&error, store, Phase::Instantiate),
    };
    let start = match instance.get_typed_func::<(), ()>(&mut *store, "_start") {
        Ok(start) => start,
        Err(error) => return classify(&error, store, Phase::Instantiate),
    };
    match start.call(&mut *store, ()) {
        Ok(()) => Ended::Exited(0),
        Err(error) => classify(&error, store, Phase::Start),
    }
}

fn classify(error: &wasmtime::Error, store: &Store<JobState>, phase: Phase) -> Ended {
    let failed = |reason, message: String| Ended::Failed { reason, message };
    // `proc_exit(n)` unwinds as an error, for n = 0 too: it is a normal end.
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Ended::Exited(exit.0);
    }
    if error.downcast_ref::<JobCancelled>().is_some() {
        return failed(FailureReason::Cancelled, "cancelled".into());
    }
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return failed(FailureReason::FuelExhausted, "fuel budget exhausted".into());
        }
        Some(Trap::Interrupt) => {
            return failed(FailureReason::Timeout, "wall-time limit reached".into());
        }
        _ => {}
    }
    if store.data().limiter.refused() {
        // The guest was refused memory and then failed: almost always because of it (an
        // allocator aborting on -1, or an initial memory above the limit).
        return failed(
            FailureReason::MemoryLimit,
            format!(
                "memory limit of {} bytes reached, then: {}",
                store.data().limiter.limit_bytes(),
                describe(error, trap)
            ),
        );
    }
    match (trap, phase) {
        (Some(_), _) | (None, Phase::Start) => failed(FailureReason::Trap, describe(error, trap)),
        (None, Phase::Instantiate) => failed(
            FailureReason::InvalidModule,
            format!("cannot instantiate: {error:#}"),
        ),
    }
}

/// A trap's own message ("wasm trap: …"), or the error's chain; without the wasm backtrace,
/// which comes first and would crowd the cause out of the 1 KiB a receipt message may hold.
fn describe(error: &wasmtime::Error, trap: Option<Trap>) -> String {
    if let Some(trap) = trap {
        return trap.to_string();
    }
    let skip = usize::from(error.downcast_ref::<WasmBacktrace>().is_some());
    let causes: Vec<String> = error.chain().skip(skip).map(ToString::to_string).collect();
    if causes.is_empty() {
        format!("{error:#}")
    } else {
        causes.join(": ")
    }
}

/// Wall time from Store creation to its drop. Epoch interruption overshoots by up to about
/// one tick ([`super::EPOCH_TICK`]) plus scheduling delay; the protocol tolerates
/// [`WALL_TIME_GRACE_MS`] more than the
/// limit, and a receipt above that would be refused as misbehaviour. Wall time is not billed,
/// so a run a loaded machine stretched beyond the grace is reported at the ceiling.
fn measured_wall_time_ms(started: Instant, limit_ms: u64) -> u64 {
    let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let ceiling = limit_ms.saturating_add(WALL_TIME_GRACE_MS);
    if elapsed > ceiling {
        warn!(
            elapsed_ms = elapsed,
            limit_ms, "job overran its wall time beyond the grace; reporting the ceiling"
        );
    }
    elapsed.min(ceiling)
}
