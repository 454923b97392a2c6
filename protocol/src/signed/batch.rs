//! Batch verification of many signatures, with the verdict of `verify_strict`.
//!
//! ed25519 batch verification checks one random linear combination of all signature equations
//! with a single multi-scalar multiplication. On this machine (release build, 4 signers) it costs
//! about 22–24 µs per signature at 256 signatures and 47–50 µs at 64, against about 50 µs for
//! one `verify_strict`; below [`MIN_BATCH`] signatures it is slower than verifying one at a
//! time (119 µs per signature at 16), so smaller batches are not combined at all.
//!
//! On its own batch verification is **not** strict: `verify_strict` rejects non-canonical and
//! small-order `R`, small-order keys, and is *cofactorless* (it demands `R = [s]B - [k]A`
//! exactly), whereas a batch equation cannot see a difference `R - ([s]B - [k]A)` that is a
//! small-order (torsion) point whenever the random coefficient happens to kill it.
//!
//! [`SignatureBatch::verify`] therefore accepts a batch of at least [`MIN_BATCH`] signatures only
//! when all of these hold, and otherwise falls back to `verify_strict` for every signature of
//! the batch, one by one, to name the first bad one:
//!
//! 1. every `R` is canonically encoded (y < p), decodes and is not of small order, and every
//!    `s` is canonical (< l): what `verify_strict` checks before its equation;
//! 2. every distinct key is of large order and torsion-free (one scalar multiplication per
//!    distinct key, cached for the batch's lifetime; a ledger has few signers). A key with a
//!    torsion component is not refused by `verify_strict`, but one such key sends the **whole**
//!    batch the individual way;
//! 3. no `R` has a torsion component: [`ROUNDS`] random subset sums of the `R`s (point
//!    additions only), each multiplied by the group order. If any `R` has a torsion component,
//!    each round misses it with probability at most 1/2, so all rounds miss it with probability
//!    at most 2^-[`ROUNDS`];
//! 4. the batch equation `[-Σ z·s]B + Σ [z]R + Σ [z·k]A = O` holds, with random 128-bit
//!    coefficients `z`, computed as one variable-time multi-scalar multiplication in which the
//!    `A` terms of one signer are merged (about n + k + 1 points for n signatures by k signers,
//!    instead of ed25519-dalek `verify_batch`'s 2n + 1).
//!
//! The subset bits of step 3 and the coefficients of step 4 are drawn from SHA-512 of a
//! *transcript*: the caller's seed, the number of signatures, and every signature's `R`, key
//! `A`, `s` and challenge `k = H(R ‖ A ‖ M)` (which binds the message), hashed when
//! [`verify`](SignatureBatch::verify) runs, over the final contents. Whoever chooses the
//! signatures therefore cannot know the coefficients before fixing them, and any change to any
//! of them draws fresh coefficients:
//!
//! * with a secret, fresh seed (the OS random source), the coefficients are random and unknown
//!   to the signer: a bad batch passes with probability at most 2^-128 (step 4) plus
//!   2^-[`ROUNDS`] (step 3), per attempt, with nothing to grind offline;
//! * with a known or constant seed (tests, benchmarks, a leaked seed) this is a deterministic
//!   Fiat–Shamir batch like ed25519-dalek's `verify_batch`: a forger must find contents whose
//!   hash kills their error, about 2^128 hash evaluations for a prime-order error (step 4), and
//!   about 2^[`ROUNDS`] for a torsion one (step 3; dalek's own batch does not test torsion at
//!   all). The seed is extra secret entropy, not the basis of soundness.
//!
//! With 1–3, every difference `R - ([s]B - [k]A)` lies in the prime-order subgroup, where a
//! random linear combination with 128-bit coefficients vanishes only if every difference does
//! (up to 2^-128); so a batch that passes holds only signatures `verify_strict` accepts (up to
//! 2^-[`ROUNDS`] for step 3). A batch that fails never decides anything by itself: the
//! individual strict checks do, and name the first bad signature.

use std::collections::BTreeMap;
use std::fmt;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::Signature;
use sha2::{Digest, Sha512};

use crate::identity::NodeId;

/// Rounds of the random-subset-sum torsion test on `R` (each halves the chance of missing one).
pub const ROUNDS: usize = 64;

/// Fewest signatures checked as one batch; smaller batches go to `verify_strict` one by one.
///
/// Measured in release on the reference machine with 4 signers: `verify_strict` costs about
/// 50 µs per signature; the batch costs 119 µs per signature at n = 16 (the [`ROUNDS`] torsion
/// checks and the per-key checks dominate), 47–50 µs at n = 64 and 22–24 µs at n = 256. The
/// break-even is around 64–70 signatures, so below 64 the batch is never faster (2–30× slower
/// for tiny batches).
pub const MIN_BATCH: usize = 64;

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
pub struct SignatureBatch {
    checks: Vec<SignatureCheck>,
    /// Distinct keys seen so far: `Some(key)` when torsion-free (batchable), `None` when not.
    keys: BTreeMap<NodeId, Option<EdwardsPoint>>,
    /// Secret extra entropy for the transcript; advanced after each batch. Never printed.
    seed: [u8; 32],
    /// [`MIN_BATCH`], lowered by tests to exercise the batch path on small ledgers.
    min_batch: usize,
}

impl fmt::Debug for SignatureBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureBatch")
            .field("checks", &self.checks.len())
            .field("keys", &self.keys.len())
            .field("seed", &"<redacted>")
            .field("min_batch", &self.min_batch)
            .finish()
    }
}

/// A signature of the batch once steps 1–2 of the module doc passed.
struct Parsed {
    signer: NodeId,
    nonce: EdwardsPoint,
    key: EdwardsPoint,
    s: Scalar,
    /// The challenge `k = H(R ‖ A ‖ M)`.
    k: Scalar,
}

impl SignatureBatch {
    /// An empty batch. `seed` should be secret and fresh (from the OS random source): it is then
    /// extra entropy the signer cannot grind against. Soundness does not rest on it alone: the
    /// coefficients also hash every signature of the batch (see the module doc), so a known or
    /// constant seed (tests, benchmarks) still gives a deterministic Fiat–Shamir batch.
    pub fn new(seed: [u8; 32]) -> SignatureBatch {
        SignatureBatch {
            checks: Vec::new(),
            keys: BTreeMap::new(),
            seed,
            min_batch: MIN_BATCH,
        }
    }

    /// A batch that combines from `min_batch` signatures on instead of [`MIN_BATCH`] (tests: the
    /// verdict is the same, only the speed differs).
    #[cfg(test)]
    pub(crate) fn with_min_batch(seed: [u8; 32], min_batch: usize) -> SignatureBatch {
        SignatureBatch {
            min_batch: min_batch.max(1),
            ..SignatureBatch::new(seed)
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

    /// [`verify`](Self::verify) of the first `n` collected signatures only (the others are
    /// dropped). Fewer than [`MIN_BATCH`] signatures are checked one by one.
    pub fn verify_first(&mut self, n: usize) -> Result<(), usize> {
        self.checks.truncate(n);
        if self.checks.len() >= self.min_batch && self.batch_passes() {
            return Ok(());
        }
        match self.checks.iter().position(|check| !check.verify_strict()) {
            Some(index) => Err(index),
            None => Ok(()),
        }
    }

    /// Steps 1–4 of the module doc, whatever the batch size; `false` means "decide one by one".
    fn batch_passes(&mut self) -> bool {
        let seed = self.next_seed();
        let Some(parsed) = self.parse() else {
            return false;
        };
        let transcript = transcript(&seed, &self.checks, &parsed);
        nonces_torsion_free(&transcript, &parsed)
            && equation_holds(&parsed, &coefficients(&transcript, parsed.len()))
    }

    /// The seed for this batch; the next batch's is derived one-way from it.
    fn next_seed(&mut self) -> [u8; 32] {
        let seed = self.seed;
        let next = Sha512::new_with_prefix(b"suanli/v1/batch-seed\0")
            .chain_update(seed)
            .finalize();
        for (byte, new) in self.seed.iter_mut().zip(next.iter()) {
            *byte = *new;
        }
        seed
    }

    /// Steps 1–2 of the module doc and the challenges; `None` if any signature fails them.
    fn parse(&mut self) -> Option<Vec<Parsed>> {
        let mut parsed = Vec::with_capacity(self.checks.len());
        for check in &self.checks {
            let key = batchable_key(&mut self.keys, check.signer)?;
            let r_bytes: [u8; 32] = check.signature.r_bytes().to_owned();
            if !is_canonical_y(&r_bytes) {
                return None;
            }
            let nonce = CompressedEdwardsY(r_bytes).decompress()?;
            if nonce.is_small_order() {
                return None;
            }
            let s =
                Option::<Scalar>::from(Scalar::from_canonical_bytes(*check.signature.s_bytes()))?;
            let hram: [u8; 64] = Sha512::new()
                .chain_update(r_bytes)
                .chain_update(check.signer.as_bytes())
                .chain_update(&check.message)
                .finalize()
                .into();
            let k = Scalar::from_bytes_mod_order_wide(&hram);
            parsed.push(Parsed {
                signer: check.signer,
                nonce,
                key,
                s,
                k,
            });
        }
        Some(parsed)
    }
}

/// SHA-512 of the seed and every signature's `R`, `A`, `s` and `k`, in order: the key from
/// which the subset bits and coefficients are drawn.
fn transcript(seed: &[u8; 32], checks: &[SignatureCheck], parsed: &[Parsed]) -> [u8; 64] {
    let mut hasher = Sha512::new_with_prefix(b"suanli/v1/batch-transcript\0")
        .chain_update(seed)
        .chain_update((checks.len() as u64).to_le_bytes());
    for (check, signature) in checks.iter().zip(parsed) {
        hasher.update(check.signature.r_bytes());
        hasher.update(check.signer.as_bytes());
        hasher.update(check.signature.s_bytes());
        hasher.update(signature.k.as_bytes());
    }
    hasher.finalize().into()
}

/// The 128-bit coefficients `z` of step 4, one per signature.
fn coefficients(transcript: &[u8; 64], n: usize) -> Vec<Scalar> {
    let mut stream = RandomStream::new(transcript, b"suanli/v1/batch-z\0");
    (0..n).map(|_| Scalar::from(stream.next_u128())).collect()
}

/// Step 4: `[-Σ z·s]B + Σ [z]R + Σ_keys [Σ z·k]A == O`, the `A` terms of one signer merged (a
/// ledger has few signers, so about n + 1 terms instead of 2n + 1).
fn equation_holds(parsed: &[Parsed], z: &[Scalar]) -> bool {
    let mut base_weight = Scalar::ZERO;
    let mut key_terms: Vec<(NodeId, Scalar, EdwardsPoint)> = Vec::new();
    for (signature, z) in parsed.iter().zip(z) {
        base_weight += z * signature.s;
        match key_terms
            .iter_mut()
            .find(|(signer, _, _)| *signer == signature.signer)
        {
            Some((_, weight, _)) => *weight += z * signature.k,
            None => key_terms.push((signature.signer, z * signature.k, signature.key)),
        }
    }
    let scalars = std::iter::once(-base_weight)
        .chain(z.iter().copied())
        .chain(key_terms.iter().map(|(_, weight, _)| *weight));
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(parsed.iter().map(|signature| signature.nonce))
        .chain(key_terms.iter().map(|(_, _, point)| *point));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
}

/// Nonces per table in step 3. Each round adds a random subset of all nonces; adding them one by
/// one costs about n/2 point additions per round, 32n over the [`ROUNDS`] rounds. Instead, the
/// 2^4 subset sums of each 4 nonces are computed once (11 additions), and a round adds one of
/// them per 4 nonces: about 2.75n + 16n additions. The same bits pick the same subsets, so the
/// sums, and the verdict, are those of the one-by-one way.
const SUBSET_CHUNK: usize = 4;

/// Step 3: random subset sums of the nonces (bits from the transcript), each checked for a
/// torsion component.
fn nonces_torsion_free(transcript: &[u8; 64], parsed: &[Parsed]) -> bool {
    let tables: Vec<[EdwardsPoint; 1 << SUBSET_CHUNK]> =
        parsed.chunks(SUBSET_CHUNK).map(subset_sums).collect();
    let mut bits = RandomStream::new(transcript, b"suanli/v1/batch-subset\0");
    (0..ROUNDS).all(|_| {
        let mut sum = EdwardsPoint::default();
        for (table, chunk) in tables.iter().zip(parsed.chunks(SUBSET_CHUNK)) {
            // Bit j of the pick is nonce j of the chunk, in the order the bits are drawn.
            let pick = (0..chunk.len()).fold(0, |pick, j| pick | usize::from(bits.next_bit()) << j);
            if let Some(subset) = table.get(pick).filter(|_| pick != 0) {
                sum += subset;
            }
        }
        is_torsion_free_vartime(&sum)
    })
}

/// The sums of every subset of `chunk`'s nonces: entry `m` holds the nonces whose bit is set in
/// `m` (entries past `2^chunk.len()` stay unused).
fn subset_sums(chunk: &[Parsed]) -> [EdwardsPoint; 1 << SUBSET_CHUNK] {
    let mut table = [EdwardsPoint::default(); 1 << SUBSET_CHUNK];
    for (j, signature) in chunk.iter().enumerate() {
        let bit = 1usize << j;
        // Subsets whose highest nonce is j: those of the lower nonces, plus nonce j.
        for lower in 0..bit {
            let with = match table.get(lower) {
                Some(sum) if lower != 0 => sum + signature.nonce,
                _ => signature.nonce,
            };
            if let Some(entry) = table.get_mut(bit | lower) {
                *entry = with;
            }
        }
    }
    table
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

/// Pseudo-random bits and 128-bit numbers: SHA-512 of (label, transcript, block counter).
struct RandomStream<'a> {
    seed: &'a [u8; 64],
    label: &'static [u8],
    counter: u64,
    block: [u8; 64],
    /// Bits of `block` used so far.
    used: usize,
}

impl<'a> RandomStream<'a> {
    fn new(seed: &'a [u8; 64], label: &'static [u8]) -> RandomStream<'a> {
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
        // Below the threshold (one by one) and above it (batched, then one by one).
        for n in [40, MIN_BATCH + 16] {
            for bad in [0, 1, 17, 39] {
                // A signature over another message.
                let mut batch = batch_of(n);
                batch.checks[bad].message.push(b'!');
                assert_eq!(batch.verify(), Err(bad), "bad message at {bad} of {n}");
                // A signature by another key.
                let mut batch = batch_of(n);
                batch.checks[bad].signer = Keypair::from_secret_bytes([99; 32]).node_id();
                assert_eq!(batch.verify(), Err(bad), "wrong signer at {bad} of {n}");
            }
            // Two bad ones: the first is named.
            let mut batch = batch_of(n);
            batch.checks[30].message.push(b'!');
            batch.checks[12].message.push(b'!');
            assert_eq!(batch.verify(), Err(12));
        }
    }

    /// Below [`MIN_BATCH`] no batch equation is computed (the seed is not even advanced), and the
    /// bad signature is still named; from [`MIN_BATCH`] on, the batch is used.
    #[test]
    fn small_batches_go_one_by_one() {
        for bad in [0, 5, MIN_BATCH - 2] {
            let mut batch = batch_of(MIN_BATCH - 1);
            batch.checks[bad].message.push(b'!');
            assert_eq!(batch.verify(), Err(bad));
            assert_eq!(batch.seed, [7; 32]);
        }
        let mut batch = batch_of(MIN_BATCH - 1);
        assert_eq!(batch.verify(), Ok(()));
        assert_eq!(batch.seed, [7; 32]);
        let mut batch = batch_of(MIN_BATCH);
        assert_eq!(batch.verify(), Ok(()));
        assert_ne!(batch.seed, [7; 32]);
        // `verify_first` counts only the signatures it checks.
        let mut batch = batch_of(MIN_BATCH + 1);
        batch.checks[3].message.push(b'!');
        assert_eq!(batch.verify_first(MIN_BATCH - 1), Err(3));
        assert_eq!(batch.len(), MIN_BATCH - 1);
    }

    /// The coefficients `batch_passes` would draw for the current contents, as an attacker who
    /// knows the seed can compute them.
    fn predicted_coefficients(batch: &mut SignatureBatch) -> Vec<Scalar> {
        let seed = batch.seed;
        let parsed = batch.parse().unwrap();
        coefficients(&transcript(&seed, &batch.checks, &parsed), parsed.len())
    }

    fn with_s(check: &mut SignatureCheck, s: Scalar) {
        let mut bytes = check.signature.to_bytes();
        bytes[32..].copy_from_slice(s.as_bytes());
        check.signature = Signature::from_bytes(&bytes);
    }

    /// The attack on coefficients that depend on the seed and position only: with a known seed,
    /// adding z7 to s3 and subtracting z3 from s7 leaves `Σ z·s` unchanged, so the batch
    /// equation with those coefficients still holds although signatures 3 and 7 are bad. Now
    /// the coefficients hash the contents, so the tweak itself draws other coefficients.
    #[test]
    fn a_known_seed_cannot_be_exploited() {
        for seed in [[5; 32], [0; 32], [7; 32]] {
            let mut batch = batch_of(MIN_BATCH);
            batch.seed = seed;
            let z = predicted_coefficients(&mut batch);
            let s3 = Scalar::from_canonical_bytes(*batch.checks[3].signature.s_bytes()).unwrap();
            let s7 = Scalar::from_canonical_bytes(*batch.checks[7].signature.s_bytes()).unwrap();
            with_s(&mut batch.checks[3], s3 + z[7]);
            with_s(&mut batch.checks[7], s7 - z[3]);
            assert!(!batch.checks[3].verify_strict());
            assert!(!batch.checks[7].verify_strict());
            // With the coefficients fixed before the tweak, the forgery would pass...
            let tweaked = batch.parse().unwrap();
            assert!(equation_holds(&tweaked, &z));
            // ...but the tweaked batch draws fresh ones, and is refused.
            let fresh = predicted_coefficients(&mut batch);
            assert!(!equation_holds(&tweaked, &fresh));
            assert!(!batch.clone_for_test().batch_passes());
            assert_eq!(batch.verify(), Err(3));
        }
    }

    /// Any change to any signature's `s`, `R`, key or message changes every coefficient.
    #[test]
    fn any_change_draws_fresh_coefficients() {
        let base = batch_of(MIN_BATCH);
        let mut reference = base.clone_for_test();
        let z = predicted_coefficients(&mut reference);
        let other = Keypair::from_secret_bytes([42; 32]);
        for i in [0, 3, 7, MIN_BATCH - 1] {
            let mut changes: Vec<SignatureBatch> = Vec::new();
            // s + 1.
            let mut batch = base.clone_for_test();
            let s = Scalar::from_canonical_bytes(*batch.checks[i].signature.s_bytes()).unwrap();
            with_s(&mut batch.checks[i], s + Scalar::ONE);
            changes.push(batch);
            // Another valid R.
            let mut batch = base.clone_for_test();
            let mut bytes = batch.checks[i].signature.to_bytes();
            let donor = base.checks[(i + 1) % MIN_BATCH].signature.to_bytes();
            bytes[..32].copy_from_slice(&donor[..32]);
            batch.checks[i].signature = Signature::from_bytes(&bytes);
            changes.push(batch);
            // Another message.
            let mut batch = base.clone_for_test();
            batch.checks[i].message.push(b'!');
            changes.push(batch);
            // Another signer (with its own valid signature).
            let mut batch = base.clone_for_test();
            batch.checks[i] = check(&other, &format!("document {i}"));
            changes.push(batch);
            for mut batch in changes {
                let fresh = predicted_coefficients(&mut batch);
                assert_eq!(fresh.len(), z.len());
                assert!(
                    z.iter().zip(&fresh).all(|(old, new)| old != new),
                    "change at {i}"
                );
            }
        }
        // And the seed still counts, as extra entropy.
        let mut batch = base.clone_for_test();
        batch.seed = [8; 32];
        let fresh = predicted_coefficients(&mut batch);
        assert!(z.iter().zip(&fresh).all(|(old, new)| old != new));
    }

    #[test]
    fn debug_does_not_print_the_seed() {
        let batch = batch_of(3);
        let printed = format!("{batch:?}");
        assert!(printed.contains("redacted"), "{printed}");
        assert!(!printed.contains("7, 7"), "{printed}");
    }

    impl SignatureBatch {
        fn clone_for_test(&self) -> SignatureBatch {
            SignatureBatch {
                checks: self.checks.clone(),
                keys: BTreeMap::new(),
                seed: self.seed,
                min_batch: self.min_batch,
            }
        }
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
        let valid = batch_of(MIN_BATCH);
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
                let mut batch = valid.clone_for_test();
                batch.seed = [seed; 32];
                batch.push(tweaked.clone());
                assert!(!batch.batch_passes(), "torsion {torsion:?} seed {seed}");
                assert_eq!(batch.verify(), Err(MIN_BATCH));
            }
        }
    }

    /// The chunked subset sums of step 3 are the sums of the nonces the bits pick, one by one.
    #[test]
    fn subset_sum_tables_hold_every_subset() {
        for n in [1, 3, 4, 5, 9] {
            let mut batch = batch_of(n);
            let parsed = batch.parse().unwrap();
            for chunk in parsed.chunks(SUBSET_CHUNK) {
                let table = subset_sums(chunk);
                for (pick, sum) in table.iter().enumerate().take(1 << chunk.len()) {
                    let expected = chunk
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| pick >> j & 1 == 1)
                        .fold(EdwardsPoint::default(), |sum, (_, s)| sum + s.nonce);
                    assert_eq!(*sum, expected, "pick {pick:b} of {}", chunk.len());
                }
            }
        }
    }

    /// Large batches (a ledger verifies ~1,700 signatures at a time): one bad signature among
    /// many is still named, wherever it is.
    #[test]
    fn one_bad_signature_in_a_large_batch_is_named() {
        let n = 1_100;
        assert!(batch_of(n).batch_passes());
        for bad in [0, 513, n - 1] {
            let mut batch = batch_of(n);
            batch.checks[bad].message.push(b'!');
            assert!(!batch.batch_passes());
            assert_eq!(batch.verify(), Err(bad), "bad message at {bad} of {n}");
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
