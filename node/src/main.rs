//! `fieldmesh`: the Fieldmesh node. See `fieldmesh --help`.

mod access;
mod access_cli;
mod ai;
mod ai_cli;
mod api;
mod audit;
mod bench;
mod bench_access;
mod bench_ai;
mod bench_quic;
mod bench_sync;
mod blob;
mod bundle;
mod client;
mod demo;
mod home;
mod local;
mod models;
mod node;
mod ops;
mod relay;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fieldmesh_channel::MessageView;
use fieldmesh_core::Precedence;
use fieldmesh_profiles::Profile;
use home::{DaemonRecord, Home};
use node::Node;
use ops::{Ops, PostRequest};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "fieldmesh",
    version,
    about = "Fieldmesh: an edge mesh node for DDIL networks"
)]
struct Cli {
    /// Node home directory.
    #[arg(long, global = true, env = "FIELDMESH_HOME")]
    home: Option<PathBuf>,
    /// Firmware profile: a built-in name (see firmware-profiles/) or a .toml path.
    #[arg(
        long,
        global = true,
        env = "FIELDMESH_PROFILE",
        default_value = "rugged-laptop-x86"
    )]
    profile: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create this node's identity and home directory.
    Init {
        /// A human name for this node (callsign).
        #[arg(long, default_value = "node")]
        name: String,
    },
    /// Print this node's id (short and full).
    Id {
        #[arg(long)]
        json: bool,
    },
    /// Manage channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Post a message; prints the message id.
    Post {
        /// Channel name or id.
        channel: String,
        /// Message text (optional with --voice).
        text: Option<String>,
        #[arg(long, default_value = "routine", value_parser = parse_precedence)]
        precedence: Precedence,
        /// Reply in the thread of this message id.
        #[arg(long)]
        reply_to: Option<String>,
        /// Attach a file (repeatable); it travels as verified, resumable chunks.
        #[arg(long)]
        attach: Vec<PathBuf>,
        /// A voice message (WAV): attached, then transcribed on this node into a linked
        /// transcript with per-segment timestamps and confidence.
        #[arg(long)]
        voice: Option<PathBuf>,
    },
    /// Translate a message into a linked translation (model, checked; else Apertium).
    Translate {
        message: String,
        #[arg(long)]
        to: String,
        /// Source language (default: detected, else English).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Transcribe the voice attachment of a message.
    Transcribe {
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// Search what this node may read: keywords plus semantic similarity.
    Search {
        query: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Attachments of messages.
    #[command(subcommand)]
    Attachment(AttachmentCmd),
    /// Read a channel.
    Read {
        channel: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace the text of one of your messages.
    Edit {
        channel: String,
        message: String,
        text: String,
    },
    /// React to a message (or remove your reaction).
    React {
        channel: String,
        message: String,
        reaction: String,
        #[arg(long)]
        remove: bool,
    },
    /// Redact one of your messages: a signed deletion that replicates and never resurrects.
    Redact { channel: String, message: String },
    /// Carry envelopes by hand: export to and import from a bundle file.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Run the daemon: the mesh (when given --listen or --peer) and the localhost HTTP API.
    Run {
        /// Address for the HTTP API (loopback only). Default: the profile's.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Listen for peers (repeatable): /ip4/127.0.0.1/udp/PORT/quic-v1 or /ip4/127.0.0.1/tcp/PORT.
        #[arg(long)]
        listen: Vec<fieldmesh_net::Multiaddr>,
        /// Keep a connection to this peer (repeatable), redialling with backoff.
        #[arg(long)]
        peer: Vec<fieldmesh_net::Multiaddr>,
        /// Discover peers with mDNS on the local link (multicasts on the real interface).
        #[arg(long)]
        mdns: bool,
    },
    /// Connected peers (needs the daemon).
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Per-peer sync state: last contact, traffic each way, backlog by precedence.
    SyncStatus {
        #[arg(long)]
        json: bool,
    },
    /// Authorities: keys that sign credentials.
    #[command(subcommand)]
    Authority(access_cli::AuthorityCmd),
    /// Credentials: an authority's signed statement of a node's attributes.
    #[command(subcommand)]
    Credential(access_cli::CredentialCmd),
    /// Compartments: who may read what, by policy over credentials.
    #[command(subcommand)]
    Compartment(access_cli::CompartmentCmd),
    /// Build a structured SITREP from a channel's messages and post it as a DRAFT: every
    /// field lists its sources; model prose is kept only if it states no fact absent
    /// from them.
    Sitrep {
        channel: String,
        /// Only messages since: RFC 3339 UTC, a relative age (90m, 2h, 1d) or epoch ms.
        #[arg(long)]
        since: Option<String>,
        /// Unit name (default: the channel name).
        #[arg(long)]
        unit: Option<String>,
        /// Only messages by this author (node id or prefix), e.g. the unit's own node.
        #[arg(long)]
        author: Option<String>,
        /// Extractive only: do not run the profile's model.
        #[arg(long)]
        no_model: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve an AI product (SITREP, translation, transcript) or acknowledge a triage flag.
    Approve {
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// Reject an AI product, with an optional note.
    Reject {
        message: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The merged board: latest SITREP per unit, totals, conflicts between units.
    Board {
        #[arg(long)]
        json: bool,
    },
    /// Messages flagged by triage (casualties, MEDEVAC) and their review state.
    Triage {
        #[arg(long)]
        json: bool,
    },
    /// The signed model registry.
    #[command(subcommand)]
    Model(ai_cli::ModelCmd),
    /// The node's hash-chained, signed audit log.
    Audit {
        #[arg(long)]
        json: bool,
        /// Check the chain and signatures; exit 1 at the first broken line.
        #[arg(long)]
        verify: bool,
    },
    /// Start a small local mesh (three squads and a command post on 127.0.0.1), play
    /// scripted field traffic through it and show it converging.
    Demo {
        /// Where to put the nodes' homes (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measure store and channel performance.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[derive(Subcommand, Debug)]
enum ChannelCmd {
    /// Create a channel; prints its id.
    Create {
        name: String,
        /// Seal it under this compartment's keys (default: the open compartment).
        #[arg(long)]
        compartment: Option<String>,
    },
    /// List channels.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Export a channel as a standard Automerge file.
    Export {
        channel: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Translate every new message of the channel (while the daemon runs) into a
    /// language, as linked translation messages; `--off` stops.
    AutoTranslate {
        channel: String,
        #[arg(long, required_unless_present = "off")]
        to: Option<String>,
        #[arg(long, conflicts_with = "to")]
        off: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AttachmentCmd {
    /// Write a message's attachment to a file, verified against its hash.
    Get {
        message: String,
        #[arg(long)]
        out: PathBuf,
        /// Which attachment of the message (0 = first).
        #[arg(long, default_value_t = 0)]
        index: usize,
    },
}

#[derive(Subcommand, Debug)]
enum BundleCmd {
    /// Write envelopes (all, or one channel's) to a bundle file.
    Export {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        channel: Option<String>,
    },
    /// Verify and store the envelopes of a bundle file.
    Import { file: PathBuf },
}

fn parse_precedence(s: &str) -> Result<Precedence, String> {
    Precedence::parse(s).map_err(|e| e.to_string())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIELDMESH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The local node if the store is free, else the running daemon's API.
fn backend(home: &Home, profile: &Profile) -> Result<Box<dyn Ops>> {
    let key = home.key()?;
    match Node::open_store(&home.store_path(), profile) {
        Ok(store) => Ok(Box::new(
            Node::new(key, home.name()?, store, profile.clone()).with_home(&home.root)?,
        )),
        Err(fieldmesh_store::OpenError::Locked(_)) => match home.daemon()? {
            Some(rec) => Ok(Box::new(client::Client::new(&rec.http))),
            None => bail!(
                "the store is locked by another process and no daemon is registered in {}",
                home.root.display()
            ),
        },
        Err(e) => Err(e.into()),
    }
}

fn run(cli: Cli) -> Result<()> {
    let home = Home::resolve(cli.home)?;
    let profile = || Profile::resolve(&cli.profile).map_err(anyhow::Error::from);
    match cli.cmd {
        Cmd::Init { name } => {
            let key = home.init(&name)?;
            println!("initialised {} as {name}", home.root.display());
            println!("node id: {} ({})", key.node_id().short(), key.node_id());
        }
        Cmd::Id { json } => {
            let key = home.key()?;
            let id = key.node_id();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "short": id.short(), "id": id.to_hex(), "name": home.name()? })
                );
            } else {
                println!("{} {}", id.short(), home.name()?);
                println!("{id}");
            }
        }
        Cmd::Channel(c) => {
            let ops = backend(&home, &profile()?)?;
            match c {
                ChannelCmd::Create { name, compartment } => {
                    println!("{}", ops.create_channel(&name, compartment.as_deref())?.id)
                }
                ChannelCmd::List { json } => {
                    let list = ops.channels()?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        for c in list {
                            println!(
                                "{}  {:<24} {:>6} messages  created by {}",
                                c.id,
                                c.name,
                                c.messages,
                                c.creator.short()
                            );
                        }
                    }
                }
                ChannelCmd::AutoTranslate { channel, to, off } => {
                    let to = if off { None } else { to };
                    let v = ops.ai(&ai::AiRequest::AutoTranslate { channel, to })?;
                    match v["auto_translate"].as_str() {
                        Some(l) => {
                            println!("new messages in {} are translated into {l}", v["channel"])
                        }
                        None => println!("automatic translation off for {}", v["channel"]),
                    }
                }
                ChannelCmd::Export { channel, out } => {
                    let bytes = ops.export_channel(&channel)?;
                    home::write_atomic(&out, &bytes)?;
                    println!("wrote {} bytes to {}", bytes.len(), out.display());
                }
            }
        }
        Cmd::Post {
            channel,
            text,
            precedence,
            reply_to,
            attach,
            voice,
        } => {
            let ops = backend(&home, &profile()?)?;
            let text = match (text, &voice) {
                (Some(t), _) => t,
                (None, Some(p)) => format!(
                    "[voice message: {}]",
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ),
                (None, None) => bail!("post needs TEXT, or --voice FILE.wav"),
            };
            // Every file is checked before any is stored: chunks stored for a post that
            // then fails on its next file would be referenced by no message, and still
            // replicate to every peer.
            let files: Vec<(&PathBuf, bool)> = voice
                .iter()
                .map(|p| (p, true))
                .chain(attach.iter().map(|p| (p, false)))
                .collect();
            for (path, _) in &files {
                let size = std::fs::metadata(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .len();
                blob::check_size(size).with_context(|| path.display().to_string())?;
            }
            let mut attachments = Vec::new();
            for (path, is_voice) in files {
                let data =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let (name, mime) = if is_voice {
                    fieldmesh_ai::whisper::read_wav(&data)
                        .with_context(|| format!("{} is not a usable WAV file", path.display()))?;
                    (name.unwrap_or_else(|| "voice.wav".into()), "audio/wav")
                } else {
                    (name.unwrap_or_default(), "application/octet-stream")
                };
                attachments.push(ops.put_blob(&channel, &name, mime, &data)?);
            }
            let posted = ops.post(
                &channel,
                &PostRequest {
                    text,
                    precedence: Some(precedence),
                    reply_to,
                    attachments,
                },
            )?;
            println!("{}", posted.id);
            if voice.is_some() {
                match ops.ai(&ai::AiRequest::Transcribe {
                    message: posted.id.clone(),
                }) {
                    Ok(v) => println!(
                        "transcript {} ({} confidence): {}",
                        v["posted"]["id"].as_str().unwrap_or("?"),
                        v["confidence"].as_str().unwrap_or("?"),
                        v["text"].as_str().unwrap_or("")
                    ),
                    Err(e) => eprintln!(
                        "warning: the voice message is posted but was not transcribed here: {e}"
                    ),
                }
            }
        }
        Cmd::Translate {
            message,
            to,
            from,
            json,
        } => ai_cli::translate(
            backend(&home, &profile()?)?.as_ref(),
            message,
            to,
            from,
            json,
        )?,
        Cmd::Transcribe { message, json } => {
            ai_cli::transcribe(backend(&home, &profile()?)?.as_ref(), message, json)?
        }
        Cmd::Search { query, limit, json } => {
            ai_cli::search(backend(&home, &profile()?)?.as_ref(), query, limit, json)?
        }
        Cmd::Attachment(AttachmentCmd::Get {
            message,
            out,
            index,
        }) => {
            let data = backend(&home, &profile()?)?.get_attachment(&message, index)?;
            home::write_atomic(&out, &data)?;
            println!("wrote {} bytes to {}", data.len(), out.display());
        }
        Cmd::Read { channel, json } => {
            let msgs = backend(&home, &profile()?)?.read(&channel)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&msgs)?);
            } else {
                print_messages(&msgs);
            }
        }
        Cmd::Edit {
            channel,
            message,
            text,
        } => {
            println!(
                "{}",
                backend(&home, &profile()?)?
                    .edit(&channel, &message, &text)?
                    .id
            );
        }
        Cmd::React {
            channel,
            message,
            reaction,
            remove,
        } => {
            println!(
                "{}",
                backend(&home, &profile()?)?
                    .react(&channel, &message, &reaction, !remove)?
                    .id
            );
        }
        Cmd::Redact { channel, message } => {
            println!(
                "{}",
                backend(&home, &profile()?)?.redact(&channel, &message)?.id
            );
        }
        Cmd::Bundle(BundleCmd::Export { out, channel }) => {
            let bytes = backend(&home, &profile()?)?.export_bundle(channel.as_deref())?;
            home::write_atomic(&out, &bytes)?;
            println!("wrote {} bytes to {}", bytes.len(), out.display());
        }
        Cmd::Bundle(BundleCmd::Import { file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = backend(&home, &profile()?)?.import_bundle(&bytes)?;
            println!(
                "{} envelopes: {} new, {} already held, {} rejected",
                report.total,
                report.inserted,
                report.duplicates,
                report.rejected.len()
            );
            for r in &report.channel_rejects {
                println!("stored but refused by channel rules: {r}");
            }
            if report.declined > 0 {
                println!(
                    "{} envelopes for others not kept: this node's relay quota is full",
                    report.declined
                );
            }
            if report.evicted > 0 {
                println!(
                    "{} older, less urgent envelopes for others removed to make room (relay quota)",
                    report.evicted
                );
            }
            if !report.rejected.is_empty() {
                for r in &report.rejected {
                    eprintln!("rejected {r}");
                }
                bail!(
                    "{} of {} envelopes in {} were rejected (the valid ones were stored)",
                    report.rejected.len(),
                    report.total,
                    file.display()
                );
            }
        }
        Cmd::Run {
            http,
            listen,
            peer,
            mdns,
        } => {
            let profile = profile()?;
            let mut peer = peer;
            for (i, a) in profile.sync.peers.iter().enumerate() {
                let addr = a.parse().map_err(|e| {
                    anyhow::anyhow!("profile {}: sync.peers[{i}] {a:?}: {e}", profile.name)
                })?;
                if !peer.contains(&addr) {
                    peer.push(addr);
                }
            }
            for a in listen.iter().chain(&peer) {
                fieldmesh_net::check_address(a).map_err(anyhow::Error::msg)?;
            }
            let net = NetArgs {
                listen,
                peers: peer,
                mdns,
            };
            daemon(&home, profile, http, net)?
        }
        Cmd::Peers { json } => {
            let view = backend(&home, &profile()?)?.net()?;
            let connected: Vec<&ops::PeerView> =
                view.peers.iter().filter(|p| p.connected).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&connected)?);
            } else {
                println!("{} peer(s) connected to {}", connected.len(), view.peer_id);
                for p in connected {
                    println!("{}  {}", p.peer, p.addresses.join(" "));
                }
            }
        }
        Cmd::SyncStatus { json } => {
            let view = backend(&home, &profile()?)?.net()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!(
                    "node {} holds {} envelopes; listening on {}",
                    view.peer_id,
                    view.envelopes,
                    view.listen.join(" ")
                );
                println!(
                    "carrying {} B for others (relay quota {} B); {} envelopes declined (over it, or dated over a day ahead), {} removed to make room, {} aged out (retention)",
                    view.relay_bytes,
                    view.relay_quota_bytes,
                    view.relay_declined,
                    view.relay_evicted,
                    view.relay_aged_out
                );
                let now = node::now_ms();
                for p in &view.peers {
                    let backlog: Vec<String> = p
                        .backlog
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(k, n)| format!("{k}:{n}"))
                        .collect();
                    let state = if p.banned_until_ms > now {
                        format!(
                            "banned {}s more ({} strikes)",
                            (p.banned_until_ms - now).div_ceil(1000),
                            p.strikes
                        )
                    } else if p.connected {
                        "connected".to_owned()
                    } else {
                        "gone".to_owned()
                    };
                    println!(
                        "{}  {state}  last contact {:.1}s ago  sent {} env / {} B  received {} env / {} B  backlog [{}]",
                        p.peer,
                        now.saturating_sub(p.last_contact_ms) as f64 / 1000.0,
                        p.envelopes_sent,
                        p.bytes_sent,
                        p.envelopes_received,
                        p.bytes_received,
                        backlog.join(" ")
                    );
                }
            }
        }
        Cmd::Authority(c) => access_cli::authority(&home, c)?,
        Cmd::Credential(c) => access_cli::credential(&home, c, || backend(&home, &profile()?))?,
        Cmd::Compartment(c) => access_cli::compartment(c, backend(&home, &profile()?)?.as_ref())?,
        Cmd::Audit { json, verify } => access_cli::audit(&home, json, verify)?,
        Cmd::Sitrep {
            channel,
            since,
            unit,
            author,
            no_model,
            json,
        } => ai_cli::sitrep(
            backend(&home, &profile()?)?.as_ref(),
            ai_cli::SitrepArgs {
                channel,
                since,
                unit,
                author,
                no_model,
                json,
            },
        )?,
        Cmd::Approve { message, json } => ai_cli::review(
            backend(&home, &profile()?)?.as_ref(),
            &message,
            "approved".into(),
            json,
        )?,
        Cmd::Reject {
            message,
            note,
            json,
        } => {
            let verdict = note.map_or_else(|| "rejected".to_owned(), |n| format!("rejected: {n}"));
            ai_cli::review(
                backend(&home, &profile()?)?.as_ref(),
                &message,
                verdict,
                json,
            )?
        }
        Cmd::Board { json } => ai_cli::board(backend(&home, &profile()?)?.as_ref(), json)?,
        Cmd::Triage { json } => ai_cli::triage(backend(&home, &profile()?)?.as_ref(), json)?,
        Cmd::Model(c) => ai_cli::model(&home, c, &profile()?)?,
        Cmd::Bench(b) => bench::run(b)?,
        Cmd::Demo { dir } => demo::run(dir, &cli.profile)?,
    }
    Ok(())
}

fn print_messages(msgs: &[MessageView]) {
    for m in msgs {
        let flags = [
            m.edited.then_some("edited"),
            m.redacted.then_some("redacted"),
            m.reply_to.as_ref().map(|_| "reply"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(",");
        let text = if m.redacted {
            "[redacted]"
        } else {
            m.text.as_str()
        };
        println!(
            "{} {:<9} {} {}{} {}",
            m.time,
            m.precedence.name().to_uppercase(),
            m.author.short(),
            m.id,
            if flags.is_empty() {
                String::new()
            } else {
                format!(" ({flags})")
            },
            text
        );
        if let Some(r) = &m.reply_to {
            println!("    ↳ in reply to {r}");
        }
        for a in &m.attachments {
            println!(
                "    📎 {} ({} bytes, {}) {}",
                a.name, a.size, a.mime, a.hash
            );
        }
        if !m.reactions.is_empty() {
            let r: Vec<String> = m
                .reactions
                .iter()
                .map(|(k, v)| format!("{k}×{}", v.len()))
                .collect();
            println!("    {}", r.join(" "));
        }
    }
}

struct NetArgs {
    listen: Vec<fieldmesh_net::Multiaddr>,
    peers: Vec<fieldmesh_net::Multiaddr>,
    mdns: bool,
}

fn net_config(profile: &Profile, args: NetArgs) -> fieldmesh_net::NetConfig {
    let engine = fieldmesh_sync::engine::EngineConfig {
        // At least the largest envelope and its frame (the profile's validation).
        max_frame_bytes: profile.sync.max_frame_bytes as usize,
        link_rate_bytes_per_s: profile.sync.per_link_budget_bytes_per_s,
        // One second of budget: urgent traffic is never stuck behind a long burst of bulk
        // (an envelope larger than the burst still goes once the bucket is full).
        link_burst_bytes: profile.sync.per_link_budget_bytes_per_s,
        resync_interval_ms: u64::from(profile.sync.reconcile_interval_s) * 1000,
        // At a meeting the side with the higher id waits for the other's session: 2 s
        // plus two round trips over the profile's slowest bearer.
        answer_grace_ms: 2_000
            + 4 * profile
                .bearers
                .iter()
                .map(|b| u64::from(b.latency_ms))
                .max()
                .unwrap_or(0),
        ..Default::default()
    };
    fieldmesh_net::NetConfig {
        listen: args.listen,
        peers: args.peers,
        mdns: args.mdns,
        engine,
        max_inbound: profile.sync.max_peers,
        mtu_probe: mtu_probe(profile),
        ..Default::default()
    }
}

/// The UDP payload QUIC probes a path for: the smallest of the profile's bearers that can
/// carry QUIC at all (1,200 bytes of UDP payload), less IPv6 and UDP headers; a path on
/// any of them then takes the probe. No such bearer: no probing.
fn mtu_probe(profile: &Profile) -> u16 {
    const IP6_UDP: u32 = 48;
    profile
        .bearers
        .iter()
        .map(|b| b.mtu_bytes.saturating_sub(IP6_UDP))
        .filter(|&m| m >= 1200)
        .min()
        .map_or(1200, |m| m.min(1452) as u16)
}

fn daemon(
    home: &Home,
    profile: Profile,
    http: Option<std::net::SocketAddr>,
    net: NetArgs,
) -> Result<()> {
    let key = home.key()?;
    let addr = http.unwrap_or(profile.api.http_default);
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to serve the API on {addr}: it has no authentication yet, so it listens on loopback only"
        );
    }
    let store = Node::open_store(&home.store_path(), &profile)?;
    let node = Arc::new(Node::new(key, home.name()?, store, profile).with_home(&home.root)?);
    node.start_duty_thread();
    node.start_ai_thread();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let mut record = DaemonRecord {
            pid: std::process::id(),
            http: local.to_string(),
            node_id: node.node_id().to_hex(),
            peer_id: None,
            listen: vec![],
        };
        let network = if net.listen.is_empty() && net.peers.is_empty() && !net.mdns {
            None
        } else {
            let cfg = net_config(node.profile(), net);
            let index = tokio::task::block_in_place(|| node.sync_index())?;
            let keypair = fieldmesh_net::keypair_from_seed(node.key().transport_seed());
            let peer_id = fieldmesh_net::PeerId::from(keypair.public());
            let host = Arc::new(node::NodeHost(node.clone()));
            let (handle, bound) = fieldmesh_net::spawn(keypair, cfg, index, host).await?;
            node.attach_net(handle.clone());
            record.listen = bound.iter().map(|a| a.to_string()).collect();
            record.peer_id = Some(peer_id.to_string());
            for a in &bound {
                println!("listening on {a}/p2p/{peer_id}");
            }
            Some(handle)
        };
        home.write_daemon(&record)?;
        tracing::info!(%local, node = %node.node_id().short(), "daemon listening");
        println!(
            "fieldmesh node {} serving http://{local}/api/v1",
            node.node_id().short()
        );
        let (tx, rx) = tokio::sync::watch::channel(false);
        let app = api::router(node, api::Shutdown(rx));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                let _ = tx.send(true);
            })
            .await;
        if let Some(n) = network {
            n.shutdown().await;
        }
        home.remove_daemon();
        served.context("http server failed")
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
