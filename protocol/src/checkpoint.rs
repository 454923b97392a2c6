//! Signed checkpoints of a node's ledger tree, the witness rule and portable equivocation
//! evidence.
//!
//! A checkpoint is a [C2SP `tlog-checkpoint`](https://c2sp.org/tlog-checkpoint) note signed in
//! the [C2SP `signed-note`](https://c2sp.org/signed-note) format, so that existing
//! transparency-log tooling can read it:
//!
//! ```text
//! 12D3KooW…                                   origin: the node id
//! 1024                                        tree size, decimal, no leading zeros
//! 3q2+7w…=                                    root hash, standard base64 (44 symbols)
//! [extension lines]                           optional, opaque, non-empty
//!                                             blank line
//! — 12D3KooW… <base64(key id || signature)>   one line per signature
//! ```
//!
//! The origin and the signature's key name are both the node id's text, and the signature is
//! ed25519 (`signed-note` type `0x01`) by the node's key over the note text: every line up to
//! and including the newline before the blank line. The key id is the first four bytes of
//! `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)`. The note is signed as it is, with no
//! `"suanli/v1/"` prefix: C2SP tools verify it byte for byte. It still cannot be mistaken for
//! another signed message of the node: it starts with the node's id (`12D3KooW…`), while suanli
//! documents start with `"suanli/v1/"` and libp2p's signed payloads with their own ASCII context
//! strings.
//!
//! Because the origin names the key, a checkpoint verifies on its own
//! ([`SignedCheckpoint::from_note`]); [`Checkpoint::parse_and_verify`] also pins the node.
//! Parsing is strict and bounded: at most [`MAX_NOTE_BYTES`], no control characters but newline,
//! canonical base64 and decimal, at most [`MAX_SIGNATURES`] signature lines (other keys' lines,
//! such as witness cosignatures, must be well formed and are otherwise ignored), exactly one
//! signature by the node, at most [`MAX_EXTENSIONS`] extension lines, and a checkpoint of size 0
//! must name the empty tree's root ([`EMPTY_ROOT`]).
//!
//! A witness keeps the latest checkpoint of each node and accepts a newer one only with a
//! consistency proof ([`witness`]). Two validly signed checkpoints of one node that cannot both
//! be prefixes of one tree are an [`Equivocation`]: a self-contained document anyone can verify
//! offline.
//!
//! This module must never do I/O or read a clock, accept a note its signer did not sign, or call
//! two checkpoints inconsistent on evidence a third party could have forged (an unsigned proof
//! that merely *fails* to verify proves nothing about the signer).

use std::fmt;

use ed25519_dalek::Signature;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::hash::Hash32;
use crate::identity::{Keypair, NodeId};
use crate::merkle::{EMPTY_ROOT, VerifyProofError, base64, verify_consistency};

/// Cap on a whole note (text and signatures).
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// Cap on the signature lines of a note (ours and anyone else's, such as witness cosignatures).
pub const MAX_SIGNATURES: usize = 100;
/// Cap on a checkpoint's extension lines.
pub const MAX_EXTENSIONS: usize = 16;
/// Cap on one extension line, in bytes.
pub const MAX_EXTENSION_BYTES: usize = 1024;
/// Cap on the origin line, in bytes (a node id's text is 52).
pub const MAX_ORIGIN_BYTES: usize = 256;

/// The `signed-note` signature type of ed25519.
const ED25519_SIGNATURE_TYPE: u8 = 0x01;
/// What starts a signature line: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The tree head a node commits to: its origin, the number of leaves and the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The node id's text (`12D3KooW…`).
    pub origin: String,
    pub size: u64,
    pub root: Hash32,
    /// Opaque extension lines, each non-empty, without the newline.
    pub extensions: Vec<String>,
}

/// Why a note was refused as a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("note is too large ({len} bytes, at most {max})")]
    TooLarge { len: usize, max: usize },
    #[error("note holds a control character other than newline")]
    ControlCharacter,
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by the expected key")]
    NotSigned,
    #[error("more than one signature by the expected key")]
    DuplicateSignature,
    #[error("bad signature")]
    BadSignature,
    #[error("origin is not a node id")]
    OriginNotANode,
    #[error("origin is not {expected}")]
    WrongOrigin { expected: NodeId },
    #[error("malformed checkpoint: {0}")]
    Body(&'static str),
    #[error("a checkpoint of the empty tree must name the empty root")]
    EmptyTreeRoot,
}

/// Why a checkpoint could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignCheckpointError {
    #[error("checkpoint origin is not this node ({signer})")]
    WrongSigner { signer: NodeId },
    #[error(transparent)]
    Invalid(#[from] CheckpointError),
}

impl Checkpoint {
    /// The checkpoint of `node`'s tree of `size` leaves with root `root`, without extensions.
    pub fn new(node: NodeId, size: u64, root: Hash32) -> Checkpoint {
        Checkpoint {
            origin: node.to_string(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// Checks what the note format and this module's bounds require of the fields.
    pub fn check(&self) -> Result<(), CheckpointError> {
        check_key_name(&self.origin).map_err(|_| CheckpointError::Body("origin"))?;
        if self.origin.len() > MAX_ORIGIN_BYTES {
            return Err(CheckpointError::Body("origin too long"));
        }
        if self.extensions.len() > MAX_EXTENSIONS {
            return Err(CheckpointError::Body("too many extension lines"));
        }
        for line in &self.extensions {
            if line.is_empty()
                || line.len() > MAX_EXTENSION_BYTES
                || line.chars().any(char::is_control)
            {
                return Err(CheckpointError::Body("extension line"));
            }
        }
        if self.size == 0 && self.root != EMPTY_ROOT {
            return Err(CheckpointError::EmptyTreeRoot);
        }
        Ok(())
    }

    /// The note text: origin, size, root and extension lines, each ending in a newline.
    pub fn to_note_body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            base64::encode(&self.root.0)
        );
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        body
    }

    /// Signs the checkpoint with `key`, which must be the origin's. Refuses what a verifier
    /// would refuse.
    pub fn sign(&self, key: &Keypair) -> Result<SignedCheckpoint, SignCheckpointError> {
        let signer = key.node_id();
        let name = signer.to_string();
        if self.origin != name {
            return Err(SignCheckpointError::WrongSigner { signer });
        }
        self.check()?;
        let note = sign_note(&self.to_note_body(), &name, key);
        Ok(SignedCheckpoint {
            note,
            checkpoint: self.clone(),
            signer,
        })
    }

    /// Parses a signed checkpoint note and verifies that `node` signed it as its origin.
    pub fn parse_and_verify(note: &str, node: NodeId) -> Result<SignedCheckpoint, CheckpointError> {
        let name = node.to_string();
        let text = open_note(note, &name, node)?;
        let checkpoint = parse_body(text)?;
        if checkpoint.origin != name {
            return Err(CheckpointError::WrongOrigin { expected: node });
        }
        Ok(SignedCheckpoint {
            note: note.to_owned(),
            checkpoint,
            signer: node,
        })
    }
}

/// A checkpoint together with the exact note text its origin signed. Only made by signing or by
/// verifying, so holding one means the signature was checked.
///
/// Serialised as the note text; deserialising verifies it ([`SignedCheckpoint::from_note`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    note: String,
    checkpoint: Checkpoint,
    signer: NodeId,
}

impl SignedCheckpoint {
    /// Parses a note and verifies it against the key its origin line names.
    pub fn from_note(note: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let origin = note.split('\n').next().unwrap_or_default();
        if origin.len() > MAX_ORIGIN_BYTES {
            return Err(CheckpointError::OriginNotANode);
        }
        let node: NodeId = origin
            .parse()
            .map_err(|_| CheckpointError::OriginNotANode)?;
        Checkpoint::parse_and_verify(note, node)
    }

    /// The signed note, exactly as signed.
    pub fn note(&self) -> &str {
        &self.note
    }

    pub fn into_note(self) -> String {
        self.note
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn signer(&self) -> NodeId {
        self.signer
    }

    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    pub fn root(&self) -> Hash32 {
        self.checkpoint.root
    }
}

impl fmt::Debug for SignedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedCheckpoint")
            .field("signer", &self.signer)
            .field("size", &self.checkpoint.size)
            .field("root", &self.checkpoint.root)
            .finish_non_exhaustive()
    }
}

impl Serialize for SignedCheckpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.note)
    }
}

impl<'de> Deserialize<'de> for SignedCheckpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let note = String::deserialize(deserializer)?;
        SignedCheckpoint::from_note(&note).map_err(serde::de::Error::custom)
    }
}

/// The `signed-note` key id of an ed25519 key named `name`.
pub fn key_id(name: &str, key: &NodeId) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519_SIGNATURE_TYPE]);
    hasher.update(key.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let [a, b, c, d, ..] = digest;
    [a, b, c, d]
}

/// Key names are non-empty and hold no Unicode space and no `+`.
fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(CheckpointError::Malformed("key name"));
    }
    Ok(())
}

/// Signs `text` (which ends in a newline) as the key `name`: the text, a blank line and one
/// signature line.
fn sign_note(text: &str, name: &str, key: &Keypair) -> String {
    let signature = key.sign_raw(text.as_bytes());
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&key_id(name, &key.node_id()));
    blob.extend_from_slice(&signature.to_bytes());
    format!(
        "{text}\n{SIGNATURE_PREFIX}{name} {}\n",
        base64::encode(&blob)
    )
}

/// Checks the note's form and its one signature by the key `name` of `key`, and returns the text
/// it covers.
fn open_note<'a>(note: &'a str, name: &str, key: NodeId) -> Result<&'a str, CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::TooLarge {
            len: note.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    if note.bytes().any(|byte| byte < 0x20 && byte != b'\n') {
        return Err(CheckpointError::ControlCharacter);
    }
    // The text ends at the last blank line; what follows is signatures only.
    let split = note.rfind("\n\n").ok_or(CheckpointError::Malformed(
        "no blank line before the signatures",
    ))?;
    let (Some(text), Some(signatures)) = (note.get(..split + 1), note.get(split + 2..)) else {
        return Err(CheckpointError::Malformed(
            "no blank line before the signatures",
        ));
    };
    if signatures.is_empty() || !signatures.ends_with('\n') {
        return Err(CheckpointError::Malformed("signature lines"));
    }
    let verifying_key = key
        .verifying_key()
        .map_err(|_| CheckpointError::BadSignature)?;
    let expected_id = key_id(name, &key);
    let mut verified = false;
    for (count, line) in signatures.split_terminator('\n').enumerate() {
        if count >= MAX_SIGNATURES {
            return Err(CheckpointError::Malformed("too many signatures"));
        }
        let (line_name, encoded) = line
            .strip_prefix(SIGNATURE_PREFIX)
            .and_then(|rest| rest.split_once(' '))
            .ok_or(CheckpointError::Malformed("signature line"))?;
        check_key_name(line_name)?;
        let blob =
            base64::decode(encoded).map_err(|_| CheckpointError::Malformed("signature base64"))?;
        let Some((id, signature)) = blob.split_first_chunk::<4>() else {
            return Err(CheckpointError::Malformed("signature too short"));
        };
        if signature.is_empty() {
            return Err(CheckpointError::Malformed("signature too short"));
        }
        // Signatures by other keys (witness cosignatures, a rotated key) are ignored.
        if line_name != name || *id != expected_id {
            continue;
        }
        if verified {
            return Err(CheckpointError::DuplicateSignature);
        }
        let signature =
            Signature::from_slice(signature).map_err(|_| CheckpointError::BadSignature)?;
        verifying_key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| CheckpointError::BadSignature)?;
        verified = true;
    }
    if verified {
        Ok(text)
    } else {
        Err(CheckpointError::NotSigned)
    }
}

/// Parses verified note text as a checkpoint body.
fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
    let body = text
        .strip_suffix('\n')
        .ok_or(CheckpointError::Body("text must end in a newline"))?;
    let mut lines = body.split('\n');
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(CheckpointError::Body("fewer than three lines"));
    };
    let size = parse_decimal(size).ok_or(CheckpointError::Body("tree size"))?;
    let root = base64::decode_hash(root).map_err(|_| CheckpointError::Body("root hash"))?;
    let mut extensions = Vec::new();
    for line in lines {
        if extensions.len() == MAX_EXTENSIONS {
            return Err(CheckpointError::Body("too many extension lines"));
        }
        extensions.push(line.to_owned());
    }
    let checkpoint = Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
        extensions,
    };
    checkpoint.check()?;
    Ok(checkpoint)
}

/// ASCII decimal without sign or leading zeros (except `0` itself), fitting a `u64`.
fn parse_decimal(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// A larger tree's root at a smaller size, and the consistency proof from that root to the
/// larger tree's root.
///
/// The node answers a witness's "prove your new checkpoint extends the one I hold" with one:
/// `prefix_root` is the root its tree had at the held size. If it equals the held root and the
/// proof verifies, the new checkpoint extends the held one. If the proof verifies but
/// `prefix_root` differs, the node has proven that its new tree does *not* extend the checkpoint
/// it signed before: equivocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PrefixProof {
    /// Base64 in JSON, raw bytes on the wire.
    #[serde(with = "base64::hash")]
    #[cfg_attr(feature = "schemars", schemars(with = "String"))]
    pub prefix_root: Hash32,
    /// RFC 6962 consistency proof; base64 in JSON, raw bytes on the wire.
    #[serde(with = "base64::hashes")]
    #[cfg_attr(feature = "schemars", schemars(with = "Vec<String>"))]
    pub proof: Vec<Hash32>,
}

/// Two validly signed checkpoints of one node that cannot both be prefixes of one tree: a
/// portable, offline-verifiable proof that the node equivocated.
///
/// - Same size, different roots: the two notes suffice.
/// - Different sizes: the notes and a [`PrefixProof`] that verifies from some root at the smaller
///   size to the larger checkpoint's root, where that root differs from the smaller checkpoint's.
///   A consistency proof fixes the prefix root of the tree it leads to (short of a SHA-256
///   collision), so this shows that the larger tree does not extend the smaller checkpoint.
///   Only someone holding the larger tree's nodes can make such a proof; an honest node can never
///   be framed with one. (A proof that merely *fails* would prove nothing: anyone can write a
///   failing proof.)
///
/// The fields are the raw notes; [`Equivocation::verify`] checks everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Equivocation {
    /// A signed checkpoint note.
    pub first: String,
    /// A second signed checkpoint note of the same origin.
    pub second: String,
    /// Required when the sizes differ, absent when they are equal.
    pub fork: Option<PrefixProof>,
}

/// Why an equivocation document proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EquivocationError {
    #[error("first checkpoint: {0}")]
    First(CheckpointError),
    #[error("second checkpoint: {0}")]
    Second(CheckpointError),
    #[error("the checkpoints are signed by different nodes")]
    DifferentSigners,
    #[error("the checkpoints do not conflict")]
    NoConflict,
    #[error("checkpoints of different sizes need a fork proof")]
    MissingForkProof,
    #[error("checkpoints of the same size take no fork proof")]
    UnexpectedForkProof,
    #[error("fork proof: {0}")]
    ForkProof(VerifyProofError),
}

impl Equivocation {
    /// Checks both signatures, that one node signed both, and that the checkpoints conflict.
    /// Returns the equivocating node.
    pub fn verify(&self) -> Result<NodeId, EquivocationError> {
        let first = SignedCheckpoint::from_note(&self.first).map_err(EquivocationError::First)?;
        let second =
            SignedCheckpoint::from_note(&self.second).map_err(EquivocationError::Second)?;
        if first.signer() != second.signer() {
            return Err(EquivocationError::DifferentSigners);
        }
        let (smaller, larger) = if first.size() <= second.size() {
            (&first, &second)
        } else {
            (&second, &first)
        };
        match &self.fork {
            None if smaller.size() == larger.size() => {
                if smaller.root() == larger.root() {
                    return Err(EquivocationError::NoConflict);
                }
            }
            None => return Err(EquivocationError::MissingForkProof),
            Some(_) if smaller.size() == larger.size() => {
                return Err(EquivocationError::UnexpectedForkProof);
            }
            Some(fork) => {
                if fork.prefix_root == smaller.root() {
                    return Err(EquivocationError::NoConflict);
                }
                verify_consistency(
                    smaller.size(),
                    larger.size(),
                    &fork.prefix_root,
                    &larger.root(),
                    &fork.proof,
                )
                .map_err(EquivocationError::ForkProof)?;
            }
        }
        Ok(first.signer())
    }
}

/// Why a witness did not accept a new checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error("new checkpoint: {0}")]
    BadCheckpoint(CheckpointError),
    #[error("checkpoint of size {offered} is older than the one held (size {held})")]
    Stale { held: u64, offered: u64 },
    #[error("consistency with the held checkpoint is not proven: {0}")]
    Unproven(VerifyProofError),
    #[error("the node signed two inconsistent checkpoints")]
    Equivocation(Box<Equivocation>),
}

/// The witness rule: given the checkpoint held for a node, a new note from it and the node's
/// [`PrefixProof`] relating the two trees (from the smaller size to the larger), returns the new
/// checkpoint to hold, or why not.
///
/// - A note that is malformed, or not signed by the held checkpoint's signer as origin, is
///   refused.
/// - Same size: the same root is accepted (e.g. new extension lines); another root is
///   [`WitnessError::Equivocation`].
/// - From a held empty tree: any tree extends it, the proof is not consulted.
/// - Otherwise the proof must verify from `prefix_root` to the larger root. With `prefix_root` the
///   smaller checkpoint's root, a larger new checkpoint is accepted and a smaller one is
///   [`WitnessError::Stale`]; with another `prefix_root` it is [`WitnessError::Equivocation`].
///   A proof that does not verify is [`WitnessError::Unproven`]: keep the held checkpoint and ask
///   again; it is no evidence against the node.
///
/// The first checkpoint seen from a node needs only [`Checkpoint::parse_and_verify`].
pub fn witness(
    held: &SignedCheckpoint,
    new_note: &str,
    proof: &PrefixProof,
) -> Result<SignedCheckpoint, WitnessError> {
    let new = Checkpoint::parse_and_verify(new_note, held.signer())
        .map_err(WitnessError::BadCheckpoint)?;
    let equivocation = |fork| {
        let (first, second) = if held.size() <= new.size() {
            (held.note(), new.note())
        } else {
            (new.note(), held.note())
        };
        WitnessError::Equivocation(Box::new(Equivocation {
            first: first.to_owned(),
            second: second.to_owned(),
            fork,
        }))
    };
    if new.size() == held.size() {
        return if new.root() == held.root() {
            Ok(new)
        } else {
            Err(equivocation(None))
        };
    }
    let (smaller, larger) = if held.size() < new.size() {
        (held, &new)
    } else {
        (&new, held)
    };
    if smaller.size() != 0 {
        verify_consistency(
            smaller.size(),
            larger.size(),
            &proof.prefix_root,
            &larger.root(),
            &proof.proof,
        )
        .map_err(WitnessError::Unproven)?;
        if proof.prefix_root != smaller.root() {
            return Err(equivocation(Some(proof.clone())));
        }
    }
    if new.size() > held.size() {
        Ok(new)
    } else {
        Err(WitnessError::Stale {
            held: held.size(),
            offered: new.size(),
        })
    }
}

#[cfg(test)]
mod tests;
