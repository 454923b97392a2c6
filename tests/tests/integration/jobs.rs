//! Jobs end to end between real in-process nodes: negotiation over libp2p, wasmtime, sled.

use std::collections::BTreeMap;
use std::time::Duration;

use suanli_node::market::{AttemptOutcome, AttemptReason, JobErrorCode, JobState, SubmitError};
use suanli_protocol::ledger::EntryBody;
use suanli_protocol::{ContractId, NodeId};
use suanli_tests::{TestNode, slow_wat, wait_until, wat_job, with_timeout};

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const SPIN: &str = include_str!("../../../examples/jobs/spin.wat");
const TRAP: &str = include_str!("../../../examples/jobs/trap.wat");
const EXIT3: &str = include_str!("../../../examples/jobs/exit3.wat");
const JOB: Duration = Duration::from_secs(60);

async fn mesh_of(n: usize) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for _ in 0..n {
        let bootstrap: Vec<_> = nodes.first().map(TestNode::tcp_addr).into_iter().collect();
        nodes.push(TestNode::start(&bootstrap).await);
    }
    wait_until(
        "every node sees the whole mesh",
        Duration::from_secs(30),
        || nodes.iter().all(|node| node.mesh_size() == n),
    )
    .await;
    nodes
}

fn node_by_id<'a>(nodes: &'a [TestNode], id: &NodeId) -> &'a TestNode {
    nodes
        .iter()
        .find(|node| node.handle.node_id == *id)
        .expect("a node of the mesh")
}

/// The dual-signed contract with this id in a node's ledger, verified.
fn contract_in(node: &TestNode, contract_id: &ContractId) -> suanli_protocol::Contract {
    node.ledger_entries()
        .into_iter()
        .find_map(|entry| match entry.body {
            EntryBody::Contract(contract) if ContractId(contract.digest()) == *contract_id => {
                Some(contract.verify().expect("both signatures verify"))
            }
            _ => None,
        })
        .expect("the contract is in the ledger")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_job_runs_on_another_node_and_lands_in_both_ledgers() {
    with_timeout(async {
        let nodes = mesh_of(3).await;
        let a = &nodes[0];
        let mut job = wat_job(HELLO);
        job.placement.exclude_self = true;
        let job_id = a.submit(job).await;
        let record = a.wait_job(&job_id, JOB).await;
        assert_eq!(record.state, JobState::Succeeded, "{record:?}");
        let provider_id = record.provider.expect("provider");
        assert_ne!(provider_id, a.handle.node_id, "ran remotely");
        let output_hash = record.output_hash.expect("output");
        let output = a
            .handle
            .market
            .jobs()
            .blobs()
            .get(&output_hash)
            .expect("blob store")
            .expect("output stored");
        assert_eq!(output, b"hello from suanli\n");
        assert!(record.usage.expect("usage").fuel > 0);
        let cost = record.cost.expect("cost");

        let contract_id = record.contract_id.expect("contract");
        let provider = node_by_id(&nodes, &provider_id);
        // The provider appends the settlement when the requester's answer reaches it.
        wait_until("the provider recorded the settlement", JOB, || {
            provider
                .ledger_entries()
                .iter()
                .any(|entry| entry.body.kind() == "settlement")
        })
        .await;
        for node in [a, provider] {
            let contract = contract_in(node, &contract_id);
            assert_eq!(contract.requester, a.handle.node_id);
            assert_eq!(contract.provider, provider_id);
            // Receipt and settlement are on both sides too.
            let kinds: Vec<&str> = node
                .ledger_entries()
                .iter()
                .map(|e| e.body.kind())
                .collect();
            assert!(
                kinds.contains(&"receipt") && kinds.contains(&"settlement"),
                "{kinds:?}"
            );
        }
        for node in &nodes {
            let report = node.handle.ledger.verify();
            assert!(report.ok, "{:?}", report.error);
        }
        // Balances derived from the settlement: the requester owes the provider the cost.
        let owed = provider
            .handle
            .ledger
            .balances()
            .expect("balances")
            .into_iter()
            .find(|balance| balance.node_id == a.handle.node_id.to_string())
            .expect("a balance with the requester");
        assert_eq!(owed.net_micro, i128::from(cost));
        for node in nodes {
            node.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_come_back_with_their_reason() {
    with_timeout(async {
        let nodes = mesh_of(2).await;
        let a = &nodes[0];
        let cases = [
            (JobErrorCode::FuelExhausted, {
                let mut job = wat_job(SPIN);
                job.limits.fuel = 10_000_000;
                job
            }),
            (JobErrorCode::Trap, wat_job(TRAP)),
            (JobErrorCode::Timeout, {
                let mut job = wat_job(SPIN);
                job.limits.fuel = 9_000_000_000;
                job.limits.wall_time_ms = 300;
                job
            }),
            (JobErrorCode::NonzeroExit, wat_job(EXIT3)),
        ];
        let mut submitted = Vec::new();
        for (reason, mut job) in cases {
            job.placement.exclude_self = true;
            submitted.push((reason, a.submit(job).await));
        }
        for (reason, job_id) in submitted {
            let record = a.wait_job(&job_id, JOB).await;
            assert_eq!(record.state, JobState::Failed, "{reason:?}: {record:?}");
            let error = record.error.expect("error");
            assert_eq!(error.code, reason, "{error:?}");
            // Even failed runs are settled: the provider did the work.
            assert!(record.cost.is_some(), "{reason:?} was settled");
        }
        // A budget that cannot even pay for compiling the module is refused at once.
        let mut starved = wat_job(SPIN);
        starved.limits.fuel = 1_000;
        let refused = a.handle.market.submit(starved).await;
        assert!(
            matches!(&refused, Err(SubmitError::Invalid(message)) if message.contains("compiling")),
            "{refused:?}"
        );
        // An invalid module is refused before any negotiation.
        let refused = a.handle.market.submit(wat_job("(module (func $oops")).await;
        assert!(
            matches!(refused, Err(SubmitError::InvalidModule(_))),
            "{refused:?}"
        );
        // The node keeps serving.
        let ok = a.submit(wat_job(HELLO)).await;
        assert_eq!(a.wait_job(&ok, JOB).await.state, JobState::Succeeded);
        for node in nodes {
            node.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_jobs_settle_exactly_once() {
    with_timeout(async {
        let nodes = mesh_of(3).await;
        let mut jobs = Vec::new();
        for index in 0..200 {
            let node = &nodes[index % 3];
            jobs.push((index % 3, node.submit(wat_job(HELLO)).await));
        }
        for (owner, job_id) in &jobs {
            let record = nodes[*owner]
                .wait_job(job_id, Duration::from_secs(110))
                .await;
            assert_eq!(record.state, JobState::Succeeded, "{record:?}");
        }
        // Every contract is settled exactly once on each side. Providers append their copy when
        // the requester's answer reaches them, so wait for those to land first.
        let settlements_now = || {
            let mut settlements: BTreeMap<(NodeId, ContractId), u32> = BTreeMap::new();
            for node in &nodes {
                for entry in node.ledger_entries() {
                    if let EntryBody::Settlement(settled) = entry.body {
                        let settlement = settled.verify().expect("valid settlement");
                        *settlements
                            .entry((node.handle.node_id, settlement.contract_id))
                            .or_default() += 1;
                    }
                }
            }
            settlements
        };
        let expected: Vec<(NodeId, NodeId, ContractId)> = jobs
            .iter()
            .map(|(owner, job_id)| {
                let record = nodes[*owner].job(job_id);
                (
                    nodes[*owner].handle.node_id,
                    record.provider.expect("provider"),
                    record.contract_id.expect("contract"),
                )
            })
            .collect();
        wait_until("every provider recorded its settlements", JOB, || {
            let settlements = settlements_now();
            expected
                .iter()
                .all(|(_, provider, contract)| settlements.contains_key(&(*provider, *contract)))
        })
        .await;
        let settlements = settlements_now();
        for node in &nodes {
            assert!(node.handle.ledger.verify().ok);
        }
        for (requester, provider, contract) in &expected {
            assert_eq!(settlements.get(&(*requester, *contract)), Some(&1));
            assert_eq!(settlements.get(&(*provider, *contract)), Some(&1));
        }
        let total: u32 = settlements.values().sum();
        // Each settlement appears in two ledgers, or once when a node ran its own job.
        let self_run = jobs
            .iter()
            .filter(|(owner, job_id)| {
                nodes[*owner].job(job_id).provider == Some(nodes[*owner].handle.node_id)
            })
            .count() as u32;
        assert_eq!(total, 2 * 200 - self_run);
        for node in nodes {
            node.stop().await;
        }
    })
    .await;
}

fn slow_job(iterations: u64) -> suanli_node::market::Submission {
    let mut job = wat_job(&slow_wat(iterations));
    job.limits.fuel = 60_000_000_000;
    job.limits.wall_time_ms = 60_000;
    job.placement.exclude_self = true;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_provider_dies_completes_on_another() {
    with_timeout(async {
        let mut nodes = mesh_of(3).await;
        let a = &nodes[0];
        let job_id = a.submit(slow_job(3_000_000_000)).await;
        wait_until("the job runs somewhere", JOB, || {
            a.job(&job_id).state == JobState::Running
        })
        .await;
        let first = a.job(&job_id).provider.expect("provider");
        let index = nodes
            .iter()
            .position(|node| node.handle.node_id == first)
            .expect("provider in the mesh");
        nodes.remove(index).stop().await;
        let a = &nodes[0];
        let record = a.wait_job(&job_id, Duration::from_secs(100)).await;
        assert_eq!(record.state, JobState::Succeeded, "{record:?}");
        let second = record.provider.expect("provider");
        assert_ne!(second, first, "finished elsewhere");
        let lost = record
            .attempts
            .iter()
            .find(|attempt| attempt.provider == first)
            .expect("the failed attempt is recorded");
        assert_eq!(lost.outcome, AttemptOutcome::Lost, "{lost:?}");
        // The requester's ledger records the failure of the first contract.
        let failures = a
            .ledger_entries()
            .into_iter()
            .filter(|entry| entry.body.kind() == "failure")
            .count();
        assert_eq!(failures, 1);
        assert!(a.handle.ledger.verify().ok);
        for node in nodes {
            node.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_beyond_its_credit_line_is_declined_with_the_reason() {
    with_timeout(async {
        // The provider gives every requester 10,800 µcr of credit; a hello job may cost up to
        // 10,100 µcr (its fuel budget at the default prices), so once it owes a few hundred the
        // next job no longer fits.
        const LIMIT: u64 = 10_800;
        let mut config = suanli_tests::test_config(&[]);
        config.provider.credit_limit = LIMIT;
        let provider = TestNode::start_with(tempfile::tempdir().expect("dir"), config).await;
        let mut config = suanli_tests::test_config(&[provider.tcp_addr()]);
        config.jobs.placement_timeout_secs = 2;
        let requester = TestNode::start_with(tempfile::tempdir().expect("dir"), config).await;
        wait_until("the nodes see each other", JOB, || {
            requester.mesh_size() == 2 && provider.mesh_size() == 2
        })
        .await;
        let provider_id = provider.handle.node_id;
        let requester_id = requester.handle.node_id;
        let mut refused = None;
        for _ in 0..50 {
            let mut job = wat_job(HELLO);
            job.placement.provider = Some(provider_id);
            let max_cost = 100 + job.limits.fuel * 10 / 1_000_000;
            let owed_before = provider.handle.ledger.balance_with(requester_id).unwrap();
            let record = requester.wait_job(&requester.submit(job).await, JOB).await;
            if record.state == JobState::Succeeded {
                assert!(owed_before + i128::from(max_cost) <= i128::from(LIMIT));
                // The provider records its settlement just after the requester: until then the
                // contract still counts, at its max cost, against the line.
                wait_until("the provider settled", JOB, || {
                    provider
                        .handle
                        .ledger
                        .open_contracts()
                        .is_ok_and(|open| open.is_empty())
                })
                .await;
                continue;
            }
            refused = Some((record, owed_before, max_cost));
            break;
        }
        let (record, owed, max_cost) = refused.expect("the credit line ran out");
        assert_eq!(
            record.error.as_ref().map(|error| error.code),
            Some(JobErrorCode::NoProvider),
            "{record:?}"
        );
        let declined = record
            .attempts
            .iter()
            .find(|attempt| attempt.reason == Some(AttemptReason::CreditLimit))
            .expect("a credit_limit decline in the attempts");
        assert_eq!(declined.outcome, AttemptOutcome::Declined);
        assert!(declined.message.contains("credit line"), "{declined:?}");
        assert!(owed > 0 && owed + i128::from(max_cost) > i128::from(LIMIT));
        // A requester with a line of its own is not refused.
        let mut more = suanli_tests::test_config(&[]);
        more.provider.credit_limit = LIMIT;
        more.provider
            .credit_limits
            .insert(requester_id.to_string(), 10 * LIMIT);
        let dir = provider.stop().await;
        let provider = TestNode::start_with(dir, more).await;
        wait_until("the provider is back", JOB, || requester.mesh_size() == 2).await;
        let mut job = wat_job(HELLO);
        job.placement.provider = Some(provider_id);
        let record = requester.wait_job(&requester.submit(job).await, JOB).await;
        assert_eq!(record.state, JobState::Succeeded, "{record:?}");
        requester.stop().await;
        provider.stop().await;
    })
    .await;
}
