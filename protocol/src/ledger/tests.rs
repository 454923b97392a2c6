use super::*;
use crate::advert::tests::NOW;
use crate::fixtures::*;
use crate::negotiation::{AttemptFailure, MisbehaviourKind};
use proptest::prelude::*;

/// Builds a valid raw ledger of the requester from bodies, linking each entry to the previous.
fn build(bodies: Vec<EntryBody>) -> Vec<Vec<u8>> {
    let mut prev_hash = Hash32::ZERO;
    bodies
        .into_iter()
        .enumerate()
        .map(|(seq, body)| {
            let raw = LedgerEntry {
                seq: seq as u64,
                timestamp_ms: NOW + seq as u64,
                prev_hash,
                body,
            }
            .encode()
            .unwrap();
            prev_hash = entry_hash(&raw);
            raw
        })
        .collect()
}

fn failure() -> Signed<FailureRecord> {
    Signed::sign(
        &FailureRecord {
            contract_id: contract_id(),
            job_id: contract().job_id,
            recorder: requester().node_id(),
            counterparty: provider().node_id(),
            failure: AttemptFailure::PeerLost,
            message: "connection closed".into(),
            recorded_at_ms: NOW,
        },
        &requester(),
    )
    .unwrap()
}

fn evidence() -> Signed<Evidence> {
    Signed::sign(
        &Evidence {
            reporter: requester().node_id(),
            offender: stranger().node_id(),
            kind: MisbehaviourKind::BadSignature,
            message: "forged receipt".into(),
            payload: vec![1, 2, 3],
            observed_at_ms: NOW,
        },
        &requester(),
    )
    .unwrap()
}

fn sample_ledger() -> Vec<Vec<u8>> {
    build(vec![
        EntryBody::Contract(cosigned_contract()),
        EntryBody::Receipt(signed_receipt()),
        EntryBody::Settlement(cosigned_settlement()),
        EntryBody::Failure(failure()),
        EntryBody::Misbehaviour(evidence()),
        EntryBody::Contract(cosigned_contract()),
    ])
}

/// Strict verification, checked against batched verification in groups of every size that
/// matters (whole ledger, 2, 1): they must agree on the head or on the first bad index and error.
/// Small ledgers have fewer signatures than `MIN_BATCH`, so the groups are also checked with
/// batches that combine from one signature on, to exercise the batch path itself.
fn verify(ledger: &[Vec<u8>]) -> Result<ChainHead, ChainError> {
    let strict = verify_chain(requester().node_id(), ledger.iter().map(Vec::as_slice));
    for group in [ledger.len().max(1), 2, 1] {
        let batched = verify_chain_batched(
            requester().node_id(),
            ledger.iter().map(Vec::as_slice),
            group,
            [group as u8; 32],
        );
        assert_eq!(batched, strict, "batches of {group} entries");
        let forced = verify_chain_in_batches(
            requester().node_id(),
            ledger.iter().map(Vec::as_slice),
            group,
            &mut SignatureBatch::with_min_batch([group as u8; 32], 1),
        );
        assert_eq!(forced, strict, "forced batches of {group} entries");
    }
    strict
}

fn error_at(ledger: &[Vec<u8>]) -> (u64, EntryError) {
    let error = verify(ledger).unwrap_err();
    (error.index, error.error)
}

#[test]
fn a_valid_ledger_verifies_for_both_parties() {
    let ledger = sample_ledger();
    let head = verify(&ledger).unwrap();
    assert_eq!(head.size, 6);
    assert_eq!(head.head, entry_hash(ledger.last().unwrap()));
    assert_eq!(verify(&[]).unwrap(), ChainHead::EMPTY);
    // The provider may hold the same shared documents; not the requester's own statements.
    let shared = build(vec![
        EntryBody::Contract(cosigned_contract()),
        EntryBody::Settlement(cosigned_settlement()),
    ]);
    assert!(verify_chain(provider().node_id(), shared.iter().map(Vec::as_slice)).is_ok());
}

#[test]
fn known_answer_entry_hash() {
    // RFC 6962 leaf hash of the empty leaf, as in the transparency-dev vectors.
    assert_eq!(
        entry_hash(b"").to_hex(),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
}

#[test]
fn entry_hash_domain() {
    // What the 0x00 prefix does and does not separate (see the module docs).
    let raw = sample_ledger().remove(0);
    assert_eq!(raw.first(), Some(&crate::codec::PROTOCOL_VERSION));
    let mut prefixed = vec![0u8];
    prefixed.extend_from_slice(&raw);
    // An entry hash is the plain content hash of `0x00 || raw`: not separated from content hashes.
    assert_eq!(entry_hash(&raw), Hash32::of(&prefixed));
    // But its input starts `00 01`, and a wasm module starts `00 61 73 6d`.
    assert_eq!(&prefixed[..2], &[0x00, 0x01]);
    assert_ne!(&prefixed[..2], &b"\0asm"[..2]);
    // Tagged hashes hash "suanli/v1/...", never a zero first byte.
    assert_eq!(crate::hash::tagged("x", &[]), Hash32::of(b"suanli/v1/x\0"));
}

#[test]
fn modified_entry_detected_at_its_index() {
    let mut ledger = sample_ledger();
    // Change the timestamp of entry 2 and re-encode it: its own checks pass, the link of 3 breaks.
    let mut entry = LedgerEntry::decode(&ledger[2]).unwrap();
    entry.timestamp_ms += 1;
    ledger[2] = entry.encode().unwrap();
    assert_eq!(error_at(&ledger), (3, EntryError::BrokenLink));
}

/// A receipt whose document bytes were altered after signing, re-encoded with the old signature.
fn doctored_receipt() -> Signed<Receipt> {
    let original = signed_receipt();
    let mut receipt = original.verify().unwrap();
    receipt.cost = crate::money::Credits(1);
    let bytes = crate::codec::encode(&(
        serde_bytes::ByteBuf::from(crate::codec::encode(&receipt).unwrap()),
        original.signer(),
        serde_bytes::ByteBuf::from(original.signature().to_bytes().to_vec()),
    ))
    .unwrap();
    crate::codec::decode(&bytes, 8192).unwrap()
}

#[test]
fn altered_document_detected_at_its_entry() {
    let mut ledger = sample_ledger();
    let mut entry = LedgerEntry::decode(&ledger[1]).unwrap();
    entry.body = EntryBody::Receipt(doctored_receipt());
    ledger[1] = entry.encode().unwrap();
    assert!(matches!(
        error_at(&ledger),
        (
            1,
            EntryError::Document(VerifyError::BadSignature {
                kind: "receipt",
                ..
            })
        )
    ));
}

#[test]
fn reordered_entries_detected() {
    let mut ledger = sample_ledger();
    ledger.swap(1, 2);
    assert!(matches!(
        error_at(&ledger),
        (
            1,
            EntryError::Sequence {
                expected: 1,
                found: 2
            }
        )
    ));
}

#[test]
fn removed_entry_detected() {
    let mut ledger = sample_ledger();
    ledger.remove(3);
    assert!(matches!(
        error_at(&ledger),
        (
            3,
            EntryError::Sequence {
                expected: 3,
                found: 4
            }
        )
    ));
}

#[test]
fn inserted_entry_detected() {
    let mut ledger = sample_ledger();
    let extra = ledger[2].clone();
    ledger.insert(3, extra);
    assert!(matches!(
        error_at(&ledger),
        (
            3,
            EntryError::Sequence {
                expected: 3,
                found: 2
            }
        )
    ));
}

#[test]
fn renumbered_insertion_detected_by_the_link() {
    // An attacker inserts an entry and renumbers everything after it: the hash links break.
    let ledger = sample_ledger();
    let mut entries: Vec<LedgerEntry> = ledger
        .iter()
        .map(|raw| LedgerEntry::decode(raw).unwrap())
        .collect();
    let mut extra = entries[1].clone();
    extra.seq = 2;
    entries.insert(2, extra);
    for (seq, entry) in entries.iter_mut().enumerate().skip(3) {
        entry.seq = seq as u64;
    }
    let tampered: Vec<Vec<u8>> = entries.iter().map(|e| e.encode().unwrap()).collect();
    // The inserted copy still links to the entry before its original: caught where it stands.
    assert_eq!(error_at(&tampered), (2, EntryError::BrokenLink));
}

#[test]
fn time_going_back_detected() {
    let mut ledger = sample_ledger();
    ledger.truncate(2);
    let mut entry = LedgerEntry::decode(&ledger[1]).unwrap();
    entry.timestamp_ms = NOW - 1;
    ledger[1] = entry.encode().unwrap();
    assert!(matches!(
        error_at(&ledger),
        (1, EntryError::TimeWentBack { .. })
    ));
}

#[test]
fn badly_signed_document_detected() {
    let mut ledger = sample_ledger();
    ledger.truncate(1);
    // A contract whose countersignature is the requester's own signature again.
    let bytes = crate::codec::encode(&(
        cosigned_contract().first().clone(),
        serde_bytes::ByteBuf::from(cosigned_contract().first().signature().to_bytes().to_vec()),
    ))
    .unwrap();
    let forged: CoSigned<Contract> = crate::codec::decode(&bytes, 8192).unwrap();
    ledger.push(
        LedgerEntry {
            seq: 1,
            timestamp_ms: NOW + 1,
            prev_hash: entry_hash(&ledger[0]),
            body: EntryBody::Contract(forged),
        }
        .encode()
        .unwrap(),
    );
    assert!(matches!(
        error_at(&ledger),
        (1, EntryError::Document(VerifyError::BadSignature { .. }))
    ));
}

#[test]
fn someone_elses_statements_are_refused() {
    // The stranger's ledger may not hold the requester's contract or failure record.
    let ledger = build(vec![EntryBody::Failure(failure())]);
    let error = verify_chain(stranger().node_id(), ledger.iter().map(Vec::as_slice)).unwrap_err();
    assert_eq!(
        error,
        ChainError {
            index: 0,
            error: EntryError::NotAParty
        }
    );
}

#[test]
fn resume_continues_a_verified_prefix() {
    let ledger = sample_ledger();
    let prefix = verify(&ledger[..3]).unwrap();
    let mut verifier = ChainVerifier::resume(requester().node_id(), prefix);
    for raw in &ledger[3..] {
        verifier.push(raw).unwrap();
    }
    assert_eq!(verifier.head(), verify(&ledger).unwrap());
}

#[test]
fn one_bad_signature_in_a_batch_is_found_at_its_entry() {
    // 60 entries of valid documents (about 100 signatures), verified in batches of 64 entries.
    let bodies: Vec<EntryBody> = (0..10).flat_map(|_| sample_bodies()).collect();
    let good = build(bodies.clone());
    assert_eq!(verify(&good).unwrap().size, 60);
    for bad in [0usize, 1, 31, 59] {
        let mut tampered = bodies.clone();
        tampered[bad] = forged_contract();
        let ledger = build(tampered);
        let error = verify_chain_batched(
            requester().node_id(),
            ledger.iter().map(Vec::as_slice),
            64,
            [9; 32],
        )
        .unwrap_err();
        assert_eq!(error.index, bad as u64);
        assert!(matches!(
            error.error,
            EntryError::Document(VerifyError::BadSignature { .. })
        ));
        assert_eq!(verify(&ledger).unwrap_err(), error);
    }
}

#[test]
fn a_huge_batch_size_does_not_preallocate() {
    let ledger = sample_ledger();
    let head = verify(&ledger).unwrap();
    for batch_entries in [usize::MAX, usize::MAX / 2, 1 << 40, 0] {
        let batched = verify_chain_batched(
            requester().node_id(),
            ledger.iter().map(Vec::as_slice),
            batch_entries,
            [1; 32],
        );
        assert_eq!(batched, Ok(head), "batches of {batch_entries} entries");
    }
}

fn sample_bodies() -> Vec<EntryBody> {
    vec![
        EntryBody::Contract(cosigned_contract()),
        EntryBody::Receipt(signed_receipt()),
        EntryBody::Settlement(cosigned_settlement()),
        EntryBody::Failure(failure()),
        EntryBody::Misbehaviour(evidence()),
        EntryBody::Contract(cosigned_contract()),
    ]
}

/// A contract whose countersignature is the requester's own signature again.
fn forged_contract() -> EntryBody {
    let bytes = crate::codec::encode(&(
        cosigned_contract().first().clone(),
        serde_bytes::ByteBuf::from(cosigned_contract().first().signature().to_bytes().to_vec()),
    ))
    .unwrap();
    EntryBody::Contract(crate::codec::decode(&bytes, 8192).unwrap())
}

proptest! {
    #[test]
    fn entries_round_trip(entry in any::<LedgerEntry>()) {
        let raw = entry.encode().unwrap();
        prop_assert_eq!(LedgerEntry::decode(&raw).unwrap(), entry);
    }

    #[test]
    fn any_flipped_byte_is_detected(entry in 0usize..6, index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut ledger = sample_ledger();
        let good_head = verify(&ledger).unwrap();
        let at = index.index(ledger[entry].len());
        ledger[entry][at] ^= 1 << bit;
        match verify(&ledger) {
            // Caught at the flipped entry itself, or by the hash link of the next one.
            Err(error) => prop_assert!(
                error.index == entry as u64 || error.index == entry as u64 + 1,
                "{error:?}"
            ),
            // Only the unsigned fields of the last entry (its timestamp) can change without an
            // error, and then the head hash differs: a checkpoint of the head catches it.
            Ok(head) => {
                prop_assert_eq!(entry, 5);
                prop_assert_ne!(head.head, good_head.head);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = LedgerEntry::decode(&bytes);
        let _ = verify_chain(requester().node_id(), [bytes.as_slice()]);
    }
}
