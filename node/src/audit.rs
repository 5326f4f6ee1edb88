//! The audit log: every access decision, key operation and grant, one JSON line each,
//! hash-chained and signed by the node.
//!
//! ```text
//! {"seq":N,"ts_ms":T,"node":ID,"event":{...},"prev":H(N-1),"hash":H(N),"sig":S}
//! H(N) = SHA-256("fieldmesh/audit/v1" || H(N-1) || seq BE || ts_ms BE || event JSON)
//! S    = Ed25519 signature by the node over H(N)
//! ```
//!
//! Editing, removing or reordering a line breaks the chain at that line; a forger without
//! the node key cannot re-sign it. Cutting lines off the end is only detectable against
//! a head recorded elsewhere (`audit --json` prints it): see docs/THREAT-MODEL.md.

use anyhow::{Context, Result};
use fieldmesh_core::{NodeId, Signer, sha256};
use fieldmesh_crypto::NodeKey;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub seq: u64,
    pub ts_ms: u64,
    pub node: NodeId,
    pub event: serde_json::Value,
    pub prev: String,
    pub hash: String,
    pub sig: String,
}

fn chain_hash(prev: &[u8; 32], seq: u64, ts_ms: u64, event: &serde_json::Value) -> [u8; 32] {
    let mut b = b"fieldmesh/audit/v1".to_vec();
    b.extend_from_slice(prev);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts_ms.to_be_bytes());
    b.extend_from_slice(event.to_string().as_bytes());
    sha256(&b)
}

/// The append side, owned by the process that holds the node.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    head: Mutex<(u64, [u8; 32])>,
}

impl AuditLog {
    /// Opens (or starts) the log at `path`, continuing its chain.
    pub fn open(path: &Path) -> Result<AuditLog> {
        let mut head = (0u64, [0u8; 32]);
        if let Ok(f) = std::fs::File::open(path) {
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let l: Line = serde_json::from_str(&line).with_context(|| {
                    format!("{} line {} is not an audit record", path.display(), i + 1)
                })?;
                let mut h = [0u8; 32];
                hex::decode_to_slice(&l.hash, &mut h).context("audit hash is not hex")?;
                head = (l.seq + 1, h);
            }
        }
        Ok(AuditLog {
            path: path.to_owned(),
            head: Mutex::new(head),
        })
    }

    /// Appends one event. `durable` forces it to disk before returning (key operations).
    pub fn append(&self, key: &NodeKey, event: serde_json::Value, durable: bool) -> Result<()> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let ts_ms = crate::node::now_ms();
        let (seq, prev) = *head;
        let hash = chain_hash(&prev, seq, ts_ms, &event);
        let line = Line {
            seq,
            ts_ms,
            node: key.node_id(),
            event,
            prev: hex::encode(prev),
            hash: hex::encode(hash),
            sig: hex::encode(key.sign(&hash)),
        };
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        if durable {
            f.sync_data()?;
        }
        *head = (seq + 1, hash);
        Ok(())
    }
}

/// What `audit --verify` found.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub lines: u64,
    pub head: String,
    /// The first broken line (1-based) and why; `None` when the whole chain holds.
    pub broken: Option<(u64, String)>,
}

/// Reads the log, checking each line against the chain and `node`'s signature.
pub fn read(path: &Path, node: &NodeId) -> Result<(Vec<Line>, Verdict)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut lines = Vec::new();
    let mut prev = [0u8; 32];
    let mut broken = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let l: Line = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                broken.get_or_insert((n, format!("not an audit record: {e}")));
                continue;
            }
        };
        if broken.is_none() {
            let why = check(&l, lines.len() as u64, &prev, node);
            if let Err(why) = why {
                broken = Some((n, why));
            }
        }
        if let Ok(h) = hex::decode(&l.hash)
            && let Ok(h) = <[u8; 32]>::try_from(h.as_slice())
        {
            prev = h;
        }
        lines.push(l);
    }
    let verdict = Verdict {
        lines: lines.len() as u64,
        head: hex::encode(prev),
        broken,
    };
    Ok((lines, verdict))
}

fn check(l: &Line, seq: u64, prev: &[u8; 32], node: &NodeId) -> Result<(), String> {
    if l.seq != seq {
        return Err(format!(
            "sequence {} where {seq} was due: a line was removed or moved",
            l.seq
        ));
    }
    if l.prev != hex::encode(prev) {
        return Err(
            "does not follow the previous line's hash: a line before it was changed or removed"
                .into(),
        );
    }
    if l.node != *node {
        return Err(format!(
            "written by {} but this node is {}",
            l.node.short(),
            node.short()
        ));
    }
    let hash = chain_hash(prev, l.seq, l.ts_ms, &l.event);
    if l.hash != hex::encode(hash) {
        return Err("content does not match its hash: the line was altered".into());
    }
    let sig = hex::decode(&l.sig).map_err(|_| "signature is not hex".to_owned())?;
    if !fieldmesh_crypto::verify_signature(node, &hash, &sig) {
        return Err(
            "signature does not verify: the line was re-hashed without the node key".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_detects_edits_removals_and_forgeries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = NodeKey::from_seed([5; 32]);
        let log = AuditLog::open(&path).unwrap();
        for i in 0..5 {
            log.append(&key, serde_json::json!({"op": "read", "i": i}), i % 2 == 0)
                .unwrap();
        }
        // Reopening continues the chain.
        AuditLog::open(&path)
            .unwrap()
            .append(&key, serde_json::json!({"op": "after"}), true)
            .unwrap();
        let (lines, v) = read(&path, &key.node_id()).unwrap();
        assert_eq!(lines.len(), 6);
        assert!(v.broken.is_none(), "{:?}", v.broken);

        let original = std::fs::read_to_string(&path).unwrap();
        let edit = original.replacen("\"i\":2", "\"i\":7", 1);
        std::fs::write(&path, &edit).unwrap();
        let (_, v) = read(&path, &key.node_id()).unwrap();
        assert_eq!(v.broken.as_ref().unwrap().0, 3, "{:?}", v.broken);
        assert!(v.broken.unwrap().1.contains("altered"));

        let mut ls: Vec<&str> = original.lines().collect();
        ls.remove(1);
        std::fs::write(&path, ls.join("\n")).unwrap();
        let (_, v) = read(&path, &key.node_id()).unwrap();
        assert_eq!(v.broken.as_ref().unwrap().0, 2);

        // Someone without the key rewrites a line and re-hashes it.
        let mut l: Line = serde_json::from_str(original.lines().nth(4).unwrap()).unwrap();
        l.event = serde_json::json!({"op": "nothing to see"});
        let prev: [u8; 32] = hex::decode(&l.prev).unwrap().try_into().unwrap();
        l.hash = hex::encode(chain_hash(&prev, l.seq, l.ts_ms, &l.event));
        let mut ls: Vec<String> = original.lines().map(str::to_owned).collect();
        ls[4] = serde_json::to_string(&l).unwrap();
        std::fs::write(&path, ls.join("\n")).unwrap();
        let (_, v) = read(&path, &key.node_id()).unwrap();
        let (n, why) = v.broken.unwrap();
        assert_eq!(n, 5);
        assert!(why.contains("signature"), "{why}");
    }
}
