//! The protocol crate as a second crate sees it: a full negotiation through encoded wire messages.

use suanli_protocol::lifecycle::{ContractEvent, ContractLifecycle, ContractState};
use suanli_protocol::wire::{Delivery, MarketRequest, MarketResponse, WireMessage};
use suanli_protocol::*;

fn over_the_wire<T: WireMessage>(message: &T) -> T {
    T::from_bytes(&message.to_bytes().expect("encode")).expect("decode")
}

#[test]
fn a_negotiation_through_wire_messages() {
    let requester = Keypair::generate().expect("key");
    let provider = Keypair::generate().expect("key");
    let now = 1_800_000_000_000;
    let module = b"(module)".to_vec();
    let spec = JobSpec {
        executor: ExecutorKind::Wasm,
        module_hash: Hash32::of(&module),
        args: vec![],
        env: Default::default(),
        stdin_hash: Hash32::of(b""),
        limits: Limits {
            fuel: 10_000_000,
            memory_bytes: 1 << 20,
            wall_time_ms: 1_000,
            output_bytes: 1 << 10,
        },
        max_price: Credits(1_000),
        placement: Placement::default(),
        replicas: 1,
    };
    spec.validate().expect("valid spec");
    let job_id = spec.job_id(42).expect("job id");
    let price = PriceTerms {
        base: Credits(10),
        per_million_fuel: Credits(20),
    };

    // Quote -> offer.
    let quote = QuoteRequest::new(requester.node_id(), &spec, 42, now).expect("quote");
    assert_eq!(quote.job_id, job_id);
    let MarketRequest::Quote(quote) = over_the_wire(&MarketRequest::Quote(quote)) else {
        panic!("not a quote")
    };
    // The provider decodes the raw spec bytes and checks the job id derived from them.
    let quoted_spec = quote.decode_spec().expect("valid quote");
    let offer = Offer {
        provider: provider.node_id(),
        requester: quote.requester,
        job_id: quote.job_id,
        price,
        max_cost: price.max_cost(&quoted_spec.limits).expect("cost"),
        valid_until_ms: now + 5_000,
        reservation: 1,
    };
    let MarketResponse::Offer(offer) = over_the_wire(&MarketResponse::Offer(
        Signed::sign(&offer, &provider).expect("sign"),
    )) else {
        panic!("not an offer")
    };
    let offer_doc = offer.verify().expect("valid offer");
    assert!(offer_doc.max_cost <= spec.max_price);

    // Contract, signed by the requester, countersigned by the provider.
    let contract = Contract {
        job_id,
        job_hash: spec.hash().expect("hash"),
        module_hash: spec.module_hash,
        stdin_hash: spec.stdin_hash,
        requester: requester.node_id(),
        provider: provider.node_id(),
        offer: offer.digest(),
        price: offer_doc.price,
        max_cost: offer_doc.max_cost,
        limits: spec.limits,
        deadline_ms: now + 60_000,
        nonce: 1,
        created_at_ms: now,
    };
    let proposal = Signed::sign(&contract, &requester).expect("sign");
    let mut requester_view = ContractLifecycle::propose(proposal.clone()).expect("propose");
    let MarketRequest::Propose(received) = over_the_wire(&MarketRequest::Propose(proposal)) else {
        panic!("not a proposal")
    };
    // The provider checks the proposal against the quote it priced and the offer it signed.
    let proposed = received.verify().expect("valid proposal");
    proposed.check_quote(&quote).expect("matches the quote");
    proposed.check_offer(&offer).expect("matches the offer");
    let (cosigned, _) = CoSigned::countersign(received, &provider).expect("countersign");
    let MarketResponse::Countersigned(cosigned) =
        over_the_wire(&MarketResponse::Countersigned(cosigned))
    else {
        panic!("not countersigned")
    };
    requester_view
        .apply(ContractEvent::Countersigned(&cosigned))
        .expect("signed");
    let mut provider_view = ContractLifecycle::signed(&cosigned).expect("provider view");
    requester_view
        .apply(ContractEvent::Started)
        .expect("started");
    provider_view
        .apply(ContractEvent::Started)
        .expect("started");

    // Delivery and settlement.
    let output = b"42\n".to_vec();
    let usage = Usage {
        fuel: 1_234_567,
        wall_time_ms: 3,
        memory_bytes: 65_536,
        output_bytes: output.len() as u64,
    };
    let receipt = Receipt {
        contract_id: provider_view.id(),
        job_id,
        provider: provider.node_id(),
        requester: requester.node_id(),
        outcome: Outcome::Succeeded {
            exit_code: 0,
            output_hash: Hash32::of(&output),
            output_len: output.len() as u64,
        },
        usage,
        cost: price.cost(&usage).expect("cost"),
        finished_at_ms: now + 10,
    };
    let receipt = Signed::sign(&receipt, &provider).expect("sign");
    let settlement = Settlement {
        contract_id: provider_view.id(),
        receipt: receipt.digest(),
        provider: provider.node_id(),
        requester: requester.node_id(),
        cost: price.cost(&usage).expect("cost"),
        settled_at_ms: now + 10,
    };
    let MarketRequest::Deliver(delivery) = over_the_wire(&MarketRequest::Deliver(Delivery {
        receipt: receipt.clone(),
        settlement: Signed::sign(&settlement, &provider).expect("sign"),
        output,
    })) else {
        panic!("not a delivery")
    };
    requester_view
        .apply(ContractEvent::Delivered(&delivery.receipt))
        .expect("delivered");
    let (settled, _) = CoSigned::countersign(delivery.settlement, &requester).expect("countersign");
    assert_eq!(
        requester_view.apply(ContractEvent::Settled(&settled)),
        Ok(ContractState::Settled)
    );
    provider_view
        .apply(ContractEvent::Delivered(&receipt))
        .expect("delivered");
    assert_eq!(
        provider_view.apply(ContractEvent::Settled(
            &over_the_wire(&MarketResponse::Settled(settled.clone())).into_settled()
        )),
        Ok(ContractState::Settled)
    );
    // 10 + ceil(1_234_567 * 20 / 1e6) = 10 + 25
    assert_eq!(settled.verify().expect("settlement").cost, Credits(35));
}

trait IntoSettled {
    fn into_settled(self) -> CoSigned<Settlement>;
}

impl IntoSettled for MarketResponse {
    fn into_settled(self) -> CoSigned<Settlement> {
        match self {
            MarketResponse::Settled(settled) => settled,
            other => panic!("not a settlement: {other:?}"),
        }
    }
}
