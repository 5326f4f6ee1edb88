//! The mesh with real processes on 127.0.0.1: QUIC and TCP, relaying, catch-up.

mod common;
use common::{TestNode, wait_until};

const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
const TCP: &str = "/ip4/127.0.0.1/tcp/0";

/// A–B–C in a line; A and C are never connected. A message posted on A is read on C,
/// in a channel C has never seen, by id and by name.
#[test]
fn a_message_crosses_a_relay_between_nodes_that_never_meet() {
    let (a, b, c) = (
        TestNode::init("alpha"),
        TestNode::init("bravo"),
        TestNode::init("charlie"),
    );
    let ch = a.ok(&["channel", "create", "company-net"]);
    let db = b.start_daemon_with(&["--listen", QUIC, "--listen", TCP]);
    let da = a.start_daemon_with(&["--peer", &db.addr("quic")]);
    let dc = c.start_daemon_with(&["--peer", &db.addr("tcp")]);
    let id = a.ok(&[
        "post",
        "company-net",
        "contact front, grid 38S MB 1234 5678",
        "--precedence",
        "flash",
    ]);
    wait_until(30, "the message on C", || {
        let out = c.run(&["read", &ch, "--json"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&id)
    });
    let msgs = c.read_json("company-net");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "contact front, grid 38S MB 1234 5678");
    assert_eq!(msgs[0]["precedence"], "flash");
    // C only ever talked to B.
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["sync-status", "--json"])).unwrap();
    assert_eq!(connected(&status), 1);
    assert_eq!(status["peers"].as_array().unwrap().len(), 1);
    let b_status: serde_json::Value =
        serde_json::from_str(&b.ok(&["sync-status", "--json"])).unwrap();
    assert_eq!(b_status["peers"].as_array().unwrap().len(), 2);
    // And the reply comes back the other way.
    let reply = c.ok(&["post", &ch, "copy, moving to support", "--reply-to", &id]);
    wait_until(30, "the reply on A", || {
        a.read_json(&ch).iter().any(|m| m["id"] == reply.as_str())
    });
    for d in [da, db, dc] {
        d.stop();
    }
}

/// B goes away, A posts 100 messages, B returns: every message arrives exactly once.
#[test]
fn a_returning_node_catches_up_on_everything_it_missed() {
    let (a, b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    let ch = a.ok(&["channel", "create", "logistics"]);
    let da = a.start_daemon_with(&["--listen", QUIC]);
    let peer = da.addr("quic");
    let db = b.start_daemon_with(&["--peer", &peer]);
    wait_until(30, "the channel on B", || {
        b.run(&["read", &ch]).status.success()
    });
    let status_of_a = || -> serde_json::Value {
        serde_json::from_str(&a.ok(&["sync-status", "--json"])).unwrap()
    };
    let peers_of_a = || connected(&status_of_a());
    assert_eq!(peers_of_a(), 1);
    db.stop();
    // B closed its connection on the way out: A sees it leave at once, not after QUIC's
    // 10 s idle timeout (and so takes B's return for a new connection, not a second one).
    wait_until(4, "A to see B leave", || peers_of_a() == 0);
    // B stays listed, with what was exchanged and when it was last heard from.
    let gone = status_of_a()["peers"][0].clone();
    assert_eq!(gone["connected"], false, "{gone}");
    assert!(gone["last_contact_ms"].as_u64().unwrap() > 0, "{gone}");
    assert!(gone["envelopes_sent"].as_u64().unwrap() > 0, "{gone}");
    let sent_before = gone["envelopes_sent"].as_u64().unwrap();

    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(a.ok(&["post", "logistics", &format!("resupply request {i}")]));
    }
    let db = b.start_daemon_with(&["--peer", &peer]);
    wait_until(60, "100 messages on B", || b.read_json(&ch).len() >= 100);
    let got = b.read_json(&ch);
    assert_eq!(got.len(), 100, "every message exactly once");
    let got_ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got_ids, want);
    assert_eq!(a.read_json(&ch), got, "both views are identical");
    // B's return continued its counters on A.
    let back = status_of_a()["peers"][0].clone();
    assert_eq!(back["connected"], true, "{back}");
    assert!(
        back["envelopes_sent"].as_u64().unwrap() >= sent_before + 100,
        "{back}"
    );
    db.stop();
    da.stop();
}

/// Peers with a connection up, in a `sync-status --json` answer.
fn connected(status: &serde_json::Value) -> usize {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true)
        .count()
}

/// The README's first command: the demo runs, converges and says so.
#[test]
fn the_demo_converges() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["--profile", "ci-loopback", "demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all 4 replicas identical: true"),
        "{stdout}"
    );
    assert!(stdout.contains("squad-3 caught up"), "{stdout}");
}

/// A hostile peer sends garbage, oversized and forged frames: each is rejected and
/// counted, none is stored, and the node keeps serving its honest peer.
#[test]
fn hostile_frames_are_rejected_counted_and_service_continues() {
    use fieldmesh_sync::frame::Frame;
    let (a, b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    let ch = a.ok(&["channel", "create", "ops"]);
    a.ok(&["post", "ops", "genuine"]);
    // A genuine envelope to forge from.
    let bundle = a.dir.path().join("b.fmb");
    a.ok(&["bundle", "export", "--out", bundle.to_str().unwrap()]);
    let bytes = std::fs::read(&bundle).unwrap();
    let first_len = u32::from_be_bytes(bytes[9..13].try_into().unwrap()) as usize;
    let genuine = bytes[13..13 + first_len].to_vec();
    let mut bad_sig = genuine.clone();
    *bad_sig.last_mut().unwrap() ^= 1;
    let mut other_author = genuine.clone();
    other_author[80] ^= 0xff;

    let db = b.start_daemon_with(&["--listen", TCP]);
    let da = a.start_daemon_with(&["--peer", &db.addr("tcp")]);
    wait_until(30, "the channel on B", || {
        b.run(&["read", &ch]).status.success()
    });

    let frames = vec![
        vec![0xde, 0xad, 0xbe, 0xef],
        vec![1, 99],
        vec![1, 1, 0xff, 0xff],
        vec![7; 100],
        Frame::Announce(vec![]).encode()[..1].to_vec(),
        Frame::Envelope(bad_sig.clone()).encode(),
        Frame::Envelope(other_author.clone()).encode(),
        vec![0u8; 2 * 1024 * 1024],
    ];
    let n_bad = frames.len() as u64;
    let target: fieldmesh_net::Multiaddr = db.addr("tcp").parse().unwrap();
    let report = fieldmesh_tests::hostile::attack(target.clone(), frames, 20);
    assert_eq!(report.sent as u64, n_bad);
    wait_until(10, "every bad frame counted", || {
        let status: serde_json::Value =
            serde_json::from_str(&b.ok(&["sync-status", "--json"])).unwrap();
        status["rejected"].as_u64().unwrap() >= n_bad
    });

    // The same on the bulk stream, where envelopes travel back to back: a frame that is
    // not an envelope, garbage, forgeries. Each is handled (acknowledged, so the stream
    // keeps flowing), rejected and counted.
    let bulk_frames = vec![
        Frame::Prune(vec![]).encode(),
        vec![0xde, 0xad, 0xbe, 0xef],
        Frame::Envelope(bad_sig.clone()).encode(),
        Frame::Envelope(other_author.clone()).encode(),
    ];
    let n_bulk = bulk_frames.len();
    let report = fieldmesh_tests::hostile::attack_bulk(target.clone(), bulk_frames, 20);
    assert_eq!(report.sent, n_bulk, "{report:?}");
    assert_eq!(
        report.answered, n_bulk,
        "every bulk frame acknowledged: {report:?}"
    );
    // An oversized length prefix ends that stream (it cannot be resynchronised).
    let report =
        fieldmesh_tests::hostile::attack_bulk(target.clone(), vec![vec![0u8; 2 * 1024 * 1024]], 20);
    assert_eq!(report.answered, 0, "{report:?}");
    let n_bad = n_bad + n_bulk as u64 + 1;
    wait_until(10, "every bad bulk frame counted", || {
        let status: serde_json::Value =
            serde_json::from_str(&b.ok(&["sync-status", "--json"])).unwrap();
        status["rejected"].as_u64().unwrap() >= n_bad
    });
    // The urgent link carries IMMEDIATE and FLASH only: a genuine ROUTINE envelope there
    // is handled (acknowledged, nothing lost) but costs its sender a strike, since it
    // would skip the bulk queue's back-pressure.
    let jumper = fieldmesh_tests::hostile::Keypair::generate_ed25519();
    let jumper_id = jumper.public().to_peer_id().to_string();
    let report = fieldmesh_tests::hostile::attack_link(
        jumper,
        fieldmesh_net::URGENT_PROTOCOL,
        target.clone(),
        vec![Frame::Envelope(genuine.clone()).encode()],
        20,
    );
    assert_eq!(report.answered, 1, "{report:?}");
    let listed = |id: &str| {
        let status: serde_json::Value =
            serde_json::from_str(&b.ok(&["sync-status", "--json"])).unwrap();
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == id)
            .cloned()
    };
    wait_until(10, "the queue jumper struck", || {
        listed(&jumper_id).is_some_and(|p| p["strikes"].as_u64().unwrap() == 1)
    });
    // One identity that keeps at it: past ten strikes it is disconnected and banned, and
    // coming back under the same identity gets it nowhere; B lists it as banned.
    let hostile = fieldmesh_tests::hostile::Keypair::generate_ed25519();
    let hostile_id = hostile.public().to_peer_id().to_string();
    let forgeries = vec![Frame::Envelope(bad_sig.clone()).encode(); 12];
    fieldmesh_tests::hostile::attack_as(hostile.clone(), target.clone(), forgeries, 20);
    let banned = || listed(&hostile_id);
    wait_until(10, "the hostile peer banned", || {
        banned().is_some_and(|p| p["banned_until_ms"].as_u64().unwrap() > 0)
    });
    let peer = banned().unwrap();
    assert_eq!(peer["connected"], false, "{peer}");
    assert!(peer["strikes"].as_u64().unwrap() >= 10, "{peer}");
    let again = fieldmesh_tests::hostile::attack_as(
        hostile,
        target.clone(),
        vec![Frame::Envelope(genuine.clone()).encode()],
        10,
    );
    assert_eq!(again.answered, 0, "a banned peer is not served: {again:?}");

    // Still serving: a new message from the honest peer arrives.
    let id = a.ok(&["post", "ops", "still here?", "--precedence", "immediate"]);
    wait_until(30, "the new message on B", || {
        b.read_json(&ch).iter().any(|m| m["id"] == id.as_str())
    });
    let texts: Vec<String> = b
        .read_json(&ch)
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, vec!["genuine", "still here?"]);
    da.stop();
    db.stop();
}

/// Static peers can come from the profile: a node whose profile file names another's
/// address connects to it without `--peer`; a profile naming an address the node cannot
/// use is refused at start.
#[test]
fn a_profile_names_the_peers_to_keep() {
    let (a, mut b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    let ch = a.ok(&["channel", "create", "ops"]);
    let da = a.start_daemon_with(&["--listen", QUIC]);
    let with_peer = |addr: &str| {
        let toml = fieldmesh_profiles::builtin_toml("ci-loopback")
            .unwrap()
            .replace("[sync]\n", &format!("[sync]\npeers = [\"{addr}\"]\n"));
        let path = b.dir.path().join("with-peer.toml");
        std::fs::write(&path, toml).unwrap();
        path.to_str().unwrap().to_owned()
    };
    b.profile = with_peer("/ip4/127.0.0.1/udp/9/quic");
    let err = b.fails(&["run"], 1);
    assert!(err.contains("unsupported address"), "{err}");
    b.profile = with_peer(&da.addr("quic"));
    let db = b.start_daemon_with(&[]);
    wait_until(30, "the channel on B, from the profile's peer", || {
        b.run(&["read", &ch]).status.success()
    });
    db.stop();
    da.stop();
}

/// A crowd of strangers cannot take every connection: past the profile's `max_peers` (8
/// on ci-loopback) inbound connections are refused, and once the crowd is gone a peer
/// connects and syncs as usual.
#[test]
fn inbound_connections_are_capped_at_the_profiles_max_peers() {
    let (a, b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    let ch = a.ok(&["channel", "create", "ops"]);
    let db = b.start_daemon_with(&["--listen", QUIC]);
    let target: fieldmesh_net::Multiaddr = db.addr("quic").parse().unwrap();
    let held = fieldmesh_tests::hostile::crowd(target, 12, 3);
    assert_eq!(held, 8, "12 strangers connected at once, the cap is 8");
    let da = a.start_daemon_with(&["--peer", &db.addr("quic")]);
    wait_until(30, "the channel on B after the crowd left", || {
        b.run(&["read", &ch]).status.success()
    });
    da.stop();
    db.stop();
}

/// A 50 MB attachment: the receiver is killed mid-transfer, comes back, and the transfer
/// resumes where it stopped; the result is byte-identical.
#[test]
fn a_large_attachment_resumes_after_the_receiver_is_killed() {
    let (mut a, mut b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    // Loopback at 8 MiB/s, so that there is a "mid-transfer" to kill the receiver in.
    a.profile = link_profile(&a, 8_388_608);
    b.profile = a.profile.clone();

    let ch = a.ok(&["channel", "create", "imagery"]);
    let (data, msg) = post_attachment(&a, "overhead imagery, grid 38S MB", 50, 42);
    let total = a.read_json(&ch).len() as u64; // 1 message; chunks are counted below
    assert_eq!(total, 1);

    let da = a.start_daemon_with(&["--listen", QUIC]);
    let all: u64 = serde_json::from_str::<serde_json::Value>(&a.ok(&["sync-status", "--json"]))
        .unwrap()["envelopes"]
        .as_u64()
        .unwrap();
    let peer = da.addr("quic");
    let mut db = b.start_daemon_with(&["--peer", &peer]);
    wait_until(60, "part of the attachment on B", || {
        envelopes_held(&b) > all / 5
    });
    db.child.kill().unwrap(); // SIGKILL mid-transfer
    db.child.wait().unwrap();
    let before = held_offline(&b);
    assert!(
        before > 0 && before < all,
        "not mid-transfer: {before} of {all}"
    );

    let db = b.start_daemon_with(&["--peer", &peer]);
    let out = b.dir.path().join("map.out");
    wait_until(120, "the whole attachment on B", || {
        b.run(&["attachment", "get", &msg, "--out", out.to_str().unwrap()])
            .status
            .success()
    });
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    // Resumed, not restarted: after its restart B received (in frame bytes, duplicates
    // included) about what it still lacked, not the whole attachment again.
    let st: serde_json::Value = serde_json::from_str(&b.ok(&["sync-status", "--json"])).unwrap();
    let received: u64 = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bytes_received"].as_u64().unwrap())
        .sum();
    let lacking_bytes = (all - before) * (48 * 1024 + 300);
    assert!(
        received <= lacking_bytes + lacking_bytes / 10,
        "B received {received} B after restart for {lacking_bytes} B it lacked"
    );
    println!(
        "attachment: {all} envelopes; B had {before} when killed; received {received} B after restart for ~{lacking_bytes} B missing"
    );
    db.stop();
    da.stop();
}

/// A chunk damaged in the sender's store (a flipped byte in its value log) cannot be
/// loaded: the bulk link skips it and carries the rest; the receiver reports the
/// attachment incomplete instead of returning damaged bytes; and the sender, restarted,
/// starts, and stops offering the damaged envelope once a read finds it.
#[test]
fn a_chunk_damaged_in_the_senders_store_does_not_stall_the_rest() {
    let (a, b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    a.ok(&["channel", "create", "imagery"]);
    // More chunks than the push window (256), so that the late ones go on the bulk
    // link, which opens while the first window goes by request-response.
    let (_, msg) = post_attachment(&a, "overhead imagery", 16, 7);
    let da = a.start_daemon_with(&["--listen", QUIC]);
    let all = envelopes_held(&a);
    // Damage one byte of a late chunk (the chunks are in the first segment, back to
    // back, in sending order: by then the bulk link is open) while A runs: A still lists
    // the chunk, and cannot load it to send.
    let seg = a.home().join("store").join("vlog").join("00000000.seg");
    flip_byte(&seg, std::fs::metadata(&seg).unwrap().len() - 100_000);
    let db = b.start_daemon_with(&["--peer", &da.addr("quic")]);
    wait_until(60, "every undamaged envelope on B", || {
        envelopes_held(&b) == all - 1
    });
    // The damaged chunk never arrives, and the link keeps carrying: a post made now
    // arrives, and nothing else is missing.
    let late = a.ok(&["post", "imagery", "still here"]);
    wait_until(30, "a later post on B", || {
        String::from_utf8_lossy(&b.run(&["read", "imagery", "--json"]).stdout).contains(&late)
    });
    assert_eq!(
        envelopes_held(&b),
        all,
        "all but the damaged chunk, plus the later post"
    );
    let out = b.dir.path().join("map.out");
    assert_incomplete(&b.run(&["attachment", "get", &msg, "--out", out.to_str().unwrap()]));
    db.stop();
    da.stop();
    // Restarted, A starts and serves. Its index comes from the store's summaries, so the
    // damaged chunk (never read at start) is listed until a read finds the damage; from
    // then on it is not offered.
    let da = a.start_daemon_with(&["--listen", QUIC]);
    assert_eq!(envelopes_held(&a), all + 1, "everything, the later post in");
    let out = a.dir.path().join("map.out");
    assert_incomplete(&a.run(&["attachment", "get", &msg, "--out", out.to_str().unwrap()]));
    wait_until(10, "the damaged chunk no longer offered", || {
        envelopes_held(&a) == all
    });
    da.stop();
}

/// A chunk damaged in the receiver's store after a transfer: read offline, the attachment
/// is refused as incomplete (never returned wrong); after the node's next start, the read
/// that finds the damage again has the chunk asked for again, and replaced by the peer's
/// verified copy.
#[test]
fn a_damaged_chunk_is_healed_from_a_peer() {
    let (a, b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    a.ok(&["channel", "create", "imagery"]);
    let (data, msg) = post_attachment(&a, "overhead imagery", 4, 11);
    let da = a.start_daemon_with(&["--listen", QUIC]);
    let all = envelopes_held(&a);
    let peer = da.addr("quic");
    let db = b.start_daemon_with(&["--peer", &peer]);
    wait_until(60, "the attachment on B", || envelopes_held(&b) == all);
    db.stop();
    damage_value_log(&b);
    let out = b.dir.path().join("map.out");
    let get = |b: &TestNode| b.run(&["attachment", "get", &msg, "--out", out.to_str().unwrap()]);
    assert_incomplete(&get(&b));
    let db = b.start_daemon_with(&["--peer", &peer]);
    wait_until(60, "the attachment healed on B", || {
        get(&b).status.success()
    });
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    assert_eq!(envelopes_held(&b), all, "repaired in place, counted once");
    db.stop();
    da.stop();
}

/// Damage found while the node runs is repaired while it runs: the read that finds it
/// tells the network, which stops offering the envelope, and the next reconciliation
/// fetches it again from the peer.
#[test]
fn a_chunk_damaged_while_running_is_healed_without_a_restart() {
    let (a, b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    a.ok(&["channel", "create", "imagery"]);
    let (data, msg) = post_attachment(&a, "overhead imagery", 4, 12);
    let da = a.start_daemon_with(&["--listen", QUIC]);
    let all = envelopes_held(&a);
    let db = b.start_daemon_with(&["--peer", &da.addr("quic")]);
    wait_until(60, "the attachment on B", || envelopes_held(&b) == all);
    // The disk fails under the running daemon.
    damage_value_log(&b);
    let out = b.dir.path().join("map.out");
    let get = |b: &TestNode| b.run(&["attachment", "get", &msg, "--out", out.to_str().unwrap()]);
    // The first read finds the damage and refuses what it cannot vouch for.
    assert_incomplete(&get(&b));
    wait_until(60, "the attachment healed on the running B", || {
        get(&b).status.success()
    });
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    assert_eq!(envelopes_held(&b), all, "repaired in place, counted once");
    db.stop();
    assert_eq!(held_offline(&b), all);
    da.stop();
}

/// Flips two bytes 8 KiB apart in the middle of a node's value log: at least one is
/// inside a chunk (the zeros between group commits are under 4 KiB).
fn damage_value_log(n: &TestNode) {
    let seg = n.home().join("store").join("vlog").join("00000000.seg");
    let mid = std::fs::metadata(&seg).unwrap().len() / 2;
    flip_byte(&seg, mid);
    flip_byte(&seg, mid + 8192);
}

/// `attachment get` refused the attachment as incomplete (never returned it wrong).
fn assert_incomplete(got: &std::process::Output) {
    assert!(
        !got.status.success(),
        "a damaged or incomplete attachment must not be returned"
    );
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(err.contains("incomplete"), "unclear error: {err}");
}

/// Damages one byte of a file in place (as a failing disk would).
fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

/// Posts `mib` MiB of seeded random bytes as an attachment in `imagery`; returns the
/// bytes and the message id.
fn post_attachment(n: &TestNode, text: &str, mib: usize, seed: u64) -> (Vec<u8>, String) {
    let file = n.dir.path().join("map.bin");
    let mut rng = fieldmesh_tests::Rng(seed);
    let data: Vec<u8> = (0..mib * 1024 * 1024 / 8)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    std::fs::write(&file, &data).unwrap();
    let msg = n.ok(&["post", "imagery", text, "--attach", file.to_str().unwrap()]);
    (data, msg)
}

/// Envelopes a running node holds, as its daemon reports them (0 while it cannot say).
fn envelopes_held(n: &TestNode) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&n.run(&["sync-status", "--json"]).stdout)
        .map(|v| v["envelopes"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// Envelopes in a stopped node's store, read directly.
fn held_offline(n: &TestNode) -> u64 {
    let s = fieldmesh_store::SledStore::open(&n.home().join("store"), None).unwrap();
    fieldmesh_store::Store::len(&s).unwrap()
}

/// On a throttled link, a FLASH posted after 1,000 ROUTINE messages arrives before the
/// routine backlog has drained.
#[test]
fn flash_overtakes_a_routine_backlog_on_a_throttled_link() {
    let (mut a, mut b) = (TestNode::init("alpha"), TestNode::init("bravo"));
    // 5 kB/s: about 8 small envelopes a second, so posting 1,000 outruns the link.
    a.profile = link_profile(&a, 5_000);
    b.profile = a.profile.clone();
    let ch = a.ok(&["channel", "create", "net"]);
    let da = a.start_daemon_with(&["--listen", QUIC]);
    let db = b.start_daemon_with(&["--peer", &da.addr("quic")]);
    wait_until(30, "the channel on B", || {
        b.run(&["read", &ch]).status.success()
    });
    let path = format!("/api/v1/channels/{ch}/messages");
    for i in 0..1000 {
        common::http_post_json(
            &da.http,
            &path,
            &format!("{{\"text\":\"routine report {i}\",\"precedence\":\"routine\"}}"),
        );
    }
    let flash = common::http_post_json(
        &da.http,
        &path,
        "{\"text\":\"FLASH: contact front\",\"precedence\":\"flash\"}",
    );
    let flash_id = serde_json::from_str::<serde_json::Value>(&flash).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut routine_when_flash_arrived = 0;
    wait_until(60, "the FLASH on B", || {
        let msgs = b.read_json(&ch);
        routine_when_flash_arrived = msgs.len().saturating_sub(1);
        msgs.iter().any(|m| m["id"] == flash_id.as_str())
    });
    println!("FLASH arrived with {routine_when_flash_arrived} of 1000 routine messages delivered");
    assert!(
        routine_when_flash_arrived < 900,
        "FLASH waited for the routine backlog: {routine_when_flash_arrived}"
    );
    let st: serde_json::Value = serde_json::from_str(&a.ok(&["sync-status", "--json"])).unwrap();
    assert!(
        st["peers"][0]["backlog"]["routine"].as_u64().unwrap() > 0,
        "no backlog left: the link was not thin"
    );
    db.stop();
    da.stop();
}

/// The CI profile with another per-link budget, written next to `n`'s home.
fn link_profile(n: &TestNode, bytes_per_s: u64) -> String {
    let path = n.dir.path().join(format!("link-{bytes_per_s}.toml"));
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../firmware-profiles/ci-loopback.toml"
    ))
    .unwrap();
    let patched = text.replace(
        "per_link_budget_bytes_per_s = 67108864",
        &format!("per_link_budget_bytes_per_s = {bytes_per_s}"),
    );
    assert_ne!(
        patched, text,
        "ci-loopback.toml no longer has the expected link budget line"
    );
    std::fs::write(&path, patched).unwrap();
    path.to_str().unwrap().to_owned()
}
