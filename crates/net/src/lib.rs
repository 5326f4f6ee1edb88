//! Fieldmesh networking: a libp2p swarm (QUIC, and TCP with noise + yamux; identify,
//! ping, gossipsub announces, request-response sync, a bulk stream per peer for pushed
//! envelopes (`/fieldmesh/bulk/1`), optional mDNS) that drives the
//! sans-IO [`fieldmesh_sync::engine::Engine`].
//!
//! One task owns the swarm and the engine and does all I/O in a single `select!` loop;
//! the node talks to it through a bounded command channel ([`NetHandle`]). libp2p types
//! stay in this crate: the engine only sees `PeerId` as an opaque ordered key.
//!
//! The node provides a [`Host`]: load an envelope's bytes, verify bytes that arrived, and
//! durably store verified envelopes. Static peers are redialled with exponential backoff; a peer that
//! keeps sending garbage or forgeries is disconnected by the engine's strike rule.

mod bulk;
mod driver;
pub mod protocol;
pub mod quic;
pub mod transport_bench;

pub use bulk::PROTOCOL as BULK_PROTOCOL;
pub use bulk::URGENT_PROTOCOL;
pub use driver::{NetConfig, NetError, NetHandle, NetStatus, PeerStatus, spawn};
pub use libp2p::{Multiaddr, PeerId};

use fieldmesh_core::{Envelope, EnvelopeId};

/// What the network needs from the node. Calls may block briefly (a store read, an
/// fsync); the driver makes them on blocking threads or from its own task.
pub trait Host: Send + Sync + 'static {
    /// The canonical bytes of a stored envelope.
    fn load(&self, id: &EnvelopeId) -> Option<Vec<u8>>;

    /// Checks bytes from a peer: a well-formed envelope, its id, its author's signature.
    /// CPU only: the driver calls it on blocking threads, several batches at once, while
    /// earlier envelopes are being written.
    /// The bytes become the envelope's own (not copied).
    fn verify(&self, bytes: Vec<u8>) -> Result<Envelope, IngestError> {
        Envelope::decode_owned(bytes).map_err(|e| IngestError::Refused(e.to_string()))
    }

    /// Durably stores verified envelopes with one write (group commit). An error means
    /// none of them is durable.
    fn store_batch(&self, envelopes: Vec<Envelope>) -> Result<Stored, IngestError>;
}

/// What [`Host::store_batch`] did besides storing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Envelopes it chose not to keep (others' traffic over its relay quota).
    pub declined: Vec<EnvelopeId>,
    /// Envelopes stored earlier and removed to make room (others' traffic).
    pub evicted: Vec<EnvelopeId>,
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

/// Checks that `addr` is one this node can listen on or dial: `/ip4/A/udp/P/quic-v1` or
/// `/ip4/A/tcp/P` (or `/ip6/...`), optionally ending in `/p2p/PEER_ID`. Anything else
/// (an old `/quic` address, a DNS name, a relay circuit) would only fail in the
/// background, dial after dial.
pub fn check_address(addr: &Multiaddr) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    let mut it = addr.iter();
    let ip = matches!(it.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_)));
    let transport = match it.next() {
        Some(Protocol::Tcp(_)) => true,
        Some(Protocol::Udp(_)) => matches!(it.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    let rest = match it.next() {
        None => true,
        Some(Protocol::P2p(_)) => it.next().is_none(),
        Some(_) => false,
    };
    if ip && transport && rest {
        Ok(())
    } else {
        Err(format!(
            "unsupported address {addr}: use /ip4/ADDR/udp/PORT/quic-v1 or /ip4/ADDR/tcp/PORT \
             (or /ip6/...), optionally ending in /p2p/PEER_ID"
        ))
    }
}

/// The libp2p identity for a node key seed (the same Ed25519 key: peer id = node id).
pub fn keypair_from_seed(mut seed: [u8; 32]) -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .expect("32-byte seed is a valid ed25519 key")
}
