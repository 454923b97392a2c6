//! The harness shared by suanli's integration tests: real nodes on loopback with temporary data
//! dirs, a readiness wait instead of sleeps, a hostile gossip peer, and the real `suanli` binary.

pub mod adversary;
pub mod metrics;
pub mod models;
pub mod process;
pub mod slurm;

use std::future::Future;
use std::time::Duration;

use libp2p::Multiaddr;
use suanli_node::config::Config;
use suanli_node::data_dir::DataDir;
use suanli_node::market::{JobRecord, Submission};
use suanli_node::{Node, NodeHandle};
use suanli_protocol::ledger::LedgerEntry;
use suanli_protocol::{Credits, JobId, Limits, Placement};
use tempfile::TempDir;

/// Every test runs under this limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn with_timeout<F: Future<Output = ()>>(body: F) {
    init_logging();
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("test timed out after {TEST_TIMEOUT:?}");
    }
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config for loopback tests: TCP and QUIC on free ports, API on a free port, fast adverts.
pub fn test_config(bootstrap: &[Multiaddr]) -> Config {
    let mut config = Config::default();
    config.network.listen = vec![
        "/ip4/127.0.0.1/tcp/0".into(),
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
    ];
    config.network.bootstrap = bootstrap.iter().map(ToString::to_string).collect();
    config.network.advert_interval_secs = 1;
    config.network.advert_ttl_secs = 3;
    config.api.listen = "127.0.0.1:0".into();
    config.provider.slots = Some(2);
    config.provider.max_fuel = 100_000_000_000;
    config.ledger.checkpoint_interval_secs = 1;
    config
}

/// A submission of WAT text with roomy default limits.
/// A job that counts to `iterations` (about 4.7 fuel and a third of a nanosecond each here: a
/// billion is a second or so of work), then prints "done".
pub fn slow_wat(iterations: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "done\n")
  (func (export "_start") (local $i i64)
    (block $out (loop $again
      (br_if $out (i64.ge_u (local.get $i) (i64.const {iterations})))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $again)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    )
}

pub fn wat_job(wat: &str) -> Submission {
    Submission {
        executor: suanli_protocol::ExecutorKind::Wasm,
        module: wat.as_bytes().to_vec(),
        args: Vec::new(),
        env: Default::default(),
        stdin: Vec::new(),
        limits: Limits {
            fuel: 1_000_000_000,
            memory_bytes: 16 << 20,
            wall_time_ms: 10_000,
            output_bytes: 1 << 20,
            tasks: 1,
        },
        max_price: Credits(1_000_000_000),
        placement: Placement::default(),
        api_token: None,
        replicas: 1,
    }
}

/// A node running in this process, with its data dir.
#[derive(Debug)]
pub struct TestNode {
    pub handle: NodeHandle,
    pub dir: TempDir,
}

impl TestNode {
    pub async fn start(bootstrap: &[Multiaddr]) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        TestNode::start_in(dir, bootstrap).await
    }

    /// Starts (or restarts) a node on an existing data dir.
    pub async fn start_in(dir: TempDir, bootstrap: &[Multiaddr]) -> TestNode {
        TestNode::start_with(dir, test_config(bootstrap)).await
    }

    /// Starts a node on a data dir with a config of the caller's.
    pub async fn start_with(dir: TempDir, config: Config) -> TestNode {
        let config = config.validate().expect("valid config");
        let handle = Node::start(DataDir::new(dir.path()), config)
            .await
            .expect("node starts");
        TestNode { handle, dir }
    }

    /// The node's TCP address with its id, for bootstrap lists.
    pub fn tcp_addr(&self) -> Multiaddr {
        self.handle
            .p2p_addrs()
            .into_iter()
            .find(|addr| addr.to_string().contains("/tcp/"))
            .expect("a TCP address")
    }

    /// How many nodes this node's capacity view holds now.
    pub fn mesh_size(&self) -> usize {
        self.handle.mesh.live_count(suanli_node::clock::now_ms())
    }

    /// Submits a job to this node.
    pub async fn submit(&self, submission: Submission) -> JobId {
        self.handle
            .market
            .submit(submission)
            .await
            .expect("job accepted")
    }

    pub fn job(&self, job_id: &JobId) -> JobRecord {
        self.handle
            .market
            .jobs()
            .get(job_id)
            .expect("job store")
            .expect("job record")
    }

    /// Waits until the job is final and returns its record.
    pub async fn wait_job(&self, job_id: &JobId, limit: Duration) -> JobRecord {
        wait_until("the job is finished", limit, || {
            self.job(job_id).state.is_final()
        })
        .await;
        self.job(job_id)
    }

    /// Every entry of this node's ledger, decoded.
    pub fn ledger_entries(&self) -> Vec<LedgerEntry> {
        let mut entries = Vec::new();
        loop {
            let page = self
                .handle
                .ledger
                .range(entries.len() as u64, 1024)
                .expect("ledger range");
            if page.is_empty() {
                return entries;
            }
            entries.extend(
                page.iter()
                    .map(|stored| LedgerEntry::decode(&stored.raw).expect("decodable entry")),
            );
        }
    }

    /// Stops the node and hands back its data dir.
    pub async fn stop(self) -> TempDir {
        self.handle.shutdown().await;
        self.dir
    }
}
