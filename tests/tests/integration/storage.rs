//! A full disk, for real: a node whose data dir is on a small tmpfs fills it up, refuses work
//! without writing anything (and says so to the mesh and over HTTP), and takes work again when
//! space returns, without a restart. Needs root to mount the tmpfs; without it the test fails
//! with a message saying so (it never passes silently).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use suanli_node::data_dir::DataDir;
use suanli_node::ledger::{Appended, LedgerError, LedgerHandle};
use suanli_node::market::JobState;
use suanli_protocol::ledger::{EntryBody, entry_hash};
use suanli_protocol::negotiation::AttemptFailure;
use suanli_protocol::{ContractId, FailureRecord, Hash32, JobId, Keypair, NodeId, Signed};
use suanli_tests::process::suanli;
use suanli_tests::{TestNode, test_config, wait_until, with_timeout};
use tempfile::TempDir;

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const TMPFS_MIB: u64 = 64;
/// The reserve of the node on the tmpfs; it accepts work again at 20 MiB free.
const RESERVE: u64 = 16 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a temporary directory, unmounted when dropped (lazily, so even a node
/// still holding files after a failed assertion does not keep it mounted).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Tmpfs { dir },
            Ok(output) => panic!(
                "this test mounts a {size_mib} MiB tmpfs to fill a disk for real and must run as \
                 root (or with CAP_SYS_ADMIN); `mount -t tmpfs` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!("this test needs the `mount` command (and root): {error}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A file that takes `bytes` of the tmpfs (written, so the pages are really allocated).
fn ballast(path: &Path, bytes: u64) {
    let mut file = std::fs::File::create(path).expect("ballast file");
    let chunk = vec![0x5a; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).expect("write ballast");
        left -= n as u64;
    }
    file.sync_all().expect("sync ballast");
}

/// A ledger entry this node may record: its own failure statement about a contract with `peer`.
fn own_failure(key: &Keypair, peer: NodeId, n: u64) -> EntryBody {
    let record = FailureRecord {
        contract_id: ContractId(Hash32::of(&n.to_be_bytes())),
        job_id: JobId(Hash32::of(b"storage test")),
        recorder: key.node_id(),
        counterparty: peer,
        failure: AttemptFailure::DeadlineMissed,
        message: format!("filler entry {n}"),
        recorded_at_ms: suanli_node::clock::now_ms(),
    };
    EntryBody::Failure(Signed::sign(&record, key).expect("sign"))
}

async fn node_json(http: &reqwest::Client, api: &str) -> Value {
    http.get(format!("{api}/v1/node"))
        .send()
        .await
        .expect("GET /v1/node")
        .json()
        .await
        .expect("node JSON")
}

async fn submit_hello(http: &reqwest::Client, api: &str) -> reqwest::Response {
    http.post(format!("{api}/v1/jobs"))
        .json(&serde_json::json!({ "module_wat": HELLO }))
        .send()
        .await
        .expect("POST /v1/jobs")
}

/// `a`'s advert as `viewer` holds it: its load in permille.
fn advertised_load(viewer: &TestNode, a: NodeId) -> Option<u16> {
    viewer
        .handle
        .mesh
        .snapshot(suanli_node::clock::now_ms())
        .into_iter()
        .find(|entry| entry.advert.node == a)
        .map(|entry| entry.advert.load_permille)
}

/// The entries `acknowledged` are in the ledger, unchanged.
fn assert_in_ledger(ledger: &LedgerHandle, acknowledged: &[Appended]) {
    for done in acknowledged {
        let raw = ledger
            .raw_entry(done.seq)
            .expect("ledger read")
            .unwrap_or_else(|| panic!("acknowledged entry {} is not in the ledger", done.seq));
        assert_eq!(entry_hash(&raw), done.hash, "entry {} changed", done.seq);
    }
}

async fn wait_succeeded(node: &TestNode, job_id: &str) {
    let job_id: JobId = job_id.parse().expect("job id");
    let record = node.wait_job(&job_id, WAIT).await;
    assert_eq!(record.state, JobState::Succeeded, "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_work_and_the_node_recovers_without_a_restart() {
    // Mounted first, so it is unmounted last, after the nodes and their data dirs are gone.
    let tmpfs = Tmpfs::mount(TMPFS_MIB);
    let tmpfs_path: PathBuf = tmpfs.path().to_owned();
    let dir_a = TempDir::new_in(&tmpfs_path).expect("data dir on the tmpfs");
    let a_data: PathBuf = dir_a.path().to_owned();
    with_timeout(async move {
        // B (on the ordinary disk) runs no jobs and watches A's adverts.
        let mut config_b = test_config(&[]);
        config_b.provider.accept_jobs = false;
        let b = TestNode::start_with(tempfile::tempdir().expect("temp dir"), config_b).await;
        let mut config_a = test_config(&[b.tcp_addr()]);
        config_a.storage.min_free_bytes = RESERVE;
        let a = TestNode::start_with(dir_a, config_a).await;
        let a_id = a.handle.node_id;
        let key = DataDir::new(&a_data).load_key().expect("A's key");
        wait_until("both nodes see each other", WAIT, || {
            a.mesh_size() == 2 && b.mesh_size() == 2
        })
        .await;
        let http = reqwest::Client::new();
        let api = format!("http://{}", a.handle.api_addr);

        // Space to spare: jobs and appends go through.
        let node = node_json(&http, &api).await;
        assert_eq!(node["storage"]["state"], "healthy", "{node}");
        assert_eq!(node["storage"]["min_free_bytes"], RESERVE);
        let response = submit_hello(&http, &api).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        wait_succeeded(&a, body["job_id"].as_str().expect("job id")).await;
        let mut acknowledged = Vec::new();
        for n in 0..20 {
            let done = a
                .handle
                .ledger
                .append(own_failure(&key, b.handle.node_id, n))
                .await
                .expect("append with space to spare");
            acknowledged.push(done);
        }
        wait_until("B sees A taking work", WAIT, || {
            advertised_load(&b, a_id).is_some_and(|load| load < 1000)
        })
        .await;

        // Fill the disk to half the reserve.
        let available = a.handle.storage.available_bytes().expect("free space");
        assert!(available > RESERVE * 2, "the tmpfs is too full already");
        let ballast_path = tmpfs_path.join("ballast");
        ballast(&ballast_path, available - RESERVE / 2);
        let full_at = a.handle.ledger.head();

        // Appends are refused with DiskFull, whether or not the monitor noticed first.
        for n in 100..140 {
            match a
                .handle
                .ledger
                .append(own_failure(&key, b.handle.node_id, n))
                .await
            {
                Err(LedgerError::DiskFull {
                    available, reserve, ..
                }) => {
                    assert_eq!(reserve, RESERVE);
                    assert!(available < RESERVE, "{available}");
                }
                Ok(done) => panic!("appended on a full disk: {done:?}"),
                Err(error) => panic!("expected DiskFull, got {error}"),
            }
        }
        assert_eq!(a.handle.ledger.head(), full_at, "nothing was appended");
        assert!(
            a.handle.ledger.stats().halted.is_none(),
            "a full disk must not halt the writer"
        );
        // The API says why, and refuses new jobs with a clear error.
        let node = node_json(&http, &api).await;
        assert_eq!(node["storage"]["state"], "disk_full", "{node}");
        assert_eq!(node["storage"]["accepting"], false);
        assert!(node["storage"]["available_bytes"].as_u64().expect("free") < RESERVE);
        let refused = submit_hello(&http, &api).await;
        assert_eq!(refused.status(), 507);
        let body: Value = refused.json().await.expect("json");
        assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("disk is full")),
            "{body}"
        );
        assert_eq!(a.handle.ledger.head(), full_at);
        // The mesh learns that A takes no work: its advert shows full load.
        wait_until("B sees A at full load", WAIT, || {
            advertised_load(&b, a_id) == Some(1000)
        })
        .await;
        assert_in_ledger(&a.handle.ledger, &acknowledged);

        // Space returns: A takes work again, without a restart.
        std::fs::remove_file(&ballast_path).expect("remove ballast");
        let mut health = a.handle.storage.health();
        tokio::time::timeout(WAIT, health.wait_for(|health| health.is_accepting()))
            .await
            .expect("the storage is accepting again within the wait")
            .expect("storage open");
        let node = node_json(&http, &api).await;
        assert_eq!(node["storage"]["state"], "healthy", "{node}");
        wait_until("B sees A taking work again", WAIT, || {
            advertised_load(&b, a_id).is_some_and(|load| load < 1000)
        })
        .await;
        let done = a
            .handle
            .ledger
            .append(own_failure(&key, b.handle.node_id, 200))
            .await
            .expect("append after space returned");
        assert_eq!(done.seq, full_at.size, "the chain goes on where it stopped");
        acknowledged.push(done);
        let response = submit_hello(&http, &api).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        wait_succeeded(&a, body["job_id"].as_str().expect("job id")).await;
        // A job placed from another node runs on A too.
        let from_b = b.submit(suanli_tests::wat_job(HELLO)).await;
        let record = b.wait_job(&from_b, WAIT).await;
        assert_eq!(record.state, JobState::Succeeded, "{record:?}");
        assert_eq!(record.provider, Some(a_id));
        assert_in_ledger(&a.handle.ledger, &acknowledged);
        assert!(a.handle.ledger.verify().ok);

        b.stop().await;
        let dir_a = a.stop().await;
        // `suanli ledger verify` on the stopped node's data dir.
        let verify = suanli(&[
            "ledger",
            "verify",
            "--json",
            "--data-dir",
            dir_a.path().to_str().expect("utf-8 path"),
        ]);
        assert!(verify.status.success(), "{verify:?}");
        let report: Value = serde_json::from_slice(&verify.stdout).expect("report");
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["entries"].as_u64().expect("entries") > full_at.size);
        drop(dir_a);
    })
    .await;
    drop(tmpfs);
}
