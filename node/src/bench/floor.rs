//! The `floor` scenario: what the primitives cost on this machine, one core, nothing of suanli
//! around them. Every other scenario's floor is built from these, measured in the same run.
//!
//! - ed25519 (ed25519-dalek, 256-byte messages): sign, `verify_strict`, dalek's batch
//!   verification (256 per batch), and the protocol's strict batch (`SignatureBatch`: dalek's
//!   batch plus the point checks that keep `verify_strict`'s verdict);
//! - fsync: in the run's directory, one at a time, `fdatasync` after appending 100 bytes to a
//!   growing file and after overwriting 4 KiB of a preallocated one; the faster is the floor;
//! - wasmtime: the executor running `hello.wat` warm (compiled module cached, pooling
//!   allocator, including the hand-off to a blocking thread);
//! - libp2p: one request-response round trip of 256 bytes between two bare swarms on loopback
//!   over the node's TCP + noise + yamux stack.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use suanli_protocol::signed::{SignatureBatch, SignatureCheck};
use suanli_protocol::{Keypair, Limits};

use super::{BenchError, Context, Figure, Options, Samples, Workspace, ms, us};
use crate::executor::{Executor, ExecutorConfig, JobInput};

const SCENARIO: &str = "floor";
/// Signatures per batch in the batch-verification floors.
pub const BATCH: usize = 256;

/// The floors of one run.
#[derive(Debug, Clone)]
pub struct Floors {
    /// ed25519 signatures per second, one core.
    pub sign_per_sec: f64,
    /// `verify_strict` per second, one core.
    pub verify_strict_per_sec: f64,
    /// Signatures per second through ed25519-dalek's `verify_batch` (batches of [`BATCH`]).
    pub batch_verify_per_sec: f64,
    /// Signatures per second through the protocol's strict `SignatureBatch`.
    pub strict_batch_per_sec: f64,
    /// Durable small writes per second, one at a time: the faster of the two below.
    pub fsync_per_sec: f64,
    /// Median of that kind of write.
    pub fsync_p50: Duration,
    /// 100-byte appends to a growing file, each `fdatasync`ed.
    pub fsync_append_per_sec: f64,
    /// 4 KiB overwrites in a preallocated file, each `fdatasync`ed.
    pub fsync_overwrite_per_sec: f64,
    /// Median warm executor run of `hello.wat`.
    pub wasm_run_p50: Duration,
    /// Median libp2p request-response round trip over loopback TCP.
    pub round_trip_p50: Duration,
    pub round_trip_p99: Duration,
}

impl Floors {
    pub async fn measure(options: &Options, workspace: &Workspace) -> Result<Floors, BenchError> {
        let signatures = options.pick(1_000, 5_000);
        let (sign_per_sec, verify_strict_per_sec, batch_verify_per_sec, strict_batch_per_sec) =
            tokio::task::spawn_blocking(move || signature_rates(signatures))
                .await
                .map_err(|error| BenchError::scenario(SCENARIO, error))?;
        let wasm = wasm_runs(options.pick(200, 1_000)).await?;
        let trips =
            crate::network::floor::request_response_round_trips(options.pick(200, 1_000), 256)
                .await
                .map_err(|error| BenchError::scenario(SCENARIO, error))?;
        let trips = Samples::new(trips);
        let mut floors = Floors {
            sign_per_sec,
            verify_strict_per_sec,
            batch_verify_per_sec,
            strict_batch_per_sec,
            fsync_per_sec: 0.0,
            fsync_p50: Duration::ZERO,
            fsync_append_per_sec: 0.0,
            fsync_overwrite_per_sec: 0.0,
            wasm_run_p50: wasm.p50(),
            round_trip_p50: trips.p50(),
            round_trip_p99: trips.percentile(0.99),
        };
        floors.measure_fsync(options, workspace).await?;
        Ok(floors)
    }

    /// (Re)measures the fsync floors.
    pub async fn measure_fsync(
        &mut self,
        options: &Options,
        workspace: &Workspace,
    ) -> Result<(), BenchError> {
        let dir = workspace.subdir("fsync")?;
        let rounds = options.pick(200, 1_000);
        let (appends, overwrites) =
            tokio::task::spawn_blocking(move || fsync_samples(&dir, rounds))
                .await
                .map_err(|error| BenchError::scenario(SCENARIO, error))?
                .map_err(|error| BenchError::scenario(SCENARIO, format!("fsync: {error}")))?;
        // The floor is the faster way: the best a durable small write can do on this disk.
        let fastest = if rate(&overwrites) >= rate(&appends) {
            &overwrites
        } else {
            &appends
        };
        self.fsync_per_sec = rate(fastest);
        self.fsync_p50 = fastest.p50();
        self.fsync_append_per_sec = rate(&appends);
        self.fsync_overwrite_per_sec = rate(&overwrites);
        Ok(())
    }
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let floors = context.floors().await?;
    Ok(vec![
        Figure::plain(SCENARIO, "ed25519 sign", floors.sign_per_sec, "/s"),
        Figure::plain(
            SCENARIO,
            "ed25519 verify_strict",
            floors.verify_strict_per_sec,
            "/s",
        ),
        Figure::plain(
            SCENARIO,
            "ed25519 batch verify (dalek, 256/batch)",
            floors.batch_verify_per_sec,
            "/s",
        ),
        Figure::against(
            SCENARIO,
            "ed25519 strict batch verify (SignatureBatch, 256/batch)",
            floors.strict_batch_per_sec,
            "/s",
            floors.batch_verify_per_sec,
            "dalek batch verify",
        ),
        Figure::plain(
            SCENARIO,
            "fdatasync'd 100-byte appends, growing file (one at a time)",
            floors.fsync_append_per_sec,
            "/s",
        ),
        Figure::plain(
            SCENARIO,
            "fdatasync'd 4 KiB overwrites, preallocated file (one at a time)",
            floors.fsync_overwrite_per_sec,
            "/s",
        ),
        Figure::plain(
            SCENARIO,
            "durable small write p50 (the faster kind; the fsync floor)",
            ms(floors.fsync_p50),
            "ms",
        ),
        Figure::plain(
            SCENARIO,
            "wasmtime instantiate+run hello.wat (warm, pooling) p50",
            us(floors.wasm_run_p50),
            "µs",
        ),
        Figure::plain(
            SCENARIO,
            "libp2p request-response round trip (TCP+noise+yamux, loopback) p50",
            us(floors.round_trip_p50),
            "µs",
        ),
        Figure::plain(
            SCENARIO,
            "libp2p request-response round trip p99",
            us(floors.round_trip_p99),
            "µs",
        ),
    ])
}

/// (sign, verify_strict, dalek batch, strict batch) per second on this thread.
fn signature_rates(count: usize) -> (f64, f64, f64, f64) {
    let keys: Vec<SigningKey> = (0..16u8)
        .map(|n| SigningKey::from_bytes(&[n.wrapping_add(1); 32]))
        .collect();
    let messages: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut message = vec![0x42; 256];
            message[..8].copy_from_slice(&(i as u64).to_be_bytes());
            message
        })
        .collect();
    let key_of = |i: usize| &keys[i % keys.len()];

    let started = Instant::now();
    let signatures: Vec<Signature> = messages
        .iter()
        .enumerate()
        .map(|(i, message)| key_of(i).sign(message))
        .collect();
    let sign = count as f64 / started.elapsed().as_secs_f64();

    let verifying: Vec<VerifyingKey> = (0..count).map(|i| key_of(i).verifying_key()).collect();
    let started = Instant::now();
    let valid = messages
        .iter()
        .zip(&signatures)
        .zip(&verifying)
        .filter(|((message, signature), key)| key.verify_strict(message, signature).is_ok())
        .count();
    let verify = count as f64 / started.elapsed().as_secs_f64();
    debug_assert_eq!(valid, count);

    let started = Instant::now();
    let mut batched = 0;
    for chunk in (0..count).collect::<Vec<_>>().chunks(BATCH) {
        let chunk_messages: Vec<&[u8]> = chunk.iter().map(|&i| messages[i].as_slice()).collect();
        let chunk_signatures: Vec<Signature> = chunk.iter().map(|&i| signatures[i]).collect();
        let chunk_keys: Vec<VerifyingKey> = chunk.iter().map(|&i| verifying[i]).collect();
        if ed25519_dalek::verify_batch(&chunk_messages, &chunk_signatures, &chunk_keys).is_ok() {
            batched += chunk.len();
        }
    }
    let batch = batched as f64 / started.elapsed().as_secs_f64();

    // The same signatures as SignatureChecks (node ids of the same keys), built outside the clock.
    let checks: Vec<SignatureCheck> = (0..count)
        .filter_map(|i| {
            let node = Keypair::from_secret_bytes(key_of(i).to_bytes()).node_id();
            Some(SignatureCheck {
                kind: "bench",
                signer: node,
                message: messages.get(i)?.clone(),
                signature: *signatures.get(i)?,
            })
        })
        .collect();
    let mut strict = SignatureBatch::new(fresh_seed());
    let started = Instant::now();
    let mut strict_ok = 0;
    for chunk in checks.chunks(BATCH) {
        strict.clear();
        for check in chunk {
            strict.push(check.clone());
        }
        if strict.verify().is_ok() {
            strict_ok += chunk.len();
        }
    }
    let strict_rate = strict_ok as f64 / started.elapsed().as_secs_f64();
    (sign, verify, batch, strict_rate)
}

/// 32 bytes from the OS random source, for batch verification seeds.
pub fn fresh_seed() -> [u8; 32] {
    Keypair::generate()
        .map(|key| key.secret_bytes())
        .unwrap_or_else(|_| {
            // Without OS randomness, fall back to the clock: still unknown to the signers of
            // the benchmark's own documents.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            let mut seed = [0u8; 32];
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
            seed
        })
}

/// `rounds` fsync'd small writes in `dir`, two ways: 100-byte appends to a growing file (each
/// `fdatasync` also commits the new file size to the filesystem journal) and 4 KiB overwrites
/// of a preallocated file (data only, as a log with preallocated segments does). Returns
/// (append samples, overwrite samples).
fn fsync_samples(dir: &std::path::Path, rounds: usize) -> std::io::Result<(Samples, Samples)> {
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::File::create(dir.join("fsync-append"))?;
    let mut appends = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        file.write_all(&[7; 100])?;
        file.sync_data()?;
        appends.push(started.elapsed());
    }
    let file = std::fs::File::create(dir.join("fsync-overwrite"))?;
    file.set_len(4096 * 256)?;
    file.sync_all()?;
    let mut overwrites = Vec::with_capacity(rounds);
    for round in 0..rounds as u64 {
        let started = Instant::now();
        file.write_all_at(&[9; 4096], 4096 * (round % 256))?;
        file.sync_data()?;
        overwrites.push(started.elapsed());
    }
    Ok((Samples::new(appends), Samples::new(overwrites)))
}

/// Operations per second over samples taken one at a time.
fn rate(samples: &Samples) -> f64 {
    samples.len() as f64 / samples.0.iter().sum::<Duration>().as_secs_f64()
}

/// Warm executor runs of `hello.wat` (after 20 unrecorded ones).
pub async fn wasm_runs(count: usize) -> Result<Samples, BenchError> {
    let executor = Executor::new(ExecutorConfig::default())
        .map_err(|error| BenchError::scenario(SCENARIO, error))?;
    let input = JobInput {
        module: Arc::new(super::HELLO_WAT.as_bytes().to_vec()),
        args: Vec::new(),
        env: Default::default(),
        stdin: Vec::new(),
        limits: Limits {
            fuel: 1_000_000_000,
            memory_bytes: 64 << 20,
            wall_time_ms: 10_000,
            output_bytes: 1 << 20,
            tasks: 1,
        },
        cancel: Default::default(),
    };
    let mut samples = Vec::with_capacity(count);
    for run in 0..count + 20 {
        let started = Instant::now();
        let result = executor.run(input.clone()).await;
        if run >= 20 {
            samples.push(started.elapsed());
        }
        if !matches!(
            result.outcome,
            suanli_protocol::Outcome::Succeeded { exit_code: 0, .. }
        ) {
            return Err(BenchError::scenario(
                SCENARIO,
                format!("hello.wat did not succeed: {:?}", result.outcome),
            ));
        }
    }
    Ok(Samples::new(samples))
}
