//! The `throughput` scenario: settled jobs per second across three nodes with many concurrent
//! submitters and durable ledgers.
//!
//! Three nodes on loopback; 64 client tasks submit `hello.wat` round-robin to the three APIs
//! (each node places it wherever its ranking says, itself included) and long-poll each job
//! until it is final. Settled jobs per second over the window.
//!
//! Floors, from the `floor` scenario of the same run, turned into jobs per second:
//! - **fsync**: a remote job is [`ENTRIES_PER_JOB`] ledger entries (contract, receipt and
//!   settlement in each of the two ledgers). One fsync per entry on the one disk the three
//!   nodes share gives `fsync/s ÷ 6` jobs/s. Group commit shares barriers between entries, so
//!   the node can exceed this floor: a ratio above 1 is the group commit's gain.
//! - **signatures**: a job needs [`SIGNS_PER_JOB`] signatures (offer; contract and its
//!   countersignature; receipt; settlement and its countersignature) and, at the least, each
//!   party verifying the other's once: [`VERIFIES_NEEDED`] `verify_strict`. On all cores:
//!   `cores ÷ (6 / sign/s + 6 / verify/s)` jobs/s. What the code does is [`SIGNS_TODAY`] and
//!   [`VERIFIES_TODAY`], counted by the protocol crate's engine test (one contract through
//!   both machines), not by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::job_latency::run_job;
use super::nodes::{start_star, stop_all};
use super::{BenchError, Context, Figure};

const SCENARIO: &str = "throughput";
/// Ledger entries one remote job adds (3 per party).
pub const ENTRIES_PER_JOB: f64 = 6.0;
/// Signatures made per job.
pub const SIGNS_PER_JOB: f64 = 6.0;
/// Signature verifications a job needs: each party checks each of the other's signatures once.
pub const VERIFIES_NEEDED: f64 = 6.0;
/// Signatures made per remote job by the code of this commit:
/// [`SIGNS_PER_CONTRACT`](suanli_protocol::engine::SIGNS_PER_CONTRACT), which a protocol test
/// counts on one contract driven through both machines (a provider whose contract append fails
/// signs a decline on top).
pub const SIGNS_TODAY: f64 = suanli_protocol::engine::SIGNS_PER_CONTRACT as f64;
/// `verify_strict` calls per remote job in the engine and ledger code of this commit:
/// [`VERIFIES_PER_CONTRACT`](suanli_protocol::engine::VERIFIES_PER_CONTRACT), counted by the
/// same test (requester 4, provider 2; the ledger appends the engine's documents as checked and
/// verifies none again). It was 22 before each signature was checked once.
pub const VERIFIES_TODAY: f64 = suanli_protocol::engine::VERIFIES_PER_CONTRACT as f64;
/// Concurrent submitters.
const CLIENTS: usize = 64;

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let floors = context.floors().await?;
    let window = Duration::from_secs(context.options.pick(3, 10));
    let nodes = start_star(&context.workspace, 3).await?;
    let apis: Vec<String> = nodes.iter().map(super::BenchNode::api_url).collect();
    let before: Vec<_> = nodes
        .iter()
        .map(|node| node.handle.ledger.stats())
        .collect();
    let result = measure(&apis, window).await;
    let after: Vec<_> = nodes
        .iter()
        .map(|node| node.handle.ledger.stats())
        .collect();
    stop_all(nodes).await;
    let (settled, failed, elapsed) = result?;
    let rate = settled as f64 / elapsed.as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let fsync_floor = floors.fsync_per_sec / ENTRIES_PER_JOB;
    let signature_floor = cores
        / (SIGNS_PER_JOB / floors.sign_per_sec + VERIFIES_NEEDED / floors.verify_strict_per_sec);
    let signature_today =
        cores / (SIGNS_TODAY / floors.sign_per_sec + VERIFIES_TODAY / floors.verify_strict_per_sec);
    let entries: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.appended - b.appended)
        .sum();
    let barriers: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.barriers - b.barriers)
        .sum();
    let largest = after.iter().map(|a| a.largest_batch).max().unwrap_or(0);
    Ok(vec![
        Figure::against(
            SCENARIO,
            "settled jobs/s (fsync floor)",
            rate,
            "jobs/s",
            fsync_floor,
            "durable small writes/s ÷ 6 entries per job",
        ),
        Figure::against(
            SCENARIO,
            "settled jobs/s (signature floor)",
            rate,
            "jobs/s",
            signature_floor,
            format!("{cores} cores ÷ (6 signs + 6 verify_strict)"),
        ),
        Figure::against(
            SCENARIO,
            "settled jobs/s (signature work as coded)",
            rate,
            "jobs/s",
            signature_today,
            format!("{cores} cores ÷ ({SIGNS_TODAY} signs + {VERIFIES_TODAY} verify_strict)"),
        ),
        Figure::plain(
            SCENARIO,
            "jobs settled in the window",
            settled as f64,
            "jobs",
        ),
        Figure::plain(SCENARIO, "jobs failed in the window", failed as f64, "jobs"),
        Figure::plain(
            SCENARIO,
            "ledger entries per fsync barrier (mean)",
            entries as f64 / barriers.max(1) as f64,
            "entries",
        ),
        Figure::plain(
            SCENARIO,
            "ledger entries per fsync barrier (largest)",
            largest as f64,
            "entries",
        ),
    ])
}

/// (settled, failed, elapsed) for [`CLIENTS`] clients over `window`.
async fn measure(apis: &[String], window: Duration) -> Result<(u64, u64, Duration), BenchError> {
    let http = reqwest::Client::new();
    let body = Arc::new(json!({ "module_wat": super::HELLO_WAT }));
    // Warm-up: every node compiles the module and learns its peers' connections.
    for api in apis {
        for _ in 0..5 {
            run_job(&http, api, &body).await?;
        }
    }
    let settled = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + window;
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let api = apis
            .get(client % apis.len().max(1))
            .cloned()
            .unwrap_or_default();
        let (http, body) = (http.clone(), body.clone());
        let (settled, failed) = (settled.clone(), failed.clone());
        clients.spawn(async move {
            while Instant::now() < stop {
                let job = run_job(&http, &api, &body).await?;
                if job["state"] == "succeeded" {
                    settled.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.map_err(|error| BenchError::scenario(SCENARIO, error))??;
    }
    Ok((
        settled.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed(),
    ))
}
