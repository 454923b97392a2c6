//! Signed documents: the only way a document crosses a node boundary or enters a ledger.
//!
//! A [`Signed<T>`] keeps the **raw canonical bytes** of `T` exactly as signed, the signer's
//! [`NodeId`] and an ed25519 signature over
//!
//! ```text
//! "suanli/v1/" || T::KIND || "\0" || bytes
//! ```
//!
//! The per-kind prefix (domain separation) means a signature on an offer can never be replayed as a
//! signature on a receipt. Verification uses `verify_strict` (no small-order keys, no malleable
//! signatures), decodes the bytes with the kind's size cap, checks that the signer is the party
//! the document itself names ([`Document::signer`]) and that the document keeps its declared
//! bounds ([`Document::check_bounds`]). The document is never re-encoded. Signing refuses a
//! document that breaks its bounds or whose encoding exceeds the kind's cap, so an honest node
//! never produces what a verifier refuses.
//!
//! A [`CoSigned<T>`] is a signed document plus the countersignature of the second party the
//! document names ([`CoSignedDocument::countersigner`]) over the same message: contracts (requester,
//! then provider) and settlements (provider, then requester).

mod batch;

use std::fmt;
use std::marker::PhantomData;

use ed25519_dalek::Signature;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, DecodeError, EncodeError};
use crate::hash::{self, Hash32};
use crate::identity::{Keypair, NodeId, NodeIdError};

pub use batch::{MIN_BATCH, ROUNDS as BATCH_TORSION_ROUNDS, SignatureBatch, SignatureCheck};

/// A document kind that one party signs.
pub trait Document: Serialize + DeserializeOwned {
    /// The domain-separation tag, e.g. `"offer"`.
    const KIND: &'static str;
    /// The cap on the encoded document.
    const MAX_BYTES: usize;
    /// The party that must sign this document (for co-signed kinds: the one that signs first).
    fn signer(&self) -> NodeId;
    /// Checks the document's declared size bounds (message lengths, list lengths, payload
    /// sizes). Called by [`Signed::sign`] and [`Signed::verify`]. Only bounds that hold whatever
    /// the time: checks against a clock belong to the document's own validation.
    fn check_bounds(&self) -> Result<(), BoundsError> {
        Ok(())
    }
}

/// A field of a document is larger than its declared bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is too large ({len}, at most {max})")]
pub struct BoundsError {
    /// The field, e.g. `"message"` or `"listen_addrs"`.
    pub field: &'static str,
    /// Its size: bytes for text and byte strings, items for lists.
    pub len: usize,
    pub max: usize,
}

impl BoundsError {
    /// `Ok` when `len <= max`, else the error naming `field`.
    pub fn check(field: &'static str, len: usize, max: usize) -> Result<(), BoundsError> {
        if len <= max {
            Ok(())
        } else {
            Err(BoundsError { field, len, max })
        }
    }
}

/// A document kind that a second party countersigns.
pub trait CoSignedDocument: Document {
    /// The party that must countersign.
    fn countersigner(&self) -> NodeId;
}

/// Why a signed document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("bad {kind} signature by {signer}")]
    BadSignature { kind: &'static str, signer: NodeId },
    #[error("{kind} is signed by {actual} but must be signed by {expected}")]
    WrongSigner {
        kind: &'static str,
        expected: NodeId,
        actual: NodeId,
    },
    #[error("{kind} cannot be decoded: {source}")]
    Decode {
        kind: &'static str,
        source: DecodeError,
    },
    #[error("{kind} breaks its bounds: {source}")]
    OutOfBounds {
        kind: &'static str,
        source: BoundsError,
    },
    #[error("signer key: {0}")]
    Key(#[from] NodeIdError),
}

/// Why a document could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{kind} must be signed by {expected}, not by this node ({actual})")]
    WrongSigner {
        kind: &'static str,
        expected: NodeId,
        actual: NodeId,
    },
    #[error("{kind} breaks its bounds: {source}")]
    OutOfBounds {
        kind: &'static str,
        source: BoundsError,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The message an ed25519 signature of a `kind` document covers.
pub fn signing_message(kind: &str, bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(16 + kind.len() + bytes.len());
    message.extend_from_slice(b"suanli/v1/");
    message.extend_from_slice(kind.as_bytes());
    message.push(0);
    message.extend_from_slice(bytes);
    message
}

fn verify_signature(
    kind: &'static str,
    message: &[u8],
    signer: NodeId,
    signature: &Signature,
) -> Result<(), VerifyError> {
    #[cfg(test)]
    counts::verified();
    signer
        .verifying_key()?
        .verify_strict(message, signature)
        .map_err(|_| VerifyError::BadSignature { kind, signer })
}

fn check_party(kind: &'static str, expected: NodeId, actual: NodeId) -> Result<(), VerifyError> {
    if expected == actual {
        Ok(())
    } else {
        Err(VerifyError::WrongSigner {
            kind,
            expected,
            actual,
        })
    }
}

/// A document signed by one party. Use [`Signed::verify`] to read it.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    signer: NodeId,
    #[serde(with = "signature_serde")]
    signature: Signature,
    #[serde(skip)]
    document: PhantomData<fn() -> T>,
}

impl<T: Document> Signed<T> {
    /// Encodes `document` and signs it with `key`, which must belong to `document.signer()`.
    /// Refuses a document that breaks its bounds or encodes to more than `T::MAX_BYTES`: a
    /// verifier would refuse it.
    pub fn sign(document: &T, key: &Keypair) -> Result<Signed<T>, SignError> {
        let expected = document.signer();
        if expected != key.node_id() {
            return Err(SignError::WrongSigner {
                kind: T::KIND,
                expected,
                actual: key.node_id(),
            });
        }
        document
            .check_bounds()
            .map_err(|source| SignError::OutOfBounds {
                kind: T::KIND,
                source,
            })?;
        let bytes = codec::encode(document)?;
        if bytes.len() > T::MAX_BYTES {
            return Err(EncodeError::too_large(bytes.len(), T::MAX_BYTES).into());
        }
        #[cfg(test)]
        counts::signed();
        let signature = key.sign_raw(&signing_message(T::KIND, &bytes));
        Ok(Signed {
            bytes,
            signer: key.node_id(),
            signature,
            document: PhantomData,
        })
    }

    /// Checks the signature, decodes the document, checks that its named signer signed it and
    /// that it keeps its bounds ([`Document::check_bounds`]).
    pub fn verify(&self) -> Result<T, VerifyError> {
        // Refuse oversized bytes before hashing them for the signature check.
        self.check_size()?;
        verify_signature(T::KIND, &self.message(), self.signer, &self.signature)?;
        self.check_document()
    }

    /// Everything [`verify`](Self::verify) checks except the signature, which is added to
    /// `batch` to be checked later with many others ([`SignatureBatch::verify`]). The document
    /// must not be used before that batch has passed.
    pub fn verify_deferred(&self, batch: &mut SignatureBatch) -> Result<T, VerifyError> {
        self.check_size()?;
        let document = self.check_document()?;
        batch.push(SignatureCheck {
            kind: T::KIND,
            signer: self.signer,
            message: self.message(),
            signature: self.signature,
        });
        Ok(document)
    }

    fn check_size(&self) -> Result<(), VerifyError> {
        if self.bytes.len() > T::MAX_BYTES {
            return Err(VerifyError::Decode {
                kind: T::KIND,
                source: DecodeError::TooLarge {
                    len: self.bytes.len(),
                    max: T::MAX_BYTES,
                },
            });
        }
        Ok(())
    }

    /// Decodes the document and checks its named signer and its bounds: all of `verify` but the
    /// size and the signature.
    fn check_document(&self) -> Result<T, VerifyError> {
        let document = self.decode_unverified()?;
        check_party(T::KIND, document.signer(), self.signer)?;
        document
            .check_bounds()
            .map_err(|source| VerifyError::OutOfBounds {
                kind: T::KIND,
                source,
            })?;
        Ok(document)
    }

    /// Decodes the document **without** checking anything. Only for showing data that was
    /// verified before it was stored (ledger listings); never for deciding anything.
    pub fn decode_unverified(&self) -> Result<T, VerifyError> {
        codec::decode(&self.bytes, T::MAX_BYTES).map_err(|source| VerifyError::Decode {
            kind: T::KIND,
            source,
        })
    }

    /// The signed message (prefix and bytes), e.g. for batch verification.
    pub fn message(&self) -> Vec<u8> {
        signing_message(T::KIND, &self.bytes)
    }

    /// The raw canonical bytes of the document, exactly as signed.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn signer(&self) -> NodeId {
        self.signer
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The document's digest: `tagged(KIND, bytes)`. Identifies the document (e.g. the contract
    /// id, the receipt a settlement refers to) independently of who signed it.
    pub fn digest(&self) -> Hash32 {
        hash::tagged(T::KIND, &[&self.bytes])
    }
}

/// A document signed by its first party and countersigned by the second, over the same message.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CoSigned<T> {
    signed: Signed<T>,
    #[serde(with = "signature_serde")]
    countersignature: Signature,
}

impl<T: CoSignedDocument> CoSigned<T> {
    /// Countersigns `signed` with `key`, after checking the first signature and that `key` belongs
    /// to the party the document names as countersigner. Returns the decoded document too, so the
    /// caller can check its terms.
    pub fn countersign(signed: Signed<T>, key: &Keypair) -> Result<(CoSigned<T>, T), CoSignError> {
        let document = signed.verify()?;
        let cosigned =
            Self::countersign_verified(signed, &document, key).map_err(CoSignError::WrongSigner)?;
        Ok((cosigned, document))
    }

    /// [`countersign`](Self::countersign) of a half the caller has verified already (its
    /// [`Signed::verify`] returned `document`): the first signature is not checked again, the
    /// countersigner is. Only for code that holds that verification's result (the contract
    /// engine), hence crate-private.
    pub(crate) fn countersign_verified(
        signed: Signed<T>,
        document: &T,
        key: &Keypair,
    ) -> Result<CoSigned<T>, SignError> {
        let expected = document.countersigner();
        if expected != key.node_id() {
            return Err(SignError::WrongSigner {
                kind: T::KIND,
                expected,
                actual: key.node_id(),
            });
        }
        #[cfg(test)]
        counts::signed();
        let countersignature = key.sign_raw(&signed.message());
        Ok(CoSigned {
            signed,
            countersignature,
        })
    }

    /// Everything [`verify`](Self::verify) checks except the first signature: size, decoding,
    /// the first signer is the party the document names, bounds, and the countersignature by
    /// the countersigner it names. Only for a co-signed document whose [`first`](Self::first)
    /// half is equal (bytes, signer and signature) to one this node signed or verified itself,
    /// so that signature is known good; hence crate-private.
    pub(crate) fn verify_countersignature(&self) -> Result<T, VerifyError> {
        self.signed.check_size()?;
        let document = self.signed.check_document()?;
        verify_signature(
            T::KIND,
            &self.signed.message(),
            document.countersigner(),
            &self.countersignature,
        )?;
        Ok(document)
    }

    /// Checks both signatures and both parties, and decodes the document.
    pub fn verify(&self) -> Result<T, VerifyError> {
        let document = self.signed.verify()?;
        let countersigner = document.countersigner();
        verify_signature(
            T::KIND,
            &self.signed.message(),
            countersigner,
            &self.countersignature,
        )?;
        Ok(document)
    }

    /// [`verify`](Self::verify) with both signatures deferred to `batch`
    /// (see [`Signed::verify_deferred`]).
    pub fn verify_deferred(&self, batch: &mut SignatureBatch) -> Result<T, VerifyError> {
        let document = self.signed.verify_deferred(batch)?;
        batch.push(SignatureCheck {
            kind: T::KIND,
            signer: document.countersigner(),
            message: self.signed.message(),
            signature: self.countersignature,
        });
        Ok(document)
    }

    /// The first party's signed document.
    pub fn first(&self) -> &Signed<T> {
        &self.signed
    }

    pub fn countersignature(&self) -> &Signature {
        &self.countersignature
    }

    pub fn bytes(&self) -> &[u8] {
        self.signed.bytes()
    }

    pub fn digest(&self) -> Hash32 {
        self.signed.digest()
    }

    pub fn decode_unverified(&self) -> Result<T, VerifyError> {
        self.signed.decode_unverified()
    }
}

/// Why countersigning was refused.
#[derive(Debug, thiserror::Error)]
pub enum CoSignError {
    #[error("first signature: {0}")]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    WrongSigner(SignError),
}

// Manual impls: derives would demand `T: Clone` / `T: PartialEq` although only bytes are held.
impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            bytes: self.bytes.clone(),
            signer: self.signer,
            signature: self.signature,
            document: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
            && self.signer == other.signer
            && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for CoSigned<T> {
    fn clone(&self) -> Self {
        CoSigned {
            signed: self.signed.clone(),
            countersignature: self.countersignature,
        }
    }
}

impl<T> PartialEq for CoSigned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.signed == other.signed && self.countersignature == other.countersignature
    }
}

impl<T> Eq for CoSigned<T> {}

impl<T> fmt::Debug for CoSigned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoSigned")
            .field("signed", &self.signed)
            .finish_non_exhaustive()
    }
}

/// This thread's signature checks and signatures, counted in tests to pin what one contract
/// costs (`engine::VERIFIES_PER_CONTRACT`): a re-check that creeps back in fails a test.
#[cfg(test)]
pub(crate) mod counts {
    use std::cell::Cell;

    thread_local! {
        static VERIFIES: Cell<u64> = const { Cell::new(0) };
        static SIGNS: Cell<u64> = const { Cell::new(0) };
    }

    /// `verify_strict` calls made by this thread so far.
    pub(crate) fn verifies() -> u64 {
        VERIFIES.get()
    }

    /// Signatures made by this thread so far (documents and countersignatures).
    pub(crate) fn signs() -> u64 {
        SIGNS.get()
    }

    pub(super) fn verified() {
        VERIFIES.set(VERIFIES.get() + 1);
    }

    pub(super) fn signed() {
        SIGNS.set(SIGNS.get() + 1);
    }
}

/// Signatures travel as 64 raw bytes (length-prefixed); any other length is a decode error.
mod signature_serde {
    use super::*;

    pub fn serialize<S: Serializer>(
        signature: &Signature,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&signature.to_bytes()[..], serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        let bytes: serde_bytes::ByteArray<64> = serde_bytes::deserialize(deserializer)?;
        Ok(Signature::from_bytes(&bytes.into_array()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::tests::rfc8032_key;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        author: NodeId,
        witness: NodeId,
        text: String,
    }

    impl Document for Note {
        const KIND: &'static str = "note";
        const MAX_BYTES: usize = 1024;
        fn signer(&self) -> NodeId {
            self.author
        }
        fn check_bounds(&self) -> Result<(), BoundsError> {
            BoundsError::check("text", self.text.len(), 16)
        }
    }

    impl CoSignedDocument for Note {
        fn countersigner(&self) -> NodeId {
            self.witness
        }
    }

    impl<T: 'static> proptest::arbitrary::Arbitrary for Signed<T> {
        type Parameters = ();
        type Strategy = BoxedStrategy<Signed<T>>;

        fn arbitrary_with(_: ()) -> Self::Strategy {
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<NodeId>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
            )
                .prop_map(|(bytes, signer, r, s)| {
                    let mut signature = [0u8; 64];
                    signature[..32].copy_from_slice(&r);
                    signature[32..].copy_from_slice(&s);
                    Signed {
                        bytes,
                        signer,
                        signature: Signature::from_bytes(&signature),
                        document: PhantomData,
                    }
                })
                .boxed()
        }
    }

    impl<T: 'static> proptest::arbitrary::Arbitrary for CoSigned<T> {
        type Parameters = ();
        type Strategy = BoxedStrategy<CoSigned<T>>;

        fn arbitrary_with(_: ()) -> Self::Strategy {
            (any::<Signed<T>>(), any::<Signed<T>>())
                .prop_map(|(signed, other)| CoSigned {
                    signed,
                    countersignature: other.signature,
                })
                .boxed()
        }
    }

    /// Signs `document` as a dishonest signer would: no signer, bounds or size checks.
    pub(crate) fn sign_unchecked<T: Document>(document: &T, key: &Keypair) -> Signed<T> {
        let bytes = codec::encode(document).unwrap();
        let signature = key.sign_raw(&signing_message(T::KIND, &bytes));
        Signed {
            bytes,
            signer: key.node_id(),
            signature,
            document: PhantomData,
        }
    }

    fn witness_key() -> Keypair {
        Keypair::from_secret_bytes([42; 32])
    }

    fn note() -> Note {
        Note {
            author: rfc8032_key().node_id(),
            witness: witness_key().node_id(),
            text: "hello".into(),
        }
    }

    #[test]
    fn known_answer_signature() {
        let signed = Signed::sign(&note(), &rfc8032_key()).unwrap();
        // ed25519 is deterministic: fixed key + fixed bytes give fixed signature bytes.
        assert_eq!(
            hex::encode(signed.bytes()),
            format!(
                "{}{}0568656c6c6f",
                hex::encode(rfc8032_key().node_id().as_bytes()),
                hex::encode(witness_key().node_id().as_bytes())
            )
        );
        let again = Signed::sign(&note(), &rfc8032_key()).unwrap();
        assert_eq!(signed, again);
        assert_eq!(signed.verify().unwrap(), note());
        assert!(signing_message("note", b"x").starts_with(b"suanli/v1/note\0"));
    }

    #[test]
    fn refuses_to_sign_for_someone_else() {
        assert!(matches!(
            Signed::sign(&note(), &witness_key()),
            Err(SignError::WrongSigner { .. })
        ));
    }

    #[test]
    fn wrong_signer_is_detected() {
        // A document naming the author, signed by another key and relabelled as from the author.
        let mut forged = Signed::sign(
            &Note {
                author: witness_key().node_id(),
                ..note()
            },
            &witness_key(),
        )
        .unwrap();
        // Claims to be from the author: signature check fails.
        forged.signer = rfc8032_key().node_id();
        assert!(matches!(
            forged.verify(),
            Err(VerifyError::BadSignature { .. })
        ));
        // Validly signed by witness, but the document names the author: wrong signer.
        let mut doc = note();
        doc.author = rfc8032_key().node_id();
        let bytes = codec::encode(&doc).unwrap();
        let signature = witness_key().sign_raw(&signing_message("note", &bytes));
        let relabelled: Signed<Note> = Signed {
            bytes,
            signer: witness_key().node_id(),
            signature,
            document: PhantomData,
        };
        assert!(matches!(
            relabelled.verify(),
            Err(VerifyError::WrongSigner { .. })
        ));
    }

    #[test]
    fn bounds_are_enforced_when_signing_and_verifying() {
        let long = Note {
            text: "x".repeat(17),
            ..note()
        };
        let expected = BoundsError {
            field: "text",
            len: 17,
            max: 16,
        };
        assert!(matches!(
            Signed::sign(&long, &rfc8032_key()),
            Err(SignError::OutOfBounds { kind: "note", source }) if source == expected
        ));
        // Signed by hand, bypassing `sign`: the verifier refuses it all the same.
        let signed = sign_unchecked(&long, &rfc8032_key());
        assert_eq!(
            signed.verify(),
            Err(VerifyError::OutOfBounds {
                kind: "note",
                source: expected
            })
        );
        assert!(signed.decode_unverified().is_ok());
    }

    #[test]
    fn refuses_to_sign_more_than_the_cap() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Big(Note);
        impl Document for Big {
            const KIND: &'static str = "big";
            const MAX_BYTES: usize = 70;
            fn signer(&self) -> NodeId {
                self.0.author
            }
        }
        // 64 bytes of ids, 1 length byte, 6 text bytes: 71 > 70.
        let big = Big(Note {
            text: "abcdef".into(),
            ..note()
        });
        assert!(matches!(
            Signed::sign(&big, &rfc8032_key()),
            Err(SignError::Encode(_))
        ));
        let fits = Big(Note {
            text: "abcde".into(),
            ..note()
        });
        assert!(
            Signed::sign(&fits, &rfc8032_key())
                .unwrap()
                .verify()
                .is_ok()
        );
    }

    #[test]
    fn domain_separation() {
        #[derive(Debug, Serialize, Deserialize)]
        struct OtherKind(Note);
        impl Document for OtherKind {
            const KIND: &'static str = "other";
            const MAX_BYTES: usize = 1024;
            fn signer(&self) -> NodeId {
                self.0.author
            }
        }
        let signed = Signed::sign(&note(), &rfc8032_key()).unwrap();
        let encoded = codec::encode(&signed).unwrap();
        let replayed: Signed<OtherKind> = codec::decode(&encoded, 4096).unwrap();
        assert!(matches!(
            replayed.verify(),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn cosigning() {
        let signed = Signed::sign(&note(), &rfc8032_key()).unwrap();
        assert!(CoSigned::countersign(signed.clone(), &rfc8032_key()).is_err());
        let (cosigned, doc) = CoSigned::countersign(signed, &witness_key()).unwrap();
        assert_eq!(doc, note());
        assert_eq!(cosigned.verify().unwrap(), note());
        let mut bad = cosigned.clone();
        bad.countersignature = *bad.signed.signature();
        assert!(bad.verify().is_err());
        // Completing a half verified already: the countersigner is still checked, and the
        // result is the same co-signed document.
        let half = Signed::sign(&note(), &rfc8032_key()).unwrap();
        assert!(CoSigned::countersign_verified(half.clone(), &note(), &rfc8032_key()).is_err());
        let completed = CoSigned::countersign_verified(half, &note(), &witness_key()).unwrap();
        assert_eq!(completed, cosigned);
        // Checking only the countersignature still catches a bad one, and the first signer's
        // party and bounds.
        assert_eq!(completed.verify_countersignature().unwrap(), note());
        assert!(matches!(
            bad.verify_countersignature(),
            Err(VerifyError::BadSignature { .. })
        ));
        let mut relabelled = cosigned.clone();
        relabelled.signed.signer = witness_key().node_id();
        assert!(matches!(
            relabelled.verify_countersignature(),
            Err(VerifyError::WrongSigner { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_flipped_byte_fails_verification(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (cosigned, _) =
                CoSigned::countersign(Signed::sign(&note(), &rfc8032_key()).unwrap(), &witness_key())
                    .unwrap();
            let mut encoded = codec::encode(&cosigned).unwrap();
            let at = index.index(encoded.len());
            encoded[at] ^= 1 << bit;
            // Either it no longer decodes, or it decodes and fails verification.
            if let Ok(tampered) = codec::decode::<CoSigned<Note>>(&encoded, 4096) {
                prop_assert!(tampered.verify().is_err());
            }
        }
    }
}
