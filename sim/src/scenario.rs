//! Scenario files (TOML) and the topology they expand to.
//!
//! A scenario names node groups, link models, the links between nodes and when each is
//! up (always, fixed windows, periodic satellite passes, a convoy driving past stations, a
//! UAV mule cycling between groups), partitions, crashes, hostile nodes, channels and
//! traffic. [`Scenario::build`] expands it, with the seed, into a [`Topology`]: nodes,
//! links and, for every link, the exact intervals during which it can carry traffic.
//! Those intervals feed both the simulation and the lower bound, so the two agree on
//! what the network allowed.

use crate::rng::Rng;
use anyhow::{Context, Result, anyhow, bail, ensure};
use fieldmesh_core::Precedence;
use fieldmesh_sync::engine::EngineConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Microseconds of virtual time.
pub type Micros = u64;

/// Sorted, disjoint [start, end) intervals.
pub type Intervals = Vec<(Micros, Micros)>;

/// Seconds (from a file) to microseconds.
pub fn us(seconds: f64) -> Micros {
    (seconds.max(0.0) * 1e6).round() as Micros
}

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it models.
    #[serde(default)]
    pub description: String,
    /// Virtual time simulated.
    pub duration_s: f64,
    /// Envelopes whose earliest possible arrival is later than `duration_s - settle_s`
    /// are not required for convergence (the run ends before they could settle).
    #[serde(default = "default_settle")]
    pub settle_s: f64,
    /// Sync engine parameters.
    #[serde(default)]
    pub engine: EngineSpec,
    /// Each node's clock is off by a uniform amount in +-this.
    #[serde(default)]
    pub clock_skew_ms: u64,
    /// Named link models.
    pub link_model: BTreeMap<String, LinkModel>,
    /// Node groups.
    pub group: Vec<GroupSpec>,
    /// Explicit links.
    #[serde(default)]
    pub link: Vec<LinkSpec>,
    /// Hierarchical links: each child group's first node to a parent group's first node.
    #[serde(default)]
    pub uplink: Vec<UplinkSpec>,
    /// Nodes driving past a line of stations once.
    #[serde(default)]
    pub convoy: Vec<MoverSpec>,
    /// Nodes cycling between stops until the end (UAV data mules).
    #[serde(default)]
    pub mule: Vec<MoverSpec>,
    /// Cuts between node sets.
    #[serde(default)]
    pub partition: Vec<PartitionSpec>,
    /// Node crashes (and restarts).
    #[serde(default)]
    pub crash: Vec<CrashSpec>,
    /// Nodes that send forged and garbage frames.
    #[serde(default)]
    pub hostile: Vec<HostileSpec>,
    /// Channels, provisioned on every node before the run.
    pub channel: Vec<ChannelSpec>,
    /// Scripted posts.
    pub traffic: Vec<TrafficSpec>,
}

fn default_settle() -> f64 {
    60.0
}

/// Sync engine parameters of every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSpec {
    /// Re-run reconciliation with each peer this often.
    pub resync_interval_s: f64,
    /// Per-link send rate the engine schedules to.
    pub link_rate_bytes_per_s: u64,
    /// Per-link burst.
    pub link_burst_bytes: u64,
    /// Pushes in flight per peer.
    pub max_inflight: usize,
    /// Group-commit wait before received envelopes are durable and acknowledged.
    pub commit_ms: u64,
    /// Wait for an eager copy before asking for an announced envelope.
    pub lazy_want_delay_ms: u64,
    /// Largest envelope pushed eagerly.
    pub eager_push_max_bytes: u32,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            resync_interval_s: 30.0,
            link_rate_bytes_per_s: 1_000_000,
            link_burst_bytes: 64 * 1024,
            max_inflight: 64,
            commit_ms: 2,
            lazy_want_delay_ms: EngineConfig::default().lazy_want_delay_ms,
            eager_push_max_bytes: EngineConfig::default().eager_push_max_bytes,
        }
    }
}

/// How a link behaves while up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkModel {
    /// One-way latency.
    pub latency_ms: f64,
    /// Extra one-way delay, uniform in [0, jitter].
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability that a packet is lost (and retransmitted by the transport).
    #[serde(default)]
    pub loss: f64,
    /// Bits per second, each direction.
    pub rate_bps: u64,
    /// Largest packet payload.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Duty cycle: on for this long...
    #[serde(default)]
    pub duty_on_s: Option<f64>,
    /// ...then off for this long (phase random per link).
    #[serde(default)]
    pub duty_off_s: Option<f64>,
}

fn default_mtu() -> u32 {
    1200
}

/// Per-packet header bytes on the wire (IPv4 20 + UDP 8 + QUIC short header and AEAD
/// tag ~20).
pub const PACKET_OVERHEAD: u64 = 48;

/// A group of nodes, or `count` replicas of it named NAME0..NAME{count-1}.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Name (node refs are NAME.INDEX).
    pub name: String,
    /// Nodes per group.
    pub nodes: usize,
    /// Replicas.
    #[serde(default)]
    pub count: Option<usize>,
    /// Links inside the group.
    #[serde(default)]
    pub topology: Topo,
    /// Link model inside the group.
    #[serde(default)]
    pub link: Option<String>,
    /// When the group's own links are up.
    #[serde(default)]
    pub schedule: Schedule,
}

/// Links inside a group.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Topo {
    /// Every pair.
    Mesh,
    /// Node 0 to every other.
    Star,
    /// 0-1-2-...
    Line,
    /// No links.
    #[default]
    None,
}

/// When a link is up (before partitions, crashes and duty cycles).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The whole run.
    #[default]
    Always,
    /// Fixed windows, [start_s, end_s].
    Windows {
        /// The windows.
        windows: Vec<[f64; 2]>,
    },
    /// Up for `up_s` every `period_s`, from `offset_s` (satellite passes).
    Periodic {
        /// Period.
        period_s: f64,
        /// Up time per period.
        up_s: f64,
        /// First pass.
        #[serde(default)]
        offset_s: f64,
    },
}

/// One link, or links between every node of `a` and every node of `b`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Node set.
    pub a: String,
    /// Node set.
    pub b: String,
    /// Link model.
    pub model: String,
    /// When up.
    #[serde(default)]
    pub schedule: Schedule,
}

/// Child group k's node 0 to parent group (k * parents / children)'s node 0.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSpec {
    /// A replicated group (or a group).
    pub children: String,
    /// A replicated group (or a group).
    pub parents: String,
    /// Link model.
    pub model: String,
    /// When up.
    #[serde(default)]
    pub schedule: Schedule,
}

/// A node that is in range of one station after another.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoverSpec {
    /// The moving node.
    pub node: String,
    /// Node sets it passes, in order.
    pub stops: Vec<String>,
    /// Link model while in range.
    pub model: String,
    /// First arrival.
    #[serde(default)]
    pub start_s: f64,
    /// Time in range at each stop.
    pub dwell_s: f64,
    /// Time between stops.
    pub transit_s: f64,
}

/// Links between node sets `a` and `b` are down in [from_s, to_s).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// Node set.
    pub a: String,
    /// Node set.
    pub b: String,
    /// Start.
    pub from_s: f64,
    /// Heal.
    pub to_s: f64,
}

/// A node crash: its volatile state (engine, uncommitted ingest) is lost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashSpec {
    /// Node set.
    pub node: String,
    /// When.
    pub at_s: f64,
    /// Back up (never, if absent).
    #[serde(default)]
    pub restart_s: Option<f64>,
}

/// A node that, besides relaying, sends forged, garbage and oversized frames.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostileSpec {
    /// The node.
    pub node: String,
    /// Forged envelopes per minute, to every connected peer.
    #[serde(default)]
    pub forged_per_min: f64,
    /// Garbage frames per minute.
    #[serde(default)]
    pub garbage_per_min: f64,
    /// Oversized frames per minute.
    #[serde(default)]
    pub oversized_per_min: f64,
}

/// A channel, created by `creator` and provisioned everywhere before the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Name.
    pub name: String,
    /// Creator node.
    pub creator: String,
}

/// Posts from random members of `from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Node set.
    pub from: String,
    /// Channel name.
    pub channel: String,
    /// Posts.
    pub count: usize,
    /// First post.
    #[serde(default)]
    pub start_s: f64,
    /// Mean gap (exponential).
    pub interval_s: f64,
    /// Weights by precedence name.
    #[serde(default)]
    pub precedence: BTreeMap<String, f64>,
    /// Message text length.
    #[serde(default = "default_text")]
    pub text_bytes: usize,
}

fn default_text() -> usize {
    120
}

/// A link between two nodes, expanded.
#[derive(Debug, Clone)]
pub struct Link {
    /// Lower node index.
    pub a: u32,
    /// Higher node index.
    pub b: u32,
    /// Model name.
    pub model: String,
    /// One-way latency.
    pub latency_us: Micros,
    /// Jitter.
    pub jitter_us: Micros,
    /// Packet loss.
    pub loss: f64,
    /// Bits per second.
    pub rate_bps: u64,
    /// Packet payload size.
    pub mtu: u32,
    /// Sorted, disjoint [start, end) intervals during which the link carries traffic.
    pub up: Vec<(Micros, Micros)>,
}

impl Link {
    /// Time to put `frame` bytes on the wire (no loss).
    pub fn serialization_us(&self, frame: u64) -> Micros {
        let packets = frame.div_ceil(u64::from(self.mtu)).max(1);
        let wire = frame + packets * PACKET_OVERHEAD;
        (wire * 8 * 1_000_000).div_ceil(self.rate_bps.max(1))
    }
}

/// A post, expanded.
#[derive(Debug, Clone)]
pub struct Post {
    /// When.
    pub at: Micros,
    /// Author.
    pub node: u32,
    /// Channel index.
    pub channel: usize,
    /// Precedence.
    pub precedence: Precedence,
    /// Text length.
    pub text_bytes: usize,
}

/// A scenario expanded with a seed.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Node names.
    pub names: Vec<String>,
    /// Links.
    pub links: Vec<Link>,
    /// Per node: down intervals.
    pub down: Vec<Vec<(Micros, Micros)>>,
    /// Hostile nodes and their spec.
    pub hostile: BTreeMap<u32, HostileSpec>,
    /// Channel names and creators.
    pub channels: Vec<(String, u32)>,
    /// Every post, by time.
    pub posts: Vec<Post>,
    /// Clock offset per node (ms, may be negative).
    pub skew_ms: Vec<i64>,
    /// End of the run.
    pub end: Micros,
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))
    }

    /// Expands the scenario for `seed`.
    pub fn build(&self, seed: u64) -> Result<Topology> {
        ensure!(self.duration_s > 0.0, "duration_s must be positive");
        let end = us(self.duration_s);
        let mut names = Vec::new();
        // group name -> node indices; family name -> group names
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for g in &self.group {
            ensure!(g.nodes > 0, "group {} has no nodes", g.name);
            let replicas: Vec<String> = match g.count {
                None => vec![g.name.clone()],
                Some(n) => (0..n).map(|i| format!("{}{i}", g.name)).collect(),
            };
            for gname in &replicas {
                ensure!(!groups.contains_key(gname), "duplicate group {gname}");
                let idx: Vec<u32> = (0..g.nodes)
                    .map(|i| {
                        names.push(format!("{gname}.{i}"));
                        (names.len() - 1) as u32
                    })
                    .collect();
                groups.insert(gname.clone(), idx);
            }
            families.insert(g.name.clone(), replicas);
        }
        let n = names.len();
        let resolve = |spec: &str| -> Result<Vec<u32>> {
            // FAMILY*.I: node I of every replica of a replicated group.
            if let Some((fam, i)) = spec.rsplit_once("*.") {
                let reps = families
                    .get(fam)
                    .ok_or_else(|| anyhow!("unknown group family {fam:?} in {spec:?}"))?;
                let i: usize = i
                    .parse()
                    .with_context(|| format!("bad node ref {spec:?}"))?;
                return reps
                    .iter()
                    .map(|r| {
                        groups[r].get(i).copied().ok_or_else(|| {
                            anyhow!("{spec:?}: group {r} has {} nodes", groups[r].len())
                        })
                    })
                    .collect();
            }
            if let Some((g, i)) = spec.rsplit_once('.') {
                let members = groups
                    .get(g)
                    .ok_or_else(|| anyhow!("unknown group {g:?} in {spec:?}"))?;
                let i: usize = i
                    .parse()
                    .with_context(|| format!("bad node ref {spec:?}"))?;
                let node = *members
                    .get(i)
                    .ok_or_else(|| anyhow!("{spec:?}: group {g} has {} nodes", members.len()))?;
                return Ok(vec![node]);
            }
            if let Some(members) = groups.get(spec) {
                return Ok(members.clone());
            }
            if let Some(reps) = families.get(spec) {
                return Ok(reps.iter().flat_map(|r| groups[r].clone()).collect());
            }
            bail!("unknown node set {spec:?}")
        };
        let model = |name: &str| -> Result<&LinkModel> {
            self.link_model
                .get(name)
                .ok_or_else(|| anyhow!("unknown link model {name:?}"))
        };

        // Raw links with their schedules.
        let mut raw: BTreeMap<(u32, u32), (String, Intervals)> = BTreeMap::new();
        let mut add = |a: u32, b: u32, m: &str, up: Vec<(Micros, Micros)>| -> Result<()> {
            if a == b {
                return Ok(());
            }
            let key = (a.min(b), a.max(b));
            match raw.get_mut(&key) {
                Some((existing, ivs)) => {
                    ensure!(
                        existing == m,
                        "nodes {} and {} are linked with two models ({existing}, {m})",
                        a,
                        b
                    );
                    *ivs = union(ivs, &up);
                }
                None => {
                    raw.insert(key, (m.to_owned(), up));
                }
            }
            Ok(())
        };
        for g in &self.group {
            let Some(m) = &g.link else {
                ensure!(
                    g.topology == Topo::None,
                    "group {} has a topology but no link model",
                    g.name
                );
                continue;
            };
            model(m)?;
            let up = schedule(&g.schedule, end)?;
            for gname in &families[&g.name] {
                let mem = &groups[gname];
                match g.topology {
                    Topo::Mesh => {
                        for i in 0..mem.len() {
                            for j in i + 1..mem.len() {
                                add(mem[i], mem[j], m, up.clone())?;
                            }
                        }
                    }
                    Topo::Star => {
                        for &j in &mem[1..] {
                            add(mem[0], j, m, up.clone())?;
                        }
                    }
                    Topo::Line => {
                        for w in mem.windows(2) {
                            add(w[0], w[1], m, up.clone())?;
                        }
                    }
                    Topo::None => {}
                }
            }
        }
        for l in &self.link {
            model(&l.model)?;
            let up = schedule(&l.schedule, end)?;
            for a in resolve(&l.a)? {
                for b in resolve(&l.b)? {
                    add(a, b, &l.model, up.clone())?;
                }
            }
        }
        for u in &self.uplink {
            model(&u.model)?;
            let up = schedule(&u.schedule, end)?;
            let kids = families
                .get(&u.children)
                .cloned()
                .unwrap_or_else(|| vec![u.children.clone()]);
            let parents = families
                .get(&u.parents)
                .cloned()
                .unwrap_or_else(|| vec![u.parents.clone()]);
            for (k, kid) in kids.iter().enumerate() {
                let parent = &parents[k * parents.len() / kids.len()];
                let a = *groups
                    .get(kid)
                    .and_then(|g| g.first())
                    .ok_or_else(|| anyhow!("unknown group {kid}"))?;
                let b = *groups
                    .get(parent)
                    .and_then(|g| g.first())
                    .ok_or_else(|| anyhow!("unknown group {parent}"))?;
                add(a, b, &u.model, up.clone())?;
            }
        }
        for (mv, cycle) in self
            .convoy
            .iter()
            .map(|m| (m, false))
            .chain(self.mule.iter().map(|m| (m, true)))
        {
            model(&mv.model)?;
            ensure!(!mv.stops.is_empty(), "a mover needs stops");
            ensure!(mv.dwell_s > 0.0, "dwell_s must be positive");
            let movers = resolve(&mv.node)?;
            let step = mv.dwell_s + mv.transit_s;
            let mut t = mv.start_s;
            let mut k = 0usize;
            while us(t) < end && (cycle || k < mv.stops.len()) {
                let stop = &mv.stops[k % mv.stops.len()];
                let window = vec![(us(t), us(t + mv.dwell_s).min(end))];
                for &m in &movers {
                    for s in resolve(stop)? {
                        add(m, s, &mv.model, window.clone())?;
                    }
                }
                t += step;
                k += 1;
            }
        }

        // Node down intervals (crashes).
        let mut down = vec![Vec::new(); n];
        for c in &self.crash {
            for node in resolve(&c.node)? {
                let until = c.restart_s.map_or(end, us).min(end);
                ensure!(
                    us(c.at_s) < until,
                    "crash of {} restarts before it happens",
                    c.node
                );
                down[node as usize] = union(&down[node as usize], &[(us(c.at_s), until)]);
            }
        }
        let mut cuts: Vec<(Vec<bool>, Vec<bool>, Micros, Micros)> = Vec::new();
        for p in &self.partition {
            let mut a = vec![false; n];
            let mut b = vec![false; n];
            for i in resolve(&p.a)? {
                a[i as usize] = true;
            }
            for i in resolve(&p.b)? {
                b[i as usize] = true;
            }
            cuts.push((a, b, us(p.from_s), us(p.to_s)));
        }

        let mut rng = Rng::derive(seed, "links");
        let mut links = Vec::with_capacity(raw.len());
        for ((a, b), (mname, mut up)) in raw {
            let m = model(&mname)?;
            ensure!(
                m.rate_bps > 0 && m.mtu >= 64,
                "link model {mname}: rate and mtu must be positive (mtu >= 64)"
            );
            ensure!(
                (0.0..1.0).contains(&m.loss),
                "link model {mname}: loss must be in [0, 1)"
            );
            if let (Some(on), Some(off)) = (m.duty_on_s, m.duty_off_s) {
                ensure!(on > 0.0 && off >= 0.0, "link model {mname}: bad duty cycle");
                let period = on + off;
                let phase = rng.unit() * period;
                let mut duty = Vec::new();
                let mut t = -phase;
                while us(t.max(0.0)) < end {
                    let s = us(t.max(0.0));
                    let e = us(t + on).min(end);
                    if e > s {
                        duty.push((s, e));
                    }
                    t += period;
                }
                up = intersect(&up, &duty);
            }
            for (ca, cb, from, to) in &cuts {
                let (ai, bi) = (a as usize, b as usize);
                if (ca[ai] && cb[bi]) || (ca[bi] && cb[ai]) {
                    up = subtract(&up, &[(*from, *to)]);
                }
            }
            up = subtract(&up, &down[a as usize]);
            up = subtract(&up, &down[b as usize]);
            links.push(Link {
                a,
                b,
                model: mname.clone(),
                latency_us: us(m.latency_ms / 1000.0),
                jitter_us: us(m.jitter_ms / 1000.0),
                loss: m.loss,
                rate_bps: m.rate_bps,
                mtu: m.mtu,
                up,
            });
        }

        let mut hostile = BTreeMap::new();
        for h in &self.hostile {
            for node in resolve(&h.node)? {
                hostile.insert(node, h.clone());
            }
        }
        let mut channels = Vec::new();
        for c in &self.channel {
            let creator = resolve(&c.creator)?;
            ensure!(
                creator.len() == 1,
                "channel {} needs one creator node",
                c.name
            );
            ensure!(
                !channels.iter().any(|(n, _)| n == &c.name),
                "duplicate channel {}",
                c.name
            );
            channels.push((c.name.clone(), creator[0]));
        }
        let mut trng = Rng::derive(seed, "traffic");
        let mut posts = Vec::new();
        for t in &self.traffic {
            let from = resolve(&t.from)?;
            let channel = channels
                .iter()
                .position(|(n, _)| n == &t.channel)
                .ok_or_else(|| anyhow!("traffic to unknown channel {:?}", t.channel))?;
            let mut weights: Vec<(Precedence, f64)> = Vec::new();
            for (name, w) in &t.precedence {
                let p = Precedence::parse(name).map_err(|e| anyhow!("{e}"))?;
                ensure!(*w >= 0.0, "negative precedence weight");
                weights.push((p, *w));
            }
            if weights.is_empty() {
                weights.push((Precedence::Routine, 1.0));
            }
            let total: f64 = weights.iter().map(|w| w.1).sum();
            ensure!(total > 0.0, "precedence weights sum to zero");
            let mut at = t.start_s;
            for _ in 0..t.count {
                at += trng.exp(t.interval_s);
                let node = from[trng.below(from.len() as u64) as usize];
                let mut x = trng.unit() * total;
                let mut precedence = weights[weights.len() - 1].0;
                for (p, w) in &weights {
                    if x < *w {
                        precedence = *p;
                        break;
                    }
                    x -= w;
                }
                if us(at) >= end {
                    break;
                }
                posts.push(Post {
                    at: us(at),
                    node,
                    channel,
                    precedence,
                    text_bytes: t.text_bytes,
                });
            }
        }
        posts.sort_by_key(|p| (p.at, p.node));
        let mut srng = Rng::derive(seed, "skew");
        let skew_ms = (0..n)
            .map(|_| {
                if self.clock_skew_ms == 0 {
                    0
                } else {
                    srng.below(2 * self.clock_skew_ms + 1) as i64 - self.clock_skew_ms as i64
                }
            })
            .collect();
        Ok(Topology {
            names,
            links,
            down,
            hostile,
            channels,
            posts,
            skew_ms,
            end,
        })
    }
}

fn schedule(s: &Schedule, end: Micros) -> Result<Vec<(Micros, Micros)>> {
    Ok(match s {
        Schedule::Always => vec![(0, end)],
        Schedule::Windows { windows } => {
            let mut v: Vec<(Micros, Micros)> = Vec::new();
            for [a, b] in windows {
                ensure!(a < b, "window [{a}, {b}] is empty");
                v = union(&v, &[(us(*a), us(*b).min(end))]);
            }
            v
        }
        Schedule::Periodic {
            period_s,
            up_s,
            offset_s,
        } => {
            ensure!(
                *period_s > 0.0 && *up_s > 0.0,
                "periodic schedule needs positive period and up time"
            );
            let mut v = Vec::new();
            let mut t = *offset_s;
            while us(t) < end {
                v.push((us(t), us(t + up_s).min(end)));
                t += period_s;
            }
            union(&[], &v)
        }
    })
}

/// Union of interval sets (result sorted and disjoint, empty intervals dropped).
pub fn union(a: &[(Micros, Micros)], b: &[(Micros, Micros)]) -> Vec<(Micros, Micros)> {
    let mut all: Vec<(Micros, Micros)> =
        a.iter().chain(b).copied().filter(|(s, e)| e > s).collect();
    all.sort_unstable();
    let mut out: Vec<(Micros, Micros)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Intersection of sorted disjoint interval sets.
pub fn intersect(a: &[(Micros, Micros)], b: &[(Micros, Micros)]) -> Vec<(Micros, Micros)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if e > s {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a` minus `b`, both sorted and disjoint.
pub fn subtract(a: &[(Micros, Micros)], b: &[(Micros, Micros)]) -> Vec<(Micros, Micros)> {
    let mut out = Vec::new();
    for &(s, e) in a {
        let mut cur = s;
        for &(bs, be) in b {
            if be <= cur || bs >= e {
                continue;
            }
            if bs > cur {
                out.push((cur, bs));
            }
            cur = cur.max(be);
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_algebra() {
        assert_eq!(union(&[(0, 5), (10, 20)], &[(4, 12)]), vec![(0, 20)]);
        assert_eq!(
            intersect(&[(0, 10), (20, 30)], &[(5, 25)]),
            vec![(5, 10), (20, 25)]
        );
        assert_eq!(
            subtract(&[(0, 30)], &[(5, 10), (20, 25)]),
            vec![(0, 5), (10, 20), (25, 30)]
        );
        assert_eq!(subtract(&[(0, 10)], &[(0, 10)]), vec![]);
    }
}
