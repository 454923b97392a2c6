//! The protocol crate as a second crate sees it: the requester's and the provider's contract
//! machines exchanging encoded wire messages, from the quote to the settlement on both sides.

use std::collections::VecDeque;

use suanli_protocol::engine::provider::{self, Policy, Provider};
use suanli_protocol::engine::requester::{self, JobTerms, Requester};
use suanli_protocol::engine::{
    AttemptEnd, Context, Effect, Outbound, RequestKind, RunReport, Status,
};
use suanli_protocol::ledger::EntryBody;
use suanli_protocol::wire::{ExecuteRequest, MarketRequest, MarketResponse, WireMessage};
use suanli_protocol::*;

fn over_the_wire<T: WireMessage>(message: &T) -> T {
    T::from_bytes(&message.to_bytes().expect("encode")).expect("decode")
}

/// What travels between the two sides in this test.
enum Message {
    /// A request from the requester (`true`) or the provider (`false`), to answer.
    Request(bool, MarketRequest),
    /// An answer to the requester (`true`) or the provider (`false`).
    Answer(bool, RequestKind, MarketResponse),
}

#[test]
fn a_contract_through_wire_messages() {
    let requester_key = Keypair::generate().expect("key");
    let provider_key = Keypair::generate().expect("key");
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
            tasks: 1,
        },
        max_price: Credits(1_000),
        placement: Placement::default(),
        replicas: 1,
    };
    spec.validate().expect("valid spec");
    let terms = JobTerms {
        job_id: spec.job_id(42).expect("job id"),
        spec: spec.clone(),
        nonce: 42,
        deadline_grace_ms: 30_000,
    };
    let price = PriceTerms::fuel(Credits(10), Credits(20));
    let (requester_ctx, provider_ctx) = (
        Context {
            keypair: &requester_key,
            now_ms: now,
        },
        Context {
            keypair: &provider_key,
            now_ms: now + 5,
        },
    );
    let (mut requester, effects) =
        Requester::start(&requester_ctx, terms, provider_key.node_id(), 1);
    let mut provider: Option<Provider> = None;
    let mut requester_ledger: Vec<EntryBody> = Vec::new();
    let mut provider_ledger: Vec<EntryBody> = Vec::new();
    let mut wire: VecDeque<Message> = VecDeque::new();
    let mut end = None;
    let mut offered = None;

    // Performs a side's effects: appends are durable at once; sends and answers go on the wire.
    fn perform(
        effects: Vec<Effect>,
        from_requester: bool,
        ledger: &mut Vec<EntryBody>,
        wire: &mut VecDeque<Message>,
        answering: Option<RequestKind>,
        end: &mut Option<AttemptEnd>,
        runs: &mut Vec<suanli_protocol::engine::RunOrder>,
    ) -> bool {
        let mut durable = false;
        for effect in effects {
            match effect {
                Effect::Send(Outbound::Request(request)) => {
                    wire.push_back(Message::Request(from_requester, over_the_wire(&request)));
                }
                Effect::Send(Outbound::Execute(contract_id)) => {
                    wire.push_back(Message::Request(
                        true,
                        MarketRequest::Execute(ExecuteRequest {
                            contract_id,
                            spec: Vec::new(), // filled in below
                            module: Vec::new(),
                            stdin: Vec::new(),
                        }),
                    ));
                }
                Effect::Respond(response) => {
                    let kind = answering.expect("an answer to a request");
                    wire.push_back(Message::Answer(
                        !from_requester,
                        kind,
                        over_the_wire(&response),
                    ));
                }
                Effect::Append(append) => {
                    ledger.extend(append.entries.into_iter().map(|entry| entry.into_body()));
                    durable = true;
                }
                Effect::Run(order) => runs.push(order),
                Effect::Finished(finished) => *end = Some(finished),
                Effect::Penalize(reason) | Effect::Fault(reason) => panic!("{reason}"),
                Effect::StopRun => {}
            }
        }
        durable
    }

    let mut runs = Vec::new();
    let mut answering_now = None;
    let mut pending = Some((true, effects));
    while pending.is_some() || !wire.is_empty() {
        if let Some((side, effects)) = pending.take() {
            let durable = if side {
                perform(
                    effects,
                    true,
                    &mut requester_ledger,
                    &mut wire,
                    answering_now,
                    &mut end,
                    &mut runs,
                )
            } else {
                perform(
                    effects,
                    false,
                    &mut provider_ledger,
                    &mut wire,
                    answering_now,
                    &mut end,
                    &mut runs,
                )
            };
            if durable {
                let effects = if side {
                    requester.handle(&requester_ctx, requester::Input::Durable)
                } else {
                    provider
                        .as_mut()
                        .expect("provider machine")
                        .handle(&provider_ctx, provider::Input::Durable)
                };
                pending = Some((side, effects));
                continue;
            }
            answering_now = None;
            if let Some(order) = runs.pop() {
                // The provider "runs" the job: a clean exit printing "42".
                let output = b"42\n".to_vec();
                let report = RunReport {
                    outcome: Outcome::Succeeded {
                        exit_code: 0,
                        output_hash: Hash32::of(&output),
                        output_len: output.len() as u64,
                    },
                    usage: Usage {
                        fuel: 1_234_567,
                        wall_time_ms: 3,
                        memory_bytes: 65_536,
                        output_bytes: output.len() as u64,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        cluster: None,
                    },
                    output,
                };
                assert_eq!(order.module, module);
                let machine = provider.as_mut().expect("provider machine");
                pending = Some((
                    false,
                    machine.handle(&provider_ctx, provider::Input::RunFinished(report)),
                ));
            }
            continue;
        }
        match wire.pop_front().expect("a message") {
            Message::Request(true, MarketRequest::Quote(quote)) => {
                // The provider's policy: an offer on its price.
                let spec = quote.decode_spec().expect("valid quote");
                let offer = Offer {
                    provider: provider_key.node_id(),
                    requester: quote.requester,
                    job_id: quote.job_id,
                    price,
                    max_cost: price.max_cost(&spec.limits).expect("cost"),
                    valid_until_ms: now + 5_000,
                    reservation: 1,
                };
                let offer = Signed::sign(&offer, &provider_key).expect("sign");
                offered = Some((quote, offer.clone()));
                wire.push_back(Message::Answer(
                    true,
                    RequestKind::Quote,
                    over_the_wire(&MarketResponse::Offer(offer)),
                ));
            }
            Message::Request(true, MarketRequest::Propose(proposal)) => {
                let (quote, offer) = offered.take().expect("an offer");
                let policy = Policy {
                    max_deadline_slack_ms: 600_000,
                };
                let (machine, effects) = Provider::propose(
                    &provider_ctx,
                    requester_key.node_id(),
                    &quote,
                    &offer,
                    proposal,
                    policy,
                );
                provider = Some(machine.expect("the proposal checks out"));
                answering_now = Some(RequestKind::Propose);
                pending = Some((false, effects));
            }
            Message::Request(true, MarketRequest::Execute(mut execute)) => {
                execute.spec = spec.encode().expect("spec");
                execute.module = module.clone();
                let request = over_the_wire(&MarketRequest::Execute(execute));
                let effects = provider.as_mut().expect("provider machine").handle(
                    &provider_ctx,
                    provider::Input::Inbound {
                        from: requester_key.node_id(),
                        request,
                    },
                );
                answering_now = Some(RequestKind::Execute);
                pending = Some((false, effects));
            }
            Message::Request(false, request) => {
                let kind = RequestKind::of(&request);
                let effects = requester.handle(
                    &requester_ctx,
                    requester::Input::Inbound {
                        from: provider_key.node_id(),
                        request,
                    },
                );
                answering_now = Some(kind);
                pending = Some((true, effects));
            }
            Message::Request(true, other) => panic!("unexpected request {other:?}"),
            Message::Answer(true, kind, answer) => {
                let effects = requester.handle(
                    &requester_ctx,
                    requester::Input::Answer {
                        to: kind,
                        answer: Ok(answer),
                    },
                );
                pending = Some((true, effects));
            }
            Message::Answer(false, kind, answer) => {
                let effects = provider.as_mut().expect("provider machine").handle(
                    &provider_ctx,
                    provider::Input::Answer {
                        to: kind,
                        answer: Ok(answer),
                    },
                );
                pending = Some((false, effects));
            }
        }
    }

    let Some(AttemptEnd::Settled {
        receipt, output, ..
    }) = end
    else {
        panic!("not settled: {end:?}")
    };
    assert_eq!(output, b"42\n");
    // 10 + ceil(1_234_567 * 20 / 1e6) = 10 + 25
    assert_eq!(receipt.cost, Credits(35));
    let kinds = |ledger: &[EntryBody]| ledger.iter().map(EntryBody::kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(&requester_ledger),
        ["contract", "receipt", "settlement"]
    );
    assert_eq!(
        kinds(&provider_ledger),
        ["contract", "receipt", "settlement"]
    );
    assert_eq!(
        requester_ledger, provider_ledger,
        "both ledgers hold the same documents"
    );
    assert!(requester.is_ended());
    let provider = provider.expect("provider machine");
    assert!(provider.is_ended());
    assert_eq!(
        provider.held().map(|held| held.status()),
        Some(Status::Settled)
    );
}
