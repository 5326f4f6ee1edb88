//! One run's report: safety, liveness, convergence against the lower bound, traffic.

use crate::bound::{earliest_arrival, push_frame_bytes, usable_contact_margin};
use crate::scenario::{Micros, Scenario, us};
use crate::world::World;
use fieldmesh_core::Precedence;
use fieldmesh_sync::engine::EngineConfig;
use fieldmesh_sync::ranger::Reconciler;
use serde::Serialize;
use std::collections::BTreeMap;

/// Delivery of one precedence.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delivery {
    /// (envelope, node) pairs joined by a path of usable contacts (each long enough for
    /// a handshake and a reconciliation) before the settle time.
    pub expected: u64,
    /// Of those, delivered by the end.
    pub delivered: u64,
    /// delivered / expected (1.0 when nothing was expected).
    pub ratio: f64,
    /// Post-to-durable latency, median (s).
    pub latency_p50_s: f64,
    /// 99th percentile (s).
    pub latency_p99_s: f64,
    /// Median of (latency / lower bound) per pair.
    pub stretch_p50: f64,
}

/// Safety checks.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Safety {
    /// Envelopes in honest stores that no honest node posted (forged ones accepted).
    pub forged_accepted: u64,
    /// Acknowledged envelopes missing from the node that acknowledged them.
    pub acknowledged_lost: u64,
    /// Channel documents compared.
    pub documents_compared: usize,
    /// Nodes with the same envelopes but different documents.
    pub document_mismatches: Vec<String>,
    /// Whether every check passed.
    pub ok: bool,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Safety holds and every expected (envelope, node) pair was delivered.
    pub converged: bool,
    /// Worst post-to-durable delay over expected pairs (s).
    pub convergence_s: f64,
    /// Worst earliest-arrival delay over the same pairs (s).
    pub lower_bound_s: f64,
    /// convergence_s / lower_bound_s.
    pub convergence_ratio: f64,
    /// Bytes on the wire (packet headers and retransmissions included) per byte of
    /// envelope newly stored.
    pub bytes_per_payload_byte: f64,
    /// The same, counting frame bytes only.
    pub frame_bytes_per_payload_byte: f64,
    /// Delivery by precedence name.
    pub delivery_by_precedence: BTreeMap<String, Delivery>,
    /// Safety.
    pub safety: Safety,
    /// Up to 10 expected (envelope, node) pairs never delivered: for diagnosis.
    pub missed: Vec<String>,
    /// The pair that set `convergence_s`, with its own lower bound.
    pub slowest: String,
    /// Nodes.
    pub nodes: usize,
    /// Links.
    pub links: usize,
    /// Envelopes posted (geneses included).
    pub envelopes: usize,
    /// Posts skipped because the author was down.
    pub posts_skipped: u64,
    /// Bytes stored per node: max and mean.
    pub storage_max_bytes: u64,
    /// Mean.
    pub storage_mean_bytes: f64,
    /// Envelopes refused on verification, frames from hostile nodes, peers disconnected.
    pub refused: u64,
    /// Frames hostile nodes sent.
    pub hostile_frames: u64,
    /// Disconnects for misbehaviour.
    pub disconnects: u64,
    /// Events processed.
    pub events: u64,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// The run's trace hash (hex).
    pub trace_hash: String,
    /// Curves for the plot.
    #[serde(skip)]
    pub curves: Curves,
}

/// Cumulative curves for the plot (time in s, fraction of expected pairs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Per precedence: delivery times since post, sorted, and the expected count.
    pub delivered: BTreeMap<String, (Vec<f64>, u64)>,
    /// Delays achieved, sorted, over all expected pairs.
    pub actual: Vec<f64>,
    /// Lower-bound delays, sorted.
    pub bound: Vec<f64>,
}

/// The engine configuration a scenario asks for.
pub fn engine_config(s: &Scenario) -> EngineConfig {
    EngineConfig {
        reconciler: Reconciler::default(),
        resync_interval_ms: (s.engine.resync_interval_s * 1000.0).max(1.0) as u64,
        link_rate_bytes_per_s: s.engine.link_rate_bytes_per_s,
        link_burst_bytes: s.engine.link_burst_bytes,
        max_inflight: s.engine.max_inflight,
        lazy_want_delay_ms: s.engine.lazy_want_delay_ms,
        eager_push_max_bytes: s.engine.eager_push_max_bytes,
        ..EngineConfig::default()
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Runs a scenario with a seed and checks it.
pub fn run(s: &Scenario, seed: u64) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let topo = s.build(seed)?;
    let mut world = World::new(topo, engine_config(s), s.engine.commit_ms, seed);
    world.run();
    let wall_s = started.elapsed().as_secs_f64();
    Ok(assess(s, seed, &world, wall_s))
}

/// Checks a finished world.
pub fn assess(s: &Scenario, seed: u64, w: &World, wall_s: f64) -> Report {
    let n = w.node_count();
    let excluded: Vec<bool> = (0..n as u32).map(|i| w.is_hostile(i)).collect();
    let mut adj = vec![Vec::new(); n];
    for (i, l) in w.topo.links.iter().enumerate() {
        adj[l.a as usize].push((l.b, i as u32));
        adj[l.b as usize].push((l.a, i as u32));
    }
    let deadline = w.topo.end.saturating_sub(us(s.settle_s));
    let mut by_prec: BTreeMap<Precedence, (u64, u64, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut worst_actual = 0.0f64;
    let mut worst_bound = 0.0f64;
    let mut curves = Curves::default();
    let mut missed = Vec::new();
    let mut slowest = String::new();
    for (m, p) in w.posted.iter().enumerate() {
        if p.at == 0 && m < w.topo.channels.len() {
            continue; // geneses are provisioned, not transferred
        }
        let frame = push_frame_bytes(p.size);
        let lb = earliest_arrival(&w.topo.links, &adj, &excluded, p.author, p.at, frame, |_| 0);
        // Required to arrive only if a path of usable contacts exists.
        let usable = earliest_arrival(
            &w.topo.links,
            &adj,
            &excluded,
            p.author,
            p.at,
            frame,
            usable_contact_margin,
        );
        let entry = by_prec.entry(p.precedence).or_default();
        for v in 0..n {
            if v == p.author as usize || excluded[v] || usable[v] > deadline {
                continue;
            }
            entry.0 += 1;
            let bound_s = (lb[v] - p.at) as f64 / 1e6;
            worst_bound = worst_bound.max(bound_s);
            curves.bound.push(bound_s);
            let d = w.delivered[m][v];
            if d == Micros::MAX && missed.len() < 10 {
                missed.push(format!(
                    "{} {} posted by {} at {:.3} s: not at {} by the end (possible from {:.3} s)",
                    p.precedence.name(),
                    p.id.short(),
                    w.topo.names[p.author as usize],
                    p.at as f64 / 1e6,
                    w.topo.names[v],
                    lb[v] as f64 / 1e6
                ));
            }
            if d != Micros::MAX {
                entry.1 += 1;
                let lat = (d - p.at) as f64 / 1e6;
                if lat > worst_actual {
                    slowest = format!(
                        "{} {} from {} at {:.3} s reached {} after {:.3} s (bound {:.3} s)",
                        p.precedence.name(),
                        p.id.short(),
                        w.topo.names[p.author as usize],
                        p.at as f64 / 1e6,
                        w.topo.names[v],
                        lat,
                        bound_s
                    );
                }
                worst_actual = worst_actual.max(lat);
                entry.2.push(lat);
                entry
                    .3
                    .push(if bound_s > 0.0 { lat / bound_s } else { 1.0 });
                curves.actual.push(lat);
            }
        }
    }
    let mut delivery = BTreeMap::new();
    let mut all_delivered = true;
    for p in Precedence::ALL {
        let (expected, delivered, mut lats, mut stretch) = by_prec.remove(&p).unwrap_or_default();
        lats.sort_by(f64::total_cmp);
        stretch.sort_by(f64::total_cmp);
        all_delivered &= delivered == expected;
        delivery.insert(
            p.name().to_owned(),
            Delivery {
                expected,
                delivered,
                ratio: if expected == 0 {
                    1.0
                } else {
                    delivered as f64 / expected as f64
                },
                latency_p50_s: percentile(&lats, 0.5),
                latency_p99_s: percentile(&lats, 0.99),
                stretch_p50: percentile(&stretch, 0.5),
            },
        );
        curves
            .delivered
            .insert(p.name().to_owned(), (lats, expected));
    }
    curves.actual.sort_by(f64::total_cmp);
    curves.bound.sort_by(f64::total_cmp);
    let forged = w.foreign_envelopes() + w.counters.forged_accepted;
    let lost = w.lost_acknowledged().len() as u64;
    let (compared, mismatches) = w.check_documents(if n > 100 { 8 } else { 32 });
    let safety_ok =
        forged == 0 && lost == 0 && mismatches.is_empty() && w.counters.post_errors == 0;
    let storage = w.storage();
    let c = &w.counters;
    Report {
        scenario: s.name.clone(),
        seed,
        converged: safety_ok && all_delivered,
        convergence_s: worst_actual,
        lower_bound_s: worst_bound,
        convergence_ratio: if worst_bound > 0.0 {
            worst_actual / worst_bound
        } else {
            1.0
        },
        bytes_per_payload_byte: c.wire_bytes as f64 / c.payload_bytes.max(1) as f64,
        frame_bytes_per_payload_byte: c.frame_bytes as f64 / c.payload_bytes.max(1) as f64,
        delivery_by_precedence: delivery,
        missed,
        slowest,
        safety: Safety {
            forged_accepted: forged,
            acknowledged_lost: lost,
            documents_compared: compared,
            document_mismatches: mismatches,
            ok: safety_ok,
        },
        nodes: n,
        links: w.topo.links.len(),
        envelopes: w.posted.len(),
        posts_skipped: c.posts_skipped,
        storage_max_bytes: storage.iter().copied().max().unwrap_or(0),
        storage_mean_bytes: storage.iter().sum::<u64>() as f64 / n.max(1) as f64,
        refused: c.refused,
        hostile_frames: c.hostile_frames,
        disconnects: c.disconnects,
        events: c.events,
        simulated_s: w.topo.end as f64 / 1e6,
        wall_s,
        trace_hash: format!("{:016x}", w.trace_hash()),
        curves,
    }
}

/// An SVG with two panels: delivery over time by precedence, and the distribution of
/// delays achieved against the lower bound's.
pub fn svg(r: &Report) -> String {
    let (w, h, pad) = (900.0, 360.0, 50.0);
    let panel_w = (w - 3.0 * pad) / 2.0;
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{pad}' y='20'>{} seed {} — converged: {} — {:.1} s vs lower bound {:.1} s ({:.2}x)</text>\n",
        h + 40.0,
        r.scenario,
        r.seed,
        r.converged,
        r.convergence_s,
        r.lower_bound_s,
        r.convergence_ratio
    );
    let xmax = r
        .curves
        .actual
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(r.curves.bound.last().copied().unwrap_or(1.0))
        .max(1e-3);
    let mut panel = |x0: f64, title: &str, series: Vec<(String, &'static str, Vec<f64>, u64)>| {
        let y0 = 40.0;
        let ph = h - 40.0;
        out.push_str(&format!(
            "<rect x='{x0}' y='{y0}' width='{panel_w}' height='{ph}' fill='none' stroke='#888'/>\n<text x='{x0}' y='{}'>{title}</text>\n<text x='{x0}' y='{}'>0</text><text x='{}' y='{}' text-anchor='end'>{xmax:.1} s after post</text>\n",
            y0 - 5.0,
            y0 + ph + 15.0,
            x0 + panel_w,
            y0 + ph + 15.0
        ));
        for (i, (label, colour, times, expected)) in series.iter().enumerate() {
            if *expected == 0 {
                continue;
            }
            let mut pts = format!("{x0:.1},{:.1}", y0 + ph);
            for (k, t) in times.iter().enumerate() {
                let x = x0 + t / xmax * panel_w;
                let y = y0 + ph - (k + 1) as f64 / *expected as f64 * ph;
                pts.push_str(&format!(" {x:.1},{y:.1}"));
            }
            out.push_str(&format!(
                "<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{pts}'/>\n<text x='{}' y='{}' fill='{colour}'>{label}</text>\n",
                x0 + 8.0,
                y0 + 16.0 + 14.0 * i as f64
            ));
        }
    };
    let colours = ["#c00", "#e80", "#06c", "#444"];
    let series: Vec<(String, &'static str, Vec<f64>, u64)> = Precedence::ALL
        .iter()
        .zip(colours)
        .filter_map(|(p, c)| {
            r.curves
                .delivered
                .get(p.name())
                .map(|(t, e)| (p.name().to_owned(), c, t.clone(), *e))
        })
        .collect();
    panel(
        pad,
        "delivered (fraction of expected) by precedence",
        series,
    );
    let total = r.curves.bound.len() as u64;
    panel(
        2.0 * pad + panel_w,
        "all pairs: achieved vs lower bound",
        vec![
            ("achieved".into(), "#06c", r.curves.actual.clone(), total),
            ("lower bound".into(), "#999", r.curves.bound.clone(), total),
        ],
    );
    out.push_str("</svg>\n");
    out
}
