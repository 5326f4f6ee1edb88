//! Fieldmesh crypto: the node's Ed25519 identity, and payload sealing under compartment
//! keys (ChaCha20-Poly1305, with the envelope header as associated data).
//!
//! Nonces are synthetic: HMAC-SHA256 under the payload key over the header and the
//! plaintext, truncated to 96 bits. Sealing is therefore deterministic (the simulator
//! replays bit-exactly), a nonce never repeats for different content under one key, and
//! without the key nobody can test a guess of the plaintext against the nonce.
//!
//! ```
//! use fieldmesh_core::{ChannelId, CompartmentId, Header, Hlc, Kind, Precedence};
//! use fieldmesh_crypto::{NodeKey, PayloadKey};
//!
//! let key = NodeKey::generate().unwrap();
//! let header = Header {
//!     kind: Kind::CHANNEL_CHANGE,
//!     precedence: Precedence::Routine,
//!     compartment: CompartmentId::OPEN,
//!     epoch: 0,
//!     channel: ChannelId([1; 32]),
//!     author: key.node_id(),
//!     hlc: Hlc::new(1_700_000_000_000, 0),
//!     deps: vec![],
//! };
//! let open = PayloadKey::open_compartment();
//! let env = fieldmesh_crypto::seal_envelope(&key, header, &open, b"contact north").unwrap();
//! assert_eq!(fieldmesh_crypto::open_envelope(&env, &open).unwrap(), b"contact north");
//! ```

pub mod access;
mod aead;
pub mod credential;
mod identity;
pub mod policy;
mod sealbox;

pub use access::{CompartmentDef, CompartmentState, Directory, Record, directory_channel};
pub use aead::{OpenError, PayloadKey, SealError, open_envelope, seal_envelope, seal_envelopes};
pub use credential::{Credential, CredentialError, TrustedAuthority};
pub use identity::{KeyFileError, NodeKey};
pub use policy::Policy;
pub use sealbox::{SEALBOX_OVERHEAD, SealBoxError, seal_to};

/// `N` bytes from the system random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SealBoxError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SealBoxError::Rng)?;
    Ok(b)
}

/// Whether `sig` is `node`'s Ed25519 signature over `msg`.
pub fn verify_signature(node: &fieldmesh_core::NodeId, msg: &[u8], sig: &[u8]) -> bool {
    fieldmesh_core::ed25519::verify(node.as_bytes(), msg, sig)
}
