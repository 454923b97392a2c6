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
//! 1. every `R` is canonically encoded (y < p), decodes and is not of small order, and every
//!    `s` is canonical (< l): what `verify_strict` checks before its equation;
//! 2. every distinct key is of large order and torsion-free (one scalar multiplication per
//!    distinct key, cached for the batch's lifetime; a ledger has few signers). A key with a
//!    torsion component is not refused by `verify_strict`, so its signatures simply go the
//!    individual way;
//! 3. no `R` has a torsion component: [`ROUNDS`] random subset sums of the `R`s (point
//!    additions only, bits drawn from a caller-supplied secret seed the signer cannot grind
//!    against), each multiplied by the group order. If any `R` has a torsion component, each
//!    round misses it with probability at most 1/2, so all rounds miss it with probability at
//!    most 2^-[`ROUNDS`];
//! 4. the batch equation `[-Σ z·s]B + Σ [z]R + Σ [z·h]A = O` holds, with secret random 128-bit
//!    coefficients `z` from the same seed, computed as one variable-time multi-scalar
//!    multiplication in which the `A` terms of one signer are merged (about n + k + 1 points for
//!    n signatures by k signers, instead of ed25519-dalek `verify_batch`'s 2n + 1).
//!
//! With 1–3, every difference `R - ([s]B - [h]A)` lies in the prime-order subgroup, where a
//! random linear combination with 128-bit secret coefficients vanishes only if every difference
//! does (up to 2^-128); so a batch that passes holds only signatures `verify_strict` accepts
//! (up to 2^-[`ROUNDS`] for step 3). A batch that fails never decides anything by itself: the
//! individual strict checks do, and name the first bad signature.

use std::collections::BTreeMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::Signature;
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
    keys: BTreeMap<NodeId, Option<EdwardsPoint>>,
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
        // Every batch draws from its own seed; the next one is derived one-way from it.
        let seed = self.seed;
        let next = Sha512::new_with_prefix(b"suanli/v1/batch-seed\0")
            .chain_update(seed)
            .finalize();
        self.seed
            .copy_from_slice(next.get(..32).unwrap_or(&[0; 32]));

        let mut coefficients = RandomStream::new(&seed, b"z");
        let n = self.checks.len();
        let mut nonces = Vec::with_capacity(n);
        let mut nonce_weights = Vec::with_capacity(n);
        // Σ z·s for the base point, and Σ z·h per distinct key: a ledger has few signers, so
        // the multi-scalar multiplication has about n + 1 terms instead of 2n + 1.
        let mut base_weight = Scalar::ZERO;
        let mut key_terms: Vec<(NodeId, Scalar, EdwardsPoint)> = Vec::new();
        for check in &self.checks {
            let Some(key) = batchable_key(&mut self.keys, check.signer) else {
                return false;
            };
            let r_bytes: [u8; 32] = check.signature.r_bytes().to_owned();
            if !is_canonical_y(&r_bytes) {
                return false;
            }
            let Some(nonce) = CompressedEdwardsY(r_bytes).decompress() else {
                return false;
            };
            if nonce.is_small_order() {
                return false;
            }
            let Some(s) =
                Option::<Scalar>::from(Scalar::from_canonical_bytes(*check.signature.s_bytes()))
            else {
                return false;
            };
            let hram: [u8; 64] = Sha512::new()
                .chain_update(r_bytes)
                .chain_update(check.signer.as_bytes())
                .chain_update(&check.message)
                .finalize()
                .into();
            let h = Scalar::from_bytes_mod_order_wide(&hram);
            let z = Scalar::from(coefficients.next_u128());
            base_weight += z * s;
            match key_terms
                .iter_mut()
                .find(|(signer, _, _)| *signer == check.signer)
            {
                Some((_, weight, _)) => *weight += z * h,
                None => key_terms.push((check.signer, z * h, key)),
            }
            nonces.push(nonce);
            nonce_weights.push(z);
        }
        if !nonces_torsion_free(&seed, &nonces) {
            return false;
        }
        // [-Σ z·s]B + Σ [z]R + Σ_keys [Σ z·h]A == O
        let scalars = std::iter::once(-base_weight)
            .chain(nonce_weights)
            .chain(key_terms.iter().map(|(_, weight, _)| *weight));
        let points = std::iter::once(ED25519_BASEPOINT_POINT)
            .chain(nonces)
            .chain(key_terms.iter().map(|(_, _, point)| *point));
        EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
    }
}

/// Random subset sums of the nonces (bits from `seed`), each checked for a torsion component.
fn nonces_torsion_free(seed: &[u8; 32], nonces: &[EdwardsPoint]) -> bool {
    let mut bits = RandomStream::new(seed, b"subset");
    (0..ROUNDS).all(|_| {
        let mut sum = EdwardsPoint::default();
        for nonce in nonces {
            if bits.next_bit() {
                sum += nonce;
            }
        }
        is_torsion_free_vartime(&sum)
    })
}

/// Whether 32 bytes encode a y coordinate below p = 2^255 - 19 (the sign bit aside).
/// `verify_strict` compares the recomputed R with the signature's bytes, so it refuses the
/// non-canonical encodings that decompression accepts.
fn is_canonical_y(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    // y ≥ p only for 2^255 - 19 ..= 2^255 - 1: ff…ff7f with a low byte ≥ 0xed.
    !(y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed)
}

/// The key of `signer` as a point if it is torsion-free (checked once per key, then cached).
fn batchable_key(
    keys: &mut BTreeMap<NodeId, Option<EdwardsPoint>>,
    signer: NodeId,
) -> Option<EdwardsPoint> {
    *keys.entry(signer).or_insert_with(|| {
        let point = signer.verifying_key().ok()?.to_edwards();
        (!point.is_small_order() && point.is_torsion_free()).then_some(point)
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

/// Pseudo-random bits and 128-bit numbers: SHA-512 of (label, seed, block counter).
struct RandomStream<'a> {
    seed: &'a [u8; 32],
    label: &'static [u8],
    counter: u64,
    block: [u8; 64],
    /// Bits of `block` used so far.
    used: usize,
}

impl<'a> RandomStream<'a> {
    fn new(seed: &'a [u8; 32], label: &'static [u8]) -> RandomStream<'a> {
        RandomStream {
            seed,
            label,
            counter: 0,
            block: [0; 64],
            used: 512,
        }
    }

    fn refill(&mut self) {
        let digest = Sha512::new_with_prefix(self.label)
            .chain_update(self.seed)
            .chain_update(self.counter.to_le_bytes())
            .finalize();
        self.block.copy_from_slice(&digest);
        self.counter += 1;
        self.used = 0;
    }

    fn next_bit(&mut self) -> bool {
        if self.used == 512 {
            self.refill();
        }
        let byte = self.block.get(self.used / 8).copied().unwrap_or(0);
        let bit = (byte >> (self.used % 8)) & 1 == 1;
        self.used += 1;
        bit
    }

    fn next_u128(&mut self) -> u128 {
        // Whole bytes: round up to a byte boundary, then take 16.
        self.used = self.used.div_ceil(8) * 8;
        if self.used + 128 > 512 {
            self.refill();
        }
        let start = self.used / 8;
        let mut bytes = [0u8; 16];
        if let Some(chunk) = self.block.get(start..start + 16) {
            bytes.copy_from_slice(chunk);
        }
        self.used += 128;
        u128::from_le_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::signed::signing_message;
    use curve25519_dalek::constants::EIGHT_TORSION;

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
    fn canonical_encodings() {
        let mut p_bytes = [0xff; 32];
        p_bytes[0] = 0xed;
        p_bytes[31] = 0x7f;
        assert!(!is_canonical_y(&p_bytes)); // y = p
        p_bytes[0] = 0xec;
        assert!(is_canonical_y(&p_bytes)); // y = p - 1
        p_bytes[31] = 0xff;
        assert!(is_canonical_y(&p_bytes)); // sign bit set, y = p - 1
        p_bytes[0] = 0xee;
        assert!(!is_canonical_y(&p_bytes)); // sign bit set, y = p + 1
        // A non-canonical s (s + l) is refused by verify_strict and by the batch.
        let mut batch = batch_of(8);
        let mut bytes = batch.checks[5].signature.to_bytes();
        let s = Scalar::from_canonical_bytes(bytes[32..].try_into().unwrap()).unwrap();
        let l_minus_one = -Scalar::ONE;
        // s + l as an integer: s + (l - 1) + 1, without reducing.
        let mut wide = [0u8; 32];
        let mut carry = 1u16;
        for (i, (a, b)) in s.as_bytes().iter().zip(l_minus_one.as_bytes()).enumerate() {
            let sum = u16::from(*a) + u16::from(*b) + carry;
            wide[i] = sum as u8;
            carry = sum >> 8;
        }
        bytes[32..].copy_from_slice(&wide);
        batch.checks[5].signature = Signature::from_bytes(&bytes);
        assert!(!batch.checks[5].verify_strict());
        assert!(!batch.batch_passes());
        assert_eq!(batch.verify(), Err(5));
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
