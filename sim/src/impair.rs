//! A UDP impairment proxy, for running real `fieldmesh` processes (QUIC over UDP) through
//! a bad network on 127.0.0.1: latency, jitter, loss, rate limit, and partitions, both
//! scheduled and switched at run time. Kernel netem is not available on the machines
//! we test on; this stands in for it.
//!
//! A client sends to [`Proxy::addr`]; the proxy opens one upstream socket per client
//! address towards the target and relays both ways, impairing each direction on its own.
//! Loss draws come from a seeded generator; timing is the real clock's.

use crate::rng::Rng;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the proxy impairs traffic (each direction separately).
#[derive(Debug, Clone)]
pub struct Impairment {
    /// One-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in [0, jitter].
    pub jitter: Duration,
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Bytes per second (0: unlimited).
    pub rate_bytes_per_s: u64,
    /// Windows, relative to the proxy's start, during which everything is dropped.
    pub partitions: Vec<(Duration, Duration)>,
    /// Seed for loss and jitter.
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bytes_per_s: 0,
            partitions: Vec::new(),
            seed: 1,
        }
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Datagrams relayed.
    pub relayed: AtomicU64,
    /// Datagrams dropped by loss.
    pub lost: AtomicU64,
    /// Datagrams dropped by a partition.
    pub partitioned: AtomicU64,
}

struct Packet {
    at: Instant,
    seq: u64,
    bytes: Vec<u8>,
    /// Send from this socket...
    via: Arc<UdpSocket>,
    /// ...to this address.
    to: SocketAddr,
}

impl PartialEq for Packet {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Packet {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Shared {
    imp: Impairment,
    start: Instant,
    cut: AtomicBool,
    stop: AtomicBool,
    stats: ProxyStats,
    queue: Mutex<Sched>,
    wake: Condvar,
}

struct Sched {
    heap: BinaryHeap<Packet>,
    seq: u64,
    rng: Rng,
    /// Per direction (0: to target, 1: to client): when the "wire" is free again.
    busy: [Instant; 2],
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("imp", &self.imp)
            .finish_non_exhaustive()
    }
}

/// A running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts relaying datagrams sent to a new 127.0.0.1 port towards `target`.
    pub fn start(target: SocketAddr, imp: Impairment) -> std::io::Result<Proxy> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        front.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = front.local_addr()?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Sched {
                heap: BinaryHeap::new(),
                seq: 0,
                rng: Rng::new(imp.seed),
                busy: [now, now],
            }),
            imp,
            start: now,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stats: ProxyStats::default(),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::spawn(move || sender(&s));
        let s = shared.clone();
        std::thread::spawn(move || front_loop(&s, &front, target));
        Ok(Proxy { addr, shared })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts (true) or heals (false) the link, on top of the scheduled partitions.
    pub fn set_partitioned(&self, cut: bool) {
        self.shared.cut.store(cut, Ordering::SeqCst);
    }

    /// Counters.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }
}

fn lock(m: &Mutex<Sched>) -> std::sync::MutexGuard<'_, Sched> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Impairs one datagram travelling in direction `dir` and queues it.
fn admit(s: &Shared, dir: usize, bytes: Vec<u8>, via: Arc<UdpSocket>, to: SocketAddr) {
    let now = Instant::now();
    let since = now - s.start;
    if s.cut.load(Ordering::SeqCst)
        || s.imp
            .partitions
            .iter()
            .any(|(a, b)| since >= *a && since < *b)
    {
        s.stats.partitioned.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut q = lock(&s.queue);
    if q.rng.chance(s.imp.loss) {
        s.stats.lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut at = now;
    if s.imp.rate_bytes_per_s > 0 {
        let tx = Duration::from_secs_f64(bytes.len() as f64 / s.imp.rate_bytes_per_s as f64);
        let start = q.busy[dir].max(now);
        q.busy[dir] = start + tx;
        at = start + tx;
    }
    let jitter = if s.imp.jitter.is_zero() {
        Duration::ZERO
    } else {
        s.imp.jitter.mul_f64(q.rng.unit())
    };
    at += s.imp.latency + jitter;
    q.seq += 1;
    let seq = q.seq;
    q.heap.push(Packet {
        at,
        seq,
        bytes,
        via,
        to,
    });
    drop(q);
    s.wake.notify_all();
}

fn sender(s: &Shared) {
    let mut q = lock(&s.queue);
    while !s.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        match q.heap.peek() {
            Some(p) if p.at <= now => {
                let p = q.heap.pop().expect("peeked");
                drop(q);
                if p.via.send_to(&p.bytes, p.to).is_ok() {
                    s.stats.relayed.fetch_add(1, Ordering::Relaxed);
                }
                q = lock(&s.queue);
            }
            Some(p) => {
                let wait = p.at - now;
                q = s
                    .wake
                    .wait_timeout(q, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            None => {
                q = s
                    .wake
                    .wait_timeout(q, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }
}

fn front_loop(s: &Arc<Shared>, front: &Arc<UdpSocket>, target: SocketAddr) {
    let mut upstreams: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
    let mut buf = vec![0u8; 65_536];
    while !s.stop.load(Ordering::SeqCst) {
        let Ok((n, client)) = front.recv_from(&mut buf) else {
            continue;
        };
        let up = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
                    continue;
                };
                let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
                let sock = Arc::new(sock);
                upstreams.insert(client, sock.clone());
                let (s2, f2, u2) = (s.clone(), front.clone(), sock.clone());
                std::thread::spawn(move || back_loop(&s2, &u2, &f2, client));
                sock
            }
        };
        admit(s, 0, buf[..n].to_vec(), up, target);
    }
}

fn back_loop(s: &Shared, up: &UdpSocket, front: &Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    while !s.stop.load(Ordering::SeqCst) {
        if let Ok((n, _)) = up.recv_from(&mut buf) {
            admit(s, 1, buf[..n].to_vec(), front.clone(), client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_both_ways_with_delay_and_cuts() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let proxy = Proxy::start(
            server.local_addr().unwrap(),
            Impairment {
                latency: Duration::from_millis(30),
                ..Impairment::default()
            },
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let t0 = Instant::now();
        client.send_to(b"ping", proxy.addr()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(t0.elapsed() >= Duration::from_millis(30));
        server.send_to(b"pong", from).unwrap();
        let (n, back) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(back, proxy.addr());
        assert!(t0.elapsed() >= Duration::from_millis(60));

        proxy.set_partitioned(true);
        client.send_to(b"lost", proxy.addr()).unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            server.recv_from(&mut buf).is_err(),
            "a cut link delivers nothing"
        );
        assert_eq!(proxy.stats().partitioned.load(Ordering::Relaxed), 1);
        proxy.set_partitioned(false);
        client.send_to(b"again", proxy.addr()).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (n, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
    }
}
