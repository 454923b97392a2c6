//! The executor against the sample jobs in `examples/jobs/` and a few inline modules for the
//! corners the samples do not reach (clocks, random, environment, stderr, instantiation).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use suanli_protocol::job::complexity::{MAX_COMPILE_COST, MAX_FUNCTIONS};
use suanli_protocol::negotiation::{FailureReason, MAX_MESSAGE_BYTES, Outcome};
use suanli_protocol::{Hash32, Limits};
use tokio_util::sync::CancellationToken;

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
                ..ExecutorConfig::default()
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
        tasks: 1,
    }
}

fn job(module: &str) -> JobInput {
    JobInput {
        module: Arc::new(module.as_bytes().to_vec()),
        args: Vec::new(),
        env: BTreeMap::new(),
        stdin: Vec::new(),
        limits: limits(),
        cancel: CancellationToken::new(),
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
        ..ExecutorConfig::default()
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
            ..ExecutorConfig::default()
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
        ..ExecutorConfig::default()
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

/// Unsigned LEB128, as the binary format writes counts and sizes.
fn leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, contents: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb128(contents.len(), out);
    out.extend_from_slice(contents);
}

/// A binary module of functions `[] -> []` with these bodies (each: locals declarations and
/// code, without the size prefix), one page of memory, and function 0 exported as `_start`.
fn binary_module(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut out);
    let mut functions = Vec::new();
    leb128(bodies.len(), &mut functions);
    functions.extend(std::iter::repeat_n(0u8, bodies.len()));
    section(3, &functions, &mut out);
    section(5, &[1, 0, 1], &mut out);
    section(7, b"\x01\x06_start\x00\x00", &mut out);
    let mut code = Vec::new();
    leb128(bodies.len(), &mut code);
    for body in bodies {
        leb128(body.len(), &mut code);
        code.extend_from_slice(body);
    }
    section(10, &code, &mut out);
    out
}

/// A function body without locals: `code` then `end`.
fn body(code: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(code);
    body.push(0x0b);
    body
}

fn input(module: Vec<u8>) -> JobInput {
    JobInput {
        module: Arc::new(module),
        ..job("")
    }
}

fn assert_too_complex(executor: &Executor, module: &[u8], expected: &str) {
    match executor.check_module(module) {
        Err(ExecutorError::ModuleTooComplex(message)) => {
            assert!(message.contains(expected), "{message}")
        }
        other => panic!("expected ModuleTooComplex ({expected}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_before_compiling() {
    let executor = executor();
    // 300,000 empty functions: the 1.2 MB module that took 34 s and 1.7 GB to compile.
    let functions = binary_module(&vec![body(&[]); 300_000]);
    assert!(functions.len() <= MAX_MODULE_BYTES);
    assert_too_complex(&executor, &functions, "300000 functions");
    // One enormous function: 80,000 `i32.const 1; drop` (240 KB, within the body size cap).
    let enormous = binary_module(&[body(&[0x41, 0x01, 0x1a].repeat(80_000))]);
    assert_too_complex(&executor, &enormous, "compile cost");
    let larger = binary_module(&[body(&[0x41, 0x01, 0x1a].repeat(100_000))]);
    assert_too_complex(&executor, &larger, "bytes, at most");
    // 10,000 empty loops in one function (120 KB; 7 s to compile): quadratic in loops.
    let loops = binary_module(&[body(&[0x03, 0x40, 0x0b].repeat(10_000))]);
    assert_too_complex(&executor, &loops, "compile cost");
    // WAT is checked after conversion.
    let wat = format!(
        "(module (func (export \"_start\")) {})",
        "(func)".repeat(MAX_FUNCTIONS as usize)
    );
    assert_too_complex(&executor, wat.as_bytes(), "functions, at most");

    for bomb in [functions, enormous] {
        let result = executor.run(input(bomb.clone())).await;
        assert_eq!(failure(&result).0, FailureReason::ModuleTooComplex);
        assert_eq!(result.usage, Usage::default());
        assert!(matches!(
            executor.prepare(Arc::new(bomb)).await,
            Err(ExecutorError::ModuleTooComplex(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_just_under_the_caps_compiles_and_runs() {
    let executor = executor();
    // `nop`s cost a unit each and compile to nothing, so the cap is reached exactly without a
    // slow test: type and export sections (1 each) + function (30) + nops + `end` (1).
    let nops = MAX_COMPILE_COST as usize - 33;
    let at_cap = binary_module(&[body(&vec![0x01; nops])]);
    executor.check_module(&at_cap).expect("exactly at the cap");
    let over = binary_module(&[body(&vec![0x01; nops + 1])]);
    assert_too_complex(&executor, &over, "compile cost");
    let result = executor
        .run(JobInput {
            limits: Limits {
                fuel: u64::MAX,
                ..limits()
            },
            ..input(at_cap)
        })
        .await;
    assert_eq!(exit_code(&result), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_fuel_is_charged_alike_everywhere() {
    use suanli_protocol::job::compile_fuel;
    // The same guest code as WAT text and as a binary: the runs burn the same fuel, so the
    // receipts differ by exactly the compile charges of the two lengths.
    let binary = wat::parse_str(HELLO).expect("hello converts");
    let text = executor().run(job(HELLO)).await;
    let cached = executor().run(job(HELLO)).await;
    let other = Executor::new(ExecutorConfig {
        max_concurrency: 1,
        ..ExecutorConfig::default()
    })
    .expect("executor starts")
    .run(job(HELLO))
    .await;
    let from_binary = executor().run(input(binary.clone())).await;
    for result in [&text, &cached, &other, &from_binary] {
        assert_eq!(exit_code(result), 0);
    }
    assert_eq!(text.usage.fuel, cached.usage.fuel, "a cache hit is charged");
    assert_eq!(
        text.usage.fuel, other.usage.fuel,
        "another executor charges the same"
    );
    assert!(text.usage.fuel > compile_fuel(HELLO.len()));
    assert_eq!(
        text.usage.fuel - compile_fuel(HELLO.len()),
        from_binary.usage.fuel - compile_fuel(binary.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_below_the_compile_charge_is_exhausted_at_once() {
    let charge = suanli_protocol::job::compile_fuel(HELLO.len());
    for fuel in [1, charge - 1, charge] {
        let result = executor()
            .run(JobInput {
                limits: Limits { fuel, ..limits() },
                ..job(HELLO)
            })
            .await;
        assert_eq!(failure(&result).0, FailureReason::FuelExhausted, "{fuel}");
        assert_eq!(result.usage.fuel, fuel);
        assert!(result.stdout.is_empty());
    }
}

/// Waits (bounded) until `executor` has `free` slots.
async fn wait_for_free_slots(executor: &Executor, free: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while executor.free_slots() != free {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("slots reach the expected count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_spinning_job_ends_it_and_frees_its_slot() {
    let executor = Executor::new(ExecutorConfig {
        max_concurrency: 1,
        ..ExecutorConfig::default()
    })
    .expect("executor starts");
    let cancel = CancellationToken::new();
    let spinning = {
        let executor = executor.clone();
        let job = JobInput {
            limits: Limits {
                fuel: u64::MAX,
                wall_time_ms: 60_000,
                ..limits()
            },
            cancel: cancel.clone(),
            ..job(SPIN)
        };
        tokio::spawn(async move { executor.run(job).await })
    };
    wait_for_free_slots(&executor, 0).await;

    // Another job waits for the slot; cancelled, it stops waiting.
    let waiting_cancel = CancellationToken::new();
    let waiting = {
        let executor = executor.clone();
        let job = JobInput {
            cancel: waiting_cancel.clone(),
            ..job(HELLO)
        };
        tokio::spawn(async move { executor.run(job).await })
    };
    waiting_cancel.cancel();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting run answers")
        .expect("task");
    let (reason, message) = failure(&waited);
    assert_eq!(reason, FailureReason::Cancelled);
    assert!(message.contains("slot"), "{message}");

    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), spinning)
        .await
        .expect("the cancelled run answers")
        .expect("task");
    assert_eq!(failure(&result).0, FailureReason::Cancelled);
    assert!(result.usage.fuel < u64::MAX);
    assert!(result.usage.wall_time_ms < 60_000);
    wait_for_free_slots(&executor, 1).await;
    assert_eq!(exit_code(&executor.run(job(HELLO)).await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_before_it_starts_does_not_run() {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = executor()
        .run(JobInput {
            cancel,
            ..job(HELLO)
        })
        .await;
    assert_eq!(failure(&result).0, FailureReason::Cancelled);
    assert!(result.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded_in_bytes() {
    let unbounded = Executor::new(ExecutorConfig::default()).expect("executor starts");
    unbounded.check_module(HELLO.as_bytes()).expect("valid");
    let (count, hello_bytes) = unbounded.cached_modules();
    assert_eq!(count, 1);
    assert!(hello_bytes > 0);

    // Room for one module like hello, not two.
    let budget = hello_bytes * 3 / 2;
    let executor = Executor::new(ExecutorConfig {
        module_cache_bytes: budget,
        ..ExecutorConfig::default()
    })
    .expect("executor starts");
    let modules = [HELLO, ECHO, EXIT3, TRAP];
    for module in modules {
        executor.check_module(module.as_bytes()).expect("valid");
        let (count, bytes) = executor.cached_modules();
        assert!(bytes <= budget, "{bytes} > {budget}");
        assert!(count >= 1);
    }
    assert!(executor.cached_modules().0 < modules.len());

    // No budget at all: nothing is cached, and jobs still run.
    let uncached = Executor::new(ExecutorConfig {
        module_cache_bytes: 0,
        ..ExecutorConfig::default()
    })
    .expect("executor starts");
    assert_eq!(exit_code(&uncached.run(job(HELLO)).await), 0);
    assert_eq!(exit_code(&uncached.run(job(HELLO)).await), 0);
    assert_eq!(uncached.cached_modules(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_compile_pool_answers_busy() {
    let executor = Executor::new(ExecutorConfig {
        compile_threads: 1,
        compile_queue: 0,
        ..ExecutorConfig::default()
    })
    .expect("executor starts");
    // Hundreds of milliseconds to compile, seconds in an unoptimised test build.
    let slow = binary_module(&vec![body(&[]); MAX_FUNCTIONS as usize / 2]);
    let compiling = {
        let executor = executor.clone();
        tokio::spawn(async move { executor.prepare(Arc::new(slow)).await })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while executor.compiles_running() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the compile starts");
    match executor.prepare(Arc::new(ECHO.as_bytes().to_vec())).await {
        Err(ExecutorError::Busy(message)) => assert!(message.contains("compiling"), "{message}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    // A bomb is still refused at once: the check does not wait for the pool.
    let bomb = binary_module(&vec![body(&[]); MAX_FUNCTIONS as usize + 1]);
    assert!(matches!(
        executor.prepare(Arc::new(bomb)).await,
        Err(ExecutorError::ModuleTooComplex(_))
    ));
    // A run waits for the pool instead of failing.
    let run = executor.run(job(ECHO));
    let (compiled, ran) = tokio::join!(compiling, run);
    compiled.expect("task").expect("compiles");
    assert_eq!(exit_code(&ran), 0);
    assert_eq!(executor.compiles_running(), 0);
}

/// Signed LEB128 for `i32.const` immediates.
fn sleb128(mut value: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

/// A function body declaring `locals` locals of `value_type`: `code` then `end`.
fn body_with_locals(locals: usize, value_type: u8, code: &[u8]) -> Vec<u8> {
    let mut body = vec![1];
    leb128(locals, &mut body);
    body.push(value_type);
    body.extend_from_slice(code);
    body.push(0x0b);
    body
}

/// `locals` i32 locals carried through `loops` loops (each bumps one local), then all read.
fn loops_through_locals(locals: usize, loops: usize) -> Vec<u8> {
    let mut code = Vec::new();
    for n in 0..loops {
        code.extend_from_slice(&[0x03, 0x40, 0x20]);
        leb128(n % locals, &mut code);
        code.extend_from_slice(&[0x41, 0x01, 0x6a, 0x22]);
        leb128(n % locals, &mut code);
        code.extend_from_slice(&[0x0d, 0x00, 0x0b]);
    }
    for n in 0..locals {
        code.push(0x20);
        leb128(n, &mut code);
        code.push(0x1a);
    }
    binary_module(&[body_with_locals(locals, 0x7f, &code)])
}

/// `locals` i32 locals through `joins` `if`s on a loaded value (each sets one local), then all
/// read.
fn ifs_through_locals(locals: usize, joins: usize) -> Vec<u8> {
    let mut code = Vec::new();
    for n in 0..joins {
        code.extend_from_slice(&[0x41, 0x00, 0x28, 0x02, 0x00, 0x04, 0x40, 0x41]);
        sleb128(n as i64, &mut code);
        code.push(0x21);
        leb128(n % locals, &mut code);
        code.push(0x0b);
    }
    for n in 0..locals {
        code.push(0x20);
        leb128(n, &mut code);
        code.push(0x1a);
    }
    binary_module(&[body_with_locals(locals, 0x7f, &code)])
}

/// Resident set and its peak, MiB (Linux).
fn resident_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Compile time and memory of bombs and of the worst modules the caps accept. Run with
/// `cargo test --release -p suanli-node executor::tests::measure_compile_bounds -- --ignored
/// --nocapture --test-threads 1` (figures in docs/benchmarks.md). Refused modules are checked
/// only; accepted ones are compiled with an empty cache budget, so nothing stays cached.
#[test]
#[ignore = "measurement; run in release mode"]
#[allow(clippy::print_stderr)]
fn measure_compile_bounds() {
    let executor = Executor::new(ExecutorConfig {
        module_cache_bytes: 0,
        ..ExecutorConfig::default()
    })
    .expect("executor starts");
    executor.check_module(HELLO.as_bytes()).expect("warm up");
    let calls = |count: usize| binary_module(&[body(&[0x10, 0x01].repeat(count)), body(&[])]);

    // A value loaded from memory, then `local.get 0; <operator>; local.set 0` repeated on it,
    // and the result stored, so that none of it is dead code. `f64` (0x7c) or `v128` (0x7b).
    let unary = |value_type: u8, operator: &[u8], count: usize| {
        let (load, store): (&[u8], &[u8]) = if value_type == 0x7c {
            (&[0x2b, 0x03, 0x00], &[0x39, 0x03, 0x00])
        } else {
            (&[0xfd, 0x00, 0x04, 0x00], &[0xfd, 0x0b, 0x04, 0x00])
        };
        let mut code = vec![0x41, 0x00];
        code.extend_from_slice(load);
        code.extend_from_slice(&[0x21, 0x00]);
        for _ in 0..count {
            code.extend_from_slice(&[0x20, 0x00]);
            code.extend_from_slice(operator);
            code.extend_from_slice(&[0x21, 0x00]);
        }
        code.extend_from_slice(&[0x41, 0x00, 0x20, 0x00]);
        code.extend_from_slice(store);
        binary_module(&[body_with_locals(1, value_type, &code)])
    };
    // `functions` functions of `count` × (i32.load; i32.store) at varied addresses.
    let loads_and_stores = |functions: usize, count: usize| {
        let mut code = Vec::new();
        for n in 0..count {
            let address = (n * 4 % 60_000) as i64;
            for _ in 0..2 {
                code.push(0x41);
                sleb128(address, &mut code);
            }
            code.extend_from_slice(&[0x28, 0x02, 0x00, 0x36, 0x02, 0x04]);
        }
        binary_module(&vec![body(&code); functions])
    };
    let memory_copies = |count: usize| {
        let step = [
            0x41, 0x00, 0x41, 0xe4, 0x00, 0x41, 0x0a, 0xfc, 0x0a, 0x00, 0x00,
        ];
        binary_module(&[body(&step.repeat(count))])
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "300,000 empty functions",
            binary_module(&vec![body(&[]); 300_000]),
        ),
        (
            "10,000 empty loops",
            binary_module(&[body(&[0x03, 0x40, 0x0b].repeat(10_000))]),
        ),
        (
            "1,000 locals through 1,000 loops",
            loops_through_locals(1000, 1000),
        ),
        (
            "4,000 locals through 4,000 ifs",
            ifs_through_locals(4000, 4000),
        ),
        ("100,000 calls", calls(100_000)),
        (
            "4,830 empty functions",
            binary_module(&vec![body(&[]); 4830]),
        ),
        ("30,000 calls", calls(30_000)),
        (
            "10 locals through 1,500 loops",
            loops_through_locals(10, 1500),
        ),
        (
            "1,000 locals through 1,000 ifs",
            ifs_through_locals(1000, 1000),
        ),
        ("4 × 9,000 i32 loads and stores", loads_and_stores(4, 9_000)),
        (
            "7,890 f64 div+sqrt",
            unary(0x7c, &[0x20, 0x00, 0xa3, 0x9f], 7_890),
        ),
        ("30,000 f64.sqrt", unary(0x7c, &[0x9f], 30_000)),
        ("14,990 f64.sqrt", unary(0x7c, &[0x9f], 14_990)),
        (
            "14,990 i32x4.trunc_sat_f32x4_u",
            unary(0x7b, &[0xfd, 0xf9, 0x01], 14_990),
        ),
        ("21,000 memory.copy", memory_copies(21_000)),
        (
            "30,000 i32x4.trunc_sat_f32x4_u",
            unary(0x7b, &[0xfd, 0xf9, 0x01], 30_000),
        ),
    ];
    eprintln!("| module | bytes | verdict | check or compile | RSS before | peak | after |");
    for (name, module) in cases {
        // Resets VmHWM to the current resident set, so the peak is this module's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let (before, _) = resident_mib();
        let started = Instant::now();
        let verdict = match executor.check_module(&module) {
            Ok(_) => "accepted".to_owned(),
            Err(error) => error.to_string(),
        };
        let elapsed = started.elapsed();
        let (after, peak) = resident_mib();
        eprintln!(
            "| {name} | {} | {verdict} | {elapsed:.2?} | {before} MiB | {peak} MiB | {after} MiB |",
            module.len()
        );
    }
}
