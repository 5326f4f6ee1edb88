//! Fieldmesh core: identifiers, the [`Envelope`], [`Precedence`], the hybrid logical
//! clock and the canonical wire encoding.
//!
//! This crate does no I/O, spawns nothing and never reads a clock: time comes in as an
//! argument. It is the vocabulary every other crate speaks.
//!
//! An [`Envelope`] is the unit of replication, storage and trust. The only way to obtain
//! one from bytes is [`Envelope::decode`], which checks the id (SHA-256 of the canonical
//! encoding) and the author's Ed25519 signature, so an `Envelope` value in memory is
//! always authentic.
//!
//! ```
//! use fieldmesh_core::{Hlc, HlcClock, Precedence};
//!
//! let mut clock = HlcClock::default();
//! let a = clock.tick(1_700_000_000_000);
//! let b = clock.tick(1_700_000_000_000); // same millisecond: logical counter moves on
//! assert!(b > a);
//! assert_eq!(Precedence::parse("flash").unwrap(), Precedence::Flash);
//! assert!(Precedence::Flash > Precedence::Routine);
//! # let _ = Hlc::ZERO;
//! ```

mod batch;
pub mod ed25519;
mod envelope;
mod hex32;
mod hlc;
mod ids;
mod precedence;

pub use batch::MAX_BATCH;
pub use envelope::{
    DecodeError, Envelope, Header, Kind, MAX_DEPS, MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES,
    NONCE_LEN, SIGNATURE_LEN, SealedPayload, SignError, Signer, UnsignedEnvelope, WIRE_VERSION,
    signing_message,
};
pub use hex32::ParseIdError;
pub use hlc::{Hlc, HlcClock, rfc3339};
pub use ids::{ChannelId, CompartmentId, EnvelopeId, NodeId, sha256};
pub use precedence::{ParsePrecedenceError, Precedence};
