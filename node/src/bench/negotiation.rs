//! The `negotiation` scenario: quote → dual-signed, durable contract between two nodes.
//!
//! Node A (requester) and node B (provider) on loopback. The benchmark acts as A's market, with
//! A's own key and A's network handle: it sends B a quote request, checks B's signed offer,
//! signs the contract, sends the proposal, checks B's countersignature, and appends the
//! contract to A's ledger (durable). B runs its real provider code: it signs the offer,
//! verifies and countersigns the contract and makes it durable in its ledger before answering.
//! After each measured negotiation A ends the contract (not timed): it records its failure
//! (`Cancelled`) and tells B with `Reconcile`, so B ends it too and its slots free up.
//!
//! Floor: two libp2p round trips, the signatures a negotiation needs (offer and contract
//! signed, countersigned; each verified once by the other party: 3 signs, 3 verify_strict) on
//! one core, and two fsyncs (one durable append per party), from the `floor` scenario.

use std::time::{Duration, Instant};

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::negotiation::{AttemptFailure, FailureRecord};
use suanli_protocol::wire::{MarketRequest, MarketResponse};
use suanli_protocol::{
    CoSigned, Contract, ContractDocs, ContractId, Credits, ExecutorKind, Hash32, JobSpec, Keypair,
    Limits, NodeId, Placement, QuoteRequest, Signed,
};

use super::nodes::{BenchNode, start_star, stop_all};
use super::{BenchError, Context, Figure, Samples, ms};
use crate::clock::now_ms;

const SCENARIO: &str = "negotiation";

fn fail(error: impl std::fmt::Display) -> BenchError {
    BenchError::scenario(SCENARIO, error)
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let floors = context.floors().await?;
    let count = context.options.pick(100, 500);
    let nodes = start_star(&context.workspace, 2).await?;
    let result = match (nodes.first(), nodes.get(1)) {
        (Some(a), Some(b)) => measure(a, b.handle.node_id, count).await,
        _ => Err(fail("two nodes did not start")),
    };
    stop_all(nodes).await;
    let samples = result?;
    let floor = ms(floors.round_trip_p50 * 2)
        + 3.0 * 1e3 / floors.sign_per_sec
        + 3.0 * 1e3 / floors.verify_strict_per_sec
        + 2.0 * ms(floors.fsync_p50);
    let floor_metric = "2 round trips + 3 signs + 3 verify_strict + 2 fsyncs";
    Ok(vec![
        Figure::against(
            SCENARIO,
            "quote → dual-signed durable contract p50",
            ms(samples.p50()),
            "ms",
            floor,
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "quote → dual-signed durable contract p99",
            ms(samples.percentile(0.99)),
            "ms",
            floor,
            floor_metric,
        ),
    ])
}

async fn measure(a: &BenchNode, provider: NodeId, count: usize) -> Result<Samples, BenchError> {
    let key = a.keypair()?;
    let spec = JobSpec {
        executor: ExecutorKind::Wasm,
        module_hash: Hash32::of(super::HELLO_WAT.as_bytes()),
        args: Vec::new(),
        env: Default::default(),
        stdin_hash: Hash32::of(b""),
        limits: Limits {
            fuel: 1_000_000,
            memory_bytes: 16 << 20,
            wall_time_ms: 5_000,
            output_bytes: 1 << 10,
            tasks: 1,
        },
        max_price: Credits(1_000_000_000),
        placement: Placement::default(),
        replicas: 1,
    };
    let mut samples = Vec::with_capacity(count);
    for round in 0..count + 10 {
        let started = Instant::now();
        let cosigned = negotiate(a, &key, provider, &spec, round as u128).await?;
        let elapsed = started.elapsed();
        if round >= 10 {
            samples.push(elapsed);
        }
        end_contract(a, &key, cosigned).await?;
    }
    Ok(Samples::new(samples))
}

/// Ends a contract as a requester that gives it up: its failure record appended, the provider
/// told with `Reconcile`.
async fn end_contract(
    a: &BenchNode,
    key: &Keypair,
    cosigned: CoSigned<Contract>,
) -> Result<(), BenchError> {
    let contract = cosigned.decode_unverified().map_err(fail)?;
    let record = FailureRecord {
        contract_id: ContractId(cosigned.digest()),
        job_id: contract.job_id,
        recorder: key.node_id(),
        counterparty: contract.provider,
        failure: AttemptFailure::Cancelled,
        message: "benchmark".into(),
        recorded_at_ms: now_ms(),
    };
    let failure = Signed::sign(&record, key).map_err(fail)?;
    a.handle
        .ledger
        .append(EntryBody::Failure(failure.clone()))
        .await
        .map_err(fail)?;
    let docs = ContractDocs {
        contract: cosigned,
        receipt: None,
        settlement: None,
        failure: Some(failure),
    };
    let request = MarketRequest::Reconcile(Box::new(docs));
    match a
        .handle
        .network
        .market_request(contract.provider, &request)
        .await
    {
        Ok(MarketResponse::Reconciled(theirs)) if theirs.failure.is_some() => Ok(()),
        other => Err(fail(format!("ending the contract: {other:?}"))),
    }
}

/// One negotiation as the requester's market does it; returns the dual-signed contract.
async fn negotiate(
    a: &BenchNode,
    key: &Keypair,
    provider: NodeId,
    spec: &JobSpec,
    nonce: u128,
) -> Result<CoSigned<Contract>, BenchError> {
    let me = key.node_id();
    let network = &a.handle.network;
    let quote = QuoteRequest::new(me, spec, nonce, now_ms()).map_err(fail)?;
    let job_id = quote.job_id;
    let offer = match network
        .market_request(provider, &MarketRequest::Quote(quote))
        .await
        .map_err(fail)?
    {
        MarketResponse::Offer(offer) => offer,
        other => return Err(fail(format!("quote answered {other:?}"))),
    };
    let offer_doc = offer.verify().map_err(fail)?;
    let now = now_ms();
    let contract = Contract {
        job_id,
        job_hash: spec.hash().map_err(fail)?,
        module_hash: spec.module_hash,
        stdin_hash: spec.stdin_hash,
        requester: me,
        provider,
        offer: offer.digest(),
        price: offer_doc.price,
        max_cost: offer_doc.max_cost,
        limits: spec.limits,
        deadline_ms: now + spec.limits.wall_time_ms + Duration::from_secs(30).as_millis() as u64,
        nonce: nonce as u64,
        created_at_ms: now,
    };
    let proposal = Signed::sign(&contract, key).map_err(fail)?;
    let contract_id = ContractId(proposal.digest());
    let cosigned = match network
        .market_request(provider, &MarketRequest::Propose(proposal))
        .await
        .map_err(fail)?
    {
        MarketResponse::Countersigned(cosigned) => cosigned,
        other => return Err(fail(format!("proposal answered {other:?}"))),
    };
    cosigned.verify().map_err(fail)?;
    if ContractId(cosigned.digest()) != contract_id {
        return Err(fail("the countersigned contract is another one"));
    }
    a.handle
        .ledger
        .append(EntryBody::Contract(cosigned.clone()))
        .await
        .map_err(fail)?;
    Ok(cosigned)
}
