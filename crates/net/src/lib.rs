//! Fieldmesh networking: a libp2p swarm (QUIC, and TCP with noise + yamux; identify,
//! ping, gossipsub announces, request-response sync, a bulk stream per peer for pushed
//! envelopes (`/fieldmesh/bulk/1`), optional mDNS) that drives the
//! sans-IO [`fieldmesh_sync::engine::Engine`].
//!
//! One task owns the swarm and the engine and does all I/O in a single `select!` loop;
//! the node talks to it through a bounded command channel ([`NetHandle`]). libp2p types
//! stay in this crate: the engine only sees `PeerId` as an opaque ordered key.
//!
//! The node provides a [`Host`]: load an envelope's bytes, and verify + durably store
//! bytes that arrived. Static peers are redialled with exponential backoff; a peer that
//! keeps sending garbage or forgeries is disconnected by the engine's strike rule.

mod bulk;
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
    /// not.
    fn ingest(&self, bytes: &[u8]) -> Result<(EnvelopeId, Meta), IngestError>;

    /// Verifies and stores several envelopes with one durable write (group commit).
    /// Results are in input order.
    fn ingest_batch(&self, envelopes: &[Vec<u8>]) -> Vec<Result<(EnvelopeId, Meta), IngestError>> {
        envelopes.iter().map(|b| self.ingest(b)).collect()
    }
}

/// Why an envelope from a peer was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The bytes are not an authentic envelope: the peer is at fault.
    #[error("refused: {0}")]
    Refused(String),
    /// This node could not store it (disk full, quota): not the peer's fault.
    #[error("not stored: {0}")]
    Storage(String),
}

/// The libp2p identity for a node key seed (the same Ed25519 key: peer id = node id).
pub fn keypair_from_seed(mut seed: [u8; 32]) -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .expect("32-byte seed is a valid ed25519 key")
}
