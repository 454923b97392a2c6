//! Batch verification of many signatures, with the verdict of `verify_strict`.
//!
//! ed25519 batch verification checks one random linear combination of all signature equations
//! with a single multi-scalar multiplication, about 2.5× faster per signature than verifying one
//! at a time. On its own it is **not** strict: `verify_strict` rejects non-canonical and
//! small-order `R`, small-order keys, and is *cofactorless* (it demands `R = [s]B - [k]A`
//! exactly), whereas a batch equation cannot see a difference `R - ([s]B - [k]A)` that is a
//! small-order (torsion) point whenever the random coefficient happens to kill it — and
//! ed25519-dalek derives its coefficients from the batch itself, so a signer could grind one
//! until it does.
//!
//! [`SignatureBatch::verify`] therefore accepts a batch only when all of these hold, and
//! otherwise falls back to `verify_strict` for every signature, one by one, to name the first
//! bad one:
//!
//! 1. every `R` decodes, is canonically encoded and is not of small order; every key is not of
//!    small order (cheap: a decompression and three doublings; what `verify_strict` checks);
//! 2. every distinct key is torsion-free (one scalar multiplication per distinct key, cached for
//!    the batch's lifetime; a ledger has few signers). A key with a torsion component is not
//!    refused by `verify_strict`, so its signatures simply go the individual way;
//! 3. no `R` has a torsion component: `ROUNDS` random subset sums of the `R`s (point additions
//!    only, bits drawn from a caller-supplied secret seed the signer cannot grind against), each
//!    multiplied by the group order. If any `R` has a torsion component, each round misses it
//!    with probability at most 1/2, so all rounds miss it with probability at most
//!    2^-`ROUNDS`;
//! 4. the batch equation holds (ed25519-dalek `verify_batch`).
//!
//! With 1–3, every difference `R - ([s]B - [k]A)` lies in the prime-order subgroup, where the
//! batch equation with 128-bit coefficients is sound; so a batch that passes holds only
//! signatures `verify_strict` accepts (up to the 2^-`ROUNDS` chance of 3 and dalek's 2^-128).
//! A batch that fails never decides anything by itself: the individual strict checks do.

use std::collections::BTreeMap;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

use crate::identity::NodeId;

/// Rounds of the random-subset-sum torsion test on `R` (each halves the chance of missing one).
pub const ROUNDS: usize = 64;

/// One signature to check: what `verify_strict` would be called with.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    /// The document kind, for the error.
    pub kind: &'static str,
    pub signer: NodeId,
    /// The full signed message (domain prefix and bytes).
    pub message: Vec<u8>,
    pub signature: Signature,
}

impl SignatureCheck {
    /// `verify_strict` on this one signature.
    pub fn verify_strict(&self) -> bool {
        self.signer
            .verifying_key()
            .is_ok_and(|key| key.verify_strict(&self.message, &self.signature).is_ok())
    }
}

/// Signatures collected for one batch check, and the per-key torsion cache.
#[derive(Debug)]
pub struct SignatureBatch {
    checks: Vec<SignatureCheck>,
    /// Distinct keys seen so far: `Some(key)` when torsion-free (batchable), `None` when not.
    keys: BTreeMap<NodeId, Option<VerifyingKey>>,
    /// Secret seed for the subset sums; advanced after each batch.
    seed: [u8; 32],
}

impl SignatureBatch {
    /// An empty batch. `seed` must be secret and fresh (from the OS random source): the torsion
    /// test's guarantee rests on the signer not knowing it.
    pub fn new(seed: [u8; 32]) -> SignatureBatch {
        SignatureBatch {
            checks: Vec::new(),
            keys: BTreeMap::new(),
            seed,
        }
    }

    pub fn push(&mut self, check: SignatureCheck) {
        self.checks.push(check);
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Forgets the collected signatures (keeps the key cache).
    pub fn clear(&mut self) {
        self.checks.clear();
    }

    /// Checks every collected signature with `verify_strict`'s verdict; `Err(i)` names the first
    /// bad one (in push order). Keeps the signatures; call [`clear`](Self::clear) after.
    pub fn verify(&mut self) -> Result<(), usize> {
        self.verify_first(self.checks.len())
    }

    /// [`verify`](Self::verify) of the first `n` collected signatures only.
    pub fn verify_first(&mut self, n: usize) -> Result<(), usize> {
        self.checks.truncate(n);
        if self.checks.is_empty() || self.batch_passes() {
            return Ok(());
        }
        match self.checks.iter().position(|check| !check.verify_strict()) {
            Some(index) => Err(index),
            None => Ok(()),
        }
    }

    /// Steps 1–4 of the module doc; `false` means "decide one by one".
    fn batch_passes(&mut self) -> bool {
        let mut keys = Vec::with_capacity(self.checks.len());
        let mut nonces = Vec::with_capacity(self.checks.len());
        for check in &self.checks {
            let Some(key) = batchable_key(&mut self.keys, check.signer) else {
                return false;
            };
            let encoded = CompressedEdwardsY(check.signature.r_bytes().to_owned());
            let Some(nonce) = encoded.decompress() else {
                return false;
            };
            if nonce.compress() != encoded || nonce.is_small_order() {
                return false;
            }
            keys.push(key);
            nonces.push(nonce);
        }
        if !self.nonces_torsion_free(&nonces) {
            return false;
        }
        let messages: Vec<&[u8]> = self.checks.iter().map(|c| c.message.as_slice()).collect();
        let signatures: Vec<Signature> = self.checks.iter().map(|c| c.signature).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    }

    /// Random subset sums of the nonces, each checked for a torsion component.
    fn nonces_torsion_free(&mut self, nonces: &[EdwardsPoint]) -> bool {
        let mut bits = BitStream::new(&self.seed);
        let all_free = (0..ROUNDS).all(|_| {
            let mut sum = EdwardsPoint::default();
            for nonce in nonces {
                if bits.next() {
                    sum += nonce;
                }
            }
            is_torsion_free_vartime(&sum)
        });
        // A fresh seed for the next batch, derived from this one (one-way).
        let next = Sha512::new_with_prefix(b"suanli/v1/batch-seed\0")
            .chain_update(self.seed)
            .finalize();
        self.seed
            .copy_from_slice(next.get(..32).unwrap_or(&[0; 32]));
        all_free
    }
}

/// The key of `signer` if it is torsion-free (checked once per key, then cached).
fn batchable_key(
    keys: &mut BTreeMap<NodeId, Option<VerifyingKey>>,
    signer: NodeId,
) -> Option<VerifyingKey> {
    *keys.entry(signer).or_insert_with(|| {
        let key = signer.verifying_key().ok()?;
        let point = key.to_edwards();
        (!point.is_small_order() && point.is_torsion_free()).then_some(key)
    })
}

/// `[l]P == O`, computed as `[l - 1]P + P` with a variable-time multiplication (`l - 1` is a
/// canonical scalar, `l` is not); curve25519-dalek's own check is constant-time and about twice
/// as slow, and nothing here is secret.
fn is_torsion_free_vartime(point: &EdwardsPoint) -> bool {
    let l_minus_one = -Scalar::ONE;
    let multiple =
        EdwardsPoint::vartime_double_scalar_mul_basepoint(&l_minus_one, point, &Scalar::ZERO);
    (multiple + point).is_identity()
}

/// Pseudo-random bits: SHA-512 of (seed, block counter), 512 bits per block.
struct BitStream<'a> {
    seed: &'a [u8; 32],
    counter: u64,
    block: [u8; 64],
    used: usize,
}

impl<'a> BitStream<'a> {
    fn new(seed: &'a [u8; 32]) -> BitStream<'a> {
        BitStream {
            seed,
            counter: 0,
            block: [0; 64],
            used: 512,
        }
    }

    fn next(&mut self) -> bool {
        if self.used == 512 {
            let digest = Sha512::new_with_prefix(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.block.copy_from_slice(&digest);
            self.counter += 1;
            self.used = 0;
        }
        let byte = self.block.get(self.used / 8).copied().unwrap_or(0);
        let bit = (byte >> (self.used % 8)) & 1 == 1;
        self.used += 1;
        bit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::signed::signing_message;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};

    fn check(key: &Keypair, text: &str) -> SignatureCheck {
        let message = signing_message("note", text.as_bytes());
        SignatureCheck {
            kind: "note",
            signer: key.node_id(),
            signature: key.sign_raw(&message),
            message,
        }
    }

    fn keys() -> Vec<Keypair> {
        (1..=4u8)
            .map(|n| Keypair::from_secret_bytes([n; 32]))
            .collect()
    }

    fn batch_of(n: usize) -> SignatureBatch {
        let keys = keys();
        let mut batch = SignatureBatch::new([7; 32]);
        for i in 0..n {
            batch.push(check(&keys[i % keys.len()], &format!("document {i}")));
        }
        batch
    }

    #[test]
    fn a_valid_batch_passes_without_individual_checks() {
        let mut batch = batch_of(40);
        assert!(batch.batch_passes());
        assert_eq!(batch.verify(), Ok(()));
        assert_eq!(SignatureBatch::new([0; 32]).verify(), Ok(()));
    }

    #[test]
    fn one_bad_signature_is_found_at_its_index() {
        for bad in [0, 1, 17, 39] {
            // A signature over another message.
            let mut batch = batch_of(40);
            batch.checks[bad].message.push(b'!');
            assert_eq!(batch.verify(), Err(bad), "bad message at {bad}");
            // A signature by another key.
            let mut batch = batch_of(40);
            batch.checks[bad].signer = Keypair::from_secret_bytes([99; 32]).node_id();
            assert_eq!(batch.verify(), Err(bad), "wrong signer at {bad}");
        }
        // Two bad ones: the first is named.
        let mut batch = batch_of(40);
        batch.checks[30].message.push(b'!');
        batch.checks[12].message.push(b'!');
        assert_eq!(batch.verify(), Err(12));
    }

    /// A signature whose R carries a torsion component, made by the key's owner so that the
    /// cofactorless equation is off by exactly that torsion point: `verify_strict` refuses it,
    /// and so must the batch, whatever its coefficients.
    #[test]
    fn a_torsion_tweaked_nonce_is_refused_like_verify_strict() {
        let key = Keypair::from_secret_bytes([5; 32]);
        let signing = ed25519_dalek::SigningKey::from_bytes(&key.secret_bytes());
        let public = signing.verifying_key();
        let secret = signing.to_scalar();
        for torsion in EIGHT_TORSION.iter().skip(1) {
            let message = signing_message("note", b"tweaked");
            let r = Scalar::from(123_456_789u64);
            let nonce = EdwardsPoint::mul_base(&r) + torsion;
            let encoded = nonce.compress();
            let hram: [u8; 64] = Sha512::new()
                .chain_update(encoded.as_bytes())
                .chain_update(public.as_bytes())
                .chain_update(&message)
                .finalize()
                .into();
            let challenge = Scalar::from_bytes_mod_order_wide(&hram);
            let s = r + challenge * secret;
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(encoded.as_bytes());
            bytes[32..].copy_from_slice(s.as_bytes());
            let tweaked = SignatureCheck {
                kind: "note",
                signer: key.node_id(),
                message,
                signature: Signature::from_bytes(&bytes),
            };
            assert!(!tweaked.verify_strict());
            for seed in 0..16u8 {
                let mut batch = batch_of(9);
                batch.seed = [seed; 32];
                batch.push(tweaked.clone());
                assert!(!batch.batch_passes(), "torsion {torsion:?} seed {seed}");
                assert_eq!(batch.verify(), Err(9));
            }
        }
    }

    #[test]
    fn vartime_torsion_check_agrees_with_dalek() {
        let prime = ED25519_BASEPOINT_POINT * Scalar::from(987_654_321u64);
        assert!(is_torsion_free_vartime(&prime));
        for torsion in EIGHT_TORSION.iter().skip(1) {
            let mixed = prime + torsion;
            assert_eq!(is_torsion_free_vartime(&mixed), mixed.is_torsion_free());
            assert!(!is_torsion_free_vartime(&mixed));
            assert!(!is_torsion_free_vartime(torsion));
        }
    }

    #[test]
    fn a_small_order_nonce_goes_the_individual_way() {
        let mut batch = batch_of(8);
        let mut bytes = batch.checks[3].signature.to_bytes();
        bytes[..32].copy_from_slice(EIGHT_TORSION[1].compress().as_bytes());
        batch.checks[3].signature = Signature::from_bytes(&bytes);
        assert!(!batch.batch_passes());
        assert_eq!(batch.verify(), Err(3));
    }
}
