//! CLI commands for authorities, credentials, compartments and the audit log.

use crate::access::{AccessRequest, load_trust};
use crate::home::Home;
use crate::ops::Ops;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use fieldmesh_core::NodeId;
use fieldmesh_crypto::credential::{format_date, parse_date};
use fieldmesh_crypto::{Credential, NodeKey, TrustedAuthority};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AuthorityCmd {
    /// Create an authority key in this home (trusted by this node); prints its id.
    Init { name: String },
    /// Trust another authority's credentials, optionally only for some attribute values.
    Trust {
        /// The authority's id (from `authority init` or `authority list` on its home).
        id: NodeId,
        #[arg(long)]
        name: String,
        /// Limit what it may assert, e.g. --scope nation=JPN (repeatable).
        #[arg(long)]
        scope: Vec<String>,
    },
    /// Authorities held here and trusted here.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredentialCmd {
    /// Issue a credential with an authority held in this home.
    Issue {
        /// The subject's node id.
        #[arg(long)]
        node: NodeId,
        /// An attribute, name=value (repeatable): nation=JPN, clearance=SECRET, role=medic.
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Last day of validity is the day before this date (YYYY-MM-DD, UTC).
        #[arg(long)]
        expires: String,
        /// Which authority (needed when this home holds several).
        #[arg(long)]
        authority: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a credential file and publish it to the directory.
    Import { file: PathBuf },
    /// Credentials in the directory, and whether this node accepts each.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CompartmentCmd {
    /// Create a compartment; its first key epoch is granted to every node whose
    /// credentials satisfy the policy.
    Create {
        name: String,
        /// e.g. 'nation in [USA, JPN] and clearance >= SECRET'
        #[arg(long)]
        policy: String,
        /// A co-admin who may also rotate and grant (repeatable).
        #[arg(long)]
        admin: Vec<NodeId>,
    },
    /// Revoke a node: rotate to a new epoch granted to everyone else.
    Revoke { compartment: String, node: NodeId },
    /// Compartments, epochs, members, and what this node holds.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn authority_dir(home: &Home) -> PathBuf {
    home.root.join("authorities")
}

fn save_trust(home: &Home, trust: &[TrustedAuthority]) -> Result<()> {
    let path = home.root.join("trust.json");
    crate::home::write_atomic(&path, &serde_json::to_vec_pretty(trust)?)
}

fn add_trust(home: &Home, t: TrustedAuthority) -> Result<()> {
    let mut trust = load_trust(Some(&home.root))?;
    trust.retain(|x| x.id != t.id);
    trust.push(t);
    save_trust(home, &trust)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        bail!("authority names are 1-32 letters, digits, '-' or '_'");
    }
    Ok(())
}

pub fn authority(home: &Home, cmd: AuthorityCmd) -> Result<()> {
    home.key()?;
    match cmd {
        AuthorityCmd::Init { name } => {
            check_name(&name)?;
            let dir = authority_dir(home);
            std::fs::create_dir_all(&dir)?;
            let key = NodeKey::create(&dir.join(format!("{name}.key")))
                .with_context(|| format!("creating authority {name}"))?;
            add_trust(
                home,
                TrustedAuthority {
                    name: name.clone(),
                    id: key.node_id(),
                    scope: BTreeMap::new(),
                },
            )?;
            println!("authority {name}: {}", key.node_id());
        }
        AuthorityCmd::Trust { id, name, scope } => {
            check_name(&name)?;
            let mut s: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for kv in &scope {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--scope {kv:?}: expected name=value"))?;
                fieldmesh_crypto::credential::check_attribute(k, v)?;
                s.entry(k.to_owned()).or_default().push(v.to_owned());
            }
            add_trust(
                home,
                TrustedAuthority {
                    name: name.clone(),
                    id,
                    scope: s,
                },
            )?;
            println!("trusting {name} ({})", id.short());
        }
        AuthorityCmd::List { json } => {
            let mut held = Vec::new();
            if let Ok(rd) = std::fs::read_dir(authority_dir(home)) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "key") {
                        let k = NodeKey::load(&p)?;
                        let name = p
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        held.push(serde_json::json!({"name": name, "id": k.node_id()}));
                    }
                }
            }
            let trusted = load_trust(Some(&home.root))?;
            if json {
                println!("{}", serde_json::json!({"held": held, "trusted": trusted}));
            } else {
                for h in &held {
                    println!(
                        "held     {}  {}",
                        h["id"].as_str().unwrap_or(""),
                        h["name"].as_str().unwrap_or("")
                    );
                }
                for t in &trusted {
                    let scope: Vec<String> = t
                        .scope
                        .iter()
                        .map(|(k, v)| format!("{k} in [{}]", v.join(", ")))
                        .collect();
                    println!(
                        "trusted  {}  {}  {}",
                        t.id,
                        t.name,
                        if scope.is_empty() {
                            "(any attributes)".into()
                        } else {
                            scope.join(" and ")
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

fn held_authority(home: &Home, name: Option<&str>) -> Result<(String, NodeKey)> {
    let dir = authority_dir(home);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.path()
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let name = match (name, names.as_slice()) {
        (Some(n), _) => n.to_owned(),
        (None, [one]) => one.clone(),
        (None, []) => bail!(
            "{} holds no authority: run `fieldmesh --home {} authority init NAME`",
            home.root.display(),
            home.root.display()
        ),
        (None, many) => bail!(
            "{} holds several authorities ({}): choose one with --authority",
            home.root.display(),
            many.join(", ")
        ),
    };
    let key = NodeKey::load(&dir.join(format!("{name}.key")))
        .with_context(|| format!("authority {name:?} is not held in {}", home.root.display()))?;
    Ok((name, key))
}

pub fn credential(
    home: &Home,
    cmd: CredentialCmd,
    ops: impl FnOnce() -> Result<Box<dyn Ops>>,
) -> Result<()> {
    match cmd {
        CredentialCmd::Issue {
            node,
            attrs,
            expires,
            authority,
            out,
        } => {
            let (name, key) = held_authority(home, authority.as_deref())?;
            let mut a = BTreeMap::new();
            for kv in &attrs {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--attr {kv:?}: expected name=value"))?;
                if a.insert(k.to_owned(), v.to_owned()).is_some() {
                    bail!("--attr {k} given twice");
                }
            }
            let expires_ms = parse_date(&expires).map_err(anyhow::Error::msg)?;
            let now = crate::node::now_ms();
            let issued = now.min(expires_ms.saturating_sub(1));
            if expires_ms <= now {
                eprintln!("warning: this credential expired on {expires}; nodes will refuse it");
            }
            let c = Credential::issue(&key, &name, node, a, issued, expires_ms)?;
            match out {
                Some(p) => {
                    std::fs::write(&p, c.to_json())
                        .with_context(|| format!("writing {}", p.display()))?;
                    println!(
                        "wrote credential for {} by {name} to {}",
                        node.short(),
                        p.display()
                    );
                }
                None => println!("{}", c.to_json()),
            }
        }
        CredentialCmd::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let c = Credential::from_json(&bytes)
                .with_context(|| format!("{} is not a credential", file.display()))?;
            let r = ops()?.access(&AccessRequest::ImportCredential { credential: c })?;
            println!(
                "credential for {} by {} (expires {}) {}",
                r["subject"].as_str().unwrap_or(""),
                r["authority"].as_str().unwrap_or(""),
                r["expires"].as_str().unwrap_or(""),
                if r["already_present"].as_bool() == Some(true) {
                    "was already published"
                } else {
                    "published"
                }
            );
            if let Some(w) = r["warning"].as_str() {
                eprintln!("warning: {w}");
            }
        }
        CredentialCmd::List { json } => {
            let r = ops()?.access(&AccessRequest::Credentials)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for c in r.as_array().into_iter().flatten() {
                    let attrs: Vec<String> = c["attributes"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect();
                    let valid = match &c["valid"] {
                        serde_json::Value::Bool(true) => "valid".to_owned(),
                        v => format!("REFUSED: {}", v.as_str().unwrap_or("")),
                    };
                    println!(
                        "{}  by {}  {}  expires {}  {valid}",
                        c["subject"].as_str().unwrap_or(""),
                        c["authority_name"].as_str().unwrap_or(""),
                        attrs.join(" "),
                        c["expires"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

pub fn compartment(cmd: CompartmentCmd, ops: &dyn Ops) -> Result<()> {
    match cmd {
        CompartmentCmd::Create {
            name,
            policy,
            admin,
        } => {
            let r = ops.access(&AccessRequest::CreateCompartment {
                name,
                policy,
                admins: admin,
            })?;
            println!("{}", r["id"].as_str().unwrap_or(""));
        }
        CompartmentCmd::Revoke { compartment, node } => {
            let r = ops.access(&AccessRequest::Revoke { compartment, node })?;
            println!(
                "revoked {} from {}: now at epoch {}",
                node.short(),
                r["compartment"].as_str().unwrap_or(""),
                r["epoch"]
            );
        }
        CompartmentCmd::List { json } => {
            let r = ops.access(&AccessRequest::Compartments)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            for c in r["compartments"].as_array().into_iter().flatten() {
                let access = if c["can_write"].as_bool() == Some(true) {
                    "member"
                } else if c["can_read"].as_bool() == Some(true) {
                    "earlier epochs only"
                } else {
                    "relay only (ciphertext)"
                };
                println!(
                    "{}  {:<16} epoch {}  {} members  {} revoked  {}{}  stored {} envelopes\n    policy: {}",
                    c["id"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or(""),
                    c["epoch"],
                    c["members"].as_array().map_or(0, Vec::len),
                    c["revoked"].as_array().map_or(0, Vec::len),
                    access,
                    if c["admin"].as_bool() == Some(true) {
                        ", admin"
                    } else {
                        ""
                    },
                    c["stored_envelopes"],
                    c["policy"].as_str().unwrap_or(""),
                );
            }
            for g in r["refused_grants"].as_array().into_iter().flatten() {
                println!(
                    "refused grant {}: {}",
                    g["grant"].as_str().unwrap_or(""),
                    g["reason"].as_str().unwrap_or("")
                );
            }
            for p in r["problems"].as_array().into_iter().flatten() {
                println!(
                    "problem {}: {}",
                    p["envelope"].as_str().unwrap_or(""),
                    p["reason"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

pub fn audit(home: &Home, json: bool, verify: bool) -> Result<()> {
    let node = home.key()?.node_id();
    let (lines, verdict) = crate::audit::read(&home.root.join("audit.log"), &node)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"lines": lines, "verdict": verdict}))?
        );
    } else if !verify {
        for l in &lines {
            println!("{:>6}  {}  {}", l.seq, format_date(l.ts_ms), l.event);
        }
    }
    if verify {
        match &verdict.broken {
            None => println!(
                "audit log intact: {} lines, head {}",
                verdict.lines, verdict.head
            ),
            Some((n, why)) => bail!("audit log broken at line {n}: {why}"),
        }
    }
    Ok(())
}
