use super::*;
use crate::identity::tests::rfc8032_key;
use crate::merkle::MerkleTree;
use proptest::prelude::*;

fn other_key() -> Keypair {
    Keypair::from_secret_bytes([42; 32])
}

fn tree(leaves: u64, tag: &[u8]) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for i in 0..leaves {
        tree.push_entry(&[tag, &i.to_be_bytes()].concat());
    }
    tree
}

fn signed(key: &Keypair, size: u64, root: Hash32) -> SignedCheckpoint {
    Checkpoint::new(key.node_id(), size, root)
        .sign(key)
        .unwrap()
}

/// Replaces the signature line(s) of `note` by a fresh signature of `text` with `key` under the
/// node's name: how a forger would "re-sign" an edited note with a key that is not the node's.
fn note_with_text(text: &str, signature_of: &str) -> String {
    let signatures = signature_of.rsplit_once("\n\n").unwrap().1;
    format!("{text}\n{signatures}")
}

/// The example of golang.org/x/mod/sumdb/note (the reference signed-note implementation):
/// the same key, text and signature line, byte for byte.
#[test]
fn matches_the_go_reference_note() {
    let secret = base64::decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
    let public = base64::decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").unwrap();
    assert_eq!((secret[0], public[0]), (1, 1));
    let key = Keypair::from_secret_bytes(secret[1..].try_into().unwrap());
    assert_eq!(key.node_id().as_bytes()[..], public[1..]);
    assert_eq!(
        key_id("PeterNeumann", &key.node_id()),
        [0xc7, 0x4f, 0x20, 0xa3]
    );

    let text = "If you think cryptography is the answer to your problem,\n\
                then you don't know what your problem is.\n";
    let note = sign_note(text, "PeterNeumann", &key);
    assert_eq!(
        note,
        format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        )
    );
    assert_eq!(open_note(&note, "PeterNeumann", key.node_id()), Ok(text));
    assert_eq!(
        open_note(
            &note.replace("cryptography", "cryptographY"),
            "PeterNeumann",
            key.node_id()
        ),
        Err(CheckpointError::BadSignature)
    );
    // A known name with another key id is someone else's key: ignored, so unsigned.
    assert_eq!(
        open_note(&note, "PeterNeumann", other_key().node_id()),
        Err(CheckpointError::NotSigned)
    );
}

#[test]
fn note_format() {
    let key = rfc8032_key();
    let id = key.node_id().to_string();
    let mut checkpoint = Checkpoint::new(key.node_id(), 3, Hash32([0xab; 32]));
    assert_eq!(
        checkpoint.to_note_body(),
        format!("{id}\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n")
    );
    checkpoint.extensions = vec!["timestamp 1700000000000".into()];
    let signed = checkpoint.sign(&key).unwrap();
    let note = signed.note();
    let (text, signature) = note.rsplit_once("\n\n").unwrap();
    assert_eq!(format!("{text}\n"), checkpoint.to_note_body());
    assert!(text.ends_with("\ntimestamp 1700000000000"));
    let signature = signature.strip_suffix('\n').unwrap();
    let blob = signature
        .strip_prefix(&format!("\u{2014} {id} "))
        .map(|encoded| base64::decode(encoded).unwrap())
        .unwrap();
    assert_eq!(blob.len(), 68);
    assert_eq!(blob[..4], key_id(&id, &key.node_id()));
    assert!(!signature.contains('\n'));

    let parsed = Checkpoint::parse_and_verify(note, key.node_id()).unwrap();
    assert_eq!(parsed, signed);
    assert_eq!(parsed.checkpoint(), &checkpoint);
    assert_eq!(SignedCheckpoint::from_note(note).unwrap(), signed);
    assert_eq!(parsed.signer(), key.node_id());
}

/// The exact note for a fixed key: ed25519 is deterministic, so any change to the format shows.
/// Checked independently (Python `cryptography` and `hashlib`): the key id is
/// `SHA-256(name || 0x0A || 0x01 || key)[:4]`, the signature verifies over the text, the root is
/// the RFC 6962 root of the five leaves and the origin is the key's peer id.
#[test]
fn known_answer() {
    let key = rfc8032_key();
    let tree = tree(5, b"known");
    let note = signed(&key, 5, tree.root()).into_note();
    assert_eq!(note, KNOWN_NOTE);
    assert_eq!(
        key_id(&key.node_id().to_string(), &key.node_id()),
        [0x17, 0x23, 0xc7, 0x5b]
    );
}

const KNOWN_NOTE: &str = "12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV\n\
5\n\
pP+R2x3aowam2IeRhvolW1YWcO1sK8dKDJSmIbHzTmg=\n\
\n\
\u{2014} 12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV \
FyPHW7+3sw8/PPkZxK0jQTOdoUdziGGWjBq7fyJ9tt2LL4RpMRDQD2zIA1QR457iGLmJkOBxgMTWXdiOx/0L4xGapwg=\n";

#[test]
fn sign_refuses_what_a_verifier_refuses() {
    let key = rfc8032_key();
    let mut checkpoint = Checkpoint::new(key.node_id(), 1, Hash32([1; 32]));
    assert_eq!(
        checkpoint.sign(&other_key()),
        Err(SignCheckpointError::WrongSigner {
            signer: other_key().node_id()
        })
    );
    for bad in [
        "",
        "two\nlines",
        "tab\there",
        "nul\0",
        "c1 \u{85} control",
        &"x".repeat(MAX_EXTENSION_BYTES + 1),
    ] {
        checkpoint.extensions = vec![bad.to_owned()];
        assert!(
            matches!(checkpoint.sign(&key), Err(SignCheckpointError::Invalid(_))),
            "{bad:?}"
        );
    }
    checkpoint.extensions = vec!["e".into(); MAX_EXTENSIONS + 1];
    assert!(checkpoint.sign(&key).is_err());
    checkpoint.extensions = vec!["e".repeat(MAX_EXTENSION_BYTES); MAX_EXTENSIONS];
    let largest = checkpoint.sign(&key).unwrap();
    assert!(largest.note().len() < MAX_NOTE_BYTES);
    Checkpoint::parse_and_verify(largest.note(), key.node_id()).unwrap();

    let empty = Checkpoint::new(key.node_id(), 0, Hash32([1; 32]));
    assert_eq!(
        empty.sign(&key),
        Err(SignCheckpointError::Invalid(CheckpointError::EmptyTreeRoot))
    );
    Checkpoint::new(key.node_id(), 0, EMPTY_ROOT)
        .sign(&key)
        .unwrap();
}

#[test]
fn rejects_malformed_notes() {
    let key = rfc8032_key();
    let node = key.node_id();
    let id = node.to_string();
    let good = signed(&key, 7, Hash32([7; 32])).into_note();
    let root = base64::encode(&[7; 32]);
    let resign = |text: &str| sign_note(text, &id, &key);
    let parse = |note: &str| Checkpoint::parse_and_verify(note, node);

    assert_eq!(
        parse(&format!("{good}{}", " ".repeat(MAX_NOTE_BYTES))),
        Err(CheckpointError::TooLarge {
            len: good.len() + MAX_NOTE_BYTES,
            max: MAX_NOTE_BYTES
        })
    );
    assert_eq!(
        parse(&good.replace('\n', "\r\n")),
        Err(CheckpointError::ControlCharacter)
    );
    assert_eq!(
        parse(&good.replace("\n\n", "\n")),
        Err(CheckpointError::Malformed(
            "no blank line before the signatures"
        ))
    );
    assert!(matches!(
        parse(good.strip_suffix('\n').unwrap()),
        Err(CheckpointError::Malformed(_))
    ));
    assert!(matches!(
        parse(&good.replace('\u{2014}', "--")),
        Err(CheckpointError::Malformed("signature line"))
    ));
    assert!(matches!(
        parse(&format!("{good}\n")),
        Err(CheckpointError::Malformed(_))
    ));
    // Signature blobs: bad base64, non-canonical base64, too short.
    let (text, _) = good.rsplit_once("\n\n").unwrap();
    for blob in ["!!!!", "AAAAAA=", "AAAAAB==", "AAAAAA==", "AAAA"] {
        let note = format!("{text}\n\n\u{2014} {id} {blob}\n");
        assert!(
            matches!(parse(&note), Err(CheckpointError::Malformed(_))),
            "{blob}"
        );
    }
    // Key names with spaces or plus signs, and lines with extra fields.
    for line in [
        "\u{2014} a+b AAAAAAA=",
        "\u{2014}  AAAAAAA=",
        "\u{2014} a AAAAAAA= x",
    ] {
        let note = format!("{good}{line}\n");
        assert!(
            matches!(parse(&note), Err(CheckpointError::Malformed(_))),
            "{line}"
        );
    }

    // Bodies, properly signed by the node.
    for body in [
        format!("{id}\n07\n{root}\n"),
        format!("{id}\n+7\n{root}\n"),
        format!("{id}\n-7\n{root}\n"),
        format!("{id}\n 7\n{root}\n"),
        format!("{id}\n\n{root}\n"),
        format!("{id}\n18446744073709551616\n{root}\n"),
        format!("{id}\n7\n{}\n", base64::encode(&[7; 31])),
        format!("{id}\n7\n{}\n", base64::encode(&[7; 33])),
        format!("{id}\n7\n{}\n", root.replace('=', "")),
        format!("{id}\n7\n"),
        format!("{id}\n7\n{root}\n\next\n"),
        format!("{id}\n7\n{root}\n{}", "e\n".repeat(MAX_EXTENSIONS + 1)),
        format!("{id}\n0\n{root}\n"),
    ] {
        assert!(
            matches!(
                parse(&resign(&body)),
                Err(CheckpointError::Body(_) | CheckpointError::EmptyTreeRoot)
            ),
            "{body:?}"
        );
    }
    assert_eq!(
        parse(&resign(&format!("{id}\n18446744073709551615\n{root}\n")))
            .unwrap()
            .size(),
        u64::MAX
    );
    // Another origin, even when the node signed it.
    let other = other_key().node_id().to_string();
    assert_eq!(
        parse(&resign(&format!("{other}\n7\n{root}\n"))),
        Err(CheckpointError::WrongOrigin { expected: node })
    );
}

#[test]
fn signatures_by_other_keys() {
    let key = rfc8032_key();
    let node = key.node_id();
    let good = signed(&key, 7, Hash32([7; 32])).into_note();
    let (text, _) = good.rsplit_once("\n\n").unwrap();
    let text = format!("{text}\n");

    // A witness cosignature after the node's signature is ignored.
    let cosigned = format!(
        "{good}{}",
        sign_note(&text, "witness.example/w1", &other_key())
            .rsplit_once("\n\n")
            .unwrap()
            .1
    );
    assert_eq!(
        Checkpoint::parse_and_verify(&cosigned, node)
            .unwrap()
            .size(),
        7
    );
    // Signed under the node's name by another key: that is not the node's signature.
    let forged = sign_note(&text, &node.to_string(), &other_key());
    assert_eq!(
        Checkpoint::parse_and_verify(&forged, node),
        Err(CheckpointError::NotSigned)
    );
    assert_eq!(
        SignedCheckpoint::from_note(&forged),
        Err(CheckpointError::NotSigned)
    );
    // The node's signature twice.
    let (_, line) = good.rsplit_once("\n\n").unwrap();
    assert_eq!(
        Checkpoint::parse_and_verify(&format!("{good}{line}"), node),
        Err(CheckpointError::DuplicateSignature)
    );
    // A correct key id over other text.
    let other_text = text.replace("\n7\n", "\n8\n");
    assert_eq!(
        Checkpoint::parse_and_verify(&note_with_text(&other_text, &good), node),
        Err(CheckpointError::BadSignature)
    );
    // Too many signature lines.
    let many = format!("{good}{}", "\u{2014} w AAAAAAA=\n".repeat(MAX_SIGNATURES));
    assert_eq!(
        Checkpoint::parse_and_verify(&many, node),
        Err(CheckpointError::Malformed("too many signatures"))
    );
    // The origin is not a node id, or not in its canonical text.
    assert_eq!(
        SignedCheckpoint::from_note(&good.replacen("12D3KooW", "12D3KooX", 1)),
        Err(CheckpointError::OriginNotANode)
    );
    assert!(SignedCheckpoint::from_note(&format!("example.com/log\n{good}")).is_err());
}

/// Every single-bit flip anywhere in a signed note makes it fail.
#[test]
fn every_flipped_bit_fails() {
    let key = rfc8032_key();
    let mut checkpoint = Checkpoint::new(key.node_id(), 1234, Hash32([9; 32]));
    checkpoint.extensions = vec!["ext".into()];
    let note = checkpoint.sign(&key).unwrap().into_note();
    let mut bytes = note.clone().into_bytes();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            bytes[at] ^= 1 << bit;
            if let Ok(text) = std::str::from_utf8(&bytes) {
                assert!(
                    Checkpoint::parse_and_verify(text, key.node_id()).is_err(),
                    "byte {at} bit {bit}"
                );
                assert!(SignedCheckpoint::from_note(text).is_err());
            }
            bytes[at] ^= 1 << bit;
        }
    }
    assert_eq!(bytes, note.as_bytes());
}

#[test]
fn serde_verifies() {
    let key = rfc8032_key();
    let signed = signed(&key, 2, Hash32([2; 32]));
    let json = serde_json::to_string(&signed).unwrap();
    assert_eq!(
        serde_json::from_str::<SignedCheckpoint>(&json).unwrap(),
        signed
    );
    let tampered = json.replace("\\n2\\n", "\\n3\\n");
    assert_ne!(tampered, json);
    assert!(serde_json::from_str::<SignedCheckpoint>(&tampered).is_err());
    let encoded = crate::codec::encode(&signed).unwrap();
    assert_eq!(
        crate::codec::decode::<SignedCheckpoint>(&encoded, 4096).unwrap(),
        signed
    );
}

#[test]
fn equivocation_at_the_same_size() {
    let key = rfc8032_key();
    let a = signed(&key, 5, tree(5, b"a").root());
    let b = signed(&key, 5, tree(5, b"b").root());
    let evidence = Equivocation {
        first: a.note().into(),
        second: b.note().into(),
        fork: None,
    };
    assert_eq!(evidence.verify(), Ok(key.node_id()));
    let same = Equivocation {
        first: a.note().into(),
        second: a.note().into(),
        fork: None,
    };
    assert_eq!(same.verify(), Err(EquivocationError::NoConflict));
    let with_proof = Equivocation {
        fork: Some(PrefixProof {
            prefix_root: Hash32([1; 32]),
            proof: vec![],
        }),
        ..evidence.clone()
    };
    assert_eq!(
        with_proof.verify(),
        Err(EquivocationError::UnexpectedForkProof)
    );
    let other = signed(&other_key(), 5, tree(5, b"b").root());
    let mixed = Equivocation {
        second: other.note().into(),
        ..evidence.clone()
    };
    assert_eq!(mixed.verify(), Err(EquivocationError::DifferentSigners));
    let forged = Equivocation {
        second: b.note().replace("\n5\n", "\n6\n"),
        ..evidence.clone()
    };
    assert!(matches!(forged.verify(), Err(EquivocationError::Second(_))));
}

#[test]
fn equivocation_across_sizes() {
    let key = rfc8032_key();
    // The node published 6 leaves, then rewrote leaf 4 and grew to 11.
    let honest = tree(11, b"a");
    let mut fork = MerkleTree::new();
    for i in 0..11u64 {
        if i == 4 {
            fork.push_entry(b"rewritten");
        } else {
            fork.push(honest.leaf_hash(i).unwrap());
        }
    }
    let old = signed(&key, 6, honest.root_at(6).unwrap());
    let new = signed(&key, 11, fork.root());
    let fork_proof = PrefixProof {
        prefix_root: fork.root_at(6).unwrap(),
        proof: fork.consistency_proof(6, 11).unwrap(),
    };
    let evidence = Equivocation {
        first: old.note().into(),
        second: new.note().into(),
        fork: Some(fork_proof.clone()),
    };
    assert_eq!(evidence.verify(), Ok(key.node_id()));
    // Order does not matter.
    let swapped = Equivocation {
        first: new.note().into(),
        second: old.note().into(),
        fork: Some(fork_proof.clone()),
    };
    assert_eq!(swapped.verify(), Ok(key.node_id()));
    let missing = Equivocation {
        fork: None,
        ..evidence.clone()
    };
    assert_eq!(missing.verify(), Err(EquivocationError::MissingForkProof));

    // An honest node cannot be framed: with checkpoints of one tree, a made-up prefix root with
    // the real proof, or any proof that merely fails, proves nothing.
    let honest_new = signed(&key, 11, honest.root());
    let real_proof = honest.consistency_proof(6, 11).unwrap();
    for (prefix_root, proof) in [
        (Hash32([1; 32]), real_proof.clone()),
        (fork.root_at(6).unwrap(), real_proof.clone()),
        (fork.root_at(6).unwrap(), fork_proof.proof.clone()),
        (honest.root_at(6).unwrap(), vec![Hash32([3; 32]); 4]),
        (Hash32([1; 32]), vec![]),
    ] {
        let framed = Equivocation {
            first: old.note().into(),
            second: honest_new.note().into(),
            fork: Some(PrefixProof { prefix_root, proof }),
        };
        assert!(framed.verify().is_err(), "{framed:?}");
    }
    let honest_evidence = Equivocation {
        first: old.note().into(),
        second: honest_new.note().into(),
        fork: Some(PrefixProof {
            prefix_root: honest.root_at(6).unwrap(),
            proof: real_proof,
        }),
    };
    assert_eq!(honest_evidence.verify(), Err(EquivocationError::NoConflict));

    // From the empty tree, nothing conflicts.
    let empty = signed(&key, 0, EMPTY_ROOT);
    let from_empty = Equivocation {
        first: empty.note().into(),
        second: new.note().into(),
        fork: Some(PrefixProof {
            prefix_root: Hash32([1; 32]),
            proof: vec![],
        }),
    };
    assert!(from_empty.verify().is_err());

    // Portable: JSON (base64 hashes) and the wire codec (raw bytes) round-trip.
    let json = serde_json::to_value(&evidence).unwrap();
    assert_eq!(
        json["fork"]["prefix_root"],
        base64::encode(&fork_proof.prefix_root.0)
    );
    let back: Equivocation = serde_json::from_value(json).unwrap();
    assert_eq!(back, evidence);
    let encoded = crate::codec::encode(&evidence).unwrap();
    assert!(encoded.len() < old.note().len() + new.note().len() + 33 * 6 + 16);
    let back: Equivocation = crate::codec::decode(&encoded, 8192).unwrap();
    assert_eq!(back.verify(), Ok(key.node_id()));
}

#[test]
fn witness_rule() {
    let key = rfc8032_key();
    let node = key.node_id();
    let tree = tree(20, b"w");
    let held = signed(&key, 8, tree.root_at(8).unwrap());
    let proof = |size1, size2| PrefixProof {
        prefix_root: tree.root_at(size1).unwrap(),
        proof: tree.consistency_proof(size1, size2).unwrap(),
    };

    // Growth with a valid proof is accepted.
    let newer = signed(&key, 20, tree.root());
    assert_eq!(
        witness(&held, newer.note(), &proof(8, 20)),
        Ok(newer.clone())
    );
    // The same tree head again (say, with a new extension line) is accepted.
    let mut again = Checkpoint::new(node, 8, tree.root_at(8).unwrap());
    again.extensions = vec!["timestamp 5".into()];
    let again = again.sign(&key).unwrap();
    let empty_proof = PrefixProof {
        prefix_root: held.root(),
        proof: vec![],
    };
    assert_eq!(witness(&held, again.note(), &empty_proof), Ok(again));
    // An older checkpoint of the same tree is stale.
    let older = signed(&key, 3, tree.root_at(3).unwrap());
    assert_eq!(
        witness(&held, older.note(), &proof(3, 8)),
        Err(WitnessError::Stale {
            held: 8,
            offered: 3
        })
    );
    // From the empty tree, anything is an extension.
    let empty = signed(&key, 0, EMPTY_ROOT);
    assert_eq!(witness(&empty, held.note(), &empty_proof), Ok(held.clone()));
    // A bad or missing proof is refused, without evidence.
    assert!(matches!(
        witness(&held, newer.note(), &empty_proof),
        Err(WitnessError::Unproven(_))
    ));
    let mut bad = proof(8, 20);
    bad.proof[0].0[0] ^= 1;
    assert!(matches!(
        witness(&held, newer.note(), &bad),
        Err(WitnessError::Unproven(_))
    ));
    // Notes by another node, or tampered notes, are refused.
    let stranger = signed(&other_key(), 20, tree.root());
    assert!(matches!(
        witness(&held, stranger.note(), &proof(8, 20)),
        Err(WitnessError::BadCheckpoint(CheckpointError::NotSigned))
    ));
    assert!(matches!(
        witness(
            &held,
            &newer.note().replace("\n20\n", "\n21\n"),
            &proof(8, 20)
        ),
        Err(WitnessError::BadCheckpoint(CheckpointError::BadSignature))
    ));

    // Same size, another root: evidence.
    let rival = signed(&key, 8, Hash32([8; 32]));
    let Err(WitnessError::Equivocation(evidence)) = witness(&held, rival.note(), &empty_proof)
    else {
        panic!("expected equivocation");
    };
    assert_eq!(evidence.verify(), Ok(node));
    // A larger tree whose proven prefix is not the held checkpoint: evidence, both ways round.
    let fork = MerkleTree::from_leaf_hashes((0..20).map(|i| {
        if i == 2 {
            Hash32([2; 32])
        } else {
            tree.leaf_hash(i).unwrap()
        }
    }));
    let forked = signed(&key, 20, fork.root());
    let fork_proof = PrefixProof {
        prefix_root: fork.root_at(8).unwrap(),
        proof: fork.consistency_proof(8, 20).unwrap(),
    };
    let Err(WitnessError::Equivocation(evidence)) = witness(&held, forked.note(), &fork_proof)
    else {
        panic!("expected equivocation");
    };
    assert_eq!(evidence.first, held.note());
    assert_eq!(evidence.verify(), Ok(node));
    let Err(WitnessError::Equivocation(evidence)) = witness(&forked, held.note(), &fork_proof)
    else {
        panic!("expected equivocation");
    };
    assert_eq!(evidence.first, held.note());
    assert_eq!(evidence.verify(), Ok(node));
}

proptest! {
    /// Arbitrary text, and arbitrary text after a valid note's origin line, is refused without a
    /// panic.
    #[test]
    fn arbitrary_notes_are_refused(text in "(\\PC|\n){0,300}", tail in "(\\PC|\n|\u{2014} ){0,300}") {
        let node = rfc8032_key().node_id();
        prop_assert!(Checkpoint::parse_and_verify(&text, node).is_err());
        prop_assert!(SignedCheckpoint::from_note(&text).is_err());
        let note = format!("{node}\n{tail}");
        prop_assert!(Checkpoint::parse_and_verify(&note, node).is_err());
        prop_assert!(SignedCheckpoint::from_note(&note).is_err());
    }

    /// Any checkpoint that signs round-trips through its note.
    #[test]
    fn signed_checkpoints_round_trip(
        size in 1u64..,
        root in any::<[u8; 32]>(),
        extensions in proptest::collection::vec("[a-z0-9 ]{1,20}", 0..4),
    ) {
        let key = rfc8032_key();
        let mut checkpoint = Checkpoint::new(key.node_id(), size, Hash32(root));
        checkpoint.extensions = extensions;
        let signed = checkpoint.sign(&key).unwrap();
        let parsed = Checkpoint::parse_and_verify(signed.note(), key.node_id()).unwrap();
        prop_assert_eq!(parsed.checkpoint(), &checkpoint);
    }
}
