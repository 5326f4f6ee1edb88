//! Errors of the channel operations.

use fieldmesh_core::EnvelopeId;
use thiserror::Error;

/// Applying an envelope's payload to a channel failed. The channel is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The payload is not a channel payload this build understands.
    #[error("envelope {envelope}: malformed channel payload: {reason}")]
    Malformed {
        /// The envelope.
        envelope: EnvelopeId,
        /// What is wrong.
        reason: String,
    },
    /// The change breaks a channel rule (for example, edits another author's message).
    #[error("envelope {envelope}: rejected by channel rules: {reason}")]
    Rejected {
        /// The envelope.
        envelope: EnvelopeId,
        /// Which rule.
        reason: String,
    },
    /// Automerge refused a batch of validated changes (a bug: please report).
    #[error("automerge refused a batch of validated changes: {0}")]
    Batch(String),
    /// A change shows that an author signed two changes with one sequence number, at or
    /// below one this replica already applied. Its changes from there on are refused on
    /// every replica; this one holds some in its document and refuses further changes:
    /// discard it and rebuild the channel from the store (every replica then agrees).
    #[error("channel {0}: an author equivocated below a change already applied; rebuild it")]
    Superseded(fieldmesh_core::ChannelId),
    /// Too many changes are waiting for their dependencies.
    #[error("channel has {0} changes waiting for dependencies; refusing more")]
    PendingFull(usize),
}

/// A local operation (post, edit, react, redact) could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LocalOpError {
    /// The channel's genesis has not arrived yet.
    #[error("channel genesis not received yet; cannot write to this channel")]
    NoGenesis,
    /// No such message in this channel.
    #[error("no message {0} in this channel")]
    UnknownMessage(String),
    /// Only the author of a message may do this.
    #[error("message {0} belongs to another author")]
    NotAuthor(String),
    /// The message was redacted.
    #[error("message {0} has been redacted")]
    Redacted(String),
    /// The input breaks a limit or a format rule.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Automerge refused the operation (a bug: please report).
    #[error("automerge: {0}")]
    Automerge(String),
}
