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
    assert_eq!(majority::<Vote>(&[], 3), None);
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

// Token requests.

fn greedy_request() -> GenerateRequest {
    GenerateRequest {
        model: "smollm2-135m".into(),
        prompt: crate::tokens::Prompt::Text("Count to five:".into()),
        max_tokens: 16,
        sampling: crate::tokens::Sampling::GREEDY,
        stop: Vec::new(),
    }
}

/// Provider `n`'s usage receipt for `request` whose text is `output`, countersigned by the
/// fixture requester.
fn usage_with(
    n: u8,
    request: &GenerateRequest,
    output: &str,
    edit: impl FnOnce(&mut UsageReceipt),
) -> CoSigned<UsageReceipt> {
    let key = provider(n);
    let mut receipt = UsageReceipt {
        contract_id: ContractId(Hash32::of(&[n])),
        provider: key.node_id(),
        requester: fixtures::requester().node_id(),
        seq: 1,
        request_hash: request.hash().unwrap(),
        model_sha256: Hash32::of(b"model file"),
        prompt_tokens: 5,
        completion_tokens: 9,
        finish: Finish::Stop,
        output_hash: Hash32::of(output.as_bytes()),
        cost: crate::money::Credits(14),
        finished_at_ms: 1,
    };
    edit(&mut receipt);
    let signed = Signed::sign(&receipt, &key).unwrap();
    CoSigned::countersign(signed, &fixtures::requester())
        .unwrap()
        .0
}

fn usage(n: u8, output: &str) -> CoSigned<UsageReceipt> {
    usage_with(n, &greedy_request(), output, |_| {})
}

fn token_evidence() -> TokenMismatch {
    TokenMismatch {
        request: greedy_request(),
        odd: usage(1, "1, 2, 3, 5"),
        majority: vec![usage(2, "1, 2, 3, 4, 5"), usage(3, "1, 2, 3, 4, 5")],
    }
}

#[test]
fn token_evidence_verifies_and_names_the_odd_provider() {
    let evidence = token_evidence();
    let verified = evidence.verify().unwrap();
    assert_eq!(verified.offender, provider(1).node_id());
    assert_eq!(verified.requester, fixtures::requester().node_id());
    assert_eq!(
        verified.majority,
        vec![provider(2).node_id(), provider(3).node_id()]
    );
    assert_eq!(verified.request_hash, greedy_request().hash().unwrap());
    assert_eq!(verified.odd_output, Hash32::of(b"1, 2, 3, 5"));
    assert_eq!(verified.majority_output, Hash32::of(b"1, 2, 3, 4, 5"));
    assert_eq!(verified.odd_contract, ContractId(Hash32::of(&[1])));
    let bytes = evidence.encode().unwrap();
    assert_eq!(TokenMismatch::decode(&bytes).unwrap(), evidence);
    assert!(TokenMismatch::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn token_evidence_needs_both_signatures_of_every_receipt() {
    // The last bytes of the encoding are the last receipt's countersignature.
    let mut bytes = token_evidence().encode().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = TokenMismatch::decode(&bytes).unwrap();
    assert!(matches!(
        forged.verify(),
        Err(MismatchError::Verify {
            run: 2,
            source: VerifyError::BadSignature { .. }
        })
    ));
    // A receipt countersigned by another requester than the others'.
    let request = greedy_request();
    let mut receipt = usage(3, "1, 2, 3, 4, 5").decode_unverified().unwrap();
    receipt.requester = fixtures::stranger().node_id();
    let signed = Signed::sign(&receipt, &provider(3)).unwrap();
    let (other_requester, _) = CoSigned::countersign(signed, &fixtures::stranger()).unwrap();
    let mut evidence = token_evidence();
    evidence.majority[1] = other_requester;
    assert_eq!(request.hash().unwrap(), receipt.request_hash);
    assert_eq!(
        evidence.verify(),
        Err(MismatchError::OtherJob {
            run: 2,
            field: "requester"
        })
    );
}

#[test]
fn token_runs_of_other_requests_models_or_requesters_prove_nothing() {
    let request = greedy_request();
    let mut other_request = token_evidence();
    other_request.majority[1] = usage_with(3, &request, "1, 2, 3, 4, 5", |r| {
        r.request_hash = Hash32::of(b"another request")
    });
    assert_eq!(
        other_request.verify(),
        Err(MismatchError::OtherJob {
            run: 2,
            field: "request_hash"
        })
    );
    let mut other_model = token_evidence();
    other_model.odd = usage_with(1, &request, "x", |r| r.model_sha256 = Hash32::of(b"other"));
    assert_eq!(
        other_model.verify(),
        Err(MismatchError::OtherJob {
            run: 1,
            field: "model_sha256"
        })
    );
    let mut same_provider = token_evidence();
    same_provider.majority[1] = usage_with(2, &request, "1, 2, 3, 4, 5", |r| r.seq = 2);
    assert_eq!(
        same_provider.verify(),
        Err(MismatchError::SameProvider(provider(2).node_id()))
    );
    let mut cancelled = token_evidence();
    cancelled.odd = usage_with(1, &request, "1, 2", |r| r.finish = Finish::Cancelled);
    assert_eq!(cancelled.verify(), Err(MismatchError::NoVote { run: 0 }));
    let mut split = token_evidence();
    split.majority[1] = usage(3, "something else");
    assert_eq!(split.verify(), Err(MismatchError::MajorityDisagrees));
    let mut agree = token_evidence();
    agree.odd = usage(1, "1, 2, 3, 4, 5");
    assert_eq!(agree.verify(), Err(MismatchError::NoMismatch));
}

#[test]
fn only_greedy_requests_on_a_model_file_can_be_evidence() {
    // Sampled text differs between honest runs.
    let mut sampled = greedy_request();
    sampled.sampling.temperature_milli = 700;
    let evidence = TokenMismatch {
        odd: usage_with(1, &sampled, "a", |_| {}),
        majority: vec![
            usage_with(2, &sampled, "b", |_| {}),
            usage_with(3, &sampled, "b", |_| {}),
        ],
        request: sampled,
    };
    assert_eq!(evidence.verify(), Err(MismatchError::NotGreedy(700)));
    // An upstream server's model has no file: its hash is the name's.
    let request = greedy_request();
    let upstream = crate::tokens::model_hash(&request.model, Hash32::ZERO);
    let evidence = TokenMismatch {
        odd: usage_with(1, &request, "a", |r| r.model_sha256 = upstream),
        majority: vec![
            usage_with(2, &request, "b", |r| r.model_sha256 = upstream),
            usage_with(3, &request, "b", |r| r.model_sha256 = upstream),
        ],
        request,
    };
    assert_eq!(evidence.verify(), Err(MismatchError::Upstream));
}
