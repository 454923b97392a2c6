//! The market protocol (`/suanli/market/1`) against a hostile peer (issue 14): a bare libp2p
//! swarm ([`Adversary`]) that speaks the protocol as a requester and as a provider to real nodes
//! over loopback, with forged, replayed, reordered, oversized and slow messages. Every one must
//! be refused without harm: no ledger entry the node should not write, its ledger still
//! verifying, no state left growing, the peer penalised where the node does so (three strikes
//! ban it), and honest work still served afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};

use suanli_node::clock::now_ms;
use suanli_node::market::{AttemptOutcome, JobState};
use suanli_protocol::ledger::EntryBody;
use suanli_protocol::negotiation::AttemptFailure;
use suanli_protocol::wire::{
    Delivery, ErrorCode, ExecuteRequest, GossipMessage, MAX_MARKET_MESSAGE_BYTES, MarketRequest,
    MarketResponse, WireMessage,
};
use suanli_protocol::{
    CapacityAdvert, CoSigned, Contract, ContractDocs, ContractId, Credits, ExecutorKind, Hash32,
    JobSpec, Keypair, NodeId, Offer, Outcome, Placement, PriceTerms, QuoteRequest, Receipt,
    Resources, Settlement, Signed, Usage,
};
use suanli_tests::adversary::{Adversary, MarketInbound, forge_cosigned, forge_signed};
use suanli_tests::{TestNode, test_config, wait_until, wat_job, with_timeout};

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const CONVERGE: Duration = Duration::from_secs(30);
const JOB: Duration = Duration::from_secs(60);
/// More than the market streams a node handles at once on one connection (256).
const STALLED_STREAMS: usize = 300;
/// Contracts never made that one test asks about, and requests about each at once.
const UNKNOWN_CONTRACTS: usize = 20;
const BURST: usize = 8;

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
    // The provider records the settlement once the requester's countersignature reaches it,
    // after the job has succeeded on the requester's side.
    let contract_id = record
        .contract_id
        .expect("a succeeded job names its contract");
    wait_until("the victim recorded the honest settlement", JOB, || {
        victim
            .handle
            .ledger
            .contract_docs(contract_id)
            .ok()
            .flatten()
            .is_some_and(|docs| docs.settlement.is_some())
    })
    .await;
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

// ---------------------------------------------------------------------------------------------
// Oversized and slow frames

/// Sends a length of `announced` and `body` bytes on a raw market stream, and reads what the node
/// answers until it closes the stream. The write half stays open (the node need not read on).
async fn refused_unread(adversary: &Adversary, announced: u32, body: usize) -> Vec<u8> {
    let stream = adversary.open_market_stream().await.expect("a stream");
    let (mut reader, mut writer) = stream.split();
    let write = async move {
        let _ = writer.write_all(&announced.to_be_bytes()).await;
        let _ = writer.write_all(&vec![1u8; body]).await;
        let _ = writer.flush().await;
        std::future::pending::<()>().await
    };
    let read = async {
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer).await;
        answer
    };
    tokio::select! {
        answer = read => answer,
        () = write => unreachable!("the write half never ends"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_stalled_market_frames_are_dropped() {
    with_timeout(async {
        let (victim, honest) = victim_and_honest().await;
        let attacker = Keypair::generate().expect("key");
        let adversary = Adversary::connect(attacker.clone(), victim.tcp_addr()).await;
        let before = ledger_state(&victim);
        let cap = u32::try_from(MAX_MARKET_MESSAGE_BYTES).expect("fits");

        // Slow: more streams than a connection may hold at once, each announcing a whole frame
        // of the cap and sending two bytes of it, then nothing; and one trickling a byte at a
        // time. The node must drop every one (at once beyond its per-connection bound, the rest
        // by its request timeout) without striking anyone: slowness is not malice.
        let mut trickled = adversary.open_market_stream().await.expect("a stream");
        trickled.write_all(&cap.to_be_bytes()).await.expect("write");
        let trickle = async move {
            // Writes until the node drops the stream; what it read back says the stream ended.
            let mut ended_after = 0usize;
            while trickled.write_all(&[1]).await.is_ok() && trickled.flush().await.is_ok() {
                ended_after += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ended_after
        };
        let trickler = tokio::spawn(trickle);
        let mut stalled = Vec::new();
        for _ in 0..STALLED_STREAMS {
            let mut stream = adversary.open_market_stream().await.expect("a stream");
            // Beyond the bound the node drops a stream as it arrives: writing may fail.
            let mut head = cap.to_be_bytes().to_vec();
            head.extend_from_slice(&[1, 0]);
            if stream.write_all(&head).await.is_ok() {
                let _ = stream.flush().await;
            }
            stalled.push(stream);
        }

        // Meanwhile the node serves others.
        honest_job_runs_on(&victim, &honest).await;
        let honest_length = ledger_state(&victim);

        // Every stalled stream ends: the node reads EOF or a reset, never the answer to a frame.
        let ends = stalled.into_iter().map(|mut stream| async move {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            rest.len()
        });
        let answered: Vec<usize> = futures::future::join_all(ends).await;
        assert!(answered.iter().all(|bytes| *bytes == 0), "{answered:?}");
        let trickled_bytes = trickler.await.expect("trickler");
        assert!(
            (trickled_bytes as u64) < u64::from(cap),
            "the node read a trickled frame to its end"
        );
        assert!(
            !is_banned(&adversary).await,
            "slow streams are dropped, not struck"
        );

        // Oversized: a length above the cap on a raw stream, then the largest length followed by
        // a mebibyte of bytes, then bytes that are no market request. Three strikes ban the
        // sender.
        for (announced, body) in [(cap + 1, 0), (u32::MAX, 1 << 20)] {
            // Refused unread: the answer, a frame of its own, is an error.
            let answer = refused_unread(&adversary, announced, body).await;
            assert!(answer.len() > 4, "answered {answer:?}");
            let answer = MarketResponse::from_bytes(&answer[4..]).expect("a response");
            assert!(is_error(&answer, ErrorCode::BadRequest), "{answer:?}");
        }
        let garbage = vec![0x01, 0xff, 0xff, 0xff];
        if let Ok(bytes) = adversary.market_request(garbage).await {
            let answer = MarketResponse::from_bytes(&bytes).expect("a response");
            assert!(is_error(&answer, ErrorCode::BadRequest), "{answer:?}");
        }
        assert!(
            is_banned(&adversary).await,
            "three malformed frames ban the sender"
        );

        assert_eq!(ledger_state(&victim), honest_length);
        assert_eq!(honest_length, before + 3);
        assert!(kinds_with(&victim, attacker.node_id()).is_empty());
        honest_job_runs_on(&victim, &honest).await;
        victim.stop().await;
        honest.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A hostile provider against a requester

/// An advert that makes the adversary the cheapest provider of WebAssembly jobs.
fn cheapest_advert(key: &Keypair, seq: u64) -> Vec<u8> {
    let resources = Resources {
        cpu_cores: 64,
        memory_bytes: 1 << 40,
        gpus: Vec::new(),
    };
    let advert = CapacityAdvert {
        node: key.node_id(),
        seq,
        issued_at_ms: now_ms(),
        ttl_ms: 600_000,
        region: "hostile".into(),
        listen_addrs: Vec::new(),
        total: resources.clone(),
        free: resources,
        executors: vec![ExecutorKind::Wasm],
        prices: PriceTerms::default(),
        load_permille: 0,
        software_version: "hostile".into(),
        models: Vec::new(),
        cluster: None,
    };
    GossipMessage::Advert(Signed::sign(&advert, key).expect("sign"))
        .to_bytes()
        .expect("encode")
}

/// How the hostile provider treats one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provides {
    /// Answers the quote with an offer whose signature is broken.
    ForgedOffer,
    /// Never answers the quote.
    Silence,
    /// Signs the contract, accepts the run, never delivers.
    NoDelivery,
    /// Delivers a receipt whose cost is not what the contract's prices make of its usage.
    WrongCost,
}

/// Serves the requester's market requests for one job as `mode` says, until the requester is
/// done with this provider; returns the requester's last word on the contract, if one was made,
/// and the requests held unanswered.
async fn provide(
    adversary: &Adversary,
    mode: Provides,
) -> (Option<ContractDocs>, Vec<MarketInbound>) {
    let key = adversary.key.clone();
    let mut held = Vec::new();
    let mut contract: Option<CoSigned<Contract>> = None;
    loop {
        let (request, inbound) = next_request(adversary).await;
        match request {
            MarketRequest::Quote(quote) => {
                let spec = quote.decode_spec().expect("an honest quote");
                let price = PriceTerms::default();
                let offer = Offer {
                    provider: key.node_id(),
                    requester: quote.requester,
                    job_id: quote.job_id,
                    price,
                    max_cost: price.max_cost(&spec.limits).expect("cost"),
                    valid_until_ms: now_ms() + 30_000,
                    reservation: 1,
                };
                let signed = Signed::sign(&offer, &key).expect("sign");
                let answer = MarketResponse::Offer(signed);
                match mode {
                    Provides::ForgedOffer => {
                        let mut bytes = answer.to_bytes().expect("encode");
                        let last = bytes.len() - 1;
                        bytes[last] ^= 0x01;
                        inbound.answer(bytes);
                        return (None, held);
                    }
                    Provides::Silence => {
                        held.push(inbound);
                        return (None, held);
                    }
                    _ => inbound.answer(answer.to_bytes().expect("encode")),
                }
            }
            MarketRequest::Propose(proposal) => {
                let (cosigned, _) = CoSigned::countersign(proposal, &key).expect("countersign");
                contract = Some(cosigned.clone());
                inbound.answer(
                    MarketResponse::Countersigned(cosigned)
                        .to_bytes()
                        .expect("encode"),
                );
            }
            MarketRequest::Execute(execute) => {
                inbound.answer(
                    MarketResponse::Accepted {
                        contract_id: execute.contract_id,
                    }
                    .to_bytes()
                    .expect("encode"),
                );
                if mode == Provides::WrongCost {
                    let cosigned = contract.clone().expect("a contract before its run");
                    let terms = cosigned.decode_unverified().expect("decodes");
                    let output = b"hello from suanli\n".to_vec();
                    let usage = Usage {
                        fuel: 1_000,
                        output_bytes: output.len() as u64,
                        ..Usage::default()
                    };
                    let receipt = Receipt {
                        contract_id: execute.contract_id,
                        job_id: terms.job_id,
                        provider: key.node_id(),
                        requester: terms.requester,
                        outcome: Outcome::Succeeded {
                            exit_code: 0,
                            output_hash: Hash32::of(&output),
                            output_len: output.len() as u64,
                        },
                        usage,
                        // The prices are zero: this bills what was never agreed.
                        cost: Credits(5_000_000),
                        finished_at_ms: now_ms(),
                    };
                    let receipt = Signed::sign(&receipt, &key).expect("sign");
                    let settlement = Settlement {
                        contract_id: execute.contract_id,
                        receipt: receipt.digest(),
                        provider: key.node_id(),
                        requester: terms.requester,
                        cost: Credits(5_000_000),
                        settled_at_ms: now_ms(),
                    };
                    let delivery = Delivery {
                        receipt,
                        settlement: Signed::sign(&settlement, &key).expect("sign"),
                        output,
                    };
                    let answer = ask(adversary, &MarketRequest::Deliver(delivery)).await;
                    let MarketResponse::Reconciled(docs) = answer else {
                        panic!("a delivery is answered with the requester's decision: {answer:?}");
                    };
                    return (Some(*docs), held);
                }
            }
            MarketRequest::Reconcile(docs) => {
                // The requester ended the contract alone and says how; this provider records the
                // same end (a real one would sign its own failure record). A word on an earlier
                // job's contract is answered the same way and is not this job's end.
                let ours = contract
                    .as_ref()
                    .is_some_and(|ours| ours.digest() == docs.contract.digest());
                let answer = ContractDocs {
                    contract: docs.contract.clone(),
                    receipt: None,
                    settlement: None,
                    failure: None,
                };
                inbound.answer(
                    MarketResponse::Reconciled(Box::new(answer))
                        .to_bytes()
                        .expect("encode"),
                );
                if ours {
                    return (Some(*docs), held);
                }
            }
            MarketRequest::Deliver(_) => panic!("a requester never delivers"),
        }
    }
}

/// The victim as a requester, with short contract deadlines; the honest node as the fallback
/// provider; the adversary as the cheapest provider in the victim's view.
async fn requester_with_a_hostile_provider() -> (TestNode, TestNode, Adversary) {
    let mut config = test_config(&[]);
    config.jobs.deadline_grace_secs = 1;
    let victim = TestNode::start_with(tempfile::tempdir().expect("dir"), config).await;
    let honest = TestNode::start(&[victim.tcp_addr()]).await;
    wait_until("both nodes see each other", CONVERGE, || {
        victim.mesh_size() == 2 && honest.mesh_size() == 2
    })
    .await;
    let key = Keypair::generate().expect("key");
    let adversary = Adversary::connect(key.clone(), victim.tcp_addr()).await;
    let mut seq = 1;
    while victim.handle.mesh.get(&key.node_id()).is_none() {
        // Gossip may not carry the first publication (no mesh yet): publish until it arrives.
        let _ = adversary.publish(cheapest_advert(&key, seq)).await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (victim, honest, adversary)
}

/// A job the victim places on anyone but itself, done within a few seconds.
fn short_remote_job() -> suanli_node::market::Submission {
    let mut job = wat_job(HELLO);
    job.placement.exclude_self = true;
    job.limits.wall_time_ms = 2_000;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_provider_is_refused_and_the_requester_fails_over() {
    with_timeout(async {
        let (victim, honest, adversary) = requester_with_a_hostile_provider().await;
        let hostile = adversary.key.node_id();
        let honest_id = honest.handle.node_id;
        let mut expected: Vec<&str> = Vec::new();

        // In this order: the last one's signed misbehaviour makes the provider distrusted.
        for mode in [
            Provides::ForgedOffer,
            Provides::NoDelivery,
            Provides::Silence,
            Provides::WrongCost,
        ] {
            let before = ledger_state(&victim);
            let job_id = victim.submit(short_remote_job()).await;
            let ((docs, held), record) = tokio::join!(provide(&adversary, mode), async {
                victim.wait_job(&job_id, JOB).await
            });
            drop(held);
            // The job failed over to the honest provider and succeeded there.
            assert_eq!(record.state, JobState::Succeeded, "{mode:?}: {record:?}");
            assert_eq!(record.provider, Some(honest_id), "{mode:?}");
            let first = record.attempts.first().expect("attempts");
            assert_eq!(first.provider, hostile, "{mode:?}: {record:?}");
            let (outcome, added): (AttemptOutcome, &[&str]) = match mode {
                Provides::ForgedOffer => (AttemptOutcome::Rejected, &[]),
                Provides::Silence => (AttemptOutcome::Unreachable, &[]),
                Provides::NoDelivery => (AttemptOutcome::DeadlineMissed, &["contract", "failure"]),
                Provides::WrongCost => (
                    AttemptOutcome::Rejected,
                    &["contract", "misbehaviour", "failure"],
                ),
            };
            assert_eq!(first.outcome, outcome, "{mode:?}: {first:?}");
            expected.extend(added);
            let mut with_hostile = kinds_with(&victim, hostile);
            with_hostile.sort_unstable();
            let mut wanted = expected.clone();
            wanted.sort_unstable();
            assert_eq!(with_hostile, wanted, "{mode:?}");
            // Never a settlement with the hostile provider.
            assert!(!with_hostile.contains(&"settlement"), "{mode:?}");
            // Both sides end the contract alike: the requester tells the provider its own
            // failure record, with the protocol's reason.
            if let Some(docs) = docs {
                assert!(docs.settlement.is_none(), "{mode:?}");
                let failure = docs
                    .failure
                    .expect("the requester's failure record")
                    .verify()
                    .expect("signed by the requester");
                assert_eq!(failure.recorder, victim.handle.node_id);
                let reason = match mode {
                    Provides::NoDelivery => AttemptFailure::DeadlineMissed,
                    _ => AttemptFailure::Misbehaved,
                };
                assert_eq!(failure.failure, reason, "{mode:?}");
            }
            // Besides, only the honest contract, receipt and settlement.
            assert_eq!(ledger_state(&victim), before + added.len() + 3, "{mode:?}");
        }
        // The victim's own ledger now shows the provider's misbehaviour: it is distrusted, and
        // the next job goes to the honest provider without asking it.
        wait_until("the hostile provider is distrusted", CONVERGE, || {
            victim.handle.market.reputation().distrusted(&hostile)
        })
        .await;
        let job_id = victim.submit(short_remote_job()).await;
        let record = victim.wait_job(&job_id, JOB).await;
        assert_eq!(record.state, JobState::Succeeded, "{record:?}");
        assert!(
            record
                .attempts
                .iter()
                .all(|attempt| attempt.provider == honest_id),
            "{record:?}"
        );
        wait_until("no contract driver is left", CONVERGE, || {
            victim.handle.market.stats().contracts_driven == 0
        })
        .await;
        victim.stop().await;
        honest.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_about_contracts_never_made_leave_nothing_behind() {
    with_timeout(async {
        let (victim, honest) = victim_and_honest().await;
        let attacker = Keypair::generate().expect("key");
        let adversary = Adversary::connect(attacker.clone(), victim.tcp_addr()).await;
        let before = ledger_state(&victim);
        let quote = quote_for(&attacker);
        // Bursts of requests about contracts that do not exist, several at once per contract:
        // each is answered, and none may leave a route to a driver behind (the registry would
        // grow with every contract id an attacker makes up).
        for round in 0..UNKNOWN_CONTRACTS {
            let id = ContractId(Hash32::of(format!("made up {round}").as_bytes()));
            let execute = MarketRequest::Execute(ExecuteRequest {
                contract_id: id,
                spec: quote.spec.clone(),
                module: HELLO.as_bytes().to_vec(),
                stdin: Vec::new(),
            });
            let answers = futures::future::join_all((0..BURST).map(|_| ask(&adversary, &execute)));
            for answer in answers.await {
                assert!(matches!(answer, MarketResponse::Error(_)), "{answer:?}");
            }
        }
        wait_until("no route to a contract driver is left", CONVERGE, || {
            victim.handle.market.stats().contracts_driven == 0
        })
        .await;
        assert!(!is_banned(&adversary).await, "asking is not a strike");
        assert_eq!(ledger_state(&victim), before);
        honest_job_runs_on(&victim, &honest).await;
        victim.stop().await;
        honest.stop().await;
    })
    .await;
}
