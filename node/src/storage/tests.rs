//! Storage tests on real sled databases in temporary directories.

use std::future::Future;
use std::time::Duration;

use suanli_protocol::Hash32;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::*;

/// Every test runs under a deadline instead of hanging CI.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("test timed out")
}

fn open(dir: &TempDir) -> Storage {
    Storage::open(&dir.path().join("db"), &StorageConfig::default()).unwrap()
}

fn with_reserve(dir: &TempDir, min_free_bytes: u64) -> Storage {
    Storage::open(
        &dir.path().join("db"),
        &StorageConfig {
            min_free_bytes,
            ..StorageConfig::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn record_trees() {
    within(async {
        let dir = TempDir::new().unwrap();
        let storage = open(&dir);
        let jobs = storage.records("jobs");
        let other = storage.records("other");
        assert!(jobs.is_empty().unwrap());
        jobs.insert(b"b", b"2").unwrap();
        jobs.insert(b"a", b"1").unwrap();
        jobs.insert(b"c", b"3").unwrap();
        jobs.insert(b"a", b"one").unwrap();
        assert_eq!(jobs.get(b"a").unwrap(), Some(b"one".to_vec()));
        assert_eq!(jobs.get(b"zz").unwrap(), None);
        assert!(jobs.contains_key(b"c").unwrap());
        assert_eq!(jobs.len().unwrap(), 3);
        assert!(other.is_empty().unwrap());
        assert_eq!(
            jobs.iter_from(b"b", 10).unwrap(),
            vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(jobs.iter_from(b"", 1).unwrap().len(), 1);
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = jobs
            .scan(b"a".as_slice()..b"c".as_slice())
            .map(|item| item.map(|(key, value)| (key.to_vec(), value.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            scanned,
            vec![
                (b"a".to_vec(), b"one".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(jobs.scan::<&[u8], _>(..).count(), 3);
        assert_eq!(jobs.remove(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(jobs.remove(b"b").unwrap(), None);
        assert!(other.insert_if_absent(b"h", b"x").unwrap());
        assert!(!other.insert_if_absent(b"h", b"y").unwrap());
        assert_eq!(other.get(b"h").unwrap(), Some(b"x".to_vec()));
        let mut batch = WriteBatch::default();
        batch.insert(b"p", b"1");
        batch.insert(b"q", b"2");
        assert_eq!(batch.bytes(), 4);
        other.apply_batch(batch).unwrap();
        assert_eq!(other.len().unwrap(), 3);
        // A value larger than a log segment's share lands in sled's blobs/ directory.
        let big = vec![0xab; 1 << 20];
        other.insert(b"big", &big).unwrap();

        // A record tree named like a ledger tree is still a separate tree.
        let sneaky = storage.records("ledger/entries");
        sneaky.insert(&0u64.to_be_bytes(), b"forged").unwrap();
        assert!(storage.ledger_tree("entries").is_empty().unwrap());

        let barriers = storage.stats().barriers;
        jobs.flush().await.unwrap();
        assert_eq!(storage.stats().barriers, barriers + 1);
        jobs.insert(b"d", b"4").unwrap();
        jobs.flush().await.unwrap();
        drop((jobs, other, sneaky, storage));

        let storage = open(&dir);
        let jobs = storage.records("jobs");
        assert_eq!(jobs.get(b"a").unwrap(), Some(b"one".to_vec()));
        assert_eq!(jobs.get(b"d").unwrap(), Some(b"4".to_vec()));
        assert_eq!(storage.records("other").get(b"big").unwrap(), Some(big));
    })
    .await;
}

#[tokio::test]
async fn blobs_are_content_addressed_and_keep_the_old_layout() {
    within(async {
        let dir = TempDir::new().unwrap();
        let storage = open(&dir);
        let blobs = storage.blobs();
        let hash = blobs.put(b"module bytes").unwrap();
        assert_eq!(hash, Hash32::of(b"module bytes"));
        assert_eq!(blobs.put(b"module bytes").unwrap(), hash);
        assert_eq!(blobs.get(&hash).unwrap(), Some(b"module bytes".to_vec()));
        assert!(blobs.contains(&hash).unwrap());
        assert_eq!(blobs.get(&Hash32::of(b"absent")).unwrap(), None);
        // Data dirs from before this module kept blobs in the record tree `blobs`, keyed by hash:
        // the blob store reads them as they are.
        let old = Hash32::of(b"stored by an older node");
        storage
            .records("blobs")
            .insert(old.as_bytes(), b"stored by an older node")
            .unwrap();
        assert_eq!(
            blobs.get(&old).unwrap(),
            Some(b"stored by an older node".to_vec())
        );
        storage.sync().await.unwrap();
        drop((blobs, storage));
        let storage = open(&dir);
        assert_eq!(
            storage.blobs().get(&hash).unwrap(),
            Some(b"module bytes".to_vec())
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_syncs_share_barriers() {
    within(async {
        let dir = TempDir::new().unwrap();
        let storage = open(&dir);
        let records = storage.records("jobs");
        let syncs: Vec<_> = (0..64u64)
            .map(|i| {
                let records = records.clone();
                tokio::spawn(async move {
                    records.insert(&i.to_be_bytes(), b"x").unwrap();
                    records.flush().await.unwrap();
                })
            })
            .collect();
        for sync in syncs {
            sync.await.unwrap();
        }
        let stats = storage.stats();
        assert_eq!(stats.barriers + stats.shared_barriers, 64, "{stats:?}");
        assert!(stats.barriers < 64, "no barrier was shared: {stats:?}");
        // A caller arriving after a barrier finished still gets one of its own.
        records.insert(b"late", b"y").unwrap();
        storage.sync().await.unwrap();
        assert_eq!(storage.stats().barriers, stats.barriers + 1);
    })
    .await;
}

#[tokio::test]
async fn a_failed_barrier_fails_the_storage_for_good() {
    within(async {
        let dir = TempDir::new().unwrap();
        let storage = open(&dir);
        storage.sync().await.unwrap();
        storage.fail_barriers_for_test(true);
        let error = storage.sync().await.unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error:?}");
        storage.fail_barriers_for_test(false);
        // fsyncgate: never retried, never acknowledged.
        assert!(matches!(storage.barrier(), Err(StorageError::Failed(_))));
        assert!(matches!(
            storage.ensure_space(1),
            Err(StorageError::Failed(_))
        ));
        match storage.current_health() {
            Health::Failed { reason } => assert!(reason.contains("injected"), "{reason}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn large_writes_are_refused_below_the_reserve_and_small_ones_go_into_it() {
    within(async {
        let dir = TempDir::new().unwrap();
        let reserve = 10 << 20;
        let storage = with_reserve(&dir, reserve);
        assert_eq!(storage.current_health(), Health::Healthy);
        let records = storage.records("jobs");
        let blobs = storage.blobs();
        let kept = blobs.put(b"already stored").unwrap();

        storage.pretend_available_for_test(Some(reserve - 1));
        let big = vec![1u8; LARGE_VALUE_BYTES];
        let error = records.insert(b"big", &big).unwrap_err();
        match error {
            StorageError::DiskFull {
                available,
                needed,
                reserve: kept_free,
            } => {
                assert_eq!((available, kept_free), (reserve - 1, reserve));
                assert!(needed >= reserve + big.len() as u64, "{needed}");
            }
            other => panic!("expected DiskFull, got {other:?}"),
        }
        assert_eq!(records.get(b"big").unwrap(), None, "nothing was written");
        assert_eq!(
            storage.current_health(),
            Health::DiskFull {
                available_bytes: reserve - 1,
                min_free_bytes: reserve,
            }
        );
        assert!(matches!(
            blobs.put(b"new blob"),
            Err(StorageError::DiskFull { .. })
        ));
        assert!(!blobs.contains(&Hash32::of(b"new blob")).unwrap());
        // Work in flight still records its small state, and finds what it stored before.
        records.insert(b"job", b"{\"state\":\"failed\"}").unwrap();
        assert_eq!(blobs.put(b"already stored").unwrap(), kept);
        storage.sync().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_monitor_notices_a_full_disk_and_its_end() {
    within(async {
        let dir = TempDir::new().unwrap();
        let reserve = 8 << 20;
        let storage = with_reserve(&dir, reserve);
        assert_eq!(storage.resume_free_bytes(), reserve + reserve / 4);
        let cancel = CancellationToken::new();
        let monitor = storage.spawn_monitor(cancel.clone());
        let mut health = storage.health();
        // Nobody writes: the poll alone notices that something else filled the disk.
        storage.pretend_available_for_test(Some(1 << 20));
        health
            .wait_for(|health| !health.is_accepting())
            .await
            .unwrap();
        storage.pretend_available_for_test(Some(reserve * 4));
        health
            .wait_for(|health| health.is_accepting())
            .await
            .unwrap();
        cancel.cancel();
        monitor.await.unwrap();

        // The monitor holds the storage weakly: it ends when the database closes.
        let monitor = storage.spawn_monitor(CancellationToken::new());
        drop(health);
        drop(storage);
        monitor.await.unwrap();

        // A filesystem already below the reserve opens as full; 0 turns the checks off.
        let dir = TempDir::new().unwrap();
        let available = open(&dir).available_bytes().unwrap();
        let storage = with_reserve(&dir, available.saturating_mul(2));
        assert!(!storage.current_health().is_accepting());
        drop(storage);
        let storage = with_reserve(&dir, 0);
        storage.pretend_available_for_test(Some(0));
        storage.ensure_space(1 << 30).unwrap();
    })
    .await;
}

#[tokio::test]
async fn offline_opening_never_creates_a_database() {
    within(async {
        let dir = TempDir::new().unwrap();
        assert!(matches!(
            Storage::open_existing(dir.path()),
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let storage = open(&dir);
        assert!(matches!(
            Storage::open_existing(dir.path()),
            Err(StorageError::InUse { .. })
        ));
        drop(storage);
        for path in [dir.path().to_owned(), dir.path().join("db")] {
            let storage = Storage::open_existing(&path).unwrap();
            assert_eq!(storage.path(), dir.path().join("db"));
        }
    })
    .await;
}
