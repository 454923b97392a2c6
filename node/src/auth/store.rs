//! The token file, `<data dir>/api-tokens.json`: what `suanli token create/list/revoke` write and
//! what the node reads. It holds each token's SHA-256, never the token; the token itself is
//! printed once, when it is created.
//!
//! The CLI is the file's only writer (under an exclusive `flock` on `api-tokens.lock`, writing a
//! new file and renaming it over the old one, fsynced), so the node and the CLI never need to talk:
//! the node re-reads the file when its size, inode or modification time changes, which it checks
//! before every authenticated request. A revocation is in force from the next request.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data_dir::DataDir;

/// Most tokens in one file (a bound on what the node keeps in memory).
pub const MAX_TOKENS: usize = 10_000;
/// Longest token name.
pub const MAX_NAME_BYTES: usize = 64;
/// A token's text starts with this.
pub const TOKEN_PREFIX: &str = "suanli_";
/// Largest token file the node reads.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// One token's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public id: 16 hex digits, part of the token's text and of every job it submits.
    pub id: String,
    /// Unique among the file's tokens.
    pub name: String,
    /// SHA-256 of the whole token text, hex.
    pub sha256: String,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// Most micro-credits its jobs and model requests may spend, in all.
    #[serde(default)]
    pub quota_micro: Option<u64>,
    /// Most requests per second (a bucket of this size, refilled at this rate).
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// When it was revoked. A revoked token stays in the file, so its jobs keep its name.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

impl TokenRecord {
    /// Why the token may not be used at `now_ms`, if it may not.
    pub fn refusal(&self, now_ms: u64) -> Option<&'static str> {
        if self.revoked_ms.is_some() {
            Some("the token was revoked")
        } else if self.expires_ms.is_some_and(|expires| now_ms >= expires) {
            Some("the token has expired")
        } else {
            None
        }
    }
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub version: u32,
    pub tokens: Vec<TokenRecord>,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn tokens_path(data_dir: &DataDir) -> PathBuf {
    data_dir.root().join("api-tokens.json")
}

fn lock_path(data_dir: &DataDir) -> PathBuf {
    data_dir.root().join("api-tokens.lock")
}

/// SHA-256 of a token's text, hex.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The id part of a token's text (`suanli_<id>_<secret>`), if it has that shape.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && !secret.is_empty()).then_some(id)
}

/// Reads the file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<TokenFile, StoreError> {
    let bytes = match std::fs::File::open(path) {
        Ok(file) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
                &mut bytes,
            )
            .map_err(io(path))?;
            bytes
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(TokenFile::default());
        }
        Err(error) => return Err(io(path)(error)),
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            message: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let file: TokenFile = serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    if file.tokens.len() > MAX_TOKENS {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            message: format!("more than {MAX_TOKENS} tokens"),
        });
    }
    Ok(file)
}

/// What identifies one version of the file: a change of any part means it was rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    inode: u64,
    modified: Option<SystemTime>,
}

/// The file's current stamp; `None` when there is no file.
pub fn stamp(path: &Path) -> Result<Option<Stamp>, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Ok(Some(Stamp {
                len: meta.len(),
                inode,
                modified: meta.modified().ok(),
            }))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io(path)(error)),
    }
}

/// Runs `change` on the file under its exclusive lock and writes the result back durably.
pub fn update<T>(
    data_dir: &DataDir,
    change: impl FnOnce(&mut TokenFile) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let lock_path = lock_path(data_dir);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|errno| io(&lock_path)(errno.into()))?;
    let path = tokens_path(data_dir);
    let mut file = load(&path)?;
    let result = change(&mut file)?;
    if file.tokens.len() > MAX_TOKENS {
        return Err(StoreError::Invalid(format!(
            "a node holds at most {MAX_TOKENS} tokens; revoke and remove some first"
        )));
    }
    file.version = 1;
    let bytes = serde_json::to_vec_pretty(&file).map_err(|error| StoreError::Corrupt {
        path: path.clone(),
        message: error.to_string(),
    })?;
    crate::data_dir::write_private(&path, &bytes)
        .map_err(|error| StoreError::Invalid(error.to_string()))?;
    Ok(result)
}

/// What `suanli token create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub name: String,
    pub expires_ms: Option<u64>,
    pub quota_micro: Option<u64>,
    pub rate_per_sec: Option<f64>,
}

/// Adds a token; returns its record and its text (shown once, never stored).
pub fn create(
    data_dir: &DataDir,
    new: NewToken,
    now_ms: u64,
) -> Result<(TokenRecord, String), StoreError> {
    let name = new.name.trim().to_owned();
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(StoreError::Invalid(format!(
            "token name {name:?}: 1 to {MAX_NAME_BYTES} of a-z, A-Z, 0-9, '-', '_', '.', '@'"
        )));
    }
    if let Some(rate) = new.rate_per_sec
        && !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0)
    {
        return Err(StoreError::Invalid(format!(
            "rate {rate}: must be above 0 and at most 1,000,000 requests per second"
        )));
    }
    let mut random = [0u8; 40];
    getrandom::fill(&mut random).map_err(|error| StoreError::Invalid(error.to_string()))?;
    let id = hex::encode(&random[..8]);
    let token = format!("{TOKEN_PREFIX}{id}_{}", hex::encode(&random[8..]));
    let record = TokenRecord {
        id,
        name,
        sha256: digest(&token),
        created_ms: now_ms,
        expires_ms: new.expires_ms,
        quota_micro: new.quota_micro,
        rate_per_sec: new.rate_per_sec,
        revoked_ms: None,
    };
    update(data_dir, |file| {
        if file.tokens.iter().any(|other| other.name == record.name) {
            return Err(StoreError::Invalid(format!(
                "a token named {:?} exists already",
                record.name
            )));
        }
        file.tokens.push(record.clone());
        Ok(())
    })?;
    Ok((record, token))
}

/// Revokes the token of this name or id; returns it as revoked.
pub fn revoke(data_dir: &DataDir, which: &str, now_ms: u64) -> Result<TokenRecord, StoreError> {
    update(data_dir, |file| {
        let record = file
            .tokens
            .iter_mut()
            .find(|record| record.name == which || record.id == which)
            .ok_or_else(|| StoreError::Invalid(format!("no token named {which:?}")))?;
        record.revoked_ms.get_or_insert(now_ms);
        Ok(record.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, DataDir) {
        let temp = tempfile::tempdir().unwrap();
        let data = DataDir::new(temp.path());
        (temp, data)
    }

    #[test]
    fn a_created_token_is_stored_as_its_digest_only() {
        let (_temp, data) = dir();
        let (record, token) = create(
            &data,
            NewToken {
                name: "alice".into(),
                ..NewToken::default()
            },
            1,
        )
        .unwrap();
        assert_eq!(token_id(&token), Some(record.id.as_str()));
        let text = std::fs::read_to_string(tokens_path(&data)).unwrap();
        assert!(
            !text.contains(&token),
            "the token itself must not be stored"
        );
        assert!(text.contains(&digest(&token)));
        let file = load(&tokens_path(&data)).unwrap();
        assert_eq!(file.tokens, vec![record]);
    }

    #[test]
    fn names_are_unique_and_checked() {
        let (_temp, data) = dir();
        let new = |name: &str| NewToken {
            name: name.into(),
            ..NewToken::default()
        };
        create(&data, new("ci"), 1).unwrap();
        assert!(create(&data, new("ci"), 2).is_err());
        assert!(create(&data, new(""), 2).is_err());
        assert!(create(&data, new("a b"), 2).is_err());
        assert!(create(&data, new(&"x".repeat(65)), 2).is_err());
        let bad_rate = NewToken {
            rate_per_sec: Some(f64::NAN),
            ..new("nan")
        };
        assert!(create(&data, bad_rate, 2).is_err());
        assert_eq!(load(&tokens_path(&data)).unwrap().tokens.len(), 1);
    }

    #[test]
    fn revoking_keeps_the_record_and_refuses_it() {
        let (_temp, data) = dir();
        let (record, _) = create(
            &data,
            NewToken {
                name: "bob".into(),
                expires_ms: Some(100),
                ..NewToken::default()
            },
            1,
        )
        .unwrap();
        assert_eq!(record.refusal(99), None);
        assert_eq!(record.refusal(100), Some("the token has expired"));
        let revoked = revoke(&data, &record.id, 50).unwrap();
        assert_eq!(revoked.refusal(60), Some("the token was revoked"));
        assert!(revoke(&data, "nobody", 60).is_err());
        let stamp_before = stamp(&tokens_path(&data)).unwrap();
        revoke(&data, "bob", 70).unwrap();
        assert_ne!(stamp(&tokens_path(&data)).unwrap(), stamp_before);
    }

    #[test]
    fn token_ids_are_read_from_the_text_shape() {
        assert_eq!(
            token_id("suanli_0123456789abcdef_x"),
            Some("0123456789abcdef")
        );
        assert_eq!(token_id("suanli_0123_x"), None);
        assert_eq!(token_id("suanli_0123456789abcdef_"), None);
        assert_eq!(token_id("Bearer"), None);
    }
}
