//! The node service: identity, store, clock and materialised channels behind one API
//! that the CLI, the HTTP server and the bench share.

use crate::bundle;
use crate::ops::{Identity, ImportReport, NodeError, Ops, PostRequest, Posted, StoredEvent};
use fieldmesh_channel::{
    AttachmentRef, Channel, ChannelSummary, Incoming, LocalChange, LocalOpError, MessageView,
};
use fieldmesh_core::{
    ChannelId, CompartmentId, Envelope, EnvelopeId, Header, Hlc, HlcClock, NodeId,
};
use fieldmesh_crypto::{NodeKey, PayloadKey, open_envelope, seal_envelope};
use fieldmesh_profiles::Profile;
use fieldmesh_store::{PutOutcome, SledStore, Store, WriteError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sync metadata of an envelope.
/// A running node.
pub struct Node {
    pub(crate) key: NodeKey,
    name: String,
    pub(crate) store: Arc<dyn Store>,
    profile: Profile,
    pub(crate) clock: Mutex<HlcClock>,
    pub(crate) channels: Mutex<HashMap<ChannelId, Channel>>,
    /// Directory, keys granted to this node. Lock order: `channels` before `access`.
    pub(crate) access: Mutex<crate::access::Access>,
    /// The compartment of each channel, from its genesis.
    compartment_of: Mutex<HashMap<ChannelId, CompartmentId>>,
    /// Channels no stored genesis proves here, with the keys generation they were
    /// judged under and the compartment their indexed genesis claims (only ever used to
    /// explain a refusal): judged again when a genesis for them arrives or the keys
    /// change (a relay that cannot open a channel would otherwise scan it on every look).
    unproven: Mutex<HashMap<ChannelId, (u64, Option<CompartmentId>)>>,
    /// The node's home (trust list, audit log), when it has one.
    pub(crate) home: Option<std::path::PathBuf>,
    pub(crate) audit: Option<crate::audit::AuditLog>,
    pub(crate) duty_tx: std::sync::OnceLock<std::sync::mpsc::SyncSender<()>>,
    pub(crate) duty_lock: Mutex<()>,
    events: tokio::sync::broadcast::Sender<StoredEvent>,
    /// The network, once the daemon has started it.
    net: std::sync::OnceLock<fieldmesh_net::NetHandle>,
    /// Models loaded by this process.
    pub(crate) ai: crate::ai::AiState,
    /// Which chunk envelopes carry each attachment, learnt by storing or opening them: a
    /// chunk's attachment is named only inside its sealed payload. Taken alone.
    blob_chunks: Mutex<BlobIndex>,
    /// What this node carries for others (see [`Node::carried_for_others`]).
    relay: Mutex<Relay>,
    /// Counts changes of this node's keys (bumped under the `access` lock): what it
    /// carries for others is read again from the store before the next judgement, and
    /// nothing chosen for removal under older keys is removed (a compartment whose key
    /// arrived is its own traffic now, and must never be pushed out or aged out).
    pub(crate) keys_generation: std::sync::atomic::AtomicU64,
}

use crate::relay::{Held, Rank, Relay};

/// What [`Node::admit_relayed`] decided for a batch.
struct Admitted {
    /// To store.
    keep: Vec<Envelope>,
    /// Others' envelopes not kept.
    declined: Vec<EnvelopeId>,
    /// What is kept for others (counted against the quota already).
    carried: Vec<(EnvelopeId, fieldmesh_store::Summary)>,
    /// Stored envelopes to push out once the batch is stored.
    evict: Vec<(Rank, u64)>,
    /// The keys generation the judgement was made under.
    generation: u64,
}

/// What a node carries for others (see [`Node::relay_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStatus {
    /// Bytes stored for others.
    pub used: u64,
    /// The profile's relay quota.
    pub quota: u64,
    /// Envelopes declined since start: over the quota, or dated more than a day ahead.
    pub declined: u64,
    /// Envelopes pushed out since start, to make room.
    pub evicted: u64,
    /// Envelopes removed or declined since start, past the profile's retention.
    pub aged_out: u64,
}

/// What [`Node::ingest`] did with a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    pub inserted: usize,
    pub duplicates: usize,
    /// Authentic envelopes, stored, whose change the channel rules refused.
    pub channel_rejects: Vec<String>,
    /// Others' traffic not kept: over the relay quota, or past the profile's retention.
    pub declined: Vec<EnvelopeId>,
    /// Others' traffic stored earlier and pushed out to make room for this batch.
    pub evicted: Vec<EnvelopeId>,
}

/// An attachment in one channel: the same bytes attached in two channels are two sets
/// of chunk envelopes.
type BlobKey = (ChannelId, [u8; 32]);

/// Chunk envelope ids of the attachments this process created, or opened in a scan of
/// their channel.
#[derive(Debug, Default)]
struct BlobIndex {
    chunks: HashMap<BlobKey, Vec<EnvelopeId>>,
    ids: usize,
}

impl BlobIndex {
    /// At most this many chunk ids are remembered: 12 GiB of attachments, in 8 MiB of ids
    /// (up to 35 MiB with the map's own cost when every attachment is a single chunk).
    /// Recording past it starts the index again; what still does not fit is not kept.
    const MAX_IDS: usize = 1 << 18;

    /// Remembers what a scan (or a post) found, `wanted` first.
    fn record(&mut self, wanted: &BlobKey, mut found: HashMap<BlobKey, Vec<EnvelopeId>>) {
        let adding: usize = found.values().map(Vec::len).sum();
        let replacing: usize = found
            .keys()
            .filter_map(|k| self.chunks.get(k))
            .map(Vec::len)
            .sum();
        if self.ids - replacing + adding > Self::MAX_IDS {
            self.chunks.clear();
            self.ids = 0;
        }
        let first = found.remove_entry(wanted);
        for (key, ids) in first.into_iter().chain(found) {
            let replaced = self.chunks.get(&key).map_or(0, Vec::len);
            if self.ids - replaced + ids.len() > Self::MAX_IDS {
                continue;
            }
            self.ids = self.ids - replaced + ids.len();
            self.chunks.insert(key, ids);
        }
    }

    fn get(&self, key: &BlobKey) -> Option<Vec<EnvelopeId>> {
        self.chunks.get(key).cloned()
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.key.node_id())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl From<WriteError> for NodeError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::QuotaExceeded { .. } | WriteError::DiskFull(_) => {
                NodeError::Storage(e.to_string())
            }
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl From<fieldmesh_store::ReadError> for NodeError {
    fn from(e: fieldmesh_store::ReadError) -> Self {
        NodeError::Internal(e.to_string())
    }
}

impl From<LocalOpError> for NodeError {
    fn from(e: LocalOpError) -> Self {
        match e {
            LocalOpError::UnknownMessage(_) => NodeError::NotFound(e.to_string()),
            LocalOpError::NotAuthor(_) | LocalOpError::Redacted(_) => {
                NodeError::Conflict(e.to_string())
            }
            LocalOpError::Invalid(_) | LocalOpError::NoGenesis => {
                NodeError::BadRequest(e.to_string())
            }
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl Node {
    /// A node over an already-open store.
    pub fn new(key: NodeKey, name: String, store: Arc<dyn Store>, profile: Profile) -> Node {
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let node = Node {
            key,
            name,
            store,
            profile,
            clock: Mutex::new(HlcClock::default()),
            channels: Mutex::default(),
            access: Mutex::default(),
            compartment_of: Mutex::default(),
            unproven: Mutex::default(),
            home: None,
            audit: None,
            duty_tx: std::sync::OnceLock::new(),
            duty_lock: Mutex::new(()),
            events,
            net: std::sync::OnceLock::new(),
            ai: crate::ai::AiState::default(),
            blob_chunks: Mutex::default(),
            relay: Mutex::default(),
            keys_generation: std::sync::atomic::AtomicU64::new(0),
        };
        if let Err(e) = node.load_directory() {
            tracing::error!(%e, "could not load the directory");
        }
        node
    }

    /// Gives the node its home: the trust list it reads and the audit log it writes.
    pub fn with_home(mut self, root: &std::path::Path) -> anyhow::Result<Node> {
        self.audit = Some(crate::audit::AuditLog::open(&root.join("audit.log"))?);
        self.home = Some(root.to_owned());
        Ok(self)
    }

    /// Opens the sled store in `path` with the profile's storage budget.
    pub fn open_store(
        path: &std::path::Path,
        profile: &Profile,
    ) -> Result<Arc<SledStore>, fieldmesh_store::OpenError> {
        let quota = profile.storage.budget_mb.saturating_mul(1024 * 1024);
        Ok(Arc::new(SledStore::open(path, Some(quota))?))
    }

    /// Connects the network: local writes are announced from now on, and an envelope a
    /// read finds damaged is fetched again from a peer.
    pub fn attach_net(&self, net: fieldmesh_net::NetHandle) {
        let tell = net.clone();
        self.store.on_damage(Box::new(move |id| tell.damaged(id)));
        let _ = self.net.set(net);
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The sync index over everything stored (relayed envelopes included), from the
    /// store's summaries: an attachment chunk's summary is kept beside its value-log
    /// pointer, so starting a node does not read its attachments (it had read and hashed
    /// every byte: 0.87 s per 256 MiB with a cold cache). An envelope found damaged is
    /// left out, with an error: the node still starts and serves the rest (refusing to
    /// start had made one flipped bit cost the whole node); damage in a chunk that was
    /// not read is found by the read that needs it, and repaired then from a peer.
    pub fn sync_index(&self) -> Result<fieldmesh_sync::Index, NodeError> {
        let mut ix = fieldmesh_sync::Index::default();
        for (id, s) in self.store.summaries()? {
            ix.insert(
                id,
                fieldmesh_sync::Meta {
                    precedence: s.precedence,
                    size: s.size,
                    hlc: s.hlc,
                },
            );
        }
        Ok(ix)
    }

    pub(crate) fn announce(&self, env: &Envelope) {
        if let Some(net) = self.net.get() {
            net.inserted(env.id(), fieldmesh_sync::Meta::of(env));
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    /// The keys that may open an envelope of `compartment` sealed at `epoch` (none when
    /// this node was not granted it).
    fn payload_keys(&self, compartment: &CompartmentId, epoch: u32) -> Vec<PayloadKey> {
        if *compartment == CompartmentId::OPEN {
            return vec![PayloadKey::open_compartment()];
        }
        lock(&self.access).keys_for(compartment, epoch)
    }

    /// Opens an envelope with whichever of this node's keys fits. `Ok(None)`: no key.
    pub(crate) fn open(
        &self,
        env: &Envelope,
    ) -> Result<Option<Vec<u8>>, fieldmesh_crypto::OpenError> {
        let h = env.header();
        let keys = self.payload_keys(&h.compartment, h.epoch);
        let mut last = None;
        for k in &keys {
            match open_envelope(env, k) {
                Ok(p) => return Ok(Some(p)),
                Err(e) => last = Some(e),
            }
        }
        last.map_or(Ok(None), Err)
    }

    /// Opens and applies one stored envelope to a channel replica. Envelopes this node
    /// cannot read are skipped (it still stores and forwards them).
    fn apply_to(&self, ch: &mut Channel, env: &Envelope) -> Result<(), String> {
        let Some(plaintext) = self.open(env).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let applied = ch.apply(Incoming::of(env, &plaintext));
        // The clock follows only changes the channel accepted (this one, and any it
        // released from waiting): one it refuses, or that still waits for its past,
        // must not drag every later timestamp ahead.
        lock(&self.clock).observe(ch.newest(), now_ms());
        applied.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Materialises a channel from the store: opens every envelope this node can read and
    /// applies them in one Automerge batch (falling back to one by one if the batch fails).
    pub fn materialise(&self, id: &ChannelId) -> Result<Channel, NodeError> {
        // Attachment chunks are not channel changes: not read at all.
        let envs = self
            .store
            .channel_envelopes_of(id, &|k| k.is_channel_change())?;
        let mut opened = Vec::with_capacity(envs.len());
        for env in &envs {
            match self.open(env) {
                Ok(None) => continue,
                Ok(Some(p)) => opened.push((env, p)),
                Err(e) => tracing::warn!(envelope = %env.id(), %e, "stored envelope does not open"),
            }
        }
        fn incoming<'a>((env, p): &'a (&Envelope, Vec<u8>)) -> Incoming<'a> {
            Incoming::of(env, p)
        }
        let mut ch = Channel::new(*id);
        match ch.apply_many(opened.iter().map(incoming)) {
            Ok(errors) => {
                for e in errors {
                    tracing::warn!(%e, "stored envelope not applied");
                }
            }
            Err(e) => {
                tracing::error!(%e, "batched materialisation failed; applying one by one");
                ch = Channel::new(*id);
                for item in &opened {
                    if let Err(e) = ch.apply(incoming(item)) {
                        tracing::warn!(%e, "stored envelope not applied");
                    }
                }
            }
        }
        // As for one change: the clock follows what the channel accepted.
        lock(&self.clock).observe(ch.newest(), now_ms());
        Ok(ch)
    }

    /// Runs `f` on the materialised channel, loading it into the cache if needed.
    pub(crate) fn with_channel<R>(
        &self,
        id: &ChannelId,
        f: impl FnOnce(&mut Channel) -> Result<R, NodeError>,
    ) -> Result<R, NodeError> {
        let mut cache = lock(&self.channels);
        let ch = match cache.entry(*id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.materialise(id)?),
        };
        f(ch)
    }

    /// Name of a channel from its genesis alone (cheap: no full materialisation).
    fn channel_name(
        &self,
        id: &ChannelId,
        genesis: &EnvelopeId,
    ) -> Result<Option<String>, NodeError> {
        if let Some(ch) = lock(&self.channels).get(id) {
            return Ok(ch.genesis().map(|g| g.name.clone()));
        }
        let name_in = |env: &Envelope| {
            let mut ch = Channel::new(*id);
            self.apply_to(&mut ch, env)
                .ok()
                .and_then(|_| ch.genesis().map(|g| g.name.clone()))
        };
        if let Some(name) = self.store.get(genesis)?.as_ref().and_then(name_in) {
            return Ok(Some(name));
        }
        // The indexed genesis is the first that arrived, which anyone could have forged:
        // the real one may be among the others.
        Ok(self
            .store
            .channel_envelopes_of(id, &|k| k == fieldmesh_core::Kind::CHANNEL_GENESIS)?
            .iter()
            .filter(|g| g.id() != *genesis)
            .find_map(name_in))
    }

    /// Resolves a channel by full id, or by name (which must be unambiguous).
    pub fn resolve(&self, spec: &str) -> Result<ChannelId, NodeError> {
        let channels = self.store.channels()?;
        if let Ok(id) = spec.parse::<ChannelId>() {
            if channels.iter().any(|(c, _)| *c == id) {
                return self.check_access(&id);
            }
            return Err(NodeError::NotFound(format!("unknown channel {spec}")));
        }
        let mut found = Vec::new();
        for (id, genesis) in &channels {
            if self.channel_name(id, genesis)?.as_deref() == Some(spec) {
                found.push(*id);
            }
        }
        match found.as_slice() {
            [one] => self.check_access(one),
            [] => Err(NodeError::NotFound(format!(
                "unknown channel {spec:?} (see `fieldmesh channel list`)"
            ))),
            many => Err(NodeError::Conflict(format!(
                "{} channels are named {spec:?}; use the id: {}",
                many.len(),
                many.iter()
                    .map(|c| c.to_hex())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The compartment a channel belongs to: its genesis envelope's, for the genesis
    /// that proves itself: this node can open it and the channel rules accept it (its
    /// author, time and name hash to the channel id). The store indexes the first
    /// genesis that arrived for an id, and anyone who has seen a channel id in a header
    /// can sign a "genesis" for it under any compartment: trusting that one had a member
    /// seal its own posts to a restricted channel under the public `open` key. If the
    /// indexed genesis does not prove itself, every genesis stored for the channel is
    /// tried; if none does (the real one has not arrived, or this node cannot open it),
    /// the channel is unknown here. A proven answer is remembered; so is the lack of one,
    /// until a genesis for the channel arrives or this node's keys change.
    pub(crate) fn channel_compartment(&self, id: &ChannelId) -> Result<CompartmentId, NodeError> {
        if let Some(c) = lock(&self.compartment_of).get(id) {
            return Ok(*c);
        }
        let unknown = || {
            NodeError::NotFound(format!(
                "channel {id}: no genesis this node can open and verify"
            ))
        };
        let generation = self.keys_generation();
        if lock(&self.unproven)
            .get(id)
            .is_some_and(|(g, _)| *g == generation)
        {
            return Err(unknown());
        }
        let indexed = self.indexed_genesis(id)?;
        let indexed_env = self.store.get(&indexed)?;
        let claimed = indexed_env.as_ref().map(|g| g.header().compartment);
        let proven = indexed_env.and_then(|env| self.proven_genesis(id, &env));
        let proven = match proven {
            Some(c) => Some(c),
            None => {
                tracing::debug!(channel = %id, genesis = %indexed, "the indexed genesis does not prove itself here; looking for the channel's real one");
                self.store
                    .channel_envelopes_of(id, &|k| k == fieldmesh_core::Kind::CHANNEL_GENESIS)?
                    .iter()
                    .find_map(|env| self.proven_genesis(id, env))
            }
        };
        let Some(c) = proven else {
            lock(&self.unproven).insert(*id, (generation, claimed));
            return Err(unknown());
        };
        lock(&self.compartment_of).insert(*id, c);
        Ok(c)
    }

    /// The genesis the store indexes for a channel: the first that arrived, unproven.
    fn indexed_genesis(&self, id: &ChannelId) -> Result<EnvelopeId, NodeError> {
        self.store
            .channels()?
            .into_iter()
            .find(|(c, _)| c == id)
            .map(|(_, g)| g)
            .ok_or_else(|| NodeError::NotFound(format!("unknown channel {id}")))
    }

    /// The compartment of `env` if it is a genesis of channel `id` that this node can open
    /// and the channel rules accept.
    fn proven_genesis(&self, id: &ChannelId, env: &Envelope) -> Option<CompartmentId> {
        let h = env.header();
        if h.kind != fieldmesh_core::Kind::CHANNEL_GENESIS || h.channel != *id {
            return None;
        }
        let plaintext = self.open(env).ok().flatten()?;
        let mut ch = Channel::new(*id);
        match ch.apply(Incoming::of(env, &plaintext)) {
            Ok(_) if ch.genesis().is_some() => Some(h.compartment),
            _ => None,
        }
    }

    /// Enforces compartments on every channel operation, and audits the decision.
    fn check_access(&self, id: &ChannelId) -> Result<ChannelId, NodeError> {
        let c = match self.channel_compartment(id) {
            Ok(c) => c,
            // Nothing proves the channel here. If its genesis is sealed for a compartment
            // this node holds no key of, that is the reason given (and audited); the
            // claim is never used to grant anything.
            Err(NodeError::NotFound(why)) => {
                let claimed = lock(&self.unproven).get(id).and_then(|(_, c)| *c);
                let claimed = claimed
                    .filter(|c| *c != CompartmentId::OPEN && !lock(&self.access).may_read(c));
                match claimed {
                    Some(c) => c,
                    None => return Err(NodeError::NotFound(why)),
                }
            }
            Err(e) => return Err(e),
        };
        if c == CompartmentId::OPEN {
            return Ok(*id);
        }
        let (ok, name) = {
            let a = lock(&self.access);
            let name = a.dir.state(&c).map_or_else(|| c.short(), |s| s.def.name);
            (a.may_read(&c), name)
        };
        self.audit(
            serde_json::json!({"event": if ok { "allowed" } else { "denied" }, "channel": id, "compartment": c}),
            !ok,
        );
        if ok {
            Ok(*id)
        } else {
            Err(NodeError::Forbidden(format!(
                "channel {} is in compartment {name:?}, for which this node holds no key (it carries the ciphertext only)",
                id.short()
            )))
        }
    }

    /// The epoch and key new envelopes of `compartment` are sealed under.
    fn sealing_key(&self, compartment: &CompartmentId) -> Result<(u32, PayloadKey), NodeError> {
        if *compartment == CompartmentId::OPEN {
            return Ok((0, PayloadKey::open_compartment()));
        }
        lock(&self.access).sealing_key(compartment)
    }

    fn seal(
        &self,
        channel: ChannelId,
        compartment: CompartmentId,
        local: &LocalChange,
    ) -> Result<Envelope, NodeError> {
        let (epoch, key) = self.sealing_key(&compartment)?;
        let header = Header {
            kind: local.kind,
            precedence: local.precedence,
            compartment,
            epoch,
            channel,
            author: self.node_id(),
            hlc: local.hlc,
            deps: local.deps.clone(),
        };
        let env = seal_envelope(&self.key, header, &key, &local.payload)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let limit = self.profile.sync.max_message_bytes as usize;
        if env.encoded_len() > limit {
            return Err(NodeError::TooLarge(format!(
                "envelope is {} bytes; profile {} allows {limit}",
                env.encoded_len(),
                self.profile.name
            )));
        }
        Ok(env)
    }

    /// Makes a local change, seals it, stores it durably and only then publishes it.
    pub(crate) fn write(
        &self,
        spec: &str,
        f: impl FnOnce(&mut Channel, NodeId, Hlc) -> Result<LocalChange, LocalOpError>,
    ) -> Result<Posted, NodeError> {
        let id = self.resolve(spec)?;
        let compartment = self.channel_compartment(&id)?;
        let me = self.node_id();
        let mut cache = lock(&self.channels);
        let ch = match cache.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.materialise(&id)?),
        };
        let hlc = lock(&self.clock).tick(now_ms());
        let local = f(ch, me, hlc)?;
        let stored = self
            .seal(id, compartment, &local)
            .and_then(|env| Ok((self.store.put(&env)?, env)));
        let env = match stored {
            Ok((_, env)) => env,
            Err(e) => {
                // The replica holds a change that is not durable: drop it; the next use
                // rebuilds the channel from the store.
                cache.remove(&id);
                return Err(e);
            }
        };
        ch.bind(local.change, env.id());
        self.announce(&env);
        if let Some(message) = ch.message(&local.message_id) {
            let _ = self.events.send(StoredEvent {
                channel: id,
                message,
            });
        }
        Ok(Posted {
            id: local.message_id,
            envelope: env.id().to_hex(),
            channel: id.to_hex(),
        })
    }

    /// Stores and applies verified envelopes from outside: a bundle, or a peer. `announce`
    /// tells the network about them (bundles); envelopes from the network itself are
    /// reported to the sync engine by its driver.
    /// Envelopes this node only carries for others are kept within the relay quota.
    pub fn ingest(&self, envs: Vec<Envelope>, announce: bool) -> Result<Ingested, NodeError> {
        let Admitted {
            keep: envs,
            declined,
            carried,
            evict,
            generation,
        } = self.admit_relayed(envs)?;
        let outcomes = match self.store.put_batch(&envs) {
            Ok(o) => o,
            Err(e) => {
                if let Some(held) = lock(&self.relay).held.as_mut()
                    && held.generation == generation
                {
                    held.release(&carried, &evict);
                }
                return Err(e.into());
            }
        };
        let evicted = self.settle_relayed(&carried, evict, generation);
        if announce
            && !evicted.is_empty()
            && let Some(net) = self.net.get()
        {
            net.evicted(evicted.clone());
        }
        let mut inserted = 0;
        let mut duplicates = 0;
        let mut channel_rejects = Vec::new();
        let mut directory = Vec::new();
        let mut cache = lock(&self.channels);
        for (env, outcome) in envs.iter().zip(outcomes) {
            if outcome == PutOutcome::Duplicate {
                duplicates += 1;
                continue;
            }
            inserted += 1;
            if announce {
                self.announce(env);
            }
            let cid = env.header().channel;
            if env.header().kind == fieldmesh_core::Kind::CHANNEL_GENESIS {
                lock(&self.unproven).remove(&cid);
            }
            if env.header().kind.is_directory() && cid == fieldmesh_crypto::directory_channel() {
                directory.push(env.clone());
                continue;
            }
            if !env.header().kind.is_channel_change() {
                continue;
            }
            if let Some(ch) = cache.get_mut(&cid) {
                match self.apply_to(ch, env) {
                    Ok(()) => {
                        // A post's id is derived from its author and time: look it up
                        // directly instead of scanning every view of the channel.
                        let h = env.header();
                        let id = fieldmesh_channel::schema::message_id(h.hlc, &h.author);
                        if let Some(m) = ch.message(&id).filter(|m| m.timestamp == h.hlc) {
                            let _ = self.events.send(StoredEvent {
                                channel: cid,
                                message: m,
                            });
                        }
                    }
                    Err(reason) => {
                        channel_rejects.push(format!("{}: {reason}", env.id()));
                        // An equivocating change outranked one this replica applied:
                        // rebuilt from the store on next use, it agrees with every other.
                        if ch.needs_rebuild() {
                            tracing::warn!(channel = %cid, "equivocation: rebuilding the channel");
                            cache.remove(&cid);
                        }
                    }
                }
            }
        }
        if !directory.is_empty() {
            // New keys make more of the store readable: rebuild channels on next use.
            if self.absorb_directory(&directory) {
                cache.clear();
            }
            drop(cache);
            self.schedule_duties();
        }
        Ok(Ingested {
            inserted,
            duplicates,
            channel_rejects,
            declined,
            evicted,
        })
    }

    fn keys_generation(&self) -> u64 {
        self.keys_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this node stores `h`'s envelope only to carry it for others: it is sealed
    /// for a compartment this node holds no key of (directory traffic is everyone's).
    fn carried_for_others(&self, h: &Header) -> bool {
        h.compartment != CompartmentId::OPEN
            && !h.kind.is_directory()
            && !lock(&self.access).may_read(&h.compartment)
    }

    /// What is stored for others, read from the store on first need: the channels whose
    /// genesis (or, where it never arrived, earliest envelope) is sealed for a
    /// compartment this node cannot read.
    fn relay_held<'a>(&self, relay: &'a mut Relay) -> Result<&'a mut Held, NodeError> {
        let generation = self.keys_generation();
        if relay
            .held
            .as_ref()
            .is_some_and(|h| h.generation != generation)
        {
            relay.held = None;
        }
        if relay.held.is_none() {
            // Keys that change during the count make the next judgement count again.
            let mut held = Held::default();
            held.generation = generation;
            for (channel, _) in self.store.channel_firsts()? {
                // A damaged genesis or index must not stop every later ingest: that
                // channel is left out of the count (and repaired by the read that finds
                // it).
                let listed = self.held_in(&channel);
                match listed {
                    Ok(list) => list.iter().for_each(|(id, s)| held.add(*id, s, now_ms())),
                    Err(e) => {
                        tracing::warn!(%channel, %e, "relay count leaves out a channel it cannot read")
                    }
                }
            }
            relay.held = Some(held);
        }
        Ok(relay.held.as_mut().expect("just set"))
    }

    /// The envelopes of `channel` this node stores only for others. Anyone who has seen a
    /// channel id can sign a "genesis" for it under any compartment, so the first genesis
    /// stored decides nothing: a forged one sealed for a compartment this node cannot read
    /// had made a channel of its own unit count as others' traffic after a restart, to be
    /// pushed out and aged out of its store.
    /// * A genesis this node opens and the channel rules accept: its own channel, nothing.
    /// * Geneses, every one sealed for a compartment this node cannot read: all of them
    ///   (their summaries suffice; nothing is read).
    /// * Otherwise (no genesis yet, or one it can open that the rules refuse): each
    ///   envelope by its own header, as when it arrived.
    fn held_in(
        &self,
        channel: &ChannelId,
    ) -> Result<Vec<(EnvelopeId, fieldmesh_store::Summary)>, fieldmesh_store::ReadError> {
        let geneses = self
            .store
            .channel_envelopes_of(channel, &|k| k == fieldmesh_core::Kind::CHANNEL_GENESIS)?;
        if geneses
            .iter()
            .any(|g| self.proven_genesis(channel, g).is_some())
        {
            return Ok(Vec::new());
        }
        let list = self.store.channel_summaries(channel)?;
        if !geneses.is_empty() && geneses.iter().all(|g| self.carried_for_others(g.header())) {
            return Ok(list);
        }
        Ok(list
            .into_iter()
            .filter(|(id, _)| {
                self.store
                    .get(id)
                    .ok()
                    .flatten()
                    .is_some_and(|e| self.carried_for_others(e.header()))
            })
            .collect())
    }

    /// Splits envelopes from outside into those to store and those declined: others'
    /// traffic beyond the relay quota that cannot be given room (see [`crate::relay`]).
    /// IMMEDIATE and FLASH are always carried, within the store's own budget.
    fn admit_relayed(&self, envs: Vec<Envelope>) -> Result<Admitted, NodeError> {
        let mut out = Admitted {
            keep: Vec::with_capacity(envs.len()),
            declined: Vec::new(),
            carried: Vec::new(),
            evict: Vec::new(),
            generation: 0,
        };
        if !envs.iter().any(|e| self.carried_for_others(e.header())) {
            out.keep = envs;
            return Ok(out);
        }
        let quota = self.profile.storage.relay_quota_bytes();
        let retention = crate::relay::Retention::of(&self.profile.retention);
        let now = now_ms();
        let (mut aged_out, mut ahead) = (0, 0);
        let mut relay = lock(&self.relay);
        let held = self.relay_held(&mut relay)?;
        out.generation = held.generation;
        // Each id is judged once per batch (group commits merge peers' batches): kept?
        let mut judged: HashMap<EnvelopeId, bool> = HashMap::new();
        for e in envs {
            if !self.carried_for_others(e.header()) {
                out.keep.push(e);
                continue;
            }
            let id = e.id();
            let kept = match judged.get(&id) {
                Some(&kept) => kept,
                None => {
                    let summary = fieldmesh_store::Summary::of(&e);
                    let size = u64::from(summary.size);
                    let (rank, _) = crate::relay::rank(id, &summary, now);
                    let urgent = summary.precedence >= fieldmesh_core::Precedence::Immediate;
                    let stored = match self.store.contains(&id) {
                        Ok(stored) => stored,
                        Err(e) => {
                            // Nothing of this judgement stays taken.
                            held.release(&out.carried, &out.evict);
                            return Err(e.into());
                        }
                    };
                    // Being stored by another ingest right now: counted by that one.
                    let kept = if held.pending.contains(&id) || stored {
                        true
                    } else if retention.aged_out(&summary, now) {
                        aged_out += 1;
                        out.declined.push(id);
                        false
                    } else if crate::relay::too_far_ahead(&summary, now) {
                        ahead += 1;
                        out.declined.push(id);
                        false
                    } else if let Some(room) = held.make_room(quota, size, &rank, urgent) {
                        out.evict.extend(room);
                        held.used += size;
                        held.pending.insert(id);
                        out.carried.push((id, summary));
                        true
                    } else {
                        out.declined.push(id);
                        false
                    };
                    judged.insert(id, kept);
                    kept
                }
            };
            if kept {
                out.keep.push(e);
            }
        }
        let over_quota = out.declined.len() as u64 - aged_out - ahead;
        relay.declined += over_quota + ahead;
        relay.aged_out += aged_out;
        if over_quota > 0 {
            tracing::warn!(
                declined = over_quota,
                quota,
                "relay quota full: others' envelopes declined"
            );
        }
        if aged_out > 0 {
            tracing::info!(
                declined = aged_out,
                "others' envelopes older than the profile's retention declined"
            );
        }
        if ahead > 0 {
            tracing::warn!(
                declined = ahead,
                "others' envelopes dated more than a day ahead of this node's clock declined"
            );
        }
        Ok(out)
    }

    /// After a batch is stored: what it carries for others may make room later, and
    /// what was chosen to make room for it is removed. Returns the ids removed (a
    /// removal that fails leaves them stored and counted).
    fn settle_relayed(
        &self,
        carried: &[(EnvelopeId, fieldmesh_store::Summary)],
        evict: Vec<(Rank, u64)>,
        generation: u64,
    ) -> Vec<EnvelopeId> {
        if carried.is_empty() && evict.is_empty() {
            return Vec::new();
        }
        let mut relay = lock(&self.relay);
        // Keys cannot change while the victims are removed.
        let _keys = lock(&self.access);
        let Some(held) = relay.held.as_mut() else {
            return Vec::new();
        };
        for (id, _) in carried {
            held.pending.remove(id);
        }
        if held.generation != generation || self.keys_generation() != generation {
            // Keys changed since the victims were chosen: some may be this node's own
            // traffic now. Nothing is removed; the next judgement counts again.
            relay.held = None;
            return Vec::new();
        }
        for (id, s) in carried {
            held.track(*id, s, now_ms());
        }
        let ids: Vec<EnvelopeId> = evict.iter().map(|(r, _)| r.2).collect();
        let removed = if ids.is_empty() {
            Ok(Default::default())
        } else {
            self.store.remove(&ids)
        };
        match removed {
            Ok(r) => {
                // A damaged envelope is not removed (the store skips it): not counted.
                relay.evicted += r.envelopes;
                if r.envelopes > 0 {
                    tracing::info!(
                        envelopes = r.envelopes,
                        bytes = r.bytes,
                        "relay quota full: older, less urgent traffic for others pushed out"
                    );
                }
                ids
            }
            Err(e) => {
                tracing::error!(%e, "could not remove envelopes to make room; they stay");
                held.restore(&evict);
                Vec::new()
            }
        }
    }

    /// Removes what this node carries for others that is older than the profile's
    /// retention for its precedence (see [`crate::relay`]), and tells the network, so
    /// that it is not fetched again. Returns the ids removed.
    pub fn age_out_relayed(&self) -> Result<Vec<EnvelopeId>, NodeError> {
        self.age_out_relayed_at(now_ms())
    }

    fn age_out_relayed_at(&self, now: u64) -> Result<Vec<EnvelopeId>, NodeError> {
        let retention = crate::relay::Retention::of(&self.profile.retention);
        let mut relay = lock(&self.relay);
        let held = self.relay_held(&mut relay)?;
        let generation = held.generation;
        let victims = held.age_out(&retention, now);
        if victims.is_empty() {
            return Ok(Vec::new());
        }
        // Keys cannot change while the victims are removed; if they changed since they
        // were counted, nothing is removed and the next sweep counts again.
        let keys = lock(&self.access);
        if self.keys_generation() != generation {
            relay.held = None;
            return Ok(Vec::new());
        }
        let ids: Vec<EnvelopeId> = victims.iter().map(|(r, _)| r.2).collect();
        let removed = self.store.remove(&ids);
        drop(keys);
        match removed {
            Ok(r) => {
                relay.aged_out += r.envelopes;
                drop(relay);
                tracing::info!(
                    envelopes = r.envelopes,
                    bytes = r.bytes,
                    "others' envelopes past the profile's retention removed"
                );
                if let Some(net) = self.net.get() {
                    net.evicted(ids.clone());
                }
                Ok(ids)
            }
            Err(e) => {
                if let Some(held) = relay.held.as_mut() {
                    held.restore(&victims);
                }
                Err(e.into())
            }
        }
    }

    /// Relay use: bytes carried for others, the quota, envelopes declined, pushed out
    /// and aged out since start.
    pub fn relay_status(&self) -> Result<RelayStatus, NodeError> {
        let mut relay = lock(&self.relay);
        let used = self.relay_held(&mut relay)?.used;
        Ok(RelayStatus {
            used,
            quota: self.profile.storage.relay_quota_bytes(),
            declined: relay.declined,
            evicted: relay.evicted,
            aged_out: relay.aged_out,
        })
    }
}

impl Ops for Node {
    fn identity(&self) -> Result<Identity, NodeError> {
        let id = self.node_id();
        Ok(Identity {
            name: self.name.clone(),
            short: id.short(),
            id: id.to_hex(),
            profile: self.profile.name.clone(),
        })
    }

    fn channels(&self) -> Result<Vec<ChannelSummary>, NodeError> {
        let mut out = Vec::new();
        for (id, _) in self.store.channels()? {
            if let Some(s) = self.with_channel(&id, |ch| Ok(ch.summary()))? {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn create_channel(
        &self,
        name: &str,
        compartment: Option<&str>,
    ) -> Result<ChannelSummary, NodeError> {
        if self.resolve(name).is_ok() {
            return Err(NodeError::Conflict(format!(
                "a channel named {name:?} already exists"
            )));
        }
        let compartment = match compartment {
            Some(spec) => self.compartment(spec)?,
            None => CompartmentId::OPEN,
        };
        let hlc = lock(&self.clock).tick(now_ms());
        let (mut ch, local) = Channel::create(self.node_id(), name, hlc)?;
        let env = self.seal(ch.id(), compartment, &local)?;
        lock(&self.compartment_of).insert(ch.id(), compartment);
        self.store.put(&env)?;
        ch.bind(local.change, env.id());
        self.announce(&env);
        let summary = ch
            .summary()
            .ok_or_else(|| NodeError::Internal("genesis not applied".into()))?;
        lock(&self.channels).insert(ch.id(), ch);
        Ok(summary)
    }

    fn read(&self, spec: &str) -> Result<Vec<MessageView>, NodeError> {
        let id = self.resolve(spec)?;
        self.with_channel(&id, |ch| Ok(ch.messages()))
    }

    fn post(&self, spec: &str, req: &PostRequest) -> Result<Posted, NodeError> {
        let requested = req
            .precedence
            .unwrap_or(fieldmesh_core::Precedence::Routine);
        // Casualty and MEDEVAC traffic is raised and flagged for a human at the source,
        // so it travels at its real precedence from the first hop.
        let (precedence, triage) = self.triage_post(&req.text, requested);
        let triage = triage.map(|t| t.to_string());
        if !req.attachments.is_empty() {
            // Attach only what is complete and verified here.
            let id = self.resolve(spec)?;
            for a in &req.attachments {
                self.blob(&id, a, &self.node_id())?;
            }
        }
        let attachments = req.attachments.clone();
        self.write(spec, |ch, me, hlc| {
            ch.post_annotated(
                me,
                hlc,
                &req.text,
                precedence,
                req.reply_to.as_deref(),
                attachments,
                triage.as_deref(),
            )
        })
    }

    fn edit(&self, spec: &str, msg: &str, text: &str) -> Result<Posted, NodeError> {
        self.write(spec, |ch, me, hlc| ch.edit(me, hlc, msg, text))
    }

    fn react(&self, spec: &str, msg: &str, reaction: &str, on: bool) -> Result<Posted, NodeError> {
        self.write(spec, |ch, me, hlc| ch.react(me, hlc, msg, reaction, on))
    }

    fn redact(&self, spec: &str, msg: &str) -> Result<Posted, NodeError> {
        self.write(spec, |ch, me, hlc| ch.redact(me, hlc, msg))
    }

    fn export_channel(&self, spec: &str) -> Result<Vec<u8>, NodeError> {
        let id = self.resolve(spec)?;
        self.with_channel(&id, |ch| Ok(ch.export()))
    }

    fn export_bundle(&self, spec: Option<&str>) -> Result<Vec<u8>, NodeError> {
        let envs = match spec {
            Some(s) => self.store.channel_envelopes(&self.resolve(s)?)?,
            None => {
                let mut all = Vec::new();
                for id in self.store.ids()? {
                    all.extend(self.store.get(&id)?);
                }
                all
            }
        };
        Ok(bundle::encode(&envs))
    }

    fn net(&self) -> Result<crate::ops::NetView, NodeError> {
        self.net_view()
    }

    fn put_blob(
        &self,
        spec: &str,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<AttachmentRef, NodeError> {
        crate::blob::check_size(data.len() as u64)?;
        let channel = self.resolve(spec)?;
        let compartment = self.channel_compartment(&channel)?;
        let (epoch, key) = self.sealing_key(&compartment)?;
        let (hash, payloads) = crate::blob::split(data);
        let mut chunks = Vec::with_capacity(payloads.len());
        for p in payloads {
            let hlc = lock(&self.clock).tick(now_ms());
            let header = Header {
                kind: fieldmesh_core::Kind::BLOB_CHUNK,
                precedence: fieldmesh_core::Precedence::Routine,
                compartment,
                epoch,
                channel,
                author: self.node_id(),
                hlc,
                deps: vec![],
            };
            chunks.push((header, p));
        }
        // One signature per batch of chunks: receivers check it once, not per chunk.
        let envs = fieldmesh_crypto::seal_envelopes(&self.key, &key, chunks)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let mut stored = 0;
        for batch in envs.chunks(256) {
            if let Err(e) = self.store.put_batch(batch) {
                // No message will name this attachment: the chunks already stored are
                // taken back, or they would replicate to every peer as dead weight (on a
                // full disk the removal can fail too; it is logged).
                let ids: Vec<EnvelopeId> = envs[..stored].iter().map(Envelope::id).collect();
                if !ids.is_empty()
                    && let Err(r) = self.store.remove(&ids)
                {
                    tracing::warn!(chunks = ids.len(), %r, "chunks of a failed attachment stay stored");
                }
                return Err(e.into());
            }
            stored += batch.len();
        }
        for e in &envs {
            self.announce(e);
        }
        // Posting it, and reading it, find its chunks by id.
        let key = (channel, hash);
        let ids = envs.iter().map(Envelope::id).collect();
        lock(&self.blob_chunks).record(&key, HashMap::from([(key, ids)]));
        Ok(AttachmentRef {
            hash: hex::encode(hash),
            name: name.to_owned(),
            size: data.len() as u64,
            mime: mime.to_owned(),
        })
    }

    fn get_attachment(&self, message: &str, index: usize) -> Result<Vec<u8>, NodeError> {
        for (id, _) in self.store.channels()? {
            let found = self.with_channel(&id, |ch| Ok(ch.message(message)))?;
            if let Some(m) = found {
                let a = m.attachments.get(index).ok_or_else(|| {
                    NodeError::NotFound(format!(
                        "message {message} has {} attachment(s); no #{index}",
                        m.attachments.len()
                    ))
                })?;
                return self.blob(&id, a, &m.author);
            }
        }
        Err(NodeError::NotFound(format!(
            "no message {message} in any channel this node can read"
        )))
    }

    fn access(&self, req: &crate::access::AccessRequest) -> Result<serde_json::Value, NodeError> {
        self.access_op(req)
    }

    fn ai(&self, req: &crate::ai::AiRequest) -> Result<serde_json::Value, NodeError> {
        self.ai_op(req)
    }

    fn import_bundle(&self, bytes: &[u8]) -> Result<ImportReport, NodeError> {
        let frames = bundle::decode(bytes).map_err(NodeError::BadRequest)?;
        let mut good = Vec::new();
        let mut rejected = Vec::new();
        for f in frames {
            match f {
                Ok(env) => good.push(env),
                Err((i, reason)) => rejected.push(format!("envelope #{i}: {reason}")),
            }
        }
        let total = good.len() + rejected.len();
        let done = self.ingest(good, true)?;
        Ok(ImportReport {
            total,
            inserted: done.inserted,
            duplicates: done.duplicates,
            declined: done.declined.len(),
            evicted: done.evicted.len(),
            rejected,
            channel_rejects: done.channel_rejects,
        })
    }
}

impl Node {
    /// Reassembles and verifies a blob from the chunk envelopes stored in `channel`,
    /// preferring the chunks `author` signed (see [`crate::blob::assemble`]). The chunks
    /// of an attachment stored or opened before are read by id; otherwise (or if those no
    /// longer make the whole attachment: chunks still arriving, one found damaged) every
    /// chunk of the channel is opened, and what each belongs to is remembered.
    fn blob(
        &self,
        channel: &ChannelId,
        a: &AttachmentRef,
        author: &NodeId,
    ) -> Result<Vec<u8>, NodeError> {
        crate::blob::check_size(a.size)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&a.hash, &mut hash)
            .map_err(|_| NodeError::BadRequest("attachment hash is not hex".into()))?;
        let key = (*channel, hash);
        let chunk = |e: &Envelope| {
            let h = e.header();
            if h.kind != fieldmesh_core::Kind::BLOB_CHUNK || h.channel != *channel {
                return None;
            }
            let chunk = crate::blob::decode(&self.open(e).ok().flatten()?).ok()?;
            Some(crate::blob::Found {
                signer: h.author,
                id: e.id(),
                chunk,
            })
        };
        let reload = |id: &EnvelopeId| {
            let e = self.store.get(id).ok().flatten()?;
            chunk(&e).map(|f| f.chunk)
        };
        let known = lock(&self.blob_chunks).get(&key);
        if let Some(ids) = known {
            let chunks = ids
                .iter()
                .filter_map(|id| self.store.get(id).ok().flatten())
                .filter_map(|e| chunk(&e));
            match crate::blob::assemble(&hash, a.size, author, chunks, reload) {
                Ok(data) => return Ok(data),
                Err(e) => {
                    tracing::debug!(attachment = %a.hash, %e, "known chunks fall short; opening the channel's");
                }
            }
        }
        let mut found: HashMap<BlobKey, Vec<EnvelopeId>> = HashMap::new();
        // One chunk in memory at a time (besides the blob being assembled): a channel can
        // hold gigabytes of others' attachments. Their summaries come from the index
        // without reading them; a chunk that cannot be read is left out, as if missing.
        let ids: Vec<EnvelopeId> = self
            .store
            .channel_summaries(channel)?
            .into_iter()
            .filter(|(_, s)| s.kind == fieldmesh_core::Kind::BLOB_CHUNK)
            .map(|(id, _)| id)
            .collect();
        let chunks = ids.iter().filter_map(|id| {
            let e = self.store.get(id).ok().flatten()?;
            let f = chunk(&e)?;
            found
                .entry((*channel, f.chunk.hash))
                .or_default()
                .push(f.id);
            (f.chunk.hash == hash).then_some(f)
        });
        let assembled = crate::blob::assemble(&hash, a.size, author, chunks, reload);
        lock(&self.blob_chunks).record(&key, found);
        assembled.map_err(NodeError::Conflict)
    }
}

/// The node as the network sees it: load bytes, store verified envelopes.
#[derive(Debug)]
pub struct NodeHost(pub Arc<Node>);

impl fieldmesh_net::Host for NodeHost {
    fn load(&self, id: &EnvelopeId) -> Option<Vec<u8>> {
        match self.0.store.get_bytes(id) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%id, %e, "cannot load a stored envelope to send");
                None
            }
        }
    }

    /// One durable write for the whole batch (the driver's group commit).
    fn store_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Result<fieldmesh_net::Stored, fieldmesh_net::IngestError> {
        let done = self
            .0
            .ingest(envelopes, false)
            .map_err(|e| fieldmesh_net::IngestError::Storage(e.to_string()))?;
        for r in done.channel_rejects {
            tracing::warn!(reason = %r, "stored envelope refused by channel rules");
        }
        Ok(fieldmesh_net::Stored {
            declined: done.declined,
            evicted: done.evicted,
        })
    }
}

impl Node {
    /// Network status, if the network runs in this process.
    pub fn net_view(&self) -> Result<crate::ops::NetView, NodeError> {
        let Some(net) = self.net.get() else {
            return Err(NodeError::Conflict("the network is not running: start the node with `fieldmesh run --listen ... [--peer ...]`".into()));
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| NodeError::Internal("no runtime".into()))?;
        let st = handle
            .block_on(net.status())
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let mut view = crate::ops::NetView::from(st);
        let relay = self.relay_status()?;
        view.relay_bytes = relay.used;
        view.relay_quota_bytes = relay.quota;
        view.relay_declined = relay.declined;
        view.relay_evicted = relay.evicted;
        view.relay_aged_out = relay.aged_out;
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldmesh_store::{MemStore, PutOutcome, ReadError, StoreStats};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The in-memory store, counting the scans of a channel for its chunks.
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemStore,
        chunk_scans: AtomicUsize,
        /// Writes that succeed before every later one fails as a full disk (0: none fail).
        puts_before_full: AtomicUsize,
    }

    impl Store for Counting {
        fn put_batch(&self, envs: &[Envelope]) -> Result<Vec<PutOutcome>, WriteError> {
            match self.puts_before_full.load(Ordering::Relaxed) {
                0 => {}
                1 => return Err(WriteError::DiskFull(std::io::ErrorKind::StorageFull.into())),
                n => self.puts_before_full.store(n - 1, Ordering::Relaxed),
            }
            self.inner.put_batch(envs)
        }
        fn get(&self, id: &EnvelopeId) -> Result<Option<Envelope>, ReadError> {
            self.inner.get(id)
        }
        fn contains(&self, id: &EnvelopeId) -> Result<bool, ReadError> {
            self.inner.contains(id)
        }
        fn remove(&self, ids: &[EnvelopeId]) -> Result<StoreStats, WriteError> {
            self.inner.remove(ids)
        }
        fn channel_envelopes_of(
            &self,
            channel: &ChannelId,
            keep: &dyn Fn(fieldmesh_core::Kind) -> bool,
        ) -> Result<Vec<Envelope>, ReadError> {
            if keep(fieldmesh_core::Kind::BLOB_CHUNK) {
                self.chunk_scans.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.channel_envelopes_of(channel, keep)
        }
        fn channel_envelopes(&self, channel: &ChannelId) -> Result<Vec<Envelope>, ReadError> {
            self.inner.channel_envelopes(channel)
        }
        /// Listing a channel's summaries is how a read looks for its chunks.
        fn channel_summaries(
            &self,
            channel: &ChannelId,
        ) -> Result<Vec<(EnvelopeId, fieldmesh_store::Summary)>, ReadError> {
            self.chunk_scans.fetch_add(1, Ordering::Relaxed);
            self.inner.channel_summaries(channel)
        }
        fn channels(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError> {
            self.inner.channels()
        }
        fn channel_firsts(&self) -> Result<Vec<(ChannelId, EnvelopeId)>, ReadError> {
            self.inner.channel_firsts()
        }
        fn ids(&self) -> Result<Vec<EnvelopeId>, ReadError> {
            self.inner.ids()
        }
        fn stats(&self) -> Result<StoreStats, ReadError> {
            self.inner.stats()
        }
    }

    /// A node on the ci-loopback profile over `store` (a real sled store; a second node
    /// over the same store is the same node restarted).
    fn node_on(store: &Arc<SledStore>) -> Node {
        let profile = Profile::builtin("ci-loopback").unwrap();
        Node::new(
            NodeKey::from_seed([5; 32]),
            "t".into(),
            store.clone(),
            profile,
        )
    }

    fn sled_store(dir: &std::path::Path) -> Arc<SledStore> {
        Node::open_store(dir, &Profile::builtin("ci-loopback").unwrap()).unwrap()
    }

    /// An envelope the test node only carries for others: sealed by a fixed author for
    /// compartment [9; 32], whose key it does not hold.
    fn for_others(
        channel: u8,
        kind: fieldmesh_core::Kind,
        precedence: fieldmesh_core::Precedence,
        hlc: Hlc,
        body: &[u8],
    ) -> Envelope {
        let author = NodeKey::from_seed([8; 32]);
        let header = Header {
            kind,
            precedence,
            compartment: CompartmentId([9; 32]),
            epoch: 1,
            channel: ChannelId([channel; 32]),
            author: author.node_id(),
            hlc,
            deps: vec![],
        };
        seal_envelope(&author, header, &PayloadKey::from_bytes([42; 32]), body).unwrap()
    }

    /// A profile's smallest frame cap holds the largest valid envelope in its frame, so
    /// no node strands an envelope another node could send.
    #[test]
    fn the_smallest_frame_cap_fits_the_largest_envelope() {
        let floor = *fieldmesh_profiles::FRAME_RANGE.start() as usize;
        let needed = fieldmesh_core::MAX_ENVELOPE_BYTES + 64;
        assert!(floor >= needed, "{floor} < {needed}");
    }

    /// Posts `text` to the channel `imagery` with `data` attached: the message id and
    /// the attachment reference.
    fn post_attached(node: &Node, text: &str, data: &[u8]) -> (String, AttachmentRef) {
        let att = node
            .put_blob("imagery", "map.bin", "application/octet-stream", data)
            .unwrap();
        let request = PostRequest {
            text: text.into(),
            precedence: None,
            reply_to: None,
            attachments: vec![att.clone()],
        };
        (node.post("imagery", &request).unwrap().id, att)
    }

    /// A node on the counting store, with a channel `imagery`.
    fn counting_node() -> (Arc<Counting>, Node) {
        let store = Arc::new(Counting::default());
        let node = Node::new(
            NodeKey::from_seed([5; 32]),
            "t".into(),
            store.clone(),
            Profile::builtin("ci-loopback").unwrap(),
        );
        node.create_channel("imagery", None).unwrap();
        (store, node)
    }

    /// Posting and getting attachments read each by its own chunks' ids (known from
    /// storing them here, or from opening the channel's chunks once), byte-identical;
    /// ids that no longer make the whole attachment send the read back to the channel.
    #[test]
    fn attachments_are_read_by_their_own_chunks() {
        let (store, node) = counting_node();
        let mut posted = Vec::new();
        for i in 0..3u8 {
            let data: Vec<u8> = (0..200_000u32)
                .map(|j| (j.wrapping_mul(31) as u8) ^ i)
                .collect();
            let (msg, att) = post_attached(&node, &format!("sheet {i}"), &data);
            posted.push((msg, data, att.hash));
        }
        let scans = || store.chunk_scans.load(Ordering::Relaxed);
        assert_eq!(scans(), 0, "each post checked its attachment by id");
        for (msg, data, _) in posted.iter().chain(posted.iter()) {
            assert_eq!(&node.get_attachment(msg, 0).unwrap(), data);
        }
        assert_eq!(scans(), 0, "read by id");
        // A process that did not store them (a restarted daemon) opens the channel once.
        let fresh = Node::new(
            NodeKey::from_seed([5; 32]),
            "t".into(),
            store.clone(),
            Profile::builtin("ci-loopback").unwrap(),
        );
        for (msg, data, _) in posted.iter().rev() {
            assert_eq!(&fresh.get_attachment(msg, 0).unwrap(), data);
        }
        assert_eq!(scans(), 1, "one scan taught it every attachment");
        // Known ids that no longer make the whole attachment (one forgotten here; a
        // damaged chunk does the same) send the read back to the channel, which still
        // holds every chunk: the attachment is whole again, and its ids are learnt again.
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&posted[0].2, &mut hash).unwrap();
        let key = (node.resolve("imagery").unwrap(), hash);
        lock(&node.blob_chunks).chunks.get_mut(&key).unwrap().pop();
        assert_eq!(node.get_attachment(&posted[0].0, 0).unwrap(), posted[0].1);
        assert_eq!(scans(), 2, "fell back to opening the channel");
        assert_eq!(node.get_attachment(&posted[0].0, 0).unwrap(), posted[0].1);
        assert_eq!(scans(), 2, "and learnt its chunks again");
    }

    /// An attachment whose chunks do not all fit (the disk fills after the first batch)
    /// leaves none of them behind: no message names them.
    #[test]
    fn a_failed_attachment_leaves_no_chunks() {
        let (store, node) = counting_node();
        let before = store.stats().unwrap();
        // 300 chunks: two batches, the second refused.
        store.puts_before_full.store(2, Ordering::Relaxed);
        let data = vec![3u8; 300 * crate::blob::CHUNK_BYTES];
        let e = node
            .put_blob("imagery", "map.bin", "application/octet-stream", &data)
            .unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        assert_eq!(store.stats().unwrap(), before);
    }

    /// A member who signs a chunk claiming another's attachment, with other bytes, cannot
    /// spoil it: the message author's chunks are the ones assembled, both on the poster
    /// and on a process that learns the chunks by opening the channel (real sled store).
    #[test]
    fn a_forged_chunk_does_not_spoil_an_attachment() {
        let dir = tempfile::tempdir().unwrap();
        let store = sled_store(dir.path());
        let node = node_on(&store);
        node.create_channel("imagery", None).unwrap();
        let data: Vec<u8> = (0..150_000u32).map(|j| (j % 241) as u8).collect();
        let (msg, _) = post_attached(&node, "grid", &data);

        let channel = node.resolve("imagery").unwrap();
        let compartment = node.channel_compartment(&channel).unwrap();
        let (epoch, key) = node.sealing_key(&compartment).unwrap();
        let (_, payloads) = crate::blob::split(&data);
        // One forger backdates its chunks and one postdates them, so a scan meets
        // forgeries both before and after the real chunks.
        let mut forged = Vec::new();
        for (seed, hlc) in [(6u8, Hlc(1)), (7, Hlc(u64::MAX >> 20))] {
            let forger = NodeKey::from_seed([seed; 32]);
            for (i, p) in payloads.iter().enumerate() {
                let mut bad = p.clone();
                *bad.last_mut().unwrap() ^= seed;
                let header = Header {
                    kind: fieldmesh_core::Kind::BLOB_CHUNK,
                    precedence: fieldmesh_core::Precedence::Routine,
                    compartment,
                    epoch,
                    channel,
                    author: forger.node_id(),
                    hlc: Hlc(hlc.0 + i as u64),
                    deps: vec![],
                };
                forged.push(seal_envelope(&forger, header, &key, &bad).unwrap());
            }
        }
        let inserted = node.ingest(forged, false).unwrap().inserted;
        assert_eq!(
            inserted,
            2 * payloads.len(),
            "the forgeries are stored and forwarded"
        );

        assert_eq!(node.get_attachment(&msg, 0).unwrap(), data);
        // A process that learns the chunks by opening the channel meets every forgery,
        // remembers them with the real chunks, and still reads the real attachment by id.
        let fresh = node_on(&store);
        assert_eq!(fresh.get_attachment(&msg, 0).unwrap(), data);
        let key = (channel, crate::blob::split(&data).0);
        let remembered = lock(&fresh.blob_chunks).get(&key).unwrap().len();
        assert_eq!(remembered, 3 * payloads.len(), "real and forged chunks");
        assert_eq!(fresh.get_attachment(&msg, 0).unwrap(), data);
    }

    /// A change the channel refuses does not move this node's clock: one member dating
    /// junk hours ahead (within the allowed skew) had dragged every later timestamp.
    #[test]
    fn a_refused_change_does_not_drag_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = sled_store(dir.path());
        let node = node_on(&store);
        node.create_channel("ops", None).unwrap();
        let channel = node.resolve("ops").unwrap();
        let ahead = now_ms() + 12 * 3600 * 1000;
        let forger = NodeKey::from_seed([8; 32]);
        let (epoch, key) = node.sealing_key(&CompartmentId::OPEN).unwrap();
        let header = Header {
            kind: fieldmesh_core::Kind::CHANNEL_CHANGE,
            precedence: fieldmesh_core::Precedence::Routine,
            compartment: CompartmentId::OPEN,
            epoch,
            channel,
            author: forger.node_id(),
            hlc: Hlc::new(ahead, 0),
            deps: vec![],
        };
        let junk = seal_envelope(&forger, header, &key, &[1, 0xff, 0xff]).unwrap();
        let done = node.ingest(vec![junk], false).unwrap();
        assert_eq!((done.inserted, done.channel_rejects.len()), (1, 1));
        let next = lock(&node.clock).tick(now_ms());
        assert!(
            next.wall_ms() < ahead - 3600 * 1000,
            "the clock followed a refused change"
        );
        // Rebuilt from the store, the same.
        let fresh = node_on(&store);
        fresh.with_channel(&channel, |_| Ok(())).unwrap();
        assert!(lock(&fresh.clock).tick(now_ms()).wall_ms() < ahead - 3600 * 1000);
    }

    /// A node that lost its store and started over with the same key signs a second
    /// change with a sequence number it had used. Every replica refuses both, whichever
    /// arrived first: one that had applied the first rebuilds the channel.
    #[test]
    fn an_equivocating_author_does_not_split_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let with_key = |sub: &str, seed: u8| {
            Node::new(
                NodeKey::from_seed([seed; 32]),
                sub.into(),
                sled_store(&dir.path().join(sub)),
                Profile::builtin("ci-loopback").unwrap(),
            )
        };
        let creator = with_key("creator", 5);
        creator.create_channel("ops", None).unwrap();
        let channel = creator.resolve("ops").unwrap();
        let say = |n: &Node, text: &str| {
            n.post(
                "ops",
                &PostRequest {
                    text: text.into(),
                    precedence: None,
                    reply_to: None,
                    attachments: vec![],
                },
            )
            .unwrap()
        };
        say(&creator, "hello");
        let base = creator.store.channel_envelopes(&channel).unwrap();
        // Two lives of one node, each posting as its first change in the channel.
        let lives: Vec<Envelope> = ["first life", "second life"]
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let n = with_key(&format!("life{i}"), 7);
                n.ingest(base.clone(), false).unwrap();
                let id = say(&n, text).id;
                let mine = n.store.channel_envelopes(&channel).unwrap();
                let env = mine
                    .into_iter()
                    .find(|e| !base.iter().any(|b| b.id() == e.id()))
                    .unwrap();
                assert_eq!(
                    fieldmesh_channel::schema::message_id(env.header().hlc, &env.header().author),
                    id
                );
                env
            })
            .collect();
        let texts = |n: &Node| -> Vec<String> {
            n.read("ops").unwrap().into_iter().map(|m| m.text).collect()
        };
        let mut seen = Vec::new();
        for (name, order) in [("r0", [0, 1]), ("r1", [1, 0])] {
            let r = with_key(name, 9);
            r.ingest(base.clone(), false).unwrap();
            texts(&r); // materialised and cached before the lives arrive
            let first = r.ingest(vec![lives[order[0]].clone()], false).unwrap();
            assert!(
                first.channel_rejects.is_empty(),
                "{:?}",
                first.channel_rejects
            );
            let second = r.ingest(vec![lives[order[1]].clone()], false).unwrap();
            assert_eq!(
                second.channel_rejects.len(),
                1,
                "{:?}",
                second.channel_rejects
            );
            seen.push(texts(&r));
        }
        assert_eq!(seen[0], seen[1], "both replicas agree");
        assert_eq!(seen[0], ["hello"], "neither life of the forked key stands");
        // And a node restarted over that store agrees.
        let again = Node::new(
            NodeKey::from_seed([9; 32]),
            "r0".into(),
            sled_store(&dir.path().join("r0")),
            Profile::builtin("ci-loopback").unwrap(),
        );
        assert_eq!(texts(&again), seen[0]);
    }

    /// A forged "genesis" sealed for a compartment this node cannot read, stored before
    /// the real one, does not make the node's own channel count as others' traffic when
    /// the relay count is rebuilt (after a restart): that traffic would have been pushed
    /// out and aged out of its store.
    #[test]
    fn a_forged_genesis_does_not_make_own_traffic_relayed() {
        let dir = tempfile::tempdir().unwrap();
        let creator = node_on(&sled_store(&dir.path().join("a")));
        creator.create_channel("ops", None).unwrap();
        let channel = creator.resolve("ops").unwrap();
        for i in 0..5 {
            creator
                .post(
                    "ops",
                    &PostRequest {
                        text: format!("report {i}"),
                        precedence: None,
                        reply_to: None,
                        attachments: vec![],
                    },
                )
                .unwrap();
        }
        let real = creator.store.channel_envelopes(&channel).unwrap();
        let forger = NodeKey::from_seed([8; 32]);
        let header = Header {
            kind: fieldmesh_core::Kind::CHANNEL_GENESIS,
            precedence: fieldmesh_core::Precedence::Routine,
            compartment: CompartmentId([9; 32]),
            epoch: 1,
            channel,
            author: forger.node_id(),
            hlc: Hlc(1),
            deps: vec![],
        };
        let forged =
            seal_envelope(&forger, header, &PayloadKey::from_bytes([42; 32]), b"x").unwrap();
        let forged_len = forged.as_bytes().len() as u64;
        let store = sled_store(&dir.path().join("b"));
        let member = node_on(&store);
        member.ingest(vec![forged], false).unwrap();
        member.ingest(real, false).unwrap();
        assert_eq!(member.read("ops").unwrap().len(), 5);
        assert_eq!(member.relay_status().unwrap().used, forged_len);
        drop(member);
        // Restarted: the count is rebuilt from the store.
        let again = node_on(&store);
        assert_eq!(
            again.relay_status().unwrap().used,
            0,
            "own traffic is not carried for others"
        );
        assert_eq!(again.read("ops").unwrap().len(), 5);
    }

    /// A "genesis" anyone signed for a channel id seen in a header, stored before the real
    /// one, does not decide the channel's compartment (which a member seals its posts
    /// under): only a genesis this node can open and the channel rules accept does.
    #[test]
    fn a_forged_genesis_does_not_decide_a_channels_compartment() {
        let dir = tempfile::tempdir().unwrap();
        let creator = node_on(&sled_store(&dir.path().join("a")));
        creator.create_channel("ops", None).unwrap();
        let channel = creator.resolve("ops").unwrap();
        let real: Vec<Envelope> = creator
            .store
            .channel_envelopes_of(&channel, &|k| k == fieldmesh_core::Kind::CHANNEL_GENESIS)
            .unwrap();
        assert_eq!(real.len(), 1);

        let forger = NodeKey::from_seed([8; 32]);
        let forge = |compartment: CompartmentId, epoch: u32, key: &PayloadKey| {
            let header = Header {
                kind: fieldmesh_core::Kind::CHANNEL_GENESIS,
                precedence: fieldmesh_core::Precedence::Routine,
                compartment,
                epoch,
                channel,
                author: forger.node_id(),
                hlc: Hlc(1),
                deps: vec![],
            };
            seal_envelope(&forger, header, key, b"not a genesis").unwrap()
        };
        let member = node_on(&sled_store(&dir.path().join("b")));
        // One it cannot open, and one it can (but the channel rules refuse).
        let unopenable = forge(CompartmentId([9; 32]), 1, &PayloadKey::from_bytes([42; 32]));
        member.ingest(vec![unopenable], false).unwrap();
        assert!(
            matches!(
                member.channel_compartment(&channel),
                Err(NodeError::NotFound(_))
            ),
            "no genesis proves itself yet"
        );
        let real_again = real.clone();
        member.ingest(real, false).unwrap();
        assert_eq!(
            member.channel_compartment(&channel).unwrap(),
            CompartmentId::OPEN
        );
        // One it can open, whose content the channel rules refuse.
        let fresh = node_on(&sled_store(&dir.path().join("c")));
        let (epoch, open) = fresh.sealing_key(&CompartmentId::OPEN).unwrap();
        let readable = forge(CompartmentId::OPEN, epoch, &open);
        assert!(fresh.open(&readable).unwrap().is_some());
        fresh.ingest(vec![readable], false).unwrap();
        assert!(fresh.channel_compartment(&channel).is_err());
        fresh.ingest(real_again, false).unwrap();
        assert_eq!(
            fresh.channel_compartment(&channel).unwrap(),
            CompartmentId::OPEN
        );
    }

    /// Others' traffic (a compartment this node holds no key of) is kept within the
    /// relay quota: past it, newer or more urgent traffic pushes out the oldest routine
    /// envelopes, older traffic is declined, and urgent traffic is always kept; the
    /// node's own compartments are not counted; a restarted node counts what it carries
    /// from the store.
    #[test]
    fn traffic_for_others_is_carried_within_the_relay_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = sled_store(dir.path());
        let relay = node_on(&store);
        let quota = relay.profile().storage.relay_quota_bytes();
        // An hour ago, well within the retention of every precedence.
        let base = Hlc::new(now_ms() - 3_600_000, 0).0;
        let seal = |n: u64, kind, precedence| {
            for_others(
                10,
                kind,
                precedence,
                Hlc(base + n),
                &vec![n as u8; 48 * 1024],
            )
        };
        use fieldmesh_core::{Kind, Precedence};
        let status = |n: &Node| {
            let s = n.relay_status().unwrap();
            (s.used, s.quota, s.declined, s.evicted)
        };
        let genesis = seal(0, Kind::CHANNEL_GENESIS, Precedence::Routine);
        let size = genesis.encoded_len() as u64;
        let fit = (quota / size) as usize;
        let mut batch = vec![genesis];
        batch.extend((1..fit as u64 + 20).map(|n| seal(n, Kind::BLOB_CHUNK, Precedence::Routine)));
        // Within one batch nothing stored yet can make room: the last 20 are declined.
        let done = relay.ingest(batch, false).unwrap();
        assert_eq!(done.inserted, fit);
        assert_eq!(done.declined.len(), 20);
        assert!(
            !store.contains(&done.declined[0]).unwrap(),
            "declined is not stored"
        );
        assert_eq!(status(&relay), (fit as u64 * size, quota, 20, 0));

        // FLASH pushes out the oldest routine chunk; a duplicate costs nothing.
        let first = seal(1, Kind::BLOB_CHUNK, Precedence::Routine);
        let flash = seal(9_999, Kind::BLOB_CHUNK, Precedence::Flash);
        let done = relay.ingest(vec![flash.clone(), flash], false).unwrap();
        assert_eq!((done.inserted, done.declined.len()), (1, 0));
        assert_eq!(done.evicted, vec![first.id()]);
        assert!(
            !store.contains(&first.id()).unwrap(),
            "removed from the store"
        );
        assert_eq!(status(&relay), (fit as u64 * size, quota, 20, 1));
        // The node's own (open) traffic is not counted against the quota.
        relay.create_channel("own", None).unwrap();
        relay
            .post(
                "own",
                &PostRequest {
                    text: "still room for our own".into(),
                    precedence: None,
                    reply_to: None,
                    attachments: vec![],
                },
            )
            .unwrap();
        assert_eq!(relay.relay_status().unwrap().used, fit as u64 * size);

        // A restarted node counts what it carries from the store, and newer routine
        // traffic still pushes out the oldest.
        let again = node_on(&store);
        assert_eq!(status(&again), (fit as u64 * size, quota, 0, 0));
        let newer = again
            .ingest(
                vec![seal(20_000, Kind::BLOB_CHUNK, Precedence::Routine)],
                false,
            )
            .unwrap();
        let second = seal(2, Kind::BLOB_CHUNK, Precedence::Routine);
        assert_eq!(
            (newer.inserted, newer.evicted.clone()),
            (1, vec![second.id()])
        );
        assert_eq!(again.relay_status().unwrap().used, fit as u64 * size);
        // What was pushed out and comes back is older than everything held: declined,
        // once even when a batch holds it twice (group commits merge peers' batches).
        let twice = again
            .ingest(vec![first.clone(), first.clone()], false)
            .unwrap();
        assert_eq!((twice.inserted, twice.declined.len()), (0, 1));
        assert!(twice.evicted.is_empty());
        assert!(!store.contains(&first.id()).unwrap());
        // The genesis is never pushed out.
        assert!(
            store
                .contains(&seal(0, Kind::CHANNEL_GENESIS, Precedence::Routine).id())
                .unwrap()
        );
        assert_eq!(status(&again), (fit as u64 * size, quota, 1, 1));
    }
    /// What a node carries for others ages out by the profile's retention (ci-loopback:
    /// ROUTINE 1 day, PRIORITY 2, IMMEDIATE 3, FLASH 4): an arrival already that old is
    /// declined, and a sweep removes what has aged since, from the store and the count;
    /// a channel's genesis is never aged out, and the node's own traffic is untouched.
    #[test]
    fn traffic_for_others_ages_out_by_precedence() {
        use fieldmesh_core::{Kind, Precedence};
        let dir = tempfile::tempdir().unwrap();
        let store = sled_store(dir.path());
        let relay = node_on(&store);
        const DAY: u64 = 86_400_000;
        let now = now_ms();
        let seal = |age_ms: u64, n: u16, kind, precedence| {
            for_others(
                10,
                kind,
                precedence,
                Hlc::new(now - age_ms, n),
                &[n as u8; 1000],
            )
        };
        let genesis = seal(10 * DAY, 0, Kind::CHANNEL_GENESIS, Precedence::Routine);
        let stale = seal(DAY + 60_000, 1, Kind::CHANNEL_CHANGE, Precedence::Routine);
        let routine = seal(DAY / 2, 2, Kind::CHANNEL_CHANGE, Precedence::Routine);
        let priority = seal(DAY / 2, 3, Kind::CHANNEL_CHANGE, Precedence::Priority);
        let flash = seal(DAY + 60_000, 4, Kind::CHANNEL_CHANGE, Precedence::Flash);
        let done = relay
            .ingest(
                vec![
                    genesis.clone(),
                    stale.clone(),
                    routine.clone(),
                    priority.clone(),
                    flash.clone(),
                ],
                false,
            )
            .unwrap();
        // A ten-day-old genesis is kept; a routine envelope past a day is declined (and
        // counted as aged out, not as over the quota); FLASH that old is still kept.
        assert_eq!(done.inserted, 4);
        assert_eq!(done.declined, vec![stale.id()]);
        let s = relay.relay_status().unwrap();
        assert_eq!((s.declined, s.evicted, s.aged_out), (0, 0, 1));
        let size = |e: &Envelope| e.encoded_len() as u64;
        let used = size(&genesis) + size(&routine) + size(&priority) + size(&flash);
        assert_eq!(s.used, used);
        // The node's own traffic is not carried for others: never aged out here.
        relay.create_channel("own", None).unwrap();
        let own = store.len().unwrap();

        // Nothing has aged yet.
        assert!(relay.age_out_relayed().unwrap().is_empty());
        // A day later the routine envelope has aged out, the priority one not yet.
        let removed = relay.age_out_relayed_at(now + DAY).unwrap();
        assert_eq!(removed, vec![routine.id()]);
        assert!(!store.contains(&routine.id()).unwrap());
        assert!(store.contains(&priority.id()).unwrap());
        // Four days on, everything but the genesis is gone, FLASH included.
        let mut removed = relay.age_out_relayed_at(now + 4 * DAY).unwrap();
        removed.sort();
        let mut expected = vec![priority.id(), flash.id()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(store.contains(&genesis.id()).unwrap());
        let s = relay.relay_status().unwrap();
        assert_eq!((s.used, s.aged_out), (size(&genesis), 4));
        assert_eq!(store.len().unwrap(), own - 3);
        // A restarted node counts only what is left, and has nothing more to age out.
        let again = node_on(&store);
        assert_eq!(again.relay_status().unwrap().used, size(&genesis));
        assert!(again.age_out_relayed_at(now + 40 * DAY).unwrap().is_empty());

        // A channel whose genesis never came here is counted after a restart too (each
        // envelope by its own header), and ages out.
        let headless = for_others(
            11,
            Kind::BLOB_CHUNK,
            Precedence::Routine,
            Hlc::new(now - DAY / 2, 0),
            &[7; 1000],
        );
        assert_eq!(
            again
                .ingest(vec![headless.clone()], false)
                .unwrap()
                .inserted,
            1
        );
        let restarted = node_on(&store);
        assert_eq!(
            restarted.relay_status().unwrap().used,
            size(&genesis) + size(&headless)
        );
        assert_eq!(
            restarted.age_out_relayed_at(now + DAY).unwrap(),
            vec![headless.id()]
        );

        // In a channel with no genesis here each envelope is judged by its own header:
        // an early envelope for others sealed into this node's own (open) channel's id
        // does not make the node's own later FLASH count as carried, nor age it out.
        let early = for_others(
            12,
            Kind::CHANNEL_CHANGE,
            Precedence::Routine,
            Hlc::new(now - DAY / 2, 0),
            &[3; 500],
        );
        let own = {
            let author = NodeKey::from_seed([8; 32]);
            let header = Header {
                kind: Kind::CHANNEL_CHANGE,
                precedence: Precedence::Flash,
                compartment: CompartmentId::OPEN,
                epoch: 0,
                channel: ChannelId([12; 32]),
                author: author.node_id(),
                hlc: Hlc::new(now - DAY / 4, 0),
                deps: vec![],
            };
            seal_envelope(&author, header, &PayloadKey::open_compartment(), &[3; 500]).unwrap()
        };
        restarted
            .ingest(vec![early.clone(), own.clone()], false)
            .unwrap();
        let fresh = node_on(&store);
        assert_eq!(
            fresh.relay_status().unwrap().used,
            size(&genesis) + size(&early)
        );
        assert_eq!(
            fresh.age_out_relayed_at(now + 10 * DAY).unwrap(),
            vec![early.id()]
        );
        assert!(store.contains(&own.id()).unwrap(), "own traffic stays");

        // Dated more than a day ahead of this node's clock: declined, so that nothing
        // carried escapes aging by a future date.
        let ahead = for_others(
            10,
            Kind::BLOB_CHUNK,
            Precedence::Flash,
            Hlc::new(now + 2 * DAY, 0),
            &[1; 100],
        );
        let done = fresh.ingest(vec![ahead.clone()], false).unwrap();
        assert_eq!(done.declined, vec![ahead.id()]);
        assert_eq!(fresh.relay_status().unwrap().declined, 1);

        // Reading a directory that gives no new key does not make the count start over.
        let generation = fresh.keys_generation();
        fresh.load_directory().unwrap();
        assert_eq!(fresh.keys_generation(), generation);
    }

    /// Between a judgement and the removal it chose, keys may arrive (making the victims
    /// this node's own traffic) or another ingest may store the same envelope: nothing
    /// chosen under older keys is removed, and an envelope is counted once.
    #[test]
    fn relay_judgements_survive_key_changes_and_concurrent_ingests() {
        use fieldmesh_core::{Kind, Precedence};
        let dir = tempfile::tempdir().unwrap();
        let store = sled_store(dir.path());
        let relay = node_on(&store);
        let quota = relay.profile().storage.relay_quota_bytes();
        let base = Hlc::new(now_ms() - 3_600_000, 0).0;
        let seal = |n: u64| {
            // The count from the store goes channel by channel, from the genesis.
            let kind = if n == 0 {
                Kind::CHANNEL_GENESIS
            } else {
                Kind::BLOB_CHUNK
            };
            let body = vec![n as u8; 48 * 1024];
            for_others(10, kind, Precedence::Routine, Hlc(base + n), &body)
        };
        let size = seal(0).encoded_len() as u64;
        let fit = quota / size;
        let done = relay.ingest((0..fit).map(seal).collect(), false).unwrap();
        assert_eq!(done.inserted as u64, fit);
        let used = relay.relay_status().unwrap().used;

        // Two ingests judge the same newer envelope before either stores it: the second
        // finds it pending and neither counts it twice.
        let newer = seal(1_000);
        let first = relay.admit_relayed(vec![newer.clone()]).unwrap();
        let second = relay.admit_relayed(vec![newer.clone()]).unwrap();
        assert_eq!((first.carried.len(), first.evict.len()), (1, 1));
        assert_eq!((second.keep.len(), second.carried.len()), (1, 0));
        assert!(second.evict.is_empty() && second.declined.is_empty());
        store.put_batch(&first.keep).unwrap();
        let victim = first.evict[0].0.2;
        assert_eq!(
            relay.settle_relayed(&first.carried, first.evict, first.generation),
            vec![victim]
        );
        store.put_batch(&second.keep).unwrap();
        relay.settle_relayed(&second.carried, second.evict, second.generation);
        assert_eq!(relay.relay_status().unwrap().used, used);
        assert!(!store.contains(&victim).unwrap());

        // Keys change between the judgement and the removal: nothing is removed, and
        // the next judgement counts again from the store.
        let later = seal(2_000);
        let judged = relay.admit_relayed(vec![later.clone()]).unwrap();
        let chosen = judged.evict[0].0.2;
        relay.keys_generation.fetch_add(1, Ordering::AcqRel);
        store.put_batch(&judged.keep).unwrap();
        assert!(
            relay
                .settle_relayed(&judged.carried, judged.evict, judged.generation)
                .is_empty()
        );
        assert!(store.contains(&chosen).unwrap(), "kept under the new keys");
        assert_eq!(relay.relay_status().unwrap().used, used + size);
    }
}
