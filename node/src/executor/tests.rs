//! The executor against the sample jobs in `examples/jobs/` and a few inline modules for the
//! corners the samples do not reach (clocks, random, environment, stderr, instantiation).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use suanli_protocol::negotiation::{FailureReason, MAX_MESSAGE_BYTES, Outcome};
use suanli_protocol::{Hash32, Limits};

use super::wasi::{CLOCK_READ_TICK_NS, WALL_CLOCK_START_SECS};
use super::*;

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const ECHO: &str = include_str!("../../../examples/jobs/echo.wat");
const ARGS: &str = include_str!("../../../examples/jobs/args.wat");
const EXIT3: &str = include_str!("../../../examples/jobs/exit3.wat");
const SPIN: &str = include_str!("../../../examples/jobs/spin.wat");
const TRAP: &str = include_str!("../../../examples/jobs/trap.wat");
const GROW: &str = include_str!("../../../examples/jobs/grow.wat");
const NOISY: &str = include_str!("../../../examples/jobs/noisy.wat");
const FIB: &str = include_str!("../../../examples/jobs/fib.wat");

const MIB: u64 = 1024 * 1024;
const PAGE: u64 = 64 * 1024;

/// One executor for the tests that need no special configuration: engines are cheap, but
/// compiling the samples again in every test is not (cranelift is unoptimised in test builds).
fn executor() -> Executor {
    static SHARED: OnceLock<Executor> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            Executor::new(ExecutorConfig {
                max_concurrency: 2,
                max_memory_bytes: 64 * MIB,
            })
            .expect("executor starts")
        })
        .clone()
}

fn limits() -> Limits {
    Limits {
        fuel: 1_000_000_000,
        memory_bytes: 16 * MIB,
        wall_time_ms: 10_000,
        output_bytes: 2 * MIB,
    }
}

fn job(module: &str) -> JobInput {
    JobInput {
        module: Arc::new(module.as_bytes().to_vec()),
        args: Vec::new(),
        env: BTreeMap::new(),
        stdin: Vec::new(),
        limits: limits(),
    }
}

/// The exit code of a successful run, after checking that its outcome and usage agree.
fn exit_code(result: &RunResult) -> i32 {
    match &result.outcome {
        Outcome::Succeeded {
            exit_code,
            output_hash,
            output_len,
        } => {
            assert_eq!(*output_hash, Hash32::of(&result.stdout));
            assert_eq!(*output_len, result.stdout.len() as u64);
            assert_eq!(result.usage.output_bytes, result.stdout.len() as u64);
            *exit_code
        }
        Outcome::Failed { reason, message } => {
            panic!("expected success, got {reason:?}: {message}")
        }
    }
}

fn failure(result: &RunResult) -> (FailureReason, &str) {
    match &result.outcome {
        Outcome::Failed { reason, message } => {
            assert!(message.len() <= MAX_MESSAGE_BYTES);
            (*reason, message.as_str())
        }
        Outcome::Succeeded { .. } => panic!("expected a failure, got {result:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_prints_its_greeting() {
    let result = executor().run(job(HELLO)).await;
    assert_eq!(exit_code(&result), 0);
    assert_eq!(result.stdout, b"hello from suanli\n");
    assert!(result.stderr.is_empty());
    assert!(result.usage.fuel > 0);
    // One page, allocated at instantiation.
    assert_eq!(result.usage.memory_bytes, PAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_copies_stdin() {
    let stdin: Vec<u8> = (0..10_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let result = executor()
        .run(JobInput {
            stdin: stdin.clone(),
            ..job(ECHO)
        })
        .await;
    assert_eq!(exit_code(&result), 0);
    assert_eq!(result.stdout, stdin);

    let empty = executor().run(job(ECHO)).await;
    assert_eq!(exit_code(&empty), 0);
    assert!(empty.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_are_printed_without_the_program_name() {
    let args = ["a", "bc", "ünïcode"].map(String::from).to_vec();
    let result = executor().run(JobInput { args, ..job(ARGS) }).await;
    assert_eq!(exit_code(&result), 0);
    assert_eq!(result.stdout, "a bc ünïcode\n".as_bytes());

    let none = executor().run(job(ARGS)).await;
    assert_eq!(none.stdout, b"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_is_success_with_its_code() {
    let result = executor().run(job(EXIT3)).await;
    assert_eq!(exit_code(&result), 3);
    assert!(result.stdout.is_empty());

    let zero = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 0)) unreachable))"#;
    assert_eq!(exit_code(&executor().run(job(zero)).await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_runs_out_of_fuel() {
    let fuel = 1_000_000;
    let started = Instant::now();
    let result = executor()
        .run(JobInput {
            limits: Limits { fuel, ..limits() },
            ..job(SPIN)
        })
        .await;
    assert_eq!(failure(&result).0, FailureReason::FuelExhausted);
    assert_eq!(result.usage.fuel, fuel);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_times_out_within_bounded_wall_time() {
    let wall_time_ms = 200;
    let limits = Limits {
        fuel: u64::MAX,
        wall_time_ms,
        ..limits()
    };
    let started = Instant::now();
    let result = executor()
        .run(JobInput {
            limits,
            ..job(SPIN)
        })
        .await;
    let elapsed = started.elapsed();
    assert_eq!(failure(&result).0, FailureReason::Timeout);
    // Never early; late by about two epoch ticks, far less than a second.
    assert!(
        elapsed >= Duration::from_millis(wall_time_ms),
        "{elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(wall_time_ms + 800),
        "{elapsed:?}"
    );
    assert!(result.usage.wall_time_ms >= wall_time_ms);
    // Interrupted runs are billed their whole fuel budget.
    assert_eq!(result.usage.fuel, u64::MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_reports_the_trap() {
    let result = executor().run(job(TRAP)).await;
    let (reason, message) = failure(&result);
    assert_eq!(reason, FailureReason::Trap);
    assert!(message.contains("unreachable"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_stops_at_the_memory_limit() {
    let memory_bytes = MIB;
    let result = executor()
        .run(JobInput {
            limits: Limits {
                memory_bytes,
                ..limits()
            },
            ..job(GROW)
        })
        .await;
    let (reason, message) = failure(&result);
    assert_eq!(reason, FailureReason::MemoryLimit, "{message}");
    assert_eq!(result.usage.memory_bytes, memory_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_works_up_to_the_node_ceiling() {
    let ceiling = 8 * MIB;
    let executor = Executor::new(ExecutorConfig {
        max_concurrency: 2,
        max_memory_bytes: ceiling,
    })
    .expect("executor starts");
    assert!(
        executor.is_pooling(),
        "the pooling allocator is available here"
    );
    let generous = Limits {
        memory_bytes: 64 * MIB,
        ..limits()
    };
    assert!(!executor.fits(&generous));

    // Exactly the ceiling: 1 page + 127.
    let to_ceiling = r#"(module
        (memory (export "memory") 1)
        (func (export "_start")
          (if (i32.eq (memory.grow (i32.const 127)) (i32.const -1)) (then unreachable))
          (i32.store (i32.const 8388604) (i32.const 1))))"#;
    let result = executor
        .run(JobInput {
            limits: generous,
            ..job(to_ceiling)
        })
        .await;
    assert_eq!(exit_code(&result), 0);
    assert_eq!(result.usage.memory_bytes, ceiling);

    // One page beyond: the job asked for 64 MiB but this node gives 8.
    let result = executor
        .run(JobInput {
            limits: generous,
            ..job(GROW)
        })
        .await;
    assert_eq!(failure(&result).0, FailureReason::MemoryLimit);
    assert_eq!(result.usage.memory_bytes, ceiling);

    // An initial memory above the limit fails instantiation, also as MemoryLimit.
    let big_start = r#"(module (memory (export "memory") 200) (func (export "_start")))"#;
    let result = executor.run(job(big_start)).await;
    assert_eq!(failure(&result).0, FailureReason::MemoryLimit);
    assert_eq!(result.usage.memory_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_output_beyond_the_limit_is_too_large() {
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n";
    let expected: Vec<u8> = line.iter().copied().cycle().take(MIB as usize).collect();

    // Exactly at the limit is fine.
    let at_limit = executor()
        .run(JobInput {
            limits: Limits {
                output_bytes: MIB,
                ..limits()
            },
            ..job(NOISY)
        })
        .await;
    assert_eq!(exit_code(&at_limit), 0);
    assert_eq!(at_limit.stdout, expected);

    let output_bytes = 1000;
    let result = executor()
        .run(JobInput {
            limits: Limits {
                output_bytes,
                ..limits()
            },
            ..job(NOISY)
        })
        .await;
    assert_eq!(failure(&result).0, FailureReason::OutputTooLarge);
    assert_eq!(result.stdout, expected[..output_bytes as usize]);
    assert_eq!(result.usage.output_bytes, output_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fib_prints_and_fuel_is_deterministic() {
    let first = executor().run(job(FIB)).await;
    let second = executor().run(job(FIB)).await;
    assert_eq!(exit_code(&first), 0);
    assert_eq!(first.stdout, b"832040\n");
    assert!(first.usage.fuel > 10_000_000, "{:?}", first.usage);
    assert_eq!(first.usage.fuel, second.usage.fuel);
    assert_eq!(first.outcome, second.outcome);

    // Another engine with another allocator meters the same.
    let on_demand = Executor::with_allocation(
        ExecutorConfig {
            max_concurrency: 1,
            max_memory_bytes: 64 * MIB,
        },
        Allocation::OnDemand,
    )
    .expect("executor starts");
    assert!(!on_demand.is_pooling());
    let third = on_demand.run(job(FIB)).await;
    assert_eq!(third.usage.fuel, first.usage.fuel);
    assert_eq!(third.stdout, first.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_modules_are_refused_with_a_reason() {
    let executor = executor();
    let cases: [(&str, &[u8]); 5] = [
        ("garbage", b"\0asm\x02\0\0\0garbage"),
        ("bad WAT", b"(module (func (export \"_start\") (i32.add)))"),
        ("no _start", b"(module (memory (export \"memory\") 1))"),
        (
            "unknown import",
            b"(module (import \"env\" \"nope\" (func)) (func (export \"_start\")))",
        ),
        (
            "two memories",
            b"(module (memory 1) (memory 1) (func (export \"_start\")))",
        ),
    ];
    for (name, module) in cases {
        match executor.check_module(module) {
            Err(ExecutorError::InvalidModule(message)) => assert!(!message.is_empty(), "{name}"),
            other => panic!("{name}: expected InvalidModule, got {other:?}"),
        }
        let result = executor
            .run(JobInput {
                module: Arc::new(module.to_vec()),
                ..job("")
            })
            .await;
        assert_eq!(
            failure(&result).0,
            FailureReason::InvalidModule,
            "{name}: {result:?}"
        );
        assert_eq!(result.usage, Usage::default());
    }
    let too_large = vec![0u8; MAX_MODULE_BYTES + 1];
    assert!(matches!(
        executor.check_module(&too_large),
        Err(ExecutorError::InvalidModule(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_module_hashes_the_bytes_as_given() {
    let executor = executor();
    let hash = executor
        .check_module(HELLO.as_bytes())
        .expect("hello is valid");
    assert_eq!(hash, Hash32::of(HELLO.as_bytes()));
    assert_eq!(
        executor
            .prepare(Arc::new(HELLO.as_bytes().to_vec()))
            .await
            .ok(),
        Some(hash)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_runs_all_succeed() {
    let executor = Executor::new(ExecutorConfig {
        max_concurrency: 2,
        max_memory_bytes: 64 * MIB,
    })
    .expect("executor starts");
    let mut runs = tokio::task::JoinSet::new();
    for n in 0..20 {
        let executor = executor.clone();
        let (module, expected): (&str, &[u8]) = match n % 3 {
            0 => (HELLO, b"hello from suanli\n"),
            1 => (ECHO, b"echo me"),
            _ => (FIB, b"832040\n"),
        };
        runs.spawn(async move {
            let result = executor
                .run(JobInput {
                    stdin: b"echo me".to_vec(),
                    ..job(module)
                })
                .await;
            (result, expected)
        });
    }
    let mut finished = 0;
    while let Some(joined) = runs.join_next().await {
        let (result, expected) = joined.expect("run task");
        assert_eq!(exit_code(&result), 0);
        assert_eq!(result.stdout, expected);
        finished += 1;
    }
    assert_eq!(finished, 20);
    assert_eq!(executor.free_slots(), 2);
}

/// Reads both clocks around a one-hour sleep; prints the raw numbers and the poll event.
const CLOCKS: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; 104: monotonic before, 112: monotonic after, 120: wall, 128: errno, 132: event count,
    ;; 136: the event
    (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 104)))
    ;; A relative monotonic sleep of one hour, userdata 7.
    (i64.store (i32.const 200) (i64.const 7))
    (i32.store8 (i32.const 208) (i32.const 0))
    (i32.store (i32.const 216) (i32.const 1))
    (i64.store (i32.const 224) (i64.const 3600000000000))
    (i32.store16 (i32.const 240) (i32.const 0))
    (i32.store (i32.const 128)
      (call $poll (i32.const 200) (i32.const 136) (i32.const 1) (i32.const 132)))
    (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 112)))
    (drop (call $clock (i32.const 0) (i64.const 0) (i32.const 120)))
    (i32.store (i32.const 0) (i32.const 104))
    (i32.store (i32.const 4) (i32.const 48))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_are_virtual_and_sleep_never_blocks() {
    let started = Instant::now();
    let result = executor().run(job(CLOCKS)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(exit_code(&result), 0);
    let out = &result.stdout;
    assert_eq!(out.len(), 48);
    let (before, after, wall) = (u64_at(out, 0), u64_at(out, 8), u64_at(out, 16));
    let hour = 3_600_000_000_000;
    assert_eq!(before, 0);
    assert_eq!(after, CLOCK_READ_TICK_NS + hour);
    assert_eq!(
        wall,
        WALL_CLOCK_START_SECS * 1_000_000_000 + after + CLOCK_READ_TICK_NS
    );
    // errno 0, one event: userdata 7, no error, type clock.
    assert_eq!(&out[24..32], &[0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(u64_at(out, 32), 7);
    assert_eq!(&out[40..43], &[0, 0, 0]);

    let again = executor().run(job(CLOCKS)).await;
    assert_eq!(again.stdout, result.stdout);
    assert_eq!(again.usage.fuel, result.usage.fuel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_is_a_fixed_stream() {
    let random = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $random (i32.const 100) (i32.const 32)))
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 32))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    let first = executor().run(job(random)).await;
    let second = executor().run(job(random)).await;
    assert_eq!(exit_code(&first), 0);
    assert_eq!(first.stdout.len(), 32);
    assert_eq!(first.stdout, second.stdout);
    assert_ne!(first.stdout, [0u8; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_stderr_reach_the_job() {
    let module = r#"(module
      (import "wasi_snapshot_preview1" "environ_sizes_get"
        (func $sizes (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "oops\n")
      (func (export "_start")
        (drop (call $sizes (i32.const 16) (i32.const 20)))
        (drop (call $environ (i32.const 1024) (i32.const 4096)))
        (i32.store (i32.const 0) (i32.const 4096))
        (i32.store (i32.const 4) (i32.load (i32.const 20)))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 5))
        (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    let env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two".into())]);
    let result = executor().run(JobInput { env, ..job(module) }).await;
    assert_eq!(exit_code(&result), 0);
    assert_eq!(result.stdout, b"A=1\0B=two\0");
    assert_eq!(result.stderr, b"oops\n");
    // stderr is not output: it is neither hashed nor billed.
    assert_eq!(result.usage.output_bytes, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_blocking_task_is_a_message() {
    let joined = tokio::task::spawn_blocking(|| -> RunResult { panic!("boom") }).await;
    let message = join_error_message(joined.expect_err("the task panicked"));
    assert!(message.contains("boom"), "{message}");
}

#[test]
fn messages_are_truncated_on_a_char_boundary() {
    let long = "é".repeat(MAX_MESSAGE_BYTES);
    let cut = truncate_message(&long);
    assert!(cut.len() <= MAX_MESSAGE_BYTES);
    assert!(cut.len() >= MAX_MESSAGE_BYTES - 1);
    assert_eq!(truncate_message("short"), "short");
}

#[test]
fn config_is_validated() {
    let bad = [
        ExecutorConfig {
            max_concurrency: 0,
            ..ExecutorConfig::default()
        },
        ExecutorConfig {
            max_memory_bytes: MAX_MEMORY_BYTES + 1,
            ..ExecutorConfig::default()
        },
        ExecutorConfig {
            max_memory_bytes: 0,
            ..ExecutorConfig::default()
        },
    ];
    for config in bad {
        assert!(matches!(
            Executor::new(config),
            Err(ExecutorError::Config(_))
        ));
    }
    let default = ExecutorConfig::default();
    assert!(default.max_concurrency >= 1);
    assert_eq!(default.max_memory_bytes, 256 * MIB);
}

/// End-to-end latency of a trivial job with a warm cache (median of 1000 runs). Run with
/// `cargo test --release -p suanli-node executor::tests::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release mode"]
#[allow(clippy::print_stderr)]
async fn bench_hello_warm_cache() {
    let executor = Executor::new(ExecutorConfig::default()).expect("executor starts");
    let hello = job(HELLO);
    assert_eq!(exit_code(&executor.run(hello.clone()).await), 0);
    let mut samples = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        let result = executor.run(hello.clone()).await;
        samples.push(started.elapsed());
        assert_eq!(result.stdout, b"hello from suanli\n");
    }
    samples.sort();
    eprintln!(
        "hello.wat via Executor::run, warm cache, pooling={}: median {:?}, p10 {:?}, p90 {:?}, \
         p99 {:?}",
        executor.is_pooling(),
        samples[500],
        samples[100],
        samples[900],
        samples[990]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stdio_is_ready_at_once_and_takes_no_time() {
    // Subscribes to stdin readability and a one-hour clock; prints the event count, the first
    // event's type and the monotonic clock afterwards.
    let module = r#"(module
      (import "wasi_snapshot_preview1" "clock_time_get"
        (func $clock (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        ;; 200: fd_read on fd 0; 248: a relative monotonic clock of one hour.
        (i64.store (i32.const 200) (i64.const 1))
        (i32.store8 (i32.const 208) (i32.const 1))
        (i32.store (i32.const 216) (i32.const 0))
        (i64.store (i32.const 248) (i64.const 2))
        (i32.store8 (i32.const 256) (i32.const 0))
        (i32.store (i32.const 264) (i32.const 1))
        (i64.store (i32.const 272) (i64.const 3600000000000))
        ;; 104: errno, 108: event count, 112: monotonic after, 120: the first event.
        (i32.store (i32.const 104)
          (call $poll (i32.const 200) (i32.const 120) (i32.const 2) (i32.const 108)))
        (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 112)))
        (i32.store (i32.const 0) (i32.const 104))
        (i32.store (i32.const 4) (i32.const 32))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    let result = executor().run(job(module)).await;
    assert_eq!(exit_code(&result), 0);
    let out = &result.stdout;
    assert_eq!(&out[0..8], &[0, 0, 0, 0, 1, 0, 0, 0], "errno 0, one event");
    assert_eq!(u64_at(out, 8), 0, "no time passed");
    assert_eq!(u64_at(out, 16), 1, "the stdin subscription's userdata");
    assert_eq!(&out[24..27], &[0, 0, 1], "no error, type fd_read");
}

#[test]
fn executor_and_its_futures_can_be_shared() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn sendable<T: Send>(_: &T) {}
    shareable::<Executor>();
    let executor = executor();
    let run = executor.run(job(HELLO));
    sendable(&run);
    sendable(&executor.prepare(Arc::new(Vec::new())));
}
