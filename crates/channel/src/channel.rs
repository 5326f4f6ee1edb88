//! One channel's Automerge document, its schema registry and its pending queue.

use crate::schema::{self, GenesisInfo, Registry};
use crate::{
    ApplyError, AttachmentRef, LocalOpError, MAX_PENDING, MAX_TEXT_BYTES, PAYLOAD_VERSION,
};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT, ReadDoc};
use fieldmesh_core::{ChannelId, EnvelopeId, Hlc, Kind, MAX_DEPS, NodeId, Precedence};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use crate::schema::channel_id;

/// An envelope's metadata and opened payload, as input to [`Channel::apply`].
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The envelope id.
    pub envelope: EnvelopeId,
    /// The envelope's (verified) author.
    pub author: NodeId,
    /// The envelope kind.
    pub kind: Kind,
    /// The envelope's timestamp.
    pub hlc: Hlc,
    /// The decrypted payload.
    pub plaintext: &'a [u8],
}

impl<'a> Incoming<'a> {
    /// A verified envelope and its opened payload.
    pub fn of(env: &fieldmesh_core::Envelope, plaintext: &'a [u8]) -> Incoming<'a> {
        let h = env.header();
        Incoming {
            envelope: env.id(),
            author: h.author,
            kind: h.kind,
            hlc: h.hlc,
            plaintext,
        }
    }
}

/// What [`Channel::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied, and so were `unblocked` pending changes that were waiting for it.
    Applied {
        /// Pending changes applied because this one arrived.
        unblocked: usize,
    },
    /// Valid so far but waiting for causal dependencies; applied when they arrive.
    Pending,
    /// Already applied or already pending.
    Duplicate,
}

/// A change made locally, to be sealed into an envelope by the caller, who then calls
/// [`Channel::bind`] with the envelope id once the envelope is durable. If storing fails,
/// discard this `Channel` value and rebuild it from the store.
#[derive(Debug, Clone)]
pub struct LocalChange {
    /// Envelope payload.
    pub payload: Vec<u8>,
    /// Envelope causal deps: the envelopes carrying the document heads it builds on.
    pub deps: Vec<EnvelopeId>,
    /// Envelope kind.
    pub kind: Kind,
    /// Envelope precedence.
    pub precedence: Precedence,
    /// Envelope timestamp.
    pub hlc: Hlc,
    /// The message this change created or touched.
    pub message_id: String,
    /// The Automerge change hash, for [`Channel::bind`].
    pub change: ChangeHash,
}

#[derive(Debug)]
struct Pending {
    envelope: EnvelopeId,
    author: NodeId,
    kind: Kind,
    hlc: Hlc,
    change: automerge::Change,
}

/// A channel document materialised from envelopes.
#[derive(Debug)]
pub struct Channel {
    id: ChannelId,
    pub(crate) doc: Automerge,
    pub(crate) reg: Registry,
    applied: HashSet<ChangeHash>,
    envelope_of: HashMap<ChangeHash, EnvelopeId>,
    pending: BTreeMap<ChangeHash, Pending>,
    waiting: HashMap<ChangeHash, Vec<ChangeHash>>,
    /// Pending changes waiting for their author's previous change, by (author, seq).
    waiting_seq: HashMap<(NodeId, u64), Vec<ChangeHash>>,
    /// Pending changes waiting for an object they write in to be made.
    waiting_obj: HashMap<schema::ObjKey, Vec<ChangeHash>>,
    /// Pending changes whose wait may be over, to try next.
    woken: Vec<ChangeHash>,
    /// Bytes of the changes in `pending`.
    pending_bytes: usize,
    /// Per (author, seq): the first change seen claiming it.
    claims: HashMap<(NodeId, u64), ChangeHash>,
    /// Per author who signed two changes with one sequence number: the lowest such number.
    /// Its changes from there on are refused. Otherwise replicas would split by which of
    /// the two arrived first; and picking one (say, by hash) seq by seq can pick, at the
    /// next seq, a change built on the one refused, leaving the author's chain unusable.
    forks: HashMap<NodeId, u64>,
    /// A fork was found below a change already in the document: this replica must be
    /// rebuilt from the store (see [`ApplyError::Superseded`]).
    superseded: bool,
    rejected: BTreeMap<EnvelopeId, String>,
    /// While [`Channel::apply_many`] runs: validated changes not yet in the document.
    batch: Option<Vec<automerge::Change>>,
    /// The latest envelope time among the changes the channel accepted.
    newest: Hlc,
    /// Materialised views, kept current by re-reading only the messages a change touched.
    pub(crate) views: BTreeMap<String, crate::MessageView>,
    dirty: BTreeSet<String>,
    /// Posts whose change waits for causal predecessors, shown early (marked pending) so
    /// that a FLASH is readable before the routine backlog it follows has arrived.
    pub(crate) provisional: BTreeMap<ChangeHash, crate::MessageView>,
}

fn equivocation(author: &NodeId, fork: u64) -> String {
    format!(
        "equivocation: {} signed two changes with seq {fork}; its changes from there on are refused",
        author.short()
    )
}

fn encode_payload(change: &automerge::Change) -> Vec<u8> {
    let raw = change.raw_bytes();
    let mut p = Vec::with_capacity(raw.len() + 1);
    p.push(PAYLOAD_VERSION);
    p.extend_from_slice(raw);
    p
}

fn am_err(e: impl std::fmt::Display) -> LocalOpError {
    LocalOpError::Automerge(e.to_string())
}

impl Channel {
    /// An empty replica of channel `id`, waiting for envelopes.
    pub fn new(id: ChannelId) -> Channel {
        Channel {
            id,
            doc: Automerge::new(),
            reg: Registry::default(),
            applied: HashSet::new(),
            envelope_of: HashMap::new(),
            pending: BTreeMap::new(),
            waiting: HashMap::new(),
            waiting_seq: HashMap::new(),
            waiting_obj: HashMap::new(),
            woken: Vec::new(),
            pending_bytes: 0,
            claims: HashMap::new(),
            forks: HashMap::new(),
            superseded: false,
            rejected: BTreeMap::new(),
            batch: None,
            newest: Hlc::ZERO,
            views: BTreeMap::new(),
            dirty: BTreeSet::new(),
            provisional: BTreeMap::new(),
        }
    }

    /// Creates a channel: returns it and the genesis change for its first envelope.
    pub fn create(
        creator: NodeId,
        name: &str,
        hlc: Hlc,
    ) -> Result<(Channel, LocalChange), LocalOpError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(LocalOpError::Invalid(
                "channel name must be 1-128 printable characters".into(),
            ));
        }
        let id = channel_id(&creator, name, hlc);
        let mut ch = Channel::new(id);
        ch.doc.set_actor(ActorId::from(&creator.0[..]));
        let mut tx = ch.doc.transaction();
        let meta = tx.put_object(ROOT, "meta", ObjType::Map).map_err(am_err)?;
        tx.put(&meta, "name", name).map_err(am_err)?;
        tx.put(&meta, "creator", creator.to_hex()).map_err(am_err)?;
        tx.put(&meta, "created", hlc.0).map_err(am_err)?;
        tx.put(&meta, "schema", schema::SCHEMA_VERSION)
            .map_err(am_err)?;
        tx.put_object(ROOT, "messages", ObjType::Map)
            .map_err(am_err)?;
        tx.commit_with(CommitOptions::default().with_time((hlc.wall_ms() / 1000) as i64));
        let local = ch.finish_local(
            creator,
            Kind::CHANNEL_GENESIS,
            Precedence::Routine,
            hlc,
            String::new(),
            vec![],
        )?;
        Ok((ch, local))
    }

    /// The channel id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// What the genesis said, once it has been applied.
    pub fn genesis(&self) -> Option<&GenesisInfo> {
        self.reg.genesis.as_ref()
    }

    /// Whether the replica holds a change its author has since been found equivocating
    /// below: it refuses every change, and must be rebuilt from the store.
    pub fn needs_rebuild(&self) -> bool {
        self.superseded
    }

    /// Changes waiting for dependencies.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Envelopes whose change was rejected, with the reason.
    pub fn rejected(&self) -> &BTreeMap<EnvelopeId, String> {
        &self.rejected
    }

    /// Sorted Automerge heads: equal heads mean equal documents.
    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut h = self.doc.get_heads();
        h.sort();
        h
    }

    /// The document as a standard Automerge file.
    pub fn export(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Number of applied changes.
    pub fn change_count(&self) -> usize {
        self.applied.len()
    }

    /// Applies one envelope's payload. Out-of-order arrival is normal: a change whose
    /// dependencies are missing waits and is applied when they arrive.
    pub fn apply(&mut self, inc: Incoming<'_>) -> Result<ApplyOutcome, ApplyError> {
        let change = self.parse(&inc)?;
        self.apply_parsed(inc, change)
    }

    /// Checks the payload's framing and layout, and parses its change.
    fn parse(&self, inc: &Incoming<'_>) -> Result<automerge::Change, ApplyError> {
        let malformed = |reason: String| ApplyError::Malformed {
            envelope: inc.envelope,
            reason,
        };
        let Some((&version, raw)) = inc.plaintext.split_first() else {
            return Err(malformed("empty payload".into()));
        };
        if version != PAYLOAD_VERSION {
            return Err(malformed(format!(
                "payload version {version}, this build reads {PAYLOAD_VERSION}"
            )));
        }
        // Only the raw change chunk this node writes: Automerge would also inflate a
        // compressed change, without a limit, before checking anything; and it walks every
        // row a change's columns declare, which a few bytes can make astronomical.
        crate::shape::check(raw).map_err(&malformed)?;
        automerge::Change::from_bytes(raw.to_vec()).map_err(|e| malformed(e.to_string()))
    }

    /// Records `change`'s claim on its author's sequence number. Returns the author's
    /// fork point if this change lowered it.
    fn claim(&mut self, author: NodeId, change: &automerge::Change) -> Option<u64> {
        if change.actor_id().to_bytes() != author.0 {
            return None; // refused by the rules: claims nothing
        }
        let seq = change.seq();
        let held = *self.claims.entry((author, seq)).or_insert(change.hash());
        if held == change.hash() {
            return None;
        }
        let fork = self.forks.entry(author).or_insert(u64::MAX);
        (seq < *fork).then(|| {
            *fork = seq;
            seq
        })
    }

    fn apply_parsed(
        &mut self,
        inc: Incoming<'_>,
        change: automerge::Change,
    ) -> Result<ApplyOutcome, ApplyError> {
        if self.superseded {
            return Err(ApplyError::Superseded(self.id));
        }
        let hash = change.hash();
        if self.applied.contains(&hash) || self.pending.contains_key(&hash) {
            return Ok(ApplyOutcome::Duplicate);
        }
        let seq = change.seq();
        if let Some(fork) = self.claim(inc.author, &change) {
            if self
                .reg
                .last_seq
                .get(&inc.author)
                .is_some_and(|&l| l >= fork)
            {
                self.superseded = true;
                return Err(ApplyError::Superseded(self.id));
            }
            let refused: Vec<ChangeHash> = self
                .pending
                .iter()
                .filter(|(_, p)| p.author == inc.author && p.change.seq() >= fork)
                .map(|(h, _)| *h)
                .collect();
            for h in refused {
                if let Some(old) = self.remove_pending(&h) {
                    self.rejected
                        .insert(old.envelope, equivocation(&inc.author, fork));
                }
            }
        }
        let own = change.actor_id().to_bytes() == inc.author.0;
        if let Some(&fork) = self.forks.get(&inc.author).filter(|&&f| own && seq >= f) {
            let reason = equivocation(&inc.author, fork);
            self.rejected.insert(inc.envelope, reason.clone());
            return Err(ApplyError::Rejected {
                envelope: inc.envelope,
                reason,
            });
        }
        let pending = Pending {
            envelope: inc.envelope,
            author: inc.author,
            kind: inc.kind,
            hlc: inc.hlc,
            change,
        };
        let missing: Vec<ChangeHash> = pending
            .change
            .deps()
            .iter()
            .filter(|d| !self.applied.contains(*d))
            .copied()
            .collect();
        let after_own = !self.follows_own(&pending);
        if !missing.is_empty() || after_own {
            let bytes = pending.change.raw_bytes().len();
            if self.pending.len() >= MAX_PENDING
                || self.pending_bytes + bytes > crate::MAX_PENDING_BYTES
            {
                return Err(ApplyError::PendingFull(self.pending.len()));
            }
            for d in missing {
                self.waiting.entry(d).or_default().push(hash);
            }
            if after_own {
                self.waiting_seq
                    .entry((inc.author, seq - 1))
                    .or_default()
                    .push(hash);
            }
            if let Some(view) = self.provisional_view(&pending) {
                self.provisional.insert(hash, view);
            }
            self.pending_bytes += bytes;
            self.pending.insert(hash, pending);
            return Ok(ApplyOutcome::Pending);
        }
        let applied = self
            .apply_ready(pending)
            .map_err(|reason| ApplyError::Rejected {
                envelope: inc.envelope,
                reason,
            })?;
        if !applied {
            return Ok(ApplyOutcome::Pending);
        }
        let unblocked = self.release_waiting();
        if self.batch.is_none() {
            self.refresh_views();
            #[cfg(feature = "slow-assertions")]
            self.check_invariants();
        }
        Ok(ApplyOutcome::Applied { unblocked })
    }

    /// Whether the author's previous change (by sequence number) is applied, or the change
    /// has none. A change waits for it even when its dependencies do not name it, so that
    /// every replica judges the sequence the same way whatever the order of arrival.
    fn follows_own(&self, p: &Pending) -> bool {
        let seq = p.change.seq();
        seq <= 1
            || p.change.actor_id().to_bytes() != p.author.0
            || self
                .reg
                .last_seq
                .get(&p.author)
                .is_some_and(|&l| l + 1 >= seq)
    }

    /// Forgets the claims of changes neither applied nor waiting, so that rule tests can
    /// probe one refused change after another with the same sequence number.
    #[cfg(test)]
    pub(crate) fn forget_refused_claims(&mut self) {
        let (applied, pending) = (&self.applied, &self.pending);
        self.claims
            .retain(|_, h| applied.contains(h) || pending.contains_key(h));
        self.forks.clear();
    }

    fn remove_pending(&mut self, hash: &ChangeHash) -> Option<Pending> {
        let p = self.pending.remove(hash)?;
        self.provisional.remove(hash);
        self.pending_bytes -= p.change.raw_bytes().len();
        Some(p)
    }

    /// Applies many envelopes at once: every change is validated in order exactly as by
    /// [`Channel::apply`], then all accepted changes enter the document in one Automerge
    /// batch, which is much faster than one by one. Per-envelope failures are returned and
    /// do not stop the rest. If Automerge refuses the batch as a whole (which validated
    /// changes should never cause), the channel is left unusable: rebuild it with `apply`.
    /// Meant for a new channel (a rebuild): every claim on a sequence number is counted
    /// before anything is applied, which settles equivocation only if nothing was applied
    /// before.
    pub fn apply_many<'a>(
        &mut self,
        items: impl IntoIterator<Item = Incoming<'a>>,
    ) -> Result<Vec<ApplyError>, ApplyError> {
        self.batch = Some(Vec::new());
        let mut errors = Vec::new();
        // Every claim first, so that a change another outranks is never applied, whatever
        // the order of the items.
        let mut parsed = Vec::new();
        for inc in items {
            match self.parse(&inc) {
                Ok(change) => {
                    self.claim(inc.author, &change);
                    parsed.push((inc, change));
                }
                Err(e) => errors.push(e),
            }
        }
        for (inc, change) in parsed {
            if let Err(e) = self.apply_parsed(inc, change) {
                errors.push(e);
            }
        }
        let batch = self.batch.take().unwrap_or_default();
        self.doc
            .apply_changes_batch(batch)
            .map_err(|e| ApplyError::Batch(e.to_string()))?;
        self.refresh_views();
        #[cfg(feature = "slow-assertions")]
        self.check_invariants();
        Ok(errors)
    }

    /// Re-reads the views of the messages touched since the last refresh.
    fn refresh_views(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            match self.read_view(&id) {
                Some(v) => {
                    self.views.insert(id, v);
                }
                None => {
                    self.views.remove(&id);
                }
            }
        }
    }

    /// Validates and applies a change whose dependencies are all present. Returns whether
    /// it was applied (`false`: it waits for an object it writes in). Changes whose wait
    /// it ends are queued in `woken`.
    fn apply_ready(&mut self, p: Pending) -> Result<bool, String> {
        let v = match schema::validate(&self.reg, &self.id, &p.author, p.kind, p.hlc, &p.change) {
            Ok(v) => v,
            Err(schema::Refusal::Waits(object)) => return self.wait_for_object(p, object),
            Err(schema::Refusal::Rule(reason)) => {
                self.rejected.insert(p.envelope, reason.clone());
                return Err(reason);
            }
        };
        let hash = p.change.hash();
        let seq = (p.author, p.change.seq());
        match &mut self.batch {
            Some(batch) => batch.push(p.change),
            None => {
                self.doc.apply_changes([p.change]).map_err(|e| {
                    let reason = format!("automerge refused the change: {e}");
                    self.rejected.insert(p.envelope, reason.clone());
                    reason
                })?;
            }
        }
        if !self.waiting_obj.is_empty() {
            for made in v.made() {
                self.woken
                    .extend(self.waiting_obj.remove(made).unwrap_or_default());
            }
        }
        let touched = self.reg.commit(v);
        self.dirty.extend(touched);
        self.applied.insert(hash);
        self.envelope_of.insert(hash, p.envelope);
        self.newest = self.newest.max(p.hlc);
        self.woken
            .extend(self.waiting.remove(&hash).unwrap_or_default());
        self.woken
            .extend(self.waiting_seq.remove(&seq).unwrap_or_default());
        Ok(true)
    }

    fn wait_for_object(&mut self, p: Pending, object: schema::ObjKey) -> Result<bool, String> {
        let bytes = p.change.raw_bytes().len();
        if self.pending.len() >= MAX_PENDING
            || self.pending_bytes + bytes > crate::MAX_PENDING_BYTES
        {
            let reason = format!(
                "writes in an object not made here yet, and {} changes wait already",
                self.pending.len()
            );
            self.rejected.insert(p.envelope, reason.clone());
            return Err(reason);
        }
        let hash = p.change.hash();
        self.waiting_obj.entry(object).or_default().push(hash);
        if let Some(view) = self.provisional_view(&p) {
            self.provisional.insert(hash, view);
        }
        self.pending_bytes += bytes;
        self.pending.insert(hash, p);
        Ok(false)
    }

    /// The latest envelope time among the changes this replica accepted (those released
    /// from waiting included; refused ones never count): what a node's clock follows.
    pub fn newest(&self) -> Hlc {
        self.newest
    }

    /// Expensive consistency checks, on in the test command (`slow-assertions`):
    /// the schema registry and the document agree, and nothing pending is applicable.
    #[cfg(feature = "slow-assertions")]
    fn check_invariants(&self) {
        let Ok(Some((_, messages))) = self.doc.get(ROOT, "messages") else {
            return;
        };
        for item in self.doc.map_range(&messages, ..) {
            let author = self.reg.messages.get(item.key.as_ref());
            assert!(
                author.is_some(),
                "message {} in the document but not in the registry",
                item.key
            );
            assert!(schema::is_message_id_of(
                &item.key,
                author.expect("checked")
            ));
        }
        assert_eq!(
            self.doc.length(&messages),
            self.reg.messages.len(),
            "registry and document disagree"
        );
        for (h, p) in &self.pending {
            assert!(!self.applied.contains(h), "applied change still pending");
            assert!(
                p.change.deps().iter().any(|d| !self.applied.contains(d))
                    || !self.follows_own(p)
                    || self.waiting_obj.values().any(|w| w.contains(h)),
                "pending change is ready"
            );
        }
    }

    /// Applies the pending changes in `woken` whose wait is over, and those their
    /// arrival releases in turn. Returns how many.
    fn release_waiting(&mut self) -> usize {
        let mut applied = 0;
        while let Some(child) = self.woken.pop() {
            let ready = self.pending.get(&child).is_some_and(|p| {
                p.change.deps().iter().all(|d| self.applied.contains(d)) && self.follows_own(p)
            });
            if !ready {
                continue;
            }
            let p = self.remove_pending(&child).expect("checked above");
            let envelope = p.envelope;
            match self.apply_ready(p) {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(reason) => tracing::warn!(%envelope, %reason, "pending change rejected"),
            }
        }
        applied
    }

    /// A post whose change cannot be applied yet, read straight from its operations:
    /// only a change by its own author creating one author-keyed message qualifies.
    fn provisional_view(&self, p: &Pending) -> Option<crate::MessageView> {
        use automerge::legacy::{Key, ObjectId, OpType};
        use automerge::{ObjType, ScalarValue};
        let messages = self.reg.messages_obj.as_ref()?;
        if p.kind != Kind::CHANNEL_CHANGE || p.change.actor_id().to_bytes() != p.author.0 {
            return None;
        }
        let ex = p.change.decode();
        let start = ex.start_op.get();
        let key_of = |id: &automerge::legacy::OpId| (id.0, id.1.to_bytes().to_vec());
        let mut created: Option<(String, schema::ObjKey)> = None;
        let (mut text, mut ts, mut prec, mut reply_to) = (String::new(), 0u64, 0u64, None);
        let mut ai = None;
        for (i, op) in ex.operations.iter().enumerate() {
            let ObjectId::Id(obj) = &op.obj else { continue };
            let Key::Map(k) = &op.key else { continue };
            match &op.action {
                OpType::Make(ObjType::Map)
                    if key_of(obj) == *messages && schema::is_message_id_of(k, &p.author) =>
                {
                    created = Some((k.to_string(), (start + i as u64, p.author.0.to_vec())));
                }
                OpType::Put(v) if created.as_ref().is_some_and(|(_, o)| key_of(obj) == *o) => {
                    match (k.as_str(), v) {
                        ("text", ScalarValue::Str(s)) => text = s.to_string(),
                        ("ts", ScalarValue::Uint(t)) => ts = *t,
                        ("precedence", ScalarValue::Uint(x)) => prec = *x,
                        ("reply_to", ScalarValue::Str(s)) => reply_to = Some(s.to_string()),
                        ("ai", ScalarValue::Str(s)) => ai = Some(s.to_string()),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let (id, _) = created?;
        Some(crate::MessageView {
            id,
            author: p.author,
            channel: self.id,
            text,
            precedence: Precedence::from_u8(prec as u8).unwrap_or(Precedence::Routine),
            timestamp: Hlc(ts),
            time: crate::view::rfc3339(Hlc(ts).wall_ms()),
            reply_to,
            reactions: BTreeMap::new(),
            edited: false,
            redacted: false,
            attachments: Vec::new(),
            ai,
            reviews: BTreeMap::new(),
            pending: true,
        })
    }

    /// Records the envelope that carries a local change (see [`LocalChange`]).
    pub fn bind(&mut self, change: ChangeHash, envelope: EnvelopeId) {
        self.envelope_of.insert(change, envelope);
    }

    fn heads_as_envelopes(&self) -> Vec<EnvelopeId> {
        let mut deps: Vec<EnvelopeId> = self
            .doc
            .get_heads()
            .iter()
            .filter_map(|h| self.envelope_of.get(h).copied())
            .collect();
        deps.sort();
        deps.dedup();
        deps.truncate(MAX_DEPS);
        deps
    }

    /// After a local transaction: validates it like any remote change and packages it.
    fn finish_local(
        &mut self,
        author: NodeId,
        kind: Kind,
        precedence: Precedence,
        hlc: Hlc,
        message_id: String,
        deps: Vec<EnvelopeId>,
    ) -> Result<LocalChange, LocalOpError> {
        let change = self
            .doc
            .get_last_local_change()
            .ok_or_else(|| LocalOpError::Automerge("transaction produced no change".into()))?;
        let v =
            schema::validate(&self.reg, &self.id, &author, kind, hlc, &change).map_err(|r| {
                LocalOpError::Automerge(format!("internal: local change breaks the schema: {r:?}"))
            })?;
        // What waits for this change (an object it makes, or it as a dependency or as its
        // author's previous change) is released as for a change from a peer.
        let made: Vec<schema::ObjKey> = if self.waiting_obj.is_empty() {
            Vec::new()
        } else {
            v.made().cloned().collect()
        };
        let touched = self.reg.commit(v);
        self.dirty.extend(touched);
        let hash = change.hash();
        self.applied.insert(hash);
        self.claims.entry((author, change.seq())).or_insert(hash);
        for k in &made {
            self.woken
                .extend(self.waiting_obj.remove(k).unwrap_or_default());
        }
        self.woken
            .extend(self.waiting.remove(&hash).unwrap_or_default());
        self.woken.extend(
            self.waiting_seq
                .remove(&(author, change.seq()))
                .unwrap_or_default(),
        );
        self.release_waiting();
        self.refresh_views();
        Ok(LocalChange {
            payload: encode_payload(&change),
            deps,
            kind,
            precedence,
            hlc,
            message_id,
            change: change.hash(),
        })
    }

    fn writable(&mut self, author: NodeId) -> Result<automerge::ObjId, LocalOpError> {
        if self.reg.genesis.is_none() {
            return Err(LocalOpError::NoGenesis);
        }
        if self.superseded {
            return Err(LocalOpError::Invalid(
                "this replica must be rebuilt (an author equivocated); try again".into(),
            ));
        }
        let next = self.reg.last_seq.get(&author).copied().unwrap_or(0) + 1;
        if self.claims.contains_key(&(author, next)) {
            return Err(LocalOpError::Invalid(format!(
                "this node's own change with seq {next} in this channel is waiting for what it \
                 builds on (was its store lost or restored from a copy?); writing now would \
                 fork its key's history: wait until the channel has caught up"
            )));
        }
        if let Some(fork) = self.forks.get(&author) {
            return Err(LocalOpError::Invalid(format!(
                "this node's key signed two different changes with seq {fork} in this channel \
                 (was its store lost or restored from a copy?); every replica refuses its \
                 changes here from there on"
            )));
        }
        if self.doc.get_actor().to_bytes() != author.0 {
            self.doc.set_actor(ActorId::from(&author.0[..]));
        }
        match self.doc.get(ROOT, "messages").map_err(am_err)? {
            Some((_, id)) => Ok(id),
            None => Err(LocalOpError::NoGenesis),
        }
    }

    fn message_obj(
        &self,
        messages: &automerge::ObjId,
        id: &str,
    ) -> Result<automerge::ObjId, LocalOpError> {
        match self.doc.get(messages, id).map_err(am_err)? {
            Some((_, obj)) => Ok(obj),
            None => Err(LocalOpError::UnknownMessage(id.to_owned())),
        }
    }

    fn is_redacted(&self, msg: &automerge::ObjId) -> bool {
        self.doc
            .get_all(msg, "redacted")
            .map(|vals| vals.iter().any(|(v, _)| v.as_bool() == Some(true)))
            .unwrap_or(false)
    }

    fn own_message(&mut self, author: NodeId, id: &str) -> Result<automerge::ObjId, LocalOpError> {
        let messages = self.writable(author)?;
        let msg = self.message_obj(&messages, id)?;
        if self.reg.messages.get(id) != Some(&author) {
            return Err(LocalOpError::NotAuthor(id.to_owned()));
        }
        if self.is_redacted(&msg) {
            return Err(LocalOpError::Redacted(id.to_owned()));
        }
        Ok(msg)
    }

    /// Posts a message; returns the change to seal. `hlc` must be fresh from the author's
    /// clock: it becomes part of the message id.
    pub fn post(
        &mut self,
        author: NodeId,
        hlc: Hlc,
        text: &str,
        precedence: Precedence,
        reply_to: Option<&str>,
        attachments: Vec<AttachmentRef>,
    ) -> Result<LocalChange, LocalOpError> {
        self.post_annotated(author, hlc, text, precedence, reply_to, attachments, None)
    }

    /// Posts a message carrying a machine annotation (`ai`): the JSON provenance and
    /// structured content of a SITREP, translation, transcript or triage verdict. The
    /// annotation is written once, with the message, by its author.
    #[allow(clippy::too_many_arguments)]
    pub fn post_annotated(
        &mut self,
        author: NodeId,
        hlc: Hlc,
        text: &str,
        precedence: Precedence,
        reply_to: Option<&str>,
        attachments: Vec<AttachmentRef>,
        ai: Option<&str>,
    ) -> Result<LocalChange, LocalOpError> {
        if let Some(a) = ai
            && a.len() > schema::MAX_AI_BYTES
        {
            return Err(LocalOpError::Invalid(format!(
                "machine annotation is {} bytes; the limit is {}",
                a.len(),
                schema::MAX_AI_BYTES
            )));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(LocalOpError::Invalid(format!(
                "message text is {} bytes; the limit is {MAX_TEXT_BYTES} (send larger content as an attachment)",
                text.len()
            )));
        }
        let messages = self.writable(author)?;
        if let Some(parent) = reply_to {
            self.message_obj(&messages, parent)?;
        }
        if attachments.len() > crate::MAX_ATTACHMENTS {
            return Err(LocalOpError::Invalid(format!(
                "{} attachments; the limit is {} per message",
                attachments.len(),
                crate::MAX_ATTACHMENTS
            )));
        }
        for a in &attachments {
            a.check().map_err(LocalOpError::Invalid)?;
        }
        let id = schema::message_id(hlc, &author);
        if self.reg.messages.contains_key(&id) {
            return Err(LocalOpError::Invalid(format!(
                "message id {id} already used: clock went backwards?"
            )));
        }
        let deps = self.heads_as_envelopes();
        let mut tx = self.doc.transaction();
        let m = tx
            .put_object(&messages, id.as_str(), ObjType::Map)
            .map_err(am_err)?;
        tx.put(&m, "author", author.to_hex()).map_err(am_err)?;
        tx.put(&m, "text", text).map_err(am_err)?;
        tx.put(&m, "ts", hlc.0).map_err(am_err)?;
        tx.put(&m, "precedence", u64::from(precedence.as_u8()))
            .map_err(am_err)?;
        if let Some(parent) = reply_to {
            tx.put(&m, "reply_to", parent).map_err(am_err)?;
        }
        tx.put_object(&m, "reactions", ObjType::Map)
            .map_err(am_err)?;
        if let Some(a) = ai {
            tx.put(&m, "ai", a).map_err(am_err)?;
        }
        tx.put_object(&m, "reviews", ObjType::Map).map_err(am_err)?;
        let list = tx
            .put_object(&m, "attachments", ObjType::List)
            .map_err(am_err)?;
        for (i, a) in attachments.iter().enumerate() {
            let item = tx.insert_object(&list, i, ObjType::Map).map_err(am_err)?;
            tx.put(&item, "hash", a.hash.as_str()).map_err(am_err)?;
            tx.put(&item, "name", a.name.as_str()).map_err(am_err)?;
            tx.put(&item, "size", a.size).map_err(am_err)?;
            tx.put(&item, "mime", a.mime.as_str()).map_err(am_err)?;
        }
        tx.commit_with(CommitOptions::default().with_time((hlc.wall_ms() / 1000) as i64));
        self.finish_local(author, Kind::CHANNEL_CHANGE, precedence, hlc, id, deps)
    }

    /// Replaces the text of the author's own message.
    pub fn edit(
        &mut self,
        author: NodeId,
        hlc: Hlc,
        id: &str,
        text: &str,
    ) -> Result<LocalChange, LocalOpError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(LocalOpError::Invalid(format!(
                "message text is {} bytes; the limit is {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let msg = self.own_message(author, id)?;
        let precedence = self.message_precedence(&msg);
        let deps = self.heads_as_envelopes();
        let mut tx = self.doc.transaction();
        tx.put(&msg, "text", text).map_err(am_err)?;
        tx.put(&msg, "edited_ts", hlc.0).map_err(am_err)?;
        tx.commit_with(CommitOptions::default().with_time((hlc.wall_ms() / 1000) as i64));
        self.finish_local(
            author,
            Kind::CHANNEL_CHANGE,
            precedence,
            hlc,
            id.to_owned(),
            deps,
        )
    }

    /// Redacts the author's own message: a signed deletion that replicates and never
    /// resurrects. The text is cleared from the current document state.
    pub fn redact(
        &mut self,
        author: NodeId,
        hlc: Hlc,
        id: &str,
    ) -> Result<LocalChange, LocalOpError> {
        let msg = self.own_message(author, id)?;
        let precedence = self.message_precedence(&msg);
        let deps = self.heads_as_envelopes();
        let mut tx = self.doc.transaction();
        tx.put(&msg, "redacted", true).map_err(am_err)?;
        tx.put(&msg, "text", "").map_err(am_err)?;
        tx.put(&msg, "edited_ts", hlc.0).map_err(am_err)?;
        tx.commit_with(CommitOptions::default().with_time((hlc.wall_ms() / 1000) as i64));
        self.finish_local(
            author,
            Kind::CHANNEL_CHANGE,
            precedence,
            hlc,
            id.to_owned(),
            deps,
        )
    }

    /// Adds (`on`) or removes a reaction by `author` to any message.
    pub fn react(
        &mut self,
        author: NodeId,
        hlc: Hlc,
        id: &str,
        reaction: &str,
        on: bool,
    ) -> Result<LocalChange, LocalOpError> {
        if reaction.is_empty()
            || reaction.len() > schema::MAX_REACTION_BYTES
            || reaction.chars().any(char::is_control)
        {
            return Err(LocalOpError::Invalid(format!(
                "reaction must be 1-{} printable bytes",
                schema::MAX_REACTION_BYTES
            )));
        }
        let messages = self.writable(author)?;
        let msg = self.message_obj(&messages, id)?;
        if self.is_redacted(&msg) {
            return Err(LocalOpError::Redacted(id.to_owned()));
        }
        let reactions = match self.doc.get(&msg, "reactions").map_err(am_err)? {
            Some((_, r)) => r,
            None => return Err(LocalOpError::UnknownMessage(id.to_owned())),
        };
        let key = format!("{}:{reaction}", schema::prefix(&author));
        let deps = self.heads_as_envelopes();
        let mut tx = self.doc.transaction();
        if on {
            tx.put(&reactions, key.as_str(), true).map_err(am_err)?;
        } else {
            tx.delete(&reactions, key.as_str()).map_err(am_err)?;
        }
        tx.commit_with(CommitOptions::default().with_time((hlc.wall_ms() / 1000) as i64));
        self.finish_local(
            author,
            Kind::CHANNEL_CHANGE,
            Precedence::Routine,
            hlc,
            id.to_owned(),
            deps,
        )
    }

    /// Records `author`'s review of any message: `approved`, `rejected` or
    /// `rejected: note`. A later review by the same node replaces its earlier one.
    pub fn review(
        &mut self,
        author: NodeId,
        hlc: Hlc,
        id: &str,
        verdict: &str,
    ) -> Result<LocalChange, LocalOpError> {
        if !schema::is_review(verdict) {
            return Err(LocalOpError::Invalid(format!(
                "a review is `approved`, `rejected` or `rejected: note` (at most {} printable bytes)",
                schema::MAX_REVIEW_BYTES
            )));
        }
        let messages = self.writable(author)?;
        let msg = self.message_obj(&messages, id)?;
        if self.is_redacted(&msg) {
            return Err(LocalOpError::Redacted(id.to_owned()));
        }
        let reviews = match self.doc.get(&msg, "reviews").map_err(am_err)? {
            Some((_, r)) => r,
            None => {
                return Err(LocalOpError::Invalid(format!(
                    "message {id} predates reviews and cannot be reviewed"
                )));
            }
        };
        let precedence = self.message_precedence(&msg);
        let deps = self.heads_as_envelopes();
        let mut tx = self.doc.transaction();
        tx.put(&reviews, schema::prefix(&author).as_str(), verdict)
            .map_err(am_err)?;
        tx.commit_with(CommitOptions::default().with_time((hlc.wall_ms() / 1000) as i64));
        self.finish_local(
            author,
            Kind::CHANNEL_CHANGE,
            precedence,
            hlc,
            id.to_owned(),
            deps,
        )
    }

    fn message_precedence(&self, msg: &automerge::ObjId) -> Precedence {
        self.doc
            .get(msg, "precedence")
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_u64())
            .and_then(|p| Precedence::from_u8(p as u8))
            .unwrap_or(Precedence::Routine)
    }

    /// Whether the object is a message written by its author (used by the view).
    pub(crate) fn role_author(&self, id: &str) -> Option<NodeId> {
        self.reg.messages.get(id).copied()
    }
}
