//! The discrete-event world: nodes running the real sync [`Engine`] over in-memory
//! stores, joined by simulated links.
//!
//! The world does what `fieldmesh-net`'s driver does, with virtual time: it turns engine
//! outputs into frames on links and frames into engine inputs, holds received envelopes
//! for a group commit and acknowledges them only once they are durable, and disconnects
//! peers the engine gives up on. Everything is ordered by (time, sequence number) and all
//! randomness comes from the seed, so a run is a pure function of (scenario, seed).

use crate::rng::Rng;
use crate::scenario::{Micros, PACKET_OVERHEAD, Topology};
use fieldmesh_channel::{Channel, Incoming};
use fieldmesh_core::{
    ChannelId, CompartmentId, Envelope, EnvelopeId, Header, HlcClock, NodeId, Precedence, sha256,
};
use fieldmesh_crypto::{NodeKey, PayloadKey, open_envelope, seal_envelope};
use fieldmesh_store::{MemStore, PutOutcome, Store};
use fieldmesh_sync::engine::{Engine, EngineConfig, Input, Output};
use fieldmesh_sync::frame::Frame;
use fieldmesh_sync::{Index, Meta};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// Wall clock of virtual time zero: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// An envelope posted by an honest node during the run.
#[derive(Debug, Clone)]
pub struct Posted {
    /// Its id.
    pub id: EnvelopeId,
    /// When it was posted.
    pub at: Micros,
    /// Author.
    pub author: u32,
    /// Precedence.
    pub precedence: Precedence,
    /// Encoded size.
    pub size: u64,
    /// Channel index.
    pub channel: usize,
}

/// Counters for the report.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Bytes on the wire, packet headers and retransmissions included.
    pub wire_bytes: u64,
    /// Frame bytes handed to links.
    pub frame_bytes: u64,
    /// Bytes of envelopes newly stored from the network, summed over nodes.
    pub payload_bytes: u64,
    /// Packets retransmitted after loss.
    pub retransmissions: u64,
    /// Events processed.
    pub events: u64,
    /// Frames dropped because their link went down in flight.
    pub dropped_in_flight: u64,
    /// Forged envelopes, garbage and oversized frames sent by hostile nodes.
    pub hostile_frames: u64,
    /// Envelopes refused on verification.
    pub refused: u64,
    /// Peers disconnected for misbehaviour.
    pub disconnects: u64,
    /// Posts skipped because their author was down.
    pub posts_skipped: u64,
    /// Posts the channel refused (should stay 0).
    pub post_errors: u64,
    /// Envelopes stored that no honest node posted (must stay 0).
    pub forged_accepted: u64,
    /// Envelopes stored that failed the channel rules on a live replica.
    pub channel_rejects: u64,
}

#[derive(Debug, Clone)]
enum Msg {
    Request { req: u64, frame: Vec<u8> },
    Response { req: u64, frame: Vec<u8> },
    Announce(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostileAct {
    Forged,
    Garbage,
    Oversized,
}

#[derive(Debug)]
enum Ev {
    LinkUp(u32),
    LinkDown(u32),
    Crash(u32),
    Restart(u32),
    Post(usize),
    Deliver {
        link: u32,
        epoch: u32,
        from: u32,
        to: u32,
        msg: Msg,
    },
    Flush(u32),
    Wake(u32),
    Hostile(u32, HostileAct),
}

#[derive(Debug)]
struct Scheduled {
    at: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
struct SimNode {
    key: NodeKey,
    id: NodeId,
    store: MemStore,
    engine: Option<Engine<u32>>,
    alive: bool,
    clock: HlcClock,
    /// Live channel replicas (kept by authors, as a node's cache is).
    replicas: BTreeMap<usize, Channel>,
    /// Envelopes stored since each replica was last brought up to date (applied in one
    /// batch when the replica is next used, as a busy node's cache would).
    backlog: BTreeMap<usize, Vec<EnvelopeId>>,
    deferred_ingest: Vec<(u32, Vec<u8>)>,
    deferred_resp: Vec<(u32, u64, Vec<u8>)>,
    flush_scheduled: bool,
    /// Our requests awaiting an answer: request -> (peer, pushed envelope).
    outbound: BTreeMap<u64, (u32, Option<EnvelopeId>)>,
    /// Requests we must answer: request -> peer.
    inbound: BTreeMap<u64, u32>,
    wake_at: Option<Micros>,
    banned: BTreeSet<u32>,
}

#[derive(Debug)]
struct LinkState {
    up: bool,
    connected: bool,
    epoch: u32,
    busy: [Micros; 2],
}

/// A 64-bit running hash of everything that happens (not cryptographic: it detects
/// divergence between two runs, nothing more).
#[derive(Debug, Clone, Copy)]
pub struct TraceHash(u64);

impl TraceHash {
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x0000_0100_0000_01B3)
            .rotate_left(29)
            ^ (w >> 7);
    }
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(last) ^ (b.len() as u64) << 56);
    }
    /// The hash value.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The simulated network.
#[derive(Debug)]
pub struct World {
    /// The expanded scenario.
    pub topo: Topology,
    cfg: EngineConfig,
    commit_us: Micros,
    nodes: Vec<SimNode>,
    links: Vec<LinkState>,
    adj: Vec<Vec<(u32, u32)>>,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    next_req: u64,
    now: Micros,
    net_rng: Rng,
    hostile_rng: Rng,
    trace: TraceHash,
    /// Envelopes posted by honest nodes (channel geneses first).
    pub posted: Vec<Posted>,
    posted_index: HashMap<EnvelopeId, usize>,
    /// Per posted envelope, per node: when it became durable there (`Micros::MAX`: never).
    pub delivered: Vec<Vec<Micros>>,
    decode_cache: HashMap<[u8; 32], Result<Envelope, String>>,
    channel_ids: Vec<ChannelId>,
    /// Pushes the sender saw acknowledged: (receiver, envelope).
    acks: Vec<(u32, EnvelopeId)>,
    /// Counters.
    pub counters: Counters,
}

fn open_key() -> PayloadKey {
    PayloadKey::open_compartment()
}

/// Rebuilds a channel replica from a store (as a node does on first use).
pub fn materialise(store: &dyn Store, id: &ChannelId) -> Channel {
    let envs = store.channel_envelopes(id).unwrap_or_default();
    let key = open_key();
    let opened: Vec<(&Envelope, Vec<u8>)> = envs
        .iter()
        .filter(|e| e.header().kind.is_channel_change())
        .filter_map(|e| open_envelope(e, &key).ok().map(|p| (e, p)))
        .collect();
    let mut ch = Channel::new(*id);
    if ch
        .apply_many(opened.iter().map(|(e, p)| Incoming::of(e, p)))
        .is_err()
    {
        ch = Channel::new(*id);
        for (e, p) in &opened {
            let _ = ch.apply(Incoming::of(e, p));
        }
    }
    ch
}

fn field_text(rng: &mut Rng, n: usize, seq: usize) -> String {
    const WORDS: &[&str] = &[
        "contact",
        "grid",
        "north",
        "ridge",
        "moving",
        "east",
        "two",
        "vehicles",
        "dismounts",
        "observed",
        "holding",
        "checkpoint",
        "fuel",
        "ammo",
        "water",
        "green",
        "amber",
        "route",
        "clear",
        "bridge",
        "casualty",
        "stable",
        "request",
        "resupply",
        "at",
        "0600",
    ];
    let mut s = format!("MSG{seq:05} ");
    while s.len() < n {
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        s.push(' ');
    }
    s.truncate(n.max(8));
    s
}

impl World {
    /// Builds the world: node keys from the seed, channels provisioned everywhere, and
    /// every scheduled event (crashes, restarts, link changes, posts) queued in a fixed
    /// order.
    pub fn new(topo: Topology, cfg: EngineConfig, commit_ms: u64, seed: u64) -> World {
        let n = topo.names.len();
        let mut key_rng = Rng::derive(seed, "keys");
        let mut nodes: Vec<SimNode> = (0..n)
            .map(|_| {
                let mut seed32 = [0u8; 32];
                seed32.copy_from_slice(&key_rng.bytes(32));
                let key = NodeKey::from_seed(seed32);
                SimNode {
                    id: key.node_id(),
                    key,
                    store: MemStore::new(None),
                    engine: None,
                    alive: true,
                    clock: HlcClock::default(),
                    replicas: BTreeMap::new(),
                    backlog: BTreeMap::new(),
                    deferred_ingest: Vec::new(),
                    deferred_resp: Vec::new(),
                    flush_scheduled: false,
                    outbound: BTreeMap::new(),
                    inbound: BTreeMap::new(),
                    wake_at: None,
                    banned: BTreeSet::new(),
                }
            })
            .collect();
        let mut adj = vec![Vec::new(); n];
        for (i, l) in topo.links.iter().enumerate() {
            adj[l.a as usize].push((l.b, i as u32));
            adj[l.b as usize].push((l.a, i as u32));
        }
        // Channels: created by their creator before the run, provisioned on every node.
        let mut channel_ids = Vec::new();
        let mut geneses = Vec::new();
        for (name, creator) in &topo.channels {
            let c = &mut nodes[*creator as usize];
            let hlc = c.clock.tick(EPOCH_MS);
            let (ch, local) = Channel::create(c.id, name, hlc).expect("valid channel name");
            let env = seal_envelope(
                &c.key,
                Header {
                    kind: local.kind,
                    precedence: local.precedence,
                    compartment: CompartmentId::OPEN,
                    epoch: 0,
                    channel: ch.id(),
                    author: c.id,
                    hlc,
                    deps: local.deps.clone(),
                },
                &open_key(),
                &local.payload,
            )
            .expect("sealing a genesis");
            channel_ids.push(ch.id());
            geneses.push(env);
        }
        for (n, node) in (0u32..).zip(nodes.iter_mut()) {
            node.store.put_batch(&geneses).expect("memory store");
            let mut index = Index::default();
            for g in &geneses {
                index.insert(g.id(), Meta::of(g));
            }
            node.engine = Some(Engine::new(cfg, index).with_local(n));
        }
        let mut w = World {
            cfg,
            commit_us: commit_ms * 1000,
            nodes,
            links: topo
                .links
                .iter()
                .map(|_| LinkState {
                    up: false,
                    connected: false,
                    epoch: 0,
                    busy: [0, 0],
                })
                .collect(),
            adj,
            queue: BinaryHeap::new(),
            seq: 0,
            next_req: 1,
            now: 0,
            net_rng: Rng::derive(seed, "net"),
            hostile_rng: Rng::derive(seed, "hostile"),
            trace: TraceHash(seed ^ 0x6669_656c_646d_6573),
            posted: Vec::new(),
            posted_index: HashMap::new(),
            delivered: Vec::new(),
            decode_cache: HashMap::new(),
            channel_ids,
            acks: Vec::new(),
            counters: Counters::default(),
            topo,
        };
        for (c, g) in geneses.iter().enumerate() {
            let author = w.topo.channels[c].1;
            w.record_posted(g, 0, author, c);
            for t in w.delivered.last_mut().expect("just recorded") {
                *t = 0;
            }
        }
        // Node events first so that, at equal times, a restart precedes the link-ups it
        // enables and a crash precedes the link-downs it causes.
        for node in 0..n {
            for &(s, e) in &w.topo.down[node].clone() {
                w.schedule(s, Ev::Crash(node as u32));
                if e < w.topo.end {
                    w.schedule(e, Ev::Restart(node as u32));
                }
            }
        }
        for l in 0..w.topo.links.len() {
            for &(s, e) in &w.topo.links[l].up.clone() {
                w.schedule(s, Ev::LinkUp(l as u32));
                w.schedule(e, Ev::LinkDown(l as u32));
            }
        }
        for i in 0..w.topo.posts.len() {
            let at = w.topo.posts[i].at;
            w.schedule(at, Ev::Post(i));
        }
        let hostile: Vec<(u32, [f64; 3])> = w
            .topo
            .hostile
            .iter()
            .map(|(n, h)| {
                (
                    *n,
                    [h.forged_per_min, h.garbage_per_min, h.oversized_per_min],
                )
            })
            .collect();
        for (node, rates) in hostile {
            for (act, rate) in [
                HostileAct::Forged,
                HostileAct::Garbage,
                HostileAct::Oversized,
            ]
            .into_iter()
            .zip(rates)
            {
                if rate > 0.0 {
                    let at = crate::scenario::us(w.hostile_rng.exp(60.0 / rate));
                    w.schedule(at, Ev::Hostile(node, act));
                }
            }
        }
        for node in 0..n {
            w.schedule_wake(node as u32);
        }
        w
    }

    fn schedule(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn record_posted(&mut self, env: &Envelope, at: Micros, author: u32, channel: usize) {
        self.posted_index.insert(env.id(), self.posted.len());
        self.posted.push(Posted {
            id: env.id(),
            at,
            author,
            precedence: env.header().precedence,
            size: env.encoded_len() as u64,
            channel,
        });
        let mut row = vec![Micros::MAX; self.nodes.len()];
        row[author as usize] = at;
        self.delivered.push(row);
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.value()
    }

    /// Current virtual time.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Runs every event up to the end of the scenario.
    pub fn run(&mut self) {
        while let Some(s) = self.queue.pop() {
            if s.at > self.topo.end {
                break;
            }
            self.now = s.at;
            self.counters.events += 1;
            self.dispatch(s.ev);
        }
        self.now = self.topo.end;
        for n in 0..self.nodes.len() {
            let channels: Vec<usize> = self.nodes[n].replicas.keys().copied().collect();
            for c in channels {
                self.catch_up(n as u32, c);
            }
        }
    }

    /// Applies the envelopes stored since node `n`'s replica of channel `c` was last used.
    fn catch_up(&mut self, n: u32, c: usize) {
        let node = &mut self.nodes[n as usize];
        let Some(ids) = node.backlog.remove(&c) else {
            return;
        };
        let Some(ch) = node.replicas.get_mut(&c) else {
            return;
        };
        let key = open_key();
        let envs: Vec<Envelope> = ids
            .iter()
            .filter_map(|id| node.store.get(id).ok().flatten())
            .collect();
        let opened: Vec<(&Envelope, Vec<u8>)> = envs
            .iter()
            .filter_map(|e| open_envelope(e, &key).ok().map(|p| (e, p)))
            .collect();
        let items = opened.iter().map(|(e, p)| Incoming::of(e, p));
        match ch.apply_many(items) {
            Ok(errors) => self.counters.channel_rejects += errors.len() as u64,
            Err(_) => {
                // The batch left the replica unusable: rebuild it from the store.
                self.counters.channel_rejects += 1;
                let cid = self.channel_ids[c];
                let node = &mut self.nodes[n as usize];
                node.replicas.insert(c, materialise(&node.store, &cid));
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    fn wall_ms(&self, node: u32) -> u64 {
        (EPOCH_MS + self.now / 1000).saturating_add_signed(self.topo.skew_ms[node as usize])
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::LinkUp(l) => {
                self.trace.word(0x10 ^ u64::from(l) << 8);
                self.links[l as usize].up = true;
                self.update_link(l);
            }
            Ev::LinkDown(l) => {
                self.trace.word(0x11 ^ u64::from(l) << 8);
                self.links[l as usize].up = false;
                self.update_link(l);
            }
            Ev::Crash(n) => self.crash(n),
            Ev::Restart(n) => self.restart(n),
            Ev::Post(i) => self.post(i),
            Ev::Deliver {
                link,
                epoch,
                from,
                to,
                msg,
            } => self.deliver(link, epoch, from, to, msg),
            Ev::Flush(n) => self.flush(n),
            Ev::Wake(n) => {
                if self.nodes[n as usize].wake_at == Some(self.now) {
                    self.nodes[n as usize].wake_at = None;
                    self.feed(n, Input::Tick);
                }
            }
            Ev::Hostile(n, act) => self.hostile(n, act),
        }
    }

    /// Peers node `n` is connected to now.
    fn connected_peers(&self, n: u32) -> Vec<u32> {
        self.adj[n as usize]
            .iter()
            .filter(|(_, l)| self.links[*l as usize].connected)
            .map(|(p, _)| *p)
            .collect()
    }

    fn link_between(&self, a: u32, b: u32) -> Option<u32> {
        self.adj[a as usize]
            .iter()
            .find(|(p, _)| *p == b)
            .map(|(_, l)| *l)
    }

    fn should_connect(&self, l: u32) -> bool {
        let st = &self.links[l as usize];
        let link = &self.topo.links[l as usize];
        let (a, b) = (&self.nodes[link.a as usize], &self.nodes[link.b as usize]);
        st.up && a.alive && b.alive && !a.banned.contains(&link.b) && !b.banned.contains(&link.a)
    }

    fn update_link(&mut self, l: u32) {
        let want = self.should_connect(l);
        let (a, b) = (self.topo.links[l as usize].a, self.topo.links[l as usize].b);
        let st = &mut self.links[l as usize];
        if want == st.connected {
            return;
        }
        st.connected = want;
        st.epoch += 1;
        self.trace.word(0x20 ^ u64::from(l) << 8 ^ u64::from(want));
        if want {
            self.feed(a, Input::PeerUp(b));
            self.feed(b, Input::PeerUp(a));
        } else {
            for (x, y) in [(a, b), (b, a)] {
                let node = &mut self.nodes[x as usize];
                node.outbound.retain(|_, (p, _)| *p != y);
                node.inbound.retain(|_, p| *p != y);
                node.deferred_resp.retain(|(p, _, _)| *p != y);
                if node.alive {
                    self.feed(x, Input::PeerDown(y));
                }
            }
        }
    }

    fn crash(&mut self, n: u32) {
        self.trace.word(0x30 ^ u64::from(n) << 8);
        let node = &mut self.nodes[n as usize];
        node.alive = false;
        node.engine = None;
        node.replicas.clear();
        node.backlog.clear();
        node.deferred_ingest.clear();
        node.deferred_resp.clear();
        node.outbound.clear();
        node.inbound.clear();
        node.wake_at = None;
        for (_, l) in self.adj[n as usize].clone() {
            self.update_link(l);
        }
    }

    fn restart(&mut self, n: u32) {
        self.trace.word(0x31 ^ u64::from(n) << 8);
        let wall = self.wall_ms(n);
        let node = &mut self.nodes[n as usize];
        let mut index = Index::default();
        let mut clock = HlcClock::default();
        for id in node.store.ids().expect("memory store") {
            let env = node.store.get(&id).expect("memory store").expect("listed");
            clock.observe(env.header().hlc, wall);
            index.insert(id, Meta::of(&env));
        }
        node.clock = clock;
        node.engine = Some(Engine::new(self.cfg, index).with_local(n));
        node.alive = true;
        for (_, l) in self.adj[n as usize].clone() {
            self.update_link(l);
        }
        self.schedule_wake(n);
    }

    fn post(&mut self, i: usize) {
        let p = self.topo.posts[i].clone();
        let n = p.node;
        if !self.nodes[n as usize].alive {
            self.counters.posts_skipped += 1;
            return;
        }
        let wall = self.wall_ms(n);
        let cid = self.channel_ids[p.channel];
        let mut text_rng = Rng::derive(i as u64, "text");
        let text = field_text(&mut text_rng, p.text_bytes, i);
        if self.nodes[n as usize].replicas.contains_key(&p.channel) {
            self.catch_up(n, p.channel);
        }
        let node = &mut self.nodes[n as usize];
        if !node.replicas.contains_key(&p.channel) {
            node.backlog.remove(&p.channel);
            let ch = materialise(&node.store, &cid);
            node.replicas.insert(p.channel, ch);
        }
        let ch = node.replicas.get_mut(&p.channel).expect("just inserted");
        let hlc = node.clock.tick(wall);
        let local = match ch.post(node.id, hlc, &text, p.precedence, None, Vec::new()) {
            Ok(l) => l,
            Err(_) => {
                self.counters.post_errors += 1;
                return;
            }
        };
        let env = seal_envelope(
            &node.key,
            Header {
                kind: local.kind,
                precedence: local.precedence,
                compartment: CompartmentId::OPEN,
                epoch: 0,
                channel: cid,
                author: node.id,
                hlc: local.hlc,
                deps: local.deps.clone(),
            },
            &open_key(),
            &local.payload,
        )
        .expect("sealing a post");
        node.store.put(&env).expect("memory store");
        ch.bind(local.change, env.id());
        self.trace.bytes(env.id().as_bytes());
        self.record_posted(&env, self.now, n, p.channel);
        self.feed(
            n,
            Input::Inserted {
                id: env.id(),
                meta: Meta::of(&env),
                from: None,
            },
        );
    }

    /// Runs one input through node `n`'s engine and performs the outputs, as the libp2p
    /// driver does.
    fn feed(&mut self, n: u32, input: Input<u32>) {
        let mut pending = vec![input];
        let now_ms = self.now_ms();
        while let Some(input) = pending.pop() {
            let Some(engine) = self.nodes[n as usize].engine.as_mut() else {
                return;
            };
            let outs = engine.handle(now_ms, input);
            let holds_ingest = outs.iter().any(|o| matches!(o, Output::Ingest { .. }));
            for out in outs {
                match out {
                    Output::Request { peer, frame } => {
                        self.request(n, peer, frame, None);
                    }
                    Output::Respond { request, frame } => {
                        let node = &mut self.nodes[n as usize];
                        let Some(peer) = node.inbound.remove(&request) else {
                            continue;
                        };
                        if holds_ingest {
                            node.deferred_resp.push((peer, request, frame));
                        } else {
                            self.send(
                                n,
                                peer,
                                Msg::Response {
                                    req: request,
                                    frame,
                                },
                            );
                        }
                    }
                    Output::Push { peer, id } => {
                        match self.nodes[n as usize].store.get(&id).ok().flatten() {
                            Some(env) => {
                                let frame = Frame::Envelope(env.as_bytes().to_vec()).encode();
                                self.request(n, peer, frame, Some(id));
                            }
                            None => pending.push(Input::PushDone {
                                peer,
                                id,
                                delivered: true,
                            }),
                        }
                    }
                    Output::Ingest { peer, envelope } => {
                        let commit = self.now + self.commit_us;
                        let node = &mut self.nodes[n as usize];
                        node.deferred_ingest.push((peer, envelope));
                        if !node.flush_scheduled {
                            node.flush_scheduled = true;
                            self.schedule(commit, Ev::Flush(n));
                        }
                    }
                    Output::Announce { frame } => {
                        for p in self.connected_peers(n) {
                            self.send(n, p, Msg::Announce(frame.clone()));
                        }
                    }
                    Output::Unanswered { .. } => {}
                    Output::Disconnect { peer, .. } => {
                        self.counters.disconnects += 1;
                        self.nodes[n as usize].banned.insert(peer);
                        if let Some(l) = self.link_between(n, peer) {
                            self.update_link(l);
                        }
                    }
                }
            }
        }
        self.schedule_wake(n);
    }

    fn schedule_wake(&mut self, n: u32) {
        let now_ms = self.now_ms();
        let Some(engine) = self.nodes[n as usize].engine.as_ref() else {
            return;
        };
        let w = (engine.next_wakeup_ms(now_ms) * 1000).max(self.now + 1000);
        let node = &mut self.nodes[n as usize];
        if node.wake_at.is_none_or(|x| w < x) {
            node.wake_at = Some(w);
            self.schedule(w, Ev::Wake(n));
        }
    }

    fn request(&mut self, from: u32, to: u32, frame: Vec<u8>, push: Option<EnvelopeId>) {
        let req = self.next_req;
        self.next_req += 1;
        // Not sent means not connected: the engine has had (or will have) PeerDown for
        // that peer, which drops its pushes, so there is nothing to report back.
        if self.send(from, to, Msg::Request { req, frame }) {
            self.nodes[from as usize].outbound.insert(req, (to, push));
        }
    }

    /// Puts a message on the link from `from` to `to`. Returns false if not connected.
    fn send(&mut self, from: u32, to: u32, msg: Msg) -> bool {
        let Some(l) = self.link_between(from, to) else {
            return false;
        };
        if !self.links[l as usize].connected {
            return false;
        }
        let link = &self.topo.links[l as usize];
        let len = match &msg {
            Msg::Request { frame, .. } | Msg::Response { frame, .. } | Msg::Announce(frame) => {
                frame.len() as u64
            }
        };
        let mtu = u64::from(link.mtu);
        let packets = len.div_ceil(mtu).max(1);
        let mut wire = 0u64;
        let mut worst_retries = 0u64;
        for p in 0..packets {
            let payload = if p + 1 == packets { len - p * mtu } else { mtu };
            let mut tries = 1u64;
            while self.net_rng.chance(link.loss) && tries < 16 {
                tries += 1;
            }
            self.counters.retransmissions += tries - 1;
            worst_retries = worst_retries.max(tries - 1);
            wire += tries * (payload + PACKET_OVERHEAD);
        }
        let ser = (wire * 8 * 1_000_000).div_ceil(link.rate_bps.max(1));
        let rto = 2 * link.latency_us + link.jitter_us + 1000;
        let jitter = if link.jitter_us > 0 {
            self.net_rng.below(link.jitter_us + 1)
        } else {
            0
        };
        let dir = usize::from(from > to);
        let st = &mut self.links[l as usize];
        let start = st.busy[dir].max(self.now);
        st.busy[dir] = start + ser;
        let at = start + ser + link.latency_us + jitter + worst_retries * rto;
        let epoch = st.epoch;
        self.counters.wire_bytes += wire;
        self.counters.frame_bytes += len;
        self.schedule(
            at,
            Ev::Deliver {
                link: l,
                epoch,
                from,
                to,
                msg,
            },
        );
        true
    }

    fn deliver(&mut self, link: u32, epoch: u32, from: u32, to: u32, msg: Msg) {
        let st = &self.links[link as usize];
        if st.epoch != epoch || !st.connected {
            self.counters.dropped_in_flight += 1;
            return;
        }
        self.trace
            .word(0x40 ^ u64::from(from) << 8 ^ u64::from(to) << 32);
        match msg {
            Msg::Request { req, frame } => {
                self.trace.bytes(&frame);
                self.nodes[to as usize].inbound.insert(req, from);
                self.feed(
                    to,
                    Input::Request {
                        peer: from,
                        request: req,
                        frame,
                    },
                );
            }
            Msg::Response { req, frame } => {
                self.trace.bytes(&frame);
                let Some((_, push)) = self.nodes[to as usize].outbound.remove(&req) else {
                    return;
                };
                match push {
                    Some(id) => {
                        self.acks.push((from, id));
                        self.feed(
                            to,
                            Input::PushDone {
                                peer: from,
                                id,
                                delivered: true,
                            },
                        );
                    }
                    None => self.feed(to, Input::Response { peer: from, frame }),
                }
            }
            Msg::Announce(frame) => {
                self.trace.bytes(&frame);
                self.feed(to, Input::Announce { peer: from, frame });
            }
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<Envelope, String> {
        // Decoding is a pure function of the bytes: verify each distinct byte string once
        // per run instead of once per node (it dominates the 1,000-node scenario).
        let key = sha256(bytes);
        self.decode_cache
            .entry(key)
            .or_insert_with(|| Envelope::decode(bytes).map_err(|e| e.to_string()))
            .clone()
    }

    /// Group commit: stores what arrived since the last flush, tells the engine, then
    /// acknowledges (never before the envelopes are durable).
    fn flush(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.flush_scheduled = false;
        if !node.alive {
            return;
        }
        let batch = std::mem::take(&mut node.deferred_ingest);
        let responses = std::mem::take(&mut node.deferred_resp);
        let decoded: Vec<(u32, Result<Envelope, String>)> = batch
            .into_iter()
            .map(|(p, b)| (p, self.decode(&b)))
            .collect();
        let valid: Vec<Envelope> = decoded
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().cloned())
            .collect();
        let wall = self.wall_ms(n);
        let outcomes = self.nodes[n as usize]
            .store
            .put_batch(&valid)
            .expect("memory store without quota");
        for (env, outcome) in valid.iter().zip(outcomes) {
            if outcome != PutOutcome::Inserted {
                continue;
            }
            self.counters.payload_bytes += env.encoded_len() as u64;
            self.trace.word(0x50 ^ u64::from(n) << 8);
            self.trace.bytes(env.id().as_bytes());
            match self.posted_index.get(&env.id()) {
                Some(&i) => self.delivered[i][n as usize] = self.now,
                None => self.counters.forged_accepted += 1,
            }
            let node = &mut self.nodes[n as usize];
            node.clock.observe(env.header().hlc, wall);
            if let Some(c) = self
                .channel_ids
                .iter()
                .position(|c| *c == env.header().channel)
                && node.replicas.contains_key(&c)
                && env.header().kind.is_channel_change()
            {
                node.backlog.entry(c).or_default().push(env.id());
            }
        }
        for (peer, r) in decoded {
            match r {
                Ok(env) => self.feed(
                    n,
                    Input::Inserted {
                        id: env.id(),
                        meta: Meta::of(&env),
                        from: Some(peer),
                    },
                ),
                Err(_) => {
                    self.counters.refused += 1;
                    self.feed(n, Input::Refused { peer });
                }
            }
        }
        for (peer, req, frame) in responses {
            self.send(n, peer, Msg::Response { req, frame });
        }
    }

    fn hostile(&mut self, n: u32, act: HostileAct) {
        let spec = self.topo.hostile[&n].clone();
        let rate = match act {
            HostileAct::Forged => spec.forged_per_min,
            HostileAct::Garbage => spec.garbage_per_min,
            HostileAct::Oversized => spec.oversized_per_min,
        };
        let next = self.now + crate::scenario::us(self.hostile_rng.exp(60.0 / rate));
        self.schedule(next, Ev::Hostile(n, act));
        if !self.nodes[n as usize].alive {
            return;
        }
        for p in self.connected_peers(n) {
            let frame = match act {
                HostileAct::Forged => {
                    if self.posted.is_empty() {
                        continue;
                    }
                    let i = self.hostile_rng.below(self.posted.len() as u64) as usize;
                    let id = self.posted[i].id;
                    let Some(env) = self.nodes[self.posted[i].author as usize]
                        .store
                        .get(&id)
                        .ok()
                        .flatten()
                    else {
                        continue;
                    };
                    let mut bytes = env.as_bytes().to_vec();
                    // Either a forged signature on genuine content, or altered content
                    // under the genuine signature.
                    let at = if self.hostile_rng.chance(0.5) {
                        bytes.len() - 1 - self.hostile_rng.below(64) as usize
                    } else {
                        200 + self.hostile_rng.below((bytes.len() - 264) as u64) as usize
                    };
                    bytes[at] ^= 1 << self.hostile_rng.below(8);
                    Frame::Envelope(bytes).encode()
                }
                HostileAct::Garbage => {
                    let len = 1 + self.hostile_rng.below(512) as usize;
                    self.hostile_rng.bytes(len)
                }
                HostileAct::Oversized => {
                    let len = self.cfg.max_frame_bytes + 1 + self.hostile_rng.below(1024) as usize;
                    let mut f = self.hostile_rng.bytes(len);
                    f[0] = fieldmesh_sync::frame::VERSION;
                    f[1] = 2;
                    f
                }
            };
            self.counters.hostile_frames += 1;
            self.request(n, p, frame, None);
        }
    }

    /// Node count.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `n` is hostile.
    pub fn is_hostile(&self, n: u32) -> bool {
        self.topo.hostile.contains_key(&n)
    }

    /// Bytes stored per node.
    pub fn storage(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.store.stats().map(|s| s.bytes).unwrap_or(0))
            .collect()
    }

    /// Safety: acknowledged envelopes that the acknowledging node does not hold
    /// (including each author's own posts). Must be empty.
    pub fn lost_acknowledged(&self) -> Vec<(u32, EnvelopeId)> {
        let mut lost = Vec::new();
        for &(node, id) in &self.acks {
            if !self.nodes[node as usize]
                .store
                .contains(&id)
                .unwrap_or(false)
            {
                lost.push((node, id));
            }
        }
        for p in &self.posted {
            if !self.nodes[p.author as usize]
                .store
                .contains(&p.id)
                .unwrap_or(false)
            {
                lost.push((p.author, p.id));
            }
        }
        lost
    }

    /// Safety: envelopes in honest stores that no honest node posted. Must be empty.
    pub fn foreign_envelopes(&self) -> u64 {
        let mut n = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if self.is_hostile(i as u32) {
                continue;
            }
            for id in node.store.ids().unwrap_or_default() {
                if !self.posted_index.contains_key(&id) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Safety: nodes holding the same envelopes of a channel hold identical documents.
    /// Materialises each channel on up to `sample` nodes per group of identical envelope
    /// sets, plus every live replica, and compares heads and message views. Returns
    /// (documents compared, mismatches).
    pub fn check_documents(&self, sample: usize) -> (usize, Vec<String>) {
        let mut compared = 0;
        let mut mismatches = Vec::new();
        for (c, cid) in self.channel_ids.iter().enumerate() {
            // Group nodes by the exact set of this channel's envelopes they hold.
            let mut groups: BTreeMap<Vec<EnvelopeId>, Vec<usize>> = BTreeMap::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if self.is_hostile(i as u32) {
                    continue;
                }
                let ids: Vec<EnvelopeId> = node
                    .store
                    .channel_envelopes(cid)
                    .unwrap_or_default()
                    .iter()
                    .map(Envelope::id)
                    .collect();
                groups.entry(ids).or_default().push(i);
            }
            for members in groups.values() {
                let step = members.len().div_ceil(sample.max(1)).max(1);
                let mut reference: Option<(
                    Vec<automerge::ChangeHash>,
                    Vec<fieldmesh_channel::MessageView>,
                    usize,
                )> = None;
                let picked = members.iter().step_by(step).chain(
                    members
                        .iter()
                        .filter(|&&i| self.nodes[i].replicas.contains_key(&c)),
                );
                for &i in picked {
                    let fresh = materialise(&self.nodes[i].store, cid);
                    let mut docs = vec![(fresh.heads(), fresh.messages())];
                    if let Some(live) = self.nodes[i].replicas.get(&c) {
                        docs.push((live.heads(), live.messages()));
                    }
                    for (heads, views) in docs {
                        compared += 1;
                        match &reference {
                            None => reference = Some((heads, views, i)),
                            Some((h, v, r)) => {
                                if *h != heads || *v != views {
                                    mismatches.push(format!(
                                        "channel {}: {} and {} hold the same envelopes but different documents",
                                        self.topo.channels[c].0, self.topo.names[*r], self.topo.names[i]
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        (compared, mismatches)
    }
}
