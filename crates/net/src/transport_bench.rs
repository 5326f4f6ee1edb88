//! The transport alone, for `fieldmesh bench bulk`: two minimal swarms on 127.0.0.1 (our
//! QUIC transport, a libp2p stream negotiated by multistream-select, nothing else) move
//! length-prefixed frames of an attachment chunk's size from one to the other, the
//! receiver reading each frame into its own buffer as the bulk link does. Neither side
//! stores, verifies or acknowledges anything, so the time set against raw quinn's is
//! what libp2p and our transport cost, and the time set against the mesh's is what the
//! node's own pipeline costs.

use crate::quic::{Config, QuicTransport};
use futures_util::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, identity::Keypair};
use std::time::{Duration, Instant};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/fieldmesh/bench-stream/1");

/// Why the measurement could not run.
#[derive(Debug, thiserror::Error)]
#[error("transport benchmark: {0}")]
pub struct BenchError(String);

/// A swarm's polling task, stopped when the measurement ends however it ends.
struct Polling(tokio::task::JoinHandle<()>);

impl Drop for Polling {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

fn swarm() -> Result<Swarm<libp2p_stream::Behaviour>, BenchError> {
    let key = Keypair::generate_ed25519();
    let quic = QuicTransport::new(&key, Config::default()).map_err(err)?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| quic)
        .map_err(err)?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build())
}

/// Moves `bytes` in frames of `frame` bytes (each behind a 4-byte length) over one stream
/// and returns the time from the open stream to the receiver's last byte.
pub async fn stream_throughput(bytes: usize, frame: usize) -> Result<Duration, BenchError> {
    let frame = frame.max(1);
    let mut server = swarm()?;
    let mut client = swarm()?;
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(PROTOCOL)
        .map_err(err)?;
    server
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().map_err(err)?)
        .map_err(err)?;
    let addr: Multiaddr = loop {
        match server.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => break address,
            SwarmEvent::ListenerError { error, .. } => return Err(err(error)),
            _ => {}
        }
    };
    let server_id = *server.local_peer_id();
    let _server = Polling(tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    }));
    client.dial(addr).map_err(err)?;
    loop {
        match client.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => break,
            SwarmEvent::OutgoingConnectionError { error, .. } => return Err(err(error)),
            _ => {}
        }
    }
    let mut control = client.behaviour().new_control();
    let _client = Polling(tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    }));
    let receiver = tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.ok_or_else(|| err("no stream"))?;
        // The bulk link's own frame reader, so that both sides read alike.
        let oversized = std::sync::atomic::AtomicU64::new(0);
        let mut total = 0usize;
        loop {
            match crate::protocol::read_frame(&mut stream, usize::MAX, &oversized).await {
                Ok(frame) => total += frame.len(),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(err(e)),
            }
        }
        Ok::<_, BenchError>((total, Instant::now()))
    });
    let mut stream = control
        .open_stream(server_id, PROTOCOL)
        .await
        .map_err(err)?;
    let start = Instant::now();
    let chunk: Vec<u8> = (0..frame).map(|i| (i * 7) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(frame);
        stream
            .write_all(&u32::try_from(n).map_err(err)?.to_be_bytes())
            .await
            .map_err(err)?;
        stream.write_all(&chunk[..n]).await.map_err(err)?;
        left -= n;
    }
    stream.close().await.map_err(err)?;
    let (got, end) = receiver.await.map_err(err)??;
    if got != bytes {
        return Err(err(format!("moved {got} of {bytes} bytes")));
    }
    Ok(end.duration_since(start))
}

#[cfg(test)]
mod tests {
    /// Real sockets on 127.0.0.1: every byte arrives, in frames of any size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn moves_every_byte_over_a_real_connection() {
        let t = super::stream_throughput(3 * 1024 * 1024 + 5, 48 * 1024)
            .await
            .expect("transfer");
        assert!(t > std::time::Duration::ZERO);
    }
}
