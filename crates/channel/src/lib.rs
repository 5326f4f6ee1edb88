//! Fieldmesh channels: one Automerge document per channel, materialised from envelopes.
//!
//! A channel starts from one genesis change, carried by the channel's first envelope,
//! which creates the root keys `meta` and `messages`. Every later change descends from it,
//! so replicas never race to create the same top-level key.
//!
//! Each envelope's payload is one Automerge change by the envelope's author, whose actor
//! id is the author's node id. Before a change is applied, [`schema`] checks every
//! operation against the channel rules, using only the change's causal past, so all
//! replicas accept or reject the same changes:
//!
//! * only the author of a message writes its fields (text, edits, attachments, redaction);
//! * a message key names its author (`<hlc:016x><author prefix:16 hex>`);
//! * reactions are keyed `<reactor prefix>:<emoji>`, and only the reactor writes them;
//! * `redacted` can only be set to `true`: a redaction never resurrects.
//!
//! ```
//! use fieldmesh_channel::{Channel, Incoming};
//! use fieldmesh_core::{EnvelopeId, Hlc, Kind, NodeId, Precedence};
//!
//! let alice = NodeId([1; 32]);
//! let (mut ch, genesis) = Channel::create(alice, "ops", Hlc::new(1_000, 0)).unwrap();
//! let post = ch.post(alice, Hlc::new(2_000, 0), "contact north", Precedence::Flash, None, vec![]).unwrap();
//!
//! // Another replica applies the same envelopes, in any order.
//! let mut other = Channel::new(ch.id());
//! other.apply(Incoming { envelope: EnvelopeId([2; 32]), author: alice, kind: Kind::CHANNEL_CHANGE, hlc: Hlc::new(2_000, 0), plaintext: &post.payload }).unwrap();
//! other.apply(Incoming { envelope: EnvelopeId([1; 32]), author: alice, kind: Kind::CHANNEL_GENESIS, hlc: Hlc::new(1_000, 0), plaintext: &genesis.payload }).unwrap();
//! assert_eq!(other.messages(), ch.messages());
//! assert_eq!(other.messages()[0].text, "contact north");
//! ```

mod channel;
mod error;
pub mod schema;
pub mod shape;
mod view;

pub use channel::{ApplyOutcome, Channel, Incoming, LocalChange, channel_id};
pub use error::{ApplyError, LocalOpError};
pub use view::{AttachmentRef, ChannelSummary, MessageView};

/// Largest message text in bytes; larger content is an attachment.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 256;
/// Most changes waiting for missing dependencies in one channel.
pub const MAX_PENDING: usize = 65_536;
/// Most bytes of changes waiting for missing dependencies in one channel.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Version byte at the start of every channel payload.
pub const PAYLOAD_VERSION: u8 = 1;

#[cfg(test)]
mod tests;
