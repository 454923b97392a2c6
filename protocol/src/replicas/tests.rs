use super::*;
use crate::fixtures;
use crate::identity::Keypair;
use crate::negotiation::{Contract, Receipt};

fn provider(n: u8) -> Keypair {
    Keypair::from_secret_bytes([0x40 + n; 32])
}

/// A run of the fixture job on provider `n` under its own contract (nonce `n`), whose output
/// is `output`.
fn run_with(n: u8, output: &[u8], edit: impl FnOnce(&mut Contract, &mut Receipt)) -> ReplicaRun {
    let key = provider(n);
    let mut contract = Contract {
        provider: key.node_id(),
        nonce: u64::from(n),
        ..fixtures::contract()
    };
    let mut receipt = fixtures::receipt();
    edit(&mut contract, &mut receipt);
    let proposal = Signed::sign(&contract, &fixtures::requester()).unwrap();
    let contract = CoSigned::countersign(proposal, &key).unwrap().0;
    receipt.contract_id = ContractId(contract.digest());
    receipt.provider = key.node_id();
    receipt.outcome = Outcome::Succeeded {
        exit_code: 0,
        output_hash: Hash32::of(output),
        output_len: output.len() as u64,
    };
    ReplicaRun {
        contract,
        receipt: Signed::sign(&receipt, &key).unwrap(),
    }
}

fn run(n: u8, output: &[u8]) -> ReplicaRun {
    run_with(n, output, |_, _| {})
}

fn evidence() -> ReplicaMismatch {
    ReplicaMismatch {
        odd: run(1, b"wrong"),
        majority: vec![run(2, b"right"), run(3, b"right")],
    }
}

fn vote(output: &[u8]) -> Vote {
    Vote {
        exit_code: 0,
        output_hash: Hash32::of(output),
    }
}

#[test]
fn a_strict_majority_of_the_replicas_asked_decides() {
    let (a, b) = (vote(b"a"), vote(b"b"));
    assert_eq!(majority(&[a, a, b], 3), Some(a));
    assert_eq!(majority(&[b, a, a], 3), Some(a));
    assert_eq!(majority(&[a, a, a], 3), Some(a));
    // Two of three ran and agree: still more than half of the three asked for.
    assert_eq!(majority(&[a, a], 3), Some(a));
    // One vote of three decides nothing, nor does a split.
    assert_eq!(majority(&[a], 3), None);
    assert_eq!(majority(&[a, b], 3), None);
    assert_eq!(majority(&[a, b], 2), None);
    assert_eq!(majority(&[a, a, b, b], 4), None);
    assert_eq!(majority(&[a, a, b, b, b], 5), Some(b));
    assert_eq!(majority(&[], 3), None);
    // An exit code is part of the vote.
    let exited = Vote { exit_code: 1, ..a };
    assert_eq!(majority(&[a, exited, exited], 3), Some(exited));
}

#[test]
fn a_failed_run_casts_no_vote() {
    let failed = Outcome::Failed {
        reason: crate::negotiation::FailureReason::Trap,
        message: "unreachable".into(),
    };
    assert_eq!(Vote::of(&failed), None);
    assert_eq!(Vote::of(&fixtures::receipt().outcome), Some(vote(b"hello")));
}

#[test]
fn honest_evidence_verifies_and_names_the_odd_provider() {
    let verified = evidence().verify().unwrap();
    assert_eq!(verified.offender, provider(1).node_id());
    assert_eq!(
        verified.majority,
        vec![provider(2).node_id(), provider(3).node_id()]
    );
    assert_eq!(verified.requester, fixtures::requester().node_id());
    assert_eq!(verified.job_hash, fixtures::contract().job_hash);
    assert_eq!(verified.odd_vote, vote(b"wrong"));
    assert_eq!(verified.majority_vote, vote(b"right"));
    // It survives its own encoding, and verifies again from the bytes alone.
    let bytes = evidence().encode().unwrap();
    assert!(bytes.len() <= MAX_MISMATCH_BYTES);
    assert_eq!(
        ReplicaMismatch::decode(&bytes).unwrap().verify().unwrap(),
        verified
    );
}

#[test]
fn a_forged_receipt_is_refused() {
    // The requester rewrites the odd provider's receipt to frame it: its signature no longer
    // matches.
    let mut forged = evidence();
    let honest = run(1, b"right");
    let mut bytes = codec::encode(&honest.receipt).unwrap();
    let wrong = Hash32::of(b"wrong");
    let right = Hash32::of(b"right");
    let at = bytes
        .windows(32)
        .position(|window| window == right.as_bytes())
        .unwrap();
    bytes[at..at + 32].copy_from_slice(wrong.as_bytes());
    forged.odd.receipt = codec::decode(&bytes, 64 * 1024).unwrap();
    assert!(matches!(
        forged.verify(),
        Err(MismatchError::Verify { run: 0, .. })
    ));

    // A receipt signed by someone else in the provider's name.
    let mut forged = evidence();
    let mut bytes = codec::encode(&forged.odd.receipt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    forged.odd.receipt = codec::decode(&bytes, 64 * 1024).unwrap();
    assert!(matches!(
        forged.verify(),
        Err(MismatchError::Verify { run: 0, .. })
    ));

    // A receipt the odd provider really signed, for another of its contracts.
    let mut forged = evidence();
    forged.odd.receipt = run_with(1, b"wrong", |contract, _| contract.nonce = 99).receipt;
    assert_eq!(
        forged.verify(),
        Err(MismatchError::ReceiptMismatch {
            run: 0,
            field: "contract_id"
        })
    );
}

#[test]
fn a_forged_contract_is_refused() {
    // A majority run whose contract the provider never countersigned.
    let mut forged = evidence();
    let mut bytes = codec::encode(&forged.majority[1].contract).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    forged.majority[1].contract = codec::decode(&bytes, 64 * 1024).unwrap();
    assert!(matches!(
        forged.verify(),
        Err(MismatchError::Verify { run: 2, .. })
    ));
}

#[test]
fn runs_of_different_jobs_prove_nothing() {
    let mut other = evidence();
    other.odd = run_with(1, b"wrong", |contract, receipt| {
        contract.job_hash = Hash32::of(b"another spec");
        receipt.job_id = contract.job_id;
    });
    assert_eq!(
        other.verify(),
        Err(MismatchError::OtherJob {
            run: 1,
            field: "job_hash"
        })
    );
    let mut other = evidence();
    other.majority[0] = run_with(2, b"right", |contract, _| {
        contract.stdin_hash = Hash32::of(b"other stdin");
    });
    assert_eq!(
        other.verify(),
        Err(MismatchError::OtherJob {
            run: 1,
            field: "stdin_hash"
        })
    );
}

#[test]
fn the_majority_must_be_distinct_providers_that_agree_against_a_different_result() {
    // One provider counted twice is no majority.
    let mut twice = evidence();
    twice.majority[1] = run_with(2, b"right", |contract, _| contract.nonce = 77);
    assert_eq!(
        twice.verify(),
        Err(MismatchError::SameProvider(provider(2).node_id()))
    );
    // The odd one is among the "majority".
    let mut itself = evidence();
    itself.majority[0] = run_with(1, b"right", |contract, _| contract.nonce = 78);
    assert_eq!(
        itself.verify(),
        Err(MismatchError::SameProvider(provider(1).node_id()))
    );
    let mut split = evidence();
    split.majority[1] = run(3, b"other");
    assert_eq!(split.verify(), Err(MismatchError::MajorityDisagrees));
    let mut agree = evidence();
    agree.odd = run(1, b"right");
    assert_eq!(agree.verify(), Err(MismatchError::NoMismatch));
    let mut alone = evidence();
    alone.majority.pop();
    assert_eq!(alone.verify(), Err(MismatchError::MajoritySize { got: 1 }));
    let mut failed = evidence();
    failed.odd = run_with(1, b"", |_, _| {});
    let failed_receipt = Receipt {
        outcome: Outcome::Failed {
            reason: crate::negotiation::FailureReason::Trap,
            message: "trap".into(),
        },
        ..failed.odd.receipt.decode_unverified().unwrap()
    };
    failed.odd.receipt = Signed::sign(&failed_receipt, &provider(1)).unwrap();
    assert_eq!(failed.verify(), Err(MismatchError::NoVote { run: 0 }));
}
