//! `fieldmesh-sim`: run, sweep and benchmark scenarios.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fieldmesh_sim::{Report, Scenario, report};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "fieldmesh-sim",
    version,
    about = "Deterministic DDIL network simulator driving the real fieldmesh sync engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs one seed twice, checks that both runs have the same trace hash, and reports.
    Run {
        /// Scenario file, or a name from sim/scenarios.
        scenario: String,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write a plot (SVG): delivery by precedence, and delays against the lower bound.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Runs many seeds; prints failing seeds with the command that replays each.
    Sweep {
        /// Scenario file, or a name from sim/scenarios.
        scenario: String,
        /// How many seeds.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Fail when a seed converges later than this multiple of its lower bound.
        #[arg(long)]
        max_ratio: Option<f64>,
    },
    /// Lists the scenarios shipped in sim/scenarios.
    List,
    /// Benchmarks: simulated time per wall second on the largest scenario, convergence
    /// against the lower bound for every scenario, and the worst seed of a sweep.
    Bench {
        /// Seeds in the sweep.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Scenario swept.
        #[arg(long, default_value = "company-radio")]
        sweep: String,
    },
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn load(spec: &str) -> Result<Scenario> {
    let p = Path::new(spec);
    let path = if p.exists() {
        p.to_path_buf()
    } else {
        let named = scenarios_dir().join(format!("{spec}.toml"));
        if !named.exists() {
            bail!(
                "no scenario {spec:?}: not a file, and not one of: {}",
                list()?.join(", ")
            );
        }
        named
    };
    Scenario::load(&path)
}

fn list() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .context("reading sim/scenarios")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "toml" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

fn print_report(r: &Report) {
    println!(
        "scenario {}: {} nodes, {} links, {} envelopes, {:.0} s simulated in {:.2} s ({:.0}x real time, {} events)",
        r.scenario,
        r.nodes,
        r.links,
        r.envelopes,
        r.simulated_s,
        r.wall_s,
        r.simulated_s / r.wall_s.max(1e-9),
        r.events
    );
    println!(
        "converged: {}   convergence {:.3} s   lower bound {:.3} s   ratio {:.2}",
        r.converged, r.convergence_s, r.lower_bound_s, r.convergence_ratio
    );
    println!("slowest: {}", r.slowest);
    println!(
        "wire bytes per payload byte: {:.3} ({:.3} counting frames only)",
        r.bytes_per_payload_byte, r.frame_bytes_per_payload_byte
    );
    println!("delivery by precedence:");
    for (p, d) in &r.delivery_by_precedence {
        if d.expected == 0 {
            continue;
        }
        println!(
            "  {p:<9} {:>8}/{:<8} ({:.4})  latency p50 {:.3} s  p99 {:.3} s  stretch p50 {:.2}",
            d.delivered, d.expected, d.ratio, d.latency_p50_s, d.latency_p99_s, d.stretch_p50
        );
    }
    println!(
        "safety: {} (forged accepted {}, acknowledged lost {}, documents compared {}, mismatches {})",
        if r.safety.ok { "ok" } else { "VIOLATED" },
        r.safety.forged_accepted,
        r.safety.acknowledged_lost,
        r.safety.documents_compared,
        r.safety.document_mismatches.len()
    );
    for m in &r.safety.document_mismatches {
        println!("  {m}");
    }
    for m in &r.missed {
        println!("missed: {m}");
    }
    println!(
        "hostile frames {}, envelopes refused {}, disconnects {}, posts skipped (author down) {}",
        r.hostile_frames, r.refused, r.disconnects, r.posts_skipped
    );
    println!(
        "storage per node: max {} bytes, mean {:.0} bytes",
        r.storage_max_bytes, r.storage_mean_bytes
    );
}

/// Runs a seed twice; returns the report and whether the replay matched.
fn run_checked(s: &Scenario, seed: u64) -> Result<(Report, bool)> {
    let a = report::run(s, seed)?;
    let b = report::run(s, seed)?;
    Ok((
        a.clone(),
        a.trace_hash == b.trace_hash && strip_wall(&a) == strip_wall(&b),
    ))
}

fn strip_wall(r: &Report) -> Report {
    let mut r = r.clone();
    r.wall_s = 0.0;
    r
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            scenario,
            seed,
            json,
            svg,
        } => {
            let s = load(&scenario)?;
            if !json {
                println!("seed {seed}");
            }
            let (r, replayed) = run_checked(&s, seed)?;
            if let Some(path) = svg {
                std::fs::write(&path, report::svg(&r))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                let mut v = serde_json::to_value(&r)?;
                v["replay_identical"] = serde_json::Value::Bool(replayed);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_report(&r);
                println!(
                    "trace hash {} — replay {}",
                    r.trace_hash,
                    if replayed { "identical" } else { "DIVERGED" }
                );
            }
            Ok(r.converged && replayed)
        }
        Cmd::Sweep {
            scenario,
            seeds,
            from,
            max_ratio,
        } => {
            let s = load(&scenario)?;
            println!("sweep {} seeds {}..{}", s.name, from, from + seeds - 1);
            let mut failing = Vec::new();
            let mut worst: Option<Report> = None;
            let mut worst_bytes = 0.0f64;
            let started = std::time::Instant::now();
            for seed in from..from + seeds {
                let r = report::run(&s, seed)?;
                let mut ok = r.converged && max_ratio.is_none_or(|m| r.convergence_ratio <= m);
                if seed == from || !ok {
                    let again = report::run(&s, seed)?;
                    if again.trace_hash != r.trace_hash {
                        println!(
                            "seed {seed}: replay diverged ({} vs {})",
                            r.trace_hash, again.trace_hash
                        );
                        ok = false;
                    }
                }
                if !ok {
                    println!(
                        "FAIL seed {seed}: converged {} ratio {:.2} safety {} — replay: cargo run --release -p fieldmesh-sim -- run {scenario} --seed {seed}",
                        r.converged, r.convergence_ratio, r.safety.ok
                    );
                    failing.push(seed);
                }
                worst_bytes = worst_bytes.max(r.bytes_per_payload_byte);
                if worst
                    .as_ref()
                    .is_none_or(|w| r.convergence_ratio > w.convergence_ratio)
                {
                    worst = Some(r);
                }
            }
            if let Some(w) = &worst {
                println!(
                    "{} seeds in {:.1} s; worst seed {} (convergence {:.3} s vs lower bound {:.3} s, ratio {:.2}); worst bytes per payload byte {:.3}; {} failing",
                    seeds,
                    started.elapsed().as_secs_f64(),
                    w.seed,
                    w.convergence_s,
                    w.lower_bound_s,
                    w.convergence_ratio,
                    worst_bytes,
                    failing.len()
                );
            }
            Ok(failing.is_empty())
        }
        Cmd::List => {
            for name in list()? {
                let s = load(&name)?;
                println!("{name:<20} {}", s.description);
            }
            Ok(true)
        }
        Cmd::Bench { seeds, sweep } => {
            println!(
                "== every scenario, seed 1: convergence against the lower bound (goal <= 1.5x)"
            );
            let mut biggest: Option<Report> = None;
            for name in list()? {
                let s = load(&name)?;
                let r = report::run(&s, 1)?;
                println!(
                    "{name:<20} {:>5} nodes  converged {:<5}  {:>9.3} s vs bound {:>9.3} s  ratio {:>5.2}  bytes/payload {:>6.2}  {:>7.0}x real time",
                    r.nodes,
                    r.converged,
                    r.convergence_s,
                    r.lower_bound_s,
                    r.convergence_ratio,
                    r.bytes_per_payload_byte,
                    r.simulated_s / r.wall_s.max(1e-9)
                );
                if biggest.as_ref().is_none_or(|b| r.nodes > b.nodes) {
                    biggest = Some(r);
                }
            }
            if let Some(b) = &biggest {
                println!(
                    "== speed: {} ({} nodes): {:.0} simulated s per wall s; a simulated day takes {:.1} s here",
                    b.scenario,
                    b.nodes,
                    b.simulated_s / b.wall_s.max(1e-9),
                    86_400.0 * b.wall_s / b.simulated_s
                );
            }
            println!("== sweep {sweep}, {seeds} seeds");
            let s = load(&sweep)?;
            let mut worst: Option<Report> = None;
            let mut failing = 0;
            for seed in 1..=seeds {
                let r = report::run(&s, seed)?;
                failing += usize::from(!r.converged);
                if worst
                    .as_ref()
                    .is_none_or(|w| r.convergence_ratio > w.convergence_ratio)
                {
                    worst = Some(r);
                }
            }
            if let Some(w) = worst {
                println!(
                    "worst seed {}: ratio {:.2} ({:.3} s vs {:.3} s); {failing} of {seeds} seeds did not converge",
                    w.seed, w.convergence_ratio, w.convergence_s, w.lower_bound_s
                );
            }
            Ok(true)
        }
    }
}
