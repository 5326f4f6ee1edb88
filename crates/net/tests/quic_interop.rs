//! Our QUIC transport against libp2p's own (`libp2p-quic`), each dialling the other over
//! real sockets on 127.0.0.1: the protocol is the standard one, so other libp2p
//! implementations connect (a ping each way proves the handshake, the identities and a
//! stream in both directions). And a dial that reaches the wrong identity fails.

use futures_util::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, ping};
use std::time::Duration;

type Node = Swarm<ping::Behaviour>;

fn behaviour() -> ping::Behaviour {
    ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(100)))
}

fn ours() -> Node {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            fieldmesh_net::quic::QuicTransport::new(key, Default::default()).expect("transport")
        })
        .expect("transport")
        .with_behaviour(|_| behaviour())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

fn libp2p_quic() -> Node {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            libp2p_quic::tokio::Transport::new(libp2p_quic::Config::new(key))
        })
        .expect("transport")
        .with_behaviour(|_| behaviour())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

async fn listen(node: &mut Node) -> Multiaddr {
    node.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr"))
        .expect("listen");
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = node.select_next_some().await {
            return address;
        }
    }
}

/// `dialer` dials `listener`; both run until each has a successful ping from the other,
/// naming the other's identity.
async fn ping_both_ways(mut dialer: Node, mut listener: Node) {
    let addr = listen(&mut listener).await;
    let (dialer_id, listener_id) = (*dialer.local_peer_id(), *listener.local_peer_id());
    dialer
        .dial(addr.with(Protocol::P2p(listener_id)))
        .expect("dial");
    let (mut dialer_pinged, mut listener_pinged) = (false, false);
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while !(dialer_pinged && listener_pinged) {
        tokio::select! {
            ev = dialer.select_next_some() => match ev {
                SwarmEvent::Behaviour(ping::Event { peer, result: Ok(_), .. }) => {
                    assert_eq!(peer, listener_id);
                    dialer_pinged = true;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                _ => {}
            },
            ev = listener.select_next_some() => match ev {
                SwarmEvent::Behaviour(ping::Event { peer, result: Ok(_), .. }) => {
                    assert_eq!(peer, dialer_id);
                    listener_pinged = true;
                }
                SwarmEvent::IncomingConnectionError { error, .. } => panic!("incoming connection failed: {error}"),
                _ => {}
            },
            _ = &mut deadline => panic!("no ping both ways within 30 s (dialer {dialer_pinged}, listener {listener_pinged})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_quic_dials_our_transport() {
    ping_both_ways(libp2p_quic(), ours()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_transport_dials_libp2p_quic() {
    ping_both_ways(ours(), libp2p_quic()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_transport_dials_our_transport() {
    ping_both_ways(ours(), ours()).await;
}

/// Dialling an address with another node's identity in it: the TLS handshake proves who
/// answered, so the dial fails and no connection is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_reaches_another_identity_fails() {
    let mut listener = ours();
    let mut dialer = ours();
    let addr = listen(&mut listener).await;
    let someone_else = PeerId::random();
    dialer
        .dial(addr.with(Protocol::P2p(someone_else)))
        .expect("dial");
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = dialer.select_next_some() => match ev {
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    assert_eq!(peer_id, Some(someone_else));
                    let text = error.to_string();
                    assert!(
                        text.contains(&listener.local_peer_id().to_string()) || text.to_lowercase().contains("peer"),
                        "unexpected error: {text}"
                    );
                    break;
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    panic!("connected to {peer_id} though {someone_else} was dialled")
                }
                _ => {}
            },
            _ = listener.select_next_some() => {}
            _ = &mut deadline => panic!("the dial neither failed nor connected within 30 s"),
        }
    }
    assert!(!dialer.is_connected(listener.local_peer_id()));
}

/// Path MTU discovery sends one probe, straight to the configured bound, instead of a
/// binary search from 1,200 bytes (three probes to reach 1,300, four to reach 1,452): a
/// brief meeting does not spend its airtime measuring the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_probe_takes_the_path_mtu_to_its_bound() {
    for probe in [1452u16, 1300] {
        let config = fieldmesh_net::quic::Config {
            mtu_probe: probe,
            ..Default::default()
        };
        let make = |config: fieldmesh_net::quic::Config| {
            let mut wire = None;
            let node = SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_other_transport(|key| {
                    let t =
                        fieldmesh_net::quic::QuicTransport::new(key, config).expect("transport");
                    wire = Some(t.endpoints());
                    t
                })
                .expect("transport")
                .with_behaviour(|_| behaviour())
                .expect("behaviour")
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
                .build();
            (node, wire.expect("built"))
        };
        let (mut dialer, wire) = make(config.clone());
        let (mut listener, _) = make(config);
        let addr = listen(&mut listener).await;
        let listener_id = *listener.local_peer_id();
        dialer
            .dial(addr.with(Protocol::P2p(listener_id)))
            .expect("dial");
        let run = |mut n: Node| async move {
            loop {
                n.select_next_some().await;
            }
        };
        let tasks = [tokio::spawn(run(dialer)), tokio::spawn(run(listener))];
        let start = std::time::Instant::now();
        while wire.wire(&listener_id).mtu != probe {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "path MTU {} after 20 s, probing for {probe}",
                wire.wire(&listener_id).mtu
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Lost probes are sent again: on loopback none is lost.
        assert_eq!(wire.wire(&listener_id).mtu_probes, 1, "probing for {probe}");
        for t in tasks {
            t.abort();
        }
    }
}
