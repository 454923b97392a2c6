use super::*;
use crate::advert::tests::NOW;
use crate::fixtures::*;
use crate::job::tests::{non_canonical_sample_bytes, sample_spec};
use crate::job::{MAX_SPEC_BYTES, job_hash_from_bytes, job_id_from_bytes};
use crate::signed::SignError;
use crate::signed::tests::sign_unchecked;

#[test]
fn quote_request_carries_the_raw_spec_and_nonce() {
    let quote = quote();
    assert_eq!(quote.spec, sample_spec().encode().unwrap());
    assert_eq!(quote.nonce, JOB_NONCE);
    assert_eq!(quote.job_id, sample_spec().job_id(JOB_NONCE).unwrap());
    assert_eq!(quote.job_hash(), sample_spec().hash().unwrap());
    assert_eq!(quote.decode_spec(), Ok(sample_spec()));
}

#[test]
fn quote_request_job_id_must_follow_from_the_bytes_and_nonce() {
    let mut quote = quote();
    quote.nonce += 1;
    assert_eq!(
        quote.decode_spec(),
        Err(QuoteError::JobId {
            claimed: sample_spec().job_id(JOB_NONCE).unwrap(),
            derived: sample_spec().job_id(JOB_NONCE + 1).unwrap(),
        })
    );
    let mut quote = crate::fixtures::quote();
    quote.job_id = JobId(Hash32::of(b"other"));
    assert!(matches!(quote.decode_spec(), Err(QuoteError::JobId { .. })));
}

#[test]
fn quote_request_spec_is_bounded_and_validated() {
    let mut quote = quote();
    quote.spec = vec![0; MAX_SPEC_BYTES + 1];
    assert!(matches!(
        quote.decode_spec(),
        Err(QuoteError::Decode(DecodeError::TooLarge { .. }))
    ));
    let mut quote = crate::fixtures::quote();
    quote.spec.push(0);
    assert!(matches!(
        quote.decode_spec(),
        Err(QuoteError::Decode(DecodeError::TrailingBytes {
            trailing: 1
        }))
    ));
    let mut invalid = sample_spec();
    invalid.replicas = 0;
    let quote = QuoteRequest::new(requester().node_id(), &invalid, 1, NOW).unwrap();
    assert_eq!(
        quote.decode_spec(),
        Err(QuoteError::Spec(SpecError::Replicas(0)))
    );
}

#[test]
fn non_canonical_spec_bytes_are_identified_by_their_raw_bytes() {
    // A requester (another implementation, say) sends spec bytes that are not the canonical
    // encoding, with the job id it computed over them. The provider must agree on the job id and
    // job hash, so it hashes the bytes, not a re-encoding of the decoded spec.
    let bytes = non_canonical_sample_bytes();
    let quote = QuoteRequest {
        requester: requester().node_id(),
        job_id: job_id_from_bytes(&bytes, JOB_NONCE),
        spec: bytes.clone(),
        nonce: JOB_NONCE,
        requested_at_ms: NOW,
    };
    let spec = quote.decode_spec().unwrap();
    assert_eq!(spec, sample_spec());
    assert_eq!(quote.job_hash(), job_hash_from_bytes(&bytes));
    // Re-encoding the decoded spec would have given other ids.
    assert_ne!(quote.job_id, spec.job_id(JOB_NONCE).unwrap());
    assert_ne!(quote.job_hash(), spec.hash().unwrap());
    // The requester's contract binds the ids of the bytes it sent; the provider accepts it.
    let contract = Contract {
        job_id: quote.job_id,
        job_hash: job_hash_from_bytes(&bytes),
        ..contract()
    };
    assert_eq!(contract.check_quote(&quote), Ok(sample_spec()));
    // A contract over the re-encoded spec does not match what was quoted.
    assert_eq!(
        crate::fixtures::contract().check_quote(&quote),
        Err(ContractCheckError::QuoteMismatch(ContractField::JobId))
    );
}

type ContractCase = (fn(&mut Contract), ContractCheckError);

#[test]
fn contract_must_match_the_quote() {
    use ContractCheckError::QuoteMismatch;
    use ContractField as F;
    assert_eq!(contract().check_quote(&quote()), Ok(sample_spec()));
    let cases: Vec<ContractCase> = vec![
        (
            |c| c.job_id = JobId(Hash32::of(b"x")),
            QuoteMismatch(F::JobId),
        ),
        (
            |c| c.requester = stranger().node_id(),
            QuoteMismatch(F::Requester),
        ),
        (|c| c.job_hash = Hash32::of(b"x"), QuoteMismatch(F::JobHash)),
        (
            |c| c.module_hash = Hash32::of(b"x"),
            QuoteMismatch(F::ModuleHash),
        ),
        (
            |c| c.stdin_hash = Hash32::of(b"x"),
            QuoteMismatch(F::StdinHash),
        ),
        (|c| c.limits.fuel -= 1, QuoteMismatch(F::Limits)),
        (|c| c.limits.wall_time_ms += 1, QuoteMismatch(F::Limits)),
        (
            |c| c.max_cost = Credits(c.max_cost.0 - 1),
            QuoteMismatch(F::MaxCost),
        ),
        (
            |c| c.price.base = Credits(c.price.base.0 + 1),
            QuoteMismatch(F::MaxCost),
        ),
        (
            |c| {
                c.price.per_million_fuel = Credits(2_000);
                c.max_cost = c.price.max_cost(&c.limits).unwrap();
            },
            ContractCheckError::AboveMaxPrice {
                max_cost: Credits(2_100),
                max_price: Credits(1_000),
            },
        ),
        (
            |c| c.price.base = Credits(u64::MAX),
            ContractCheckError::Overflow,
        ),
    ];
    for (mutate, expected) in cases {
        let mut contract = contract();
        mutate(&mut contract);
        assert_eq!(contract.check_quote(&quote()), Err(expected));
    }
    let mut bad_quote = quote();
    bad_quote.nonce += 1;
    assert!(matches!(
        contract().check_quote(&bad_quote),
        Err(ContractCheckError::Quote(QuoteError::JobId { .. }))
    ));
}

#[test]
fn contract_must_match_the_offer() {
    use ContractCheckError::OfferMismatch;
    use ContractField as F;
    assert_eq!(contract().check_offer(&signed_offer()), Ok(offer()));
    let cases: Vec<ContractCase> = vec![
        (|c| c.offer = Hash32::of(b"x"), OfferMismatch(F::Offer)),
        (
            |c| c.provider = stranger().node_id(),
            OfferMismatch(F::Provider),
        ),
        (
            |c| c.requester = stranger().node_id(),
            OfferMismatch(F::Requester),
        ),
        (
            |c| c.job_id = JobId(Hash32::of(b"x")),
            OfferMismatch(F::JobId),
        ),
        (
            |c| c.price.per_million_fuel = Credits(1),
            OfferMismatch(F::Price),
        ),
        (
            |c| c.max_cost = Credits(c.max_cost.0 + 1),
            OfferMismatch(F::MaxCost),
        ),
    ];
    for (mutate, expected) in cases {
        let mut contract = contract();
        mutate(&mut contract);
        assert_eq!(contract.check_offer(&signed_offer()), Err(expected.clone()));
        assert_eq!(contract.check_own_offer(&signed_offer()), Err(expected));
    }
    assert_eq!(contract().check_own_offer(&signed_offer()), Ok(offer()));
    // Another offer with the same terms but a different digest (another reservation).
    let other = Signed::sign(
        &Offer {
            reservation: 2,
            ..offer()
        },
        &provider(),
    )
    .unwrap();
    assert_eq!(contract().check_offer(&other), Err(OfferMismatch(F::Offer)));
    // An "offer" that does not verify.
    let mut forged = offer();
    forged.provider = stranger().node_id();
    let forged = sign_unchecked(&forged, &provider());
    assert!(matches!(
        contract().check_offer(&forged),
        Err(ContractCheckError::Offer(VerifyError::WrongSigner { .. }))
    ));
    // Its own offer is checked without its signature, but by its terms and signer all the same.
    assert_eq!(
        contract().check_own_offer(&forged),
        Err(OfferMismatch(F::Offer))
    );
    let strangers = Signed::sign(
        &Offer {
            provider: stranger().node_id(),
            ..offer()
        },
        &stranger(),
    )
    .unwrap();
    assert_eq!(
        contract().check_own_offer(&strangers),
        Err(OfferMismatch(F::Provider))
    );
}

fn assert_bounded<T: Document + std::fmt::Debug + PartialEq>(
    document: T,
    key: &crate::identity::Keypair,
    field: &'static str,
    max: usize,
) {
    let expected = |len| BoundsError { field, len, max };
    let len = match document.check_bounds() {
        Err(error) => {
            assert_eq!(error.field, field);
            error.len
        }
        Ok(()) => panic!("{document:?} should break the bound on {field}"),
    };
    assert_eq!(expected(len).len, len);
    assert!(len > max);
    assert!(matches!(
        Signed::sign(&document, key),
        Err(SignError::OutOfBounds { source, .. }) if source == expected(len)
    ));
    assert_eq!(
        sign_unchecked(&document, key).verify(),
        Err(VerifyError::OutOfBounds {
            kind: T::KIND,
            source: expected(len)
        })
    );
}

fn decline(message: String) -> Decline {
    Decline {
        provider: provider().node_id(),
        requester: requester().node_id(),
        job_id: contract().job_id,
        contract_id: None,
        code: DeclineCode::Other,
        message,
        declined_at_ms: NOW,
    }
}

fn failure_record(message: String) -> FailureRecord {
    FailureRecord {
        contract_id: contract_id(),
        job_id: contract().job_id,
        recorder: requester().node_id(),
        counterparty: provider().node_id(),
        failure: AttemptFailure::PeerLost,
        message,
        recorded_at_ms: NOW,
    }
}

fn evidence(message: String, payload: Vec<u8>) -> Evidence {
    Evidence {
        reporter: requester().node_id(),
        offender: provider().node_id(),
        kind: MisbehaviourKind::Malformed,
        message,
        payload,
        observed_at_ms: NOW,
    }
}

fn failed_receipt(message: String) -> Receipt {
    Receipt {
        outcome: Outcome::Failed {
            reason: FailureReason::Trap,
            message,
        },
        ..receipt()
    }
}

#[test]
fn messages_and_payloads_are_bounded() {
    let at_cap = "é".repeat(MAX_MESSAGE_BYTES / 2);
    let over = format!("{at_cap}x");
    // At the cap: signs and verifies.
    let ok = Signed::sign(&decline(at_cap.clone()), &provider()).unwrap();
    assert_eq!(ok.verify().unwrap().message, at_cap);
    Signed::sign(&failure_record(at_cap.clone()), &requester())
        .unwrap()
        .verify()
        .unwrap();
    Signed::sign(
        &evidence(at_cap.clone(), vec![7; MAX_EVIDENCE_BYTES]),
        &requester(),
    )
    .unwrap()
    .verify()
    .unwrap();
    Signed::sign(&failed_receipt(at_cap), &provider())
        .unwrap()
        .verify()
        .unwrap();
    // One byte over: refused by sign and by verify.
    assert_bounded(
        decline(over.clone()),
        &provider(),
        "message",
        MAX_MESSAGE_BYTES,
    );
    assert_bounded(
        failure_record(over.clone()),
        &requester(),
        "message",
        MAX_MESSAGE_BYTES,
    );
    assert_bounded(
        evidence(over.clone(), vec![]),
        &requester(),
        "message",
        MAX_MESSAGE_BYTES,
    );
    assert_bounded(
        evidence(String::new(), vec![7; MAX_EVIDENCE_BYTES + 1]),
        &requester(),
        "payload",
        MAX_EVIDENCE_BYTES,
    );
    assert_bounded(
        failed_receipt(over),
        &provider(),
        "message",
        MAX_MESSAGE_BYTES,
    );
}

#[test]
fn quote_request_known_answer() {
    // docs/protocol.md section 14.6: key 2 asks for the spec of 14.3 with nonce 1.
    let mut secret = [0u8; 32];
    hex::decode_to_slice(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        &mut secret,
    )
    .unwrap();
    let key2 = crate::identity::Keypair::from_secret_bytes(secret);
    let quote = QuoteRequest::new(key2.node_id(), &sample_spec(), 1, NOW).unwrap();
    let framed =
        crate::wire::WireMessage::to_bytes(&crate::wire::MarketRequest::Quote(quote)).unwrap();
    let spec = sample_spec().encode().unwrap();
    let expected = format!(
        "0100{}{}6e{}01fd00505c18a3010000",
        hex::encode(key2.node_id().as_bytes()),
        "b22093ddaefbfa79dd46d77df1b907123bdb76d92af31640a2b6f42a6151f2b9",
        hex::encode(&spec),
    );
    assert_eq!(hex::encode(&framed), expected);
    assert_eq!(framed.len(), 2 + 32 + 32 + 1 + 110 + 1 + 9);
}

#[test]
fn signed_offer_known_answer() {
    // docs/protocol.md section 14.4: key 1 offers key 2 the job of 14.3 (nonce 1).
    let key = |hex_secret: &str| {
        let mut secret = [0u8; 32];
        hex::decode_to_slice(hex_secret, &mut secret).unwrap();
        crate::identity::Keypair::from_secret_bytes(secret)
    };
    let key1 = key("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let key2 = key("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb");
    let offer = Offer {
        provider: key1.node_id(),
        requester: key2.node_id(),
        job_id: sample_spec().job_id(1).unwrap(),
        price: crate::money::PriceTerms::fuel(Credits(100), Credits(5)),
        max_cost: Credits(105),
        valid_until_ms: NOW,
        reservation: 7,
    };
    let signed = Signed::sign(&offer, &key1).unwrap();
    let encoded = hex::encode(crate::codec::encode(&signed).unwrap());
    assert_eq!(encoded.len() / 2, 210);
    assert!(encoded.ends_with(
        "409b6d4545e1d9e110c57bb2ba692bb285750bcf1c4e7c9e2f27daf545e2b215883b262e3c6d04465225cb3839b2\
         bae6cf2dbf4e09d1f4ecb20dc3f4a5bd741e08"
    ));
    assert_eq!(
        signed.digest().to_hex(),
        "e5864e795cda961b376bd89f4dc73cb56cd213d7a7c83f6b76fd1a608e41f5dd"
    );
}
