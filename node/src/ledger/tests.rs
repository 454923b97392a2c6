//! Ledger tests with real signed documents and real files.

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suanli_protocol::checkpoint::PrefixProof;
use suanli_protocol::ledger::{EntryBody, EntryError, LedgerEntry, entry_hash};
use suanli_protocol::merkle::{
    ConsistencyProof, EMPTY_ROOT, InclusionProof, MerkleTree, verify_consistency,
};
use suanli_protocol::{CoSigned, Contract, Hash32, NodeId};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::StorageConfig;
use crate::fixtures::*;
use crate::storage::{Health, RecordTree, Storage, StorageError};

/// Every test runs under a deadline instead of hanging CI.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), future)
        .await
        .expect("test timed out")
}

/// Opens the database in `path` and the ledger of `owner` in it.
fn open_store(path: &Path, owner: NodeId) -> Result<Store, LedgerError> {
    Store::open(&Storage::open(path, &StorageConfig::default())?, owner)
}

/// A started ledger.
struct Running {
    handle: LedgerHandle,
    storage: Storage,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

impl Running {
    fn open(path: &Path, owner: NodeId) -> Running {
        Running::open_with(path, owner, &StorageConfig::default())
    }

    fn open_with(path: &Path, owner: NodeId, config: &StorageConfig) -> Running {
        let cancel = CancellationToken::new();
        let storage = Storage::open(path, config).unwrap();
        let (handle, task) = Store::open(&storage, owner).unwrap().start(cancel.clone());
        Running {
            handle,
            storage,
            task,
            cancel,
        }
    }

    /// A clean stop: the writer commits what is queued, runs its final barrier, and the
    /// database closes once the handle is dropped.
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
        drop(self.handle);
    }
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("db")
}

/// A stopped ledger of `provider()` with `n` contract entries.
async fn ledger_with(n: u64) -> TempDir {
    let dir = TempDir::new().unwrap();
    let ledger = Running::open(&db_path(&dir), provider().node_id());
    for nonce in 0..n {
        ledger.handle.append(contract_body(nonce)).await.unwrap();
    }
    ledger.stop().await;
    dir
}

/// Edits the entries tree of a stopped ledger directly in the database, as an intruder or a
/// broken disk would.
fn tamper(path: &Path, edit: impl FnOnce(&RecordTree)) {
    let storage = Storage::open(path, &StorageConfig::default()).unwrap();
    let entries = storage.ledger_tree(store::ENTRIES_TREE);
    edit(&entries);
    storage.barrier().unwrap();
}

fn damaged_detail(result: Result<Store, LedgerError>) -> String {
    match result {
        Err(LedgerError::Damaged { detail, .. }) => detail,
        other => panic!("expected Damaged, got {other:?}"),
    }
}

#[tokio::test]
async fn append_range_verify() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider();
        let ledger = Running::open(&db_path(&dir), owner.node_id());
        assert_eq!(ledger.handle.head(), ChainHead::EMPTY);
        let deal = Deal::new(1, &requester(), &owner, 500_000).unwrap();
        let mut bodies = deal.bodies().to_vec();
        bodies.push(failure_body(&owner, requester().node_id()));
        bodies.push(evidence_body(&owner, stranger().node_id()));
        let mut appended = Vec::new();
        for body in &bodies {
            appended.push(ledger.handle.append(body.clone()).await.unwrap());
        }
        assert_eq!(
            appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        let head = ledger.handle.head();
        assert_eq!(head.size, 5);
        assert_eq!(head.head, appended[4].hash);
        assert_eq!(head.timestamp_ms, appended[4].timestamp_ms);

        let stored = ledger.handle.range(0, 100).unwrap();
        assert_eq!(stored.len(), 5);
        let mut prev = Hash32::ZERO;
        let mut last_time = 0;
        for ((entry, done), body) in stored.iter().zip(&appended).zip(&bodies) {
            let decoded = LedgerEntry::decode(&entry.raw).unwrap();
            assert_eq!(decoded.seq, entry.seq);
            assert_eq!(entry.seq, done.seq);
            assert_eq!(decoded.prev_hash, prev);
            assert_eq!(&decoded.body, body);
            assert!(decoded.timestamp_ms >= last_time);
            assert_eq!(entry_hash(&entry.raw), done.hash);
            prev = done.hash;
            last_time = decoded.timestamp_ms;
        }
        assert_eq!(ledger.handle.range(3, 100).unwrap().len(), 2);
        assert_eq!(ledger.handle.range(3, 1).unwrap()[0].seq, 3);
        assert!(ledger.handle.range(5, 10).unwrap().is_empty());
        assert!(ledger.handle.range(u64::MAX, 10).unwrap().is_empty());
        assert!(ledger.handle.range(0, 0).unwrap().is_empty());

        let report = ledger.handle.verify();
        assert_eq!(
            report,
            VerifyReport {
                ok: true,
                entries: 5,
                head: head.head.to_hex(),
                error: None
            }
        );
        assert_eq!(ledger.handle.owner(), owner.node_id());
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn range_is_capped() {
    within(async {
        let dir = TempDir::new().unwrap();
        let ledger = Running::open(&db_path(&dir), provider().node_id());
        let body = contract_body(1);
        let appends: Vec<_> = (0..MAX_RANGE + 10)
            .map(|_| {
                let handle = ledger.handle.clone();
                let body = body.clone();
                tokio::spawn(async move { handle.append(body).await.unwrap() })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        let page = ledger.handle.range(0, u32::MAX).unwrap();
        assert_eq!(page.len(), MAX_RANGE as usize);
        assert_eq!(
            ledger
                .handle
                .range(MAX_RANGE.into(), u32::MAX)
                .unwrap()
                .len(),
            10
        );
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn reopen_preserves_head() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let ledger = Running::open(&db_path(&dir), owner);
        for nonce in 0..3 {
            ledger.handle.append(contract_body(nonce)).await.unwrap();
        }
        let head = ledger.handle.head();
        ledger.stop().await;

        let store = open_store(&db_path(&dir), owner).unwrap();
        assert_eq!(store.head(), head);
        drop(store);
        let ledger = Running::open(&db_path(&dir), owner);
        assert_eq!(ledger.handle.head(), head);
        let next = ledger.handle.append(contract_body(3)).await.unwrap();
        assert_eq!(next.seq, 3);
        let raw = &ledger.handle.range(3, 1).unwrap()[0].raw;
        let entry = LedgerEntry::decode(raw).unwrap();
        assert_eq!(entry.prev_hash, head.head);
        assert!(entry.timestamp_ms >= head.timestamp_ms);
        assert!(ledger.handle.verify().ok);
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dropped_without_shutdown_keeps_acknowledged_entries() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let ledger = Running::open(&db_path(&dir), owner);
        let mut acknowledged = Vec::new();
        for nonce in 0..20 {
            acknowledged.push(ledger.handle.append(contract_body(nonce)).await.unwrap());
        }
        // No cancel, no final barrier: the writer is killed and every handle dropped.
        ledger.task.abort();
        let _ = ledger.task.await;
        drop((ledger.handle, ledger.storage));

        let store = open_store(&db_path(&dir), owner).unwrap();
        assert!(store.head().size >= 20);
        let stored = store.range(0, 20).unwrap();
        for (entry, done) in stored.iter().zip(&acknowledged) {
            assert_eq!(entry_hash(&entry.raw), done.hash);
        }
        assert!(store.verify().ok);
    })
    .await;
}

/// Copies the database's files while appends are in flight: the copy is what a crash at that
/// instant would leave (short of the page cache), torn writes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_taken_mid_flight_recovers_every_acknowledged_entry() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let ledger = Running::open(&db_path(&dir), owner);
        let body = contract_body(1);
        let stop = CancellationToken::new();
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let appenders: Vec<_> = (0..16)
            .map(|_| {
                let (handle, body, stop) = (ledger.handle.clone(), body.clone(), stop.clone());
                let acknowledged = Arc::clone(&acknowledged);
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let done = handle.append(body.clone()).await.unwrap();
                        acknowledged.lock().unwrap().push(done);
                    }
                })
            })
            .collect();
        for round in 0..3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let before: Vec<Appended> = acknowledged.lock().unwrap().clone();
            let copy = TempDir::new().unwrap();
            copy_dir(&db_path(&dir), copy.path());
            let store = open_store(copy.path(), owner).unwrap();
            assert!(
                store.head().size >= before.len() as u64,
                "round {round}: {} acknowledged, {} recovered",
                before.len(),
                store.head().size
            );
            for done in &before {
                let entry = store.range(done.seq, 1).unwrap();
                assert_eq!(entry_hash(&entry[0].raw), done.hash);
            }
            assert!(store.verify().ok);
        }
        stop.cancel();
        for appender in appenders {
            appender.await.unwrap();
        }
        ledger.stop().await;
    })
    .await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            // sled may delete a snapshot or blob while we copy; a crash would not see it either.
            let _ = std::fs::copy(item.path(), target);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_durable_and_contiguous() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let ledger = Running::open(&db_path(&dir), owner);
        let barriers_before = ledger.handle.stats().barriers;
        let bodies: Vec<EntryBody> = (0..10).map(contract_body).collect();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let handle = ledger.handle.clone();
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for body in bodies {
                        seqs.push(handle.append(body).await.unwrap().seq);
                    }
                    seqs
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.extend(task.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..500).collect::<Vec<u64>>());
        assert_eq!(ledger.handle.head().size, 500);
        let stats = ledger.handle.stats();
        assert_eq!(stats.appended, 500);
        assert!(stats.barriers - barriers_before < 500, "{stats:?}");
        let report = ledger.handle.verify();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 500);
        ledger.stop().await;

        // All of it is on disk, in order.
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert_eq!(store.head().size, 500);
        assert!(store.verify().ok);
    })
    .await;
}

/// On a single-threaded runtime all 200 appends are queued before the writer runs, so they
/// share one barrier.
#[tokio::test]
async fn group_commit_shares_one_barrier() {
    within(async {
        let dir = TempDir::new().unwrap();
        let ledger = Running::open(&db_path(&dir), provider().node_id());
        let before = ledger.handle.stats().barriers;
        let body = contract_body(1);
        let appends: Vec<_> = (0..200)
            .map(|_| {
                let (handle, body) = (ledger.handle.clone(), body.clone());
                tokio::spawn(async move { handle.append(body).await.unwrap() })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        let stats = ledger.handle.stats();
        assert_eq!(stats.appended, 200);
        assert!(stats.barriers - before <= 2, "{stats:?}");
        assert!(stats.largest_batch >= 100, "{stats:?}");
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_tampered_value_is_caught_at_its_index() {
    within(async {
        let dir = ledger_with(6).await;
        let owner = provider().node_id();
        tamper(&db_path(&dir), |entries| {
            let mut raw = entries.get(&2u64.to_be_bytes()).unwrap().unwrap().to_vec();
            // The last bytes are the provider's countersignature.
            let last = raw.len() - 1;
            raw[last] ^= 0x01;
            entries.insert(&2u64.to_be_bytes(), &raw).unwrap();
        });
        // Opening checks structure, not signatures: a middle entry's damage is for verify.
        let store = open_store(&db_path(&dir), owner).unwrap();
        let report = store.verify();
        assert!(!report.ok);
        assert_eq!(report.entries, 2);
        let error = report.error.unwrap();
        assert_eq!(error.index, 2);
        assert!(error.message.contains("signature"), "{}", error.message);
        drop(store);
        assert_eq!(
            verify_offline(dir.path(), owner)
                .unwrap()
                .error
                .unwrap()
                .index,
            2
        );

        // Swapping two valid entries breaks the chain where the first moved one sits.
        let dir = ledger_with(6).await;
        tamper(&db_path(&dir), |entries| {
            let one = entries.get(&1u64.to_be_bytes()).unwrap().unwrap();
            let two = entries.get(&2u64.to_be_bytes()).unwrap().unwrap();
            entries.insert(&1u64.to_be_bytes(), &two).unwrap();
            entries.insert(&2u64.to_be_bytes(), &one).unwrap();
        });
        let report = verify_offline(dir.path(), owner).unwrap();
        assert_eq!(report.error.unwrap().index, 1);
    })
    .await;
}

#[tokio::test]
async fn a_damaged_or_torn_tail_is_refused_at_open() {
    within(async {
        let owner = provider().node_id();

        // The last acknowledged entry is gone: the watermark says 6, 5 are stored.
        let dir = ledger_with(6).await;
        tamper(&db_path(&dir), |entries| {
            entries.remove(&5u64.to_be_bytes()).unwrap();
        });
        let detail = damaged_detail(open_store(&db_path(&dir), owner));
        assert!(detail.contains("6 entries were acknowledged"), "{detail}");

        // A hole in the middle.
        let dir = ledger_with(6).await;
        tamper(&db_path(&dir), |entries| {
            entries.remove(&2u64.to_be_bytes()).unwrap();
        });
        let detail = damaged_detail(open_store(&db_path(&dir), owner));
        assert!(detail.contains("entry 2 is missing"), "{detail}");

        // The count and the last entry's seq disagree.
        let dir = ledger_with(6).await;
        tamper(&db_path(&dir), |entries| {
            let three = entries.get(&3u64.to_be_bytes()).unwrap().unwrap();
            entries.insert(&6u64.to_be_bytes(), &three).unwrap();
        });
        let detail = damaged_detail(open_store(&db_path(&dir), owner));
        assert!(detail.contains("says it is entry 3"), "{detail}");

        // The last entry was changed.
        let dir = ledger_with(6).await;
        tamper(&db_path(&dir), |entries| {
            let mut raw = entries.get(&5u64.to_be_bytes()).unwrap().unwrap().to_vec();
            let last = raw.len() - 1;
            raw[last] ^= 0x80;
            entries.insert(&5u64.to_be_bytes(), &raw).unwrap();
        });
        let detail = damaged_detail(open_store(&db_path(&dir), owner));
        assert!(detail.contains("hash changed"), "{detail}");

        // The offline helpers report the same, and never repair.
        assert!(matches!(
            verify_offline(dir.path(), owner),
            Err(LedgerError::Damaged { .. })
        ));
        assert!(matches!(
            open_store(&db_path(&dir), owner),
            Err(LedgerError::Damaged { .. })
        ));
    })
    .await;
}

/// sled stops recovering its log at the first corrupt record and returns a shorter ledger that
/// verifies; the head file outside sled is what catches it.
#[tokio::test]
async fn a_corrupt_sled_log_that_drops_entries_is_refused() {
    within(async {
        let owner = provider().node_id();
        let dir = TempDir::new().unwrap();
        let ledger = Running::open(&db_path(&dir), owner);
        for nonce in 0..100 {
            ledger.handle.append(contract_body(nonce)).await.unwrap();
        }
        let target = ledger.handle.range(50, 1).unwrap()[0].raw.clone();
        ledger.stop().await;
        // Flip one byte inside every copy of entry 50 that sled's log holds.
        let log = db_path(&dir).join("db");
        let mut bytes = std::fs::read(&log).unwrap();
        let needle = &target[..64];
        let found: Vec<usize> = bytes
            .windows(needle.len())
            .enumerate()
            .filter(|(_, window)| *window == needle)
            .map(|(at, _)| at)
            .collect();
        assert!(!found.is_empty());
        for at in found {
            bytes[at + 100] ^= 0x01;
        }
        std::fs::write(&log, &bytes).unwrap();
        let detail = damaged_detail(open_store(&db_path(&dir), owner));
        assert!(detail.contains("100 entries were acknowledged"), "{detail}");
    })
    .await;
}

#[tokio::test]
async fn the_head_file_survives_a_torn_slot_but_not_destruction() {
    within(async {
        let owner = provider().node_id();
        let dir = ledger_with(3).await;
        let head_path = db_path(&dir).join(head_file::HEAD_FILE);
        let mut bytes = std::fs::read(&head_path).unwrap();
        assert_eq!(bytes.len(), 128);
        // Tear the newer slot: the older one (the previous record) is used.
        let newer = if bytes[4..12] > bytes[68..76] { 0 } else { 64 };
        bytes[newer + 30] ^= 0xff;
        std::fs::write(&head_path, &bytes).unwrap();
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert_eq!(store.head().size, 3);
        drop(store);
        // Both slots destroyed: refused, since nothing says what was acknowledged.
        std::fs::write(&head_path, [0u8; 128]).unwrap();
        let detail = damaged_detail(open_store(&db_path(&dir), owner));
        assert!(detail.contains("unreadable"), "{detail}");
        // No head file at all (a database from before it existed): opened, and recreated.
        std::fs::remove_file(&head_path).unwrap();
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert_eq!(store.head().size, 3);
        assert!(head_path.exists());
    })
    .await;
}

#[tokio::test]
async fn balances_come_from_settlements() {
    within(async {
        let dir = TempDir::new().unwrap();
        let me = provider();
        let ledger = Running::open(&db_path(&dir), me.node_id());
        // We ran two jobs for `requester()`...
        let first = Deal::new(1, &requester(), &me, 2_000_000).unwrap();
        let second = Deal::new(2, &requester(), &me, 5_500_000).unwrap();
        // ...and `stranger()` ran one for us.
        let bought = Deal::new(3, &me, &stranger(), 1_000_000).unwrap();
        for deal in [&first, &second, &bought] {
            for body in deal.bodies() {
                ledger.handle.append(body).await.unwrap();
            }
        }
        // A settlement recorded twice is counted once.
        ledger
            .handle
            .append(EntryBody::Settlement(first.settlement.clone()))
            .await
            .unwrap();
        let mut expected = vec![
            Balance {
                node_id: requester().node_id().to_string(),
                net_micro: i128::from(first.cost() + second.cost()),
                settlements: 2,
            },
            Balance {
                node_id: stranger().node_id().to_string(),
                net_micro: -i128::from(bought.cost()),
                settlements: 1,
            },
        ];
        expected.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut balances = ledger.handle.balances().unwrap();
        balances.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        assert_eq!(balances, expected);
        assert_eq!(first.cost(), 100 + 2_000);
        assert_eq!(second.cost(), 100 + 5_500);
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn offline_helpers() {
    within(async {
        let owner = provider().node_id();
        let dir = TempDir::new().unwrap();
        let ledger = Running::open(&db_path(&dir), owner);
        for nonce in 0..4 {
            ledger.handle.append(contract_body(nonce)).await.unwrap();
        }
        let head = ledger.handle.head();
        // The running node holds the database.
        match verify_offline(dir.path(), owner) {
            Err(error @ LedgerError::InUse { .. }) => {
                assert!(error.to_string().contains("stop the node"), "{error}");
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(matches!(
            open_store(&db_path(&dir), owner),
            Err(LedgerError::InUse { .. })
        ));
        ledger.stop().await;

        // Either the data dir or its db directory.
        for path in [dir.path().to_owned(), db_path(&dir)] {
            let report = verify_offline(&path, owner).unwrap();
            assert!(report.ok);
            assert_eq!(report.entries, 4);
            assert_eq!(report.head, head.head.to_hex());
            let entries = range_offline(&path, owner, 1, 2).unwrap();
            assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        }
        // Verified as somebody else's ledger, nothing is theirs.
        let report = verify_offline(dir.path(), stranger().node_id()).unwrap();
        assert_eq!(report.error.unwrap().index, 0);

        // Nothing there: an error, and no database is created.
        let empty = TempDir::new().unwrap();
        assert!(matches!(
            verify_offline(empty.path(), owner),
            Err(LedgerError::NotFound { .. })
        ));
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    })
    .await;
}

#[tokio::test]
async fn refuses_bodies_the_owner_may_not_record() {
    within(async {
        let dir = TempDir::new().unwrap();
        let me = stranger();
        let ledger = Running::open(&db_path(&dir), me.node_id());
        // A valid contract between two other nodes.
        let error = ledger.handle.append(contract_body(1)).await.unwrap_err();
        assert!(
            matches!(error, LedgerError::Refused(EntryError::NotAParty)),
            "{error:?}"
        );
        // Someone else's failure statement.
        let error = ledger
            .handle
            .append(failure_body(&provider(), me.node_id()))
            .await
            .unwrap_err();
        assert!(matches!(error, LedgerError::Refused(EntryError::NotAParty)));
        // Checked already (its signatures are good), but not ours: the owner is still checked.
        let checked = contract_body(1).check().unwrap();
        let error = ledger
            .handle
            .append_checked(vec![checked])
            .await
            .unwrap_err();
        assert!(
            matches!(error, LedgerError::Refused(EntryError::NotAParty)),
            "{error:?}"
        );
        // Our own contract, with a forged countersignature.
        let deal = Deal::new(2, &requester(), &me, 1).unwrap();
        let mut encoded = suanli_protocol::codec::encode(&deal.contract).unwrap();
        let last = encoded.len() - 1;
        encoded[last] ^= 1;
        let forged: CoSigned<Contract> = suanli_protocol::codec::decode(&encoded, 8192).unwrap();
        let error = ledger
            .handle
            .append(EntryBody::Contract(forged))
            .await
            .unwrap_err();
        assert!(
            matches!(error, LedgerError::Refused(EntryError::Document(_))),
            "{error:?}"
        );
        assert_eq!(ledger.handle.head().size, 0);
        // The refusals cost the others nothing.
        let done = ledger
            .handle
            .append(EntryBody::Contract(deal.contract))
            .await
            .unwrap();
        assert_eq!(done.seq, 0);
        assert!(ledger.handle.verify().ok);
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_barrier_acknowledges_nobody_and_halts() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let ledger = Running::open(&db_path(&dir), owner);
        ledger.handle.append(contract_body(0)).await.unwrap();
        let mut health = ledger.storage.health();
        ledger.storage.fail_barriers_for_test(true);
        let appends: Vec<_> = (1..11)
            .map(|nonce| {
                let handle = ledger.handle.clone();
                tokio::spawn(async move { handle.append(contract_body(nonce)).await })
            })
            .collect();
        for append in appends {
            let error = append.await.unwrap().unwrap_err();
            assert!(
                matches!(error, LedgerError::NotDurable(_) | LedgerError::Halted(_)),
                "{error:?}"
            );
        }
        let error = ledger.handle.append(contract_body(99)).await.unwrap_err();
        assert!(matches!(error, LedgerError::Halted(_)), "{error:?}");
        assert!(error.to_string().contains("restart the node"));
        assert_eq!(ledger.handle.head().size, 1);
        assert!(ledger.handle.range(0, 100).unwrap().len() == 1);
        assert!(ledger.handle.stats().halted.is_some());
        // The node stops taking work, and says why.
        let failed = health
            .wait_for(|health| matches!(health, Health::Failed { .. }))
            .await
            .unwrap()
            .clone();
        assert!(!failed.is_accepting());
        ledger.task.await.unwrap();
        // A failed storage stays failed, even once the disk would work again (fsyncgate).
        ledger.storage.fail_barriers_for_test(false);
        assert!(matches!(
            ledger.storage.barrier(),
            Err(StorageError::Failed(_))
        ));
        drop((ledger.handle, ledger.storage));

        // The failed group's entries were never acknowledged; after a restart each may or may
        // not be there, but the ledger is a valid chain holding the acknowledged one.
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert!(store.head().size >= 1);
        assert!(store.verify().ok);
    })
    .await;
}

#[tokio::test]
async fn a_full_disk_refuses_appends_without_writing_and_the_writer_resumes() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let reserve = 64 << 20;
        let ledger = Running::open_with(
            &db_path(&dir),
            owner,
            &StorageConfig {
                min_free_bytes: reserve,
                ..StorageConfig::default()
            },
        );
        let monitor = ledger.storage.spawn_monitor(ledger.cancel.clone());
        let first = ledger.handle.append(contract_body(0)).await.unwrap();
        let mut health = ledger.storage.health();
        let barriers = ledger.handle.stats().barriers;

        // The filesystem has less free than the reserve: every append is refused, nothing is
        // written, and the storage says it takes no work.
        ledger.storage.pretend_available_for_test(Some(reserve / 2));
        let appends: Vec<_> = (1..21)
            .map(|nonce| {
                let handle = ledger.handle.clone();
                tokio::spawn(async move { handle.append(contract_body(nonce)).await })
            })
            .collect();
        for append in appends {
            match append.await.unwrap() {
                Err(LedgerError::DiskFull {
                    available,
                    needed,
                    reserve: kept,
                }) => {
                    assert_eq!((available, kept), (reserve / 2, reserve));
                    assert!(needed > reserve, "{needed}");
                }
                other => panic!("expected DiskFull, got {other:?}"),
            }
        }
        health
            .wait_for(|health| matches!(health, Health::DiskFull { .. }))
            .await
            .unwrap();
        assert_eq!(ledger.handle.head().size, 1);
        assert_eq!(ledger.handle.range(0, 100).unwrap().len(), 1);
        assert_eq!(
            ledger.handle.stats().barriers,
            barriers,
            "nothing was flushed"
        );
        assert!(
            ledger.handle.stats().halted.is_none(),
            "a full disk is no failure"
        );

        // Space comes back, but not above the resume mark (reserve + a quarter): still refused.
        ledger
            .storage
            .pretend_available_for_test(Some(reserve + reserve / 8));
        let error = ledger.handle.append(contract_body(50)).await.unwrap_err();
        assert!(matches!(error, LedgerError::DiskFull { .. }), "{error:?}");
        // Above it: the monitor turns the health back, and the same writer appends again,
        // continuing the chain where it stopped.
        ledger.storage.pretend_available_for_test(Some(reserve * 2));
        health
            .wait_for(|health| *health == Health::Healthy)
            .await
            .unwrap();
        let next = ledger.handle.append(contract_body(51)).await.unwrap();
        assert_eq!(next.seq, 1);
        let entry = LedgerEntry::decode(&ledger.handle.range(1, 1).unwrap()[0].raw).unwrap();
        assert_eq!(entry.prev_hash, first.hash);
        assert!(ledger.handle.verify().ok);
        ledger.stop().await;
        monitor.await.unwrap();

        // Just above the reserve: a group that would eat into it is refused as well, and the
        // node stops taking work until space is back above the resume mark.
        let ledger = Running::open_with(
            &db_path(&dir),
            owner,
            &StorageConfig {
                min_free_bytes: reserve,
                ..StorageConfig::default()
            },
        );
        let monitor = ledger.storage.spawn_monitor(ledger.cancel.clone());
        let mut health = ledger.storage.health();
        ledger.storage.pretend_available_for_test(Some(reserve + 1));
        let error = ledger.handle.append(contract_body(52)).await.unwrap_err();
        assert!(matches!(error, LedgerError::DiskFull { .. }), "{error:?}");
        assert!(!ledger.storage.current_health().is_accepting());
        ledger
            .storage
            .pretend_available_for_test(Some(reserve + reserve / 2));
        health
            .wait_for(|health| *health == Health::Healthy)
            .await
            .unwrap();
        assert_eq!(
            ledger.handle.append(contract_body(53)).await.unwrap().seq,
            2
        );
        ledger.stop().await;
        monitor.await.unwrap();
    })
    .await;
}

const CRASH_DIR: &str = "SUANLI_LEDGER_CRASH_DIR";

/// The child of [`kill_9_keeps_every_acknowledged_entry`]: appends from 32 tasks until killed,
/// writing `seq hash` to `acks` after each append returns.
#[test]
#[ignore = "run by kill_9_keeps_every_acknowledged_entry in a child process"]
fn crash_child_appender() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ledger = Running::open(&dir.join("db"), provider().node_id());
        let acks = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("acks"))
            .unwrap();
        let acks = Arc::new(Mutex::new(acks));
        let body = contract_body(1);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (handle, body, acks) = (ledger.handle.clone(), body.clone(), Arc::clone(&acks));
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < deadline {
                        let done = handle.append(body.clone()).await.unwrap();
                        // One write per line; a process kill keeps what reached the page cache.
                        let line = format!("{} {}\n", done.seq, done.hash);
                        acks.lock().unwrap().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

fn read_acks(path: &Path) -> Vec<(u64, Hash32)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        // The last line may be torn by the kill.
        .filter_map(|line| {
            let (seq, hash) = line.split_once(' ')?;
            Some((seq.parse().ok()?, hash.parse().ok()?))
        })
        .collect()
}

/// A real `kill -9` of a process appending from 32 tasks, three times over the same ledger:
/// every append that returned is there after each restart, and the chain verifies.
#[tokio::test]
async fn kill_9_keeps_every_acknowledged_entry() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let exe = std::env::current_exe().unwrap();
        let mut recovered = 0;
        // More rounds for a soak: SUANLI_CRASH_ROUNDS=50.
        let rounds = std::env::var("SUANLI_CRASH_ROUNDS")
            .ok()
            .and_then(|rounds| rounds.parse().ok())
            .unwrap_or(3u64);
        for round in 0..rounds {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "ledger::tests::crash_child_appender",
                    "--exact",
                    "--ignored",
                    "--test-threads",
                    "1",
                ])
                .env(CRASH_DIR, dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let acks_path = dir.path().join("acks");
            let wanted = read_acks(&acks_path).len() + 300;
            while read_acks(&acks_path).len() < wanted {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the child appender exited early"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Kill at a different point of the group cycle each round.
            tokio::time::sleep(Duration::from_millis(3 * (round % 7))).await;
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();

            let acks = read_acks(&acks_path);
            let store = open_store(&db_path(&dir), owner).unwrap();
            let head = store.head();
            assert!(head.size >= recovered);
            for (seq, hash) in &acks {
                assert!(*seq < head.size, "round {round}: acknowledged {seq} lost");
                let entry = store.range(*seq, 1).unwrap();
                assert_eq!(
                    entry_hash(&entry[0].raw),
                    *hash,
                    "round {round}: entry {seq}"
                );
            }
            let report = store.verify();
            assert!(report.ok, "round {round}: {report:?}");
            recovered = head.size;
        }
    })
    .await;
}

/// The tree of the first `size` stored entries, rebuilt from their bytes.
fn rebuilt_tree(handle: &LedgerHandle, size: u64) -> MerkleTree {
    let mut tree = MerkleTree::new();
    let mut from = 0;
    while from < size {
        let page = handle.range(from, MAX_RANGE).unwrap();
        for entry in page.iter().take((size - from) as usize) {
            tree.push_entry(&entry.raw);
        }
        from += page.len() as u64;
    }
    tree
}

/// Checks every root and proof of a ledger of `size` entries against a tree rebuilt from
/// `range`, and with the protocol's verifiers.
fn check_tree_against_rebuild(
    roots: impl Fn(u64) -> Hash32,
    proofs: impl Fn(u64, u64) -> InclusionProof,
    consistency: impl Fn(u64, u64) -> ConsistencyProof,
    prefix: impl Fn(u64, u64) -> PrefixProof,
    rebuilt: &MerkleTree,
) {
    let size = rebuilt.len();
    assert_eq!(roots(0), EMPTY_ROOT);
    for m in 1..=size {
        let root = roots(m);
        assert_eq!(root, rebuilt.root_at(m).unwrap(), "root at {m}");
        for index in [0, m / 2, m - 1] {
            let proof = proofs(index, m);
            assert_eq!(proof, InclusionProof::from_tree(rebuilt, index, m).unwrap());
            proof.verify().unwrap();
            assert_eq!(proof.root, root.0.to_vec());
        }
        for n in [m, (m + size) / 2, size] {
            let proof = consistency(m, n);
            assert_eq!(proof, ConsistencyProof::from_tree(rebuilt, m, n).unwrap());
            proof.verify().unwrap();
            let prefix = prefix(m, n);
            assert_eq!(prefix.prefix_root, root);
            verify_consistency(m, n, &root, &roots(n), &prefix.proof).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merkle_roots_and_proofs_match_a_rebuild_and_survive_reopen() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider().node_id();
        let ledger = Running::open(&db_path(&dir), owner);
        // Sequential appends (one leaf per barrier), then concurrent ones (many per barrier).
        for nonce in 0..5 {
            ledger.handle.append(contract_body(nonce)).await.unwrap();
        }
        let body = contract_body(99);
        let appends: Vec<_> = (0..40)
            .map(|_| {
                let (handle, body) = (ledger.handle.clone(), body.clone());
                tokio::spawn(async move { handle.append(body).await.unwrap() })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        let handle = &ledger.handle;
        let size = handle.head().size;
        assert_eq!(size, 45);
        let rebuilt = rebuilt_tree(handle, size);
        check_tree_against_rebuild(
            |m| handle.tree_root(m).unwrap(),
            |i, m| handle.inclusion_proof(i, m).unwrap(),
            |m, n| handle.consistency_proof(m, n).unwrap(),
            |m, n| handle.prefix_proof(m, n).unwrap(),
            &rebuilt,
        );
        // Leaf hashes are the entry hashes the chain links with.
        for entry in handle.range(0, MAX_RANGE).unwrap() {
            let proof = handle.inclusion_proof(entry.seq, size).unwrap();
            assert_eq!(proof.leaf_hash, entry_hash(&entry.raw).0.to_vec());
            assert_eq!(handle.raw_entry(entry.seq).unwrap(), Some(entry.raw));
        }
        assert_eq!(
            handle.inclusion_proof(size - 1, size).unwrap().leaf_hash,
            handle.head().head.0.to_vec()
        );
        let root = handle.tree_root(size).unwrap();
        ledger.stop().await;

        // Reopened: the same tree, from the stored entries; offline through the store too.
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert_eq!(store.tree_root(size).unwrap(), root);
        check_tree_against_rebuild(
            |m| store.tree_root(m).unwrap(),
            |i, m| store.inclusion_proof(i, m).unwrap(),
            |m, n| store.consistency_proof(m, n).unwrap(),
            |m, n| store.prefix_proof(m, n).unwrap(),
            &rebuilt,
        );
        assert!(store.tree_root(size + 1).is_err());
        drop(store);

        // And it keeps growing from there, consistent with what was proven before.
        let ledger = Running::open(&db_path(&dir), owner);
        ledger.handle.append(contract_body(100)).await.unwrap();
        let grown = ledger.handle.consistency_proof(size, size + 1).unwrap();
        assert_eq!(grown.root1, root.0.to_vec());
        grown.verify().unwrap();
        let rebuilt = rebuilt_tree(&ledger.handle, size + 1);
        assert_eq!(ledger.handle.tree_root(size + 1).unwrap(), rebuilt.root());
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn proofs_out_of_range_are_clear_errors() {
    within(async {
        let dir = ledger_with(4).await;
        let ledger = Running::open(&db_path(&dir), provider().node_id());
        let handle = &ledger.handle;
        let message = |result: Result<_, LedgerError>| match result {
            Err(error @ LedgerError::OutOfRange(_)) => error.to_string(),
            Err(other) => panic!("expected OutOfRange, got {other}"),
            Ok(_) => panic!("expected OutOfRange, got a result"),
        };
        assert!(message(handle.tree_root(5).map(drop)).contains("tree size 5 is beyond the 4"));
        assert!(message(handle.tree_root(u64::MAX).map(drop)).contains("beyond"));
        assert!(message(handle.inclusion_proof(4, 4).map(drop)).contains("leaf index 4"));
        assert!(message(handle.inclusion_proof(0, 0).map(drop)).contains("leaf index 0"));
        assert!(message(handle.inclusion_proof(0, 5).map(drop)).contains("tree size 5"));
        assert!(message(handle.consistency_proof(3, 2).map(drop)).contains("greater"));
        assert!(message(handle.consistency_proof(0, 2).map(drop)).contains("empty tree"));
        assert!(message(handle.consistency_proof(2, 9).map(drop)).contains("tree size 9"));
        assert!(message(handle.prefix_proof(3, 2).map(drop)).contains("greater"));
        assert!(message(handle.prefix_proof(1, 9).map(drop)).contains("tree size 9"));
        // Edges that are fine: equal sizes, and a prefix of the empty tree.
        assert!(handle.consistency_proof(4, 4).unwrap().proof.is_empty());
        assert_eq!(
            handle.consistency_proof(0, 0).unwrap().root1,
            EMPTY_ROOT.0.to_vec()
        );
        let from_empty = handle.prefix_proof(0, 4).unwrap();
        assert_eq!(from_empty.prefix_root, EMPTY_ROOT);
        assert!(from_empty.proof.is_empty());
        assert_eq!(handle.raw_entry(4).unwrap(), None);
        assert_eq!(handle.raw_entry(u64::MAX).unwrap(), None);
        ledger.stop().await;
    })
    .await;
}

/// A reader that sees head `n` can prove anything up to `n`, even while the writer commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visible_head_is_always_provable() {
    within(async {
        let dir = TempDir::new().unwrap();
        let ledger = Running::open(&db_path(&dir), provider().node_id());
        let mut heads = ledger.handle.watch_head();
        let reader = ledger.handle.clone();
        let checker = tokio::spawn(async move {
            let mut checked = 0;
            while heads.changed().await.is_ok() {
                let head = *heads.borrow_and_update();
                let proof = reader.inclusion_proof(head.size - 1, head.size).unwrap();
                assert_eq!(proof.leaf_hash, head.head.0.to_vec());
                proof.verify().unwrap();
                checked += 1;
                if head.size == 200 {
                    break;
                }
            }
            checked
        });
        let body = contract_body(7);
        let appends: Vec<_> = (0..200)
            .map(|_| {
                let (handle, body) = (ledger.handle.clone(), body.clone());
                tokio::spawn(async move { handle.append(body).await.unwrap() })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        assert!(checker.await.unwrap() >= 1);
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_entry_rewritten_offline_changes_the_tree_and_fails_verification() {
    within(async {
        let owner = provider().node_id();
        let dir = ledger_with(6).await;
        let store = open_store(&db_path(&dir), owner).unwrap();
        let root = store.tree_root(6).unwrap();
        drop(store);

        // A validly signed entry of the same node, put where another one was.
        let forged = LedgerEntry {
            seq: 2,
            timestamp_ms: NOW,
            prev_hash: Hash32::ZERO,
            body: contract_body(1234),
        }
        .encode()
        .unwrap();
        testing::rewrite_entry_offline(dir.path(), 2, &forged).unwrap();
        // The head file only anchors the last entry: opening succeeds.
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert_eq!(store.head().size, 6);
        assert_eq!(store.raw_entry(2).unwrap(), Some(forged.clone()));
        assert_ne!(store.tree_root(6).unwrap(), root);
        assert_eq!(store.tree_root(2).unwrap(), {
            let rebuilt = MerkleTree::from_leaf_hashes(
                store
                    .range(0, 2)
                    .unwrap()
                    .iter()
                    .map(|e| entry_hash(&e.raw)),
            );
            rebuilt.root()
        });
        let report = store.verify();
        assert_eq!(report.error.unwrap().index, 2);
        drop(store);

        // No such entry; and not while the node runs.
        match testing::rewrite_entry_offline(dir.path(), 6, &forged) {
            Err(error @ LedgerError::OutOfRange(_)) => {
                assert!(error.to_string().contains("leaf index 6"), "{error}")
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
        let running = Running::open(&db_path(&dir), owner);
        assert!(matches!(
            testing::rewrite_entry_offline(dir.path(), 1, &forged),
            Err(LedgerError::InUse { .. })
        ));
        running.stop().await;
        let empty = TempDir::new().unwrap();
        assert!(matches!(
            testing::rewrite_entry_offline(empty.path(), 0, &forged),
            Err(LedgerError::NotFound { .. })
        ));
    })
    .await;
}

/// Durable appends per second: one appender at a time vs. 64 concurrent, and the disk's raw
/// fsync rate. Run in release:
/// `cargo test --release -p suanli-node ledger::tests::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --nocapture"]
#[allow(clippy::print_stderr)]
async fn measure_durable_appends() {
    // The system temp dir unless told otherwise (it must be on the disk being measured).
    let dir = match std::env::var_os("SUANLI_BENCH_DIR") {
        Some(base) => TempDir::new_in(base).unwrap(),
        None => TempDir::new().unwrap(),
    };

    // The disk: fdatasync after appending 100 bytes (the file grows: a journal commit each
    // time) and after overwriting 4 KiB in place in a preallocated file (no metadata change).
    let rounds: u32 = 1_000;
    let mut file = std::fs::File::create(dir.path().join("fsync")).unwrap();
    let started = Instant::now();
    for _ in 0..rounds {
        file.write_all(&[7; 100]).unwrap();
        file.sync_data().unwrap();
    }
    let append_rate = f64::from(rounds) / started.elapsed().as_secs_f64();
    let file = std::fs::File::create(dir.path().join("overwrite")).unwrap();
    file.set_len(4096 * 256).unwrap();
    file.sync_all().unwrap();
    let started = Instant::now();
    for round in 0..rounds {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&[9; 4096], 4096 * u64::from(round % 256))
            .unwrap();
        file.sync_data().unwrap();
    }
    let overwrite_rate = f64::from(rounds) / started.elapsed().as_secs_f64();
    eprintln!(
        "raw fdatasync: {append_rate:.0}/s appending 100 B, {overwrite_rate:.0}/s overwriting 4 KiB"
    );

    // The CPU: what every append costs before it is queued (two signatures of a contract).
    let body = contract_body(1);
    let started = Instant::now();
    for _ in 0..1_000 {
        body.verify(provider().node_id()).unwrap();
    }
    eprintln!(
        "body.verify (co-signed contract): {:.0}/s on one core",
        1_000.0 / started.elapsed().as_secs_f64()
    );

    let owner = provider().node_id();
    let ledger = Running::open(&dir.path().join("db"), owner);
    for _ in 0..50 {
        ledger.handle.append(body.clone()).await.unwrap();
    }

    let sequential = 1_000;
    let before = ledger.handle.stats();
    let started = Instant::now();
    for _ in 0..sequential {
        ledger.handle.append(body.clone()).await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = ledger.handle.stats();
    eprintln!(
        "1 appender: {:.0} durable appends/s ({:.3} ms each, {} barriers)",
        f64::from(sequential) / elapsed,
        elapsed * 1000.0 / f64::from(sequential),
        after.barriers - before.barriers
    );

    for appenders in [64u32, 256] {
        let per_task = 20_000 / appenders;
        let before = ledger.handle.stats();
        let started = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let (handle, body) = (ledger.handle.clone(), body.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        handle.append(body.clone()).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = ledger.handle.stats();
        let total = f64::from(appenders * per_task);
        let barriers = after.barriers - before.barriers;
        eprintln!(
            "{appenders} appenders: {:.0} durable appends/s, {barriers} barriers \
             ({:.1} entries/barrier, {:.0} barriers/s)",
            total / elapsed,
            total / barriers as f64,
            barriers as f64 / elapsed,
        );
    }
    let verify_started = Instant::now();
    let report = ledger.handle.verify();
    eprintln!(
        "verify: {} entries in {:.2} s ({:.0} entries/s)",
        report.entries,
        verify_started.elapsed().as_secs_f64(),
        report.entries as f64 / verify_started.elapsed().as_secs_f64()
    );
    assert!(report.ok);
    ledger.stop().await;
    let started = Instant::now();
    let store = open_store(&dir.path().join("db"), owner).unwrap();
    eprintln!(
        "reopen of {} entries: {:.1} ms",
        store.head().size,
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// Bytes allocated on disk for the files under `dir`.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    listing
        .filter_map(Result::ok)
        .map(|item| match item.metadata() {
            Ok(metadata) if metadata.is_dir() => allocated_bytes(&item.path()),
            Ok(metadata) => metadata.blocks() * 512,
            // sled deleted it meanwhile.
            Err(_) => 0,
        })
        .sum()
}

/// What the database costs on disk beyond the entries, for sizing `storage.min_free_bytes`: the
/// space it takes per entry byte, the most one round of 64 concurrent appends (one or two
/// groups) grew it beyond their bytes, what reopening writes, and, with a reserve
/// (`SUANLI_BENCH_RESERVE`, bytes) on a small filesystem (`SUANLI_BENCH_DIR`, e.g. a tmpfs),
/// that appends stop before the disk is full and how low free space went. Run in release:
/// `SUANLI_BENCH_DIR=/mnt/small SUANLI_BENCH_RESERVE=16777216 cargo test --release -p
/// suanli-node ledger::tests::measure_disk_use -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --nocapture"]
#[allow(clippy::print_stderr)]
async fn measure_disk_use() {
    let dir = match std::env::var_os("SUANLI_BENCH_DIR") {
        Some(base) => TempDir::new_in(base).unwrap(),
        None => TempDir::new().unwrap(),
    };
    let reserve: u64 = std::env::var("SUANLI_BENCH_RESERVE")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let limit: u64 = std::env::var("SUANLI_BENCH_ENTRIES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(60_000);
    let owner = provider().node_id();
    let db = dir.path().join("db");
    let config = StorageConfig {
        min_free_bytes: reserve,
        ..StorageConfig::default()
    };
    let ledger = Running::open_with(&db, owner, &config);
    let free = |ledger: &Running| ledger.storage.available_bytes().unwrap();
    let free_at_start = free(&ledger);
    let bodies: Vec<EntryBody> = (0..64)
        .flat_map(|nonce| {
            Deal::new(nonce, &requester(), &provider(), 500_000)
                .unwrap()
                .bodies()
        })
        .collect();
    let mut entry_bytes = 0u64;
    let mut worst_round = 0i64;
    let mut refused = false;
    let mut last_report = 0;
    while ledger.handle.head().size < limit && !refused {
        let used_before = free_at_start as i64 - free(&ledger) as i64;
        let round: Vec<_> = bodies
            .iter()
            .take(64)
            .map(|body| {
                let (handle, body) = (ledger.handle.clone(), body.clone());
                tokio::spawn(async move { handle.append(body).await })
            })
            .collect();
        let mut round_bytes = 0u64;
        for append in round {
            match append.await.unwrap() {
                Ok(done) => {
                    let raw = ledger.handle.raw_entry(done.seq).unwrap().unwrap();
                    round_bytes += raw.len() as u64;
                }
                Err(LedgerError::DiskFull { .. }) => refused = true,
                Err(error) => panic!("append failed: {error}"),
            }
        }
        entry_bytes += round_bytes;
        let used_after = free_at_start as i64 - free(&ledger) as i64;
        worst_round = worst_round.max(used_after - used_before - round_bytes as i64);
        let size = ledger.handle.head().size;
        if size >= last_report + limit / 6 || refused {
            last_report = size;
            let used = free_at_start - free(&ledger);
            eprintln!(
                "{size} entries ({:.0} B each): {entry_bytes} entry bytes, db files {} B, \
                 free space used {used} B ({:.2}x the entries)",
                entry_bytes as f64 / size as f64,
                allocated_bytes(&db),
                used as f64 / entry_bytes as f64
            );
        }
    }
    eprintln!("worst round of 64 appends: {worst_round} B beyond its entries");
    if !refused {
        // Blobs (modules, stdin, outputs): one put and one barrier each.
        let blobs = ledger.storage.blobs();
        for (size, count) in [(64usize << 10, 16u8), (1 << 20, 8), (8 << 20, 2)] {
            let mut worst = 0i64;
            for n in 0..count {
                let before = free(&ledger);
                let bytes = vec![n; size];
                blobs.put(&bytes).unwrap();
                ledger.storage.sync().await.unwrap();
                worst = worst.max(before as i64 - free(&ledger) as i64 - size as i64);
            }
            eprintln!("blobs of {size} B: the worst one grew the files {worst} B beyond its size");
        }
    }
    if refused {
        // sled's background flusher may still write what was admitted; watch it settle.
        let mut lowest = free(&ledger);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            lowest = lowest.min(free(&ledger));
        }
        eprintln!(
            "appends refused at {} entries: lowest free space {lowest} B, reserve {reserve} B \
             ({} B below it); health {:?}",
            ledger.handle.head().size,
            reserve as i64 - lowest as i64,
            ledger.storage.current_health()
        );
        assert!(lowest > 0, "the disk filled up");
    }
    ledger.stop().await;
    let statvfs_free = |path: &Path| {
        let stats = rustix::fs::statvfs(path).unwrap();
        stats.f_bavail * stats.f_frsize
    };
    let free_before_reopen = statvfs_free(dir.path());
    let started = Instant::now();
    let store = open_store(&db, owner).unwrap();
    eprintln!(
        "reopen of {} entries: {:.0} ms, wrote {} B",
        store.head().size,
        started.elapsed().as_secs_f64() * 1000.0,
        free_before_reopen as i64 - statvfs_free(dir.path()) as i64
    );
    assert!(store.verify().ok);
}

#[tokio::test]
async fn batched_verification_names_the_entry_with_a_bad_signature() {
    within(async {
        // 300 co-signed contracts: three batches of 128 entries (256 signatures each), so the
        // batch path runs, not the one-by-one path for small groups.
        let owner = provider().node_id();
        let dir = ledger_with(300).await;
        let store = open_store(&db_path(&dir), owner).unwrap();
        assert!(store.verify().ok);
        let mut raw = store.raw_entry(200).unwrap().unwrap();
        drop(store);
        // The entry ends with the provider's countersignature: flip one of its bits.
        let last = raw.len() - 1;
        raw[last] ^= 0x01;
        assert!(LedgerEntry::decode(&raw).is_ok());
        testing::rewrite_entry_offline(dir.path(), 200, &raw).unwrap();
        let report = open_store(&db_path(&dir), owner).unwrap().verify();
        assert!(!report.ok);
        assert_eq!(report.entries, 200);
        let error = report.error.unwrap();
        assert_eq!(error.index, 200);
        assert!(error.message.contains("signature"), "{}", error.message);
    })
    .await;
}

/// A failure record of `recorder` for the contract of `deal`.
fn failure_of(deal: &Deal, recorder: &suanli_protocol::Keypair) -> EntryBody {
    let contract = deal.contract.decode_unverified().unwrap();
    let record = suanli_protocol::FailureRecord {
        contract_id: suanli_protocol::ContractId(deal.contract.digest()),
        job_id: contract.job_id,
        recorder: recorder.node_id(),
        counterparty: contract.requester,
        failure: suanli_protocol::negotiation::AttemptFailure::DeadlineMissed,
        message: "late".into(),
        recorded_at_ms: 1,
    };
    EntryBody::Failure(suanli_protocol::Signed::sign(&record, recorder).unwrap())
}

#[tokio::test]
async fn the_index_finds_contracts_jobs_open_ones_and_balances() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider();
        let ledger = Running::open(&db_path(&dir), owner.node_id());
        let settled = Deal::new(1, &requester(), &owner, 500_000).unwrap();
        let failed = Deal::new(2, &requester(), &owner, 500_000).unwrap();
        let open = Deal::new(3, &requester(), &owner, 500_000).unwrap();
        // Receipt and settlement in one append, all or none.
        ledger
            .handle
            .append(EntryBody::Contract(settled.contract.clone()))
            .await
            .unwrap();
        let appended = ledger
            .handle
            .append_all(settled.bodies()[1..].to_vec())
            .await
            .unwrap();
        assert_eq!(appended.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2]);
        for body in [
            EntryBody::Contract(failed.contract.clone()),
            EntryBody::Receipt(failed.receipt.clone()),
            failure_of(&failed, &owner),
            EntryBody::Contract(open.contract.clone()),
        ] {
            ledger.handle.append(body).await.unwrap();
        }
        let id = |deal: &Deal| suanli_protocol::ContractId(deal.contract.digest());
        let docs = ledger.handle.contract_docs(id(&settled)).unwrap().unwrap();
        assert_eq!(docs.contract, settled.contract);
        assert_eq!(docs.receipt.as_ref(), Some(&settled.receipt));
        assert_eq!(docs.settlement.as_ref(), Some(&settled.settlement));
        assert!(docs.failure.is_none());
        let docs = ledger.handle.contract_docs(id(&failed)).unwrap().unwrap();
        assert!(docs.receipt.is_some() && docs.failure.is_some() && docs.settlement.is_none());
        let open_docs = ledger.handle.open_contracts().unwrap();
        assert_eq!(open_docs.len(), 1);
        assert_eq!(open_docs[0].contract, open.contract);
        let job = settled.contract.decode_unverified().unwrap().job_id;
        assert_eq!(ledger.handle.contracts_of_job(job).unwrap(), [id(&settled)]);
        assert_eq!(
            ledger.handle.balance_with(requester().node_id()).unwrap(),
            i128::from(settled.cost())
        );
        assert!(
            ledger
                .handle
                .contract_docs(id(&Deal::new(9, &requester(), &owner, 1).unwrap()))
                .unwrap()
                .is_none()
        );
        // A refused body refuses the whole append: nothing is written.
        let foreign = Deal::new(4, &requester(), &stranger(), 1).unwrap();
        let head = ledger.handle.head();
        let refused = ledger
            .handle
            .append_all(vec![
                EntryBody::Receipt(open.receipt.clone()),
                EntryBody::Contract(foreign.contract.clone()),
            ])
            .await;
        assert!(
            matches!(refused, Err(LedgerError::Refused(_))),
            "{refused:?}"
        );
        assert_eq!(ledger.handle.head(), head);
        assert!(
            ledger
                .handle
                .contract_docs(id(&open))
                .unwrap()
                .unwrap()
                .receipt
                .is_none()
        );
        ledger.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_index_behind_or_ahead_of_the_chain_is_rebuilt_at_open() {
    within(async {
        let dir = TempDir::new().unwrap();
        let owner = provider();
        let ledger = Running::open(&db_path(&dir), owner.node_id());
        for nonce in 0..20 {
            let deal = Deal::new(nonce, &requester(), &owner, 100_000).unwrap();
            let bodies = if nonce % 3 == 0 {
                vec![EntryBody::Contract(deal.contract.clone())]
            } else {
                deal.bodies().to_vec()
            };
            ledger.handle.append_all(bodies).await.unwrap();
        }
        let expected = (
            ledger.handle.balances().unwrap(),
            ledger.handle.open_contracts().unwrap(),
        );
        assert_eq!(expected.1.len(), 7);
        ledger.stop().await;
        // No index at all (a crash lost every batch of it, or a ledger from before it existed),
        // then an index that claims more than the chain holds: both are rebuilt from the chain.
        let edits: [fn(&RecordTree); 2] = [
            |index| {
                for (key, _) in index.iter_from(&[], 10_000).unwrap() {
                    index.remove(&key).unwrap();
                }
            },
            |index| index.insert(b"s", &u64::MAX.to_be_bytes()).unwrap(),
        ];
        for edit in edits {
            let storage = Storage::open(&db_path(&dir), &StorageConfig::default()).unwrap();
            edit(&storage.ledger_tree("index"));
            storage.barrier().unwrap();
            drop(storage);
            let ledger = Running::open(&db_path(&dir), owner.node_id());
            assert_eq!(ledger.handle.balances().unwrap(), expected.0);
            assert_eq!(ledger.handle.open_contracts().unwrap(), expected.1);
            ledger.stop().await;
        }
    })
    .await;
}
