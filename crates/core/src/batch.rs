//! One signature for many envelopes: a Merkle tree over a batch's ids.
//!
//! An attachment is hundreds of chunk envelopes by one author, and checking an Ed25519
//! signature per chunk was a quarter of a receiving node's CPU in a bulk transfer. An
//! author may instead sign the root of a Merkle tree over the ids of up to [`MAX_BATCH`]
//! envelopes it creates together; each envelope then carries the signature and its audit
//! path (its proof), and stays verifiable on its own: a node that holds one chunk of a
//! batch, or relays it without reading it, checks it exactly as it checks any envelope.
//! A receiver that already checked a batch's signature (same author, root, size and
//! signature bytes) only recomputes the root from the path: a few SHA-256 of 65 bytes.
//!
//! The tree is RFC 6962's: a leaf is `SHA-256(0x00 || id)`, an inner node
//! `SHA-256(0x01 || left || right)`, and a tree of `n > 1` leaves splits at the largest
//! power of two below `n`. The author signs `"fieldmesh/envelope-batch/v1" || n || root`
//! (`n` as u32 big-endian), which no single envelope's signing message can equal.

use std::sync::{Mutex, OnceLock};

/// Most envelopes under one batch signature (an audit path of at most 12 hashes).
pub const MAX_BATCH: usize = 4096;
/// Hashes in the longest audit path.
pub(crate) const MAX_DEPTH: usize = 12;
/// Bytes of the longest proof: index u16, size u16, then the path.
pub(crate) const MAX_PROOF_BYTES: usize = 4 + 32 * MAX_DEPTH;

const BATCH_DOMAIN: &[u8] = b"fieldmesh/envelope-batch/v1";

/// The bytes an author signs for a batch of `n` envelopes whose tree has root `root`.
pub(crate) fn batch_message(n: usize, root: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(BATCH_DOMAIN.len() + 4 + 32);
    m.extend_from_slice(BATCH_DOMAIN);
    m.extend_from_slice(&(n as u32).to_be_bytes());
    m.extend_from_slice(root);
    m
}

fn leaf(id: &[u8; 32]) -> [u8; 32] {
    let mut b = [0u8; 33];
    b[1..].copy_from_slice(id);
    crate::sha256(&b)
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut b = [0u8; 65];
    b[0] = 1;
    b[1..33].copy_from_slice(left);
    b[33..].copy_from_slice(right);
    crate::sha256(&b)
}

/// The largest power of two less than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Hashes in the audit path of leaf `index` in a tree of `n` leaves.
pub(crate) fn depth(index: usize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let k = split(n);
    1 + if index < k {
        depth(index, k)
    } else {
        depth(index - k, n - k)
    }
}

/// The root over `ids`, and each leaf's audit path (the sibling nearest the leaf first).
pub(crate) fn tree(ids: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<[u8; 32]>>) {
    fn build(ids: &[[u8; 32]], paths: &mut [Vec<[u8; 32]>]) -> [u8; 32] {
        if ids.len() == 1 {
            return leaf(&ids[0]);
        }
        let k = split(ids.len());
        let (lp, rp) = paths.split_at_mut(k);
        let l = build(&ids[..k], lp);
        let r = build(&ids[k..], rp);
        lp.iter_mut().for_each(|p| p.push(r));
        rp.iter_mut().for_each(|p| p.push(l));
        node(&l, &r)
    }
    let mut paths = vec![Vec::new(); ids.len()];
    let root = build(ids, &mut paths);
    (root, paths)
}

/// The root that leaf `id` at `index` of `n` with this audit path implies, or `None` if
/// the path has the wrong length for that position.
pub(crate) fn root_from_path(
    id: &[u8; 32],
    index: usize,
    n: usize,
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    if n == 0 || index >= n || path.len() != depth(index, n) {
        return None;
    }
    fn up(h: [u8; 32], index: usize, n: usize, path: &[[u8; 32]]) -> [u8; 32] {
        let Some((top, rest)) = path.split_last() else {
            return h;
        };
        let k = split(n);
        if index < k {
            node(&up(h, index, k, rest), top)
        } else {
            node(top, &up(h, index - k, n - k, rest))
        }
    }
    Some(up(leaf(id), index, n, path))
}

/// Batch signatures already checked: (author, size, root, signature). Caching a true
/// answer keyed on every input of the check is exact; a different signature or path
/// is checked in full.
type Checked = ([u8; 32], u32, [u8; 32], [u8; 64]);

/// Entries kept, oldest dropped first: a node receives few batches at once.
const CACHED: usize = 64;

fn cache() -> &'static Mutex<Vec<Checked>> {
    static CACHE: OnceLock<Mutex<Vec<Checked>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::with_capacity(CACHED)))
}

/// Whether `sig` by `author` over a batch of `n` with root `root` is valid.
pub(crate) fn verify(author: &[u8; 32], n: usize, root: &[u8; 32], sig: &[u8]) -> bool {
    let Ok(sig) = <[u8; 64]>::try_from(sig) else {
        return false;
    };
    let key: Checked = (*author, n as u32, *root, sig);
    if cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&key)
    {
        return true;
    }
    if !crate::ed25519::verify(author, &batch_message(n, root), &sig) {
        return false;
    }
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHED {
        c.remove(0);
    }
    c.push(key);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| crate::sha256(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_proves_the_root_and_nothing_else_does() {
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100] {
            let ids = ids(n);
            let (root, paths) = tree(&ids);
            for (i, (id, path)) in ids.iter().zip(&paths).enumerate() {
                assert_eq!(path.len(), depth(i, n));
                assert!(path.len() <= MAX_DEPTH);
                assert_eq!(root_from_path(id, i, n, path), Some(root), "n {n} leaf {i}");
                // Another position, another leaf, a changed path: another root. (A changed
                // size can imply the same root, as the tree's shape above a leaf may not
                // change: the size is part of the signed message for that reason.)
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(root_from_path(id, j, n, path), Some(root));
                    assert_ne!(root_from_path(&ids[j], i, n, path), Some(root));
                    let mut p = path.clone();
                    p[0][0] ^= 1;
                    assert_ne!(root_from_path(id, i, n, &p), Some(root));
                }
                // Wrong path length for the position: refused outright.
                let mut longer = path.clone();
                longer.push([0; 32]);
                assert_eq!(root_from_path(id, i, n, &longer), None);
            }
            assert_eq!(root_from_path(&ids[0], n, n, &[]), None);
        }
    }

    #[test]
    fn a_single_leaf_tree_is_the_leaf_hash_and_the_largest_is_twelve_deep() {
        let one = ids(1);
        assert_eq!(tree(&one).0, leaf(&one[0]));
        assert_eq!(depth(0, MAX_BATCH), MAX_DEPTH);
        assert_eq!(depth(MAX_BATCH - 1, MAX_BATCH), MAX_DEPTH);
        assert_eq!(depth(0, MAX_BATCH - 1), MAX_DEPTH);
        // An unbalanced tree: the last of 5 leaves hangs just below the root.
        assert_eq!(depth(4, 5), 1);
    }
}
