//! The canonical codec: the only module that knows how suanli values become bytes.
//!
//! Encoding is bincode 2 (serde, standard config: little-endian, variable-length integers).
//! Decoding is defensive by construction:
//! - the input length is checked against the caller's cap before anything is read;
//! - bincode runs with a hard allocation/read limit ([`DECODE_LIMIT`]), so a length prefix can
//!   never make it reserve more memory than the cap allows;
//! - trailing bytes are an error, so one value has one accepted byte string of a given length;
//! - no input can make it panic (checked by property tests on random and truncated bytes).
//!
//! Varints are not canonical (a value has several encodings). suanli therefore signs, hashes and
//! stores the *raw bytes it received* and never re-encodes a value to verify it.
//!
//! Top-level messages (wire requests and responses, gossip payloads, ledger entries) are framed as
//! one protocol version byte followed by the bincode payload: [`encode_framed`] / [`decode_framed`].

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version carried in the first byte of every framed message.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest input any decoder accepts (32 MiB); each message kind has a smaller cap of its own.
pub const DECODE_LIMIT: usize = 32 * 1024 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encoding a value failed (only for values that cannot be represented, which suanli's types
/// never are; kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("encode: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    /// The encoded value exceeds the cap of its kind.
    pub fn too_large(len: usize, max: usize) -> EncodeError {
        EncodeError(format!("{len} bytes exceeds the cap of {max} bytes"))
    }
}

/// Why some bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty message")]
    Empty,
    #[error("unsupported protocol version {found} (this node speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("{trailing} trailing bytes after the value")]
    TrailingBytes { trailing: usize },
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Encodes `value` as raw bincode (no version byte): the canonical bytes of a document.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|error| EncodeError(error.to_string()))
}

/// Decodes exactly one `T` from `bytes`, which must be at most `max_len` bytes long.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    let max = max_len.min(DECODE_LIMIT);
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (value, consumed) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    match bytes.len().checked_sub(consumed) {
        Some(0) => Ok(value),
        Some(trailing) => Err(DecodeError::TrailingBytes { trailing }),
        None => Err(DecodeError::Malformed("read past the end".into())),
    }
}

/// Encodes `value` behind the protocol version byte.
pub fn encode_framed<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(PROTOCOL_VERSION);
    bincode::serde::encode_into_std_write(value, &mut bytes, config())
        .map_err(|error| EncodeError(error.to_string()))?;
    Ok(bytes)
}

/// Decodes a framed message of at most `max_len` bytes (version byte included).
pub fn decode_framed<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&PROTOCOL_VERSION, payload)) => decode(payload, max_len),
        Some((&found, _)) => Err(DecodeError::UnsupportedVersion { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_and_known_bytes() -> Result<(), Box<dyn std::error::Error>> {
        let value = (7u64, String::from("hi"), vec![1u8, 2]);
        let bytes = encode(&value)?;
        // varint 7, len 2 "hi", len 2 [1, 2]
        assert_eq!(bytes, [7, 2, b'h', b'i', 2, 1, 2]);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes, 64)?, value);
        let framed = encode_framed(&value)?;
        assert_eq!(framed.first(), Some(&PROTOCOL_VERSION));
        assert_eq!(decode_framed::<(u64, String, Vec<u8>)>(&framed, 64)?, value);
        Ok(())
    }

    #[test]
    fn trailing_bytes_rejected() -> Result<(), EncodeError> {
        let mut bytes = encode(&5u32)?;
        bytes.push(0);
        assert_eq!(
            decode::<u32>(&bytes, 64),
            Err(DecodeError::TrailingBytes { trailing: 1 })
        );
        Ok(())
    }

    #[test]
    fn unknown_version_is_a_clear_error() -> Result<(), EncodeError> {
        let mut bytes = encode_framed(&5u32)?;
        if let Some(version) = bytes.first_mut() {
            *version = 9;
        }
        let error = decode_framed::<u32>(&bytes, 64).unwrap_err();
        assert_eq!(error, DecodeError::UnsupportedVersion { found: 9 });
        assert!(error.to_string().contains("unsupported protocol version 9"));
        assert_eq!(decode_framed::<u32>(&[], 64), Err(DecodeError::Empty));
        Ok(())
    }

    #[test]
    fn oversized_input_rejected_before_decoding() {
        let bytes = vec![0u8; 100];
        assert_eq!(
            decode::<Vec<u8>>(&bytes, 10),
            Err(DecodeError::TooLarge { len: 100, max: 10 })
        );
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate() {
        // A varint length of u64::MAX - 1 (0xfd = u64 marker) followed by nothing: bincode must
        // refuse the claim instead of reserving memory for it.
        let mut bytes = vec![0xfdu8];
        bytes.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes, 64).is_err());
        assert!(decode::<Vec<u64>>(&bytes, 64).is_err());
        assert!(decode::<String>(&bytes, 64).is_err());
        assert!(decode::<BTreeMap<String, String>>(&bytes, 64).is_err());
        assert!(decode::<Vec<Vec<u8>>>(&bytes, 64).is_err());
    }
}
