use super::*;
use crate::advert::tests::NOW;
use crate::fixtures::*;
use crate::negotiation::{Decline, DeclineCode};

fn decline() -> Signed<Decline> {
    Signed::sign(
        &Decline {
            provider: provider().node_id(),
            requester: requester().node_id(),
            job_id: contract().job_id,
            contract_id: Some(contract_id()),
            code: DeclineCode::Busy,
            message: "all slots taken".into(),
            declined_at_ms: NOW,
        },
        &provider(),
    )
    .unwrap()
}

/// Drives a fresh contract into `state` through valid events.
fn lifecycle_in(state: ContractState) -> ContractLifecycle {
    use ContractState as S;
    let mut lifecycle = ContractLifecycle::propose(proposal()).unwrap();
    let (contract, receipt, settlement, decline) = (
        cosigned_contract(),
        signed_receipt(),
        cosigned_settlement(),
        decline(),
    );
    let path: Vec<ContractEvent<'_>> = match state {
        S::Proposed => vec![],
        S::Signed => vec![ContractEvent::Countersigned(&contract)],
        S::Running => vec![
            ContractEvent::Countersigned(&contract),
            ContractEvent::Started,
        ],
        S::Delivered => vec![
            ContractEvent::Countersigned(&contract),
            ContractEvent::Started,
            ContractEvent::Delivered(&receipt),
        ],
        S::Settled => vec![
            ContractEvent::Countersigned(&contract),
            ContractEvent::Started,
            ContractEvent::Delivered(&receipt),
            ContractEvent::Settled(&settlement),
        ],
        S::Declined => vec![ContractEvent::Declined(&decline)],
        S::Expired => vec![ContractEvent::Expire { now_ms: u64::MAX }],
        S::Failed => vec![
            ContractEvent::Countersigned(&contract),
            ContractEvent::Failed,
        ],
        S::Cancelled => vec![ContractEvent::Cancelled],
    };
    for event in path {
        lifecycle.apply(event).unwrap();
    }
    assert_eq!(lifecycle.state(), state);
    lifecycle
}

#[test]
fn transition_table() {
    use ContractState as S;
    let (contract, receipt, settlement, decline) = (
        cosigned_contract(),
        signed_receipt(),
        cosigned_settlement(),
        decline(),
    );
    let events = [
        ContractEvent::Countersigned(&contract),
        ContractEvent::Declined(&decline),
        ContractEvent::Started,
        ContractEvent::Delivered(&receipt),
        ContractEvent::Settled(&settlement),
        ContractEvent::Failed,
        ContractEvent::Cancelled,
        ContractEvent::Expire { now_ms: u64::MAX },
    ];
    // (state, event) -> next state, for every allowed pair; everything else must be refused.
    let allowed = |state: S, event: &str| -> Option<S> {
        match (state, event) {
            (S::Proposed, "countersigned") => Some(S::Signed),
            (S::Proposed, "declined") => Some(S::Declined),
            (S::Signed, "started") => Some(S::Running),
            (S::Signed | S::Running, "delivered") => Some(S::Delivered),
            (S::Delivered, "settled") => Some(S::Settled),
            (S::Signed | S::Running, "failed") => Some(S::Failed),
            (S::Proposed | S::Signed | S::Running, "cancelled") => Some(S::Cancelled),
            (S::Proposed | S::Signed | S::Running, "expire") => Some(S::Expired),
            _ => None,
        }
    };
    let mut checked = 0;
    for state in ContractState::ALL {
        for event in events {
            let mut lifecycle = lifecycle_in(state);
            let result = lifecycle.apply(event);
            match allowed(state, event.name()) {
                Some(next) => {
                    assert_eq!(result, Ok(next), "{state} + {}", event.name());
                    assert_eq!(lifecycle.state(), next);
                }
                None => {
                    assert_eq!(
                        result,
                        Err(LifecycleError::InvalidTransition {
                            state,
                            event: event.name()
                        }),
                        "{state} + {} must be refused",
                        event.name()
                    );
                    assert_eq!(lifecycle.state(), state, "a refused event changes nothing");
                }
            }
            checked += 1;
        }
        assert_eq!(
            state.is_terminal(),
            events.iter().all(|e| allowed(state, e.name()).is_none())
        );
    }
    assert_eq!(checked, 72);
}

#[test]
fn expiry_needs_the_deadline_to_pass() {
    let mut lifecycle = lifecycle_in(ContractState::Running);
    let deadline = contract().deadline_ms;
    assert_eq!(
        lifecycle.apply(ContractEvent::Expire { now_ms: deadline }),
        Err(LifecycleError::NotExpired)
    );
    assert_eq!(
        lifecycle.apply(ContractEvent::Expire {
            now_ms: deadline + 1
        }),
        Ok(ContractState::Expired)
    );
}

#[test]
fn countersignature_must_cover_the_same_contract() {
    let mut other = contract();
    other.nonce += 1;
    let other = CoSigned::countersign(Signed::sign(&other, &requester()).unwrap(), &provider())
        .unwrap()
        .0;
    let mut lifecycle = lifecycle_in(ContractState::Proposed);
    assert!(matches!(
        lifecycle.apply(ContractEvent::Countersigned(&other)),
        Err(LifecycleError::Mismatch { field: "bytes", .. })
    ));
    assert_eq!(lifecycle.state(), ContractState::Proposed);
}

#[test]
fn decline_from_someone_else_is_refused() {
    let forged = Signed::sign(
        &Decline {
            provider: stranger().node_id(),
            requester: requester().node_id(),
            job_id: contract().job_id,
            contract_id: Some(contract_id()),
            code: DeclineCode::Other,
            message: String::new(),
            declined_at_ms: NOW,
        },
        &stranger(),
    )
    .unwrap();
    let mut lifecycle = lifecycle_in(ContractState::Proposed);
    assert!(matches!(
        lifecycle.apply(ContractEvent::Declined(&forged)),
        Err(LifecycleError::Mismatch {
            field: "provider",
            ..
        })
    ));
}

#[test]
fn decline_must_name_this_contract() {
    // A decline of the quote (no contract) or of another contract of the same job cannot be
    // replayed to decline this one.
    let other_contract = {
        let mut other = contract();
        other.nonce += 1;
        ContractId(Signed::sign(&other, &requester()).unwrap().digest())
    };
    for contract_id in [None, Some(other_contract)] {
        let replayed = Signed::sign(
            &Decline {
                contract_id,
                ..decline().verify().unwrap()
            },
            &provider(),
        )
        .unwrap();
        let mut lifecycle = lifecycle_in(ContractState::Proposed);
        assert_eq!(
            lifecycle.apply(ContractEvent::Declined(&replayed)),
            Err(LifecycleError::Mismatch {
                document: "decline",
                field: "contract_id",
            })
        );
        assert_eq!(lifecycle.state(), ContractState::Proposed);
    }
    assert_eq!(
        lifecycle_in(ContractState::Proposed).apply(ContractEvent::Declined(&decline())),
        Ok(ContractState::Declined)
    );
}

fn deliver(
    receipt: Receipt,
    key: &crate::identity::Keypair,
) -> Result<ContractState, LifecycleError> {
    let signed = Signed::sign(&receipt, key).unwrap();
    lifecycle_in(ContractState::Running).apply(ContractEvent::Delivered(&signed))
}

type ReceiptCase = (fn(&mut Receipt), LifecycleError);

#[test]
fn receipts_that_break_the_contract_are_refused() {
    let cases: Vec<ReceiptCase> = vec![
        (
            |r| r.contract_id = ContractId(Hash32::of(b"other")),
            LifecycleError::Mismatch {
                document: "receipt",
                field: "contract_id",
            },
        ),
        (
            |r| r.job_id = crate::job::JobId(Hash32::of(b"other")),
            LifecycleError::Mismatch {
                document: "receipt",
                field: "job_id",
            },
        ),
        (
            |r| r.requester = stranger().node_id(),
            LifecycleError::Mismatch {
                document: "receipt",
                field: "requester",
            },
        ),
        (
            |r| {
                r.usage.fuel = contract().limits.fuel + 1;
                r.cost = price().cost(&r.usage).unwrap();
            },
            LifecycleError::UsageBeyondLimits("fuel"),
        ),
        (
            |r| r.usage.memory_bytes = contract().limits.memory_bytes + 1,
            LifecycleError::UsageBeyondLimits("memory_bytes"),
        ),
        (
            |r| r.usage.output_bytes = contract().limits.output_bytes + 1,
            LifecycleError::UsageBeyondLimits("output_bytes"),
        ),
        (
            |r| {
                r.usage.wall_time_ms =
                    contract().limits.wall_time_ms + crate::negotiation::WALL_TIME_GRACE_MS + 1
            },
            LifecycleError::UsageBeyondLimits("wall_time_ms"),
        ),
        (
            |r| r.usage.output_bytes = 4,
            LifecycleError::Mismatch {
                document: "receipt",
                field: "output_len",
            },
        ),
        (
            |r| r.cost = Credits(r.cost.0 + 1),
            LifecycleError::WrongCost {
                claimed: Credits(106),
                expected: Credits(105),
            },
        ),
    ];
    for (mutate, expected) in cases {
        let mut receipt = receipt();
        mutate(&mut receipt);
        assert_eq!(deliver(receipt, &provider()), Err(expected));
    }
    assert_eq!(
        deliver(receipt(), &provider()),
        Ok(ContractState::Delivered)
    );
}

#[test]
fn wall_time_within_the_grace_is_accepted() {
    let mut receipt = receipt();
    receipt.usage.wall_time_ms =
        contract().limits.wall_time_ms + crate::negotiation::WALL_TIME_GRACE_MS;
    assert_eq!(deliver(receipt, &provider()), Ok(ContractState::Delivered));
}

#[test]
fn cost_above_max_cost_is_reported_as_such() {
    // The requester signed a contract whose max_cost is below what the terms allow for its
    // limits; a receipt whose cost follows the terms exactly is still refused, as above the max.
    let mut low = contract();
    low.max_cost = Credits(104);
    let proposal = Signed::sign(&low, &requester()).unwrap();
    let cosigned = CoSigned::countersign(proposal.clone(), &provider())
        .unwrap()
        .0;
    let mut lifecycle = ContractLifecycle::signed(&cosigned).unwrap();
    let receipt = Receipt {
        contract_id: lifecycle.id(),
        ..receipt()
    };
    assert_eq!(receipt.cost, Credits(105));
    assert_eq!(price().cost(&receipt.usage), Ok(Credits(105)));
    let signed = Signed::sign(&receipt, &provider()).unwrap();
    assert_eq!(
        lifecycle.apply(ContractEvent::Delivered(&signed)),
        Err(LifecycleError::CostAboveMax {
            cost: Credits(105),
            max: Credits(104),
        })
    );
    assert_eq!(lifecycle.state(), ContractState::Signed);
}

#[test]
fn receipt_signed_by_the_requester_is_refused() {
    // The requester cannot forge the provider's receipt: it names the provider as signer.
    let signed: Signed<Receipt> = {
        let bytes = crate::codec::encode(&receipt()).unwrap();
        let encoded = crate::codec::encode(&(
            serde_bytes::ByteBuf::from(bytes.clone()),
            requester().node_id(),
            serde_bytes::ByteBuf::from(
                requester()
                    .sign_raw(&crate::signed::signing_message("receipt", &bytes))
                    .to_bytes()
                    .to_vec(),
            ),
        ))
        .unwrap();
        crate::codec::decode(&encoded, 8192).unwrap()
    };
    let mut lifecycle = lifecycle_in(ContractState::Running);
    assert!(matches!(
        lifecycle.apply(ContractEvent::Delivered(&signed)),
        Err(LifecycleError::Verify(VerifyError::WrongSigner { .. }))
    ));
}

type SettlementCase = (fn(&mut Settlement), &'static str);

#[test]
fn settlements_must_match_the_receipt() {
    let cases: Vec<SettlementCase> = vec![
        (|s| s.receipt = Hash32::of(b"other receipt"), "receipt"),
        (|s| s.cost = Credits(s.cost.0 - 1), "cost"),
        (
            |s| s.contract_id = ContractId(Hash32::of(b"x")),
            "contract_id",
        ),
    ];
    for (mutate, field) in cases {
        let mut settlement = settlement();
        mutate(&mut settlement);
        let cosigned = CoSigned::countersign(
            Signed::sign(&settlement, &provider()).unwrap(),
            &requester(),
        )
        .unwrap()
        .0;
        let mut lifecycle = lifecycle_in(ContractState::Delivered);
        assert_eq!(
            lifecycle.apply(ContractEvent::Settled(&cosigned)),
            Err(LifecycleError::Mismatch {
                document: "settlement",
                field
            })
        );
        assert_eq!(lifecycle.state(), ContractState::Delivered);
    }
}

#[test]
fn failed_runs_are_settled_too() {
    let mut receipt = receipt();
    receipt.outcome = Outcome::Failed {
        reason: crate::negotiation::FailureReason::FuelExhausted,
        message: "all fuel consumed".into(),
    };
    receipt.usage.fuel = contract().limits.fuel;
    receipt.usage.output_bytes = 0;
    receipt.cost = price().cost(&receipt.usage).unwrap();
    assert_eq!(deliver(receipt, &provider()), Ok(ContractState::Delivered));
}

#[test]
fn failure_claims_are_checked_against_the_limits() {
    // Claiming to have run out of fuel without using all of it, or to have timed out before the
    // time limit, would let a provider bill without running the job.
    let mut fuel = receipt();
    fuel.outcome = Outcome::Failed {
        reason: crate::negotiation::FailureReason::FuelExhausted,
        message: String::new(),
    };
    fuel.usage.output_bytes = 0;
    fuel.usage.fuel = contract().limits.fuel - 1;
    fuel.cost = price().cost(&fuel.usage).unwrap();
    assert_eq!(
        deliver(fuel, &provider()),
        Err(LifecycleError::Mismatch {
            document: "receipt",
            field: "fuel"
        })
    );
    let mut timeout = receipt();
    timeout.outcome = Outcome::Failed {
        reason: crate::negotiation::FailureReason::Timeout,
        message: String::new(),
    };
    timeout.usage.output_bytes = 0;
    timeout.usage.wall_time_ms = contract().limits.wall_time_ms - 1;
    timeout.cost = price().cost(&timeout.usage).unwrap();
    assert_eq!(
        deliver(timeout.clone(), &provider()),
        Err(LifecycleError::Mismatch {
            document: "receipt",
            field: "wall_time_ms"
        })
    );
    timeout.usage.wall_time_ms = contract().limits.wall_time_ms;
    assert_eq!(deliver(timeout, &provider()), Ok(ContractState::Delivered));
}
