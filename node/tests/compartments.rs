//! Coalition compartments with real processes on 127.0.0.1: three nations, a partner that
//! relays what it cannot read, revocation, and refused credentials and grants.

mod common;
use common::{TestNode, wait_until};
use fieldmesh_core::{EnvelopeId, Hlc, NodeId};
use fieldmesh_crypto::access::{Record, seal_grant, seal_record};
use fieldmesh_crypto::{NodeKey, PayloadKey};
use std::path::Path;

const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
const POLICY: &str = "nation in [USA, JPN] and clearance >= SECRET";

fn id_of(n: &TestNode) -> String {
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["id", "--json"])).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Creates an authority in `n`'s home and issues `n` a credential; returns the authority id.
fn credentialed(n: &TestNode, authority: &str, nation: &str, clearance: &str) -> String {
    let out = n.ok(&["authority", "init", authority]);
    let auth = out.rsplit(' ').next().unwrap().to_owned();
    let file = n.dir.path().join("me.cred");
    n.ok(&[
        "credential",
        "issue",
        "--node",
        &id_of(n),
        "--attr",
        &format!("nation={nation}"),
        "--attr",
        &format!("clearance={clearance}"),
        "--expires",
        "2099-01-01",
        "--out",
        file.to_str().unwrap(),
    ]);
    n.ok(&["credential", "import", file.to_str().unwrap()]);
    auth
}

fn texts(n: &TestNode, ch: &str) -> Vec<String> {
    n.read_json(ch)
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn compartments(n: &TestNode) -> serde_json::Value {
    serde_json::from_str(&n.ok(&["compartment", "list", "--json"])).unwrap()
}

fn stored_in(n: &TestNode, name: &str) -> u64 {
    compartments(n)["compartments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map_or(0, |c| c["stored_envelopes"].as_u64().unwrap())
}

/// Every file under `dir`, searched for `needle`.
fn found_in_files(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(found_in_files(&p, needle));
        } else if let Ok(b) = std::fs::read(&p)
            && b.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[test]
fn a_partner_relays_a_compartment_it_cannot_read_and_revocation_cuts_off_new_traffic() {
    let usa = TestNode::init("usa");
    let gbr = TestNode::init("gbr");
    let jpn = TestNode::init("jpn");
    let jpn2 = TestNode::init("jpn2");
    credentialed(&usa, "USA", "USA", "SECRET");
    credentialed(&gbr, "GBR", "GBR", "TOP_SECRET");
    let jpn_auth = credentialed(&jpn, "JPN", "JPN", "SECRET");
    // jpn2 holds a credential from the JPN authority, issued on jpn's home.
    let f = jpn.dir.path().join("jpn2.cred");
    jpn.ok(&[
        "credential",
        "issue",
        "--node",
        &id_of(&jpn2),
        "--attr",
        "nation=JPN",
        "--attr",
        "clearance=SECRET",
        "--expires",
        "2099-01-01",
        "--out",
        f.to_str().unwrap(),
    ]);
    jpn2.ok(&["credential", "import", f.to_str().unwrap()]);
    usa.ok(&[
        "authority",
        "trust",
        &jpn_auth,
        "--name",
        "JPN",
        "--scope",
        "nation=JPN",
    ]);

    usa.ok(&["compartment", "create", "BILAT", "--policy", POLICY]);
    let ch = usa.ok(&["channel", "create", "ops", "--compartment", "BILAT"]);
    usa.ok(&["post", &ch, "secret-marker-one grid 38S MB 1234"]);

    let dg = gbr.start_daemon_with(&["--listen", QUIC]);
    let du = usa.start_daemon_with(&["--peer", &dg.addr("quic")]);
    let dj = jpn.start_daemon_with(&["--peer", &dg.addr("quic")]);
    let dj2 = jpn2.start_daemon_with(&["--peer", &dg.addr("quic")]);

    // The JPN credentials cross GBR to the admin, the grants cross back, and the channel
    // opens on both JPN nodes.
    for n in [&jpn, &jpn2] {
        wait_until(60, "the compartment channel readable in JPN", || {
            n.run(&["read", &ch, "--json"]).status.success()
                && texts(n, &ch)
                    .iter()
                    .any(|t| t.contains("secret-marker-one"))
        });
    }
    // GBR carries the envelopes but sees none of it.
    assert!(stored_in(&gbr, "BILAT") >= 2);
    let err = gbr.fails(&["read", &ch], 1);
    assert!(
        err.contains("holds no key") && err.contains("ciphertext only"),
        "{err}"
    );
    assert!(!gbr.ok(&["channel", "list"]).contains("ops"));
    let members = compartments(&usa)["compartments"][0]["members"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(members, 3, "USA admin and the two JPN nodes; never GBR");

    // Revoke jpn2: a new epoch that only USA and jpn hold.
    usa.ok(&["compartment", "revoke", "BILAT", &id_of(&jpn2)]);
    usa.ok(&["post", &ch, "secret-marker-two after revocation"]);
    wait_until(60, "the post-revocation message on jpn", || {
        texts(&jpn, &ch)
            .iter()
            .any(|t| t.contains("secret-marker-two"))
    });
    let want = stored_in(&usa, "BILAT");
    wait_until(60, "every BILAT envelope stored on jpn2 and GBR", || {
        stored_in(&jpn2, "BILAT") == want && stored_in(&gbr, "BILAT") == want
    });
    let seen = texts(&jpn2, &ch);
    assert!(
        seen.iter().any(|t| t.contains("secret-marker-one")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|t| t.contains("secret-marker-two")),
        "{seen:?}"
    );
    let err = jpn2.fails(&["post", &ch, "still here?"], 1);
    assert!(err.contains("no key for epoch 2"), "{err}");
    // GBR counts what it carries for others against its relay quota (ci-loopback: 16
    // MiB), and has declined nothing yet.
    let st: serde_json::Value = serde_json::from_str(&gbr.ok(&["sync-status", "--json"])).unwrap();
    let carried = st["relay_bytes"].as_u64().unwrap();
    assert!(carried > 0 && carried < 16 << 20, "{st}");
    assert_eq!(st["relay_quota_bytes"], 16u64 << 20, "{st}");
    assert_eq!(st["relay_declined"], 0, "{st}");

    for d in [du, dj, dj2, dg] {
        d.stop();
    }
    // No plaintext of the compartment anywhere in the partner's home, store included.
    assert!(found_in_files(&gbr.home(), b"secret-marker").is_empty());
    assert!(found_in_files(&gbr.home(), b"grid 38S").is_empty());
    // Every decision is in the audit logs, and the chains hold.
    for n in [&usa, &gbr, &jpn, &jpn2] {
        assert!(n.ok(&["audit", "--verify"]).starts_with("audit log intact"));
    }
    assert!(gbr.ok(&["audit"]).contains("\"denied\""));
    let log = usa.ok(&["audit"]);
    assert!(
        log.contains("\"revoked\"") && log.contains("\"grant_issued\""),
        "{log}"
    );
}

#[test]
fn forged_expired_and_misdirected_material_is_refused_with_reasons() {
    let usa = TestNode::init("usa");
    let jpn = TestNode::init("jpn");
    credentialed(&usa, "USA", "USA", "SECRET");
    let file = usa.dir.path().join("jpn.cred");
    let path = file.to_str().unwrap();

    // Forged: an attribute changed after signing.
    usa.ok(&[
        "credential",
        "issue",
        "--node",
        &id_of(&jpn),
        "--attr",
        "nation=JPN",
        "--attr",
        "clearance=SECRET",
        "--expires",
        "2099-01-01",
        "--out",
        path,
    ]);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("SECRET", "TOP_SECRET");
    std::fs::write(&file, text).unwrap();
    let err = jpn.fails(&["credential", "import", path], 1);
    assert!(err.contains("forged or altered"), "{err}");

    // Expired.
    let out = usa
        .cmd(&[
            "credential",
            "issue",
            "--node",
            &id_of(&jpn),
            "--attr",
            "nation=JPN",
            "--expires",
            "2020-01-01",
            "--out",
            path,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));
    let err = jpn.fails(&["credential", "import", path], 1);
    assert!(err.contains("expired on 2020-01-01"), "{err}");

    // Not a credential at all.
    std::fs::write(&file, b"{\"credential\": 3}").unwrap();
    let err = jpn.fails(&["credential", "import", path], 1);
    assert!(err.contains("not a credential"), "{err}");

    // A grant addressed to jpn but sealed to another node's key, signed by the real admin.
    usa.ok(&["compartment", "create", "C", "--policy", POLICY]);
    let cid: fieldmesh_core::CompartmentId = compartments(&usa)["compartments"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin = NodeKey::load(&usa.home().join("node.key")).unwrap();
    let jpn_id: NodeId = id_of(&jpn).parse().unwrap();
    let other = NodeKey::from_seed([9; 32]).node_id();
    let rotation = EnvelopeId([7; 32]);
    let key = PayloadKey::generate().unwrap();
    let sealed = seal_grant(&cid, 1, &rotation, &other, &key).unwrap();
    let grant = seal_record(
        &admin,
        &Record::Grant {
            compartment: cid,
            epoch: 1,
            rotation,
            recipient: jpn_id,
            sealed,
        },
        Hlc::new(1_800_000_000_000, 0),
    )
    .unwrap();
    // The directory (definition, rotation) and the bad grant, carried by hand.
    let dir_bundle = usa.dir.path().join("dir.bundle");
    usa.ok(&["bundle", "export", "--out", dir_bundle.to_str().unwrap()]);
    jpn.ok(&["bundle", "import", dir_bundle.to_str().unwrap()]);
    let mut b = b"FMBUNDLE\x01".to_vec();
    b.extend_from_slice(&(grant.encoded_len() as u32).to_be_bytes());
    b.extend_from_slice(grant.as_bytes());
    let bad = usa.dir.path().join("bad.bundle");
    std::fs::write(&bad, b).unwrap();
    jpn.ok(&["bundle", "import", bad.to_str().unwrap()]);
    let list = compartments(&jpn);
    let refused = list["refused_grants"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{list}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("sealed to another key"),
        "{list}"
    );
    assert_eq!(list["compartments"][0]["can_read"], false);
    assert!(jpn.ok(&["audit"]).contains("grant_refused"));
}
