//! The sorted set of envelope ids a node holds.

use fieldmesh_core::{EnvelopeId, Hlc, Precedence, sha256};
use std::collections::BTreeMap;
use std::ops::Bound;

/// What scheduling needs to know about an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its precedence.
    pub precedence: Precedence,
    /// Its encoded size in bytes.
    pub size: u32,
    /// Its timestamp (older first within a precedence).
    pub hlc: Hlc,
}

impl Meta {
    /// The scheduling metadata of an envelope.
    pub fn of(env: &fieldmesh_core::Envelope) -> Meta {
        Meta {
            precedence: env.header().precedence,
            size: u32::try_from(env.encoded_len()).unwrap_or(u32::MAX),
            hlc: env.header().hlc,
        }
    }
}

/// A range fingerprint: 16 bytes of SHA-256 over the sum (mod 2^256) of the ids in the
/// range and their count. Equal sets give equal fingerprints; different sets collide
/// with negligible probability unless ids are chosen adversarially (ids are SHA-256
/// outputs of signed content, which makes crafting a collision expensive, not
/// impossible; a full id listing settles every range below the split threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 16]);

/// A 256-bit accumulator: the sum of ids as big-endian integers, modulo 2^256.
#[derive(Debug, Clone, Copy, Default)]
struct Sum([u64; 4]);

impl Sum {
    fn add(&mut self, id: &EnvelopeId) {
        let mut carry = 0u128;
        for limb in (0..4).rev() {
            let v = u64::from_be_bytes(id.0[limb * 8..limb * 8 + 8].try_into().expect("8 bytes"));
            let s = u128::from(self.0[limb]) + u128::from(v) + carry;
            self.0[limb] = s as u64;
            carry = s >> 64;
        }
    }
}

/// Half-open range of ids: `[lower, upper)`; `None` means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Inclusive lower bound.
    pub lower: Option<EnvelopeId>,
    /// Exclusive upper bound.
    pub upper: Option<EnvelopeId>,
}

impl IdRange {
    /// Everything.
    pub const ALL: IdRange = IdRange {
        lower: None,
        upper: None,
    };

    fn bounds(&self) -> (Bound<EnvelopeId>, Bound<EnvelopeId>) {
        (
            self.lower.map_or(Bound::Unbounded, Bound::Included),
            self.upper.map_or(Bound::Unbounded, Bound::Excluded),
        )
    }

    /// Whether the range is well formed (lower < upper when both are set).
    pub fn is_valid(&self) -> bool {
        match (self.lower, self.upper) {
            (Some(l), Some(u)) => l < u,
            _ => true,
        }
    }
}

/// The shortest bound `b` (a prefix of `hi` padded with zeros) with `lo < b <= hi`: it
/// splits the same ids as `hi` but encodes in a few bytes (see `frame`).
fn separator(lo: &EnvelopeId, hi: &EnvelopeId) -> EnvelopeId {
    debug_assert!(lo < hi);
    let k =
        lo.0.iter()
            .zip(&hi.0)
            .position(|(a, b)| a != b)
            .unwrap_or(31);
    let mut b = [0u8; 32];
    b[..=k].copy_from_slice(&hi.0[..=k]);
    let b = EnvelopeId(b);
    debug_assert!(*lo < b && b <= *hi);
    b
}

/// The ids a node holds, sorted, with their metadata.
#[derive(Debug, Clone, Default)]
pub struct Index {
    items: BTreeMap<EnvelopeId, Meta>,
}

impl Index {
    /// Adds an id; returns whether it was new.
    pub fn insert(&mut self, id: EnvelopeId, meta: Meta) -> bool {
        self.items.insert(id, meta).is_none()
    }

    /// Removes an id (retention); returns whether it was present.
    pub fn remove(&mut self, id: &EnvelopeId) -> bool {
        self.items.remove(id).is_some()
    }

    /// Whether an id is held.
    pub fn contains(&self, id: &EnvelopeId) -> bool {
        self.items.contains_key(id)
    }

    /// Metadata of an id.
    pub fn meta(&self, id: &EnvelopeId) -> Option<&Meta> {
        self.items.get(id)
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = &EnvelopeId> {
        self.items.keys()
    }

    /// Ids in a range, ascending.
    pub fn range(&self, r: &IdRange) -> impl Iterator<Item = &EnvelopeId> {
        self.items.range(r.bounds()).map(|(k, _)| k)
    }

    /// Ids in `[lo, hi]`, ascending.
    pub fn range_inclusive(
        &self,
        lo: EnvelopeId,
        hi: EnvelopeId,
    ) -> impl Iterator<Item = &EnvelopeId> {
        self.items.range(lo..=hi).map(|(k, _)| k)
    }

    /// Count and fingerprint of a range.
    pub fn fingerprint(&self, r: &IdRange) -> (u64, Fingerprint) {
        let mut sum = Sum::default();
        let mut count = 0u64;
        for id in self.range(r) {
            sum.add(id);
            count += 1;
        }
        let mut buf = [0u8; 40];
        for (i, limb) in sum.0.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&limb.to_be_bytes());
        }
        buf[32..].copy_from_slice(&count.to_be_bytes());
        let h = sha256(&buf);
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&h[..16]);
        (count, Fingerprint(fp))
    }

    /// Splits a range into at most `parts` consecutive sub-ranges with about the same
    /// number of ids each, covering the whole range.
    pub fn split(&self, r: &IdRange, parts: usize) -> Vec<IdRange> {
        let ids: Vec<EnvelopeId> = self.range(r).copied().collect();
        let parts = parts.clamp(1, ids.len().max(1));
        let per = ids.len().div_ceil(parts).max(1);
        let mut out = Vec::with_capacity(parts);
        let mut lower = r.lower;
        let mut i = per;
        while i < ids.len() {
            let bound = separator(&ids[i - 1], &ids[i]);
            out.push(IdRange {
                lower,
                upper: Some(bound),
            });
            lower = Some(bound);
            i += per;
        }
        out.push(IdRange {
            lower,
            upper: r.upper,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> EnvelopeId {
        EnvelopeId([b; 32])
    }

    #[test]
    fn fingerprint_depends_on_content_not_order() {
        let m = Meta {
            precedence: Precedence::Routine,
            size: 1,
            hlc: Hlc(0),
        };
        let mut a = Index::default();
        let mut b = Index::default();
        for i in [5, 1, 9] {
            a.insert(id(i), m);
        }
        for i in [9, 5, 1] {
            b.insert(id(i), m);
        }
        assert_eq!(a.fingerprint(&IdRange::ALL), b.fingerprint(&IdRange::ALL));
        b.insert(id(2), m);
        assert_ne!(
            a.fingerprint(&IdRange::ALL).1,
            b.fingerprint(&IdRange::ALL).1
        );
        let parts = b.split(&IdRange::ALL, 2);
        assert_eq!(parts.len(), 2);
        let total: usize = parts.iter().map(|p| b.range(p).count()).sum();
        assert_eq!(total, 4);
    }
}
