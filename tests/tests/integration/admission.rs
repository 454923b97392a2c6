//! Admission: a requester new to a provider gets small jobs and a small credit line, shared by
//! every new identity behind its address; one the operator lists gets its own line. Real nodes on
//! loopback (so every requester here is behind 127.0.0.1), real ledgers, real contracts.

use std::time::Duration;

use suanli_node::market::{AttemptReason, JobState};
use suanli_protocol::NodeId;
use suanli_tests::{TestNode, test_config, wait_until, wat_job, with_timeout};

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const JOB: Duration = Duration::from_secs(60);

/// A job for `provider` only, with a fuel budget of `fuel`.
fn job_for(provider: NodeId, fuel: u64) -> suanli_node::market::Submission {
    let mut job = wat_job(HELLO);
    job.limits.fuel = fuel;
    job.placement.provider = Some(provider);
    job
}

/// A requester that offers nothing and gives up placing a job after 4 s.
async fn requester(bootstrap: &[libp2p::Multiaddr]) -> TestNode {
    let mut config = test_config(bootstrap);
    config.provider.accept_jobs = false;
    config.jobs.placement_timeout_secs = 4;
    TestNode::start_with(tempfile::tempdir().unwrap(), config).await
}

/// The reasons `provider` gave for declining the job, as the requester recorded them.
fn declines(node: &TestNode, job: &suanli_protocol::JobId) -> Vec<(AttemptReason, String)> {
    node.job(job)
        .attempts
        .into_iter()
        .filter_map(|attempt| Some((attempt.reason?, attempt.message)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_identities_share_one_small_credit_line_per_address() {
    with_timeout(async {
        let listed = requester(&[]).await;
        let bootstrap = [listed.tcp_addr()];
        // Each job costs at least 6,000 µcr; a new requester's line is 10,000 µcr, so it fits one
        // job's debt and not two; its jobs may cost at most 8,000 µcr.
        let mut config = test_config(&bootstrap);
        config.capacity.price_base = 6_000;
        config.provider.new_peer_credit_limit = 10_000;
        config.provider.new_peer_max_job_cost = 8_000;
        config.provider.history_settlements = 2;
        config
            .provider
            .credit_limits
            .insert(listed.handle.node_id.to_string(), 1_000_000_000);
        let provider = TestNode::start_with(tempfile::tempdir().unwrap(), config).await;
        let first = requester(&bootstrap).await;
        let second = requester(&bootstrap).await;
        let p = provider.handle.node_id;
        for node in [&listed, &first, &second] {
            wait_until("the provider is in every view", JOB, || {
                node.handle.mesh.get(&p).is_some()
            })
            .await;
        }

        // A first job, within the new line: it runs, and its cost is now owed.
        let one = first.submit(job_for(p, 10_000_000)).await;
        assert_eq!(first.wait_job(&one, JOB).await.state, JobState::Succeeded);
        let owes = |node: &TestNode| {
            provider
                .handle
                .ledger
                .balance_with(node.handle.node_id)
                .unwrap()
        };
        wait_until("the provider's ledger holds the debt", JOB, || {
            owes(&first) >= 6_000
        })
        .await;

        // A second one would bring the debt beyond the new line: declined.
        let two = first.submit(job_for(p, 10_000_000)).await;
        let record = first.wait_job(&two, JOB).await;
        assert_eq!(record.state, JobState::Failed);
        let reasons = declines(&first, &two);
        assert!(
            reasons
                .iter()
                .any(|(reason, _)| *reason == AttemptReason::CreditLimit),
            "{reasons:?}"
        );

        // A fresh identity at the same address gets no fresh line: it shares the first's.
        let three = second.submit(job_for(p, 10_000_000)).await;
        assert_eq!(second.wait_job(&three, JOB).await.state, JobState::Failed);
        let reasons = declines(&second, &three);
        assert!(
            reasons
                .iter()
                .any(|(reason, message)| *reason == AttemptReason::CreditLimit
                    && message.contains("shared with 1 other new requester")),
            "{reasons:?}"
        );
        // And no big job until it has history here.
        let big = second.submit(job_for(p, 1_000_000_000)).await;
        assert_eq!(second.wait_job(&big, JOB).await.state, JobState::Failed);
        let reasons = declines(&second, &big);
        assert!(
            reasons
                .iter()
                .any(|(reason, message)| *reason == AttemptReason::LimitsExceeded
                    && message.contains("until 2 contracts are settled")),
            "{reasons:?}"
        );
        assert_eq!(owes(&second), 0);

        // The requester the operator listed has its own line, though it is new and at the same
        // address.
        let four = listed.submit(job_for(p, 1_000_000_000)).await;
        assert_eq!(listed.wait_job(&four, JOB).await.state, JobState::Succeeded);

        for node in [first, second, listed, provider] {
            node.stop().await;
        }
    })
    .await;
}
