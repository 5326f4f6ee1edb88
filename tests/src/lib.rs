//! Cross-crate and multi-process tests for Fieldmesh. The tests live in `tests/tests/`;
//! helper processes they drive live in `src/bin/`.
//!
//! Shared fixtures: a deterministic envelope factory.

pub mod hostile;

use fieldmesh_core::{ChannelId, CompartmentId, Envelope, Header, Hlc, Kind, Precedence};
use fieldmesh_crypto::{NodeKey, PayloadKey, seal_envelope};

/// splitmix64: a tiny deterministic generator for test schedules.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// The `n`th envelope of a deterministic stream from `key`, with a payload of `len` bytes.
pub fn test_envelope(key: &NodeKey, n: u64, len: usize) -> Envelope {
    let header = Header {
        kind: Kind::CHANNEL_CHANGE,
        precedence: Precedence::ALL[(n % 4) as usize],
        compartment: CompartmentId::OPEN,
        epoch: 0,
        channel: ChannelId([(n % 7) as u8; 32]),
        author: key.node_id(),
        hlc: Hlc::new(1_700_000_000_000 + n, 0),
        deps: vec![],
    };
    let body: Vec<u8> = (0..len).map(|i| (i as u64 ^ n) as u8).collect();
    seal_envelope(key, header, &PayloadKey::open_compartment(), &body).expect("valid envelope")
}
