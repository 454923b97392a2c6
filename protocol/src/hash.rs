//! SHA-256 digests and the tagged hashes that derive suanli's identifiers.
//!
//! Content hashes (module, stdin, output) are plain SHA-256 of the bytes, so `sha256sum` agrees
//! with them. Derived identifiers use [`tagged`]: `SHA-256("suanli/v1/<tag>\0" || parts…)`, so a
//! hash computed for one purpose can never be mistaken for another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 digest. Its text form is 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The all-zero hash: the `prev_hash` of the first ledger entry.
    pub const ZERO: Hash32 = Hash32([0; 32]);

    /// Plain SHA-256 of `bytes` (content hashes).
    pub fn of(bytes: &[u8]) -> Hash32 {
        Hash32(Sha256::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// `SHA-256("suanli/v1/" || tag || "\0" || parts…)`: a domain-separated hash.
pub fn tagged(tag: &str, parts: &[&[u8]]) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update(b"suanli/v1/");
    hasher.update(tag.as_bytes());
    hasher.update([0u8]);
    for part in parts {
        hasher.update(part);
    }
    Hash32(hasher.finalize().into())
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex digits")]
pub struct ParseHashError;

impl FromStr for Hash32 {
    type Err = ParseHashError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| ParseHashError)?;
        Ok(Hash32(bytes))
    }
}

/// Declares a newtype identifier over [`Hash32`] with the same text form.
macro_rules! hash_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $name(pub $crate::hash::Hash32);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::hash::ParseHashError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map($name)
            }
        }
    };
}
pub(crate) use hash_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            Hash32::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            tagged("job-id", &[b"abc"]).to_hex(),
            hex::encode(Sha256::digest(b"suanli/v1/job-id\0abc"))
        );
    }

    #[test]
    fn text_round_trip() -> Result<(), ParseHashError> {
        let hash = Hash32::of(b"x");
        assert_eq!(hash.to_string().parse::<Hash32>()?, hash);
        assert!("zz".parse::<Hash32>().is_err());
        assert!(format!("{hash}0").parse::<Hash32>().is_err());
        Ok(())
    }
}
