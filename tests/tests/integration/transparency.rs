//! Ledger transparency between real nodes: checkpoints published and witnessed over libp2p,
//! audits across two ledgers after real jobs, a rewritten history refused at start-up, and an
//! equivocation detected by a peer with a proof that verifies offline.

use std::time::Duration;

use suanli_node::ledger::range_offline;
use suanli_node::ledger::testing::rewrite_entry_offline;
use suanli_node::network::checkpoint_topic;
use suanli_node::transparency::{AuditVerdict, DiscrepancyIssue, DocumentKind, Observation};
use suanli_node::{Node, NodeError};
use suanli_protocol::checkpoint::{Checkpoint, Equivocation, SignedCheckpoint};
use suanli_protocol::ledger::{EntryBody, LedgerEntry};
use suanli_protocol::merkle::EMPTY_ROOT;
use suanli_protocol::wire::{
    ErrorCode, GossipMessage, LedgerRequest, LedgerResponse, WireError, WireMessage,
};
use suanli_protocol::{ContractId, Keypair, NodeId};
use suanli_tests::adversary::Adversary;
use suanli_tests::{TestNode, test_config, wait_until, wat_job, with_timeout};

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const JOBS: usize = 100;

/// Runs `count` jobs submitted to `requester` and pinned to `provider`, all at once.
async fn run_jobs(requester: &TestNode, provider: NodeId, count: usize) {
    let mut ids = Vec::new();
    for _ in 0..count {
        let mut job = wat_job(HELLO);
        job.placement.provider = Some(provider);
        ids.push(requester.submit(job).await);
    }
    for id in &ids {
        let record = requester.wait_job(id, Duration::from_secs(120)).await;
        assert_eq!(
            record.state,
            suanli_node::market::JobState::Succeeded,
            "{record:?}"
        );
    }
}

/// Waits until the node's published checkpoint covers its whole durable ledger.
async fn checkpoint_covers_head(node: &TestNode) -> SignedCheckpoint {
    let size = node.handle.ledger.head().size;
    tokio::time::timeout(
        Duration::from_secs(30),
        node.handle.transparency.wait_for_checkpoint(size),
    )
    .await
    .expect("a checkpoint within 30 s")
    .expect("publisher running")
}

/// A settlement entry of a stopped node's ledger and the bytes of that entry with the
/// settlement's cost changed (found by flipping single bits until the document decodes with
/// another cost: what an operator editing the database would do). The co-signatures no longer
/// match.
fn altered_settlement(db: &std::path::Path, owner: NodeId) -> (u64, ContractId, Vec<u8>) {
    let entries = range_offline(db, owner, 0, 1024).expect("offline range");
    for stored in entries {
        let entry = LedgerEntry::decode(&stored.raw).expect("decodable");
        let EntryBody::Settlement(settlement) = &entry.body else {
            continue;
        };
        let original = settlement.decode_unverified().expect("settlement");
        for index in 0..stored.raw.len() {
            let mut raw = stored.raw.clone();
            raw[index] ^= 1;
            if let Ok(LedgerEntry {
                body: EntryBody::Settlement(altered),
                ..
            }) = LedgerEntry::decode(&raw)
                && let Ok(decoded) = altered.decode_unverified()
                && decoded.contract_id == original.contract_id
                && decoded.cost != original.cost
            {
                return (stored.seq, original.contract_id, raw);
            }
        }
    }
    panic!("no settlement whose cost can be altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_agree_then_catch_a_rewritten_ledger_and_its_equivocation() {
    with_timeout(async {
        let requester = TestNode::start(&[]).await;
        let provider = TestNode::start(&[requester.tcp_addr()]).await;
        let provider_id = provider.handle.node_id;
        wait_until("both nodes see each other", Duration::from_secs(30), || {
            requester.mesh_size() == 2 && provider.mesh_size() == 2
        })
        .await;
        run_jobs(&requester, provider_id, JOBS).await;

        // Both ledgers hold the 100 contracts; their checkpoints catch up within a second.
        let published = checkpoint_covers_head(&provider).await;
        checkpoint_covers_head(&requester).await;
        assert_eq!(published.signer(), provider_id);

        // The checkpoint served over HTTP is the signed note, verifiable against the node id.
        let api = format!("http://{}", provider.handle.api_addr);
        let note = reqwest::get(format!("{api}/v1/ledger/checkpoint"))
            .await
            .expect("GET checkpoint")
            .text()
            .await
            .expect("text");
        let served = SignedCheckpoint::from_note(&note).expect("a valid signed note");
        assert_eq!(served.signer(), provider_id);

        // Gossip made the requester a witness of the provider's checkpoints.
        wait_until(
            "the requester holds the provider's checkpoint",
            Duration::from_secs(30),
            || {
                requester
                    .handle
                    .transparency
                    .witnessed()
                    .iter()
                    .any(|held| held.node_id == provider_id.to_string() && held.size > 0)
            },
        )
        .await;

        // Full agreement: every contract, receipt and settlement identical on both sides.
        let report = requester
            .handle
            .transparency
            .audit(provider_id)
            .await
            .expect("audit runs");
        assert_eq!(report.verdict, AuditVerdict::Agree, "{report:#?}");
        assert_eq!(report.shared_contracts, JOBS as u64);
        assert_eq!(report.agreements, 3 * JOBS as u64);
        assert_eq!(report.discrepancies, 0);
        let checkpoint = report.checkpoint.as_ref().expect("checkpoint audited");
        assert!(checkpoint.root_matches);
        assert!(report.entries >= checkpoint.size);

        // The provider's operator edits one settlement on disk and restarts: refused, because
        // the ledger no longer extends the checkpoint the node published.
        let dir = provider.stop().await;
        let (seq, contract_id, raw) = altered_settlement(&dir.path().join("db"), provider_id);
        rewrite_entry_offline(&dir.path().join("db"), seq, &raw).expect("rewrite");
        let config = test_config(&[requester.tcp_addr()]);
        let refused = Node::start(
            suanli_node::data_dir::DataDir::new(dir.path()),
            config.validate().expect("config"),
        )
        .await;
        match refused {
            Err(NodeError::Checkpoint(error)) => {
                assert!(error.to_string().contains("does not extend"), "{error}");
            }
            other => panic!("a rewritten ledger must be refused, got {other:?}"),
        }

        // The operator also deletes the checkpoint file: the node starts, but its new checkpoints
        // contradict the one its peer witnessed.
        std::fs::remove_file(dir.path().join("checkpoint")).expect("remove checkpoint");
        let provider = TestNode::start_in(dir, &[requester.tcp_addr()]).await;
        // Grow the forked ledger so that it publishes a checkpoint the peer has not seen yet.
        wait_until(
            "the provider is back in the mesh",
            Duration::from_secs(30),
            || provider.mesh_size() == 2,
        )
        .await;
        let mut own = wat_job(HELLO);
        own.placement.provider = Some(provider_id);
        let own = provider.submit(own).await;
        provider.wait_job(&own, Duration::from_secs(60)).await;

        wait_until(
            "the requester detects the equivocation",
            Duration::from_secs(60),
            || requester.handle.transparency.has_equivocated(&provider_id),
        )
        .await;
        let records = requester.handle.transparency.equivocations();
        let record = records
            .iter()
            .find(|record| record.node_id == provider_id.to_string())
            .expect("an equivocation record");
        // The proof stands on its own: serialised, parsed back and verified offline.
        let json = serde_json::to_string(&record.proof).expect("json");
        let parsed: suanli_protocol::checkpoint::Equivocation =
            serde_json::from_str(&json).expect("parse");
        assert_eq!(parsed.verify(), Ok(provider_id));
        // And the equivocating node is no longer chosen for placement.
        assert!(requester.handle.mesh.is_distrusted(&provider_id));
        assert!(requester.handle.mesh.get(&provider_id).is_none());

        // The audit names the altered contract.
        let report = requester
            .handle
            .transparency
            .audit(provider_id)
            .await
            .expect("audit runs");
        assert_eq!(report.verdict, AuditVerdict::Disagree);
        let contract = contract_id.to_string();
        assert!(
            report
                .chain_problem_list
                .iter()
                .any(|problem| problem.index == seq
                    && problem.contract_id.as_deref() == Some(contract.as_str())),
            "{report:#?}"
        );
        let differing: Vec<_> = report
            .discrepancy_list
            .iter()
            .filter(|item| item.issue == DiscrepancyIssue::Differs)
            .collect();
        assert_eq!(differing.len(), 1, "{report:#?}");
        assert_eq!(differing[0].contract_id, contract);
        assert_eq!(differing[0].kind, DocumentKind::Settlement);
        assert_eq!(differing[0].theirs, Some(seq));
        let witness = &report.checkpoint.as_ref().expect("checkpoint").witness;
        assert_eq!(*witness, Observation::Equivocation);

        provider.stop().await;
        requester.stop().await;
    })
    .await;
}

/// Decodes a ledger-sync answer.
fn ledger_answer(bytes: &[u8]) -> LedgerResponse {
    LedgerResponse::from_bytes(bytes).expect("a well-formed ledger answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_sync_and_checkpoint_gossip_refuse_bad_input() {
    with_timeout(async {
        let victim = TestNode::start(&[]).await;
        let honest = TestNode::start(&[victim.tcp_addr()]).await;
        wait_until("the nodes see each other", Duration::from_secs(30), || {
            victim.mesh_size() == 2
        })
        .await;
        checkpoint_covers_head(&victim).await;
        let attacker = Keypair::generate().expect("key");
        let adversary = Adversary::connect(attacker.clone(), victim.tcp_addr()).await;
        let victim_id = victim.handle.node_id;

        // Well-formed requests get their answers.
        let request = |message: LedgerRequest| message.to_bytes().expect("encode");
        let answer = adversary
            .ledger_request(request(LedgerRequest::Checkpoint))
            .await
            .expect("answer");
        let LedgerResponse::Checkpoint { note: Some(note) } = ledger_answer(&answer) else {
            panic!("a checkpoint answer");
        };
        let checkpoint = SignedCheckpoint::from_note(&note).expect("valid note");
        assert_eq!(checkpoint.signer(), victim_id);
        let answer = adversary
            .ledger_request(request(LedgerRequest::Range { from: 0, limit: 10 }))
            .await
            .expect("answer");
        assert!(matches!(
            ledger_answer(&answer),
            LedgerResponse::Entries {
                from: 0,
                checkpoint: Some(_),
                ..
            }
        ));

        // Out-of-bounds requests get a clear error, not a clamp or a crash.
        for (message, code) in [
            (
                LedgerRequest::Range { from: 0, limit: 0 },
                ErrorCode::BadRequest,
            ),
            (
                LedgerRequest::Range {
                    from: 0,
                    limit: 1_000_000,
                },
                ErrorCode::BadRequest,
            ),
            (
                LedgerRequest::Prove { size1: 3, size2: 2 },
                ErrorCode::BadRequest,
            ),
            (
                LedgerRequest::Prove {
                    size1: 1,
                    size2: 1 << 40,
                },
                ErrorCode::NotFound,
            ),
        ] {
            let answer = adversary
                .ledger_request(request(message.clone()))
                .await
                .expect("answer");
            match ledger_answer(&answer) {
                LedgerResponse::Error(error) => assert_eq!(error.code, code, "{message:?}"),
                other => panic!("{message:?} answered {other:?}"),
            }
        }
        // Garbage is a malformed-message strike, answered with an error.
        let answer = adversary
            .ledger_request(vec![0xff; 40])
            .await
            .expect("answer");
        assert!(matches!(
            ledger_answer(&answer),
            LedgerResponse::Error(WireError {
                code: ErrorCode::BadRequest,
                ..
            })
        ));

        // Checkpoint gossip. A valid checkpoint of a node outside the capacity view is ignored.
        let own = Checkpoint::new(attacker.node_id(), 0, EMPTY_ROOT)
            .sign(&attacker)
            .expect("sign");
        let ignored_before = victim.handle.network.gossip_stats().ignored;
        adversary
            .publish_on(
                checkpoint_topic(),
                GossipMessage::Checkpoint {
                    note: own.note().to_owned(),
                }
                .to_bytes()
                .expect("encode"),
            )
            .await
            .expect("published");
        wait_until("the victim ignored it", Duration::from_secs(30), || {
            victim.handle.network.gossip_stats().ignored > ignored_before
        })
        .await;
        // Forged: the honest node's checkpoint re-signed by nobody (a flipped signature bit),
        // an equivocation "proof" made of one checkpoint twice, and garbage. Each is rejected.
        let honest_note = checkpoint_covers_head(&honest).await.note().to_owned();
        let mut forged = honest_note.clone().into_bytes();
        let at = forged.len() - 3;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("text");
        let bogus = Equivocation {
            first: honest_note.clone(),
            second: honest_note,
            fork: None,
        };
        let rejected_before = victim.handle.network.gossip_stats().rejected;
        for message in [
            GossipMessage::Checkpoint { note: forged },
            GossipMessage::Equivocation(bogus),
        ] {
            adversary
                .publish_on(checkpoint_topic(), message.to_bytes().expect("encode"))
                .await
                .expect("published");
        }
        adversary
            .publish_on(checkpoint_topic(), vec![0xff; 64])
            .await
            .expect("published");
        wait_until("the victim rejected them", Duration::from_secs(30), || {
            victim.handle.network.gossip_stats().rejected > rejected_before
        })
        .await;
        // Nothing of it was believed, and the victim still serves.
        assert!(victim.handle.transparency.equivocations().is_empty());
        assert!(
            !victim
                .handle
                .transparency
                .has_equivocated(&honest.handle.node_id)
        );
        let response = reqwest::get(format!(
            "http://{}/v1/ledger/witnessed",
            victim.handle.api_addr
        ))
        .await
        .expect("API up");
        assert!(response.status().is_success());

        honest.stop().await;
        victim.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_that_finds_documents_missing_has_them_exchanged() {
    with_timeout(async {
        let requester = TestNode::start(&[]).await;
        let provider = TestNode::start(&[requester.tcp_addr()]).await;
        wait_until("both nodes see each other", Duration::from_secs(30), || {
            requester.mesh_size() == 2 && provider.mesh_size() == 2
        })
        .await;
        let key = |node: &TestNode| {
            suanli_node::data_dir::DataDir::new(node.dir.path())
                .load_key()
                .expect("node key")
        };
        // A contract both signed, settled in the requester's ledger, while the provider's holds
        // it only up to the receipt: what a node that lost a settlement (or a bug) leaves.
        let deal = suanli_node::fixtures::Deal::new(7, &key(&requester), &key(&provider), 1_000)
            .expect("documents");
        let [contract, receipt, settlement] = deal.bodies();
        requester
            .handle
            .ledger
            .append_all(vec![contract.clone(), receipt.clone(), settlement])
            .await
            .expect("requester's entries");
        provider
            .handle
            .ledger
            .append_all(vec![contract, receipt])
            .await
            .expect("provider's entries");
        let provider_id = provider.handle.node_id;
        let api = format!("http://{}", requester.handle.api_addr);
        let audit = || async {
            reqwest::get(format!("{api}/v1/ledger/audit?peer={provider_id}"))
                .await
                .expect("GET audit")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        };
        let report = audit().await;
        assert_eq!(report["discrepancies"], 1, "{report}");
        assert_eq!(report["discrepancy_list"][0]["issue"], "missing_on_peer");
        assert_eq!(report["repairs_requested"], 1, "{report}");
        // The requester sent the provider what it holds; the provider recorded the settlement.
        let id = ContractId(deal.contract.digest());
        wait_until(
            "the provider holds the settlement",
            Duration::from_secs(30),
            || {
                provider
                    .handle
                    .ledger
                    .contract_docs(id)
                    .ok()
                    .flatten()
                    .is_some_and(|docs| docs.settlement.is_some())
            },
        )
        .await;
        let report = audit().await;
        assert_eq!(report["verdict"], "agree", "{report}");
        assert_eq!(report["discrepancies"], 0, "{report}");
        assert_eq!(
            provider
                .handle
                .ledger
                .balance_with(requester.handle.node_id)
                .unwrap(),
            -requester.handle.ledger.balance_with(provider_id).unwrap()
        );
        requester.stop().await;
        provider.stop().await;
    })
    .await;
}
