//! The checks each party makes of the other's documents (moved here with the contract state
//! machine they used to live in).

use crate::advert::tests::NOW;
use crate::engine::checks::*;
use crate::fixtures::*;
use crate::hash::Hash32;
use crate::money::Credits;
use crate::negotiation::{
    AttemptFailure, ContractId, Decline, DeclineCode, FailureRecord, Outcome, Receipt, Settlement,
};
use crate::signed::{CoSigned, Signed, VerifyError};

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

fn check_decline_of_this_contract(decline: &Signed<Decline>) -> Result<Decline, CheckError> {
    check_decline(
        decline,
        provider().node_id(),
        requester().node_id(),
        contract().job_id,
        Some(contract_id()),
    )
}

#[test]
fn countersignature_must_cover_the_same_contract() {
    let mut other = contract();
    other.nonce += 1;
    let other = CoSigned::countersign(Signed::sign(&other, &requester()).unwrap(), &provider())
        .unwrap()
        .0;
    assert!(matches!(
        check_countersigned(&proposal(), &other),
        Err(CheckError::Mismatch { field: "bytes", .. })
    ));
    assert_eq!(
        check_countersigned(&proposal(), &cosigned_contract()),
        Ok(contract())
    );
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
    assert!(matches!(
        check_decline_of_this_contract(&forged),
        Err(CheckError::Mismatch {
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
        assert_eq!(
            check_decline_of_this_contract(&replayed),
            Err(CheckError::Mismatch {
                document: "decline",
                field: "contract_id",
            })
        );
    }
    assert!(check_decline_of_this_contract(&decline()).is_ok());
}

fn deliver(receipt: Receipt, key: &crate::identity::Keypair) -> Result<(), CheckError> {
    let signed = Signed::sign(&receipt, key).unwrap();
    check_receipt(&contract(), contract_id(), &signed).map(drop)
}

type ReceiptCase = (fn(&mut Receipt), CheckError);

#[test]
fn receipts_that_break_the_contract_are_refused() {
    let cases: Vec<ReceiptCase> = vec![
        (
            |r| r.contract_id = ContractId(Hash32::of(b"other")),
            CheckError::Mismatch {
                document: "receipt",
                field: "contract_id",
            },
        ),
        (
            |r| r.job_id = crate::job::JobId(Hash32::of(b"other")),
            CheckError::Mismatch {
                document: "receipt",
                field: "job_id",
            },
        ),
        (
            |r| r.requester = stranger().node_id(),
            CheckError::Mismatch {
                document: "receipt",
                field: "requester",
            },
        ),
        (
            |r| {
                r.usage.fuel = contract().limits.fuel + 1;
                r.cost = price().cost(&r.usage).unwrap();
            },
            CheckError::UsageBeyondLimits("fuel"),
        ),
        (
            |r| {
                r.usage.cluster = Some(crate::negotiation::ClusterUsage {
                    cpu_ms: contract().limits.max_cpu_ms() + 1,
                    ..Default::default()
                });
            },
            CheckError::UsageBeyondLimits("cpu_ms"),
        ),
        (
            |r| r.usage.memory_bytes = contract().limits.memory_bytes + 1,
            CheckError::UsageBeyondLimits("memory_bytes"),
        ),
        (
            |r| r.usage.output_bytes = contract().limits.output_bytes + 1,
            CheckError::UsageBeyondLimits("output_bytes"),
        ),
        (
            |r| {
                r.usage.wall_time_ms =
                    contract().limits.wall_time_ms + crate::negotiation::WALL_TIME_GRACE_MS + 1
            },
            CheckError::UsageBeyondLimits("wall_time_ms"),
        ),
        (
            |r| r.usage.output_bytes = 4,
            CheckError::Mismatch {
                document: "receipt",
                field: "output_len",
            },
        ),
        (
            |r| r.cost = Credits(r.cost.0 + 1),
            CheckError::WrongCost {
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
    assert_eq!(deliver(receipt(), &provider()), Ok(()));
}

#[test]
fn wall_time_within_the_grace_is_accepted() {
    let mut receipt = receipt();
    receipt.usage.wall_time_ms =
        contract().limits.wall_time_ms + crate::negotiation::WALL_TIME_GRACE_MS;
    assert_eq!(deliver(receipt, &provider()), Ok(()));
}

#[test]
fn cost_above_max_cost_is_reported_as_such() {
    // The requester signed a contract whose max_cost is below what the terms allow for its
    // limits; a receipt whose cost follows the terms exactly is still refused, as above the max.
    let mut low = contract();
    low.max_cost = Credits(104);
    let proposal = Signed::sign(&low, &requester()).unwrap();
    let cosigned = CoSigned::countersign(proposal, &provider()).unwrap().0;
    let id = ContractId(cosigned.digest());
    let receipt = Receipt {
        contract_id: id,
        ..receipt()
    };
    assert_eq!(receipt.cost, Credits(105));
    assert_eq!(price().cost(&receipt.usage), Ok(Credits(105)));
    let signed = Signed::sign(&receipt, &provider()).unwrap();
    assert_eq!(
        check_receipt(&low, id, &signed),
        Err(CheckError::CostAboveMax {
            cost: Credits(105),
            max: Credits(104),
        })
    );
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
    assert!(matches!(
        check_receipt(&contract(), contract_id(), &signed),
        Err(CheckError::Verify(VerifyError::WrongSigner { .. }))
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
        assert_eq!(
            check_settlement(&contract(), contract_id(), &signed_receipt(), &cosigned),
            Err(CheckError::Mismatch {
                document: "settlement",
                field
            })
        );
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
    assert_eq!(deliver(receipt, &provider()), Ok(()));
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
        Err(CheckError::Mismatch {
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
        Err(CheckError::Mismatch {
            document: "receipt",
            field: "wall_time_ms"
        })
    );
    timeout.usage.wall_time_ms = contract().limits.wall_time_ms;
    assert_eq!(deliver(timeout, &provider()), Ok(()));
}

#[test]
fn the_fixture_settlement_settles_the_fixture_receipt() {
    assert_eq!(
        check_settlement(
            &contract(),
            contract_id(),
            &signed_receipt(),
            &cosigned_settlement()
        ),
        Ok(settlement())
    );
}

#[test]
fn delivered_output_must_be_the_receipts() {
    let delivery = |output: &[u8]| crate::wire::Delivery {
        receipt: signed_receipt(),
        settlement: cosigned_settlement().first().clone(),
        output: output.to_vec(),
    };
    assert!(check_delivery(&contract(), contract_id(), &delivery(b"hello")).is_ok());
    assert_eq!(
        check_delivery(&contract(), contract_id(), &delivery(b"hellO")),
        Err(CheckError::Mismatch {
            document: "output",
            field: "hash"
        })
    );
}

#[test]
fn misbehaviour_kinds_follow_the_error() {
    use crate::negotiation::MisbehaviourKind as K;
    let cases = [
        (CheckError::UsageBeyondLimits("fuel"), K::UsageBeyondLimits),
        (
            CheckError::WrongCost {
                claimed: Credits(1),
                expected: Credits(2),
            },
            K::WrongCost,
        ),
        (
            CheckError::Mismatch {
                document: "receipt",
                field: "job_id",
            },
            K::ContractMismatch,
        ),
        (
            CheckError::Verify(VerifyError::BadSignature {
                kind: "receipt",
                signer: provider().node_id(),
            }),
            K::BadSignature,
        ),
    ];
    for (error, kind) in cases {
        assert_eq!(error.misbehaviour(), kind, "{error}");
    }
}

#[test]
fn a_failure_record_must_be_the_recorders_about_this_contract_and_job() {
    let record = FailureRecord {
        contract_id: contract_id(),
        job_id: contract().job_id,
        recorder: provider().node_id(),
        counterparty: requester().node_id(),
        failure: AttemptFailure::DeadlineMissed,
        message: "late".into(),
        recorded_at_ms: 1,
    };
    let check = |record: &FailureRecord, key: &crate::identity::Keypair| {
        let signed = Signed::sign(record, key).unwrap();
        check_failure(&signed, contract_id(), &contract(), provider().node_id())
    };
    assert!(check(&record, &provider()).is_ok());
    let other_job = FailureRecord {
        job_id: crate::JobId(Hash32::of(b"another job")),
        ..record.clone()
    };
    assert!(check(&other_job, &provider()).is_err());
    let wrong_party = FailureRecord {
        counterparty: stranger().node_id(),
        ..record.clone()
    };
    assert!(check(&wrong_party, &provider()).is_err());
    let other_contract = FailureRecord {
        contract_id: ContractId(Hash32::of(b"another contract")),
        ..record.clone()
    };
    assert!(check(&other_contract, &provider()).is_err());
    let by_requester = FailureRecord {
        recorder: requester().node_id(),
        counterparty: provider().node_id(),
        ..record
    };
    assert!(check(&by_requester, &requester()).is_err());
}
