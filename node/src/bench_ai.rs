//! `fieldmesh bench ai`: on-device AI, measured side by side in one run.
//!
//! * LLM prompt and generation tokens/s, ours (candle) against llama.cpp's `llama-bench`
//!   on the same GGUF file and thread count, and peak RSS of each in its own process;
//! * transcription real-time factor (espeak-ng speech, Whisper through whisper.cpp);
//! * time to a SITREP over 50 messages (extraction, model prose, validation);
//! * search latency over 100,000 messages.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct AiBench {
    /// GGUF file; repeat for several (default: Qwen2.5 0.5B, Gemma 3 270M and SmolLM2
    /// 135M from the model cache). The SITREP section uses the first.
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Run only these sections (comma-separated: llm, kernels, transcription, sitrep, search).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 64)]
    pub prompt: usize,
    /// Generated tokens.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Runs of each side per model, alternated (ours, llama.cpp, ours, ...) so that a burst
    /// of load on a shared machine falls on both; ratios are of the medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// llama.cpp's llama-bench (default: from scripts/fetch-llamacpp.sh's tool cache).
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// Messages in the search corpus.
    #[arg(long, default_value_t = 100_000)]
    pub search_docs: usize,
    /// Internal: run only our LLM and print JSON (used to measure its peak RSS alone).
    #[arg(long, hide = true)]
    pub child_llm: bool,
}

fn tools_dir() -> PathBuf {
    match std::env::var_os("FIELDMESH_TOOLS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/fieldmesh/tools"),
    }
}

/// Runs `cmd`, sampling the child's peak RSS (VmHWM) until it exits.
fn run_measured(mut cmd: Command) -> Result<(std::process::Output, u64)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let mut peak_kb = 0u64;
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut o) = out_pipe {
            let _ = o.read_to_end(&mut out);
        }
        if let Some(mut e) = err_pipe {
            let _ = e.read_to_end(&mut err);
        }
        (out, err)
    });
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            peak_kb = peak_kb.max(kb);
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    Ok((
        std::process::Output {
            status,
            stdout,
            stderr,
        },
        peak_kb * 1024,
    ))
}

/// Our LLM alone: prompt of `prompt` tokens, then `tokens` greedy tokens. Prints JSON.
fn child_llm(a: &AiBench) -> Result<()> {
    let path = a.model.first().cloned().unwrap_or_else(default_model);
    let llm = fieldmesh_ai::llm::Llm::load(&path, "bench", a.threads)?;
    // A prompt of exactly the requested size: repeat a field report and cut.
    let base = "Contact at grid 38SMB 44840 12345, six fighters moving south, two technicals. ";
    let mut ids = llm.encode(&base.repeat(1 + a.prompt / 10))?;
    ids.truncate(a.prompt);
    let prompt = llm
        .tokenizer()
        .decode(&ids, false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = fieldmesh_ai::llm::GenOptions {
        max_tokens: a.tokens,
        max_context: a.prompt + a.tokens + 64,
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    };
    // Warm-up (page in the weights), then the measured run; stop tokens are ignored by
    // generating from a prompt that does not end a turn.
    llm.generate(
        &prompt,
        &fieldmesh_ai::llm::GenOptions {
            max_tokens: 4,
            ..opts.clone()
        },
        |_| true,
    )?;
    let g = llm.generate(&prompt, &opts, |_| true)?;
    println!(
        "{}",
        serde_json::json!({
            "prompt_tokens": g.prompt_tokens, "generated": g.generated_tokens,
            "pp_tps": g.prompt_tokens_per_s(), "tg_tps": g.tokens_per_s(),
        })
    );
    Ok(())
}

fn default_model() -> PathBuf {
    crate::ai_cli::model_cache().join("qwen2.5-0.5b-instruct-q4_k_m.gguf")
}

fn default_models() -> Vec<PathBuf> {
    let cache = crate::ai_cli::model_cache();
    [
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        "gemma3-270m-q4_k_m.gguf",
        "smollm2-135m-instruct-q4_1.gguf",
    ]
    .iter()
    .map(|f| cache.join(f))
    .collect()
}

fn llama_bench(bin: &Path, model: &Path, threads: usize, p: usize, n: usize) -> Result<(f64, f64)> {
    let out = Command::new(bin)
        .args([
            "-m",
            &model.display().to_string(),
            "-t",
            &threads.to_string(),
            "-p",
            &p.to_string(),
            "-n",
            &n.to_string(),
            "-r",
            "1",
            "-o",
            "json",
        ])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("llama-bench JSON")?;
    let (mut pp, mut tg) = (0.0, 0.0);
    for r in v.as_array().into_iter().flatten() {
        let np = r["n_prompt"].as_u64().unwrap_or(0);
        let ng = r["n_gen"].as_u64().unwrap_or(0);
        let ts = r["avg_ts"].as_f64().unwrap_or(0.0);
        if np > 0 && ng == 0 {
            pp = ts;
        } else if ng > 0 && np == 0 {
            tg = ts;
        }
    }
    Ok((pp, tg))
}

fn mb(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

pub fn run(a: AiBench) -> Result<()> {
    if a.child_llm {
        return child_llm(&a);
    }
    let models = if a.model.is_empty() {
        default_models()
    } else {
        a.model.clone()
    };
    let wanted = |section: &str| a.only.is_empty() || a.only.iter().any(|s| s == section);
    if wanted("llm") || wanted("sitrep") {
        for m in &models {
            if !m.is_file() {
                bail!("{} missing: run scripts/fetch-models.sh", m.display());
            }
        }
    }
    if let Some(bad) = a
        .only
        .iter()
        .find(|s| !["llm", "kernels", "transcription", "sitrep", "search"].contains(&s.as_str()))
    {
        bail!("unknown section {bad:?} (llm, kernels, transcription, sitrep, search)");
    }
    if wanted("llm") {
        for model in &models {
            llm_pair(&a, model)?;
        }
    }
    if wanted("kernels") {
        println!("== quantized matrix times one token: our kernels against candle's, same matrix");
        for line in fieldmesh_ai::kernel_bench() {
            println!("  {line}");
        }
    }
    if wanted("transcription") {
        transcription_rtf(a.threads)?;
    }
    if wanted("sitrep") {
        sitrep_time(&a, &models[0])?;
    }
    if wanted("search") {
        search_latency(a.search_docs, a.threads)?;
    }
    Ok(())
}

/// One run of our LLM in its own process: prompt and generation tokens/s, peak RSS.
fn our_llm_run(a: &AiBench, model: &Path) -> Result<(f64, f64, u64)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "bench",
        "ai",
        "--child-llm",
        "--threads",
        &a.threads.to_string(),
        "--prompt",
        &a.prompt.to_string(),
        "--tokens",
        &a.tokens.to_string(),
        "--model",
    ])
    .arg(model);
    let (out, rss) = run_measured(cmd)?;
    if !out.status.success() {
        bail!(
            "our LLM run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ours: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap_or(b"{}"),
    )?;
    Ok((
        ours["pp_tps"].as_f64().unwrap_or(0.0),
        ours["tg_tps"].as_f64().unwrap_or(0.0),
        rss,
    ))
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Ours against llama.cpp on one GGUF file: prompt and generation tokens/s (medians of
/// alternated runs), peak RSS.
fn llm_pair(a: &AiBench, model: &Path) -> Result<()> {
    let rounds = a.rounds.max(1);
    println!(
        "== LLM: {} ({} threads, prompt {} tokens, generate {}, {rounds} alternated runs each)",
        model.display(),
        a.threads,
        a.prompt,
        a.tokens
    );
    let bin = a
        .llama_bench
        .clone()
        .unwrap_or_else(|| tools_dir().join("llama.cpp/bin/llama-bench"));
    let have_ref = bin.is_file();
    let mut ref_rss = 0;
    if have_ref {
        // Peak RSS of llama.cpp generating only (`-p 0`); our child also runs the prompt and
        // a warm-up, so this ratio leans against us.
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-m",
            &model.display().to_string(),
            "-t",
            &a.threads.to_string(),
            "-p",
            "0",
            "-n",
            &a.tokens.to_string(),
            "-r",
            "1",
            "-o",
            "json",
        ]);
        ref_rss = run_measured(cmd)?.1;
    }
    let (mut ours, mut theirs, mut our_rss) = (Vec::new(), Vec::new(), 0u64);
    for _ in 0..rounds {
        let (pp, tg, rss) = our_llm_run(a, model)?;
        our_rss = our_rss.max(rss);
        ours.push((pp, tg));
        if have_ref {
            theirs.push(llama_bench(&bin, model, a.threads, a.prompt, a.tokens)?);
        }
    }
    let med = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|r| r.0).collect()),
            median(v.iter().map(|r| r.1).collect()),
        )
    };
    let (our_pp, our_tg) = med(&ours);
    println!(
        "  fieldmesh (candle): prompt {our_pp:8.1} tok/s  generation {our_tg:7.1} tok/s  peak RSS {:7.1} MiB",
        mb(our_rss)
    );
    if !have_ref {
        println!(
            "  llama.cpp: {} missing (run scripts/fetch-llamacpp.sh); no ratio",
            bin.display()
        );
        return Ok(());
    }
    let (ref_pp, ref_tg) = med(&theirs);
    println!(
        "  llama.cpp:          prompt {ref_pp:8.1} tok/s  generation {ref_tg:7.1} tok/s  peak RSS {:7.1} MiB",
        mb(ref_rss)
    );
    let per_run = |f: fn(&(f64, f64)) -> f64| {
        ours.iter()
            .zip(&theirs)
            .map(|(o, t)| format!("{:.2}", f(o) / f(t).max(1e-9)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  ratio ours/llama.cpp: generation {:.2}x (target >= 1.0), prompt {:.2}x (target >= 0.5), peak RSS {:.2}x",
        our_tg / ref_tg.max(1e-9),
        our_pp / ref_pp.max(1e-9),
        our_rss as f64 / ref_rss.max(1) as f64
    );
    println!(
        "  run by run: generation {}; prompt {}",
        per_run(|r| r.1),
        per_run(|r| r.0)
    );
    Ok(())
}

fn transcription_rtf(threads: usize) -> Result<()> {
    println!("== Transcription (whisper tiny.en via whisper.cpp, {threads} threads)");
    let ct2 = crate::ai_cli::model_cache().join("whisper-tiny-en-ct2");
    if !ct2.is_dir() {
        println!("  {} missing: run scripts/fetch-models.sh", ct2.display());
        return Ok(());
    }
    let dir = crate::bench::tempfile_dir()?;
    let ggml = dir.join("tiny.en.bin");
    let t = Instant::now();
    fieldmesh_ai::whisper::convert::convert_ct2_to_ggml(&ct2, &ggml)?;
    println!(
        "  conversion CTranslate2 -> ggml: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let wav = dir.join("speech.wav");
    let text = "Bravo two reports three wounded at the bridge. Requesting medevac at landing zone crow at fourteen hundred. Enemy fighters withdrew to the north. Ammunition is low, fuel is adequate.";
    let st = Command::new("espeak-ng")
        .args(["-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        println!("  espeak-ng unavailable: no figure");
        return Ok(());
    }
    let bytes = std::fs::read(&wav)?;
    let (samples, rate, _) = fieldmesh_ai::whisper::read_wav(&bytes)?;
    let samples = fieldmesh_ai::whisper::resample_to_16k(&samples, rate);
    let audio_s = samples.len() as f64 / 16_000.0;
    let tr = fieldmesh_ai::whisper::Transcriber::load(&ggml, threads)?;
    tr.transcribe(&samples, None)?; // warm-up
    let t = Instant::now();
    let out = tr.transcribe(&samples, None)?;
    let el = t.elapsed().as_secs_f64();
    let wer = fieldmesh_ai::whisper::word_error_rate(text, &out.text);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  {audio_s:.1} s of speech in {el:.2} s: real-time factor {:.3} (lower is faster; 1.0 = real time); WER {:.1}%",
        el / audio_s,
        wer * 100.0
    );
    Ok(())
}

fn sitrep_time(a: &AiBench, model: &Path) -> Result<()> {
    use fieldmesh_ai::sitrep::{Source, accept_prose, build};
    println!("== SITREP over 50 messages");
    let texts = [
        "2nd PLT in position at grid 38SMB 44840 12345. All quiet.",
        "Contact: 6 enemy fighters moving south at grid 38SMB 45000 12800, 1410Z.",
        "1 WIA, walking. Ammo amber.",
        "Requesting resupply of water at CP Bravo grid 38SMB 44100 12050.",
        "Patrol departed at 1500Z towards OBJ Raven.",
    ];
    let sources: Vec<Source> = (0..50)
        .map(|i| Source {
            id: format!("{i:032x}"),
            author: "bench".into(),
            time_ms: 1_796_307_000_000 + i as u64 * 60_000,
            text: texts[i % texts.len()].to_owned(),
        })
        .collect();
    let t = Instant::now();
    let mut rep = build("2 PLATOON", &sources);
    let extract = t.elapsed();
    let llm = fieldmesh_ai::llm::Llm::load(model, "bench", a.threads)?;
    let t = Instant::now();
    let prompt = llm.chat(
        "You write short military situation report summaries. Use only the facts given.",
        &fieldmesh_ai::sitrep::render(&rep),
    );
    let g = llm.generate(
        &prompt,
        &fieldmesh_ai::llm::GenOptions {
            max_tokens: 160,
            max_context: 4096,
            ..Default::default()
        },
        |_| true,
    )?;
    let accepted = accept_prose(&mut rep, &g.text, "bench", &sources).is_ok();
    let total = t.elapsed() + extract;
    println!(
        "  extraction {:.2} ms; with model prose ({} prompt + {} generated tokens, {}): {:.2} s",
        extract.as_secs_f64() * 1e3,
        g.prompt_tokens,
        g.generated_tokens,
        if accepted {
            "validated"
        } else {
            "refused by the validator, extractive kept"
        },
        total.as_secs_f64()
    );
    Ok(())
}

fn search_latency(n: usize, threads: usize) -> Result<()> {
    println!("== Search over {n} messages");
    let dir = crate::ai_cli::model_cache().join("minilm-l6-v2");
    let emb = fieldmesh_ai::embed::Embedder::load(&dir, threads)?;
    let units = [
        "2nd PLT",
        "Bravo Company",
        "Viper 6",
        "3rd squad",
        "TF Hammer",
    ];
    let events = [
        "contact with enemy fighters near the bridge",
        "fuel state amber, requesting resupply",
        "casualty evacuated to the aid station",
        "route clear, moving to the next checkpoint",
        "observation post reports vehicle movement",
        "water running low at the patrol base",
        "radio relay established on the hill",
        "civilians gathering at the market",
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let texts: Vec<String> = (0..n)
        .map(|_| {
            let r = next();
            format!(
                "{} {} at grid 38SMB {:05} {:05}",
                units[(r % 5) as usize],
                events[((r >> 8) % 8) as usize],
                (r >> 16) % 100_000,
                (r >> 40) % 100_000
            )
        })
        .collect();
    // Real embeddings for 1,000 messages; the corpus reuses them cyclically (embedding
    // 100k messages on 2 cores would take most of an hour and measures the embedder,
    // reported separately below, not search).
    let sample: Vec<&str> = texts.iter().take(1000.min(n)).map(String::as_str).collect();
    let t = Instant::now();
    let vecs = emb.embed(&sample)?;
    let per_msg = t.elapsed().as_secs_f64() / sample.len() as f64;
    let t = Instant::now();
    let mut index = fieldmesh_ai::search::Index::new(emb.dim());
    for (i, text) in texts.iter().enumerate() {
        index.add(text, Some(&vecs[i % vecs.len()]));
    }
    let build = t.elapsed();
    let queries = [
        "fuel shortage",
        "wounded soldier evacuation",
        "enemy near the bridge",
        "Viper 6",
        "water resupply",
    ];
    let mut lat = Vec::new();
    for q in queries.iter().cycle().take(20) {
        let t = Instant::now();
        let qv = emb.embed(&[q])?.pop();
        let hits = index.search(q, qv.as_deref(), 10);
        lat.push(t.elapsed());
        std::hint::black_box(hits);
    }
    lat.sort();
    println!(
        "  index build {:.2} s; query (embed + keyword + vector scan) p50 {:.1} ms, p99 {:.1} ms; embedding {:.1} ms/message ({:.0} messages/s)",
        build.as_secs_f64(),
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
        per_msg * 1e3,
        1.0 / per_msg
    );
    Ok(())
}
