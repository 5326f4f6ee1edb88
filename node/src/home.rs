//! The node's home directory: key, settings, store, daemon record.
//!
//! ```text
//! HOME/
//!   node.key      Ed25519 PKCS#8, mode 0600
//!   node.toml     name = "..."
//!   store/        sled database (locked while open)
//!   daemon.json   {"pid", "http", "node_id"} while `fieldmesh run` is up
//! ```

use anyhow::{Context, Result, bail};
use fieldmesh_crypto::NodeKey;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Resolved paths of one node home.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    name: String,
}

/// Written by the daemon so that CLI commands can reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub pid: u32,
    pub http: String,
    pub node_id: String,
    /// libp2p peer id, when the network runs.
    #[serde(default)]
    pub peer_id: Option<String>,
    /// Bound network addresses (QUIC and TCP multiaddrs).
    #[serde(default)]
    pub listen: Vec<String>,
}

impl Home {
    /// `--home`, else `$FIELDMESH_HOME` (handled by clap), else `~/.fieldmesh`.
    pub fn resolve(arg: Option<PathBuf>) -> Result<Home> {
        let root = match arg {
            Some(p) => p,
            None => {
                let home = std::env::var_os("HOME")
                    .context("neither --home, FIELDMESH_HOME nor HOME is set")?;
                Path::new(&home).join(".fieldmesh")
            }
        };
        Ok(Home { root })
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn settings_path(&self) -> PathBuf {
        self.root.join("node.toml")
    }
    pub fn store_path(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn daemon_path(&self) -> PathBuf {
        self.root.join("daemon.json")
    }

    /// Creates the home with a fresh key. Refuses to touch an existing identity.
    pub fn init(&self, name: &str) -> Result<NodeKey> {
        if self.key_path().exists() {
            let existing = NodeKey::load(&self.key_path())?;
            bail!(
                "{} is already initialised as node {}",
                self.root.display(),
                existing.node_id()
            );
        }
        validate_name(name)?;
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", self.root.display()))?;
        let key = NodeKey::create(&self.key_path())?;
        let settings = toml::to_string(&Settings {
            name: name.to_owned(),
        })?;
        std::fs::write(self.settings_path(), settings)
            .with_context(|| format!("writing {}", self.settings_path().display()))?;
        Ok(key)
    }

    /// Loads the key, with a helpful error when the home was never initialised.
    pub fn key(&self) -> Result<NodeKey> {
        if !self.key_path().exists() {
            bail!(
                "{} is not initialised: run `fieldmesh --home {} init` first",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(NodeKey::load(&self.key_path())?)
    }

    pub fn name(&self) -> Result<String> {
        let path = self.settings_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let s: Settings =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(s.name)
    }

    pub fn daemon(&self) -> Result<Option<DaemonRecord>> {
        match std::fs::read(self.daemon_path()) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).context("daemon.json is malformed")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading daemon.json"),
        }
    }

    pub fn write_daemon(&self, rec: &DaemonRecord) -> Result<()> {
        write_atomic(&self.daemon_path(), &serde_json::to_vec_pretty(rec)?)
    }

    pub fn remove_daemon(&self) {
        let _ = std::fs::remove_file(self.daemon_path());
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        bail!("node name must be 1-64 printable characters");
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash or a pulled power cable leaves the old file
/// or the whole new one, never a truncated file under the final name: a temporary file
/// beside it (created afresh, never through a planted link), synced, renamed over `path`,
/// and the directory synced. Readable by the owner only (what is written is often
/// decrypted traffic). On failure (a full disk) nothing is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Unique to this write: two writers in one process (or a process whose id was
    // used before a crash) never share it, and only the file made here is removed.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (tmp, mut f) = loop {
        let tmp = dir.join(format!(
            ".{}.{}.{}.partial",
            name.to_string_lossy(),
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
    };
    let written = (|| -> std::io::Result<()> {
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("map.bin");
        std::fs::write(&out, b"old").unwrap();
        write_atomic(&out, b"new bytes").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new bytes");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A relative name in the working directory's sense has a parent of "".
        assert!(write_atomic(Path::new(""), b"x").is_err());
        // A failed write (here the rename: the name is a directory) leaves the target as
        // it was and no temporary file.
        let taken = dir.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        let e = write_atomic(&taken, b"data").unwrap_err();
        assert!(format!("{e:#}").contains("taken"), "{e:#}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["map.bin", "taken"]);
    }

    /// Writers of one file in one process (the daemon's settings) never share a
    /// temporary file: each write succeeds whole.
    #[test]
    fn concurrent_writers_of_one_file_each_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("settings.json");
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let out = &out;
                s.spawn(move || {
                    for _ in 0..25 {
                        write_atomic(out, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&out).unwrap();
        assert!(got.len() == 4096 && got.iter().all(|b| *b == got[0]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
