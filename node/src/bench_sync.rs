//! `fieldmesh bench sync`: the sync figures, each next to its reference, in one run.

use crate::client::Client;
use crate::local::LocalNode;
use crate::ops::{Ops, PostRequest};
use anyhow::{Result, bail};
use automerge::sync::SyncDoc;
use fieldmesh_core::{EnvelopeId, Hlc, Precedence, sha256};
use fieldmesh_crypto::{NodeKey, PayloadKey, open_envelope};
use fieldmesh_sync::ranger::Reconciler;
use fieldmesh_sync::{Index, Meta};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn id(n: u64) -> EnvelopeId {
    EnvelopeId(sha256(&n.to_be_bytes()))
}

/// Reconciliation bytes and round trips between a store of `size` and one with `diff` more.
fn reconcile_cost(r: Reconciler, size: u64, diff: u64) -> (usize, usize) {
    let meta = Meta {
        precedence: Precedence::Routine,
        size: 600,
        hlc: Hlc(0),
    };
    let mut a = Index::default();
    let mut b = Index::default();
    for n in 0..size {
        a.insert(id(n), meta);
        b.insert(id(n), meta);
    }
    for n in 0..diff {
        b.insert(id(10_000_000 + n), meta);
    }
    let (a_needs, _, rounds, bytes) = r.run_local_measured(&a, &b, 64).expect("valid");
    assert_eq!(
        a_needs.len() as u64,
        diff,
        "reconciliation found every difference"
    );
    (bytes, rounds)
}

/// Automerge's own sync between a document of `n` changes and one missing the last `diff`.
fn automerge_cost(changes: &[Vec<u8>], diff: usize) -> Result<(usize, usize, usize)> {
    let mut a = automerge::Automerge::new();
    let mut b = automerge::Automerge::new();
    let parsed: Vec<automerge::Change> = changes
        .iter()
        .map(|c| automerge::Change::from_bytes(c.clone()))
        .collect::<Result<_, _>>()?;
    a.apply_changes(parsed.clone())?;
    b.apply_changes(parsed[..parsed.len() - diff].to_vec())?;
    let payload: usize = changes[changes.len() - diff..].iter().map(Vec::len).sum();
    let (mut sa, mut sb) = (automerge::sync::State::new(), automerge::sync::State::new());
    let mut bytes = 0;
    let mut trips = 0;
    loop {
        let m1 = a.generate_sync_message(&mut sa);
        let m2 = b.generate_sync_message(&mut sb);
        if m1.is_none() && m2.is_none() {
            break;
        }
        trips += 1;
        if let Some(m) = m1 {
            let e = m.encode();
            bytes += e.len();
            b.receive_sync_message(&mut sb, automerge::sync::Message::decode(&e)?)?;
        }
        if let Some(m) = m2 {
            let e = m.encode();
            bytes += e.len();
            a.receive_sync_message(&mut sa, automerge::sync::Message::decode(&e)?)?;
        }
        if trips > 1000 {
            bail!("automerge sync did not finish");
        }
    }
    if a.get_heads() != b.get_heads() {
        bail!("automerge sync did not converge");
    }
    Ok((bytes, payload, trips))
}

pub fn run(store: usize, am_changes: usize, latency: usize) -> Result<()> {
    println!("== protocol bytes per byte of new payload (physical limit 1.00)");
    println!(
        "(reconciliation messages as encoded, plus each new envelope in its frame; the QUIC \
         and libp2p framing around them is in the measured section below)"
    );
    let key = NodeKey::from_seed([9; 32]);
    let (_, envs) = crate::bench::posts(&key, (store + 10_000).max(am_changes.max(10_001)))?;
    let open = PayloadKey::open_compartment();
    let changes: Vec<Vec<u8>> = envs
        .iter()
        .map(|e| open_envelope(e, &open).map(|p| p[1..].to_vec()))
        .collect::<Result<_, _>>()?;
    let avg_env = envs.iter().map(|e| e.encoded_len()).sum::<usize>() / envs.len();
    let avg_payload = changes.iter().map(Vec::len).sum::<usize>() / changes.len();
    println!(
        "envelopes average {avg_env} bytes for {avg_payload} bytes of Automerge change (the payload)"
    );
    println!(
        "{:>7} | {:>34} | {:>40}",
        "diff",
        format!("fieldmesh (coded symbols), stores of {store}"),
        format!("automerge sync, docs of {am_changes} changes")
    );
    let mut coded_rows = Vec::new();
    for diff in [1usize, 100, 10_000] {
        let (rbytes, rtrips) = reconcile_cost(Reconciler::default(), store as u64, diff as u64);
        let ranges = Reconciler {
            symbols: 0,
            ..Reconciler::default()
        };
        let (cbytes, ctrips) = reconcile_cost(ranges, store as u64, diff as u64);
        let coded_env = (cbytes + diff * (avg_env + 6)) as f64 / (diff * avg_env) as f64;
        let coded_payload = (cbytes + diff * (avg_env + 6)) as f64 / (diff * avg_payload) as f64;
        coded_rows.push(format!(
            "{diff:>7} | {coded_payload:>6.3}x payload ({coded_env:.3}x envelope), {ctrips:>2} RT"
        ));
        // Each new envelope travels as one frame: 4-byte length, 2-byte frame header.
        let transfer = diff * (avg_env + 6);
        let ours = (rbytes + transfer) as f64 / (diff * avg_payload) as f64;
        let vs_env = (rbytes + transfer) as f64 / (diff * avg_env) as f64;
        let am_docs = &changes[..am_changes.min(changes.len())];
        let am = if diff < am_docs.len() {
            let (abytes, apayload, atrips) = automerge_cost(am_docs, diff)?;
            format!(
                "{:>6.3}x payload, {:>3} round trips",
                abytes as f64 / apayload as f64,
                atrips
            )
        } else {
            "n/a".into()
        };
        println!(
            "{diff:>7} | {ours:>6.3}x payload ({vs_env:.3}x envelope), {rtrips:>2} RT | {am:>40}"
        );
    }
    println!(
        "(fieldmesh adds per envelope a signed header, AEAD tag and nonce: the payload ratio includes them)"
    );
    println!(
        "for comparison, range fingerprints alone (Reconciler {{ symbols: 0 }}, last session's default):"
    );
    for row in coded_rows {
        println!("{row}");
    }

    println!(
        "\n== measured on the wire: two daemons meet over QUIC on 127.0.0.1, stores of {store}, one holding the differences"
    );
    let payload_of = |e: &fieldmesh_core::Envelope| -> Result<usize> {
        Ok(open_envelope(e, &open)?.len().saturating_sub(1))
    };
    measured_on_quic(&envs, store, &payload_of)?;

    println!("\n== post-to-visible latency between two daemons on 127.0.0.1 (QUIC)");
    latency_bench(latency)
}

/// Two daemons whose stores share `size` envelopes, one holding `diff` more, meet over
/// QUIC; the UDP bytes between them (both ways, everything included: QUIC, TLS
/// handshake, libp2p identify and gossip, reconciliation, the envelopes) are read from
/// their connections. A meeting with no difference measures what meeting alone costs.
fn measured_on_quic(
    envs: &[fieldmesh_core::Envelope],
    size: usize,
    payload_of: &dyn Fn(&fieldmesh_core::Envelope) -> Result<usize>,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = crate::bench::tempfile_dir()?;
    let profile = fieldmesh_profiles::Profile::builtin("ci-loopback")?;
    println!(
        "{:>7} | {:>12} | {:>10} | {:>11} | {:>26} | {:>16} | {:>6}",
        "diff",
        "wire bytes",
        "x payload",
        "x envelopes",
        "past meeting: x pl. / x env.",
        "datagrams (avg)",
        "secs"
    );
    let mut meeting = None;
    for diff in [0usize, 1, 100, 10_000] {
        if size + diff > envs.len() {
            bail!("{} envelopes generated, {} needed", envs.len(), size + diff);
        }
        let run_dir = dir.join(format!("diff-{diff}"));
        std::fs::create_dir_all(&run_dir)?;
        let mut a = LocalNode::init(&exe, &run_dir, "a", "ci-loopback")?;
        let mut b = LocalNode::init(&exe, &run_dir, "b", "ci-loopback")?;
        for (node, n) in [(&a, size + diff), (&b, size)] {
            let store = crate::node::Node::open_store(&node.home.store_path(), &profile)?;
            for batch in envs[..n].chunks(2_000) {
                fieldmesh_store::Store::put_batch(store.as_ref(), batch)?;
            }
        }
        let ra = a
            .start(&["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])?
            .clone();
        let t = Instant::now();
        let rb = b.start(&["--peer", &a.listen("quic")?])?.clone();
        let (ca, cb) = (Client::new(&ra.http), Client::new(&rb.http));
        let want = size + diff;
        // Caught up, and each side has finished a reconciliation session with the other.
        let done = |c: &Client, n: usize| {
            c.net().is_ok_and(|v| {
                v.envelopes >= n
                    && v.peers
                        .iter()
                        .any(|p| p.connected && p.sessions + p.sessions_answered > 0)
            })
        };
        while !(done(&cb, want) && done(&ca, want)) {
            if t.elapsed() > Duration::from_secs(300) {
                bail!("B never caught up ({diff} differences)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let secs = t.elapsed().as_secs_f64();
        // Let the last acknowledgements and the sessions' closing messages go out.
        std::thread::sleep(Duration::from_millis(500));
        let view = ca.net()?;
        let wire: u64 = view
            .peers
            .iter()
            .map(|p| p.wire_bytes_sent + p.wire_bytes_received)
            .sum();
        let datagrams: u64 = view
            .peers
            .iter()
            .map(|p| p.wire_datagrams_sent + p.wire_datagrams_received)
            .sum();
        let datagrams = format!("{datagrams} ({})", wire / datagrams.max(1));
        let new = &envs[size..size + diff];
        let payload: usize = new.iter().map(payload_of).sum::<Result<usize>>()?;
        let env_bytes: usize = new.iter().map(|e| e.encoded_len()).sum();
        if diff == 0 {
            meeting = Some(wire);
            println!(
                "{diff:>7} | {wire:>12} | {:>10} | {:>11} | {:>26} | {datagrams:>16} | {secs:>6.2}",
                "-", "-", "-"
            );
        } else {
            let past = wire.saturating_sub(meeting.unwrap_or(0));
            println!(
                "{diff:>7} | {wire:>12} | {:>9.3}x | {:>10.3}x | {:>26} | {datagrams:>16} | {secs:>6.2}",
                wire as f64 / payload as f64,
                wire as f64 / env_bytes as f64,
                format!(
                    "{:.3}x / {:.3}x",
                    past as f64 / payload as f64,
                    past as f64 / env_bytes as f64
                ),
            );
        }
        drop(cb);
        a.stop();
        b.stop();
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    println!(
        "(x payload: per byte of the new Automerge changes; x envelopes: per byte of the new \
         envelopes as stored; past meeting: the bytes beyond a meeting with no difference)"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn latency_bench(n: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("fieldmesh-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut na = LocalNode::init(&exe, &dir, "a", "ci-loopback")?;
    let mut nb = LocalNode::init(&exe, &dir, "b", "ci-loopback")?;
    let ra = na
        .start(&["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])?
        .clone();
    let rb = nb.start(&["--peer", &na.listen("quic")?])?.clone();
    let a = Client::new(&ra.http);
    let b = Client::new(&rb.http);
    let ch = a.create_channel("bench", None)?.id.to_hex();
    let t = Instant::now();
    while b.read(&ch).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("channel never reached B");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // B's event stream: record when each message id becomes visible.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut sock = std::net::TcpStream::connect(&rb.http)?;
    write!(
        sock,
        "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(sock).lines() {
                let Ok(line) = line else { break };
                if let Some(d) = line.strip_prefix("data: ")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(d)
                    && let Some(id) = v["message"]["id"].as_str()
                {
                    seen.lock()
                        .expect("lock")
                        .entry(id.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let p = a.post(
            &ch,
            &PostRequest {
                text: format!("latency probe {i}"),
                precedence: Some(Precedence::Immediate),
                reply_to: None,
                attachments: vec![],
            },
        )?;
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if let Some(t) = seen.lock().expect("lock").get(&p.id) {
                lat.push(t.duration_since(t0));
                break;
            }
            if Instant::now() > deadline {
                bail!("message {} never became visible on B", p.id);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    lat.sort();
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "{n} posts: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (includes the API call and the durable write on A)",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    drop((nb, na));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
