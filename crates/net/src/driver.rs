//! The swarm task.

use crate::Host;
use crate::bulk::{self, Lane, LinkId};
use crate::protocol::{FrameCodec, PROTOCOL};
use fieldmesh_core::{Envelope, EnvelopeId, Precedence};
use fieldmesh_sync::engine::{Engine, EngineConfig, Input, Output, PeerStats};
use fieldmesh_sync::frame::Frame;
use fieldmesh_sync::{Index, Meta};
use futures_util::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, noise, ping, request_response, tcp, yamux,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

const ANNOUNCE_TOPIC: &str = "/fieldmesh/announce/1";
/// Longest a received envelope waits for others to share its fsync.
const GROUP_COMMIT_WAIT: Duration = Duration::from_millis(2);
/// Ids per announce frame (32 bytes each: well under gossip's 64 KiB message cap).
const ANNOUNCE_IDS_PER_FRAME: usize = 1024;
/// Wait before reopening a bulk link that failed.
const BULK_RETRY: Duration = Duration::from_secs(2);
/// Envelopes that are verified together without waiting for the delay.
const GROUP_COMMIT_MAX: usize = 64;
/// Batches verified at once (on blocking threads). More arrivals keep forming the next
/// batch meanwhile.
const MAX_VERIFYING: usize = 2;

/// Damage notices that can wait for the swarm task (one per damaged envelope).
const DAMAGE_NOTICES: usize = 4096;

/// A received envelope after verification.
type Checked = Result<Envelope, crate::IngestError>;
/// A verified envelope's id and metadata, once written (or why it was not).
type Stored = Result<(EnvelopeId, Meta), crate::IngestError>;

/// Who sent a received envelope, and whether it came on their urgent link (which carries
/// IMMEDIATE and FLASH only).
#[derive(Clone, Copy)]
struct Sender {
    peer: PeerId,
    urgent_link: bool,
}

/// Envelopes received together (within the group-commit delay): who sent each, and the
/// answers that wait until they are durable.
struct Batch {
    senders: Vec<Sender>,
    responses: Vec<(u64, Vec<u8>)>,
}

/// A batch whose signatures are being checked on a blocking thread.
struct Verifying {
    batch: Batch,
    done: tokio::task::JoinHandle<Vec<Checked>>,
}

/// Verified batches being written with one fsync on a blocking thread, while the swarm
/// keeps receiving and later batches are verified.
struct Commit {
    batches: Vec<(Batch, Vec<Stored>)>,
    done: tokio::task::JoinHandle<Result<crate::Stored, crate::IngestError>>,
    started: Instant,
    envelopes: usize,
}

/// Network settings (from the CLI and the firmware profile).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (QUIC: `/ip4/127.0.0.1/udp/0/quic-v1`; TCP: `/ip4/127.0.0.1/tcp/0`).
    pub listen: Vec<Multiaddr>,
    /// Static peers to dial and keep dialling.
    pub peers: Vec<Multiaddr>,
    /// Discover peers on the local link with mDNS (multicast on the real interface: off
    /// by default).
    pub mdns: bool,
    /// The sync engine's parameters.
    pub engine: EngineConfig,
    /// Tick period of the engine (resync and budget refills).
    pub tick: Duration,
    /// Most connections other nodes may open to this one (and handshakes in progress):
    /// past it, inbound connections are refused. Dials this node makes are not limited.
    pub max_inbound: u32,
    /// The UDP payload QUIC probes each path for once (see `quic::Config::mtu_probe`).
    pub mtu_probe: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: vec![],
            peers: vec![],
            mdns: false,
            engine: EngineConfig::default(),
            tick: Duration::from_millis(100),
            max_inbound: 32,
            mtu_probe: 1452,
        }
    }
}

/// Starting the network failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport or a behaviour could not be built.
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
}

/// One connected peer, for `peers` and `sync-status`.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Its peer id (its node id's libp2p form).
    pub peer: PeerId,
    /// Addresses it is connected on.
    pub addresses: Vec<Multiaddr>,
    /// Sync counters.
    pub stats: PeerStats,
    /// UDP traffic with the peer over QUIC (headers, acknowledgements and handshakes
    /// included; TCP connections are not counted).
    pub wire: crate::quic::Wire,
}

/// The network's state.
#[derive(Debug, Clone)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses we listen on.
    pub listen: Vec<Multiaddr>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Envelopes held.
    pub envelopes: usize,
    /// Frames and envelopes rejected from misbehaving peers since start.
    pub rejected: u64,
}

enum Command {
    Inserted(EnvelopeId, Meta),
    Evicted(Vec<EnvelopeId>),
    Status(oneshot::Sender<NetStatus>),
    /// Stop; the sender hears when what arrived is stored and the connections are closed.
    Shutdown(oneshot::Sender<()>),
}

/// Talks to the network task.
#[derive(Debug, Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    /// Envelopes found damaged in the store (never blocks the reader that found it).
    damaged: mpsc::Sender<EnvelopeId>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Inserted(..) => "Inserted",
            Command::Evicted(_) => "Evicted",
            Command::Status(_) => "Status",
            Command::Shutdown(_) => "Shutdown",
        })
    }
}

impl NetHandle {
    /// Tells the network an envelope written outside the network task is durable. The
    /// sync index must hold every stored envelope, so this waits for room in the queue
    /// rather than dropping: call it from a blocking context (never from async code).
    pub fn inserted(&self, id: EnvelopeId, meta: Meta) {
        if self.tx.blocking_send(Command::Inserted(id, meta)).is_err() {
            tracing::debug!(%id, "network task stopped");
        }
    }

    /// Tells the network that envelopes were removed from the store to make room for
    /// others (relay quota): they are no longer offered, and not fetched again. Waits for
    /// room in the queue: call it from a blocking context.
    pub fn evicted(&self, ids: Vec<EnvelopeId>) {
        if self.tx.blocking_send(Command::Evicted(ids)).is_err() {
            tracing::debug!("network task stopped");
        }
    }

    /// Tells the network that the stored copy of an envelope is damaged: it stops
    /// offering it, and the next reconciliation with a peer that holds it fetches it
    /// again (the store then replaces the damaged copy). Never blocks. False: the notice
    /// was not taken (4,096 are waiting already); the store gives it again at the next
    /// read that finds the damage.
    pub fn damaged(&self, id: EnvelopeId) -> bool {
        match self.damaged.try_send(id) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%id, "too many damaged envelopes at once; this one is reported again when next read");
                false
            }
            // Nobody to tell: the network has stopped.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// The network's state.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Stops the network: stores what has arrived, closes every connection (so peers see
    /// this node leave at once rather than after QUIC's idle timeout, and a restarted node
    /// is not mistaken for a second connection of the old one), and returns when done or
    /// after a few seconds.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First: a connection it denies is never shown to the behaviours after it (which
    /// would otherwise count it as established).
    limits: libp2p::connection_limits::Behaviour,
    sync: request_response::Behaviour<FrameCodec>,
    bulk: libp2p_stream::Behaviour,
    gossip: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds the swarm, starts listening and dialling, and spawns the network task on the
/// current tokio runtime. Returns the handle and the addresses actually bound.
pub async fn spawn(
    keypair: libp2p::identity::Keypair,
    config: NetConfig,
    index: Index,
    host: Arc<dyn Host>,
) -> Result<(NetHandle, Vec<Multiaddr>), NetError> {
    let build = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let codec = FrameCodec::new(config.engine.max_frame_bytes);
    let oversized = codec.oversized.clone();
    let mdns_on = config.mdns;
    let quic_config = crate::quic::Config {
        mtu_probe: config.mtu_probe,
        ..crate::quic::Config::default()
    };
    let quic = crate::quic::QuicTransport::new(&keypair, quic_config).map_err(|e| build(&e))?;
    let quic_endpoints = quic.endpoints();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| build(&e))?
        .with_other_transport(|_| quic)
        .map_err(|e| build(&e))?
        .with_behaviour(|key| {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                .max_transmit_size(64 * 1024)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()
                .map_err(|e| e.to_string())?;
            let gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_cfg,
            )?;
            let mdns = if mdns_on {
                Some(
                    mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())
                        .map_err(|e| e.to_string())?,
                )
            } else {
                None
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                sync: request_response::Behaviour::with_codec(
                    codec,
                    [(PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        // Every push in the engine's window may travel this way (to a
                        // peer without the links' protocols, or while they open).
                        .with_max_concurrent_streams(4 * config.engine.max_inflight + 64),
                ),
                bulk: libp2p_stream::Behaviour::new(),
                gossip,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/fieldmesh/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                mdns: Toggle::from(mdns),
                limits: libp2p::connection_limits::Behaviour::new(
                    libp2p::connection_limits::ConnectionLimits::default()
                        .with_max_established_incoming(Some(config.max_inbound))
                        .with_max_pending_incoming(Some(config.max_inbound))
                        .with_max_established_per_peer(Some(2)),
                ),
            })
        })
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();

    let topic = gossipsub::IdentTopic::new(ANNOUNCE_TOPIC);
    swarm
        .behaviour_mut()
        .gossip
        .subscribe(&topic)
        .map_err(|e| build(&e))?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    // Wait until every listener reports its bound address (port 0 becomes real).
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bound.len() < config.listen.len() {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => bound.push(address),
            Ok(SwarmEvent::ListenerError { error, .. }) => {
                return Err(NetError::Listen {
                    addr: config.listen[bound.len()].clone(),
                    reason: error.to_string(),
                });
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // Bulk links report to the swarm task on one bounded queue: when it is full, inbound
    // links stop reading and QUIC flow control holds their senders back.
    // The urgent lane reports on a queue of its own, so that its frames and
    // acknowledgements never wait behind bulk ones.
    let (bulk_tx, bulk_rx) = mpsc::channel(256);
    let (urgent_tx, urgent_rx) = mpsc::channel(256);
    let mut bulk_control = swarm.behaviour().bulk.new_control();
    // A sender's window, urgent reserve included (a peer whose profile allows more is
    // slowed to this node's window, not refused).
    let window = bulk::Window {
        frames: (config.engine.max_inflight + config.engine.urgent_reserve).max(1) as u64,
        bytes: config.engine.max_inflight_bytes + config.engine.urgent_reserve_bytes,
    };
    for (lane, events) in [(Lane::Bulk, &bulk_tx), (Lane::Urgent, &urgent_tx)] {
        let incoming = bulk_control
            .accept(lane.protocol())
            .map_err(|e| build(&e))?;
        tokio::spawn(bulk::accept(
            incoming,
            lane,
            events.clone(),
            config.engine.max_frame_bytes,
            window,
            oversized.clone(),
        ));
    }
    let (tx, rx) = mpsc::channel(1024);
    let (damaged_tx, damaged_rx) = mpsc::channel(DAMAGE_NOTICES);
    let (loaded_tx, loaded_rx) = mpsc::channel(LOADS_WAITING);
    let local = *swarm.local_peer_id();
    let mut driver = Driver {
        swarm,
        quic: quic_endpoints,
        engine: Engine::new(config.engine, index).with_local(local),
        host,
        topic,
        inbound: HashMap::new(),
        next_request: 0,
        statics: config
            .peers
            .iter()
            .map(|a| (a.clone(), Redial::new(Instant::now())))
            .collect(),
        addresses: BTreeMap::new(),
        listen: bound.clone(),
        oversized,
        pushes: HashMap::new(),
        deferred_ingest: Vec::new(),
        deferred_responses: Vec::new(),
        flush_at: None,
        verifying: VecDeque::new(),
        verified: Vec::new(),
        commit: None,
        announce: Vec::new(),
        bulk_control,
        max_inflight: config.engine.max_inflight,
        max_urgent: config.engine.max_inflight + config.engine.urgent_reserve,
        bulk_tx,
        urgent_tx,
        out_links: HashMap::new(),
        in_links: HashMap::new(),
        to_load: Vec::new(),
        loaded_tx,
    };
    tokio::spawn(async move {
        driver
            .run(rx, [bulk_rx, urgent_rx], damaged_rx, loaded_rx, config.tick)
            .await
    });
    Ok((
        NetHandle {
            tx,
            damaged: damaged_tx,
        },
        bound,
    ))
}

/// Batches of loaded pushes that can wait for the swarm task.
const LOADS_WAITING: usize = 64;

/// Pushes loaded from the store for request-response: `None` if no longer there.
type Loaded = Vec<(PeerId, EnvelopeId, Option<Vec<u8>>)>;

/// Where the answer to an inbound frame goes.
enum Reply {
    /// A request-response answer.
    Stream(request_response::ResponseChannel<Vec<u8>>),
    /// The `seq`th frame of an inbound bulk link (acknowledged in order).
    Bulk { link: LinkId, seq: u64 },
}

/// Our link of one lane to a peer.
enum OutLink {
    /// Being opened; pushes go by request-response meanwhile.
    Opening(LinkId),
    /// Open: frames numbered from 0 in sending order, and those not yet acknowledged.
    Open {
        link: LinkId,
        frames: mpsc::Sender<EnvelopeId>,
        sent: u64,
        inflight: VecDeque<(u64, EnvelopeId)>,
    },
    /// The peer does not speak the protocol (request-response only on this connection).
    Unsupported,
    /// Failed; try again after this.
    Failed(Instant),
}

/// A peer's link to us.
struct InLink {
    peer: PeerId,
    lane: Lane,
    acks: watch::Sender<u64>,
    /// Frames received, and how many from the start have been handled.
    received: u64,
    handled: u64,
    /// Handled out of order (a refused frame can be done before an earlier envelope is
    /// durable).
    done: BTreeSet<u64>,
}

/// When to dial a static peer again. The wait doubles with every dial (1 s to 30 s) and
/// starts again from 1 s only after a connection that lasted [`Redial::STABLE`]: a peer
/// that drops us right after the handshake (it banned us, or it is flapping) had been
/// dialled again every second or two, each time a full handshake on a thin link.
#[derive(Debug)]
struct Redial {
    at: Instant,
    backoff: Duration,
    connected: bool,
    /// When the current connection was made.
    since: Option<Instant>,
}

impl Redial {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    const STABLE: Duration = Duration::from_secs(30);

    fn new(now: Instant) -> Redial {
        Redial {
            at: now,
            backoff: Redial::FIRST,
            connected: false,
            since: None,
        }
    }

    /// Whether to dial now; if so, the next attempt waits longer.
    fn due(&mut self, now: Instant) -> bool {
        if self.connected || now < self.at {
            return false;
        }
        self.at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(Redial::MAX);
        true
    }

    fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.since = Some(now);
    }

    fn closed(&mut self, now: Instant) {
        self.connected = false;
        if self
            .since
            .take()
            .is_some_and(|t| now.duration_since(t) >= Redial::STABLE)
        {
            self.backoff = Redial::FIRST;
        }
        self.at = now + self.backoff;
    }
}

/// An address without its `/p2p/...` part: how a configured peer is matched to the
/// address a connection reports.
fn transport_part(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

struct Driver {
    swarm: Swarm<Behaviour>,
    /// The QUIC sockets, to let connection closes go out before the task ends.
    quic: crate::quic::Endpoints,
    engine: Engine<PeerId>,
    host: Arc<dyn Host>,
    topic: gossipsub::IdentTopic,
    inbound: HashMap<u64, Reply>,
    next_request: u64,
    statics: Vec<(Multiaddr, Redial)>,
    addresses: BTreeMap<PeerId, Vec<Multiaddr>>,
    listen: Vec<Multiaddr>,
    oversized: Arc<std::sync::atomic::AtomicU64>,
    /// Push requests in flight.
    pushes: HashMap<request_response::OutboundRequestId, (PeerId, EnvelopeId)>,
    /// Pushes to send by request-response, loaded from the store together on a blocking
    /// thread after this event (a store read on the swarm task stalls every peer), and
    /// where the loads come back.
    to_load: Vec<(PeerId, EnvelopeId)>,
    loaded_tx: mpsc::Sender<Loaded>,
    /// Received envelopes waiting for the next group commit, and the answers held until then.
    deferred_ingest: Vec<(Sender, Vec<u8>)>,
    deferred_responses: Vec<(u64, Vec<u8>)>,
    flush_at: Option<tokio::time::Instant>,
    /// Batches being verified, oldest first; verified ones waiting for the next write.
    verifying: VecDeque<Verifying>,
    verified: Vec<(Batch, Vec<Checked>)>,
    /// The group commit being written (at most one: later batches form the next).
    commit: Option<Commit>,
    /// New envelopes to announce, published together once per event.
    announce: Vec<EnvelopeId>,
    bulk_control: libp2p_stream::Control,
    /// The engine's count window (a bulk link's queue never needs more).
    max_inflight: usize,
    /// The window plus the urgent reserve (an urgent link's queue never needs more).
    max_urgent: usize,
    bulk_tx: mpsc::Sender<bulk::Event>,
    urgent_tx: mpsc::Sender<bulk::Event>,
    out_links: HashMap<(PeerId, Lane), OutLink>,
    in_links: HashMap<LinkId, InLink>,
}

impl Driver {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Command>,
        [mut bulk_rx, mut urgent_rx]: [mpsc::Receiver<bulk::Event>; 2],
        mut damaged: mpsc::Receiver<EnvelopeId>,
        mut loaded: mpsc::Receiver<Loaded>,
        tick: Duration,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopped = None;
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = rx.recv() => match cmd {
                    Some(Command::Inserted(id, meta)) => self.feed(Input::Inserted { id, meta, from: None }),
                    Some(Command::Evicted(ids)) => {
                        for id in ids {
                            self.feed(Input::Evicted { id });
                        }
                    }
                    Some(Command::Status(reply)) => { let _ = reply.send(self.status()); }
                    Some(Command::Shutdown(done)) => {
                        stopped = Some(done);
                        break;
                    }
                    None => break,
                },
                Some(ev) = urgent_rx.recv() => self.on_bulk(ev),
                Some(ev) = bulk_rx.recv() => self.on_bulk(ev),
                Some(batch) = loaded.recv() => self.send_loaded(batch),
                Some(id) = damaged.recv() => {
                    tracing::warn!(%id, "stored envelope is damaged; it will be fetched again from a peer that holds it");
                    self.feed(Input::Forget { id });
                }
                _ = ticker.tick() => {
                    self.redial();
                    self.feed(Input::Tick);
                }
                _ = tokio::time::sleep_until(self.flush_at.unwrap_or_else(tokio::time::Instant::now)), if self.flush_at.is_some() && self.verifying.len() < MAX_VERIFYING => {
                    self.flush_ingest();
                }
                checked = async { (&mut self.verifying.front_mut().expect("guarded").done).await }, if !self.verifying.is_empty() => {
                    self.verified_batch(checked);
                    // A verification slot is free: what waited for it goes now.
                    self.flush_ingest();
                    self.start_commit();
                }
                written = async { (&mut self.commit.as_mut().expect("guarded").done).await }, if self.commit.is_some() => {
                    self.commit_done(written);
                    self.start_commit();
                }
            }
            if self.deferred_ingest.len() >= GROUP_COMMIT_MAX {
                self.flush_ingest();
            }
            self.publish_announces();
            self.load_pushes();
        }
        // Verify and write what has arrived, before stopping.
        loop {
            self.flush_at = Some(tokio::time::Instant::now());
            self.flush_ingest();
            if let Some(v) = self.verifying.front_mut() {
                let checked = (&mut v.done).await;
                self.verified_batch(checked);
                continue;
            }
            if let Some(c) = self.commit.as_mut() {
                let written = (&mut c.done).await;
                self.commit_done(written);
                continue;
            }
            if self.verified.is_empty() && self.deferred_ingest.is_empty() {
                break;
            }
            self.start_commit();
        }
        // Close every connection and let the closes go out (briefly: a peer that does not
        // answer times out on its side).
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.swarm.network_info().num_peers() > 0 {
            if tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .is_err()
            {
                break;
            }
        }
        // A closed connection's last packet is only queued; wait until it has been sent.
        let _ =
            tokio::time::timeout_at(deadline + Duration::from_secs(1), self.quic.wait_idle()).await;
        tracing::info!("network task stopped");
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    fn status(&self) -> NetStatus {
        NetStatus {
            peer_id: *self.swarm.local_peer_id(),
            listen: self.listen.clone(),
            peers: self
                .engine
                .peer_stats()
                .into_iter()
                .map(|(peer, stats)| PeerStatus {
                    peer,
                    addresses: self.addresses.get(&peer).cloned().unwrap_or_default(),
                    stats,
                    wire: self.quic.wire(&peer),
                })
                .collect(),
            envelopes: self.engine.index().len(),
            rejected: self.engine.total_strikes()
                + self.oversized.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        for (addr, r) in self.statics.iter_mut() {
            if r.due(now) {
                tracing::debug!(%addr, "dialling static peer");
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, %e, "dial failed");
                }
            }
        }
    }

    fn mark_static(&mut self, addr: &Multiaddr, connected: bool) {
        let now = Instant::now();
        let addr = transport_part(addr);
        for (a, r) in self.statics.iter_mut() {
            if transport_part(a) == addr {
                if connected {
                    r.connected(now);
                } else {
                    r.closed(now);
                }
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.mark_static(&addr, true);
                }
                self.addresses.entry(peer_id).or_default().push(addr);
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, "peer connected");
                    self.feed(Input::PeerUp(peer_id));
                    for lane in Lane::ALL {
                        self.open_link(peer_id, lane);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.mark_static(&addr, false);
                }
                if let Some(v) = self.addresses.get_mut(&peer_id) {
                    v.retain(|a| *a != addr);
                }
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.addresses.remove(&peer_id);
                    // Dropping the senders ends the link tasks.
                    self.out_links.retain(|(p, _), _| *p != peer_id);
                    self.in_links.retain(|_, l| l.peer != peer_id);
                    self.feed(Input::PeerDown(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                tracing::debug!(%error, "outgoing connection failed")
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen.contains(&address) => {
                self.listen.push(address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.on_sync(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => {
                let peer = message.source.unwrap_or(propagation_source);
                if self.swarm.is_connected(&peer) {
                    self.feed(Input::Announce {
                        peer,
                        frame: message.data,
                    });
                } else {
                    self.feed(Input::Announce {
                        peer: propagation_source,
                        frame: message.data,
                    });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::info!(%peer, %addr, "mDNS discovered a peer");
                    let _ = self.swarm.dial(addr);
                }
            }
            _ => {}
        }
    }

    fn on_sync(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let id = self.next_request;
                    self.next_request += 1;
                    self.inbound.insert(id, Reply::Stream(channel));
                    self.feed(Input::Request {
                        peer,
                        request: id,
                        frame: request,
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((peer, id)) = self.pushes.remove(&request_id) {
                        self.feed(Input::PushDone {
                            peer,
                            id,
                            delivered: true,
                        });
                        return;
                    }
                    self.feed(Input::Response {
                        peer,
                        frame: response,
                    })
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some((peer, id)) = self.pushes.remove(&request_id) {
                    self.feed(Input::PushDone {
                        peer,
                        id,
                        delivered: false,
                    });
                } else {
                    self.feed(Input::RequestFailed { peer });
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Sends the envelopes received since the last batch to be verified on a blocking
    /// thread, unless enough batches are being verified already (arrivals then keep
    /// joining this one).
    fn flush_ingest(&mut self) {
        if self.verifying.len() >= MAX_VERIFYING {
            return;
        }
        self.flush_at = None;
        if self.deferred_ingest.is_empty() {
            return;
        }
        let (senders, bytes): (Vec<Sender>, Vec<Vec<u8>>) =
            std::mem::take(&mut self.deferred_ingest)
                .into_iter()
                .unzip();
        let responses = std::mem::take(&mut self.deferred_responses);
        let host = self.host.clone();
        let done = tokio::task::spawn_blocking(move || {
            bytes.into_iter().map(|b| host.verify(b)).collect()
        });
        self.verifying.push_back(Verifying {
            batch: Batch { senders, responses },
            done,
        });
    }

    /// The oldest batch being verified is done: it waits for the next write.
    fn verified_batch(&mut self, checked: Result<Vec<Checked>, tokio::task::JoinError>) {
        let Some(v) = self.verifying.pop_front() else {
            return;
        };
        match checked {
            Ok(results) => self.verified.push((v.batch, results)),
            Err(e) => {
                tracing::error!(%e, "verification failed; nothing from its batch is acknowledged");
                self.abandon(v.batch);
            }
        }
    }

    /// Writes every verified batch with one durable write, unless a write is in progress.
    fn start_commit(&mut self) {
        if self.commit.is_some() || self.verified.is_empty() {
            return;
        }
        let mut envelopes = Vec::new();
        let batches = std::mem::take(&mut self.verified)
            .into_iter()
            .map(|(batch, results)| {
                let results = results
                    .into_iter()
                    .map(|r| {
                        r.map(|env| {
                            let found = (env.id(), Meta::of(&env));
                            envelopes.push(env);
                            found
                        })
                    })
                    .collect();
                (batch, results)
            })
            .collect();
        let host = self.host.clone();
        let count = envelopes.len();
        let done = tokio::task::spawn_blocking(move || host.store_batch(envelopes));
        self.commit = Some(Commit {
            batches,
            done,
            started: Instant::now(),
            envelopes: count,
        });
    }

    /// A batch that can no longer be acknowledged: its request-response answers are
    /// dropped (the senders time out and send again), and bulk links it came by end
    /// (acknowledgements there are in order and cannot skip it); their senders queue
    /// everything unacknowledged again.
    fn abandon(&mut self, batch: Batch) {
        for (request, _) in batch.responses {
            if let Some(Reply::Bulk { link, .. }) = self.inbound.remove(&request) {
                self.in_links.remove(&link);
            }
        }
    }

    /// A group commit finished: tells the engine, then sends the acknowledgements (never
    /// before the envelopes are durable). A write that panicked acknowledges nothing. A
    /// write that failed (disk full) acknowledges what it handled, as answered: the
    /// envelopes are not in the index, so the next reconciliation asks for them again.
    /// Envelopes the node declined (over its relay quota) are acknowledged too, and the
    /// engine counts them as held so that they are not offered again.
    fn commit_done(
        &mut self,
        written: Result<Result<crate::Stored, crate::IngestError>, tokio::task::JoinError>,
    ) {
        let Some(commit) = self.commit.take() else {
            return;
        };
        tracing::debug!(
            envelopes = commit.envelopes,
            ms = commit.started.elapsed().as_secs_f64() * 1e3,
            verifying = self.verifying.len(),
            verified = self.verified.len(),
            waiting = self.deferred_ingest.len(),
            unacked = self
                .in_links
                .values()
                .map(|l| l.received - l.handled)
                .sum::<u64>(),
            "group commit done"
        );
        let (stored, declined) = match written {
            Ok(Ok(done)) => {
                for id in done.evicted {
                    self.feed(Input::Evicted { id });
                }
                (true, done.declined.into_iter().collect())
            }
            Ok(Err(e)) => {
                tracing::error!(%e, "could not store envelopes from peers");
                (false, std::collections::HashSet::new())
            }
            Err(e) => {
                tracing::error!(%e, "group commit failed; nothing from it is acknowledged");
                for (batch, _) in commit.batches {
                    self.abandon(batch);
                }
                return;
            }
        };
        for (batch, results) in commit.batches {
            for (sender, result) in batch.senders.into_iter().zip(results) {
                let peer = sender.peer;
                if sender.urgent_link
                    && let Ok((_, meta)) = &result
                    && meta.precedence < Precedence::Immediate
                {
                    // Kept (it is a valid envelope), but a peer that puts routine traffic
                    // on the urgent link jumps our bulk queue's back-pressure.
                    self.feed(Input::Misbehaved {
                        peer,
                        why: "a ROUTINE or PRIORITY envelope on the urgent link",
                    });
                }
                match result {
                    Ok((id, meta)) if stored && declined.contains(&id) => {
                        self.feed(Input::Declined { id, meta });
                    }
                    Ok((id, meta)) if stored => self.feed(Input::Inserted {
                        id,
                        meta,
                        from: Some(peer),
                    }),
                    Ok(_) => {}
                    Err(crate::IngestError::Refused(reason)) => {
                        tracing::warn!(%peer, %reason, "refused an envelope");
                        self.feed(Input::Refused { peer });
                    }
                    Err(e) => tracing::error!(%peer, %e, "could not store an envelope from a peer"),
                }
            }
            for (request, frame) in batch.responses {
                self.respond(request, frame);
            }
        }
    }

    fn respond(&mut self, request: u64, frame: Vec<u8>) {
        match self.inbound.remove(&request) {
            Some(Reply::Stream(ch)) => {
                let _ = self.swarm.behaviour_mut().sync.send_response(ch, frame);
            }
            Some(Reply::Bulk { link, seq }) => {
                if let Some(l) = self.in_links.get_mut(&link) {
                    l.done.insert(seq);
                    let before = l.handled;
                    while l.done.remove(&l.handled) {
                        l.handled += 1;
                    }
                    if l.handled > before {
                        l.acks.send_replace(l.handled);
                    }
                }
            }
            None => {}
        }
    }

    /// Runs one input through the engine and performs its outputs (which may produce more
    /// inputs, handled in the same call).
    fn feed(&mut self, input: Input<PeerId>) {
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            let outs = self.engine.handle(now_ms(), input);
            // The answer to an envelope request waits until that envelope is durable.
            let holds_ingest = outs.iter().any(|o| matches!(o, Output::Ingest { .. }));
            for out in outs {
                match out {
                    Output::Request { peer, frame } => {
                        self.swarm.behaviour_mut().sync.send_request(&peer, frame);
                    }
                    Output::Respond { request, frame } if holds_ingest => {
                        self.deferred_responses.push((request, frame));
                    }
                    Output::Respond { request, frame } => self.respond(request, frame),
                    Output::Unanswered { request } => {
                        self.inbound.remove(&request);
                    }
                    Output::Push { peer, id } => self.push(peer, id),
                    Output::Ingest { peer, envelope } => {
                        self.deferred_ingest.push((
                            Sender {
                                peer,
                                urgent_link: false,
                            },
                            envelope,
                        ));
                        self.flush_at
                            .get_or_insert_with(|| tokio::time::Instant::now() + GROUP_COMMIT_WAIT);
                    }
                    Output::Announce { frame } => match Frame::decode(&frame, usize::MAX) {
                        // Announced together at the end of this event: one signed gossip
                        // message per group commit, not one per envelope.
                        Ok(Frame::Announce(ids)) => self.announce.extend(ids),
                        _ => tracing::error!("the engine produced a malformed announce"),
                    },
                    Output::Disconnect { peer, reason } => {
                        tracing::warn!(%peer, %reason, "disconnecting misbehaving peer");
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
        }
    }

    /// Sends a pushed envelope: on the peer's link of its lane (urgent for IMMEDIATE and
    /// FLASH, bulk otherwise) if that is open (the link loads it), otherwise on a
    /// request-response stream of its own (loaded after this event, see
    /// [`Driver::load_pushes`]).
    fn push(&mut self, peer: PeerId, id: EnvelopeId) {
        let lane = if self
            .engine
            .index()
            .meta(&id)
            .is_some_and(|m| m.precedence >= Precedence::Immediate)
        {
            Lane::Urgent
        } else {
            Lane::Bulk
        };
        match self.out_links.get_mut(&(peer, lane)) {
            Some(OutLink::Open {
                frames,
                sent,
                inflight,
                ..
            // The link refuses only if its task has ended (its `Closed` event is on the
            // way) or its queue is full, which the window rules out.
            }) if frames.try_send(id).is_ok() => {
                inflight.push_back((*sent, id));
                *sent += 1;
                return;
            }
            Some(OutLink::Failed(at)) if Instant::now() >= *at => self.open_link(peer, lane),
            _ => {}
        }
        self.to_load.push((peer, id));
    }

    /// Loads this event's request-response pushes on a blocking thread.
    fn load_pushes(&mut self) {
        if self.to_load.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.to_load);
        let host = self.host.clone();
        let done = self.loaded_tx.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = batch
                .into_iter()
                .map(|(peer, id)| (peer, id, host.load(&id)))
                .collect();
            // Waits while the swarm task is behind (the task ends with the driver).
            let _ = done.blocking_send(loaded);
        });
    }

    /// Sends loaded pushes, each on a request-response stream of its own; one no longer
    /// in the store counts as done.
    fn send_loaded(&mut self, batch: Loaded) {
        for (peer, id, bytes) in batch {
            let Some(bytes) = bytes else {
                tracing::warn!(%id, "queued envelope could not be loaded from the store");
                self.feed(Input::PushDone {
                    peer,
                    id,
                    delivered: true,
                });
                continue;
            };
            let frame = Frame::Envelope(bytes).encode();
            let req = self.swarm.behaviour_mut().sync.send_request(&peer, frame);
            self.pushes.insert(req, (peer, id));
        }
    }

    /// Starts opening a link of `lane` to a connected peer.
    fn open_link(&mut self, peer: PeerId, lane: Lane) {
        let link = bulk::next_link();
        self.out_links.insert((peer, lane), OutLink::Opening(link));
        let (queue, events) = match lane {
            Lane::Bulk => (self.max_inflight, self.bulk_tx.clone()),
            Lane::Urgent => (self.max_urgent, self.urgent_tx.clone()),
        };
        tokio::spawn(bulk::open(
            self.bulk_control.clone(),
            peer,
            lane,
            link,
            queue,
            events,
            self.host.clone(),
        ));
    }

    /// The peer and lane whose current outbound link is `link`.
    fn out_link_key(&self, link: LinkId) -> Option<(PeerId, Lane)> {
        self.out_links.iter().find_map(|(k, l)| match l {
            OutLink::Opening(l) | OutLink::Open { link: l, .. } if *l == link => Some(*k),
            _ => None,
        })
    }

    fn on_bulk(&mut self, ev: bulk::Event) {
        match ev {
            bulk::Event::Opened { peer, link, frames } => {
                let Some(key) = self.out_link_key(link) else {
                    // The peer left meanwhile: dropping `frames` ends the task.
                    return;
                };
                if matches!(self.out_links.get(&key), Some(OutLink::Opening(_))) {
                    tracing::debug!(%peer, link, lane = ?key.1, "link open");
                    self.out_links.insert(
                        key,
                        OutLink::Open {
                            link,
                            frames,
                            sent: 0,
                            inflight: VecDeque::new(),
                        },
                    );
                }
            }
            bulk::Event::OpenFailed {
                peer,
                link,
                unsupported,
                why,
            } => {
                if let Some(key) = self.out_link_key(link)
                    && matches!(self.out_links.get(&key), Some(OutLink::Opening(_)))
                {
                    tracing::debug!(%peer, %why, lane = ?key.1, "no link; its pushes go by request-response");
                    let next = if unsupported {
                        OutLink::Unsupported
                    } else {
                        OutLink::Failed(Instant::now() + BULK_RETRY)
                    };
                    self.out_links.insert(key, next);
                }
            }
            bulk::Event::Unloadable { link, id } => {
                // Dropped as a request-response push would drop it. The link skipped
                // it: the frames after it move up one place.
                tracing::warn!(%id, "queued envelope could not be loaded from the store; the bulk link skipped it");
                let Some(key) = self.out_link_key(link) else {
                    return;
                };
                let peer = key.0;
                if let Some(OutLink::Open { inflight, sent, .. }) = self.out_links.get_mut(&key)
                    && let Some(at) = inflight.iter().position(|(_, i)| *i == id)
                {
                    inflight.remove(at);
                    for (seq, _) in inflight.iter_mut().skip(at) {
                        *seq -= 1;
                    }
                    *sent -= 1;
                }
                self.feed(Input::PushDone {
                    peer,
                    id,
                    delivered: true,
                });
            }
            bulk::Event::Acked { link, handled } => {
                let Some(key) = self.out_link_key(link) else {
                    return;
                };
                let peer = key.0;
                let Some(OutLink::Open { sent, inflight, .. }) = self.out_links.get_mut(&key)
                else {
                    return;
                };
                if handled > *sent {
                    tracing::warn!(%peer, handled, sent = *sent, "link acknowledged frames never sent; closing it");
                    self.link_closed(key);
                    return;
                }
                let mut done = Vec::new();
                while inflight.front().is_some_and(|(seq, _)| *seq < handled) {
                    done.extend(inflight.pop_front().map(|(_, id)| id));
                }
                for id in done {
                    self.feed(Input::PushDone {
                        peer,
                        id,
                        delivered: true,
                    });
                }
            }
            bulk::Event::Accepted {
                peer,
                lane,
                link,
                acks,
            } => {
                // One inbound link per peer and lane: a new one replaces the old (whose
                // sender has given up on it).
                self.in_links
                    .retain(|_, l| l.peer != peer || l.lane != lane);
                if self.swarm.is_connected(&peer) {
                    self.in_links.insert(
                        link,
                        InLink {
                            peer,
                            lane,
                            acks,
                            received: 0,
                            handled: 0,
                            done: BTreeSet::new(),
                        },
                    );
                }
            }
            bulk::Event::Frame { link, frame } => {
                let Some(l) = self.in_links.get_mut(&link) else {
                    return;
                };
                let (peer, lane) = (l.peer, l.lane);
                let seq = l.received;
                l.received += 1;
                let request = self.next_request;
                self.next_request += 1;
                self.inbound.insert(request, Reply::Bulk { link, seq });
                let waiting = self.deferred_ingest.len();
                self.feed(Input::Bulk { peer, frame });
                // An envelope is handled once durable; anything else (refused) at once.
                if self.deferred_ingest.len() > waiting {
                    if let Some((sender, _)) = self.deferred_ingest.last_mut() {
                        sender.urgent_link = lane == Lane::Urgent;
                    }
                    self.deferred_responses.push((request, Vec::new()));
                } else {
                    self.respond(request, Vec::new());
                }
            }
            bulk::Event::Closed { link, why } => {
                if self.in_links.remove(&link).is_some() {
                    tracing::debug!(link, %why, "inbound bulk link ended");
                } else if let Some(key) = self.out_link_key(link) {
                    tracing::debug!(peer = %key.0, lane = ?key.1, %why, "link ended");
                    self.link_closed(key);
                }
            }
        }
    }

    /// Our link of a lane to a peer is gone: what it had not delivered goes back in the
    /// queue, and a new link is tried later (request-response meanwhile).
    fn link_closed(&mut self, key: (PeerId, Lane)) {
        let peer = key.0;
        let Some(OutLink::Open { inflight, .. }) = self
            .out_links
            .insert(key, OutLink::Failed(Instant::now() + BULK_RETRY))
        else {
            return;
        };
        for (_, id) in inflight {
            self.feed(Input::PushDone {
                peer,
                id,
                delivered: false,
            });
        }
    }

    /// Publishes the envelopes that became durable during this event, as few announce
    /// messages as fit.
    fn publish_announces(&mut self) {
        if self.announce.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.announce);
        for ids in ids.chunks(ANNOUNCE_IDS_PER_FRAME) {
            let frame = Frame::Announce(ids.to_vec()).encode();
            let topic = self.topic.clone();
            if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic, frame) {
                tracing::debug!(%e, "announce not published (reconciliation will carry it)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dial times of a static peer that accepts each connection and drops it after
    /// `lasts`, over `span` from the first dial.
    fn dials(lasts: Duration, span: Duration) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut r = Redial::new(t0);
        let mut out = Vec::new();
        let mut now = t0;
        while now < t0 + span {
            if r.due(now) {
                out.push(now - t0);
                r.connected(now);
                now += lasts;
                r.closed(now);
            } else {
                now += Duration::from_millis(100);
            }
        }
        out
    }

    #[test]
    fn a_peer_that_drops_us_at_once_is_dialled_less_and_less() {
        let d = dials(Duration::from_millis(50), Duration::from_secs(120));
        // 1, 2, 4, 8, 16 then every 30 s: not every second.
        assert!(d.len() <= 8, "{} dials: {d:?}", d.len());
        let gaps: Vec<u64> = d.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(*gaps.last().unwrap() >= 29, "{gaps:?}");
    }

    #[test]
    fn a_connection_that_lasted_is_redialled_soon_after_it_ends() {
        let d = dials(Duration::from_secs(60), Duration::from_secs(300));
        let gaps: Vec<u64> = d.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert!(gaps.iter().all(|&g| g <= 62), "{gaps:?}");
    }

    #[test]
    fn static_peers_match_by_transport_address() {
        let configured: Multiaddr = "/ip4/10.0.0.1/tcp/80".parse().unwrap();
        let other: Multiaddr =
            "/ip4/10.0.0.1/tcp/8080/p2p/12D3KooWCSMWWU7VZ6321vwdZUfBCpeCMChbQS8hsFCxNuUvztyW"
                .parse()
                .unwrap();
        let same: Multiaddr =
            "/ip4/10.0.0.1/tcp/80/p2p/12D3KooWCSMWWU7VZ6321vwdZUfBCpeCMChbQS8hsFCxNuUvztyW"
                .parse()
                .unwrap();
        assert_ne!(transport_part(&configured), transport_part(&other));
        assert_eq!(transport_part(&configured), transport_part(&same));
    }
}
