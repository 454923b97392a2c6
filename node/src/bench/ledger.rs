//! The `ledger` scenario: durable appends, verification and proofs, each against its raw floor.
//!
//! - Appends: a fresh ledger (`ledger::Store`, the node's own code) in the run's directory.
//!   Floor: a record-tree insert followed by a durability barrier (`storage::RecordTree` insert +
//!   `Storage::sync`: sled flush + fsync of sled's files, the same barrier the ledger uses), one
//!   at a time. Then one appender at a
//!   time, then 64 concurrent appenders (group commit: many entries per barrier).
//! - Verification: the entries just appended, read back with `LedgerHandle::range`, verified
//!   on one core as a whole chain (links, sequence, timestamps, every signature, owner a
//!   party) one signature at a time (`verify_chain`) and with batched signatures
//!   (`verify_chain_batched`, 1,024 entries per batch, as `ledger verify` does), against `verify_strict`/s divided by the
//!   signatures per entry (the ledger is contract, receipt, settlement: 5 signatures / 3).
//! - Inclusion proofs: generation in a Merkle tree of 10⁴ and 10⁶ leaves (protocol crate).

use std::time::Instant;

use suanli_protocol::ledger::{EntryBody, verify_chain, verify_chain_batched};
use suanli_protocol::merkle::MerkleTree;
use suanli_protocol::{Hash32, NodeId};
use tokio_util::sync::CancellationToken;

use super::floor::fresh_seed;
use super::{BenchError, Context, Figure, us};
use crate::config::StorageConfig;
use crate::fixtures::{deal, provider, requester};
use crate::ledger::{LedgerHandle, MAX_RANGE, Store};
use crate::storage::{RecordTree, Storage};

const SCENARIO: &str = "ledger";
/// Signatures per entry in a ledger of (contract, receipt, settlement) triples.
const SIGNATURES_PER_ENTRY: f64 = 5.0 / 3.0;
const APPENDERS: usize = 64;
/// Entries per signature batch when verifying.
const VERIFY_BATCH: usize = 1024;

fn fail(error: impl std::fmt::Display) -> BenchError {
    BenchError::scenario(SCENARIO, error)
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let floors = context.floors().await?;
    let quick = context.options.quick;
    let path = context.workspace.subdir("ledger")?.join("db");
    let owner = provider().node_id();
    let (storage, store) = tokio::task::spawn_blocking(move || {
        let storage = Storage::open(&path, &StorageConfig::default()).map_err(fail)?;
        let store = Store::open(&storage, owner).map_err(fail)?;
        Ok::<_, BenchError>((storage, store))
    })
    .await
    .map_err(fail)??;
    let cancel = CancellationToken::new();
    let (ledger, task) = store.start(cancel.clone());
    let records = storage.records("bench-floor");
    let result =
        appends_and_verification(&ledger, &records, quick, floors.verify_strict_per_sec).await;
    drop(ledger);
    cancel.cancel();
    let _ = task.await;
    let mut figures = result?;
    let proofs = tokio::task::spawn_blocking(move || inclusion_proofs(quick))
        .await
        .map_err(fail)?;
    figures.extend(proofs);
    Ok(figures)
}

async fn appends_and_verification(
    ledger: &LedgerHandle,
    records: &RecordTree,
    quick: bool,
    verify_strict_per_sec: f64,
) -> Result<Vec<Figure>, BenchError> {
    let (requester, provider) = (requester(), provider());
    let bodies: Vec<EntryBody> = (0..APPENDERS as u64)
        .map(|nonce| deal(nonce, &requester, &provider))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?
        .into_iter()
        .flatten()
        .collect();
    let body = |i: usize| bodies[i % bodies.len()].clone();

    // Floor: sled insert + barrier, one at a time.
    let rounds = if quick { 200 } else { 1_000 };
    let started = Instant::now();
    for i in 0..rounds as u64 {
        records.insert(&i.to_be_bytes(), &[7; 100]).map_err(fail)?;
        records.flush().await.map_err(fail)?;
    }
    let raw_rate = f64::from(rounds) / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for i in 0..rounds as usize {
        ledger.append(body(i)).await.map_err(fail)?;
    }
    let single_rate = f64::from(rounds) / started.elapsed().as_secs_f64();

    let total = if quick { 3_000 } else { 20_000 };
    let before = ledger.stats();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for appender in 0..APPENDERS {
        let ledger = ledger.clone();
        let mine: Vec<EntryBody> = (appender..total).step_by(APPENDERS).map(body).collect();
        tasks.spawn(async move {
            for body in mine {
                ledger.append(body).await?;
            }
            Ok::<(), crate::ledger::LedgerError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(fail)?.map_err(fail)?;
    }
    let group_rate = total as f64 / started.elapsed().as_secs_f64();
    let after = ledger.stats();
    let per_barrier = (after.appended - before.appended) as f64
        / (after.barriers - before.barriers).max(1) as f64;

    // Read back every entry the way an auditor gets them.
    let mut raws = Vec::new();
    loop {
        let page = ledger.range(raws.len() as u64, MAX_RANGE).map_err(fail)?;
        if page.is_empty() {
            break;
        }
        raws.extend(page.into_iter().map(|stored| stored.raw));
    }
    let owner = ledger.owner();
    let (strict, batched) = tokio::task::spawn_blocking(move || verify_rates(owner, &raws))
        .await
        .map_err(fail)??;
    let verify_floor = verify_strict_per_sec / SIGNATURES_PER_ENTRY;
    let floor_metric = "verify_strict/s ÷ 5/3 signatures per entry";
    Ok(vec![
        Figure::plain(
            SCENARIO,
            "sled insert + barrier, one at a time (raw floor)",
            raw_rate,
            "/s",
        ),
        Figure::against(
            SCENARIO,
            "durable appends/s, one appender",
            single_rate,
            "/s",
            raw_rate,
            "sled insert + barrier, one at a time",
        ),
        Figure::against(
            SCENARIO,
            "durable appends/s, 64 appenders (group commit)",
            group_rate,
            "/s",
            raw_rate,
            "sled insert + barrier, one at a time",
        ),
        Figure::plain(
            SCENARIO,
            "entries per barrier, 64 appenders",
            per_barrier,
            "entries",
        ),
        Figure::against(
            SCENARIO,
            "entries verified/s, strict, one core",
            strict,
            "entries/s",
            verify_floor,
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "entries verified/s, batched, one core",
            batched,
            "entries/s",
            verify_floor,
            floor_metric,
        ),
    ])
}

/// Whole-chain verification rates (strict, batched), entries per second on this thread.
fn verify_rates(owner: NodeId, raws: &[Vec<u8>]) -> Result<(f64, f64), BenchError> {
    let entries = || raws.iter().map(Vec::as_slice);
    let started = Instant::now();
    let head = verify_chain(owner, entries()).map_err(fail)?;
    let strict = head.size as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let batched_head =
        verify_chain_batched(owner, entries(), VERIFY_BATCH, fresh_seed()).map_err(fail)?;
    let batched = batched_head.size as f64 / started.elapsed().as_secs_f64();
    if batched_head != head {
        return Err(fail("batched and strict verification disagree"));
    }
    Ok((strict, batched))
}

/// Inclusion-proof generation at 10⁴ and 10⁶ leaves: mean time per proof over 1,000 proofs.
fn inclusion_proofs(quick: bool) -> Vec<Figure> {
    let mut figures = Vec::new();
    for (label, leaves) in [("10^4", 10_000u64), ("10^6", 1_000_000)] {
        let started = Instant::now();
        let tree = MerkleTree::from_leaf_hashes((0..leaves).map(|i| Hash32::of(&i.to_be_bytes())));
        let built = started.elapsed();
        let proofs = if quick { 200 } else { 1_000 };
        let mut index = 12_345u64;
        let started = Instant::now();
        let mut hashes = 0;
        for _ in 0..proofs {
            index = index
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1)
                % leaves;
            hashes += tree
                .inclusion_proof(index, leaves)
                .map_or(0, |proof| proof.len());
        }
        let per_proof = started.elapsed() / proofs;
        figures.push(Figure::plain(
            SCENARIO,
            format!("inclusion proof generation, {label} entries"),
            us(per_proof),
            "µs",
        ));
        figures.push(Figure::plain(
            SCENARIO,
            format!("tree of {label} leaf hashes: build"),
            built.as_secs_f64() * 1e3,
            "ms",
        ));
        std::hint::black_box(hashes);
    }
    figures
}
