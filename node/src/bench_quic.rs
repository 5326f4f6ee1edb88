//! Bulk throughput on loopback: an attachment through the mesh (two daemons, QUIC) next
//! to raw quinn moving the same number of bytes over one stream, in the same run.

use crate::bench_ai::median;
use crate::client::Client;
use crate::local::LocalNode;
use crate::ops::{Ops, PostRequest};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the receiving end of raw quinn does with the bytes.
#[derive(Clone, Copy)]
enum Receiver<'a> {
    /// Counts them.
    Discard,
    /// The least any receiver that keeps its promises must do: cut the stream into
    /// chunk-sized records, hash each with SHA-256 (content addressing), append them to a
    /// file (`O_DIRECT`, as the store does) and make every 64 durable (`fdatasync`); the
    /// network, the hashing and the disk each on a thread of their own, overlapping.
    /// Nothing else: no signatures, no index, no framing, no acknowledgements.
    HashAndStore(&'a std::path::Path),
}

/// Bytes per record for `Receiver::HashAndStore`: an attachment chunk and its envelope.
const RECORD_BYTES: usize = crate::blob::CHUNK_BYTES + 300;

/// Hashes batches of records on one thread and appends them durably on another (so that
/// hashing the next batch overlaps the disk's work on this one) until the sender hangs
/// up; returns the bytes stored.
fn hash_and_store(
    path: &std::path::Path,
    batches: std::sync::mpsc::Receiver<Vec<Vec<u8>>>,
) -> Result<usize> {
    let (hashed_tx, hashed) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(2);
    let hasher = std::thread::spawn(move || {
        let mut digest = [0u8; 32];
        for batch in batches {
            for record in &batch {
                let h = fieldmesh_core::sha256(record);
                digest.iter_mut().zip(h).for_each(|(d, h)| *d ^= h);
            }
            if hashed_tx.send(batch).is_err() {
                break;
            }
        }
        std::hint::black_box(digest);
    });
    // As the store's value log writes: each batch from a block-aligned buffer at a
    // block-aligned offset with O_DIRECT (no copy into the page cache), then fdatasync.
    const BLOCK: usize = 4096;
    let f = std::fs::File::create(path)?;
    let direct = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    };
    if direct.is_none() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            println!(
                "  note: {} refuses O_DIRECT: the least-work receiver writes through the page cache (and on tmpfs fdatasync does nothing)",
                path.parent().unwrap_or(path).display()
            )
        });
    }
    let mut buf = Vec::new();
    let (mut stored, mut at) = (0, 0u64);
    for batch in hashed {
        let len: usize = batch.iter().map(Vec::len).sum();
        let padded = len.div_ceil(BLOCK) * BLOCK;
        if buf.len() < padded + BLOCK {
            buf = vec![0u8; padded + BLOCK];
        }
        let start = buf.as_ptr().align_offset(BLOCK);
        let block = &mut buf[start..start + padded];
        let mut end = 0;
        for record in &batch {
            block[end..end + record.len()].copy_from_slice(record);
            end += record.len();
        }
        block[end..].fill(0);
        use std::os::unix::fs::FileExt;
        match &direct {
            Some(d) => d.write_all_at(block, at)?,
            None => f.write_all_at(block, at)?,
        }
        f.sync_data()?;
        at += padded as u64;
        stored += len;
    }
    hasher
        .join()
        .map_err(|_| anyhow::anyhow!("the hashing thread panicked"))?;
    drop(f);
    let _ = std::fs::remove_file(path);
    Ok(stored)
}

/// Raw quinn: one unidirectional stream of `bytes` from a client to a server on 127.0.0.1,
/// on sockets with the mesh's buffer sizes.
/// `chacha`: prefer ChaCha20-Poly1305, as libp2p's TLS does (quinn's default negotiates
/// AES-GCM).
async fn raw_quinn(bytes: usize, chacha: bool, receiver: Receiver<'_>) -> Result<Duration> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let cert_der = rustls::pki_types::CertificateDer::from(cert.cert);
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.clone())?;
    let (server_cfg, client_cfg) = if chacha {
        // The client's order decides; AES-128-GCM stays listed for QUIC's Initial packets.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let provider = Arc::new(provider);
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key.into())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            quinn::ServerConfig::with_crypto(Arc::new(
                quinn::crypto::rustls::QuicServerConfig::try_from(server)?,
            )),
            quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(
                client,
            )?)),
        )
    } else {
        (
            quinn::ServerConfig::with_single_cert(vec![cert_der], key.into())?,
            quinn::ClientConfig::with_root_certificates(Arc::new(roots))?,
        )
    };
    // The same sockets as the mesh's (enlarged buffers): with Linux's default receive
    // buffer both lose packets under load and read the losses as congestion.
    let socket = || fieldmesh_net::quic::bind_udp("127.0.0.1:0".parse().expect("address"));
    let runtime = Arc::new(quinn::TokioRuntime);
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        socket()?,
        runtime.clone(),
    )?;
    let addr = server.local_addr()?;
    let mut client =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket()?, runtime)?;
    client.set_default_client_config(client_cfg);
    let store = match receiver {
        Receiver::Discard => None,
        Receiver::HashAndStore(path) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(2);
            let path = path.to_owned();
            Some((tx, std::thread::spawn(move || hash_and_store(&path, rx))))
        }
    };
    let (batches, store) = store.unzip();
    let recv = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let mut stream = conn.accept_uni().await?;
        let mut total = 0usize;
        let Some(batches) = batches else {
            let mut buf = vec![0u8; 64 * 1024];
            while let Some(n) = stream.read(&mut buf).await? {
                total += n;
            }
            return anyhow::Ok(total);
        };
        let mut batch = Vec::with_capacity(64);
        let mut record = vec![0u8; RECORD_BYTES];
        let mut filled = 0;
        loop {
            let n = stream.read(&mut record[filled..]).await?;
            let end = n.is_none();
            filled += n.unwrap_or(0);
            if filled == RECORD_BYTES || (end && filled > 0) {
                record.truncate(filled);
                total += filled;
                batch.push(std::mem::replace(&mut record, vec![0u8; RECORD_BYTES]));
                filled = 0;
            }
            if batch.len() == 64 || (end && !batch.is_empty()) {
                // A blocking send: the store thread sets the pace, as a disk would.
                let full = std::mem::replace(&mut batch, Vec::with_capacity(64));
                tokio::task::block_in_place(|| batches.send(full))
                    .map_err(|_| anyhow::anyhow!("the store thread stopped"))?;
            }
            if end {
                return anyhow::Ok(total);
            }
        }
    });
    let conn = client.connect(addr, "localhost")?.await?;
    let chunk = vec![7u8; 64 * 1024];
    let start = Instant::now();
    let mut send = conn.open_uni().await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        send.write_all(&chunk[..n]).await?;
        left -= n;
    }
    send.finish()?;
    let got = recv.await??;
    // Stored means durable: the time includes the last batch's fdatasync.
    if let Some(store) = store {
        let stored = tokio::task::block_in_place(|| store.join())
            .map_err(|_| anyhow::anyhow!("the store thread panicked"))??;
        if stored != bytes {
            bail!("raw quinn stored {stored} of {bytes} bytes");
        }
    }
    let took = start.elapsed();
    if got != bytes {
        bail!("raw quinn moved {got} of {bytes} bytes");
    }
    conn.close(0u32.into(), b"done");
    Ok(took)
}

pub fn run(mb: usize, runs: usize) -> Result<()> {
    let bytes = mb * 1024 * 1024;
    crate::blob::check_size(bytes as u64)?;
    let runs = runs.max(1);
    println!(
        "== bulk throughput on 127.0.0.1: {mb} MiB, {runs} alternated runs of each (raw quinn, raw quinn with ChaCha20 first, raw quinn with the least work a receiver must do, a libp2p stream on our transport, fieldmesh); ratios of medians"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("fieldmesh-bench-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The CI profile with no effective per-link cap.
    let profile = dir.join("fast-link.toml");
    let text = fieldmesh_profiles::BUILTIN
        .iter()
        .find(|(n, _)| *n == "ci-loopback")
        .map(|(_, t)| *t)
        .context("ci-loopback profile")?;
    std::fs::write(
        &profile,
        text.replace(
            "per_link_budget_bytes_per_s = 67108864",
            "per_link_budget_bytes_per_s = 4294967296",
        ),
    )?;
    let profile = profile.to_str().context("path")?.to_owned();
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let (mut raw, mut chacha, mut ours, mut startup) = (vec![], vec![], vec![], vec![]);
    // The transport alone: libp2p and our QUIC, chunk-sized frames, no node behind it.
    let mut stream = vec![];
    // Raw quinn with the least work a verifying, durable receiver must do.
    let mut least = vec![];
    // CPU milliseconds per MB moved: both ends of raw quinn (one process); our sender and
    // receiver daemons. Less swayed by the machine's load than throughput.
    let (mut raw_cpu, mut send_cpu, mut recv_cpu) = (vec![], vec![], vec![]);
    let mb_moved = bytes as f64 / 1e6;
    for run in 0..runs {
        let cpu0 = crate::local::cpu_time_of("/proc/self/stat");
        raw.push(mbps(rt.block_on(raw_quinn(
            bytes,
            false,
            Receiver::Discard,
        ))?));
        if let (Some(a), Some(b)) = (cpu0, crate::local::cpu_time_of("/proc/self/stat")) {
            raw_cpu.push((b - a).as_secs_f64() * 1e3 / mb_moved);
        }
        chacha.push(mbps(rt.block_on(raw_quinn(
            bytes,
            true,
            Receiver::Discard,
        ))?));
        least.push(mbps(rt.block_on(raw_quinn(
            bytes,
            false,
            Receiver::HashAndStore(&dir.join("least.log")),
        ))?));
        stream.push(mbps(rt.block_on(
            fieldmesh_net::transport_bench::stream_throughput(bytes, crate::blob::CHUNK_BYTES),
        )?));
        let t = mesh_transfer(&exe, &dir.join(format!("run{run}")), &profile, &data)?;
        let (from_connection, with_startup) = (t.from_connection, t.with_startup);
        if let Some((s, r)) = t.cpu {
            send_cpu.push(s.as_secs_f64() * 1e3 / mb_moved);
            recv_cpu.push(r.as_secs_f64() * 1e3 / mb_moved);
        }
        ours.push(mbps(from_connection));
        startup.push((with_startup - from_connection).as_secs_f64() * 1e3);
        println!(
            "  run {}: fieldmesh {:.1} MB/s   raw quinn {:.1} MB/s (ratio {:.2})   raw quinn ChaCha20 first {:.1} MB/s (ratio {:.2})   transport alone {:.1} MB/s   least work {:.1} MB/s",
            run + 1,
            ours[run],
            raw[run],
            ours[run] / raw[run],
            chacha[run],
            ours[run] / chacha[run],
            stream[run],
            least[run],
        );
    }
    let (ours_m, raw_m, chacha_m) = (
        median(ours.clone()),
        median(raw.clone()),
        median(chacha.clone()),
    );
    println!(
        "fieldmesh from connection (reconcile, verify, group-committed fsync): {ours_m:.1} MB/s   raw quinn stream: {raw_m:.1} MB/s   ratio {:.2} (target 0.80)",
        ours_m / raw_m
    );
    println!(
        "  raw quinn with libp2p-quic's cipher order (ChaCha20-Poly1305 first; ours offers AES-GCM first): {chacha_m:.1} MB/s   ours / that {:.2}",
        ours_m / chacha_m
    );
    let stream_m = median(stream.clone());
    println!(
        "  where the gap is: a libp2p stream on our QUIC transport alone (chunk-sized frames, nothing stored or verified) {stream_m:.1} MB/s = {:.2} of raw quinn; fieldmesh = {:.2} of that",
        stream_m / raw_m,
        ours_m / stream_m
    );
    let least_m = median(least.clone());
    println!(
        "  the least work a receiver must do (raw quinn, each 48 KiB record hashed with SHA-256 and appended with O_DIRECT, fdatasync per 64; network, hashing and disk overlapped): {least_m:.1} MB/s = {:.2} of raw quinn (the ceiling of the ratio above for any receiver that verifies and stores); fieldmesh = {:.2} of that",
        least_m / raw_m,
        ours_m / least_m
    );
    println!(
        "  receiver start-up and connection took {:.0} ms more (median)",
        median(startup.clone())
    );
    if !(raw_cpu.is_empty() || send_cpu.is_empty()) {
        let (r, sc, rc) = (
            median(raw_cpu.clone()),
            median(send_cpu.clone()),
            median(recv_cpu.clone()),
        );
        println!(
            "  CPU per MB moved (medians): raw quinn both ends {r:.2} ms   fieldmesh sender {sc:.2} ms + receiver {rc:.2} ms = {:.2} ms ({:.2}x raw quinn's)",
            sc + rc,
            (sc + rc) / r
        );
    }
    let disk = durable_ceiling(&dir, bytes)?;
    let disk_mbps = mbps(disk);
    println!(
        "  durable-write ceiling on this disk (appending the same chunks to a file, fdatasync per 64): {disk_mbps:.1} MB/s   ours / ceiling {:.2}   min(raw quinn, ceiling) {:.1} MB/s   ours / that {:.2}",
        ours_m / disk_mbps,
        raw_m.min(disk_mbps),
        ours_m / raw_m.min(disk_mbps)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One mesh transfer's times.
struct Transfer {
    from_connection: Duration,
    with_startup: Duration,
    /// CPU time the sender and the receiver used from connection to completion.
    cpu: Option<(Duration, Duration)>,
}

/// Posts `data` as an attachment on a fresh daemon, starts a second one that dials it, and
/// times the transfer from the established connection, and from the second's start.
fn mesh_transfer(
    exe: &std::path::Path,
    dir: &std::path::Path,
    profile: &str,
    data: &[u8],
) -> Result<Transfer> {
    std::fs::create_dir_all(dir)?;
    let mut na = LocalNode::init(exe, dir, "a", profile)?;
    let mut nb = LocalNode::init(exe, dir, "b", profile)?;
    let ra = na
        .start(&["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])?
        .clone();
    let a = Client::new(&ra.http);
    let ch = a.create_channel("bulk", None)?.id.to_hex();
    let att = a.put_blob(&ch, "bulk.bin", "application/octet-stream", data)?;
    let msg = a.post(
        &ch,
        &PostRequest {
            text: "bulk".into(),
            precedence: None,
            reply_to: None,
            attachments: vec![att],
        },
    )?;
    let total = a.net()?.envelopes;
    let t0 = Instant::now();
    let rb = nb.start(&["--peer", &na.listen("quic")?])?.clone();
    let b = Client::new(&rb.http);
    // Raw quinn is timed from an established connection; so is the mesh (the daemon's
    // start-up and the handshake are reported separately).
    while !b
        .net()
        .map(|s| s.peers.iter().any(|p| p.connected))
        .unwrap_or(false)
    {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("B never connected to A");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let connected = Instant::now();
    let cpu0 = na.cpu_time().zip(nb.cpu_time());
    loop {
        if b.net().map(|s| s.envelopes >= total).unwrap_or(false) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("transfer did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let from_connection = connected.elapsed();
    let with_startup = t0.elapsed();
    let cpu = cpu0
        .zip(na.cpu_time().zip(nb.cpu_time()))
        .map(|((s0, r0), (s1, r1))| (s1 - s0, r1 - r0));
    let times = Transfer {
        from_connection,
        with_startup,
        cpu,
    };
    let got = b.get_attachment(&msg.id, 0)?;
    if got != data {
        bail!("attachment differs after transfer");
    }
    drop((nb, na));
    let _ = std::fs::remove_dir_all(dir);
    Ok(times)
}

/// The physical limit of "acknowledged means durable" here: the same number of
/// chunk-sized records (48 KiB + an envelope header) appended to one file, 64 per batch,
/// each batch made durable (`fdatasync`), in the same file system as the daemons' stores.
fn durable_ceiling(dir: &std::path::Path, bytes: usize) -> Result<Duration> {
    use std::io::Write;
    let path = dir.join("ceiling.log");
    let mut f = std::fs::File::create(&path)?;
    let value = vec![0x5au8; crate::blob::CHUNK_BYTES + 300];
    let chunks = bytes.div_ceil(crate::blob::CHUNK_BYTES);
    let t = Instant::now();
    for start in (0..chunks).step_by(64) {
        for _ in start..(start + 64).min(chunks) {
            f.write_all(&value)?;
        }
        f.sync_data()?;
    }
    let took = t.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(took)
}
