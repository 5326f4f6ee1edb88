//! In-memory backend: same semantics as sled, nothing durable. For the simulator and tests.

use crate::keys::{channel_key, channel_prefix, genesis_key, id_from_channel_key, is_genesis};
use crate::{PutOutcome, ReadError, Store, StoreStats, WriteError};
use fieldmesh_core::{ChannelId, Envelope, EnvelopeId};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    quota: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    envelopes: BTreeMap<EnvelopeId, Envelope>,
    stats: StoreStats,
}

impl MemStore {
    /// An empty store with an optional byte quota.
    pub fn new(quota: Option<u64>) -> MemStore {
        MemStore {
            inner: Mutex::default(),
            quota,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every mutation below
        // is a single insert), so a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn put_batch(&self, envs: &[Envelope]) -> Result<Vec<PutOutcome>, WriteError> {
        let mut g = self.lock();
        let mut seen = std::collections::BTreeSet::new();
        let mut adding = 0u64;
        let outcomes: Vec<PutOutcome> = envs
            .iter()
            .map(|e| {
                if g.envelopes.contains_key(&e.id()) || !seen.insert(e.id()) {
                    PutOutcome::Duplicate
                } else {
                    adding += e.encoded_len() as u64;
                    PutOutcome::Inserted
                }
            })
            .collect();
        if let Some(quota) = self.quota
            && g.stats.bytes + adding > quota
        {
            return Err(WriteError::QuotaExceeded {
                used: g.stats.bytes,
                adding,
                quota,
            });
        }
        for (e, o) in envs.iter().zip(&outcomes) {
            if *o == PutOutcome::Inserted {
                g.map.insert(channel_key(e).to_vec(), Vec::new());
                if is_genesis(e) {
                    g.map
                        .entry(genesis_key(&e.header().channel).to_vec())
                        .or_insert_with(|| e.id().0.to_vec());
                }
                g.envelopes.insert(e.id(), e.clone());
                g.stats.envelopes += 1;
                g.stats.bytes += e.encoded_len() as u64;
            }
        }
        Ok(outcomes)
    }

    fn remove(&self, ids: &[EnvelopeId]) -> Result<StoreStats, WriteError> {
        let mut g = self.lock();
        let mut removed = StoreStats::default();
        for id in ids {
            if g.envelopes.get(id).is_none_or(is_genesis) {
                continue;
            }
            let e = g.envelopes.remove(id).expect("present");
            g.map.remove(&channel_key(&e)[..]);
            let size = e.encoded_len() as u64;
            g.stats.envelopes -= 1;
            g.stats.bytes -= size;
            removed.envelopes += 1;
            removed.bytes += size;
        }
        Ok(removed)
    }

    fn get(&self, id: &EnvelopeId) -> Result<Option<Envelope>, ReadError> {
        Ok(self.lock().envelopes.get(id).cloned())
    }

    fn contains(&self, id: &EnvelopeId) -> Result<bool, ReadError> {
        Ok(self.lock().envelopes.contains_key(id))
    }

    fn channel_envelopes(&self, channel: &ChannelId) -> Result<Vec<Envelope>, ReadError> {
        let g = self.lock();
        let prefix = channel_prefix(channel);
        g.map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| {
                let id =
                    id_from_channel_key(k).ok_or_else(|| ReadError::CorruptIndex(hex_key(k)))?;
                g.envelopes
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| ReadError::CorruptIndex(format!("dangling {id}")))
            })
            .collect()
    }

    fn channels(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError> {
        let g = self.lock();
        Ok(g.map
            .range(vec![crate::keys::GENESIS]..vec![crate::keys::GENESIS + 1])
            .map(|(k, v)| {
                (
                    ChannelId(k[1..33].try_into().expect("32")),
                    EnvelopeId(v[..32].try_into().expect("32")),
                )
            })
            .collect())
    }

    fn channel_firsts(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError> {
        let g = self.lock();
        let mut out = Vec::new();
        let mut from = vec![crate::keys::CHANNEL];
        while let Some((k, _)) = g.map.range(from..).next() {
            if k.first() != Some(&crate::keys::CHANNEL) {
                break;
            }
            let Some((channel, id)) = crate::keys::parse_channel_key(k) else {
                from = k.clone();
                from.push(0);
                continue;
            };
            out.push((channel, id));
            from = crate::keys::after_channel(&channel);
        }
        Ok(out)
    }

    fn ids(&self) -> Result<Vec<EnvelopeId>, ReadError> {
        Ok(self.lock().envelopes.keys().copied().collect())
    }

    fn stats(&self) -> Result<StoreStats, ReadError> {
        Ok(self.lock().stats)
    }
}

pub(crate) fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}
