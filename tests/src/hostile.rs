//! A hostile peer: connects to a node over libp2p and sends garbage, oversized and forged
//! frames through the real sync protocol. Used by the multi-process tests.

use fieldmesh_net::protocol::{FrameCodec, PROTOCOL};
use futures_util::StreamExt;
pub use libp2p::identity::Keypair;
use libp2p::{Multiaddr, request_response, swarm::SwarmEvent};
use std::time::Duration;

/// What the attack saw.
#[derive(Debug, Default)]
pub struct AttackReport {
    /// Requests sent.
    pub sent: usize,
    /// Answers received.
    pub answered: usize,
    /// Requests that failed (stream reset, connection closed by the target).
    pub failed: usize,
    /// Whether the target closed the connection.
    pub disconnected: bool,
}

/// A swarm of identity `key` with QUIC and TCP and the given behaviour, dialling
/// `target` (call from inside a tokio runtime). Its QUIC is libp2p's own transport
/// (`libp2p-quic`), not the node's: the attacker is another libp2p implementation.
fn attacker<B: libp2p::swarm::NetworkBehaviour>(
    key: Keypair,
    target: Multiaddr,
    behaviour: impl FnOnce() -> B,
) -> libp2p::Swarm<B> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_other_transport(|key| {
            libp2p_quic::tokio::Transport::new(libp2p_quic::Config::new(key))
        })
        .expect("quic")
        .with_behaviour(|_| behaviour())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.dial(target).expect("dial");
    swarm
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens `n` connections to `target` at once, each from a new identity, and returns how
/// many the target still holds open after `secs` seconds.
pub fn crowd(target: Multiaddr, n: usize, secs: u64) -> usize {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    runtime().block_on(async move {
        let mut held = Vec::new();
        for _ in 0..n {
            let up = Arc::new(AtomicBool::new(false));
            held.push(up.clone());
            let mut swarm = attacker(
                Keypair::generate_ed25519(),
                target.clone(),
                libp2p::ping::Behaviour::default,
            );
            tokio::spawn(async move {
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { .. } => {
                            up.store(true, Ordering::SeqCst)
                        }
                        SwarmEvent::ConnectionClosed {
                            num_established: 0, ..
                        } => up.store(false, Ordering::SeqCst),
                        _ => {}
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        held.iter().filter(|u| u.load(Ordering::SeqCst)).count()
    })
}

/// Sends each of `frames` as a sync request to `target` (oversized frames included: the
/// attacker's codec has no cap), then waits up to `secs` for the outcome.
pub fn attack(target: Multiaddr, frames: Vec<Vec<u8>>, secs: u64) -> AttackReport {
    attack_as(Keypair::generate_ed25519(), target, frames, secs)
}

/// [`attack`] from a given identity (the same attacker coming back).
pub fn attack_as(key: Keypair, target: Multiaddr, frames: Vec<Vec<u8>>, secs: u64) -> AttackReport {
    runtime().block_on(async move {
        let mut swarm = attacker(key, target, || {
            request_response::Behaviour::with_codec(
                FrameCodec::new(64 << 20),
                [(PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(secs)),
            )
        });
        let mut report = AttackReport::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut pending = 0usize;
        let mut frames = Some(frames);
        loop {
            let ev = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(ev) => ev,
                Err(_) => break,
            };
            match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for f in frames.take().unwrap_or_default() {
                        swarm.behaviour_mut().send_request(&peer_id, f);
                        report.sent += 1;
                        pending += 1;
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => {
                    report.answered += 1;
                    pending -= 1;
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    report.failed += 1;
                    pending -= 1;
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => report.disconnected = true,
                _ => {}
            }
            if report.sent > 0 && pending == 0 {
                break;
            }
        }
        report
    })
}

/// Opens a bulk stream (`/fieldmesh/bulk/1`) to `target` and writes each of `frames` on
/// it, length-prefixed, with no cap (an oversized frame ends the stream, so put it last).
/// `answered` is the last cumulative acknowledgement read back: how many frames the
/// target handled.
pub fn attack_bulk(target: Multiaddr, frames: Vec<Vec<u8>>, secs: u64) -> AttackReport {
    attack_link(
        Keypair::generate_ed25519(),
        fieldmesh_net::BULK_PROTOCOL,
        target,
        frames,
        secs,
    )
}

/// As [`attack_bulk`], as `key`, on the link of `protocol` (the bulk or the urgent one).
pub fn attack_link(
    key: Keypair,
    protocol: libp2p::StreamProtocol,
    target: Multiaddr,
    frames: Vec<Vec<u8>>,
    secs: u64,
) -> AttackReport {
    use futures_util::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async move {
        let mut swarm = attacker(key, target, libp2p_stream::Behaviour::new);
        let mut control = swarm.behaviour().new_control();
        let mut report = AttackReport::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        // Drive the swarm until connected, then keep driving it in the background.
        let peer = loop {
            match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) => break peer_id,
                Ok(_) => {}
                Err(_) => return report,
            }
        };
        let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut closed_tx = Some(closed_tx);
            loop {
                if let SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } = swarm.select_next_some().await
                    && let Some(tx) = closed_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let Ok(Ok(stream)) =
            tokio::time::timeout_at(deadline, control.open_stream(peer, protocol)).await
        else {
            return report;
        };
        let (mut r, mut w) = stream.split();
        for f in frames {
            let mut buf = (f.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(&f);
            if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                report.failed += 1;
                break;
            }
            report.sent += 1;
        }
        let mut ack = [0u8; 8];
        loop {
            tokio::select! {
                read = tokio::time::timeout_at(deadline, r.read_exact(&mut ack)) => match read {
                    Ok(Ok(())) => {
                        report.answered = u64::from_be_bytes(ack) as usize;
                        if report.answered >= report.sent {
                            break;
                        }
                    }
                    _ => break,
                },
                _ = &mut closed_rx => {
                    report.disconnected = true;
                    break;
                }
            }
        }
        report
    })
}
