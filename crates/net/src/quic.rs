//! A libp2p QUIC transport on quinn that offers AES-GCM first.
//!
//! It speaks the standard libp2p QUIC protocol, so any libp2p implementation can connect:
//! - QUIC v1 (RFC 9000) on `/ip4|ip6/…/udp/PORT/quic-v1` addresses;
//! - TLS 1.3 with the libp2p certificate extension, which binds the connection to the
//!   peer's identity key; ALPN `libp2p`; both sides present a certificate;
//! - one native QUIC bidirectional stream per libp2p stream.
//!
//! Why not `libp2p-quic`: its TLS configuration lists ChaCha20-Poly1305 first and cannot be
//! changed, so two of its nodes always negotiate ChaCha20. On CPUs with AES instructions
//! (every x86 and ARMv8 profile we ship) AES-GCM costs a fraction of that. A profile of a
//! bulk transfer showed ChaCha20-Poly1305 at about 16% of the sender's CPU and 13% of the
//! receiver's. Here the order is AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305: a peer that
//! prefers ChaCha20 (for example, one without AES instructions) still gets it, because
//! the client's order decides.
//!
//! Not supported: hole punching (dialling as the listener), and address changes of a live
//! connection (migration is off, as in libp2p-quic).

use futures_util::future::BoxFuture;
use futures_util::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const ALPN: &[u8] = b"libp2p";

/// Connection settings. The defaults are libp2p-quic's, so timing behaviour does not change
/// with the transport.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest a handshake may take.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets on an otherwise idle connection.
    pub keep_alive: Duration,
    /// Concurrent bidirectional streams a peer may open.
    pub max_streams: u32,
    /// Unacknowledged bytes per stream a peer may send (flow-control window).
    pub stream_window: u32,
    /// Unacknowledged bytes per connection a peer may send.
    pub connection_window: u32,
    /// The largest UDP payload a path is probed for (path MTU discovery). A connection
    /// starts at QUIC's safe 1,200 bytes and sends one probe of this size: if it gets
    /// through, packets grow to it; if not, they stay at 1,200 (see `mtu_discovery`).
    pub mtu_probe: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(5),
            max_streams: 256,
            stream_window: 10_000_000,
            connection_window: 15_000_000,
            mtu_probe: 1452,
        }
    }
}

/// Path MTU discovery that sends one probe, of `probe` bytes, instead of quinn's binary
/// search from 1,200 to 1,452 bytes (four probes of up to 1,452 bytes each way, about
/// 11 KB of a 19 KB meeting between two nodes): a node that meets another briefly over a
/// thin link must not spend its airtime measuring the path. With a minimum change above
/// half the range, quinn's search goes straight to the upper bound; only if that probe is
/// lost (quinn sends a lost probe up to three times) does it try the midpoint, and it
/// stops there either way. Re-probed every 10 minutes (quinn's default) on a connection
/// that lasts. (A peer that announces a smaller `max_udp_payload_size` than the bound
/// clamps the search to below the minimum change: then nothing is probed.)
fn mtu_discovery(probe: u16) -> quinn::MtuDiscoveryConfig {
    const SAFE: u16 = 1200;
    let probe = probe.max(SAFE);
    let mut c = quinn::MtuDiscoveryConfig::default();
    c.upper_bound(probe);
    // Above half the range (no midpoint probe), at most the range (the bound itself is
    // probed); 1 when there is nothing to probe.
    c.minimum_change(((probe - SAFE) / 2 + 1).max(1));
    c
}

/// Why a QUIC connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("could not start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the peer presented no valid libp2p certificate")]
    NoIdentity,
    #[error("dialled {} but reached {}", .0.0, .0.1)]
    WrongPeer(Box<(PeerId, PeerId)>),
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// The libp2p transport.
pub struct QuicTransport {
    config: Config,
    client: quinn::ClientConfig,
    server: quinn::ServerConfig,
    endpoint: quinn::EndpointConfig,
    listeners: Vec<Listener>,
    /// The listener `poll` looks at first next time.
    next_poll: usize,
    /// Every endpoint made, for [`Endpoints::wait_idle`].
    endpoints: Endpoints,
    /// Client-only endpoints for dials no listener can make (IPv4, IPv6), made on first use.
    dialers: [Option<quinn::Endpoint>; 2],
    waker: Option<Waker>,
}

struct Listener {
    id: ListenerId,
    /// Removed: no longer accepts, nor dials from its socket; dropped once its
    /// `ListenerClosed` has been reported.
    closed: bool,
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    accept: BoxFuture<'static, Option<quinn::Incoming>>,
    /// Reports the interfaces' addresses when bound to 0.0.0.0 or `::`.
    interfaces: Option<if_watch::tokio::IfWatcher>,
    events: VecDeque<TransportEvent<Upgrade, QuicError>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listening: Vec<SocketAddr> = self.listeners.iter().map(|l| l.local).collect();
        f.debug_struct("QuicTransport")
            .field("listening", &listening)
            .finish_non_exhaustive()
    }
}

type Upgrade = BoxFuture<'static, Result<(PeerId, Connection), QuicError>>;

impl QuicTransport {
    pub fn new(keypair: &Keypair, config: Config) -> Result<Self, QuicError> {
        let tls = |e: &dyn std::fmt::Display| QuicError::Tls(e.to_string());
        let (cert, key) = libp2p_tls::certificate::generate(keypair).map_err(|e| tls(&e))?;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        // aws-lc seeds its random generator from CPU jitter the first time it is used
        // (about 30 ms of CPU here): do that beside the node's start-up, not inside the
        // first handshake, where it delayed the first sync with a peer.
        let random = provider.secure_random;
        let _ = std::thread::Builder::new()
            .name("rng-seed".into())
            .spawn(move || random.fill(&mut [0u8; 32]));
        let provider = Arc::new(provider);
        let verifier = Arc::new(PeerCertVerifier);
        // rustls's own certificate set-up parses the certificate with webpki, which refuses
        // the critical libp2p extension; the key is loaded directly instead.
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| tls(&e))?;
        let own = Arc::new(OwnCert(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            signer,
        ))));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(own.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(own);
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(0u32.into())
            .max_concurrent_bidi_streams(config.max_streams.into())
            .datagram_receive_buffer_size(None)
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|e| QuicError::Tls(format!("idle timeout: {e}")))?,
            ))
            .mtu_discovery_config(Some(mtu_discovery(config.mtu_probe)))
            .allow_spin(false)
            .stream_receive_window(config.stream_window.into())
            .receive_window(config.connection_window.into());
        let transport = Arc::new(transport);

        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| tls(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        server.migration(false);
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| tls(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        // Stateless-reset tokens derived from the identity: after a restart this node can
        // still tell peers that a connection from its previous life is gone, so they
        // notice at once instead of after the idle timeout.
        let mut endpoint = match keypair.derive_secret(b"fieldmesh quic stateless reset key") {
            Some(secret) => quinn::EndpointConfig::new(Arc::new(ResetKey(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret,
            )))),
            None => quinn::EndpointConfig::default(),
        };
        endpoint.supported_versions(vec![1]);
        Ok(Self {
            config,
            client,
            server,
            endpoint,
            listeners: Vec::new(),
            next_poll: 0,
            endpoints: Endpoints::default(),
            dialers: [None, None],
            waker: None,
        })
    }

    /// A handle on this transport's sockets that outlives the transport's move into the
    /// swarm.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.clone()
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The endpoint a dial to `to` leaves from: a listener's when one can reach it (the
    /// peer then sees the address it can dial back), otherwise a client-only endpoint.
    fn dial_endpoint(
        &mut self,
        to: &SocketAddr,
        port_use: PortUse,
    ) -> Result<quinn::Endpoint, QuicError> {
        if port_use == PortUse::Reuse {
            let reachable = |l: &&Listener| {
                !l.closed
                    && l.local.is_ipv4() == to.is_ipv4()
                    && (l.local.ip().is_unspecified()
                        || l.local.ip().is_loopback() == to.ip().is_loopback())
            };
            if let Some(l) = self.listeners.iter().find(reachable) {
                return Ok(l.endpoint.clone());
            }
        }
        let slot = usize::from(to.is_ipv6());
        if let Some(e) = &self.dialers[slot] {
            return Ok(e.clone());
        }
        let bind: SocketAddr = if to.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::new(
            self.endpoint.clone(),
            None,
            bind_udp(bind)?,
            Arc::new(quinn::TokioRuntime),
        )?;
        self.dialers[slot] = Some(endpoint.clone());
        self.endpoints.add(&endpoint);
        Ok(endpoint)
    }
}

impl Transport for QuicTransport {
    type Output = (PeerId, Connection);
    type Error = QuicError;
    type ListenerUpgrade = Upgrade;
    type Dial = Upgrade;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some((sa, None)) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let socket = bind_udp(sa).map_err(|e| TransportError::Other(e.into()))?;
        let endpoint = quinn::Endpoint::new(
            self.endpoint.clone(),
            Some(self.server.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| TransportError::Other(e.into()))?;
        self.endpoints.add(&endpoint);
        let local = endpoint
            .local_addr()
            .map_err(|e| TransportError::Other(e.into()))?;
        let mut events = VecDeque::new();
        let interfaces = if local.ip().is_unspecified() {
            Some(if_watch::tokio::IfWatcher::new().map_err(|e| TransportError::Other(e.into()))?)
        } else {
            events.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: quic_multiaddr(local),
            });
            None
        };
        self.listeners.push(Listener {
            id,
            closed: false,
            accept: accept(endpoint.clone()),
            endpoint,
            local,
            interfaces,
            events,
        });
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(l) = self.listeners.iter_mut().find(|l| l.id == id && !l.closed) else {
            return false;
        };
        l.closed = true;
        l.interfaces = None;
        // Stop accepting; connections already made (and dials from this socket) live on.
        l.endpoint.set_server_config(None);
        l.events.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        self.wake();
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some((to, expected)) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if opts.role == Endpoint::Listener || to.ip().is_unspecified() || to.port() == 0 {
            // Hole punching (dialling as the listener) is not supported.
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let endpoint = self
            .dial_endpoint(&to, opts.port_use)
            .map_err(TransportError::Other)?;
        let connecting = endpoint
            .connect_with(self.client.clone(), to, "l")
            .map_err(|e| TransportError::Other(e.into()))?;
        let limit = self.config.handshake_timeout;
        let book = self.endpoints.clone();
        Ok(async move {
            let conn = tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| QuicError::HandshakeTimeout(limit))??;
            let found = peer_of(&conn)?;
            if let Some(expected) = expected.filter(|e| *e != found) {
                conn.close(0u32.into(), b"wrong peer");
                return Err(QuicError::WrongPeer(Box::new((expected, found))));
            }
            book.track(found, &conn);
            Ok((found, Connection::new(conn)))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        this.waker = Some(cx.waker().clone());
        let limit = this.config.handshake_timeout;
        // Start with a different listener each call, so a busy one cannot starve the rest.
        let n = this.listeners.len();
        for k in 0..n {
            let i = (this.next_poll + k) % n;
            if let Some((ev, remove)) =
                poll_listener(&mut this.listeners[i], cx, limit, &this.endpoints)
            {
                if remove {
                    this.listeners.remove(i);
                }
                this.next_poll = i + 1;
                return Poll::Ready(ev);
            }
        }
        Poll::Pending
    }
}

/// This node's certificate, presented as server and as client.
#[derive(Debug)]
struct OwnCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OwnCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A UDP socket bound to `addr`, with enlarged buffers. An IPv6 socket takes IPv6 only
/// (Linux would also take IPv4 on it by default), so `/ip4/0.0.0.0` and `/ip6/::` can
/// listen on the same port. Public so that benchmarks give raw quinn the same sockets.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A burst of datagrams that arrives while this process is off the CPU waits in the
    // socket's receive buffer; once it is full the kernel drops them, and QUIC reads every
    // drop as congestion. With Linux's default (208 KiB, about 1.6 ms at 130 MB/s) a bulk
    // transfer between two daemons on one 2-core machine lost 1.3% of its packets, with
    // a hundred congestion events in two seconds. The kernel caps the request at
    // `net.core.rmem_max` (and `wmem_max`); a smaller buffer still works, just less well.
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%e, "could not enlarge the UDP send buffer");
    }
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        %addr,
        "UDP socket buffers"
    );
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Socket buffer size asked for, each way (granted up to the kernel's maximum).
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// The transport's QUIC endpoints, and the UDP bytes of its connections.
#[derive(Debug, Clone, Default)]
pub struct Endpoints(
    Arc<std::sync::Mutex<Vec<quinn::Endpoint>>>,
    Arc<std::sync::Mutex<WireBook>>,
);

/// UDP bytes sent and received per peer, QUIC headers, acknowledgements and handshakes
/// included: what the radio would carry.
#[derive(Debug, Default)]
pub struct WireBook {
    /// Connections up, by quinn's stable id.
    live: std::collections::HashMap<usize, (PeerId, quinn::Connection)>,
    /// Totals of closed connections, and when each peer's last one closed (a count):
    /// at most [`MAX_CLOSED_PEERS`] peers, the longest gone forgotten first (every peer
    /// that ever finished a handshake had been kept: a peer cycling fresh identities grew
    /// it without end).
    closed: std::collections::HashMap<PeerId, (u64, Wire)>,
    closes: u64,
}

/// Peers whose closed connections' traffic is remembered (the engine remembers fewer).
const MAX_CLOSED_PEERS: usize = 4096;

impl WireBook {
    fn closed(&mut self, peer: PeerId, st: &quinn::ConnectionStats) {
        self.closes += 1;
        if self.closed.len() >= MAX_CLOSED_PEERS
            && !self.closed.contains_key(&peer)
            && let Some(oldest) = self
                .closed
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(p, _)| *p)
        {
            self.closed.remove(&oldest);
        }
        let e = self.closed.entry(peer).or_default();
        e.0 = self.closes;
        e.1.add(st);
    }
}

/// UDP traffic with one peer over QUIC, everything included (handshakes, ACKs, retransmits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// The largest path MTU (UDP payload bytes) a connection reached.
    pub mtu: u16,
    /// Path MTU probes sent.
    pub mtu_probes: u64,
}

impl Wire {
    fn add(&mut self, st: &quinn::ConnectionStats) {
        self.bytes_sent += st.udp_tx.bytes;
        self.bytes_received += st.udp_rx.bytes;
        self.datagrams_sent += st.udp_tx.datagrams;
        self.datagrams_received += st.udp_rx.datagrams;
        self.mtu = self.mtu.max(st.path.current_mtu);
        self.mtu_probes += st.path.sent_plpmtud_probes;
    }
}

impl Endpoints {
    fn add(&self, e: &quinn::Endpoint) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e.clone());
    }

    /// Counts `conn`'s UDP bytes towards `peer`, until and after it closes.
    fn track(&self, peer: PeerId, conn: &quinn::Connection) {
        let book = self.1.clone();
        let key = conn.stable_id();
        book.lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .insert(key, (peer, conn.clone()));
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.closed().await;
            let st = conn.stats();
            tracing::debug!(%peer, ?st, "QUIC connection closed");
            let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
            book.live.remove(&key);
            book.closed(peer, &st);
        });
    }

    /// UDP traffic with `peer` over QUIC since start.
    pub fn wire(&self, peer: &PeerId) -> Wire {
        let book = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = book.closed.get(peer).map(|(_, w)| *w).unwrap_or_default();
        for (p, conn) in book.live.values() {
            if p == peer {
                total.add(&conn.stats());
            }
        }
        total
    }

    /// Waits until every closed connection's close has been sent and its draining period
    /// is over. Closing a connection only queues the close; a process that exits at once
    /// may never send it, and the peer then holds the connection until its idle timeout.
    pub async fn wait_idle(&self) {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for e in all {
            e.wait_idle().await;
        }
    }
}

/// HMAC-SHA256 for quinn's stateless-reset tokens.
struct ResetKey(ring::hmac::Key);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], out: &mut [u8]) {
        out.copy_from_slice(ring::hmac::sign(&self.0, data).as_ref());
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        ring::hmac::verify(&self.0, data, signature).map_err(|_| quinn::crypto::CryptoError)
    }
}

/// The listener's next event, if it has one; `true`: the listener is gone after it.
fn poll_listener(
    l: &mut Listener,
    cx: &mut Context<'_>,
    limit: Duration,
    book: &Endpoints,
) -> Option<(TransportEvent<Upgrade, QuicError>, bool)> {
    if let Some(ev) = l.events.pop_front() {
        let gone = matches!(ev, TransportEvent::ListenerClosed { .. });
        return Some((ev, gone));
    }
    if l.closed {
        return None;
    }
    if let Some(w) = l.interfaces.as_mut() {
        match w.poll_if_event(cx) {
            Poll::Ready(Ok(change)) => {
                let (up, net) = match change {
                    if_watch::IfEvent::Up(n) => (true, n),
                    if_watch::IfEvent::Down(n) => (false, n),
                };
                if net.addr().is_ipv4() == l.local.is_ipv4() {
                    let listen_addr = quic_multiaddr(SocketAddr::new(net.addr(), l.local.port()));
                    let listener_id = l.id;
                    let ev = if up {
                        TransportEvent::NewAddress {
                            listener_id,
                            listen_addr,
                        }
                    } else {
                        TransportEvent::AddressExpired {
                            listener_id,
                            listen_addr,
                        }
                    };
                    return Some((ev, false));
                }
                // The other address family: look again on the next call.
                cx.waker().wake_by_ref();
            }
            Poll::Ready(Err(e)) => {
                // Addresses of this listener are no longer tracked; it still accepts.
                l.interfaces = None;
                let ev = TransportEvent::ListenerError {
                    listener_id: l.id,
                    error: QuicError::Io(e),
                };
                return Some((ev, false));
            }
            Poll::Pending => {}
        }
    }
    match l.accept.poll_unpin(cx) {
        Poll::Ready(Some(incoming)) => {
            l.accept = accept(l.endpoint.clone());
            let local_ip = incoming.local_ip().unwrap_or(l.local.ip());
            let send_back_addr = quic_multiaddr(incoming.remote_address());
            let book = book.clone();
            let upgrade = async move {
                let connecting = incoming.accept()?;
                let conn = tokio::time::timeout(limit, connecting)
                    .await
                    .map_err(|_| QuicError::HandshakeTimeout(limit))??;
                let peer = peer_of(&conn)?;
                book.track(peer, &conn);
                Ok((peer, Connection::new(conn)))
            }
            .boxed();
            let ev = TransportEvent::Incoming {
                listener_id: l.id,
                upgrade,
                local_addr: quic_multiaddr(SocketAddr::new(local_ip, l.local.port())),
                send_back_addr,
            };
            Some((ev, false))
        }
        Poll::Ready(None) => Some((
            TransportEvent::ListenerClosed {
                listener_id: l.id,
                reason: Ok(()),
            },
            true,
        )),
        Poll::Pending => None,
    }
}

fn accept(endpoint: quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    async move { endpoint.accept().await }.boxed()
}

/// `/ip4|ip6/ADDR/udp/PORT/quic-v1[/p2p/PEER]` as a socket address and the expected peer.
fn socket_addr(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let mut it = addr.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(a) => a.into(),
        Protocol::Ip6(a) => a.into(),
        _ => return None,
    };
    let Protocol::Udp(port) = it.next()? else {
        return None;
    };
    let Protocol::QuicV1 = it.next()? else {
        return None;
    };
    let peer = match it.next() {
        None => None,
        Some(Protocol::P2p(p)) => Some(p),
        Some(_) => return None,
    };
    it.next()
        .is_none()
        .then_some((SocketAddr::new(ip, port), peer))
}

fn quic_multiaddr(sa: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(sa.ip().into())
        .with(Protocol::Udp(sa.port()))
        .with(Protocol::QuicV1)
}

/// The peer id in the certificate the peer presented (verified during the handshake).
fn peer_of(conn: &quinn::Connection) -> Result<PeerId, QuicError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(QuicError::NoIdentity)?;
    let cert = certs.first().ok_or(QuicError::NoIdentity)?;
    libp2p_tls::certificate::parse(cert)
        .map(|c| c.peer_id())
        .map_err(|_| QuicError::NoIdentity)
}

/// Checks a peer's certificate the libp2p way: exactly one self-signed certificate that
/// carries the peer's identity key and that key's signature over the certificate key; the
/// handshake must then be signed by the certificate key. The peer id is checked against
/// the dialled one after the handshake.
#[derive(Debug)]
struct PeerCertVerifier;

impl PeerCertVerifier {
    fn check(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p TLS: exactly one certificate expected".into(),
            ));
        }
        libp2p_tls::certificate::parse(end_entity)
            .map(|_| ())
            .map_err(|e| rustls::Error::General(format!("libp2p TLS certificate: {e}")))
    }

    fn signed(
        cert: &CertificateDer<'_>,
        message: &[u8],
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        libp2p_tls::certificate::parse(cert)
            .map_err(|e| rustls::Error::General(format!("libp2p TLS certificate: {e}")))?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(|e| rustls::Error::General(format!("libp2p TLS handshake signature: {e}")))?;
        Ok(HandshakeSignatureValid::assertion())
    }

    /// The schemes libp2p's TLS specification allows for the certificate key.
    fn schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA512,
        ]
    }
}

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signed(cert, message, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PeerCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signed(cert, message, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// At debug level: the path's state every second while the connection lives (how a link
/// behaves: round trip, congestion window, losses).
async fn log_path_stats(conn: quinn::Connection) {
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let st = conn.stats();
        tracing::debug!(
            remote = %conn.remote_address(),
            rtt_us = st.path.rtt.as_micros() as u64,
            cwnd = st.path.cwnd,
            congestion_events = st.path.congestion_events,
            lost_packets = st.path.lost_packets,
            sent_packets = st.path.sent_packets,
            tx_datagrams = st.udp_tx.datagrams,
            tx_ios = st.udp_tx.ios,
            rx_datagrams = st.udp_rx.datagrams,
            rx_ios = st.udp_rx.ios,
            "quic path"
        );
    }
}

/// One QUIC connection as a libp2p stream muxer: each libp2p stream is a QUIC
/// bidirectional stream.
pub struct Connection {
    conn: quinn::Connection,
    inbound: Option<
        BoxFuture<'static, Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>,
    >,
    outbound: Option<
        BoxFuture<'static, Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>,
    >,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

/// libp2p drops a connection without closing it on some errors (a keep-alive timeout);
/// the handles kept for statistics would otherwise keep it open.
impl Drop for Connection {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"");
    }
}

impl Connection {
    fn new(conn: quinn::Connection) -> Self {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tokio::spawn(log_path_stats(conn.clone()));
        }
        Self {
            conn,
            inbound: None,
            outbound: None,
            closing: None,
        }
    }

    /// The cipher suite and other details are in quinn's statistics; exposed for tests.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.conn
    }
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = QuicError;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Stream, QuicError>> {
        let this = self.get_mut();
        let conn = &this.conn;
        let fut = this.inbound.get_or_insert_with(|| {
            let c = conn.clone();
            async move { c.accept_bi().await }.boxed()
        });
        let res = futures_util::ready!(fut.poll_unpin(cx));
        this.inbound = None;
        let (send, recv) = res?;
        Poll::Ready(Ok(Stream::new(send, recv)))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Stream, QuicError>> {
        let this = self.get_mut();
        let conn = &this.conn;
        let fut = this.outbound.get_or_insert_with(|| {
            let c = conn.clone();
            async move { c.open_bi().await }.boxed()
        });
        let res = futures_util::ready!(fut.poll_unpin(cx));
        this.outbound = None;
        let (send, recv) = res?;
        Poll::Ready(Ok(Stream::new(send, recv)))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), QuicError>> {
        let this = self.get_mut();
        let conn = &this.conn;
        let fut = this.closing.get_or_insert_with(|| {
            conn.close(0u32.into(), b"");
            let c = conn.clone();
            async move { c.closed().await }.boxed()
        });
        match futures_util::ready!(fut.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed => Poll::Ready(Ok(())),
            e => Poll::Ready(Err(e.into())),
        }
    }

    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, QuicError>> {
        // No address changes to report (migration is off); a dead connection shows up as
        // an error from the stream futures.
        Poll::Pending
    }
}

/// A libp2p stream: one QUIC bidirectional stream.
pub struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Closing twice is not an error: the first result is kept.
    closed: Option<Result<(), io::ErrorKind>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.send.id())
            .finish_non_exhaustive()
    }
}

impl Stream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self {
            send,
            recv,
            closed: None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        AsyncRead::poll_read(Pin::new(&mut self.get_mut().recv), cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = this.closed {
            return Poll::Ready(r.map_err(io::Error::from));
        }
        let r = futures_util::ready!(AsyncWrite::poll_close(Pin::new(&mut this.send), cx));
        this.closed = Some(r.as_ref().map(|_| ()).map_err(|e| e.kind()));
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_connections_are_remembered_for_a_bounded_number_of_peers() {
        let mut book = WireBook::default();
        let mut st = quinn::ConnectionStats::default();
        st.udp_tx.bytes = 100;
        let kept = PeerId::random();
        book.closed(kept, &st);
        for _ in 0..MAX_CLOSED_PEERS + 500 {
            book.closed(PeerId::random(), &st);
            // A peer that keeps coming back stays.
            if book.closes % 1000 == 0 {
                book.closed(kept, &st);
            }
        }
        assert_eq!(book.closed.len(), MAX_CLOSED_PEERS);
        assert!(book.closed[&kept].1.bytes_sent >= 500);
    }
}
