//! Fieldmesh networking: a libp2p swarm (QUIC, and TCP with noise + yamux; identify,
//! ping, gossipsub announces, request-response sync, optional mDNS) that drives the
//! sans-IO [`fieldmesh_sync::engine::Engine`].
//!
//! One task owns the swarm and the engine and does all I/O in a single `select!` loop;
//! the node talks to it through a bounded command channel ([`NetHandle`]). libp2p types
//! stay in this crate: the engine only sees `PeerId` as an opaque ordered key.
//!
//! The node provides a [`Host`]: load an envelope's bytes, and verify + durably store
//! bytes that arrived. Static peers are redialled with exponential backoff; a peer that
//! keeps sending garbage or forgeries is disconnected by the engine's strike rule.

mod driver;
pub mod protocol;

pub use driver::{NetConfig, NetError, NetHandle, NetStatus, PeerStatus, spawn};
pub use libp2p::{Multiaddr, PeerId};

use fieldmesh_core::EnvelopeId;
use fieldmesh_sync::Meta;

/// What the network needs from the node. Calls may block briefly (a store read, an
/// fsync); the driver makes them from its own task.
pub trait Host: Send + Sync + 'static {
    /// The canonical bytes of a stored envelope.
    fn load(&self, id: &EnvelopeId) -> Option<Vec<u8>>;
    /// Verifies and durably stores bytes from a peer; returns the id and metadata, or why
    /// they were refused.
    fn ingest(&self, bytes: &[u8]) -> Result<(EnvelopeId, Meta), String>;
}

/// The libp2p identity for a node key seed (the same Ed25519 key: peer id = node id).
pub fn keypair_from_seed(mut seed: [u8; 32]) -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .expect("32-byte seed is a valid ed25519 key")
}
