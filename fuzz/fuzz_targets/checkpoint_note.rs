//! Checkpoints as C2SP signed notes (text from gossip, ledger sync and `GET
//! /v1/ledger/checkpoint`), the witness rule, and equivocation proofs.
//!
//! The first byte selects the mode:
//! - 0: the rest is a note, verified against the key its origin names
//!   (`SignedCheckpoint::from_note`);
//! - 1: the rest is a note body, signed here by the requester's key, so the body parser behind
//!   the signature is reached;
//! - 2: a body signed here, offered to a witness holding the requester's checkpoint at size 3,
//!   with a fuzzed prefix proof (`witness`);
//! - 3: two bodies signed here and an optional fork proof, as an `Equivocation`; or (4) an
//!   `Equivocation` in its wire form.
//!
//! Properties: nothing panics; a verified note keeps its text, passes `Checkpoint::check`, and
//! its body re-serialises to the signed text exactly; `from_note` and `parse_and_verify` agree;
//! the witness never accepts an older checkpoint or another root at the same size; an
//! equivocation that verifies is one the witness rule also refuses as equivocation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::{REQUESTER, keypair, sign_note_text, split_selector};
use suanli_protocol::checkpoint::{
    Checkpoint, Equivocation, PrefixProof, SignedCheckpoint, WitnessError, witness,
};
use suanli_protocol::codec;
use suanli_protocol::wire::MAX_GOSSIPED_NOTE_BYTES;

fn check_verified(checkpoint: &SignedCheckpoint, note: &str) {
    assert_eq!(checkpoint.note(), note);
    assert!(checkpoint.checkpoint().check().is_ok());
    assert_eq!(
        checkpoint.checkpoint().origin,
        checkpoint.signer().to_string()
    );
    if checkpoint.signer() == keypair(REQUESTER).node_id() {
        // What a verifier accepts, its signer can sign.
        checkpoint
            .checkpoint()
            .sign(&keypair(REQUESTER))
            .expect("a verified checkpoint signs");
    }
}

fn signed_body(body: &str) -> Option<SignedCheckpoint> {
    let note = sign_note_text(body, REQUESTER);
    let checkpoint = SignedCheckpoint::from_note(&note);
    let direct = Checkpoint::parse_and_verify(&note, keypair(REQUESTER).node_id());
    assert_eq!(
        checkpoint.is_ok(),
        direct.is_ok(),
        "from_note and parse_and_verify disagree"
    );
    let checkpoint = checkpoint.ok()?;
    check_verified(&checkpoint, &note);
    // The signed text is exactly the body the checkpoint serialises to.
    assert_eq!(checkpoint.checkpoint().to_note_body(), body);
    Some(checkpoint)
}

/// The witness's checkpoint (the sample tree at size 3), built once: building the tree signs
/// its entries.
fn held() -> SignedCheckpoint {
    static HELD: OnceLock<SignedCheckpoint> = OnceLock::new();
    HELD.get_or_init(|| suanli_fuzz::checkpoint(3)).clone()
}

/// Splits at the first NUL: text before, bytes after.
fn text_and_rest(data: &[u8]) -> Option<(&str, &[u8])> {
    let split = data
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(data.len());
    let text = std::str::from_utf8(&data[..split]).ok()?;
    Some((text, data.get(split + 1..).unwrap_or_default()))
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = split_selector(data) else {
        return;
    };
    match selector % 5 {
        0 => {
            let Ok(note) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(checkpoint) = SignedCheckpoint::from_note(note) {
                check_verified(&checkpoint, note);
            }
        }
        1 => {
            if let Ok(body) = std::str::from_utf8(rest) {
                signed_body(body);
            }
        }
        2 => {
            let Some((body, proof)) = text_and_rest(rest) else {
                return;
            };
            let Ok(proof) = codec::decode::<PrefixProof>(proof, MAX_GOSSIPED_NOTE_BYTES) else {
                return;
            };
            let held = held();
            let note = sign_note_text(body, REQUESTER);
            match witness(&held, &note, &proof) {
                Ok(new) => {
                    assert!(new.size() >= held.size(), "the witness went back");
                    if new.size() == held.size() {
                        assert_eq!(new.root(), held.root());
                    }
                }
                Err(WitnessError::Equivocation(evidence)) => {
                    assert_eq!(
                        evidence.verify(),
                        Ok(held.signer()),
                        "unprovable equivocation"
                    );
                }
                Err(_) => {}
            }
        }
        3 => {
            let Some((first, rest)) = text_and_rest(rest) else {
                return;
            };
            let Some((second, proof)) = text_and_rest(rest) else {
                return;
            };
            let fork = if proof.is_empty() {
                None
            } else {
                match codec::decode::<PrefixProof>(proof, MAX_GOSSIPED_NOTE_BYTES) {
                    Ok(proof) => Some(proof),
                    Err(_) => return,
                }
            };
            let equivocation = Equivocation {
                first: sign_note_text(first, REQUESTER),
                second: sign_note_text(second, REQUESTER),
                fork: fork.clone(),
            };
            if equivocation.verify().is_ok() {
                let first = SignedCheckpoint::from_note(&equivocation.first).expect("verified");
                let second = SignedCheckpoint::from_note(&equivocation.second).expect("verified");
                let (held, offered) = if first.size() <= second.size() {
                    (first, second)
                } else {
                    (second, first)
                };
                // The witness holding the smaller one, offered the larger with the fork proof,
                // must see the same equivocation.
                let proof = fork.unwrap_or(PrefixProof {
                    prefix_root: held.root(),
                    proof: Vec::new(),
                });
                if held.size() > 0 || offered.size() == 0 {
                    assert!(matches!(
                        witness(&held, offered.note(), &proof),
                        Err(WitnessError::Equivocation(_))
                    ));
                }
            }
        }
        _ => {
            if let Ok(equivocation) =
                codec::decode::<Equivocation>(rest, 2 * MAX_GOSSIPED_NOTE_BYTES + 4096)
            {
                let _ = equivocation.verify();
            }
        }
    }
});
