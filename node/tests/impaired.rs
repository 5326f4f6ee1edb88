//! Second tier of the simulator issue: real `fieldmesh` processes on 127.0.0.1, talking
//! QUIC through the project's own UDP impairment proxy (latency, jitter, loss, rate, a
//! partition), must reach the same state the simulator promises: every message on every
//! node exactly once, identical views, nothing lost across the partition.

mod common;
use common::{TestNode, wait_until};
use fieldmesh_sim::impair::{Impairment, Proxy};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

/// The UDP port of a QUIC multiaddr.
fn udp_port(addr: &str) -> u16 {
    let parts: Vec<&str> = addr.split('/').collect();
    let i = parts
        .iter()
        .position(|p| *p == "udp")
        .expect("a udp multiaddr");
    parts[i + 1].parse().expect("a port")
}

/// The same multiaddr (peer id included) but through the proxy.
fn via(addr: &str, proxy: &Proxy) -> String {
    addr.replace(
        &format!("/udp/{}/", udp_port(addr)),
        &format!("/udp/{}/", proxy.addr().port()),
    )
}

fn radio(seed: u64) -> Impairment {
    Impairment {
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        loss: 0.03,
        rate_bytes_per_s: 100_000,
        seed,
        ..Impairment::default()
    }
}

#[test]
fn real_nodes_converge_through_lossy_links_and_a_partition() {
    let (a, b, c) = (
        TestNode::init("alpha"),
        TestNode::init("bravo"),
        TestNode::init("charlie"),
    );
    let ch = a.ok(&["channel", "create", "company-net"]);
    let db = b.start_daemon_with(&["--listen", QUIC]);
    let b_addr = db.addr("quic");
    let target: SocketAddr = format!("127.0.0.1:{}", udp_port(&b_addr)).parse().unwrap();
    let ab = Proxy::start(target, radio(1)).unwrap();
    let cb = Proxy::start(target, radio(2)).unwrap();
    let da = a.start_daemon_with(&["--peer", &via(&b_addr, &ab)]);
    let dc = c.start_daemon_with(&["--peer", &via(&b_addr, &cb)]);
    wait_until(60, "the channel on C, through two impaired links", || {
        c.run(&["read", &ch]).status.success()
    });

    // C is cut off; both sides keep posting.
    cb.set_partitioned(true);
    let mut posted = Vec::new();
    for i in 0..10 {
        posted.push(a.ok(&["post", &ch, &format!("alpha report {i}")]));
    }
    posted.push(a.ok(&["post", &ch, "contact east", "--precedence", "flash"]));
    for i in 0..5 {
        posted.push(c.ok(&["post", &ch, &format!("charlie report {i}")]));
    }
    wait_until(60, "alpha's posts on B", || b.read_json(&ch).len() >= 11);
    std::thread::sleep(Duration::from_secs(2));
    let on_c = c.read_json(&ch);
    assert_eq!(
        on_c.len(),
        5,
        "nothing crosses a partitioned link: C holds only its own posts"
    );
    assert!(cb.stats().partitioned.load(Ordering::Relaxed) > 0);

    cb.set_partitioned(false);
    for n in [&a, &b, &c] {
        wait_until(120, "every message on every node after the heal", || {
            n.read_json(&ch).len() >= posted.len()
        });
    }
    let views: Vec<Vec<serde_json::Value>> =
        [&a, &b, &c].iter().map(|n| n.read_json(&ch)).collect();
    assert_eq!(views[0].len(), posted.len(), "every message exactly once");
    assert_eq!(views[0], views[1], "A and B hold identical views");
    assert_eq!(views[1], views[2], "B and C hold identical views");
    let mut ids: Vec<&str> = views[0].iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want: Vec<&str> = posted.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(ids, want);
    // The links really were bad.
    let lost = ab.stats().lost.load(Ordering::Relaxed) + cb.stats().lost.load(Ordering::Relaxed);
    let relayed =
        ab.stats().relayed.load(Ordering::Relaxed) + cb.stats().relayed.load(Ordering::Relaxed);
    println!("impaired links: {relayed} datagrams relayed, {lost} dropped by loss");
    assert!(
        lost > 0,
        "the proxies dropped nothing: the test did not test loss"
    );
    for d in [da, db, dc] {
        d.stop();
    }
}
