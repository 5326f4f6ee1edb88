//! The model registry: models are signed artifacts.
//!
//! ```text
//! HOME/models/registry.json          name → versions (signed manifests), active version
//! HOME/models/store/<digest>/FILE    the files of one version, content-addressed
//! ```
//!
//! A manifest names the model, its format, every file with its SHA-256 and size, the
//! licence and source, and is signed by the node that imported it. Loading a model checks
//! the signature (by this node or a trusted authority) and re-hashes every file first: a
//! model whose bytes or manifest changed is refused. Earlier versions stay for rollback.

use anyhow::{Context, Result, anyhow, bail};
use fieldmesh_core::{NodeId, Signer};
use fieldmesh_crypto::NodeKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What kind of artifact a model is, and so which runtime loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A quantized language model in one GGUF file (tokenizer in its metadata).
    Gguf,
    /// A Whisper model in whisper.cpp's ggml format.
    WhisperGgml,
    /// A BERT sentence-embedding model: config.json, tokenizer.json, model.safetensors.
    Bert,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// The signed part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestBody {
    pub name: String,
    pub format: Format,
    /// SHA-256 over the file entries: the model's identity.
    pub sha256: String,
    pub size: u64,
    pub files: Vec<FileEntry>,
    pub licence: String,
    pub source: String,
    pub imported_ms: u64,
    pub signer: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub manifest: ManifestBody,
    /// Ed25519 by `signer` over the canonical JSON of `manifest`, hex.
    pub signature: String,
}

impl ManifestBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = b"fieldmesh/model-manifest/v1\n".to_vec();
        b.extend_from_slice(serde_json::to_string(self).unwrap_or_default().as_bytes());
        b
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// Name → versions, oldest first.
    pub models: BTreeMap<String, Vec<Manifest>>,
    /// Name → index of the active version.
    pub active: BTreeMap<String, usize>,
}

/// A model that passed verification, ready to load.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: ManifestBody,
    /// Directory holding the files.
    pub dir: PathBuf,
}

impl Verified {
    /// The first file (the model itself for single-file formats).
    pub fn main_file(&self) -> PathBuf {
        self.dir.join(&self.manifest.files[0].path)
    }
}

pub struct Registry {
    root: PathBuf,
    /// Signers whose manifests are accepted: this node and trusted authorities.
    trusted: Vec<NodeId>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root)
            .finish()
    }
}

/// SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((hex::encode(ctx.finish().as_ref()), size))
}

fn digest_of(files: &[FileEntry]) -> String {
    let mut b = Vec::new();
    for f in files {
        b.extend_from_slice(f.path.as_bytes());
        b.push(0);
        b.extend_from_slice(f.sha256.as_bytes());
        b.push(0);
    }
    hex::encode(fieldmesh_core::sha256(&b))
}

impl Registry {
    pub fn open(home: &Path, trusted: Vec<NodeId>) -> Registry {
        Registry {
            root: home.join("models"),
            trusted,
        }
    }

    fn registry_path(&self) -> PathBuf {
        self.root.join("registry.json")
    }

    pub fn load_file(&self) -> Result<RegistryFile> {
        match std::fs::read(self.registry_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is malformed", self.registry_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryFile::default()),
            Err(e) => Err(e).context("reading the model registry"),
        }
    }

    fn save(&self, r: &RegistryFile) -> Result<()> {
        std::fs::create_dir_all(&self.root)?;
        crate::home::write_atomic(&self.registry_path(), &serde_json::to_vec_pretty(r)?)
            .context("replacing the model registry")
    }

    /// Imports `files` (paths on disk, with the names they take in the store) as a new
    /// version of `name`, signed by `key`, and makes it active. Importing the same bytes
    /// again only re-activates that version.
    pub fn import(
        &self,
        key: &NodeKey,
        name: &str,
        format: Format,
        files: &[(PathBuf, String)],
        licence: &str,
        source: &str,
    ) -> Result<(ManifestBody, bool)> {
        if name.is_empty()
            || name.len() > 128
            || name.contains(['/', '\\'])
            || name.starts_with('.')
        {
            bail!("model name {name:?} must be 1-128 characters without slashes");
        }
        if files.is_empty() {
            bail!("a model needs at least one file");
        }
        let mut entries = Vec::new();
        for (path, stored) in files {
            let (sha256, size) = hash_file(path)?;
            entries.push(FileEntry {
                path: stored.clone(),
                sha256,
                size,
            });
        }
        let digest = digest_of(&entries);
        let mut reg = self.load_file()?;
        if let Some(i) = reg
            .models
            .get(name)
            .and_then(|v| v.iter().position(|m| m.manifest.sha256 == digest))
        {
            reg.active.insert(name.to_owned(), i);
            self.save(&reg)?;
            let m = reg.models[name][i].manifest.clone();
            return Ok((m, false));
        }
        let dir = self.root.join("store").join(&digest);
        std::fs::create_dir_all(&dir)?;
        for ((path, stored), entry) in files.iter().zip(&entries) {
            let dst = dir.join(stored);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if dst.exists() && hash_file(&dst)?.0 == entry.sha256 {
                continue;
            }
            let _ = std::fs::remove_file(&dst);
            // A hard link costs nothing when the cache is on the same file system.
            if std::fs::hard_link(path, &dst).is_err() {
                let tmp = dst.with_extension("partial");
                std::fs::copy(path, &tmp)
                    .with_context(|| format!("copying {} into the model store", path.display()))?;
                std::fs::rename(&tmp, &dst)?;
            }
        }
        let body = ManifestBody {
            name: name.to_owned(),
            format,
            sha256: digest,
            size: entries.iter().map(|e| e.size).sum(),
            files: entries,
            licence: licence.to_owned(),
            source: source.to_owned(),
            imported_ms: crate::node::now_ms(),
            signer: key.node_id(),
        };
        let signature = hex::encode(key.sign(&body.signed_bytes()));
        let versions = reg.models.entry(name.to_owned()).or_default();
        versions.push(Manifest {
            manifest: body.clone(),
            signature,
        });
        let idx = versions.len() - 1;
        reg.active.insert(name.to_owned(), idx);
        self.save(&reg)?;
        Ok((body, true))
    }

    /// Checks one manifest's signature and every file's hash.
    pub fn verify_manifest(&self, m: &Manifest) -> Result<Verified> {
        let body = &m.manifest;
        if !self.trusted.contains(&body.signer) {
            bail!(
                "model {}: manifest signed by {}, which is not this node or a trusted authority",
                body.name,
                body.signer.short()
            );
        }
        let sig = hex::decode(&m.signature)
            .map_err(|_| anyhow!("model {}: signature is not hex", body.name))?;
        if !fieldmesh_crypto::verify_signature(&body.signer, &body.signed_bytes(), &sig) {
            bail!("model {}: manifest signature does not verify", body.name);
        }
        if digest_of(&body.files) != body.sha256 {
            bail!(
                "model {}: manifest digest does not match its file list",
                body.name
            );
        }
        let dir = self.root.join("store").join(&body.sha256);
        for f in &body.files {
            let path = dir.join(&f.path);
            let (sha, size) = hash_file(&path)
                .with_context(|| format!("model {}: file {} missing", body.name, f.path))?;
            if sha != f.sha256 || size != f.size {
                bail!(
                    "model {}: {} has SHA-256 {}…, manifest says {}… — refusing to load",
                    body.name,
                    f.path,
                    &sha[..12],
                    &f.sha256[..12]
                );
            }
        }
        Ok(Verified {
            manifest: body.clone(),
            dir,
        })
    }

    /// The active version of `name`, verified.
    pub fn resolve(&self, name: &str) -> Result<Verified> {
        let reg = self.load_file()?;
        let versions = reg.models.get(name).ok_or_else(|| {
            anyhow!("model {name:?} is not in the registry (import it with `fieldmesh model fetch`, `model fetch --large` for Qwen2.5-Coder-1.5B, or `model import`)")
        })?;
        let idx = reg.active.get(name).copied().unwrap_or(versions.len() - 1);
        let m = versions
            .get(idx)
            .ok_or_else(|| anyhow!("model {name:?}: active version {idx} does not exist"))?;
        self.verify_manifest(m)
    }

    /// Makes the version before the active one active; returns it.
    pub fn rollback(&self, name: &str) -> Result<ManifestBody> {
        let mut reg = self.load_file()?;
        let n = reg
            .models
            .get(name)
            .ok_or_else(|| anyhow!("model {name:?} is not in the registry"))?
            .len();
        let cur = reg.active.get(name).copied().unwrap_or(n - 1);
        if cur == 0 {
            bail!("model {name:?} has no earlier version to roll back to");
        }
        let prev = &reg.models[name][cur - 1];
        self.verify_manifest(prev)?;
        let body = prev.manifest.clone();
        reg.active.insert(name.to_owned(), cur - 1);
        self.save(&reg)?;
        Ok(body)
    }
}
