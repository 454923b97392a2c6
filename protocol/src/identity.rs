//! Node identities: [`NodeId`] (an ed25519 public key) and [`Keypair`] (its secret half).
//!
//! A node's id *is* its public key. Its text form is the libp2p `PeerId` form (`12D3KooW…`: the
//! identity multihash of the protobuf-encoded key, in base58), so operators see one id in logs,
//! the API, the CLI and the ledger, and any peer can verify a node's signatures from its id alone.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{PoisonError, RwLock};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity multihash of a protobuf-encoded ed25519 public key, before its 32 bytes: code
/// 0x00 (identity), length 36; `KeyType` = Ed25519 (field 1, `08 01`); the key (field 2, 32
/// bytes, `12 20`). A peer id is these 6 bytes and the key: its text form needs no curve
/// arithmetic.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// The identity of a node: a valid ed25519 public key (32 bytes, a point on the curve that is
/// not of small order).
///
/// Encoded as its 32 raw bytes; decoding rejects bytes that are not a valid public key and
/// small-order ("weak") keys, for which signatures prove nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

/// Why a node id could not be parsed or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("not a peer id: {0}")]
    NotAPeerId(String),
    #[error("peer id does not inline an ed25519 public key")]
    NotEd25519,
    #[error("not a valid ed25519 public key")]
    InvalidKey,
    #[error("small-order (weak) ed25519 public key")]
    WeakKey,
}

impl NodeId {
    /// Accepts 32 bytes that form a valid ed25519 public key of large order.
    ///
    /// A small-order key (one of the eight torsion points, e.g. the identity `01 00…00`) is
    /// refused: with such a key, signatures can be made to verify for many messages without a
    /// secret, so it cannot stand for a node. `verify_strict` refuses them too; refusing them here
    /// means no such id ever reaches a capacity table, a document or a ledger.
    ///
    /// A key that passed these checks before is found in a small cache of validated keys
    /// instead of being decompressed again (the same verdict, without the square root).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<NodeId, NodeIdError> {
        validated_key(&bytes)?;
        Ok(NodeId(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key that verifies this node's signatures.
    pub fn verifying_key(&self) -> Result<VerifyingKey, NodeIdError> {
        validated_key(&self.0)
    }

    /// The libp2p form of this id, built from the bytes (no point decompression: the key was
    /// validated when the id was made).
    pub fn to_peer_id(&self) -> libp2p_identity::PeerId {
        let mut bytes = [0u8; 38];
        bytes[..6].copy_from_slice(&PEER_ID_PREFIX);
        bytes[6..].copy_from_slice(&self.0);
        libp2p_identity::PeerId::from_bytes(&bytes)
            .unwrap_or_else(|_| self.libp2p_public_key().to_peer_id())
    }

    /// The libp2p public key of this id (for the networking layer).
    pub fn libp2p_public_key(&self) -> libp2p_identity::PublicKey {
        // The bytes were validated on construction; a failure here would mean libp2p and
        // ed25519-dalek disagree about validity, which falls back to an unusable id text.
        match libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0) {
            Ok(key) => libp2p_identity::PublicKey::from(key),
            Err(_) => unreachable_key(),
        }
    }

    /// Recovers the node id inlined in a libp2p peer id.
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Result<NodeId, NodeIdError> {
        let multihash = peer.as_ref();
        // Code 0x00 is the identity multihash: the digest is the protobuf-encoded public key.
        if multihash.code() != 0 {
            return Err(NodeIdError::NotEd25519);
        }
        // The canonical encoding of an ed25519 key: take its bytes (one decompression, in
        // `from_bytes`, not two).
        if let Some(key) = multihash.digest().strip_prefix(&PEER_ID_PREFIX[2..])
            && let Ok(key) = <[u8; 32]>::try_from(key)
        {
            return NodeId::from_bytes(key);
        }
        let key = libp2p_identity::PublicKey::try_decode_protobuf(multihash.digest())
            .map_err(|_| NodeIdError::NotEd25519)?
            .try_into_ed25519()
            .map_err(|_| NodeIdError::NotEd25519)?;
        NodeId::from_bytes(key.to_bytes())
    }
}

/// Most keys `VALIDATED_KEYS` holds; it is emptied when full. A node deals with few peers at a
/// time (a ledger has a handful of signers), so this is many more than the working set, and
/// stays small: about 200 bytes per key, some 250 KiB in all.
const MAX_VALIDATED_KEYS: usize = 1024;

/// The keys that passed [`NodeId::from_bytes`]'s checks (decompression and not small-order),
/// decompressed, by their exact 32 bytes.
///
/// Decoding a node id (every signed document names two or three) and verifying a signature both
/// need the key as a point, and a point decompression is a field square root (about 2 µs),
/// which dominated decoding ledger entries. Only keys that passed both checks are stored, keyed
/// by the exact bytes that passed them, so a hit means what the checks would say again: the
/// cache never admits an id the checks refuse. Bounded: cleared when full (a peer flooding new
/// ids only makes the cache useless, never large).
static VALIDATED_KEYS: RwLock<BTreeMap<[u8; 32], VerifyingKey>> = RwLock::new(BTreeMap::new());

/// The decompressed key for `bytes` if they form a valid key of large order.
fn validated_key(bytes: &[u8; 32]) -> Result<VerifyingKey, NodeIdError> {
    let cached = VALIDATED_KEYS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(bytes)
        .copied();
    if let Some(key) = cached {
        return Ok(key);
    }
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| NodeIdError::InvalidKey)?;
    if key.is_weak() {
        return Err(NodeIdError::WeakKey);
    }
    let mut keys = VALIDATED_KEYS
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if keys.len() >= MAX_VALIDATED_KEYS {
        keys.clear();
    }
    keys.insert(*bytes, key);
    Ok(key)
}

#[allow(clippy::panic)]
fn unreachable_key() -> libp2p_identity::PublicKey {
    // NodeId::from_bytes and libp2p both accept exactly the 32-byte compressed Edwards points
    // that decompress; this cannot be reached with a constructed NodeId.
    panic!("NodeId holds a key libp2p rejects")
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_peer_id())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let peer = libp2p_identity::PeerId::from_str(text)
            .map_err(|error| NodeIdError::NotAPeerId(error.to_string()))?;
        NodeId::from_peer_id(&peer)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(deserializer)?;
        NodeId::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

/// A node's signing key. Its [`fmt::Debug`] form never shows the secret.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
    id: NodeId,
}

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct RandomnessError(String);

impl Keypair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Keypair, RandomnessError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|error| RandomnessError(error.to_string()))?;
        Ok(Keypair::from_secret_bytes(secret))
    }

    /// The key whose 32-byte ed25519 secret (seed) is `secret`.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Keypair {
        let signing = SigningKey::from_bytes(&secret);
        let id = NodeId(signing.verifying_key().to_bytes());
        Keypair { signing, id }
    }

    /// The 32-byte secret, for storing the key in the node's data dir.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// Signs `message` as is. Callers sign domain-separated messages only (see [`crate::signed`]).
    pub(crate) fn sign_raw(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }

    /// The same key in libp2p's type, for the networking layer (noise handshakes, gossipsub).
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        let mut secret = self.signing.to_bytes();
        match libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut secret) {
            Ok(secret) => libp2p_identity::ed25519::Keypair::from(secret).into(),
            // A 32-byte slice is always a valid ed25519 secret.
            Err(_) => unreachable_secret(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_secret() -> libp2p_identity::Keypair {
    panic!("32-byte ed25519 secret rejected by libp2p")
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("node_id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    impl proptest::arbitrary::Arbitrary for NodeId {
        type Parameters = ();
        type Strategy = BoxedStrategy<NodeId>;

        fn arbitrary_with(_: ()) -> Self::Strategy {
            any::<[u8; 32]>()
                .prop_map(|seed| Keypair::from_secret_bytes(seed).node_id())
                .boxed()
        }
    }

    /// A fixed key for known-answer tests: the RFC 8032 test 1 secret.
    pub(crate) fn rfc8032_key() -> Keypair {
        let mut secret = [0u8; 32];
        hex::decode_to_slice(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            &mut secret,
        )
        .unwrap();
        Keypair::from_secret_bytes(secret)
    }

    #[test]
    fn known_public_key_and_peer_id() {
        let key = rfc8032_key();
        assert_eq!(
            hex::encode(key.node_id().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let text = key.node_id().to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<NodeId>().unwrap(), key.node_id());
        assert_eq!(
            key.to_libp2p().public().to_peer_id(),
            key.node_id().to_peer_id()
        );
    }

    #[test]
    fn rejects_bad_text_and_bad_keys() {
        assert!(matches!(
            "hello".parse::<NodeId>(),
            Err(NodeIdError::NotAPeerId(_))
        ));
        // A sha256-multihash peer id (RSA-style) carries no inline key.
        let mut sha256_multihash = vec![0x12, 0x20];
        sha256_multihash.extend_from_slice(&[7u8; 32]);
        let hashed = libp2p_identity::PeerId::from_bytes(&sha256_multihash).unwrap();
        assert_eq!(NodeId::from_peer_id(&hashed), Err(NodeIdError::NotEd25519));
        // 32 bytes that are not a point on the curve.
        let bytes = (0u8..=255)
            .map(|y| [y; 32])
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .unwrap();
        assert_eq!(NodeId::from_bytes(bytes), Err(NodeIdError::InvalidKey));
        let encoded = crate::codec::encode(&bytes).unwrap();
        assert!(crate::codec::decode::<NodeId>(&encoded, 64).is_err());
    }

    #[test]
    fn rejects_small_order_keys() {
        // The identity point (y = 1) and the point of order 2 (y = -1): valid encodings of curve
        // points, accepted by `VerifyingKey::from_bytes`, but of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        for weak in [identity, minus_one] {
            assert!(VerifyingKey::from_bytes(&weak).unwrap().is_weak());
            assert_eq!(NodeId::from_bytes(weak), Err(NodeIdError::WeakKey));
            let encoded = crate::codec::encode(&weak).unwrap();
            assert!(crate::codec::decode::<NodeId>(&encoded, 64).is_err());
            // libp2p accepts the key in a peer id; suanli does not.
            let peer = libp2p_identity::PublicKey::from(
                libp2p_identity::ed25519::PublicKey::try_from_bytes(&weak).unwrap(),
            )
            .to_peer_id();
            assert_eq!(NodeId::from_peer_id(&peer), Err(NodeIdError::WeakKey));
            assert_eq!(
                peer.to_string().parse::<NodeId>(),
                Err(NodeIdError::WeakKey)
            );
        }
    }

    /// The validated-key cache answers what the checks would: refused keys stay refused (and are
    /// never stored), a cached key is the key of exactly those bytes, and it stays bounded.
    #[test]
    fn the_key_cache_keeps_the_verdict_and_its_bound() {
        let id = rfc8032_key().node_id();
        for _ in 0..2 {
            assert_eq!(NodeId::from_bytes(*id.as_bytes()), Ok(id));
            assert_eq!(id.verifying_key().unwrap().as_bytes(), id.as_bytes());
        }
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let not_a_point = (0u8..=255)
            .map(|y| [y; 32])
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .unwrap();
        for _ in 0..2 {
            assert_eq!(NodeId::from_bytes(identity), Err(NodeIdError::WeakKey));
            assert_eq!(
                NodeId::from_bytes(not_a_point),
                Err(NodeIdError::InvalidKey)
            );
        }
        let keys = VALIDATED_KEYS
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(!keys.contains_key(&identity) && !keys.contains_key(&not_a_point));
        drop(keys);
        for seed in 0..MAX_VALIDATED_KEYS + 10 {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(seed as u64).to_le_bytes());
            let id = Keypair::from_secret_bytes(secret).node_id();
            assert_eq!(NodeId::from_bytes(*id.as_bytes()), Ok(id));
            let cached = VALIDATED_KEYS
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            assert!(cached <= MAX_VALIDATED_KEYS, "{cached} keys cached");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = rfc8032_key();
        let shown = format!("{key:?}");
        assert!(!shown.contains("9d61b19d"));
        assert!(shown.contains("12D3KooW"));
    }

    proptest! {
        #[test]
        fn text_form_round_trips(id in any::<NodeId>()) {
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
            // The peer id built from the bytes is libp2p's own, and parses back the short way.
            prop_assert_eq!(id.to_peer_id(), id.libp2p_public_key().to_peer_id());
            prop_assert_eq!(NodeId::from_peer_id(&id.to_peer_id()).unwrap(), id);
        }
    }
}
