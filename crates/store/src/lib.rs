//! Fieldmesh store: where envelopes live.
//!
//! The [`Store`] trait has two backends that pass the same conformance tests:
//! [`SledStore`] (durable, the product) and [`MemStore`] (the simulator and unit tests).
//!
//! Rules every backend keeps:
//! * Only verified [`Envelope`]s go in (the type cannot be built from unverified bytes).
//! * A write returns only once it is durable; a batch is atomic. After a failed write the
//!   sled backend refuses further writes until reopened, so nothing non-durable is ever
//!   acknowledged (not even as a duplicate).
//! * Putting an envelope twice is harmless and reported as [`PutOutcome::Duplicate`].
//! * A byte quota, if set, is enforced before anything is written.
//!
//! ```
//! use fieldmesh_store::{MemStore, Store};
//! let store = MemStore::new(None);
//! assert_eq!(store.len().unwrap(), 0);
//! ```
//!
//! Why sled 0.34.7 and not 1.0 alpha: 0.34 has a stable on-disk format and years of field
//! use; the 1.0 alphas change their format between releases and say so. We need a store
//! that a field unit can reopen after a software update.

mod error;
mod keys;
mod mem;
mod sled_store;
mod vlog;

pub use error::{OpenError, ReadError, WriteError};
pub use mem::MemStore;
pub use sled_store::{FORMAT_VERSION, SledStore};

use fieldmesh_core::{ChannelId, Envelope, EnvelopeId, Hlc, Kind, Precedence};

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The envelope was new and is now durable.
    Inserted,
    /// The envelope was already stored.
    Duplicate,
}

/// Counts, for status displays and quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Envelopes stored.
    pub envelopes: u64,
    /// Sum of their encoded sizes.
    pub bytes: u64,
}

/// What the sync index and channel reads need to know of a stored envelope without
/// reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Its kind.
    pub kind: Kind,
    /// Its precedence.
    pub precedence: Precedence,
    /// Its timestamp.
    pub hlc: Hlc,
    /// Its encoded size in bytes.
    pub size: u32,
}

impl Summary {
    /// The summary of an envelope.
    pub fn of(env: &Envelope) -> Summary {
        let h = env.header();
        Summary {
            kind: h.kind,
            precedence: h.precedence,
            hlc: h.hlc,
            size: u32::try_from(env.encoded_len()).unwrap_or(u32::MAX),
        }
    }
}

/// Told the id of an envelope found damaged on disk; true once the notice is taken (a
/// notice not taken is given again by the next read that finds the damage). Must not
/// block.
pub type DamageHook = Box<dyn Fn(EnvelopeId) -> bool + Send + Sync>;

/// An envelope store. Implementations are safe to share between threads.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores one envelope durably.
    fn put(&self, env: &Envelope) -> Result<PutOutcome, WriteError> {
        Ok(self.put_batch(std::slice::from_ref(env))?[0])
    }
    /// Stores envelopes atomically and durably: all or none. Outcomes are in input order.
    fn put_batch(&self, envs: &[Envelope]) -> Result<Vec<PutOutcome>, WriteError>;
    /// One envelope by id.
    fn get(&self, id: &EnvelopeId) -> Result<Option<Envelope>, ReadError>;
    /// One envelope's canonical bytes, to send as they are. Checked against storage
    /// damage (by a checksum where the backend keeps one, else by decoding), not
    /// re-verified: the receiver verifies.
    fn get_bytes(&self, id: &EnvelopeId) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(self.get(id)?.map(|e| e.as_bytes().to_vec()))
    }
    /// Whether an envelope is stored.
    fn contains(&self, id: &EnvelopeId) -> Result<bool, ReadError>;
    /// Calls `hook` (from whichever thread read it) when a read finds a stored envelope
    /// damaged, once per envelope unless the hook does not take the notice, so that a
    /// copy can be fetched again while the node runs; envelopes found damaged before the
    /// hook was set are given to it at once. A store that cannot be damaged (in memory)
    /// never calls it.
    fn on_damage(&self, hook: DamageHook) {
        let _ = hook;
    }
    /// Every readable envelope's id and summary, in id order; envelopes found damaged
    /// are left out (and logged). Cheap where the backend keeps summaries beside large
    /// values: those are not read.
    fn summaries(&self) -> Result<Vec<(EnvelopeId, Summary)>, ReadError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.get(&id) {
                Ok(Some(env)) => out.push((id, Summary::of(&env))),
                Ok(None) => {}
                Err(e @ (ReadError::Corrupt { .. } | ReadError::CorruptIndex(_))) => {
                    tracing::error!(%id, %e, "stored envelope is damaged; it is left out");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    /// A channel's envelopes of the kinds `keep` accepts, in time order (damaged ones
    /// left out, as [`Store::channel_envelopes`]). Where the backend knows a large
    /// value's kind without reading it, values of other kinds are not read.
    fn channel_envelopes_of(
        &self,
        channel: &ChannelId,
        keep: &dyn Fn(Kind) -> bool,
    ) -> Result<Vec<Envelope>, ReadError> {
        let mut all = self.channel_envelopes(channel)?;
        all.retain(|e| keep(e.header().kind));
        Ok(all)
    }
    /// Every envelope of a channel, in (HLC, id) order. An envelope damaged on disk is
    /// left out (and logged); `get` reports it as corrupt.
    fn channel_envelopes(&self, channel: &ChannelId) -> Result<Vec<Envelope>, ReadError>;
    /// A channel's envelope ids and summaries, in (HLC, id) order (damaged ones left
    /// out). Where the backend keeps a large value's summary beside its pointer, the
    /// value is not read.
    fn channel_summaries(
        &self,
        channel: &ChannelId,
    ) -> Result<Vec<(EnvelopeId, Summary)>, ReadError> {
        Ok(self
            .channel_envelopes(channel)?
            .iter()
            .map(|e| (e.id(), Summary::of(e)))
            .collect())
    }
    /// Removes envelopes for good (a relay making room); ids not stored are skipped, and
    /// so is a channel's genesis (a channel is never left without its definition).
    /// Durable when it returns: what it reports removed is gone after a crash too.
    /// Returns how many envelopes and bytes were removed.
    fn remove(&self, ids: &[EnvelopeId]) -> Result<StoreStats, WriteError>;
    /// Channels for which a genesis envelope is stored, with its id.
    fn channels(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError>;
    /// Every channel with an envelope stored, genesis or not, with the id of its
    /// earliest envelope in (HLC, id) order: one index lookup per channel. A damaged
    /// index key is skipped (logged), not an error.
    fn channel_firsts(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError>;
    /// All envelope ids, ascending.
    fn ids(&self) -> Result<Vec<EnvelopeId>, ReadError>;
    /// Envelope count and bytes.
    fn stats(&self) -> Result<StoreStats, ReadError>;
    /// Number of envelopes stored.
    fn len(&self) -> Result<u64, ReadError> {
        Ok(self.stats()?.envelopes)
    }
    /// Whether the store is empty.
    fn is_empty(&self) -> Result<bool, ReadError> {
        Ok(self.len()? == 0)
    }
}
