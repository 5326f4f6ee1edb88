//! The node identity: an Ed25519 key pair kept in a PKCS#8 file readable only by its owner.

use fieldmesh_core::{NodeId, SIGNATURE_LEN, Signer};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Loading, creating or saving a key file failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is readable by others than its owner.
    #[error("key file {path} has mode {mode:o}; it must be 600 (run: chmod 600 {path})")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its current permission bits.
        mode: u32,
    },
    /// The file is not an Ed25519 PKCS#8 key.
    #[error("key file {path} is not a valid Ed25519 PKCS#8 key: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What ring said.
        reason: String,
    },
    /// Creating a key would overwrite an existing one.
    #[error("key file {0} already exists; refusing to overwrite a node identity")]
    Exists(PathBuf),
    /// The system random source failed.
    #[error("system random number generator failed")]
    Rng,
}

/// A node's signing key. Its public half is the [`NodeId`].
pub struct NodeKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
    seed: [u8; 32],
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh key from the system random source.
    pub fn generate() -> Result<NodeKey, KeyFileError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyFileError::Rng)?;
        let pkcs8 = doc.as_ref().to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyFileError::Rng)?;
        let seed = seed_of(&pkcs8, &pair).ok_or(KeyFileError::Rng)?;
        Ok(NodeKey { pair, pkcs8, seed })
    }

    /// A key derived from a 32-byte seed: for tests and the simulator only.
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32-byte seed is a key");
        NodeKey {
            pair,
            pkcs8: Vec::new(),
            seed,
        }
    }

    /// Loads a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<NodeKey, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let pkcs8 = std::fs::read(path).map_err(io)?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let seed = seed_of(&pkcs8, &pair).ok_or_else(|| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: "not a PKCS#8 v2 Ed25519 document".into(),
        })?;
        Ok(NodeKey { pair, pkcs8, seed })
    }

    /// Generates a key and writes it to `path` with mode 0600, durably. Fails if the file
    /// exists.
    pub fn create(path: &Path) -> Result<NodeKey, KeyFileError> {
        if path.exists() {
            return Err(KeyFileError::Exists(path.to_owned()));
        }
        let key = NodeKey::generate()?;
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        // Created afresh: a file or link already at the temporary name (left by a crash,
        // or planted) is removed, never written through (mode 0600 applies only to a new
        // file, and a link would send the key wherever it points).
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&key.pkcs8).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(key)
    }

    /// The public key, which is the node id.
    pub fn node_id(&self) -> NodeId {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.pair.public_key().as_ref());
        NodeId(id)
    }
}

/// The 32-byte private seed inside a ring PKCS#8 v2 Ed25519 document (bytes 16..48),
/// checked by re-deriving the public key from it.
fn seed_of(pkcs8: &[u8], pair: &Ed25519KeyPair) -> Option<[u8; 32]> {
    let seed: [u8; 32] = pkcs8.get(16..48)?.try_into().ok()?;
    let again = Ed25519KeyPair::from_seed_unchecked(&seed).ok()?;
    (again.public_key().as_ref() == pair.public_key().as_ref()).then_some(seed)
}

impl NodeKey {
    /// The private seed, for deriving the transport identity (libp2p uses the same
    /// Ed25519 key, so the peer id is the node id). Never log or store it elsewhere.
    pub fn transport_seed(&self) -> [u8; 32] {
        self.seed
    }
}

impl Signer for NodeKey {
    fn node_id(&self) -> NodeId {
        NodeKey::node_id(self)
    }
    fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let k = NodeKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(NodeKey::load(&path).unwrap().node_id(), k.node_id());
        assert_eq!(
            NodeKey::load(&path).unwrap().transport_seed(),
            k.transport_seed()
        );
        let again = Ed25519KeyPair::from_seed_unchecked(&k.transport_seed()).unwrap();
        assert_eq!(again.public_key().as_ref(), &k.node_id().0);
        assert!(matches!(
            NodeKey::create(&path),
            Err(KeyFileError::Exists(_))
        ));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::write(&path, b"not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            NodeKey::load(&path),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    /// A link planted at the temporary name is removed, not written through: the key
    /// never lands where it points.
    #[test]
    fn a_planted_temporary_file_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let elsewhere = dir.path().join("world-readable");
        std::os::unix::fs::symlink(&elsewhere, path.with_extension("tmp")).unwrap();
        NodeKey::create(&path).unwrap();
        assert!(!elsewhere.exists(), "nothing written through the link");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn seeded_keys_are_stable_and_distinct() {
        assert_eq!(
            NodeKey::from_seed([1; 32]).node_id(),
            NodeKey::from_seed([1; 32]).node_id()
        );
        assert_ne!(
            NodeKey::from_seed([1; 32]).node_id(),
            NodeKey::from_seed([2; 32]).node_id()
        );
    }
}
