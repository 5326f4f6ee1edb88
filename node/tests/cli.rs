//! The CLI end to end, as a user runs it: real processes, real sled store, real sockets.

mod common;
use common::TestNode;
use std::io::{BufRead, BufReader, Read, Write};

#[test]
fn single_node_walkthrough() {
    let n = TestNode::init("alpha");
    let id = n.ok(&["id"]);
    let lines: Vec<&str> = id.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with(&lines[1][..8]),
        "short form is a prefix of the full id: {id}"
    );
    assert!(lines[0].ends_with("alpha"));
    let mode = std::fs::metadata(n.home().join("node.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // init twice refuses to replace the identity.
    assert!(n.fails(&["init"], 1).contains("already initialised"));

    let ch = n.ok(&["channel", "create", "ops"]);
    assert_eq!(ch.len(), 64);
    assert!(
        n.fails(&["channel", "create", "ops"], 1)
            .contains("already exists")
    );
    let list: serde_json::Value =
        serde_json::from_str(&n.ok(&["channel", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "ops");
    assert_eq!(list[0]["id"], ch.as_str());

    let m1 = n.ok(&[
        "post",
        "ops",
        "contact north, grid 38S MB 1234 5678",
        "--precedence",
        "flash",
    ]);
    let m2 = n.ok(&["post", &ch, "roger, moving", "--reply-to", &m1]);
    n.ok(&["react", "ops", &m1, "👍"]);
    n.ok(&[
        "edit",
        "ops",
        &m1,
        "contact north-east, grid 38S MB 1240 5690",
    ]);
    let m3 = n.ok(&["post", "ops", "wrong net, disregard"]);
    n.ok(&["redact", "ops", &m3]);

    let msgs = n.read_json("ops");
    assert_eq!(msgs.len(), 3);
    for key in [
        "id",
        "author",
        "channel",
        "text",
        "precedence",
        "timestamp",
        "reply_to",
        "reactions",
        "edited",
        "redacted",
    ] {
        assert!(msgs[0].get(key).is_some(), "JSON lacks {key}");
    }
    assert_eq!(msgs[0]["id"], m1.as_str());
    assert_eq!(msgs[0]["text"], "contact north-east, grid 38S MB 1240 5690");
    assert_eq!(msgs[0]["precedence"], "flash");
    assert_eq!(msgs[0]["edited"], true);
    assert_eq!(msgs[0]["reactions"]["👍"].as_array().unwrap().len(), 1);
    assert_eq!(msgs[1]["id"], m2.as_str());
    assert_eq!(msgs[1]["reply_to"], m1.as_str());
    assert_eq!(msgs[2]["redacted"], true);
    assert_eq!(msgs[2]["text"], "");
    // A redaction never resurrects: editing a redacted message is refused.
    assert!(
        n.fails(&["edit", "ops", &m3, "back"], 1)
            .contains("redacted")
    );

    let human = n.ok(&["read", "ops"]);
    assert!(
        human.contains("FLASH") && human.contains("[redacted]") && !human.contains("disregard"),
        "{human}"
    );

    let out = n.dir.path().join("ops.automerge");
    n.ok(&["channel", "export", "ops", "--out", out.to_str().unwrap()]);
    let doc = automerge::Automerge::load(&std::fs::read(&out).unwrap()).unwrap();
    use automerge::ReadDoc;
    let (_, messages) = doc.get(automerge::ROOT, "messages").unwrap().unwrap();
    assert_eq!(doc.length(&messages), 3);
}

#[test]
fn bundles_carry_a_channel_between_nodes_that_never_meet() {
    let a = TestNode::init("alpha");
    let b = TestNode::init("bravo");
    let ch = a.ok(&["channel", "create", "logistics"]);
    for i in 0..5 {
        a.ok(&["post", "logistics", &format!("resupply {i}")]);
    }
    let bundle = a.dir.path().join("carry.fmb");
    a.ok(&["bundle", "export", "--out", bundle.to_str().unwrap()]);
    let report = b.ok(&["bundle", "import", bundle.to_str().unwrap()]);
    assert!(
        report.starts_with("6 envelopes: 6 new, 0 already held, 0 rejected"),
        "{report}"
    );
    // B replies; the reply goes back to A the same way.
    let first = b.read_json(&ch)[0]["id"].as_str().unwrap().to_owned();
    b.ok(&["post", &ch, "copy, en route", "--reply-to", &first]);
    let back = b.dir.path().join("back.fmb");
    b.ok(&[
        "bundle",
        "export",
        "--out",
        back.to_str().unwrap(),
        "--channel",
        &ch,
    ]);
    let report = a.ok(&["bundle", "import", back.to_str().unwrap()]);
    assert!(
        report.starts_with("7 envelopes: 1 new, 6 already held"),
        "{report}"
    );
    assert_eq!(a.read_json("logistics"), b.read_json(&ch));
}

#[test]
fn bad_input_is_rejected_clearly_and_loses_nothing() {
    let a = TestNode::init("alpha");
    let b = TestNode::init("bravo");
    a.ok(&["channel", "create", "ops"]);
    a.ok(&["post", "ops", "first"]);
    // Addresses the node cannot use are refused before it starts, not retried for ever;
    // ones that do not parse are refused by the command line itself.
    for bad in [
        "/ip4/127.0.0.1/udp/4001/quic",
        "/dns4/example.org/tcp/4001",
        "/ip4/127.0.0.1/tcp/4001/ws",
    ] {
        let err = a.fails(&["run", "--peer", bad], 1);
        assert!(
            err.contains("unsupported address") && err.contains("quic-v1"),
            "{err}"
        );
        let err = a.fails(&["run", "--listen", bad], 1);
        assert!(err.contains("unsupported address"), "{err}");
    }
    let err = a.fails(&["run", "--peer", "not-an-address"], 2);
    assert!(err.contains("--peer"), "{err}");
    let good = a.dir.path().join("good.fmb");
    a.ok(&["bundle", "export", "--out", good.to_str().unwrap()]);
    let bytes = std::fs::read(&good).unwrap();

    // Corrupt: one flipped bit in the payload of the post (not the genesis; the bundle
    // lists envelopes by id, so either may come first).
    let mut corrupt = bytes.clone();
    let mut at = 9;
    let post_end = loop {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let env = &bytes[at + 4..at + 4 + len];
        if env[5] == 2 {
            break at + 4 + len;
        }
        at += 4 + len;
    };
    corrupt[post_end - 80] ^= 0x01;
    let f = b.dir.path().join("corrupt.fmb");
    std::fs::write(&f, &corrupt).unwrap();
    let err = b.fails(&["bundle", "import", f.to_str().unwrap()], 1);
    assert!(
        err.contains("bad signature") && err.contains("1 of 2 envelopes"),
        "{err}"
    );
    // The valid genesis was stored; the corrupt post was not.
    assert_eq!(b.read_json("ops").len(), 0);

    // Forged: the first envelope claims another author (bravo) but keeps alpha's signature.
    let bravo_id = b.ok(&["id", "--json"]);
    let bravo: serde_json::Value = serde_json::from_str(&bravo_id).unwrap();
    let mut forged = bytes.clone();
    let author_at = 9 + 4 + 72;
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&bravo["id"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap();
    }
    forged[author_at..author_at + 32].copy_from_slice(&key);
    let f = b.dir.path().join("forged.fmb");
    std::fs::write(&f, &forged).unwrap();
    let err = b.fails(&["bundle", "import", f.to_str().unwrap()], 1);
    assert!(err.contains("not signed by its author"), "{err}");

    // Truncated and garbage bundles.
    let f = b.dir.path().join("trunc.fmb");
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    assert!(
        b.fails(&["bundle", "import", f.to_str().unwrap()], 1)
            .contains("truncated frame")
    );
    std::fs::write(&f, b"hello").unwrap();
    assert!(
        b.fails(&["bundle", "import", f.to_str().unwrap()], 1)
            .contains("not a Fieldmesh bundle")
    );

    // The genuine bundle still imports completely afterwards: nothing was half-written.
    b.ok(&["bundle", "import", good.to_str().unwrap()]);
    assert_eq!(b.read_json("ops")[0]["text"], "first");

    // Unknown channel, unknown message, malformed argument, oversized message.
    assert!(a.fails(&["read", "nosuch"], 1).contains("unknown channel"));
    assert!(
        a.fails(&["edit", "ops", "00", "x"], 1)
            .contains("no message")
    );
    assert!(
        a.fails(&["post", "ops", "x", "--precedence", "urgent"], 2)
            .contains("unknown precedence")
    );
    let big = "x".repeat(20_000);
    assert!(a.fails(&["post", "ops", &big], 1).contains("limit"));
    assert_eq!(a.read_json("ops").len(), 1);

    // Uninitialised home, unsafe key permissions.
    let c = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("--home")
        .arg(c.path())
        .arg("id")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not initialised"));
    let key = a.home().join("node.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(a.fails(&["id"], 1).contains("chmod 600"));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[test]
fn store_from_a_newer_release_is_refused() {
    let a = TestNode::init("alpha");
    a.ok(&["channel", "create", "ops"]);
    {
        let s = fieldmesh_store::SledStore::open(&a.home().join("store"), None).unwrap();
        s.force_format_version(fieldmesh_store::FORMAT_VERSION + 1)
            .unwrap();
    }
    let err = a.fails(&["channel", "list"], 1);
    let newer = format!("format version {}", fieldmesh_store::FORMAT_VERSION + 1);
    assert!(
        err.contains(&newer) && err.contains("upgrade fieldmesh"),
        "{err}"
    );
}

/// Reads server-sent events until one `message` event arrives.
fn next_sse_message(reader: &mut BufReader<std::net::TcpStream>) -> serde_json::Value {
    let mut event = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "event stream closed"
        );
        let line = line.trim_end();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ")
            && event == "message"
        {
            return serde_json::from_str(d).unwrap();
        }
    }
}

#[test]
fn daemon_serves_the_api_and_the_cli_goes_through_it() {
    let n = TestNode::init("alpha");
    n.ok(&["channel", "create", "ops"]);
    let d = n.start_daemon();

    // Subscribe to the event stream.
    let mut sock = std::net::TcpStream::connect(&d.http).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        sock,
        "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        d.http
    )
    .unwrap();
    let mut reader = BufReader::new(sock);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains("200"), "{status}");

    // The store is locked by the daemon; CLI commands use the API transparently.
    let id = n.ok(&["post", "ops", "via the daemon", "--precedence", "immediate"]);
    let ev = next_sse_message(&mut reader);
    assert_eq!(ev["message"]["id"], id.as_str());
    assert_eq!(ev["message"]["text"], "via the daemon");
    assert_eq!(n.read_json("ops")[0]["precedence"], "immediate");
    assert!(n.fails(&["read", "nosuch"], 1).contains("unknown channel"));
    n.ok(&["channel", "create", "second"]);
    assert_eq!(n.ok(&["channel", "list"]).lines().count(), 2);

    // Raw HTTP: JSON errors with status codes.
    let raw = |request: &str| {
        let mut s = std::net::TcpStream::connect(&d.http).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    let resp = raw(
        "GET /api/v1/channels/nosuch/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    // What a web page could send (a rebound name, or any request carrying an Origin) is
    // refused before it reaches a channel.
    for headers in [
        "Host: attacker.example:7878\r\n",
        "Host: 127.0.0.1\r\nOrigin: http://attacker.example\r\n",
    ] {
        let resp = raw(&format!(
            "GET /api/v1/channels HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
        ));
        assert!(resp.starts_with("HTTP/1.1 403"), "{headers}: {resp}");
        assert!(!resp.contains("\"ops\""), "{resp}");
    }

    // An attachment over the limit is refused before it is read or uploaded, with the
    // limit named (the daemon used to cut the upload off: "broken pipe"); nothing posted.
    let big = n.dir.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((256 << 20) + 1)
        .unwrap();
    let err = n.fails(
        &["post", "ops", "with big", "--attach", big.to_str().unwrap()],
        1,
    );
    assert!(
        err.contains("exceeds the limit") && err.contains("256 MiB"),
        "{err}"
    );
    assert_eq!(n.read_json("ops").len(), 1);
    // Nor is a smaller file attached before it stored: its chunks would belong to no
    // message and still replicate everywhere.
    let bundle = n.dir.path().join("ops.bundle");
    let held = || {
        n.ok(&[
            "bundle",
            "export",
            "--channel",
            "ops",
            "--out",
            bundle.to_str().unwrap(),
        ]);
        std::fs::metadata(&bundle).unwrap().len()
    };
    let before = held();
    let small = n.dir.path().join("small.bin");
    std::fs::write(&small, vec![7u8; 100_000]).unwrap();
    let err = n.fails(
        &[
            "post",
            "ops",
            "with both",
            "--attach",
            small.to_str().unwrap(),
            "--attach",
            big.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("exceeds the limit"), "{err}");
    assert_eq!(held(), before, "the channel holds no chunk of small.bin");

    d.stop();
    // With the daemon gone, the CLI opens the store directly and sees everything.
    assert_eq!(n.read_json("ops").len(), 1);
}

#[test]
fn api_refuses_non_loopback_addresses() {
    let n = TestNode::init("alpha");
    let err = n.fails(&["run", "--http", "0.0.0.0:0"], 1);
    assert!(err.contains("loopback only"), "{err}");
}

#[test]
fn full_disk_is_a_clear_error_and_loses_nothing() {
    let n = TestNode::init("alpha");
    n.ok(&["channel", "create", "ops"]);
    let text = "x".repeat(8000);
    // Cap file sizes (as a full disk would) and ignore SIGXFSZ so writes fail with EFBIG.
    let script = format!(
        "trap '' XFSZ; ulimit -f 1500; for i in $(seq 1 400); do '{}' --home '{}' --profile ci-loopback post ops \"$i {text}\" >/dev/null || exit $?; done; exit 0",
        common::BIN,
        n.home().display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "posting never hit the limit: {stderr}"
    );
    assert!(stderr.contains("disk full"), "unclear error: {stderr}");
    // Every acknowledged post is there, in order, and the node works again with space.
    let msgs = n.read_json("ops");
    assert!(!msgs.is_empty());
    for (i, m) in msgs.iter().enumerate() {
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{} ", i + 1))
        );
    }
    n.ok(&["post", "ops", "space freed"]);
    assert_eq!(n.read_json("ops").len(), msgs.len() + 1);
}
