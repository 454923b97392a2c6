//! The market protocol (`/suanli/market/1`) against a hostile peer (issue 14): a bare libp2p
//! swarm ([`Adversary`]) that speaks the protocol as a requester and as a provider to real nodes
//! over loopback, with forged, replayed, reordered, oversized and slow messages. Every one must
//! be refused without harm: no ledger entry the node should not write, its ledger still
//! verifying, no state left growing, the peer penalised where the node does so (three strikes
//! ban it), and honest work still served afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use suanli_node::clock::now_ms;
use suanli_node::market::JobState;
use suanli_protocol::ledger::EntryBody;
use suanli_protocol::wire::{
    Delivery, ErrorCode, ExecuteRequest, MarketRequest, MarketResponse, WireMessage,
};
use suanli_protocol::{
    CoSigned, Contract, ContractDocs, ContractId, Credits, ExecutorKind, Hash32, JobSpec, Keypair,
    NodeId, Offer, Outcome, Placement, QuoteRequest, Receipt, Settlement, Signed, Usage,
};
use suanli_tests::adversary::{Adversary, MarketInbound, forge_cosigned, forge_signed};
use suanli_tests::{TestNode, wait_until, wat_job, with_timeout};

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const CONVERGE: Duration = Duration::from_secs(30);
const JOB: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A victim and an honest node that sees it.
async fn victim_and_honest() -> (TestNode, TestNode) {
    let victim = TestNode::start(&[]).await;
    let honest = TestNode::start(&[victim.tcp_addr()]).await;
    wait_until("both nodes see each other", CONVERGE, || {
        victim.mesh_size() == 2 && honest.mesh_size() == 2
    })
    .await;
    (victim, honest)
}

/// Sends `request` and decodes the answer; panics when there is none.
async fn ask(adversary: &Adversary, request: &MarketRequest) -> MarketResponse {
    let bytes = adversary
        .market_request(request.to_bytes().expect("encodable"))
        .await
        .expect("an answer");
    MarketResponse::from_bytes(&bytes).expect("a market response")
}

/// What a node's ledger is now: its length, and that it verifies.
fn ledger_state(node: &TestNode) -> usize {
    let report = node.handle.ledger.verify();
    assert!(report.ok, "the ledger verifies: {:?}", report.error);
    node.ledger_entries().len()
}

/// The job spec of HELLO with the harness's limits.
fn hello_spec() -> JobSpec {
    let job = wat_job(HELLO);
    JobSpec {
        executor: ExecutorKind::Wasm,
        module_hash: Hash32::of(HELLO.as_bytes()),
        args: Vec::new(),
        env: BTreeMap::new(),
        stdin_hash: Hash32::of(b""),
        limits: job.limits,
        max_price: job.max_price,
        placement: Placement::default(),
        replicas: 1,
    }
}

fn quote_for(key: &Keypair) -> QuoteRequest {
    let nonce = u128::from(now_ms()) << 32 | u128::from(rand_u32());
    QuoteRequest::new(key.node_id(), &hello_spec(), nonce, now_ms()).expect("quote")
}

fn rand_u32() -> u32 {
    let key = Keypair::generate().expect("randomness");
    u32::from_le_bytes(key.node_id().as_bytes()[..4].try_into().expect("4 bytes"))
}

/// Asks the victim for an offer, as `adversary`'s node.
async fn offer_for(adversary: &Adversary, quote: &QuoteRequest) -> Signed<Offer> {
    match ask(adversary, &MarketRequest::Quote(quote.clone())).await {
        MarketResponse::Offer(offer) => offer,
        other => panic!("expected an offer, got {other:?}"),
    }
}

/// The contract an honest requester would propose for `offer`.
fn contract_for(quote: &QuoteRequest, offer: &Signed<Offer>) -> Contract {
    let terms = offer.verify().expect("the victim's offer verifies");
    let spec = hello_spec();
    let now = now_ms();
    Contract {
        job_id: quote.job_id,
        job_hash: quote.job_hash(),
        module_hash: spec.module_hash,
        stdin_hash: spec.stdin_hash,
        requester: terms.requester,
        provider: terms.provider,
        offer: offer.digest(),
        price: terms.price,
        max_cost: terms.max_cost,
        limits: spec.limits,
        deadline_ms: now + spec.limits.wall_time_ms + 30_000,
        nonce: u64::from(rand_u32()),
        created_at_ms: now,
    }
}

/// The framed request with its last byte (the end of the last signature) flipped.
fn flipped(request: &MarketRequest) -> Vec<u8> {
    let mut bytes = request.to_bytes().expect("encodable");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    bytes
}

fn is_error(response: &MarketResponse, code: ErrorCode) -> bool {
    matches!(response, MarketResponse::Error(error) if error.code == code)
}

/// Whether the victim has banned the adversary: its requests are refused (or its connection
/// dropped) whatever they say.
async fn is_banned(adversary: &Adversary) -> bool {
    let request = MarketRequest::Quote(quote_for(&adversary.key));
    match adversary
        .market_request(request.to_bytes().expect("encodable"))
        .await
    {
        Ok(bytes) => matches!(
            MarketResponse::from_bytes(&bytes),
            Ok(MarketResponse::Error(error))
                if error.code == ErrorCode::Forbidden && error.message.contains("banned")
        ),
        Err(_) => true,
    }
}

/// An honest job from `honest`, pinned to `victim`, succeeds.
async fn honest_job_runs_on(victim: &TestNode, honest: &TestNode) {
    let mut job = wat_job(HELLO);
    job.placement.provider = Some(victim.handle.node_id);
    let job_id = honest.submit(job).await;
    let record = honest.wait_job(&job_id, JOB).await;
    assert_eq!(record.state, JobState::Succeeded, "{record:?}");
    assert_eq!(record.provider, Some(victim.handle.node_id));
}

/// Ledger entries of `node` that name `peer` as counterparty, by kind.
fn kinds_with(node: &TestNode, peer: NodeId) -> Vec<&'static str> {
    node.ledger_entries()
        .into_iter()
        .filter(|entry| match &entry.body {
            EntryBody::Contract(contract) => contract
                .decode_unverified()
                .is_ok_and(|contract| contract.requester == peer || contract.provider == peer),
            EntryBody::Receipt(receipt) => receipt
                .decode_unverified()
                .is_ok_and(|receipt| receipt.requester == peer || receipt.provider == peer),
            EntryBody::Settlement(settlement) => settlement
                .decode_unverified()
                .is_ok_and(|s| s.requester == peer || s.provider == peer),
            EntryBody::Failure(failure) => failure
                .decode_unverified()
                .is_ok_and(|failure| failure.counterparty == peer),
            EntryBody::Misbehaviour(evidence) => evidence
                .decode_unverified()
                .is_ok_and(|evidence| evidence.offender == peer),
            EntryBody::Usage(_) => false,
        })
        .map(|entry| entry.body.kind())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A hostile requester against a provider

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_market_documents_are_refused_and_their_sender_banned() {
    with_timeout(async {
        let (victim, honest) = victim_and_honest().await;
        let attacker = Keypair::generate().expect("key");
        let adversary = Adversary::connect(attacker.clone(), victim.tcp_addr()).await;
        let before = ledger_state(&victim);
        let honest_id = honest.handle.node_id;

        // A quote claiming another node's identity.
        let mut claimed = quote_for(&attacker);
        claimed.requester = honest_id;
        let answer = ask(&adversary, &MarketRequest::Quote(claimed)).await;
        assert!(is_error(&answer, ErrorCode::Forbidden), "{answer:?}");

        // A contract naming another node as its provider, signed by the attacker: not for the
        // victim to countersign.
        let quote = quote_for(&attacker);
        let offer = offer_for(&adversary, &quote).await;
        let mut elsewhere = contract_for(&quote, &offer);
        elsewhere.provider = honest_id;
        let proposal = Signed::sign(&elsewhere, &attacker).expect("sign");
        let answer = ask(&adversary, &MarketRequest::Propose(proposal)).await;
        assert!(
            !matches!(answer, MarketResponse::Countersigned(_)),
            "{answer:?}"
        );

        // A receipt for a contract that does not exist, and a run of one.
        let nowhere = ContractId(Hash32::of(b"no such contract"));
        let receipt = Receipt {
            contract_id: nowhere,
            job_id: quote.job_id,
            provider: attacker.node_id(),
            requester: victim.handle.node_id,
            outcome: Outcome::Succeeded {
                exit_code: 0,
                output_hash: Hash32::of(b""),
                output_len: 0,
            },
            usage: Usage::default(),
            cost: Credits(1),
            finished_at_ms: now_ms(),
        };
        let settlement = Settlement {
            contract_id: nowhere,
            receipt: Hash32::ZERO,
            provider: attacker.node_id(),
            requester: victim.handle.node_id,
            cost: Credits(1),
            settled_at_ms: now_ms(),
        };
        let delivery = Delivery {
            receipt: Signed::sign(&receipt, &attacker).expect("sign"),
            settlement: Signed::sign(&settlement, &attacker).expect("sign"),
            output: Vec::new(),
        };
        let answer = ask(&adversary, &MarketRequest::Deliver(delivery)).await;
        assert!(is_error(&answer, ErrorCode::NotFound), "{answer:?}");
        let execute = ExecuteRequest {
            contract_id: nowhere,
            spec: quote.spec.clone(),
            module: HELLO.as_bytes().to_vec(),
            stdin: Vec::new(),
        };
        let answer = ask(&adversary, &MarketRequest::Execute(execute)).await;
        assert!(is_error(&answer, ErrorCode::NotFound), "{answer:?}");
        assert!(!is_banned(&adversary).await, "nothing so far is a strike");

        // 1. The attacker's own valid proposal with a flipped signature bit.
        let quote = quote_for(&attacker);
        let offer = offer_for(&adversary, &quote).await;
        let proposal = Signed::sign(&contract_for(&quote, &offer), &attacker).expect("sign");
        let bytes = adversary
            .market_request(flipped(&MarketRequest::Propose(proposal)))
            .await
            .expect("an answer");
        let answer = MarketResponse::from_bytes(&bytes).expect("a response");
        assert!(is_error(&answer, ErrorCode::BadRequest), "{answer:?}");

        // 2. A proposal signed by the wrong key: the attacker's name, another key's signature.
        let quote = quote_for(&attacker);
        let offer = offer_for(&adversary, &quote).await;
        let contract = Signed::sign(&contract_for(&quote, &offer), &attacker).expect("sign");
        let other = Keypair::generate().expect("key");
        let wrong_key = forge_signed::<Contract>(contract.bytes(), attacker.node_id(), &other);
        let answer = ask(&adversary, &MarketRequest::Propose(wrong_key)).await;
        assert!(is_error(&answer, ErrorCode::BadRequest), "{answer:?}");
        assert!(!is_banned(&adversary).await, "two strikes do not ban");

        // 3. A contract claiming the honest node's identity as its requester, "signed" by it.
        let quote = quote_for(&attacker);
        let offer = offer_for(&adversary, &quote).await;
        let mut impersonating = contract_for(&quote, &offer);
        impersonating.requester = honest_id;
        let encoded = suanli_protocol::codec::encode(&impersonating).expect("encode");
        let forged = forge_signed::<Contract>(&encoded, honest_id, &attacker);
        let request = MarketRequest::Propose(forged)
            .to_bytes()
            .expect("encodable");
        // The third strike bans the sender at once: its connection may close before the answer.
        if let Ok(bytes) = adversary.market_request(request).await {
            let answer = MarketResponse::from_bytes(&bytes).expect("a response");
            assert!(is_error(&answer, ErrorCode::BadRequest), "{answer:?}");
        }

        // Three strikes: the victim bans the attacker.
        assert!(
            is_banned(&adversary).await,
            "three forgeries ban the sender"
        );

        // Nothing of it reached the ledger, and nothing is left running.
        assert_eq!(ledger_state(&victim), before);
        assert!(kinds_with(&victim, attacker.node_id()).is_empty());
        assert!(kinds_with(&victim, honest_id).is_empty());
        wait_until("no contract driver is left", CONVERGE, || {
            victim.handle.market.stats().contracts_driven == 0
        })
        .await;
        honest_job_runs_on(&victim, &honest).await;
        wait_until("the victim recorded the honest settlement", JOB, || {
            kinds_with(&victim, honest_id) == ["contract", "receipt", "settlement"]
        })
        .await;
        assert_eq!(ledger_state(&victim), before + 3);
        victim.stop().await;
        honest.stop().await;
    })
    .await;
}

/// The adversary's next market request from the node, decoded.
async fn next_request(adversary: &Adversary) -> (MarketRequest, MarketInbound) {
    let inbound = tokio::time::timeout(JOB, adversary.next_market_request())
        .await
        .expect("the node sent a market request in time");
    let request = MarketRequest::from_bytes(&inbound.bytes).expect("a market request");
    (request, inbound)
}

fn reconcile(docs: ContractDocs) -> MarketRequest {
    MarketRequest::Reconcile(Box::new(docs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_reordered_market_messages_change_nothing() {
    with_timeout(async {
        let (victim, honest) = victim_and_honest().await;
        let victim_id = victim.handle.node_id;
        let requester = Keypair::generate().expect("key");
        let adversary = Adversary::connect(requester.clone(), victim.tcp_addr()).await;
        let stranger = Keypair::generate().expect("key");
        let other = Adversary::connect(stranger.clone(), victim.tcp_addr()).await;
        let before = ledger_state(&victim);

        // A contract before any quote or offer.
        let quote = quote_for(&stranger);
        let mut unoffered = contract_for(&quote, &offer_for(&other, &quote).await);
        unoffered.offer = Hash32::of(b"an offer never made");
        let proposal = Signed::sign(&unoffered, &stranger).expect("sign");
        let answer = ask(&other, &MarketRequest::Propose(proposal)).await;
        assert!(matches!(answer, MarketResponse::Decline(_)), "{answer:?}");

        // A valid contract, once: countersigned and recorded.
        let quote = quote_for(&requester);
        let offer = offer_for(&adversary, &quote).await;
        let proposal = Signed::sign(&contract_for(&quote, &offer), &requester).expect("sign");
        let propose = MarketRequest::Propose(proposal);
        let contract = match ask(&adversary, &propose).await {
            MarketResponse::Countersigned(contract) => contract,
            other => panic!("expected a countersigned contract, got {other:?}"),
        };
        let id = ContractId(contract.digest());
        assert_eq!(ledger_state(&victim), before + 1);

        // The same proposal again, on this connection and from another peer on another.
        for sender in [&adversary, &other] {
            let answer = ask(sender, &propose).await;
            assert!(
                !matches!(answer, MarketResponse::Countersigned(_)),
                "{answer:?}"
            );
        }
        // Another peer asking to run someone else's contract.
        let execute = ExecuteRequest {
            contract_id: id,
            spec: quote.spec.clone(),
            module: HELLO.as_bytes().to_vec(),
            stdin: Vec::new(),
        };
        let answer = ask(&other, &MarketRequest::Execute(execute.clone())).await;
        assert!(is_error(&answer, ErrorCode::Forbidden), "{answer:?}");

        // A settlement before any receipt, and a receipt before any run: both "signed" by the
        // victim, so both refused (and struck).
        let settlement = Settlement {
            contract_id: id,
            receipt: Hash32::of(b"no receipt"),
            provider: victim_id,
            requester: requester.node_id(),
            cost: Credits(1),
            settled_at_ms: now_ms(),
        };
        let encoded = suanli_protocol::codec::encode(&settlement).expect("encode");
        let half = forge_signed::<Settlement>(&encoded, victim_id, &requester);
        let early_settlement = ContractDocs {
            contract: contract.clone(),
            receipt: None,
            settlement: Some(forge_cosigned(&half, &requester)),
            failure: None,
        };
        // Refused documents are left out of the answer: it holds what the victim holds.
        let only_the_contract = |answer: &MarketResponse| {
            matches!(answer, MarketResponse::Reconciled(docs)
                if docs.receipt.is_none() && docs.settlement.is_none() && docs.failure.is_none())
        };
        let answer = ask(&adversary, &reconcile(early_settlement)).await;
        assert!(only_the_contract(&answer), "{answer:?}");
        let receipt = Receipt {
            contract_id: id,
            job_id: quote.job_id,
            provider: victim_id,
            requester: requester.node_id(),
            outcome: Outcome::Succeeded {
                exit_code: 0,
                output_hash: Hash32::of(b"hello from suanli\n"),
                output_len: 18,
            },
            usage: Usage::default(),
            cost: Credits(1),
            finished_at_ms: now_ms(),
        };
        let encoded = suanli_protocol::codec::encode(&receipt).expect("encode");
        let early_receipt = ContractDocs {
            contract: contract.clone(),
            receipt: Some(forge_signed::<Receipt>(&encoded, victim_id, &requester)),
            settlement: None,
            failure: None,
        };
        let answer = ask(&adversary, &reconcile(early_receipt)).await;
        assert!(only_the_contract(&answer), "{answer:?}");
        assert_eq!(ledger_state(&victim), before + 1);

        // A run with a module that is not the contract's.
        let mut wrong_module = execute.clone();
        wrong_module.module = b"(module)".to_vec();
        let answer = ask(&adversary, &MarketRequest::Execute(wrong_module)).await;
        assert!(matches!(answer, MarketResponse::Error(_)), "{answer:?}");

        // The honest run: accepted, delivered, settled by the adversary as an honest requester.
        let answer = ask(&adversary, &MarketRequest::Execute(execute.clone())).await;
        assert!(
            matches!(answer, MarketResponse::Accepted { .. }),
            "{answer:?}"
        );
        let (request, inbound) = next_request(&adversary).await;
        let MarketRequest::Deliver(delivery) = request else {
            panic!("expected a delivery, got {request:?}");
        };
        let (settled, _) =
            CoSigned::countersign(delivery.settlement.clone(), &requester).expect("countersign");
        let held = ContractDocs {
            contract: contract.clone(),
            receipt: Some(delivery.receipt.clone()),
            settlement: Some(settled.clone()),
            failure: None,
        };
        inbound.answer(
            MarketResponse::Reconciled(Box::new(held.clone()))
                .to_bytes()
                .expect("encodable"),
        );
        wait_until("the victim recorded the settlement", JOB, || {
            kinds_with(&victim, requester.node_id()) == ["contract", "receipt", "settlement"]
        })
        .await;
        let settled_length = ledger_state(&victim);
        assert_eq!(settled_length, before + 3);

        // Every valid message of the contract, again: answered from what the victim holds.
        let answer = ask(&adversary, &MarketRequest::Execute(execute.clone())).await;
        assert!(
            matches!(&answer, MarketResponse::Reconciled(docs) if docs.settlement.is_some()),
            "{answer:?}"
        );
        let answer = ask(&adversary, &reconcile(held.clone())).await;
        assert!(
            matches!(&answer, MarketResponse::Reconciled(docs) if **docs == held),
            "{answer:?}"
        );
        let answer = ask(&adversary, &propose).await;
        assert!(
            !matches!(answer, MarketResponse::Countersigned(_)),
            "{answer:?}"
        );
        let answer = ask(&other, &reconcile(held.clone())).await;
        assert!(is_error(&answer, ErrorCode::Forbidden), "{answer:?}");
        // The run was not started again: no second delivery.
        assert_eq!(ledger_state(&victim), settled_length);

        // The settlement with its amount altered (third strike).
        let mut altered = settled.decode_unverified().expect("decodes");
        altered.cost = Credits(altered.cost.micro() + 1_000_000);
        let encoded = suanli_protocol::codec::encode(&altered).expect("encode");
        let half = forge_signed::<Settlement>(&encoded, victim_id, &requester);
        let mut inflated = held.clone();
        inflated.settlement = Some(forge_cosigned(&half, &requester));
        let request = reconcile(inflated).to_bytes().expect("encodable");
        if let Ok(bytes) = adversary.market_request(request).await {
            let answer = MarketResponse::from_bytes(&bytes).expect("a response");
            assert!(
                matches!(&answer, MarketResponse::Reconciled(docs) if **docs == held),
                "{answer:?}"
            );
        }
        assert!(
            is_banned(&adversary).await,
            "three forgeries ban the sender"
        );
        assert!(
            !is_banned(&other).await,
            "the other peer sent nothing forged"
        );

        assert_eq!(ledger_state(&victim), settled_length);
        wait_until("no contract driver is left", CONVERGE, || {
            victim.handle.market.stats().contracts_driven == 0
        })
        .await;
        honest_job_runs_on(&victim, &honest).await;
        victim.stop().await;
        honest.stop().await;
    })
    .await;
}
