//! Rateless invertible Bloom lookup tables: set reconciliation whose cost grows with the
//! difference alone (after Yang, Gilad and Alizadeh, "Practical Rateless Set
//! Reconciliation", SIGCOMM 2024; this is our own implementation of the idea).
//!
//! Each id is reduced to a 64-bit key (the first 8 bytes of the id, which is a SHA-256
//! hash). An endless sequence of coded symbols is defined over a set: symbol `i` holds the
//! XOR of the keys mapped to it, the XOR of their checksums and their count. Key `k` is in
//! symbol 0 and then in each later symbol `i` with probability 1 / (1 + i/2), at indices
//! drawn from a generator seeded by `k`, so both sides agree without talking.
//!
//! The initiator sends symbols 0, 1, 2, …; the responder subtracts its own symbols and
//! "peels": a cell with count ±1 whose checksum matches its key holds exactly one key
//! that only one side has; removing it from every cell it maps to may expose more. When
//! every cell is empty, the difference is known: about 1.35 symbols per differing id for
//! large differences. Symbol 0 holds every key, so an empty cell 0 after peeling confirms
//! completeness. A responder that cannot finish asks for more symbols, sized from the two
//! sets' counts (their difference bounds the symmetric difference from below).
//!
//! In a session, the initiator sends its whole-set fingerprint; only on a mismatch does
//! the responder start sending symbols (identical sets cost one 20-byte message). Both
//! sides snapshot their keys at symbol 0: without that, a set that grows mid-session
//! makes later symbols disagree with earlier ones and decoding never finishes (the
//! simulator's data-mule scenario found this: requests escalated to the cap and flooded a
//! 2.4 kbit/s link). Requests are capped relative to the size gap; past the cap the
//! session continues with range fingerprints.
//!
//! Keys are 64 bits, so two distinct ids could share one; within one node's store of a
//! million envelopes the chance is ~3e-8. The effect would be a missed difference, which
//! the periodic range-based session (fingerprints over full ids) repairs.

use crate::Index;
use fieldmesh_core::EnvelopeId;
use std::collections::HashSet;

/// Most coded symbols in one message (about 9 KB on the wire).
pub const MAX_CELLS_PER_MESSAGE: usize = 512;
/// A responder gives up on coded symbols (and falls back to range fingerprints) past this.
pub const MAX_SYMBOLS: u32 = 1 << 18;

/// One coded symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell {
    /// XOR of the keys mapped here.
    pub key: u64,
    /// XOR of their checksums.
    pub check: u64,
    /// How many keys (signed after subtraction).
    pub count: i64,
}

impl Cell {
    fn toggle(&mut self, key: u64, sign: i64) {
        self.key ^= key;
        self.check ^= checksum(key);
        // Counts come from the peer: any value must be harmless (a count that is not
        // +-1 is simply never pure).
        self.count = self.count.wrapping_add(sign);
    }

    fn is_empty(&self) -> bool {
        self.key == 0 && self.check == 0 && self.count == 0
    }

    fn pure(&self) -> Option<(u64, i64)> {
        ((self.count == 1 || self.count == -1) && self.check == checksum(self.key))
            .then_some((self.key, self.count))
    }
}

/// The 64-bit key of an id.
pub fn key_of(id: &EnvelopeId) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn checksum(key: u64) -> u64 {
    mix(key ^ 0x5f1e_1d3e_5a00_c4ec)
}

/// The symbol indices key `key` maps to, ascending, starting with 0.
fn indices(key: u64) -> impl Iterator<Item = u64> {
    let mut state = mix(key ^ 0x00d1_ce5e_ed00_0001);
    let mut next = Some(0u64);
    std::iter::from_fn(move || {
        let i = next?;
        // P(next index > j | current i) = (i+1)(i+2) / ((j+1)(j+2)): invert with a
        // uniform draw u in (0, 1].
        state = mix(state);
        let u = ((state >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let x = (i as f64 + 1.0) * (i as f64 + 2.0) / u;
        let j = ((x + 0.25).sqrt() - 1.5).floor() as u64 + 1;
        next = Some(j.max(i + 1)).filter(|&j| j < u64::from(u32::MAX));
        Some(i)
    })
}

/// Coded symbols `start..end` of a set of keys.
pub fn encode(keys: impl Iterator<Item = u64>, start: u32, end: u32) -> Vec<Cell> {
    let mut cells = vec![Cell::default(); end.saturating_sub(start) as usize];
    for k in keys {
        for i in indices(k) {
            if i >= u64::from(end) {
                break;
            }
            if i >= u64::from(start) {
                cells[(i - u64::from(start)) as usize].toggle(k, 1);
            }
        }
    }
    cells
}

/// Symbols `start..end` of the ids an index holds.
pub fn encode_index(index: &Index, start: u32, end: u32) -> Vec<Cell> {
    encode(index.ids().map(key_of), start, end)
}

/// One peer's coded-symbol state: the symbols it sent us minus ours, peeled as they
/// arrive, and the snapshot of our own keys we send symbols of. Both sides work on
/// snapshots taken when a session's symbol 0 is made or received, so a set that grows
/// during the session cannot make later symbols disagree with earlier ones.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    cells: Vec<Cell>,
    /// Keys only the peer holds.
    remote_only: Vec<u64>,
    /// Keys only we hold.
    local_only: Vec<u64>,
    /// Our keys when the peer's symbol 0 arrived.
    local: Vec<u64>,
    /// Our keys when we made symbol 0 for the peer.
    sent: Option<Vec<u64>>,
    /// Every key peeled in this decoding: honest symbols never yield one twice.
    peeled: HashSet<u64>,
    /// The peer's symbols contradicted themselves: this decoding can never finish.
    inconsistent: bool,
}

impl Decoder {
    /// Symbols received so far.
    pub fn len(&self) -> u32 {
        self.cells.len() as u32
    }

    /// Whether no symbol has arrived.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Forgets the decoding state (not what we sent).
    pub fn reset_decoding(&mut self) {
        self.cells = Vec::new();
        self.remote_only = Vec::new();
        self.local_only = Vec::new();
        self.local = Vec::new();
        self.peeled = HashSet::new();
        self.inconsistent = false;
    }

    /// Whether the peer's symbols contradicted themselves (a key that peels twice: the
    /// cells were not made from any set). Such a decoding is abandoned; peeling it
    /// further would never end.
    pub fn is_inconsistent(&self) -> bool {
        self.inconsistent
    }

    /// How many keys our decoding snapshot holds.
    pub fn local_len(&self) -> u64 {
        self.local.len() as u64
    }

    /// Our symbols `start..end` for the peer, from the snapshot taken at symbol 0.
    /// Returns them with the snapshot's size.
    pub fn symbols_to_send(&mut self, index: &Index, start: u32, end: u32) -> (u64, Vec<Cell>) {
        if start == 0 || self.sent.is_none() {
            self.sent = Some(index.ids().map(key_of).collect());
        }
        let keys = self.sent.as_deref().unwrap_or_default();
        (keys.len() as u64, encode(keys.iter().copied(), start, end))
    }

    /// Adds the peer's symbols `start..start+cells.len()` (`start` must be `len()`;
    /// symbol 0 starts a new decoding). Returns false if they do not continue the
    /// sequence.
    pub fn add(&mut self, index: &Index, start: u32, remote: &[Cell]) -> bool {
        if start == 0 {
            self.reset_decoding();
            self.local = index.ids().map(key_of).collect();
        }
        if start != self.len() || remote.is_empty() || self.inconsistent {
            return false;
        }
        let end = start + remote.len() as u32;
        let mine = encode(self.local.iter().copied(), start, end);
        let first_new = self.cells.len();
        for (r, m) in remote.iter().zip(mine) {
            self.cells.push(Cell {
                key: r.key ^ m.key,
                check: r.check ^ m.check,
                count: r.count.wrapping_sub(m.count),
            });
        }
        // Keys already peeled leave the new cells too.
        for (keys, sign) in [(&self.remote_only, 1i64), (&self.local_only, -1)] {
            for &k in keys.iter() {
                for i in indices(k) {
                    if i >= u64::from(end) {
                        break;
                    }
                    if i as usize >= first_new {
                        self.cells[i as usize].toggle(k, -sign);
                    }
                }
            }
        }
        self.peel();
        true
    }

    fn peel(&mut self) {
        let mut work: Vec<usize> = (0..self.cells.len()).collect();
        while let Some(c) = work.pop() {
            let Some((key, sign)) = self.cells[c].pure() else {
                continue;
            };
            // A key is only ever on one side, and peeling it removes it from every cell
            // it maps to: a second pure cell with the same key means the cells were not
            // encoded from a set (forged symbols can make two cells hand one key back
            // and forth forever).
            if !self.peeled.insert(key) {
                self.inconsistent = true;
                return;
            }
            if sign == 1 {
                self.remote_only.push(key);
            } else {
                self.local_only.push(key);
            }
            for i in indices(key) {
                if i as usize >= self.cells.len() {
                    break;
                }
                self.cells[i as usize].toggle(key, -sign);
                work.push(i as usize);
            }
        }
    }

    /// Whether the difference is fully known.
    pub fn done(&self) -> bool {
        !self.inconsistent && !self.cells.is_empty() && self.cells.iter().all(Cell::is_empty)
    }

    /// Keys only the peer holds (valid once [`Decoder::done`]).
    pub fn remote_only(&self) -> &[u64] {
        &self.remote_only
    }

    /// Keys only we hold (valid once [`Decoder::done`]).
    pub fn local_only(&self) -> &[u64] {
        &self.local_only
    }
}

/// Ids of an index whose key is `key` (normally one).
pub fn ids_with_key(index: &Index, key: u64) -> impl Iterator<Item = &EnvelopeId> {
    let mut lo = [0u8; 32];
    lo[..8].copy_from_slice(&key.to_be_bytes());
    let mut hi = [0xffu8; 32];
    hi[..8].copy_from_slice(&key.to_be_bytes());
    index.range_inclusive(EnvelopeId(lo), EnvelopeId(hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Meta;
    use fieldmesh_core::{Hlc, Precedence, sha256};

    fn id(n: u64) -> EnvelopeId {
        EnvelopeId(sha256(&n.to_be_bytes()))
    }

    fn index(range: std::ops::Range<u64>) -> Index {
        let mut ix = Index::default();
        for n in range {
            ix.insert(
                id(n),
                Meta {
                    precedence: Precedence::Routine,
                    size: 100,
                    hlc: Hlc(n),
                },
            );
        }
        ix
    }

    /// Feeds symbols in growing batches until decoded; returns symbols used.
    fn reconcile(a: &Index, b: &Index) -> (Decoder, u32) {
        let mut d = Decoder::default();
        let mut end = 8u32;
        loop {
            let start = d.len();
            let cells = encode_index(a, start, end);
            assert!(d.add(b, start, &cells));
            if d.done() {
                return (d, end);
            }
            end *= 2;
            assert!(end <= MAX_SYMBOLS, "did not decode");
        }
    }

    #[test]
    fn indices_start_at_zero_ascend_and_thin_out() {
        let v: Vec<u64> = indices(12345).take_while(|&i| i < 10_000).collect();
        assert_eq!(v[0], 0);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        // Expected count below m is about 2 ln(m): ~18 for 10,000.
        let mean = (0..2000u64)
            .map(|k| indices(mix(k)).take_while(|&i| i < 10_000).count())
            .sum::<usize>() as f64
            / 2000.0;
        assert!((12.0..25.0).contains(&mean), "mean indices {mean}");
    }

    #[test]
    fn finds_exactly_the_symmetric_difference() {
        for (a_range, b_range) in [
            (0..1000, 0..1000),
            (0..1000, 3..1001),
            (0..5000, 200..5300),
            (0..10, 0..0),
        ] {
            let (a, b) = (index(a_range.clone()), index(b_range.clone()));
            let (d, _) = reconcile(&a, &b);
            let mut remote: Vec<u64> = d.remote_only().to_vec();
            let mut local: Vec<u64> = d.local_only().to_vec();
            remote.sort();
            local.sort();
            let mut want_remote: Vec<u64> = a_range
                .clone()
                .filter(|n| !b_range.contains(n))
                .map(|n| key_of(&id(n)))
                .collect();
            let mut want_local: Vec<u64> = b_range
                .clone()
                .filter(|n| !a_range.contains(n))
                .map(|n| key_of(&id(n)))
                .collect();
            want_remote.sort();
            want_local.sort();
            assert_eq!(remote, want_remote);
            assert_eq!(local, want_local);
        }
    }

    #[test]
    fn symbols_needed_grow_with_the_difference_not_the_set() {
        let small = reconcile(&index(0..100), &index(0..110)).1;
        let big = reconcile(&index(0..20_000), &index(0..20_010)).1;
        assert!(
            small <= 64 && big <= 64,
            "10 differences: {small} and {big} symbols"
        );
        // Exact count for 300 differences, fed one symbol at a time.
        let (a, b) = (index(0..10_000), index(300..10_000));
        let mut d = Decoder::default();
        while !d.done() {
            let s = d.len();
            d.add(&b, s, &encode_index(&a, s, s + 1));
        }
        let per = f64::from(d.len()) / 300.0;
        assert!(per < 1.8, "{per:.2} symbols per difference");
    }

    #[test]
    fn finds_ids_by_key() {
        let ix = index(0..100);
        let k = key_of(&id(42));
        assert_eq!(
            ids_with_key(&ix, k).copied().collect::<Vec<_>>(),
            vec![id(42)]
        );
    }

    /// Two forged cells that hand one key back and forth: symbol 0 holds +k, symbol 1
    /// is honest. Peeling k from cell 0 leaves -k in cell 1, which peels back into
    /// cell 0, forever. The decoder must notice, not loop.
    #[test]
    fn forged_symbols_that_never_peel_out_are_refused() {
        let mine = index(0..50);
        let key = (0..)
            .map(|n: u64| mix(n ^ 0xabcd))
            .find(|&k| indices(k).nth(1) == Some(1))
            .expect("some key maps to symbol 1");
        let mut forged = encode_index(&mine, 0, 2);
        forged[0].toggle(key, 1);
        let mut d = Decoder::default();
        assert!(d.add(&mine, 0, &forged));
        assert!(d.is_inconsistent());
        assert!(!d.done());
        assert!(!d.add(&mine, 2, &encode_index(&mine, 2, 4)));
        // The reconciler calls it a protocol violation and drops the decoding.
        let r = crate::ranger::Reconciler::default().respond_in(
            &mine,
            &[crate::ranger::RangeMsg::Symbols {
                total: 51,
                start: 0,
                cells: forged,
            }],
            &mut d,
        );
        assert!(
            matches!(r, Err(crate::ranger::RangeError::Symbols(_))),
            "{r:?}"
        );
        assert!(d.is_empty());
    }

    #[test]
    fn counts_from_the_peer_cannot_overflow() {
        let mine = index(0..5);
        let mut cells = encode_index(&mine, 0, 3);
        cells[0].count = i64::MIN;
        cells[1].count = i64::MAX;
        let mut d = Decoder::default();
        assert!(d.add(&mine, 0, &cells));
        assert!(!d.done());
    }
}
