//! `GET /metrics` of real node processes, read with Prometheus's own OpenMetrics parser
//! (`tests/python/parse_metrics.py`): it parses, its counters move when a job runs, and after a
//! `kill -9` and a restart the ledger's size it reports is what it was.

use std::time::{Duration, Instant};

use suanli_tests::metrics::{scrape, value};
use suanli_tests::process::{RunningNode, suanli};
use tempfile::TempDir;

const JOBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs");

fn start(base: &TempDir, name: &str, extra: &[String]) -> RunningNode {
    let dir = base.path().join(name);
    std::fs::create_dir_all(&dir).expect("data dir");
    RunningNode::start(&dir, extra, Duration::from_secs(60))
}

#[test]
fn metrics_parse_and_move_when_a_job_runs_and_the_ledger_size_survives_a_kill() {
    let base = TempDir::new().expect("temp dir");
    let requester = start(&base, "requester", &[]);
    let provider = start(&base, "provider", &requester.bootstrap_args());
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let samples = scrape(&requester.api);
        if value(&samples, "suanli_mesh_nodes") >= 2.0 && value(&samples, "suanli_peers") >= 1.0 {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never met: {samples:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // Every family the issue asks for is there.
    for family in [
        "suanli_jobs_in_flight",
        "suanli_ledger_entries",
        "suanli_connections",
        "suanli_storage_available_bytes",
        "suanli_executor_places{places=\"slots\"}",
        "suanli_gossip_messages_total{verdict=\"accepted\"}",
        "suanli_gossip_received_bytes_total",
        "suanli_storage_barrier_duration_seconds_count",
        "suanli_ledger_append_duration_seconds_count",
    ] {
        assert!(before.contains_key(family), "{family} missing: {before:?}");
    }
    assert!(
        value(
            &before,
            "suanli_gossip_messages_total{verdict=\"accepted\"}"
        ) >= 1.0
    );
    assert!(value(&before, "suanli_executor_places{places=\"slots\"}") >= 1.0);

    let job = suanli(&[
        "job",
        "submit",
        &format!("{JOBS}/hello.wat"),
        "--remote",
        "--wait",
        "--api",
        &requester.api,
    ]);
    assert!(job.status.success(), "{job:?}");

    let after = scrape(&requester.api);
    let moved = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(
        moved("suanli_jobs_finished_total{state=\"succeeded\"}"),
        1.0,
        "{after:?}"
    );
    assert_eq!(
        moved("suanli_job_duration_seconds_count{state=\"succeeded\"}"),
        1.0
    );
    assert!(
        value(
            &after,
            "suanli_job_duration_seconds_sum{state=\"succeeded\"}"
        ) > 0.0
    );
    // Contract, receipt and settlement: three durable appends, three more entries.
    assert_eq!(moved("suanli_ledger_entries"), 3.0, "{after:?}");
    assert!(moved("suanli_ledger_append_duration_seconds_count") >= 1.0);
    assert!(moved("suanli_storage_barrier_duration_seconds_count") >= 1.0);
    assert!(moved("suanli_ledger_appended_total") >= 3.0);
    // The requester owes the provider what the job cost.
    let owed = value(
        &after,
        &format!("suanli_credit_micro{{peer=\"{}\"}}", provider.id),
    );
    assert!(owed < 0.0, "no debt to the provider: {after:?}");
    // The provider counted nothing as a requester, and its ledger grew the same.
    let served = scrape(&provider.api);
    assert_eq!(
        value(&served, "suanli_jobs_finished_total{state=\"succeeded\"}"),
        0.0
    );
    assert_eq!(value(&served, "suanli_ledger_entries"), 3.0, "{served:?}");
    assert_eq!(
        value(
            &served,
            &format!("suanli_credit_micro{{peer=\"{}\"}}", requester.id)
        ),
        -owed
    );

    // kill -9 and a restart: counters start again, the ledger's size is what it was.
    let RunningNode { mut process, .. } = requester;
    process.child.kill().expect("kill -9");
    let _ = process.child.wait();
    let restarted = start(&base, "requester", &[]);
    let again = scrape(&restarted.api);
    assert_eq!(
        value(&again, "suanli_ledger_entries"),
        value(&after, "suanli_ledger_entries")
    );
    assert_eq!(
        value(&again, "suanli_jobs_finished_total{state=\"succeeded\"}"),
        0.0
    );
}
