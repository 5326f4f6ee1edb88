//! The sync engine: one state machine for all peers, `handle(now, input) -> outputs`.
//!
//! The driver (libp2p in `fieldmesh-net`, or the simulator) turns outputs into I/O and
//! I/O into inputs. Requests carry one frame and are answered by one frame:
//!
//! * on connect, each side opens a reconciliation session with a `Range` request; the
//!   answer carries the next messages, until a side has nothing more to say;
//! * the ids a peer lacks go into that peer's [`TransferQueue`] and leave as `Envelope`
//!   requests, most urgent first, as fast as the peer's [`TokenBucket`] allows;
//! * a new envelope goes at once to the peers on the eager tree (every peer at first),
//!   and is announced (gossip) to all. A peer that receives it twice answers `Prune`,
//!   and the sender announces to that peer from then on instead of pushing: the eager
//!   links settle into a spanning tree, so an envelope crosses each node about once at
//!   the latency of a direct push (the epidemic broadcast tree of Leitao et al.,
//!   "Plumtree"). A peer that hears an announce of something it lacks waits
//!   `lazy_want_delay_ms` for the eager copy, then sends `Want` and grafts that link
//!   back onto the tree;
//! * sessions re-run every `resync_interval_ms` to repair whatever push missed;
//! * a peer that sends undecodable frames or forged envelopes collects strikes and is
//!   disconnected at `max_strikes`.

use crate::frame::{BulkFrame, Frame, MAX_FRAME_BYTES};
use crate::ranger::{RangeMsg, Reconciler};
use crate::{Index, Meta, TokenBucket, TransferQueue};
use fieldmesh_core::{EnvelopeId, Precedence};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Engine parameters (from the firmware profile).
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Reconciliation parameters.
    pub reconciler: Reconciler,
    /// Largest frame sent or accepted.
    pub max_frame_bytes: usize,
    /// Per-link send rate.
    pub link_rate_bytes_per_s: u64,
    /// Per-link burst.
    pub link_burst_bytes: u64,
    /// Re-run reconciliation this often.
    pub resync_interval_ms: u64,
    /// Misbehaviour tolerated before disconnecting a peer.
    pub max_strikes: u32,
    /// How long a peer disconnected for misbehaviour is refused when it comes back; its
    /// strikes start again from zero afterwards.
    pub ban_ms: u64,
    /// Pushes per peer awaiting acknowledgement (transport streams are finite).
    pub max_inflight: usize,
    /// Bytes of pushes per peer awaiting acknowledgement: enough to keep a fast link busy
    /// while the receiver's group commit is on disk, small enough that a slow one is never
    /// buried under data it cannot carry (the token bucket paces what leaves).
    pub max_inflight_bytes: u64,
    /// IMMEDIATE and FLASH pushes allowed per peer beyond a full window, in envelopes
    /// and bytes: on a link slower than its budget, acknowledgements of bulk come back
    /// slowly and the window stays full, and urgent traffic must not wait for them.
    pub urgent_reserve: usize,
    /// See [`EngineConfig::urgent_reserve`].
    pub urgent_reserve_bytes: u64,
    /// New envelopes up to this size are pushed eagerly along the tree; larger ones are
    /// only announced.
    pub eager_push_max_bytes: u32,
    /// After an announce of a missing envelope, wait this long for the eager copy before
    /// asking for it.
    pub lazy_want_delay_ms: u64,
    /// At a meeting, the side with the higher id waits this long for the other's session
    /// before opening its own (see [`Engine::with_local`]): one session settles both
    /// directions, and two at once cost twice the bytes.
    pub answer_grace_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            reconciler: Reconciler::default(),
            max_frame_bytes: MAX_FRAME_BYTES,
            link_rate_bytes_per_s: 10 * 1024 * 1024,
            link_burst_bytes: 1024 * 1024,
            resync_interval_ms: 30_000,
            max_strikes: 10,
            ban_ms: 10 * 60 * 1000,
            max_inflight: 256,
            max_inflight_bytes: 16 * 1024 * 1024,
            urgent_reserve: 64,
            urgent_reserve_bytes: 1024 * 1024,
            eager_push_max_bytes: 16 * 1024,
            lazy_want_delay_ms: 1_000,
            answer_grace_ms: 2_000,
        }
    }
}

/// Declined envelope ids remembered (see `Engine::declined`): 32 MiB.
pub const MAX_DECLINED: usize = 1 << 20;

/// Disconnected peers whose counters are kept (see `Engine::past`).
pub const MAX_PAST_PEERS: usize = 1024;

/// Precedences that may use [`EngineConfig::urgent_reserve`].
const URGENT: Precedence = Precedence::Immediate;

/// Whether a request's messages open a session (what [`Reconciler::initiate`] sends:
/// the whole id space, as a fingerprint or a list).
fn opens_session(msgs: &[RangeMsg]) -> bool {
    matches!(
        msgs.first(),
        Some(RangeMsg::Fingerprint { range, .. } | RangeMsg::IdList { range, .. })
            if *range == crate::ranger::IdRange::ALL
    )
}

/// Identifies an inbound request so that the driver can route the answer.
pub type RequestId = u64;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<P> {
    /// A connection to `P` is up.
    PeerUp(P),
    /// The last connection to `P` is gone.
    PeerDown(P),
    /// `P` sent a request frame.
    Request {
        /// From.
        peer: P,
        /// For the answer.
        request: RequestId,
        /// The frame bytes.
        frame: Vec<u8>,
    },
    /// `P` sent a frame on its bulk stream (a long-lived stream that carries only
    /// `Envelope` frames; the driver acknowledges them in order once they are handled).
    Bulk {
        /// From.
        peer: P,
        /// The frame, as read.
        frame: BulkFrame,
    },
    /// `P` answered one of our requests.
    Response {
        /// From.
        peer: P,
        /// The frame bytes.
        frame: Vec<u8>,
    },
    /// `P` announced new envelopes (gossip).
    Announce {
        /// From.
        peer: P,
        /// The frame bytes.
        frame: Vec<u8>,
    },
    /// An envelope is now durable in the local store (posted here, or ingested from
    /// `from`).
    Inserted {
        /// Its id.
        id: EnvelopeId,
        /// Its metadata.
        meta: Meta,
        /// The peer it came from, if any.
        from: Option<P>,
    },
    /// An authentic envelope from a peer that this node chose not to keep (it carries
    /// others' traffic only within a quota): peers are not to offer it again.
    Declined {
        /// Its id.
        id: EnvelopeId,
        /// Its metadata.
        meta: Meta,
    },
    /// A stored envelope was removed to make room for others' traffic (the relay quota):
    /// it stays counted as held, so that reconciliation does not fetch it back, and is
    /// never pushed again.
    Evicted {
        /// Its id.
        id: EnvelopeId,
    },
    /// A request to `peer` (not a push) failed: timed out, or its stream was reset. An
    /// open reconciliation session with the peer is given up, and the next one starts
    /// after the resync interval (otherwise none would start again until a reconnect).
    RequestFailed {
        /// To whom.
        peer: P,
    },
    /// A `Push` finished: the peer acknowledged it (`delivered`), or the request failed
    /// and the envelope goes back in the queue.
    PushDone {
        /// To whom.
        peer: P,
        /// Which envelope.
        id: EnvelopeId,
        /// Whether the peer acknowledged it.
        delivered: bool,
    },
    /// The driver refused an envelope from `peer` (bad signature, malformed).
    Refused {
        /// From.
        peer: P,
    },
    /// `peer` broke a rule of a protocol the driver speaks (what it sent was still
    /// handled): a strike, as for any other violation.
    Misbehaved {
        /// Who.
        peer: P,
        /// Which rule.
        why: &'static str,
    },
    /// The local copy of an envelope turned out damaged (a failing disk): it leaves the
    /// index, so the next reconciliation with a peer that holds it fetches it again.
    Forget {
        /// Which envelope.
        id: EnvelopeId,
    },
    /// Time passed.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Send a request frame to `peer`.
    Request {
        /// To.
        peer: P,
        /// Frame bytes.
        frame: Vec<u8>,
    },
    /// Answer an inbound request.
    Respond {
        /// The request.
        request: RequestId,
        /// Frame bytes.
        frame: Vec<u8>,
    },
    /// Load envelope `id` and send it to `peer` as an `Envelope` request frame.
    Push {
        /// To.
        peer: P,
        /// Which envelope.
        id: EnvelopeId,
    },
    /// Verify and store these bytes from `peer`; report back with `Inserted` or `Refused`.
    Ingest {
        /// From.
        peer: P,
        /// Envelope bytes.
        envelope: Vec<u8>,
    },
    /// Publish an announce frame to connected peers.
    Announce {
        /// Frame bytes.
        frame: Vec<u8>,
    },
    /// Drop an inbound request without an answer (its sender is banned).
    Unanswered {
        /// The request.
        request: RequestId,
    },
    /// Drop the connection to `peer`.
    Disconnect {
        /// Whom.
        peer: P,
        /// Why.
        reason: String,
    },
}

/// Per-peer counters, for `sync-status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Last time anything arrived from the peer (ms).
    pub last_contact_ms: u64,
    /// Envelopes and bytes pushed to the peer.
    pub envelopes_sent: u64,
    /// Bytes of frames sent (requests and answers).
    pub bytes_sent: u64,
    /// Envelopes received from the peer.
    pub envelopes_received: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
    /// Reconciliation sessions this node opened with the peer and completed.
    pub sessions: u64,
    /// Reconciliation sessions the peer opened with this node (each settles both
    /// directions, so this node's own next one waits a full interval).
    pub sessions_answered: u64,
    /// Strikes for misbehaviour (kept across reconnections).
    pub strikes: u32,
    /// Whether a connection to the peer is up (peers stay listed after they leave).
    pub connected: bool,
    /// Refused until then (ms), for misbehaviour; 0 when not banned.
    pub banned_until_ms: u64,
    /// Backlog queued for the peer, by precedence (most urgent first).
    pub backlog: Vec<(Precedence, usize)>,
}

#[derive(Debug)]
struct PeerState {
    queue: TransferQueue,
    bucket: TokenBucket,
    stats: PeerStats,
    next_resync_ms: u64,
    session_open: bool,
    /// Pushes sent and not yet acknowledged, and their bytes.
    inflight: BTreeSet<EnvelopeId>,
    inflight_bytes: u64,
    /// Pushes the peer acknowledged recently, and when (oldest first): a want for one
    /// of them was computed before it arrived, and is not served twice. Forgotten after
    /// [`Engine::delivered_memory_ms`], so that a peer that has since lost its copy (a
    /// damaged disk) and asks again gets it.
    delivered: BTreeSet<EnvelopeId>,
    delivered_at: VecDeque<(u64, EnvelopeId)>,
    /// New envelopes go to this peer at once (true) or by announce only (pruned).
    eager: bool,
    /// When the open reconciliation session's first request left (for the RTT).
    session_sent_ms: Option<u64>,
    /// When the last session with this peer opened, the last envelope from it arrived,
    /// and its last reconciliation request came: a periodic session waits while a
    /// transfer either way, or a session the peer opened, is under way.
    last_session_ms: u64,
    last_envelope_ms: Option<u64>,
    last_answered_ms: Option<u64>,
    /// Smoothed round-trip time to this peer.
    srtt_ms: Option<u64>,
    /// Coded symbols of the session this peer has open with us.
    decoder: crate::riblt::Decoder,
}

impl PeerState {
    fn new(cfg: &EngineConfig, now_ms: u64, next_resync_ms: u64) -> PeerState {
        PeerState {
            queue: TransferQueue::default(),
            bucket: TokenBucket::new(cfg.link_rate_bytes_per_s, cfg.link_burst_bytes, now_ms),
            stats: PeerStats {
                last_contact_ms: now_ms,
                ..PeerStats::default()
            },
            next_resync_ms,
            session_open: false,
            inflight: BTreeSet::new(),
            inflight_bytes: 0,
            delivered: BTreeSet::new(),
            delivered_at: VecDeque::new(),
            eager: true,
            session_sent_ms: None,
            last_session_ms: now_ms,
            last_envelope_ms: None,
            last_answered_ms: None,
            srtt_ms: None,
            decoder: crate::riblt::Decoder::default(),
        }
    }
}

/// The sync state machine.
#[derive(Debug)]
pub struct Engine<P: Ord + Clone> {
    config: EngineConfig,
    index: Index,
    peers: BTreeMap<P, PeerState>,
    /// Counters of peers no longer connected, so that `sync-status` still shows when
    /// they were last heard from, and strikes and bans outlive a reconnection. At most
    /// [`MAX_PAST_PEERS`], the longest silent dropped first.
    past: BTreeMap<P, PeerStats>,
    /// Strikes ever given, across peers (survives disconnects).
    total_strikes: u64,
    /// Announced envelopes we lack: when to ask for them, and whom.
    wants: BTreeMap<EnvelopeId, (u64, P)>,
    /// Envelopes declined here (see [`Input::Declined`]): held in the index, never
    /// pushed. At most [`MAX_DECLINED`]; past that the set starts again.
    declined: BTreeSet<EnvelopeId>,
    /// This node's own id, if known (see [`Engine::with_local`]).
    local: Option<P>,
}

impl<P: Ord + Clone + std::fmt::Debug> Engine<P> {
    /// An engine over the ids the store already holds.
    pub fn new(config: EngineConfig, index: Index) -> Engine<P> {
        Engine {
            config,
            index,
            peers: BTreeMap::new(),
            total_strikes: 0,
            past: BTreeMap::new(),
            wants: BTreeMap::new(),
            declined: BTreeSet::new(),
            local: None,
        }
    }

    /// Names this node. When two nodes meet, the one with the lower id opens the first
    /// session at once; the other answers it, and opens its own only if none came within
    /// [`EngineConfig::answer_grace_ms`]. Without a name, every meeting opens a session
    /// at once from both sides.
    #[must_use]
    pub fn with_local(mut self, me: P) -> Self {
        self.local = Some(me);
        self
    }

    /// The ids held.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Connected peers and their counters.
    pub fn peer_stats(&self) -> Vec<(P, PeerStats)> {
        let connected = self.peers.iter().map(|(p, s)| {
            let mut st = s.stats.clone();
            st.backlog = s.queue.backlog().to_vec();
            (p.clone(), st)
        });
        connected
            .chain(self.past.iter().map(|(p, s)| (p.clone(), s.clone())))
            .collect()
    }

    /// Handles one input.
    pub fn handle(&mut self, now_ms: u64, input: Input<P>) -> Vec<Output<P>> {
        let mut out = Vec::new();
        match input {
            Input::PeerUp(peer) => {
                if self.local.as_ref().is_some_and(|me| *me > peer) {
                    // The peer opens the session; ours only if its does not come.
                    let wait_until = now_ms + self.config.answer_grace_ms;
                    self.admit(now_ms, &peer, wait_until, &mut out);
                } else {
                    let next_resync = now_ms + self.config.resync_interval_ms;
                    if self.admit(now_ms, &peer, next_resync, &mut out) {
                        self.open_session(now_ms, &peer, &mut out);
                    }
                }
            }
            Input::PeerDown(peer) => {
                if let Some(st) = self.peers.remove(&peer) {
                    let mut stats = st.stats;
                    stats.connected = false;
                    stats.backlog.clear();
                    self.ban_if_struck_out(&mut stats, now_ms);
                    self.past.insert(peer, stats);
                    self.trim_past();
                }
            }
            Input::Request {
                peer,
                request,
                frame,
            } => {
                self.on_request(now_ms, peer, request, frame, &mut out);
            }
            Input::Bulk { peer, frame } => self.on_bulk(now_ms, peer, frame, &mut out),
            Input::Response { peer, frame } => self.on_response(now_ms, peer, frame, &mut out),
            Input::Announce { peer, frame } => self.on_announce(now_ms, peer, frame, &mut out),
            Input::Inserted { id, meta, from } => {
                self.wants.remove(&id);
                if self.index.insert(id, meta) {
                    if let Some(p) = from.as_ref().and_then(|p| self.peers.get_mut(p)) {
                        p.stats.envelopes_received += 1;
                    }
                    let eager = meta.size <= self.config.eager_push_max_bytes;
                    for (p, st) in self.peers.iter_mut() {
                        if Some(p) == from.as_ref() {
                            continue;
                        }
                        st.queue.cancel(&id);
                        // FLASH goes to every peer, tree or not: a duplicate
                        // FLASH costs less than a FLASH waiting for a lazy repair.
                        if eager
                            && (st.eager || meta.precedence == Precedence::Flash)
                            && !st.inflight.contains(&id)
                            && !st.delivered.contains(&id)
                        {
                            st.queue.push(id, &meta);
                        }
                    }
                    // Announced to whoever may lack it: not when the one it came from is
                    // the only peer connected.
                    if self.peers.keys().any(|p| Some(p) != from.as_ref()) {
                        out.push(Output::Announce {
                            frame: Frame::Announce(vec![id]).encode(),
                        });
                    }
                } else if let Some(p) = from
                    && let Some(st) = self.peers.get_mut(&p)
                    && st.eager
                {
                    // A second copy: the link it came by is redundant for eager push.
                    st.eager = false;
                    let frame = Frame::Prune(vec![id]).encode();
                    st.stats.bytes_sent += frame.len() as u64;
                    out.push(Output::Request { peer: p, frame });
                }
            }
            Input::Declined { id, meta } => {
                // Counted as held, so that reconciliation does not offer it again; not
                // announced, and never pushed (a peer asking for it gets nothing).
                self.index.insert(id, meta);
                self.decline(id);
            }
            // Declined even if the index does not hold it yet (its insertion may still be
            // on its way): never pushed from here.
            Input::Evicted { id } => self.decline(id),
            Input::RequestFailed { peer } => {
                if let Some(st) = self.peers.get_mut(&peer)
                    && st.session_open
                {
                    st.session_open = false;
                    st.session_sent_ms = None;
                    // Soon, not after a whole interval: the peer may have deferred its
                    // own session to this one (a meeting opens one session only).
                    st.next_resync_ms = now_ms
                        + self
                            .config
                            .answer_grace_ms
                            .min(self.config.resync_interval_ms);
                }
            }
            Input::Misbehaved { peer, why } => self.strike(&peer, why, &mut out),
            Input::Refused { peer } => {
                self.strike(&peer, "sent an envelope that failed verification", &mut out)
            }
            Input::PushDone {
                peer,
                id,
                delivered,
            } => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    if st.inflight.remove(&id) {
                        let size = self.index.meta(&id).map_or(0, |m| u64::from(m.size));
                        st.inflight_bytes = st.inflight_bytes.saturating_sub(size);
                    }
                    // A forgotten envelope (damaged here: a push that could not be
                    // loaded ends as "delivered") is not remembered as the peer's.
                    if delivered && self.index.contains(&id) && st.delivered.insert(id) {
                        st.delivered_at.push_back((now_ms, id));
                    }
                    if !delivered && let Some(meta) = self.index.meta(&id) {
                        st.queue.push(id, meta);
                    }
                }
            }
            Input::Forget { id } => {
                let size = self.index.meta(&id).map_or(0, |m| u64::from(m.size));
                if self.index.remove(&id) {
                    // Not offered any more; a push already under way is no longer
                    // counted against its window (its outcome finds nothing to settle);
                    // and no peer counts as having it from us (a push that failed to
                    // load was reported done), so the repaired copy goes to them all.
                    for st in self.peers.values_mut() {
                        st.queue.cancel(&id);
                        if st.inflight.remove(&id) {
                            st.inflight_bytes = st.inflight_bytes.saturating_sub(size);
                        }
                        st.delivered.remove(&id);
                    }
                }
            }
            Input::Tick => {
                let memory = self.delivered_memory_ms();
                for st in self.peers.values_mut() {
                    while let Some((at, id)) = st.delivered_at.front().copied()
                        && now_ms.saturating_sub(at) >= memory
                    {
                        st.delivered_at.pop_front();
                        st.delivered.remove(&id);
                    }
                }
                let interval = self.config.resync_interval_ms;
                let mut due = Vec::new();
                for (p, st) in self.peers.iter_mut() {
                    if st.session_open || now_ms < st.next_resync_ms {
                        continue;
                    }
                    // While envelopes still flow either way, a session would only find
                    // again the difference being sent (and cost bytes in proportion to
                    // it): it waits, up to ten intervals.
                    let sending = !st.queue.is_empty() || !st.inflight.is_empty();
                    let recent =
                        |at: Option<u64>| at.is_some_and(|at| now_ms.saturating_sub(at) < interval);
                    let receiving = recent(st.last_envelope_ms);
                    // The peer's session (its coded symbols can take a while over a large
                    // difference) would be found again by ours.
                    let answering = recent(st.last_answered_ms);
                    let overdue =
                        now_ms.saturating_sub(st.last_session_ms) >= interval.saturating_mul(10);
                    if (sending || receiving || answering) && !overdue {
                        st.next_resync_ms = now_ms + interval;
                        continue;
                    }
                    due.push(p.clone());
                }
                for p in due {
                    self.open_session(now_ms, &p, &mut out);
                }
                self.send_due_wants(now_ms, &mut out);
            }
        }
        self.flush_pushes(now_ms, &mut out);
        out
    }

    /// `id` is held in the index but not in the store: never pushed, not wanted.
    fn decline(&mut self, id: EnvelopeId) {
        self.wants.remove(&id);
        for st in self.peers.values_mut() {
            st.queue.cancel(&id);
        }
        if self.declined.len() >= MAX_DECLINED {
            self.declined.clear();
        }
        self.declined.insert(id);
    }

    fn open_session(&mut self, now_ms: u64, peer: &P, out: &mut Vec<Output<P>>) {
        let msgs = self.config.reconciler.initiate(&self.index);
        if let Some(st) = self.peers.get_mut(peer) {
            st.session_open = true;
            st.session_sent_ms = Some(now_ms);
            st.last_session_ms = now_ms;
            st.next_resync_ms = now_ms + self.config.resync_interval_ms;
        }
        self.send_range(peer, msgs, out);
    }

    /// Sends range messages as one or more requests, each under the frame cap.
    fn send_range(&mut self, peer: &P, msgs: Vec<RangeMsg>, out: &mut Vec<Output<P>>) {
        for frame in self.pack(msgs) {
            if let Some(st) = self.peers.get_mut(peer) {
                st.stats.bytes_sent += frame.len() as u64;
            }
            out.push(Output::Request {
                peer: peer.clone(),
                frame,
            });
        }
    }

    /// Packs messages into frames a peer accepts: within the frame cap every node applies
    /// (a profile may allow larger frames, but decoding never accepts more than
    /// [`MAX_FRAME_BYTES`]: frames packed to a profile's 1 MiB were refused by every peer,
    /// and counted as strikes against an honest sender) and within the count a frame
    /// can say (16 bits).
    fn pack(&self, msgs: Vec<RangeMsg>) -> Vec<Vec<u8>> {
        let cap = self.config.max_frame_bytes.min(MAX_FRAME_BYTES);
        let mut frames = Vec::new();
        let mut batch = Vec::new();
        let mut size = 4;
        for m in msgs {
            let len = Frame::Range(vec![m.clone()]).encode().len() - 4;
            if (size + len > cap || batch.len() == usize::from(u16::MAX)) && !batch.is_empty() {
                frames.push(Frame::Range(std::mem::take(&mut batch)).encode());
                size = 4;
            }
            size += len;
            batch.push(m);
        }
        if !batch.is_empty() {
            frames.push(Frame::Range(batch).encode());
        }
        frames
    }

    /// Strikes given to misbehaving peers since start (rejected frames and envelopes).
    pub fn total_strikes(&self) -> u64 {
        self.total_strikes
    }

    fn strike(&mut self, peer: &P, why: &str, out: &mut Vec<Output<P>>) {
        self.total_strikes += 1;
        let Some(st) = self.peers.get_mut(peer) else {
            // Not connected (yet, or any more): kept for when it comes back.
            self.past.entry(peer.clone()).or_default().strikes += 1;
            self.trim_past();
            return;
        };
        st.stats.strikes += 1;
        if st.stats.strikes >= self.config.max_strikes {
            out.push(Output::Disconnect {
                peer: peer.clone(),
                reason: format!("{} strikes; last: {why}", st.stats.strikes),
            });
        }
    }

    fn decode(
        &mut self,
        now_ms: u64,
        peer: &P,
        frame: &[u8],
        out: &mut Vec<Output<P>>,
    ) -> Option<Frame> {
        self.note_contact(now_ms, peer, frame.len());
        match Frame::decode(frame, self.config.max_frame_bytes) {
            Ok(f) => Some(f),
            Err(e) => {
                self.strike(peer, &format!("undecodable frame: {e}"), out);
                None
            }
        }
    }

    /// Counts a frame of `len` bytes from `peer` as contact.
    fn note_contact(&mut self, now_ms: u64, peer: &P, len: usize) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.stats.bytes_received += len as u64;
            st.stats.last_contact_ms = now_ms;
        }
    }

    fn on_request(
        &mut self,
        now_ms: u64,
        peer: P,
        request: RequestId,
        frame: Vec<u8>,
        out: &mut Vec<Output<P>>,
    ) {
        let ack = Frame::Range(Vec::new()).encode();
        // A request before the connection event (or from a banned peer, unanswered).
        if !self.admit(now_ms, &peer, now_ms, out) {
            out.push(Output::Unanswered { request });
            return;
        }
        let reply = match self.decode(now_ms, &peer, &frame, out) {
            Some(Frame::Range(msgs)) => match self.respond(&peer, &msgs) {
                Ok(step) => {
                    if let Some(st) = self.peers.get_mut(&peer) {
                        st.last_answered_ms = Some(now_ms);
                        if opens_session(&msgs) {
                            // The peer opened a session: it settles both directions, so
                            // ours waits a full interval from now (unless one is under
                            // way).
                            st.stats.sessions_answered += 1;
                            if !st.session_open {
                                st.last_session_ms = now_ms;
                                st.next_resync_ms = now_ms + self.config.resync_interval_ms;
                            }
                        }
                    }
                    if msgs.iter().any(|m| matches!(m, RangeMsg::Want { .. }))
                        && let Some(st) = self.peers.get_mut(&peer)
                    {
                        // Asked for something it heard announced: graft it back on.
                        st.eager = true;
                    }
                    self.queue_pushes(&peer, step.push);
                    let mut frames = self.pack(step.reply);
                    let first = if frames.is_empty() {
                        ack.clone()
                    } else {
                        frames.remove(0)
                    };
                    // Anything beyond one frame continues as our own requests.
                    for f in frames {
                        out.push(Output::Request {
                            peer: peer.clone(),
                            frame: f,
                        });
                    }
                    first
                }
                Err(e) => {
                    self.strike(&peer, &format!("protocol violation: {e}"), out);
                    ack.clone()
                }
            },
            Some(Frame::Envelope(bytes)) => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.last_envelope_ms = Some(now_ms);
                }
                out.push(Output::Ingest {
                    peer: peer.clone(),
                    envelope: bytes,
                });
                ack.clone()
            }
            Some(Frame::Prune(_)) => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.eager = false;
                }
                ack.clone()
            }
            Some(Frame::Announce(_)) | None => ack.clone(),
        };
        if let Some(st) = self.peers.get_mut(&peer) {
            st.stats.bytes_sent += reply.len() as u64;
        }
        out.push(Output::Respond {
            request,
            frame: reply,
        });
    }

    /// A request can arrive before the driver reports the connection.
    /// Starts a ban for a peer at the strike limit that is not banned yet.
    fn ban_if_struck_out(&self, stats: &mut PeerStats, now_ms: u64) {
        if stats.strikes >= self.config.max_strikes && stats.banned_until_ms == 0 {
            stats.banned_until_ms = now_ms.saturating_add(self.config.ban_ms);
        }
    }

    /// Keeps at most [`MAX_PAST_PEERS`] disconnected peers, dropping the longest silent
    /// (banned ones last, so that a crowd of new identities cannot lift a ban).
    fn trim_past(&mut self) {
        if self.past.len() > MAX_PAST_PEERS
            && let Some(oldest) = self
                .past
                .iter()
                .min_by_key(|(_, s)| (s.banned_until_ms > 0, s.last_contact_ms))
                .map(|(p, _)| p.clone())
        {
            self.past.remove(&oldest);
        }
    }

    /// Takes `peer` in as connected (continuing what is known of it from an earlier
    /// connection), unless it is banned: then the driver is told to drop it, and false.
    fn admit(
        &mut self,
        now_ms: u64,
        peer: &P,
        next_resync_ms: u64,
        out: &mut Vec<Output<P>>,
    ) -> bool {
        if self.peers.contains_key(peer) {
            return true;
        }
        let mut st = PeerState::new(&self.config, now_ms, next_resync_ms);
        if let Some(mut before) = self.past.remove(peer) {
            // Struck out while not connected (its last frames were judged after it left):
            // the ban starts now.
            self.ban_if_struck_out(&mut before, now_ms);
            if before.banned_until_ms > now_ms {
                out.push(Output::Disconnect {
                    peer: peer.clone(),
                    reason: format!(
                        "banned for misbehaviour for {} s more",
                        (before.banned_until_ms - now_ms).div_ceil(1000)
                    ),
                });
                self.past.insert(peer.clone(), before);
                return false;
            }
            if before.banned_until_ms != 0 {
                before.strikes = 0;
                before.banned_until_ms = 0;
            }
            before.last_contact_ms = now_ms;
            st.stats = before;
        }
        st.stats.connected = true;
        self.peers.insert(peer.clone(), st);
        true
    }

    /// A frame from the peer's bulk stream: an envelope to store, or a strike (nothing
    /// else travels there, and nothing is answered on it but the driver's acks).
    fn on_bulk(&mut self, now_ms: u64, peer: P, frame: BulkFrame, out: &mut Vec<Output<P>>) {
        if !self.admit(now_ms, &peer, now_ms, out) {
            return;
        }
        self.note_contact(now_ms, &peer, frame.len());
        match frame.decode(self.config.max_frame_bytes) {
            Ok(Frame::Envelope(bytes)) => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.last_envelope_ms = Some(now_ms);
                }
                out.push(Output::Ingest {
                    peer,
                    envelope: bytes,
                });
            }
            Ok(_) => self.strike(
                &peer,
                "a frame other than an envelope on the bulk stream",
                out,
            ),
            Err(e) => self.strike(&peer, &format!("undecodable frame: {e}"), out),
        }
    }

    fn on_response(&mut self, now_ms: u64, peer: P, frame: Vec<u8>, out: &mut Vec<Output<P>>) {
        if let Some(st) = self.peers.get_mut(&peer)
            && let Some(sent) = st.session_sent_ms.take()
        {
            let rtt = now_ms.saturating_sub(sent);
            st.srtt_ms = Some(st.srtt_ms.map_or(rtt, |s| (7 * s + rtt) / 8));
        }
        match self.decode(now_ms, &peer, &frame, out) {
            Some(Frame::Range(msgs)) if msgs.is_empty() => {
                if let Some(st) = self.peers.get_mut(&peer)
                    && st.session_open
                {
                    st.session_open = false;
                    st.stats.sessions += 1;
                }
            }
            Some(Frame::Range(msgs)) => match self.respond(&peer, &msgs) {
                Ok(step) => {
                    self.queue_pushes(&peer, step.push);
                    if step.reply.is_empty() {
                        if let Some(st) = self.peers.get_mut(&peer) {
                            st.session_open = false;
                            st.stats.sessions += 1;
                        }
                    } else {
                        self.send_range(&peer, step.reply, out);
                    }
                }
                Err(e) => {
                    self.strike(&peer, &format!("protocol violation: {e}"), out);
                    self.session_failed(&peer);
                }
            },
            Some(_) => {
                self.strike(&peer, "unexpected frame in a response", out);
                self.session_failed(&peer);
            }
            None => self.session_failed(&peer),
        }
    }

    /// Our session with `peer` ended on an answer we could not use: it is closed, so that
    /// the next one starts at the usual interval (left open, none would start again until
    /// the peer reconnected).
    fn session_failed(&mut self, peer: &P) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.session_open = false;
            st.session_sent_ms = None;
        }
    }

    /// Runs the reconciler with this peer's coded-symbol state.
    fn respond(
        &mut self,
        peer: &P,
        msgs: &[RangeMsg],
    ) -> Result<crate::ranger::Step, crate::ranger::RangeError> {
        let mut decoder = self
            .peers
            .get_mut(peer)
            .map(|st| std::mem::take(&mut st.decoder))
            .unwrap_or_default();
        let step = self
            .config
            .reconciler
            .respond_in(&self.index, msgs, &mut decoder);
        if let Some(st) = self.peers.get_mut(peer) {
            st.decoder = decoder;
        }
        step
    }

    fn on_announce(&mut self, now_ms: u64, peer: P, frame: Vec<u8>, out: &mut Vec<Output<P>>) {
        if let Some(Frame::Announce(ids)) = self.decode(now_ms, &peer, &frame, out) {
            if !self.peers.contains_key(&peer) {
                return;
            }
            // The eager copy, if any, is usually no more than a round trip behind the
            // announce; wait about that long (never more than the configured delay).
            let wait = self.peers[&peer]
                .srtt_ms
                .map_or(self.config.lazy_want_delay_ms, |rtt| {
                    (2 * rtt + 20).min(self.config.lazy_want_delay_ms)
                });
            let due = now_ms + wait;
            for id in ids {
                if !self.index.contains(&id) {
                    self.wants.entry(id).or_insert((due, peer.clone()));
                }
            }
            if self.config.lazy_want_delay_ms == 0 {
                self.send_due_wants(now_ms, out);
            }
        }
    }

    /// Asks for announced envelopes whose eager copy did not come in time, and grafts
    /// the links they are asked over back onto the eager tree.
    fn send_due_wants(&mut self, now_ms: u64, out: &mut Vec<Output<P>>) {
        let mut by_peer: BTreeMap<P, Vec<EnvelopeId>> = BTreeMap::new();
        self.wants.retain(|id, (due, peer)| {
            if *due > now_ms {
                return true;
            }
            if !self.index.contains(id) && self.peers.contains_key(peer) {
                by_peer.entry(peer.clone()).or_default().push(*id);
            }
            false
        });
        for (peer, mut ids) in by_peer {
            ids.sort();
            if let Some(st) = self.peers.get_mut(&peer) {
                st.eager = true;
            }
            self.send_range(&peer, vec![RangeMsg::Want { ids }], out);
        }
    }

    /// How long an acknowledged push keeps a want for it from being served again: two
    /// resync intervals (a want is computed in one session and arrives within it), and
    /// at least five seconds.
    pub fn delivered_memory_ms(&self) -> u64 {
        self.config.resync_interval_ms.saturating_mul(2).max(5_000)
    }

    fn queue_pushes(&mut self, peer: &P, ids: Vec<EnvelopeId>) {
        let Some(st) = self.peers.get_mut(peer) else {
            return;
        };
        for id in ids {
            // Already on its way, or acknowledged within the delivered memory (a want
            // computed before it arrived): a resync must not send it twice.
            if st.inflight.contains(&id)
                || st.delivered.contains(&id)
                || self.declined.contains(&id)
            {
                continue;
            }
            if let Some(meta) = self.index.meta(&id) {
                st.queue.push(id, meta);
            }
        }
    }

    fn flush_pushes(&mut self, now_ms: u64, out: &mut Vec<Output<P>>) {
        let cfg = &self.config;
        for (peer, st) in self.peers.iter_mut() {
            if st.queue.is_empty() {
                continue;
            }
            let mut budget = st.bucket.available(now_ms);
            // Urgent envelopes first, in a window widened by the reserve.
            let mut ids = Vec::new();
            let mut urgent_bytes = 0;
            if st.queue.head_precedence() >= Some(URGENT) {
                let window = (cfg.max_inflight_bytes + cfg.urgent_reserve_bytes)
                    .saturating_sub(st.inflight_bytes);
                let room =
                    (cfg.max_inflight + cfg.urgent_reserve).saturating_sub(st.inflight.len());
                ids = st.queue.take_at_least(URGENT, budget.min(window), room);
                urgent_bytes = ids
                    .iter()
                    .filter_map(|id| self.index.meta(id))
                    .map(|m| u64::from(m.size))
                    .sum();
                budget = budget.saturating_sub(urgent_bytes);
            }
            let window = cfg
                .max_inflight_bytes
                .saturating_sub(st.inflight_bytes + urgent_bytes);
            let room = cfg
                .max_inflight
                .saturating_sub(st.inflight.len() + ids.len());
            ids.extend(st.queue.take(budget.min(window), room));
            // An envelope larger than the whole burst still goes when the bucket is full
            // (and fits the window, unless nothing else is in flight).
            if ids.is_empty() && room > 0 && st.bucket.is_full() {
                let cap = if st.inflight.is_empty() {
                    u64::MAX
                } else {
                    window
                };
                ids = st.queue.take(cap, 1);
            }
            st.inflight.extend(ids.iter().copied());
            for id in ids {
                let size = self.index.meta(&id).map_or(0, |m| u64::from(m.size));
                st.bucket.spend(size);
                st.inflight_bytes += size;
                st.stats.envelopes_sent += 1;
                st.stats.bytes_sent += size;
                out.push(Output::Push {
                    peer: peer.clone(),
                    id,
                });
            }
        }
    }

    /// When the driver should call `Tick` next (earliest resync or budget refill).
    pub fn next_wakeup_ms(&self, now_ms: u64) -> u64 {
        let mut next = now_ms + self.config.resync_interval_ms;
        for st in self.peers.values() {
            next = next.min(st.next_resync_ms.max(now_ms));
            // With every push slot taken, the next acknowledgement (an input) is what
            // frees the queue, not time.
            let (room, window) = if st.queue.head_precedence() >= Some(URGENT) {
                (
                    self.config.max_inflight + self.config.urgent_reserve,
                    self.config.max_inflight_bytes + self.config.urgent_reserve_bytes,
                )
            } else {
                (self.config.max_inflight, self.config.max_inflight_bytes)
            };
            if !st.queue.is_empty() && st.inflight.len() < room && st.inflight_bytes < window {
                next = next.min(now_ms + st.bucket.wait_ms(1500).max(1));
            }
        }
        for (due, _) in self.wants.values() {
            next = next.min((*due).max(now_ms));
        }
        next
    }
}

#[cfg(test)]
mod tests;
