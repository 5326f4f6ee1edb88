//! `fieldmesh demo`: a small mesh on 127.0.0.1 — three squads and a command post — with
//! scripted field traffic, an intermittent link, and convergence shown as it happens.
//!
//! Topology: squad-1 and squad-2 reach the command post directly; squad-3 only reaches
//! squad-2 (so its traffic is relayed), and drops off the air in the middle of the
//! exercise, then comes back and catches up.

use crate::local::LocalNode;
use crate::ops::{Ops, PostRequest};
use anyhow::{Result, bail};
use fieldmesh_core::Precedence;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn counts(procs: &[&LocalNode], channel: &str) -> Vec<usize> {
    procs
        .iter()
        .map(|p| p.client().read(channel).map(|m| m.len()).unwrap_or(0))
        .collect()
}

fn wait_converged(
    procs: &[&LocalNode],
    channel: &str,
    expected: usize,
    secs: u64,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let c = counts(procs, channel);
        if c.iter().all(|n| *n == expected) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(secs) {
            bail!("not converged after {secs}s: {c:?} of {expected}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On-device AI over the converged channel: triage raises a casualty report at its
/// source, each squad posts a draft SITREP built from its own traffic, and the command
/// post reads the merged board (extractive: the demo profile runs no model).
fn ai_section(ch: &str, cp: &LocalNode, squads: &[&LocalNode]) -> Result<()> {
    use crate::ai::AiRequest;
    println!("\n== triage: squad-2 sends a casualty report as ROUTINE");
    let all: Vec<&LocalNode> = std::iter::once(cp).chain(squads.iter().copied()).collect();
    let mut expected = cp.client().read(ch)?.len();
    let posted = squads[1].client().post(
        ch,
        &PostRequest {
            text:
                "squad-2: 2 WIA at the bridge, one urgent, request MEDEVAC at grid 38S MB 1315 5725"
                    .into(),
            precedence: Some(Precedence::Routine),
            reply_to: None,
            attachments: vec![],
        },
    )?;
    expected += 1;
    wait_converged(&all, ch, expected, 60)?;
    let flagged = cp.client().ai(&AiRequest::Triage)?;
    for f in flagged["flagged"].as_array().into_iter().flatten() {
        if f["message"] == posted.id.as_str() {
            println!(
                "command post sees it as {} (sent as {}), flagged for a human: {}",
                f["precedence"].as_str().unwrap_or("?").to_uppercase(),
                f["requested_precedence"]
                    .as_str()
                    .unwrap_or("?")
                    .to_uppercase(),
                f["reason"].as_str().unwrap_or("")
            );
        }
    }
    println!("\n== each squad posts a draft SITREP from its own traffic");
    for s in squads {
        let id = s.client().identity()?;
        let v = s.client().ai(&AiRequest::Sitrep {
            channel: ch.to_owned(),
            since_ms: None,
            unit: Some(s.name.to_uppercase()),
            no_model: true,
            author: Some(id.id.clone()),
        })?;
        expected += 1;
        println!(
            "{:<9} SITREP {} ({} confidence, {} source message(s))",
            s.name,
            v["posted"]["id"].as_str().unwrap_or("?"),
            v["confidence"].as_str().unwrap_or("?"),
            v["sitrep"]["inputs"].as_array().map_or(0, Vec::len)
        );
    }
    wait_converged(&all, ch, expected, 60)?;
    println!("\n== the command post's merged board");
    let b = cp.client().ai(&AiRequest::Board)?;
    print!("{}", b["text"].as_str().unwrap_or(""));
    Ok(())
}

pub fn run(dir: Option<PathBuf>, profile: &str) -> Result<()> {
    let exe = std::env::current_exe()?;
    let cleanup = dir.is_none();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fieldmesh-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    println!(
        "== Fieldmesh demo in {} (127.0.0.1 only, mDNS off)",
        dir.display()
    );
    let mut cp = LocalNode::init(&exe, &dir, "command-post", profile)?;
    let mut s1 = LocalNode::init(&exe, &dir, "squad-1", profile)?;
    let mut s2 = LocalNode::init(&exe, &dir, "squad-2", profile)?;
    let mut s3 = LocalNode::init(&exe, &dir, "squad-3", profile)?;

    const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
    cp.start(&["--listen", QUIC, "--listen", "/ip4/127.0.0.1/tcp/0"])?;
    let (cp_quic, cp_tcp) = (cp.listen("quic")?, cp.listen("tcp")?);
    s1.start(&["--peer", &cp_quic])?;
    s2.start(&["--peer", &cp_tcp, "--listen", QUIC])?;
    let s2_quic = s2.listen("quic")?;
    s3.start(&["--peer", &s2_quic])?;
    println!(
        "command-post  QUIC+TCP listener   {}",
        cp.record()?.peer_id.clone().unwrap_or_default()
    );
    println!("squad-1  ──QUIC──▶ command-post");
    println!("squad-2  ──TCP───▶ command-post");
    println!("squad-3  ──QUIC──▶ squad-2 (never talks to the command post directly)");

    let net = cp.client().create_channel("company-net", None)?;
    let ch = net.id.to_hex();
    println!(
        "\n== command-post creates channel company-net {}",
        net.id.short()
    );
    let t = wait_converged(&[&cp, &s1, &s2, &s3], &ch, 0, 30).and_then(|_| {
        // The channel exists everywhere once every node can read it.
        let start = Instant::now();
        while [&cp, &s1, &s2, &s3]
            .iter()
            .any(|p| p.client().read(&ch).is_err())
        {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("channel did not reach every node");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(start.elapsed())
    })?;
    println!(
        "channel reached all 4 nodes in {:.0} ms",
        t.as_secs_f64() * 1e3
    );

    let script: [(&LocalNode, &str, Precedence); 5] = [
        (
            &s1,
            "SITREP squad-1: at checkpoint 4, grid 38S MB 1200 5600, no contact, fuel 80%",
            Precedence::Routine,
        ),
        (
            &s2,
            "SITREP squad-2: holding bridge, grid 38S MB 1310 5720, 1 vehicle down",
            Precedence::Priority,
        ),
        (
            &s3,
            "CONTACT squad-3: 4 vehicles moving north on MSR TAMPA, grid 38S MB 1240 5690",
            Precedence::Flash,
        ),
        (
            &cp,
            "All units: hold positions, QRF launching",
            Precedence::Immediate,
        ),
        (&s1, "squad-1: roger, holding", Precedence::Routine),
    ];
    println!("\n== field traffic");
    let mut expected = 0;
    for (p, text, prec) in script {
        let t = Instant::now();
        p.client().post(
            &ch,
            &PostRequest {
                text: text.into(),
                precedence: Some(prec),
                reply_to: None,
                attachments: vec![],
            },
        )?;
        expected += 1;
        let d = wait_converged(&[&cp, &s1, &s2, &s3], &ch, expected, 60)?;
        println!(
            "{:<13} {:<9} visible on all 4 nodes after {:>5.0} ms  {text}",
            p.name,
            prec.name().to_uppercase(),
            d.max(t.elapsed()).as_secs_f64() * 1e3
        );
    }

    println!("\n== squad-3 drives out of radio range");
    s3.stop();
    for text in [
        "command-post: QRF at phase line BLUE",
        "squad-2: QRF in sight",
        "command-post: squad-3 report status",
    ] {
        let p = if text.starts_with("squad-2") {
            &s2
        } else {
            &cp
        };
        p.client().post(
            &ch,
            &PostRequest {
                text: text.into(),
                precedence: Some(Precedence::Priority),
                reply_to: None,
                attachments: vec![],
            },
        )?;
        expected += 1;
    }
    wait_converged(&[&cp, &s1, &s2], &ch, expected, 60)?;
    println!("3 messages posted while squad-3 is away; the other nodes have {expected}");
    println!("== squad-3 comes back into range");
    let t = Instant::now();
    s3.start(&["--peer", &s2_quic])?;
    let caught_up = wait_converged(&[&cp, &s1, &s2, &s3], &ch, expected, 60)?;
    println!(
        "squad-3 caught up on everything it missed in {:.0} ms",
        t.elapsed().max(caught_up).as_secs_f64() * 1e3
    );

    println!("\n== the command post's view of company-net");
    for m in cp.client().read(&ch)? {
        println!(
            "{} {:<9} {}  {}",
            m.time,
            m.precedence.name().to_uppercase(),
            m.author.short(),
            m.text
        );
    }
    let views: Vec<_> = [&cp, &s1, &s2, &s3]
        .iter()
        .map(|p| p.client().read(&ch))
        .collect::<Result<_, _>>()?;
    let same = views.windows(2).all(|w| w[0] == w[1]);
    println!("\nall 4 replicas identical: {same}");

    ai_section(&ch, &cp, &[&s1, &s2, &s3])?;
    println!("\n== sync status at the command post");
    let status = cp.client().net()?;
    for p in &status.peers {
        println!(
            "{}  sent {} env / {} B, received {} env / {} B",
            p.peer, p.envelopes_sent, p.bytes_sent, p.envelopes_received, p.bytes_received
        );
    }
    for p in [&mut s3, &mut s2, &mut s1, &mut cp] {
        p.stop();
    }
    drop((cp, s1, s2, s3));
    if cleanup {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !same {
        bail!("replicas differ");
    }
    println!("\ndemo complete");
    Ok(())
}
