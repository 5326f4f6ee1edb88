//! The durable backend on sled 0.34.
//!
//! One tree holds everything (see `keys.rs`), so that every write is a single atomic
//! `Batch`, followed by `flush` (fsync) before the call returns. Counters live in the same
//! batch, so they can never disagree with the data after a crash. Envelopes of 8 KiB and
//! more (attachment chunks) are written to the value log (`vlog.rs`) first, made durable
//! there, and sled holds a pointer to them.

use crate::error::is_disk_full;
use crate::keys::{
    channel_key, channel_prefix, envelope_key, genesis_key, id_from_channel_key, is_genesis,
    meta_key,
};
use crate::mem::hex_key;
use crate::vlog::{self, Pointer, ValueLog};
use crate::{DamageHook, OpenError, PutOutcome, ReadError, Store, StoreStats, Summary, WriteError};
use fieldmesh_core::{ChannelId, Envelope, EnvelopeId, Kind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The store format this build writes and the newest it reads. 2: large envelopes live in
/// the value log (a format-1 store opens and is marked 2 from then on). 3: value-log
/// pointers carry the envelope's summary (a format-2 store opens and is marked 3; its
/// older pointers are still read; a build that knows only format 2 refuses the store
/// instead of taking the new pointers for damaged envelopes). 4: each value-log record
/// starts on a block boundary and owns its blocks, so that removing it frees them all
/// (pointers say so; older ones are still read and released as before).
pub const FORMAT_VERSION: u32 = 4;

/// A durable store in a directory.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    quota: Option<u64>,
    /// Set when a batch reached sled but its flush failed: sled's memory then holds data
    /// that may not be durable, so nothing more may be acknowledged.
    poisoned: AtomicBool,
    /// Envelope count and bytes, as last written (read once at open, then kept here and
    /// written in every batch). Its lock also serialises writers, so that the duplicate
    /// check and the counters are exact.
    counters: Mutex<StoreStats>,
    /// Large envelopes' bytes.
    vlog: ValueLog,
    /// Envelopes found damaged on disk (by a read), and whether the damage hook has
    /// taken the notice. A verified copy that arrives later replaces the damaged one
    /// instead of counting as a duplicate.
    damaged: Mutex<std::collections::HashMap<EnvelopeId, bool>>,
    /// Told of each envelope newly found damaged.
    damage_hook: std::sync::OnceLock<DamageHook>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("quota", &self.quota)
            .field("vlog", &self.vlog)
            .finish_non_exhaustive()
    }
}

fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_be_bytes(b)
}

/// Snapshot files sled had not finished writing (`snap.<lsn>.generating`).
fn unfinished_snapshots(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"))
        })
        .collect()
}

/// Works around a crash-recovery bug in sled 0.34.7: a process killed while writing a
/// snapshot leaves `snap.<lsn>.generating`, and the next open picks that file as the
/// newest snapshot (it sorts after the finished ones) and fails with "Read corrupted
/// data". Such a file is never valid: sled renames it to `snap.<lsn>` only after writing
/// and fsyncing it, and snapshots only speed up recovery (the log is replayed from the
/// previous finished snapshot). The files are moved into `unfinished-snapshots/`, not
/// deleted, and the open is retried once. Only called after sled refused the store with
/// a corruption error, so no other process holds it.
fn quarantine_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    let keep = dir.join("unfinished-snapshots");
    std::fs::create_dir_all(&keep)?;
    for p in unfinished_snapshots(dir) {
        let name = p.file_name().unwrap_or_default().to_owned();
        let mut to = keep.join(&name);
        let mut n = 1;
        while to.exists() {
            to = keep.join(format!("{}.{n}", name.to_string_lossy()));
            n += 1;
        }
        tracing::warn!(
            file = %p.display(),
            kept = %to.display(),
            "store: moving an unfinished sled snapshot aside (left by a crash) and reopening"
        );
        std::fs::rename(&p, &to)?;
    }
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store at `path`, with an optional byte quota. A store left by
    /// a crash in the middle of a sled snapshot is repaired (see
    /// [`quarantine_unfinished_snapshots`]); any other corruption is an error.
    pub fn open(path: &Path, quota: Option<u64>) -> Result<SledStore, OpenError> {
        let engine = |source| OpenError::Engine {
            path: path.to_owned(),
            source,
        };
        let open = || {
            sled::Config::new()
                .path(path)
                .mode(sled::Mode::HighThroughput)
                .open()
        };
        let db = match open() {
            Err(sled::Error::Corruption { .. }) if !unfinished_snapshots(path).is_empty() => {
                quarantine_unfinished_snapshots(path).map_err(|e| engine(e.into()))?;
                // The refused open's threads can hold sled's file lock for a moment
                // after it returned: retry a lock failure briefly.
                let mut tries = 0;
                loop {
                    match open() {
                        Err(sled::Error::Io(io))
                            if tries < 50 && io.to_string().contains("could not acquire lock") =>
                        {
                            tries += 1;
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        other => break other,
                    }
                }
            }
            other => other,
        };
        let db = db.map_err(|e| match e {
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                OpenError::Locked(path.to_owned())
            }
            sled::Error::Io(io) if is_disk_full(&io) => OpenError::DiskFull {
                path: path.to_owned(),
                source: io,
            },
            other => engine(other),
        })?;
        let format = db.get(meta_key("format")).map_err(engine)?;
        match format {
            Some(v) => {
                let found = u32::try_from(be_u64(&v)).unwrap_or(u32::MAX);
                if v.len() != 8 {
                    return Err(OpenError::NotAStore {
                        path: path.to_owned(),
                        reason: "format record has the wrong size".into(),
                    });
                }
                if found > FORMAT_VERSION {
                    return Err(OpenError::NewerFormat {
                        path: path.to_owned(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found < FORMAT_VERSION {
                    // Older stores read as they are; what is written from now on may use
                    // the value log, which older builds must refuse rather than misread.
                    db.insert(meta_key("format"), &u64::from(FORMAT_VERSION).to_be_bytes())
                        .map_err(engine)?;
                    db.flush().map_err(engine)?;
                }
            }
            None if db.is_empty() => {
                db.insert(meta_key("format"), &u64::from(FORMAT_VERSION).to_be_bytes())
                    .map_err(engine)?;
                db.flush().map_err(engine)?;
            }
            None => {
                return Err(OpenError::NotAStore {
                    path: path.to_owned(),
                    reason: "data present but no format record".into(),
                });
            }
        }
        let read = |name: &str| -> Result<u64, OpenError> {
            Ok(db
                .get(meta_key(name))
                .map_err(engine)?
                .map(|v| be_u64(&v))
                .unwrap_or(0))
        };
        let counters = StoreStats {
            envelopes: read("count")?,
            bytes: read("bytes")?,
        };
        let vlog = ValueLog::open(&path.join("vlog")).map_err(|e| match e {
            e if is_disk_full(&e) => OpenError::DiskFull {
                path: path.to_owned(),
                source: e,
            },
            e => engine(sled::Error::Io(e)),
        })?;
        Ok(SledStore {
            db,
            path: path.to_owned(),
            quota,
            poisoned: AtomicBool::new(false),
            damaged: Mutex::new(std::collections::HashMap::new()),
            damage_hook: std::sync::OnceLock::new(),
            counters: Mutex::new(counters),
            vlog,
        })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a format version record: used by tests to simulate a store from a newer
    /// release.
    #[doc(hidden)]
    pub fn force_format_version(&self, v: u32) -> Result<(), WriteError> {
        self.db
            .insert(meta_key("format"), &u64::from(v).to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The envelope under `id`, from its sled value: the bytes themselves, or a pointer
    /// into the value log.
    fn decode(&self, id: &EnvelopeId, value: &[u8]) -> Result<Envelope, ReadError> {
        let decoded = Envelope::decode_stored(&self.resolve(id, value)?, id)
            .map_err(|source| ReadError::Corrupt { id: *id, source });
        self.note_damage(id, decoded)
    }

    /// Writes `batch` with the counters set to `counters`, durably (flushed). A failure
    /// poisons the store: sled's memory may then hold data that is not on disk.
    fn commit(&self, mut batch: sled::Batch, counters: StoreStats) -> Result<(), WriteError> {
        batch.insert(meta_key("bytes"), &counters.bytes.to_be_bytes());
        batch.insert(meta_key("count"), &counters.envelopes.to_be_bytes());
        let durable = self.db.apply_batch(batch).and_then(|()| self.db.flush());
        if let Err(e) = durable {
            self.poisoned.store(true, Ordering::Release);
            return Err(match e {
                sled::Error::Io(io) if is_disk_full(&io) => WriteError::DiskFull(io),
                other => WriteError::Engine(other),
            });
        }
        Ok(())
    }

    /// The summary of the envelope a sled value stands for, or None if it is damaged
    /// (logged). A large envelope's summary is beside its pointer: the value is not read
    /// (damage in it is found by the read that needs it, and repaired then).
    fn summary_of(&self, id: &EnvelopeId, value: &[u8]) -> Result<Option<Summary>, ReadError> {
        if let Some(s) = Pointer::decode(value).and_then(|p| p.summary) {
            return Ok(Some(s));
        }
        match self.decode(id, value) {
            Ok(env) => Ok(Some(Summary::of(&env))),
            Err(e @ (ReadError::Corrupt { .. } | ReadError::CorruptIndex(_))) => {
                tracing::debug!(%id, %e, "summaries left out a damaged envelope");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Remembers `id` as damaged if reading it failed that way.
    fn note_damage<T>(&self, id: &EnvelopeId, r: Result<T, ReadError>) -> Result<T, ReadError> {
        if let Err(e @ (ReadError::Corrupt { .. } | ReadError::CorruptIndex(_))) = &r {
            let (told, first) = match self
                .damaged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(*id)
            {
                std::collections::hash_map::Entry::Occupied(o) => (*o.get(), false),
                std::collections::hash_map::Entry::Vacant(v) => (*v.insert(false), true),
            };
            // Logged once: every later read of the same envelope meets the same damage.
            if first {
                tracing::error!(%id, %e, "stored envelope is damaged; it reads as missing until a verified copy replaces it");
            } else {
                tracing::debug!(%id, %e, "stored envelope still damaged");
            }
            // Told outside the lock; a hook that does not take the notice hears it again
            // from the next read that finds the damage.
            if !told
                && let Some(hook) = self.damage_hook.get()
                && hook(*id)
                && let Some(t) = self
                    .damaged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(id)
            {
                *t = true;
            }
        }
        r
    }

    /// The envelope bytes a sled value stands for: itself, or what its pointer names in
    /// the value log (checked by the entry's CRC).
    fn resolve<'a>(
        &self,
        id: &EnvelopeId,
        value: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, ReadError> {
        match Pointer::decode(value) {
            None => Ok(std::borrow::Cow::Borrowed(value)),
            Some(p) => {
                let read = self
                    .vlog
                    .read(&p)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| match e.kind() {
                        // Removed (and its blocks released) since the pointer was read:
                        // not damage, the envelope is simply gone.
                        std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::NotFound
                            if self
                                .db
                                .get(envelope_key(id))
                                .is_ok_and(|now| now.as_deref() != Some(value)) =>
                        {
                            ReadError::Engine(sled::Error::Io(std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                format!("envelope {id} was removed while being read"),
                            )))
                        }
                        // The bytes are wrong or gone: damage.
                        std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::NotFound => {
                            ReadError::CorruptIndex(format!("envelope {id} in the value log: {e}"))
                        }
                        // The read failed (out of file handles, an I/O error): the
                        // envelope may be intact, so it is not taken for damaged.
                        _ => ReadError::Engine(sled::Error::Io(e)),
                    });
                self.note_damage(id, read)
            }
        }
    }
}

impl Store for SledStore {
    fn put_batch(&self, envs: &[Envelope]) -> Result<Vec<PutOutcome>, WriteError> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WriteError::Poisoned);
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut outcomes = Vec::with_capacity(envs.len());
        let mut adding = 0u64;
        let mut added = 0u64;
        // Verified copies of envelopes held damaged: written again, counted once.
        let mut repairs = Vec::new();
        let damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
        for e in envs {
            let id = e.id();
            if !seen.insert(id) {
                outcomes.push(PutOutcome::Duplicate);
            } else if self.db.contains_key(envelope_key(&id))? {
                if damaged.contains_key(&id) {
                    outcomes.push(PutOutcome::Inserted);
                    repairs.push(id);
                } else {
                    outcomes.push(PutOutcome::Duplicate);
                }
            } else {
                outcomes.push(PutOutcome::Inserted);
                adding += e.encoded_len() as u64;
                added += 1;
            }
        }
        drop(damaged);
        if added == 0 && repairs.is_empty() {
            return Ok(outcomes);
        }
        let used = counters.bytes;
        if let Some(quota) = self.quota
            && used + adding > quota
        {
            return Err(WriteError::QuotaExceeded {
                used,
                adding,
                quota,
            });
        }
        let count = counters.envelopes;
        // Large envelopes first go to the value log, durably, so that sled never points
        // at bytes that are not on disk.
        let large: Vec<&[u8]> = envs
            .iter()
            .zip(&outcomes)
            .filter(|(e, o)| **o == PutOutcome::Inserted && e.encoded_len() >= vlog::MIN_BYTES)
            .map(|(e, _)| e.as_bytes())
            .collect();
        let mut pointers = if large.is_empty() {
            Vec::new()
        } else {
            self.vlog.append(&large).map_err(|e| {
                if is_disk_full(&e) {
                    WriteError::DiskFull(e)
                } else {
                    WriteError::Engine(sled::Error::Io(e))
                }
            })?
        }
        .into_iter();
        let mut batch = sled::Batch::default();
        for (e, o) in envs.iter().zip(&outcomes) {
            if *o != PutOutcome::Inserted {
                continue;
            }
            if e.encoded_len() >= vlog::MIN_BYTES {
                let mut p = pointers.next().expect("one pointer per large envelope");
                p.summary = Some(Summary::of(e));
                batch.insert(&envelope_key(&e.id())[..], p.encode());
            } else {
                batch.insert(&envelope_key(&e.id())[..], e.as_bytes());
            }
            batch.insert(&channel_key(e)[..], &[][..]);
            if is_genesis(e) {
                let gk = genesis_key(&e.header().channel);
                if !self.db.contains_key(gk)? {
                    batch.insert(&gk[..], &e.id().0[..]);
                }
            }
        }
        self.commit(
            batch,
            StoreStats {
                envelopes: count + added,
                bytes: used + adding,
            },
        )?;
        *counters = StoreStats {
            envelopes: count + added,
            bytes: used + adding,
        };
        if !repairs.is_empty() {
            let mut d = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
            for id in &repairs {
                d.remove(id);
            }
            tracing::info!(
                repaired = repairs.len(),
                "damaged envelopes replaced by verified copies"
            );
        }
        Ok(outcomes)
    }

    /// One sled batch drops the envelopes, their channel index entries and the counters
    /// (durable before it returns); then the value log gives their blocks back. An
    /// envelope damaged on disk is not removed (its channel entry could not be found
    /// from it); it is logged and counted as kept.
    fn remove(&self, ids: &[EnvelopeId]) -> Result<StoreStats, WriteError> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WriteError::Poisoned);
        }
        let mut batch = sled::Batch::default();
        let mut removed = StoreStats::default();
        let mut pointers = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(v) = self.db.get(envelope_key(id))? else {
                continue;
            };
            let env = match self.decode(id, &v) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%id, %e, "a damaged envelope is not removed");
                    continue;
                }
            };
            if is_genesis(&env) {
                continue;
            }
            let size = match Pointer::decode(&v) {
                Some(p) => {
                    pointers.push(p);
                    u64::from(p.record_len())
                }
                None => v.len() as u64,
            };
            batch.remove(&envelope_key(id)[..]);
            batch.remove(&channel_key(&env)[..]);
            removed.envelopes += 1;
            removed.bytes += size;
        }
        if removed.envelopes == 0 {
            return Ok(removed);
        }
        let left = StoreStats {
            envelopes: counters.envelopes.saturating_sub(removed.envelopes),
            bytes: counters.bytes.saturating_sub(removed.bytes),
        };
        self.commit(batch, left)?;
        *counters = left;
        drop(counters);
        // Nothing names these bytes any more (durably): their blocks can go.
        self.vlog.release(&pointers);
        Ok(removed)
    }

    fn get(&self, id: &EnvelopeId) -> Result<Option<Envelope>, ReadError> {
        match self.db.get(envelope_key(id))? {
            Some(v) => Ok(Some(self.decode(id, &v)?)),
            None => Ok(None),
        }
    }

    /// Inline values are covered by sled's own log checksums; value-log entries by
    /// their CRC. Either way the bytes must still look like an envelope.
    fn get_bytes(&self, id: &EnvelopeId) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(v) = self.db.get(envelope_key(id))? else {
            return Ok(None);
        };
        let bytes = self.resolve(id, &v)?.into_owned();
        if !bytes.starts_with(b"FMEV") {
            return self.note_damage(
                id,
                Err(ReadError::CorruptIndex(format!(
                    "envelope {id}: stored bytes are not an envelope"
                ))),
            );
        }
        Ok(Some(bytes))
    }

    fn contains(&self, id: &EnvelopeId) -> Result<bool, ReadError> {
        Ok(self.db.contains_key(envelope_key(id))?)
    }

    fn on_damage(&self, hook: DamageHook) {
        if self.damage_hook.set(hook).is_err() {
            tracing::warn!("the store's damage hook is set already; the new one is ignored");
            return;
        }
        // What reads found before there was anyone to tell.
        let untold: Vec<EnvelopeId> = self
            .damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, told)| !**told)
            .map(|(id, _)| *id)
            .collect();
        if let Some(hook) = self.damage_hook.get() {
            let taken: Vec<EnvelopeId> = untold.into_iter().filter(|id| hook(*id)).collect();
            let mut damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
            for id in taken {
                if let Some(t) = damaged.get_mut(&id) {
                    *t = true;
                }
            }
        }
    }

    fn channel_envelopes(&self, channel: &ChannelId) -> Result<Vec<Envelope>, ReadError> {
        self.channel_envelopes_of(channel, &|_| true)
    }

    fn channel_envelopes_of(
        &self,
        channel: &ChannelId,
        keep: &dyn Fn(Kind) -> bool,
    ) -> Result<Vec<Envelope>, ReadError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(channel_prefix(channel)) {
            let (k, _) = kv?;
            let id = id_from_channel_key(&k).ok_or_else(|| ReadError::CorruptIndex(hex_key(&k)))?;
            let v = self.db.get(envelope_key(&id))?.ok_or_else(|| {
                ReadError::CorruptIndex(format!("channel index names missing envelope {id}"))
            })?;
            // A large value of a kind not wanted is not read.
            if let Some(s) = Pointer::decode(&v).and_then(|p| p.summary)
                && !keep(s.kind)
            {
                continue;
            }
            // One envelope damaged on disk must not make its whole channel unreadable:
            // it is left out (as if not yet received), and `get` still reports it.
            match self.decode(&id, &v) {
                Ok(e) if keep(e.header().kind) => out.push(e),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%id, %e, "channel read without a damaged envelope")
                }
            }
        }
        Ok(out)
    }

    fn channels(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([crate::keys::GENESIS]) {
            let (k, v) = kv?;
            if k.len() != 33 || v.len() != 32 {
                return Err(ReadError::CorruptIndex(hex_key(&k)));
            }
            out.push((
                ChannelId(k[1..].try_into().expect("32")),
                EnvelopeId(v[..].try_into().expect("32")),
            ));
        }
        Ok(out)
    }

    fn channel_firsts(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError> {
        let mut out = Vec::new();
        let mut from = vec![crate::keys::CHANNEL];
        while let Some(kv) = self.db.range(from..).next() {
            let (k, _) = kv?;
            if k.first() != Some(&crate::keys::CHANNEL) {
                break;
            }
            let Some((channel, id)) = crate::keys::parse_channel_key(&k) else {
                // One damaged index key must not hide every later channel.
                tracing::warn!(key = %hex_key(&k), "channel listing skips a damaged index key");
                from = k.to_vec();
                from.push(0);
                continue;
            };
            out.push((channel, id));
            from = crate::keys::after_channel(&channel);
        }
        Ok(out)
    }

    fn ids(&self) -> Result<Vec<EnvelopeId>, ReadError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([crate::keys::ENVELOPE]) {
            let (k, _) = kv?;
            if k.len() != 33 {
                return Err(ReadError::CorruptIndex(hex_key(&k)));
            }
            out.push(EnvelopeId(k[1..].try_into().expect("32")));
        }
        Ok(out)
    }

    fn channel_summaries(
        &self,
        channel: &ChannelId,
    ) -> Result<Vec<(EnvelopeId, Summary)>, ReadError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(channel_prefix(channel)) {
            let (k, _) = kv?;
            let id = id_from_channel_key(&k).ok_or_else(|| ReadError::CorruptIndex(hex_key(&k)))?;
            let Some(v) = self.db.get(envelope_key(&id))? else {
                continue;
            };
            out.extend(self.summary_of(&id, &v)?.map(|s| (id, s)));
        }
        Ok(out)
    }

    fn summaries(&self) -> Result<Vec<(EnvelopeId, Summary)>, ReadError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([crate::keys::ENVELOPE]) {
            let (k, v) = kv?;
            if k.len() != 33 {
                return Err(ReadError::CorruptIndex(hex_key(&k)));
            }
            let id = EnvelopeId(k[1..].try_into().expect("32"));
            out.extend(self.summary_of(&id, &v)?.map(|s| (id, s)));
        }
        Ok(out)
    }

    fn stats(&self) -> Result<StoreStats, ReadError> {
        Ok(*self.counters.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldmesh_core::{ChannelId, CompartmentId, Header, Hlc, Precedence};
    use fieldmesh_crypto::{NodeKey, PayloadKey, seal_envelope};

    /// A store written before summaries were kept beside pointers still gives every
    /// envelope's summary (by reading the value), and its pointers still resolve.
    #[test]
    fn pointers_without_a_summary_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = NodeKey::from_seed([3; 32]);
        let header = Header {
            kind: Kind::BLOB_CHUNK,
            precedence: Precedence::Priority,
            compartment: CompartmentId::OPEN,
            epoch: 0,
            channel: ChannelId([1; 32]),
            author: k.node_id(),
            hlc: Hlc(77),
            deps: vec![],
        };
        let e = seal_envelope(&k, header, &PayloadKey::open_compartment(), &[5; 30_000]).unwrap();
        let s = SledStore::open(dir.path(), None).unwrap();
        s.put(&e).unwrap();
        let key = envelope_key(&e.id());
        let v = s.db.get(key).unwrap().unwrap();
        let mut p = Pointer::decode(&v).unwrap();
        assert_eq!(p.summary, Some(Summary::of(&e)));
        // Rewrite it as the first format did.
        p.summary = None;
        let old = p.encode();
        assert_eq!(old.len(), 24);
        assert_eq!(&old[..4], b"FMVL");
        s.db.insert(key, old).unwrap();
        s.force_format_version(2).unwrap();
        s.db.flush().unwrap();
        drop(s);
        // A format-2 store opens, and is marked with this build's format.
        let s = SledStore::open(dir.path(), None).unwrap();
        let format = s.db.get(meta_key("format")).unwrap().unwrap();
        assert_eq!(be_u64(&format), u64::from(FORMAT_VERSION));
        assert_eq!(s.summaries().unwrap(), vec![(e.id(), Summary::of(&e))]);
        assert_eq!(s.get(&e.id()).unwrap().unwrap(), e);
        assert_eq!(
            s.channel_envelopes_of(&ChannelId([1; 32]), &|k| k == Kind::BLOB_CHUNK)
                .unwrap(),
            vec![e.clone()]
        );
        assert!(
            s.channel_envelopes_of(&ChannelId([1; 32]), &|k| k.is_channel_change())
                .unwrap()
                .is_empty()
        );
    }
}
