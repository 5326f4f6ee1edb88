//! Durability: a writer SIGKILLed at random moments never loses an acknowledged envelope,
//! and a full disk fails a write cleanly without losing earlier ones.

use fieldmesh_core::EnvelopeId;
use fieldmesh_store::{SledStore, Store};
use fieldmesh_tests::Rng;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHILD: &str = env!("CARGO_BIN_EXE_store-child");

fn parse_ack(line: &str) -> Option<EnvelopeId> {
    line.strip_prefix("ACK ")?.parse().ok()
}

#[test]
fn sigkill_never_loses_acknowledged_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed);
    let mut acked: Vec<EnvelopeId> = Vec::new();
    let rounds = 40;
    for round in 0..rounds {
        let mut child = Command::new(CHILD)
            .args([
                "ingest",
                dir.path().to_str().unwrap(),
                &(round + 1).to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let got = got.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(id) = parse_ack(&line) {
                        got.lock().unwrap().push(id);
                    }
                }
            })
        };
        // Kill at a random moment: sometimes during open/recovery, mostly mid-ingest.
        std::thread::sleep(Duration::from_millis(rng.range(5, 400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(got.lock().unwrap().iter().copied());

        let store = match SledStore::open(dir.path(), None) {
            Ok(s) => s,
            Err(e) => {
                // Keep the crashed store for forensics (sled 0.34 crash-recovery bugs).
                let kept = dir.keep();
                panic!(
                    "round {round}: reopen failed: {e}; the store is kept at {}",
                    kept.display()
                );
            }
        };
        for id in &acked {
            let env = store
                .get(id)
                .unwrap_or_else(|e| panic!("round {round}: {id} unreadable: {e}"));
            assert!(
                env.is_some(),
                "round {round}: acknowledged envelope {id} lost"
            );
        }
        assert!(store.len().unwrap() >= acked.len() as u64);
    }
    assert!(
        acked.len() > 100,
        "the child acknowledged too little to mean anything: {}",
        acked.len()
    );
    // Kills during a sled snapshot leave unfinished snapshot files, moved aside at reopen.
    let moved = std::fs::read_dir(dir.path().join("unfinished-snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "crash test: {rounds} SIGKILLs, {} acknowledged envelopes checked after every restart; {moved} unfinished sled snapshots moved aside",
        acked.len()
    );
}

#[test]
fn full_disk_fails_cleanly_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // Create the store first so the child's open does not need to grow files.
    drop(SledStore::open(dir.path(), None).unwrap());
    let out = Command::new(CHILD)
        .args([
            "fill",
            dir.path().to_str().unwrap(),
            "7",
            &(3 * 1024 * 1024).to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "child did not hit the limit: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = stdout
        .lines()
        .find(|l| l.starts_with("ERR "))
        .expect("error line");
    assert!(err.contains("disk full"), "unclear error: {err}");
    let acked: Vec<EnvelopeId> = stdout.lines().filter_map(parse_ack).collect();
    assert!(!acked.is_empty());
    let store = SledStore::open(dir.path(), None).unwrap();
    for id in &acked {
        assert!(
            store.get(id).unwrap().is_some(),
            "acknowledged {id} lost after disk-full"
        );
    }
    // Reopening recovers to the last durable state and accepts writes again.
    store
        .put(&fieldmesh_tests::test_envelope(
            &fieldmesh_crypto::NodeKey::from_seed([9; 32]),
            1,
            10,
        ))
        .unwrap();
    println!(
        "disk full after {} acknowledged envelopes: {err}",
        acked.len()
    );
}
