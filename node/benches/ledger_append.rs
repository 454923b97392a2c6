//! Criterion benchmark of a durable ledger append (the node's `ledger::Store` and its
//! group-commit writer: verify the body, append, flush + fsync) in a temporary directory.
//! `cargo bench -p suanli-node --bench ledger_append`. Timings only; nothing is asserted.

use criterion::{Criterion, criterion_group, criterion_main};
use suanli_node::config::StorageConfig;
use suanli_node::fixtures::{deal, provider, requester};
use suanli_node::ledger::Store;
use suanli_node::storage::Storage;
use tokio_util::sync::CancellationToken;

fn ledger_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let storage =
        Storage::open(&dir.path().join("db"), &StorageConfig::default()).expect("open storage");
    let store = Store::open(&storage, provider().node_id()).expect("open");
    let cancel = CancellationToken::new();
    let (ledger, task) = runtime.block_on(async { store.start(cancel.clone()) });
    let bodies = deal(1, &requester(), &provider()).expect("deal");
    let mut group = c.benchmark_group("ledger");
    group.sample_size(30);
    let mut next = 0usize;
    group.bench_function(
        "durable append, one appender (verify + fsync barrier)",
        |b| {
            b.iter(|| {
                next += 1;
                let body = bodies[next % bodies.len()].clone();
                runtime.block_on(ledger.append(body)).expect("append")
            })
        },
    );
    group.bench_function(
        "durable append, 64 concurrent appenders (per batch of 64)",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for i in 0..64 {
                        let (ledger, body) = (ledger.clone(), bodies[i % bodies.len()].clone());
                        tasks.spawn(async move { ledger.append(body).await });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.expect("task").expect("append");
                    }
                })
            })
        },
    );
    group.finish();
    drop(ledger);
    cancel.cancel();
    let _ = runtime.block_on(task);
}

criterion_group!(benches, ledger_append);
criterion_main!(benches);
