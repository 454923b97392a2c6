//! The node's data directory: its key, its config, the peers it knows, its runtime info.
//!
//! ```text
//! <data dir>/
//!   node.key      32-byte ed25519 secret, hex, mode 0600
//!   config.toml   commented configuration (written by `suanli init`)
//!   peers.json    peers seen recently, re-dialled on start (written by the node)
//!   run.json      node id, API address and listen addresses of the running node
//!   api-tokens.json  API tokens' SHA-256 digests, names, quotas (written by `suanli token`;
//!                 see the auth module), and api-tokens.lock beside it
//!   db/           the ledger, job records and blobs (sled; see the ledger module)
//!   checkpoint    the latest signed checkpoint of the ledger (C2SP signed note)
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use suanli_protocol::Keypair;

use crate::config::CONFIG_TEMPLATE;

/// Most peers remembered in `peers.json`.
pub const MAX_PERSISTED_PEERS: usize = 256;
/// Most addresses remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} already holds a node key; pass --force to replace it (the old identity is lost)"
    )]
    KeyExists { path: PathBuf },
    #[error("{path}: not a node key (expected 64 hex digits)")]
    BadKey { path: PathBuf },
    #[error("no data directory: set SUANLI_HOME or pass --data-dir")]
    NoDefault,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A node's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// `--data-dir` if given, else `$SUANLI_HOME`, else the platform data dir + `suanli`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<DataDir, DataDirError> {
        if let Some(path) = flag {
            return Ok(DataDir::new(path));
        }
        if let Some(home) = std::env::var_os("SUANLI_HOME").filter(|home| !home.is_empty()) {
            return Ok(DataDir::new(home));
        }
        dirs::data_dir()
            .map(|dir| DataDir::new(dir.join("suanli")))
            .ok_or(DataDirError::NoDefault)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn peers_path(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    /// The node's database (the storage module's sled directory): the ledger, job records,
    /// blobs and witness state.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }

    /// The last ledger checkpoint this node published, a C2SP signed note (also read by offline
    /// tools such as `suanli ledger export --format tiles --data-dir`).
    pub fn checkpoint_path(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    pub fn run_info_path(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// Creates the directory, a fresh key and the commented config. Refuses to replace an existing
    /// key unless `force`; never overwrites an existing config.
    pub fn init(&self, force: bool) -> Result<Keypair, DataDirError> {
        create_private_dir(&self.root)?;
        let key_path = self.key_path();
        if key_path.exists() && !force {
            return Err(DataDirError::KeyExists { path: key_path });
        }
        let key = Keypair::generate().map_err(|error| DataDirError::Io {
            path: key_path.clone(),
            source: std::io::Error::other(error.to_string()),
        })?;
        write_private(
            &key_path,
            format!("{}\n", hex::encode(key.secret_bytes())).as_bytes(),
        )?;
        let config_path = self.config_path();
        if !config_path.exists() {
            write_atomically(&config_path, CONFIG_TEMPLATE.as_bytes())?;
        }
        Ok(key)
    }

    /// Loads the node key, initialising the directory first if it has none.
    pub fn load_or_init(&self) -> Result<Keypair, DataDirError> {
        if self.key_path().exists() {
            self.load_key()
        } else {
            self.init(false)
        }
    }

    pub fn load_key(&self) -> Result<Keypair, DataDirError> {
        let path = self.key_path();
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret)
            .map_err(|_| DataDirError::BadKey { path })?;
        Ok(Keypair::from_secret_bytes(secret))
    }

    /// Peers remembered from an earlier run; a missing or unreadable file is an empty list.
    pub fn load_peers(&self) -> PersistedPeers {
        let path = self.peers_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<PersistedPeers>(&bytes)
                .map(PersistedPeers::bounded)
                .unwrap_or_else(|error| {
                    tracing::warn!(path = %path.display(), %error, "ignoring unreadable peers file");
                    PersistedPeers::default()
                }),
            Err(_) => PersistedPeers::default(),
        }
    }

    pub fn save_peers(&self, peers: &PersistedPeers) -> Result<(), DataDirError> {
        let path = self.peers_path();
        let bytes = serde_json::to_vec_pretty(peers).map_err(|error| DataDirError::Io {
            path: path.clone(),
            source: std::io::Error::other(error),
        })?;
        write_atomically(&path, &bytes)
    }

    pub fn save_run_info(&self, info: &RunInfo) -> Result<(), DataDirError> {
        let path = self.run_info_path();
        let bytes = serde_json::to_vec_pretty(info).map_err(|error| DataDirError::Io {
            path: path.clone(),
            source: std::io::Error::other(error),
        })?;
        write_atomically(&path, &bytes)
    }

    /// The last checkpoint note this node published, if any. Not verified here.
    pub fn load_checkpoint_note(&self) -> Result<Option<String>, DataDirError> {
        let path = self.checkpoint_path();
        match std::fs::read_to_string(&path) {
            Ok(note) => Ok(Some(note)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(DataDirError::Io {
                path,
                source: error,
            }),
        }
    }

    /// Replaces the published checkpoint note; durable (file and directory fsynced) on return.
    pub fn save_checkpoint_note(&self, note: &str) -> Result<(), DataDirError> {
        write_private(&self.checkpoint_path(), note.as_bytes())
    }

    pub fn remove_run_info(&self) {
        let _ = std::fs::remove_file(self.run_info_path());
    }
}

/// Peers to re-dial on start: node id (text) → multiaddrs (text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedPeers {
    pub peers: BTreeMap<String, Vec<String>>,
}

impl PersistedPeers {
    fn bounded(mut self) -> PersistedPeers {
        while self.peers.len() > MAX_PERSISTED_PEERS {
            self.peers.pop_last();
        }
        for addrs in self.peers.values_mut() {
            addrs.truncate(MAX_ADDRS_PER_PEER);
        }
        self
    }
}

/// What a running node writes so scripts and tests can find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub node_id: String,
    pub api: String,
    pub listen_addrs: Vec<String>,
    pub pid: u32,
}

fn create_private_dir(path: &Path) -> Result<(), DataDirError> {
    std::fs::create_dir_all(path).map_err(io_error(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(path))?;
    }
    Ok(())
}

/// Writes a file readable by its owner only (mode 0600), replacing any old one atomically and
/// durably (the file and its directory are fsynced).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(bytes).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("node"));
        let key = data.init(false).unwrap();
        assert_eq!(data.load_key().unwrap().node_id(), key.node_id());
        assert!(matches!(
            data.init(false),
            Err(DataDirError::KeyExists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.key_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let replaced = data.init(true).unwrap();
        assert_ne!(replaced.node_id(), key.node_id());
        assert!(data.config_path().exists());
    }

    #[test]
    fn bad_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        std::fs::write(data.key_path(), "not hex").unwrap();
        assert!(matches!(data.load_key(), Err(DataDirError::BadKey { .. })));
    }

    #[test]
    fn peers_round_trip_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.load_peers(), PersistedPeers::default());
        let mut peers = PersistedPeers::default();
        peers
            .peers
            .insert("a".into(), vec!["/ip4/127.0.0.1/tcp/1".into()]);
        data.save_peers(&peers).unwrap();
        assert_eq!(data.load_peers(), peers);
        std::fs::write(data.peers_path(), "{garbage").unwrap();
        assert_eq!(data.load_peers(), PersistedPeers::default());
    }
}
