//! Bulk throughput on loopback: an attachment through the mesh (two daemons, QUIC) next
//! to raw quinn moving the same number of bytes over one stream, in the same run.

use crate::client::Client;
use crate::local::LocalNode;
use crate::ops::{Ops, PostRequest};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Raw quinn: one unidirectional stream of `bytes` from a client to a server on 127.0.0.1.
/// `chacha`: prefer ChaCha20-Poly1305, as libp2p's TLS does (quinn's default negotiates
/// AES-GCM).
async fn raw_quinn(bytes: usize, chacha: bool) -> Result<Duration> {
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
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(client_cfg);
    let recv = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let mut stream = conn.accept_uni().await?;
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(n) = stream.read(&mut buf).await? {
            total += n;
        }
        anyhow::Ok(total)
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
    let took = start.elapsed();
    if got != bytes {
        bail!("raw quinn moved {got} of {bytes} bytes");
    }
    conn.close(0u32.into(), b"done");
    Ok(took)
}

pub fn run(mb: usize) -> Result<()> {
    let bytes = mb * 1024 * 1024;
    println!("== bulk throughput on 127.0.0.1: {mb} MiB");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let raw = rt.block_on(raw_quinn(bytes, false))?;
    let raw_mbps = bytes as f64 / raw.as_secs_f64() / 1e6;
    let raw_chacha = rt.block_on(raw_quinn(bytes, true))?;
    let chacha_mbps = bytes as f64 / raw_chacha.as_secs_f64() / 1e6;

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
    let mut na = LocalNode::init(&exe, &dir, "a", &profile)?;
    let mut nb = LocalNode::init(&exe, &dir, "b", &profile)?;
    let ra = na
        .start(&["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])?
        .clone();
    let a = Client::new(&ra.http);
    let ch = a.create_channel("bulk", None)?.id.to_hex();
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let att = a.put_blob(&ch, "bulk.bin", "application/octet-stream", &data)?;
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
    while !b.net().map(|s| !s.peers.is_empty()).unwrap_or(false) {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("B never connected to A");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let connected = Instant::now();
    let startup = connected - t0;
    loop {
        if b.net().map(|s| s.envelopes >= total).unwrap_or(false) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("transfer did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ours = connected.elapsed();
    let with_startup = t0.elapsed();
    let got = b.get_attachment(&msg.id, 0)?;
    if got != data {
        bail!("attachment differs after transfer");
    }
    let ours_mbps = bytes as f64 / ours.as_secs_f64() / 1e6;
    println!(
        "fieldmesh from connection (reconcile, verify, group-committed fsync): {ours_mbps:.1} MB/s   raw quinn stream: {raw_mbps:.1} MB/s   ratio {:.2}",
        ours_mbps / raw_mbps
    );
    println!(
        "  raw quinn with libp2p's cipher order (ChaCha20-Poly1305 first): {chacha_mbps:.1} MB/s   ours / that {:.2}",
        ours_mbps / chacha_mbps
    );
    println!(
        "  receiver start-up and connection took {:.0} ms more ({:.1} MB/s counting it)",
        startup.as_secs_f64() * 1e3,
        bytes as f64 / with_startup.as_secs_f64() / 1e6
    );
    let disk = durable_ceiling(&dir, bytes)?;
    let disk_mbps = bytes as f64 / disk.as_secs_f64() / 1e6;
    println!(
        "  durable-write ceiling on this disk (appending the same chunks to a file, fdatasync per 64): {disk_mbps:.1} MB/s   ours / ceiling {:.2}   min(raw quinn, ceiling) {:.1} MB/s   ours / that {:.2}",
        ours_mbps / disk_mbps,
        raw_mbps.min(disk_mbps),
        ours_mbps / raw_mbps.min(disk_mbps)
    );
    drop((nb, na));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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
