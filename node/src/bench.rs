//! `fieldmesh bench`: figures printed side by side with their reference, measured in one
//! run on the same machine and data. Build with `--release` for meaningful numbers.

use crate::node::Node;
use crate::ops::{Ops, PostRequest};
use anyhow::Result;
use fieldmesh_channel::{Channel, Incoming};
use fieldmesh_core::{CompartmentId, Envelope, Header, Hlc, Precedence};
use fieldmesh_crypto::{NodeKey, PayloadKey, open_envelope, seal_envelope};
use fieldmesh_profiles::Profile;
use fieldmesh_store::{SledStore, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// On-device AI: LLM tokens/s and peak RSS against llama.cpp on the same GGUF,
    /// transcription real-time factor, time to a SITREP, search latency.
    Ai(crate::bench_ai::AiBench),
    /// Compartments: seal/open cost, grants, a rotation for N members, relay byte share.
    Access {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 20_000)]
        envelopes: usize,
    },
    /// Bulk throughput: an attachment between two daemons next to raw quinn, same bytes.
    Bulk {
        /// MiB to move (at most 256, the attachment limit).
        #[arg(long, default_value_t = 64)]
        mib: usize,
        /// Runs of each side, alternated (the machine's load swings single runs).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Sync: wire bytes per payload byte against Automerge's sync protocol, round trips,
    /// and post-to-visible latency between two daemons on loopback.
    Sync {
        /// Envelopes per store for the reconciliation figures.
        #[arg(long, default_value_t = 100_000)]
        store: usize,
        /// Changes per document for the Automerge comparison.
        #[arg(long, default_value_t = 10_000)]
        automerge: usize,
        /// Messages for the latency figures.
        #[arg(long, default_value_t = 200)]
        latency: usize,
    },
    /// Durable ingest vs raw sled, channel read latency, materialisation of a big channel.
    Store {
        /// Envelopes for the ingest comparison.
        #[arg(long, default_value_t = 2000)]
        ingest: usize,
        /// Envelopes in the materialisation test.
        #[arg(long, default_value_t = 100_000)]
        materialise: usize,
    },
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Ai(a) => crate::bench_ai::run(a),
        BenchCmd::Access { members, envelopes } => crate::bench_access::run(members, envelopes),
        BenchCmd::Store {
            ingest,
            materialise,
        } => store_bench(ingest, materialise),
        BenchCmd::Bulk { mib, runs } => crate::bench_quic::run(mib, runs),
        BenchCmd::Sync {
            store,
            automerge,
            latency,
        } => crate::bench_sync::run(store, automerge, latency),
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A realistic stream of channel posts from one author, sealed and signed.
pub fn posts(key: &NodeKey, n: usize) -> Result<(Channel, Vec<Envelope>)> {
    let me = key.node_id();
    let open = PayloadKey::open_compartment();
    let (mut ch, g) = Channel::create(me, "bench", Hlc::new(1_700_000_000_000, 0))?;
    let seal = |ch: &Channel, l: &fieldmesh_channel::LocalChange| {
        let header = Header {
            kind: l.kind,
            precedence: l.precedence,
            compartment: CompartmentId::OPEN,
            epoch: 0,
            channel: ch.id(),
            author: me,
            hlc: l.hlc,
            deps: l.deps.clone(),
        };
        seal_envelope(key, header, &open, &l.payload)
    };
    let genv = seal(&ch, &g)?;
    ch.bind(g.change, genv.id());
    let mut out = vec![genv];
    for i in 1..n {
        let text = format!(
            "SITREP {i}: patrol at grid 38S MB {:04} {:04}, no contact, fuel 70%, water 2 days",
            i % 10_000,
            (i * 7) % 10_000
        );
        let l = ch.post(
            me,
            Hlc::new(1_700_000_000_000 + i as u64, 0),
            &text,
            Precedence::ALL[i % 4],
            None,
            vec![],
        )?;
        let e = seal(&ch, &l)?;
        ch.bind(l.change, e.id());
        out.push(e);
    }
    Ok((ch, out))
}

fn store_bench(ingest: usize, materialise: usize) -> Result<()> {
    let dir = tempfile_dir()?;
    let key = NodeKey::from_seed([42; 32]);
    let (_, envs) = posts(&key, ingest)?;
    let avg = envs.iter().map(|e| e.encoded_len()).sum::<usize>() / envs.len();
    println!(
        "== durable ingest: {} envelopes of ~{avg} bytes, fsync before every acknowledgement",
        envs.len()
    );

    // Raw sled: insert + flush per envelope, same keys and bytes, fresh database.
    let raw = sled::Config::new()
        .path(dir.join("raw1"))
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let t = Instant::now();
    for e in &envs {
        raw.insert(&e.id().0[..], e.as_bytes())?;
        raw.flush()?;
    }
    let raw_single = rate(envs.len(), t.elapsed());
    let ours = SledStore::open(&dir.join("ours1"), None)?;
    let t = Instant::now();
    for e in &envs {
        ours.put(e)?;
    }
    let ours_single = rate(envs.len(), t.elapsed());
    println!(
        "one per fsync:   fieldmesh {ours_single:>9.0} env/s   raw sled insert+flush {raw_single:>9.0} env/s   ratio {:.2}",
        ours_single / raw_single
    );

    let raw = sled::Config::new()
        .path(dir.join("raw2"))
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let t = Instant::now();
    for chunk in envs.chunks(100) {
        let mut b = sled::Batch::default();
        for e in chunk {
            b.insert(&e.id().0[..], e.as_bytes());
        }
        raw.apply_batch(b)?;
        raw.flush()?;
    }
    let raw_batch = rate(envs.len(), t.elapsed());
    let ours = SledStore::open(&dir.join("ours2"), None)?;
    let t = Instant::now();
    for chunk in envs.chunks(100) {
        ours.put_batch(chunk)?;
    }
    let ours_batch = rate(envs.len(), t.elapsed());
    println!(
        "100 per fsync:   fieldmesh {ours_batch:>9.0} env/s   raw sled batch+flush  {raw_batch:>9.0} env/s   ratio {:.2}",
        ours_batch / raw_batch
    );
    let verify = Instant::now();
    for e in envs.iter().take(1000) {
        Envelope::decode(e.as_bytes())?;
    }
    println!(
        "verification (decode + Ed25519) alone: {:.0} env/s",
        rate(envs.len().min(1000), verify.elapsed())
    );

    // Read latency of a 1,000-message channel, through the node as the CLI and API use it.
    println!("== read latency: channel of 1,000 messages");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("read"), None)?);
    let profile = Profile::builtin("command-post-server")?;
    let node = Node::new(
        NodeKey::from_seed([7; 32]),
        "bench".into(),
        store.clone(),
        profile.clone(),
    );
    node.create_channel("ops", None)?;
    for i in 0..999 {
        node.post(
            "ops",
            &PostRequest {
                text: format!("message {i}: all stations, radio check"),
                precedence: None,
                reply_to: None,
                attachments: vec![],
            },
        )?;
    }
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..7 {
        let fresh = Node::new(
            NodeKey::from_seed([7; 32]),
            "bench".into(),
            store.clone(),
            profile.clone(),
        );
        let t = Instant::now();
        let n = fresh.read("ops")?.len();
        cold.push(t.elapsed());
        assert_eq!(n, 999);
        let t = Instant::now();
        fresh.read("ops")?;
        warm.push(t.elapsed());
    }
    println!(
        "cold (store -> verify id -> open -> apply -> view): median {:.1} ms;  warm (cached document -> view): median {:.2} ms",
        median(cold).as_secs_f64() * 1e3,
        median(warm).as_secs_f64() * 1e3
    );

    startup_with_attachments(&dir)?;

    // Materialisation of a big channel.
    println!("== materialisation: one channel of {materialise} envelopes");
    let t = Instant::now();
    let (reference, big) = posts(&key, materialise)?;
    println!("generated and signed in {:.1} s", t.elapsed().as_secs_f64());
    let store = SledStore::open(&dir.join("big"), None)?;
    for chunk in big.chunks(1000) {
        store.put_batch(chunk)?;
    }
    let t = Instant::now();
    let loaded = store.channel_envelopes(&reference.id())?;
    let read = t.elapsed();
    let open = PayloadKey::open_compartment();
    let t = Instant::now();
    let plain: Vec<Vec<u8>> = loaded
        .iter()
        .map(|e| open_envelope(e, &open))
        .collect::<Result<_, _>>()?;
    let decrypt = t.elapsed();
    let t = Instant::now();
    let mut ch = Channel::new(reference.id());
    let errors = ch.apply_many(loaded.iter().zip(&plain).map(|(e, p)| Incoming::of(e, p)))?;
    assert!(errors.is_empty());
    let apply = t.elapsed();
    let t = Instant::now();
    let msgs = ch.messages();
    let view = t.elapsed();
    assert_eq!(msgs.len(), materialise - 1);
    assert_eq!(ch.heads(), reference.heads());
    let total = read + decrypt + apply + view;
    println!(
        "total {:.2} s = store read {:.2} s + open {:.2} s + validate/apply {:.2} s + view copy {:.2} s  ({:.0} env/s)",
        total.as_secs_f64(),
        read.as_secs_f64(),
        decrypt.as_secs_f64(),
        apply.as_secs_f64(),
        view.as_secs_f64(),
        rate(materialise, total)
    );
    println!(
        "ratio to the storage floor (reading the envelopes alone): {:.1}x",
        total.as_secs_f64() / read.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What a node's start and a channel read cost when the store holds attachments: the
/// sync index from the store's summaries and a channel read of changes only, next to
/// reading every envelope (as both did before the value log kept summaries). The chunks
/// were written with `O_DIRECT`, so the first full read does not find them in this
/// machine's page cache (a virtual disk may still serve them from its host's).
fn startup_with_attachments(dir: &std::path::Path) -> Result<()> {
    const MIB: usize = 128;
    println!("== start-up and channel read with {MIB} MiB of attachments in one channel");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("attachments"), None)?);
    let node = Node::new(
        NodeKey::from_seed([9; 32]),
        "bench".into(),
        store.clone(),
        Profile::builtin("command-post-server")?,
    );
    node.create_channel("imagery", None)?;
    let ch = "imagery";
    let mut posted = Vec::new();
    for i in 0..4 {
        let data: Vec<u8> = (0..MIB * 1024 * 1024 / 4)
            .map(|j| (j.wrapping_mul(2_654_435_761) >> 7) as u8 ^ i as u8)
            .collect();
        let att = node.put_blob(
            ch,
            &format!("map{i}.bin"),
            "application/octet-stream",
            &data,
        )?;
        let msg = node.post(
            ch,
            &PostRequest {
                text: format!("map sheet {i}"),
                precedence: None,
                reply_to: None,
                attachments: vec![att],
            },
        )?;
        posted.push((msg.id, data));
    }
    let held = usize::try_from(store.len()?)?;
    let t = Instant::now();
    let index = node.sync_index()?;
    let summaries = t.elapsed();
    assert_eq!(index.len(), held);
    let every = || -> Result<Duration> {
        let t = Instant::now();
        let mut n = 0;
        for id in store.ids()? {
            n += usize::from(store.get(&id)?.is_some());
        }
        assert_eq!(n, held);
        Ok(t.elapsed())
    };
    let (cold, warm) = (every()?, every()?);
    println!(
        "sync index at start ({held} envelopes): from summaries {:.1} ms   reading every envelope {:.0} ms (first read), {:.0} ms (again)   ({:.0}x, {:.0}x faster)",
        summaries.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        cold.as_secs_f64() / summaries.as_secs_f64(),
        warm.as_secs_f64() / summaries.as_secs_f64()
    );
    let cid = node.resolve(ch)?;
    let t = Instant::now();
    let changes = store.channel_envelopes_of(&cid, &|k| k.is_channel_change())?;
    let only = t.elapsed();
    let t = Instant::now();
    let all = store.channel_envelopes(&cid)?;
    let full = t.elapsed();
    println!(
        "channel read for materialisation: changes only {:.1} ms ({} envelopes)   every envelope {:.0} ms warm ({})   ({:.0}x faster)",
        only.as_secs_f64() * 1e3,
        changes.len(),
        full.as_secs_f64() * 1e3,
        all.len(),
        full.as_secs_f64() / only.as_secs_f64()
    );
    // A process that did not store the attachments opens every chunk of the channel for
    // the first one it is asked for, and reads the others by their own chunks.
    let fresh = Node::new(
        NodeKey::from_seed([9; 32]),
        "bench".into(),
        store.clone(),
        Profile::builtin("command-post-server")?,
    );
    let mut times = Vec::new();
    for (msg, data) in &posted {
        let t = Instant::now();
        let got = fresh.get_attachment(msg, 0)?;
        times.push(t.elapsed());
        anyhow::ensure!(&got == data, "attachment differs");
    }
    let later = median(times[1..].to_vec());
    println!(
        "attachment get ({} MiB each, {} in the channel): first {:.0} ms (opens every chunk of the channel)   then {:.0} ms (median; its own chunks by id)   ({:.1}x)",
        MIB / posted.len(),
        posted.len(),
        times[0].as_secs_f64() * 1e3,
        later.as_secs_f64() * 1e3,
        times[0].as_secs_f64() / later.as_secs_f64()
    );
    Ok(())
}

pub(crate) fn tempfile_dir() -> Result<std::path::PathBuf> {
    let base = std::env::var_os("FIELDMESH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("fieldmesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
