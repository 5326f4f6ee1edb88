//! Structured SITREPs built deterministically from a channel's messages.
//!
//! Every field lists the ids of the messages it came from. Facts (numbers, grids, times,
//! unit names) are copied from the sources, never invented: [`build`] extracts them with
//! fixed rules, and [`validate_prose`] refuses model prose that states a fact absent from
//! the sources. Model prose is optional; without it the SITREP is still complete, marked
//! low confidence.

use crate::facts::{self, Fact, FactKind};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// Identifies the extraction rules and the rendering in provenance records.
pub const TEMPLATE_ID: &str = "sitrep-extractive/1";

/// One input message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Message id.
    pub id: String,
    /// Who wrote it (name or short node id).
    pub author: String,
    /// Author's timestamp, ms since the epoch.
    pub time_ms: u64,
    pub text: String,
}

/// A value with the ids of the messages that state it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    pub value: T,
    pub sources: Vec<String>,
}

impl<T> Sourced<T> {
    fn new(value: T, source: &str) -> Sourced<T> {
        Sourced {
            value,
            sources: vec![source.to_owned()],
        }
    }
}

/// An enemy report in SALUTE form (size, activity, location, unit, time, equipment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Salute {
    pub size: Option<u32>,
    /// The sentence that reports it, verbatim.
    pub activity: String,
    pub location: Option<String>,
    pub time: Option<String>,
    pub equipment: Vec<String>,
    pub sources: Vec<String>,
}

/// Casualty counts; each count is the sum of the reports listed as its sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Casualties {
    pub kia: u32,
    pub wia: u32,
    /// Casualties reported without saying killed or wounded.
    pub unspecified: u32,
    pub sources: Vec<String>,
}

impl Casualties {
    pub fn total(&self) -> u32 {
        self.kia + self.wia + self.unspecified
    }
}

/// Supply state of one class: GREEN, AMBER, RED, BLACK, or a percentage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyState {
    pub state: String,
    pub sources: Vec<String>,
}

impl SupplyState {
    /// 0 (GREEN / ≥ 70%) to 3 (BLACK / < 10%): higher is worse.
    pub fn severity(&self) -> u8 {
        match self.state.as_str() {
            "GREEN" => 0,
            "AMBER" => 1,
            "RED" => 2,
            "BLACK" => 3,
            s => match s.trim_end_matches('%').parse::<f64>() {
                Ok(p) if p >= 70.0 => 0,
                Ok(p) if p >= 40.0 => 1,
                Ok(p) if p >= 10.0 => 2,
                Ok(_) => 3,
                Err(_) => 1,
            },
        }
    }
}

/// Ammunition, fuel and water, the latest report of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logistics {
    pub ammo: Option<SupplyState>,
    pub fuel: Option<SupplyState>,
    pub water: Option<SupplyState>,
}

/// A named place and the grid a source gives for it ("OBJ RAVEN at grid 123456").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub name: String,
    pub grid: String,
    pub sources: Vec<String>,
}

/// Model prose, with what produced it and how it was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Narrative {
    pub text: String,
    /// `extractive` (copied sentences) or the model's name.
    pub by: String,
    /// Facts the validator found in the prose, all present in the sources.
    pub facts_checked: usize,
}

/// A SITREP. Field order follows the usual format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sitrep {
    /// Date-time group of the latest source.
    pub dtg: String,
    pub unit: String,
    /// Time window covered, ms since the epoch.
    pub from_ms: u64,
    pub to_ms: u64,
    /// Own position: the latest grid given with position words.
    pub location: Option<Sourced<String>>,
    pub situation: Vec<Sourced<String>>,
    pub enemy: Vec<Salute>,
    pub own_forces: Vec<Sourced<String>>,
    pub casualties: Casualties,
    pub logistics: Logistics,
    pub requests: Vec<Sourced<String>>,
    pub places: Vec<Place>,
    pub narrative: Narrative,
    /// `high` only when model prose passed validation; `low` otherwise.
    pub confidence: String,
    /// Every message the SITREP was built from.
    pub inputs: Vec<String>,
}

fn re(s: &str) -> Regex {
    Regex::new(s).unwrap()
}

static ENEMY: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(enemy|eny|hostiles?|opfor|insurgents?|fighters|militants?|sniper|ied|rpgs?|mortars?|technicals?|armed\s+men|contact|t-\d+|bmp-?\d?|btr-?\d*|drones?|uavs?|machine\s*gun|pkm|ambush|indirect\s+fire|idf)\b",
    )
});
/// "No contact", "negative enemy activity": a report of nothing, not an enemy report.
static NO_ENEMY: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)\b(?:no|negative|nil|without)\s+(?:\w+\s+)?(?:contact|enemy|eny|hostiles?|activity)\b")
});
static EQUIPMENT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(t-\d+|bmp-?\d?|btr-?\d*|rpgs?|mortars?|technicals?|drones?|uavs?|ieds?|pkm|machine\s*guns?|small\s+arms|rifles|trucks?|pickups?|motorcycles?)\b",
    )
});
static SIZE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|dozen|single)\s*(?:x\s*)?(?:enemy\s+|eny\s+|armed\s+|hostile\s+)?(?:fighters|men|pax|personnel|insurgents|militants|hostiles|enemy|eny|troops|vehicles|technicals|trucks|t-\d+|bmps?|btrs?|snipers?|individuals|males|squads?)\b",
    )
});
static CAS_COUNT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|single|couple)\s*(?:x\s*)?(?:friendly\s+|own\s+|more\s+)?(kia|killed(?:\s+in\s+action)?|dead|fatalit(?:y|ies)|wia|wounded|injured|hurt|casualt(?:y|ies))\b",
    )
});
static CAS_AFTER: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(kia|wia|casualties)\s*[:=]?\s*(\d+)\b"));
static SUPPLY: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(ammo|ammunition|class\s*v|fuel|class\s*iii|water|class\s*i)\b(?:\s+(?:is|at|state|status|level|now|down\s+to|remaining))*\s*[:=-]?\s*(green|amber|red|black|\d{1,3}\s?%)",
    )
});
static REQUEST: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)\b(request(?:ing|s)?|need(?:s|ed)?|require[sd]?|send|resupply|req)\b")
});
static OWN: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(we|our|us|friendly|own\s+forces|moving|moved|holding|established|occupying|occupied|patrol(?:ling)?|arrived|departed|crossed|secured|dug\s+in|consolidat\w+|set\s+at|in\s+position|oriented)\b",
    )
});
static POSITION: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(we\s+are|we're|current(?:ly)?|position|pos|loc(?:ation)?|located|holding|occupying|established|set\s+at|arrived|in\s+position|dug\s+in|my\s+location|our\s+location)\b",
    )
});
static PLACE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\b((?i:obj(?:ective)?|cp|checkpoint|lz|hlz|pl|op|rv|rally\s+point|bridge|village|town|hill)\s+[A-Z][A-Za-z0-9]+)\b",
    )
});

/// Date-time group of `ms`: `DDHHMMZMONYY`.
pub fn dtg(ms: u64) -> String {
    let iso = fieldmesh_core::rfc3339(ms);
    // iso = YYYY-MM-DDTHH:MM:SS.mmmZ
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    let month: usize = iso[5..7].parse().unwrap_or(1);
    format!(
        "{}{}{}Z{}{}",
        &iso[8..10],
        &iso[11..13],
        &iso[14..16],
        MONTHS[month.saturating_sub(1).min(11)],
        &iso[2..4]
    )
}

fn count_word(s: &str) -> u32 {
    s.parse()
        .ok()
        .or_else(|| facts::number_word(s))
        .unwrap_or(0)
}

fn push_unique(v: &mut Vec<String>, id: &str) {
    if !v.iter().any(|x| x == id) {
        v.push(id.to_owned());
    }
}

/// Builds the extractive SITREP for `unit` from `sources` (any order).
pub fn build(unit: &str, sources: &[Source]) -> Sitrep {
    let mut sources: Vec<&Source> = sources.iter().collect();
    sources.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
    let from_ms = sources.first().map_or(0, |s| s.time_ms);
    let to_ms = sources.last().map_or(0, |s| s.time_ms);
    let mut rep = Sitrep {
        dtg: dtg(to_ms),
        unit: unit.to_owned(),
        from_ms,
        to_ms,
        location: None,
        situation: vec![],
        enemy: vec![],
        own_forces: vec![],
        casualties: Casualties::default(),
        logistics: Logistics::default(),
        requests: vec![],
        places: vec![],
        narrative: Narrative {
            text: String::new(),
            by: "extractive".into(),
            facts_checked: 0,
        },
        confidence: "low".into(),
        inputs: sources.iter().map(|s| s.id.clone()).collect(),
    };
    for src in &sources {
        let mut counted_casualties = false;
        for sentence in facts::sentences(&src.text) {
            let mut used = false;
            // Casualties: every count in the sentence, once per message.
            let mut kia = 0;
            let mut wia = 0;
            let mut other = 0;
            for c in CAS_COUNT.captures_iter(sentence) {
                let n = count_word(&c[1]);
                match c[2].to_ascii_lowercase().as_str() {
                    k if k.starts_with("kia")
                        || k.starts_with("killed")
                        || k == "dead"
                        || k.starts_with("fatal") =>
                    {
                        kia += n
                    }
                    k if k.starts_with("casualt") => other += n,
                    _ => wia += n,
                }
            }
            for c in CAS_AFTER.captures_iter(sentence) {
                let n = count_word(&c[2]);
                match c[1].to_ascii_lowercase().as_str() {
                    "kia" => kia += n,
                    "wia" => wia += n,
                    _ => other += n,
                }
            }
            if kia + wia + other > 0 {
                rep.casualties.kia += kia;
                rep.casualties.wia += wia;
                rep.casualties.unspecified += other;
                push_unique(&mut rep.casualties.sources, &src.id);
                counted_casualties = true;
                used = true;
            }
            // Supplies: the latest report of each class wins.
            for c in SUPPLY.captures_iter(sentence) {
                let class = c[1].to_ascii_lowercase().replace(' ', "");
                let state = c[2]
                    .to_ascii_uppercase()
                    .replace(' ', "")
                    .replace("PERCENT", "%");
                let slot = match class.as_str() {
                    "ammo" | "ammunition" | "classv" => &mut rep.logistics.ammo,
                    "fuel" | "classiii" => &mut rep.logistics.fuel,
                    _ => &mut rep.logistics.water,
                };
                *slot = Some(SupplyState {
                    state,
                    sources: vec![src.id.clone()],
                });
                used = true;
            }
            // Named places with a grid.
            if let Some(p) = PLACE.captures(sentence)
                && let Some((g, _)) = facts::grids(sentence).into_iter().next()
            {
                let name = facts::normalise_unit(&p[1]);
                rep.places.retain(|x| x.name != name);
                rep.places.push(Place {
                    name,
                    grid: g,
                    sources: vec![src.id.clone()],
                });
            }
            let grids = facts::grids(sentence);
            let times = facts::times(sentence);
            if ENEMY.is_match(sentence)
                && !NO_ENEMY.is_match(sentence)
                && !OWN.is_match(sentence.split_whitespace().next().unwrap_or(""))
            {
                let size = SIZE.captures(sentence).map(|c| count_word(&c[1]));
                let mut equipment: Vec<String> = EQUIPMENT
                    .find_iter(sentence)
                    .map(|m| m.as_str().to_ascii_uppercase())
                    .collect();
                equipment.dedup();
                rep.enemy.push(Salute {
                    size,
                    activity: sentence.to_owned(),
                    location: grids.first().map(|(g, _)| g.clone()),
                    time: times.first().map(|(t, _)| t.clone()),
                    equipment,
                    sources: vec![src.id.clone()],
                });
                used = true;
            } else if OWN.is_match(sentence) {
                rep.own_forces
                    .push(Sourced::new(sentence.to_owned(), &src.id));
                if POSITION.is_match(sentence)
                    && let Some((g, _)) = grids.first()
                {
                    rep.location = Some(Sourced::new(g.clone(), &src.id));
                }
                used = true;
            }
            if REQUEST.is_match(sentence) {
                rep.requests
                    .push(Sourced::new(sentence.to_owned(), &src.id));
                used = true;
            }
            if !used && !counted_casualties {
                rep.situation
                    .push(Sourced::new(sentence.to_owned(), &src.id));
            }
        }
    }
    rep.narrative.text = extractive_narrative(&rep);
    rep
}

/// A short narrative made only of the SITREP's own fields.
fn extractive_narrative(r: &Sitrep) -> String {
    let mut parts = Vec::new();
    if let Some(l) = &r.location {
        parts.push(format!("{} at grid {}.", r.unit, l.value));
    }
    if !r.enemy.is_empty() {
        parts.push(format!("{} enemy report(s).", r.enemy.len()));
    }
    let c = &r.casualties;
    if c.total() > 0 {
        parts.push(format!(
            "Casualties: {} KIA, {} WIA, {} unspecified.",
            c.kia, c.wia, c.unspecified
        ));
    }
    if !r.requests.is_empty() {
        parts.push(format!("{} request(s) outstanding.", r.requests.len()));
    }
    if parts.is_empty() {
        parts.push(format!("{}: nothing significant to report.", r.unit));
    }
    parts.join(" ")
}

/// Facts a SITREP may state beyond its sources: its own DTG, its unit, the counts it
/// computed.
pub fn derived_facts(r: &Sitrep) -> BTreeSet<Fact> {
    let mut f = facts::extract(&r.unit);
    f.insert(Fact {
        kind: FactKind::Time,
        value: r.dtg.clone(),
    });
    let c = &r.casualties;
    for n in [
        c.kia,
        c.wia,
        c.unspecified,
        c.total(),
        r.enemy.len() as u32,
        r.requests.len() as u32,
    ] {
        f.insert(Fact {
            kind: FactKind::Number,
            value: n.to_string(),
        });
    }
    for u in facts::units(&r.unit) {
        f.insert(Fact {
            kind: FactKind::Unit,
            value: u.0,
        });
    }
    f
}

/// Facts stated in prose that appear in neither the sources nor the SITREP's derived
/// facts. Empty means the prose passes.
pub fn validate_prose(prose: &str, sources: &[Source], sitrep: &Sitrep) -> Vec<Fact> {
    static LIST_MARKER: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^\s*\d{1,2}[.)]\s"));
    let prose = LIST_MARKER.replace_all(prose, " ");
    let mut allowed = derived_facts(sitrep);
    for s in sources {
        allowed.extend(facts::extract(&s.text));
    }
    facts::extract(&prose)
        .into_iter()
        .filter(|f| !allowed.contains(f))
        .collect()
}

/// Accepts model prose into the SITREP when it passes validation: confidence becomes
/// `high`. On failure the SITREP keeps its extractive narrative and `low` confidence,
/// and the unsupported facts are returned.
pub fn accept_prose(
    r: &mut Sitrep,
    prose: &str,
    model: &str,
    sources: &[Source],
) -> Result<(), Vec<Fact>> {
    let prose = prose.trim();
    if prose.is_empty() {
        return Err(vec![]);
    }
    let bad = validate_prose(prose, sources, r);
    if !bad.is_empty() {
        return Err(bad);
    }
    r.narrative = Narrative {
        text: prose.to_owned(),
        by: model.to_owned(),
        facts_checked: facts::extract(prose).len(),
    };
    r.confidence = "high".into();
    Ok(())
}

fn srcs(ids: &[String]) -> String {
    let short: Vec<&str> = ids
        .iter()
        .map(|i| &i[i.len().saturating_sub(8)..])
        .collect();
    format!("[{}]", short.join(","))
}

/// The SITREP as text, each line ending with its sources (last 8 characters of each
/// message id).
pub fn render(r: &Sitrep) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "SITREP {} {} (confidence: {})",
        r.dtg, r.unit, r.confidence
    ));
    line(format!(
        "1. LOCATION: {}",
        r.location
            .as_ref()
            .map_or("not reported".to_owned(), |l| format!(
                "{} {}",
                l.value,
                srcs(&l.sources)
            ))
    ));
    line("2. ENEMY:".into());
    if r.enemy.is_empty() {
        line("   none reported".into());
    }
    for e in &r.enemy {
        let mut d = Vec::new();
        if let Some(s) = e.size {
            d.push(format!("size {s}"));
        }
        if let Some(l) = &e.location {
            d.push(format!("grid {l}"));
        }
        if let Some(t) = &e.time {
            d.push(format!("time {t}"));
        }
        if !e.equipment.is_empty() {
            d.push(format!("equipment {}", e.equipment.join("/")));
        }
        line(format!(
            "   - {} ({}) {}",
            e.activity,
            d.join(", "),
            srcs(&e.sources)
        ));
    }
    line("3. OWN FORCES:".into());
    if r.own_forces.is_empty() {
        line("   nothing reported".into());
    }
    for o in &r.own_forces {
        line(format!("   - {} {}", o.value, srcs(&o.sources)));
    }
    let c = &r.casualties;
    line(format!(
        "4. CASUALTIES: {} KIA, {} WIA, {} unspecified {}",
        c.kia,
        c.wia,
        c.unspecified,
        if c.sources.is_empty() {
            "[none reported]".into()
        } else {
            srcs(&c.sources)
        }
    ));
    let sup = |s: &Option<SupplyState>| {
        s.as_ref().map_or("not reported".to_owned(), |s| {
            format!("{} {}", s.state, srcs(&s.sources))
        })
    };
    line(format!(
        "5. LOGISTICS: ammo {}; fuel {}; water {}",
        sup(&r.logistics.ammo),
        sup(&r.logistics.fuel),
        sup(&r.logistics.water)
    ));
    line("6. REQUESTS:".into());
    if r.requests.is_empty() {
        line("   none".into());
    }
    for q in &r.requests {
        line(format!("   - {} {}", q.value, srcs(&q.sources)));
    }
    if !r.situation.is_empty() {
        line("7. OTHER:".into());
        for s in &r.situation {
            line(format!("   - {} {}", s.value, srcs(&s.sources)));
        }
    }
    line(format!(
        "NARRATIVE ({}): {}",
        r.narrative.by, r.narrative.text
    ));
    out
}

/// Sources grouped by id, for provenance checks.
pub fn index(sources: &[Source]) -> BTreeMap<&str, &Source> {
    sources.iter().map(|s| (s.id.as_str(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(id: &str, t: u64, text: &str) -> Source {
        Source {
            id: id.into(),
            author: "a".into(),
            time_ms: 1_764_770_000_000 + t * 60_000,
            text: text.into(),
        }
    }

    fn field_traffic() -> Vec<Source> {
        vec![
            src(
                "m1",
                0,
                "2nd PLT in position at grid 38SMB 44840 12345. All quiet.",
            ),
            src(
                "m2",
                5,
                "Contact: 6 enemy fighters with 2 technicals moving south at grid 38SMB 45000 12800, 1410Z.",
            ),
            src(
                "m3",
                9,
                "2 WIA, one urgent. Requesting MEDEVAC at LZ Crow grid 38SMB 44700 12200.",
            ),
            src("m4", 12, "Ammo amber, fuel 60%, water green."),
            src("m5", 15, "1 more wounded, walking. Ammo red."),
        ]
    }

    #[test]
    fn fields_are_extracted_with_their_sources() {
        let s = field_traffic();
        let r = build("2 PLATOON", &s);
        assert_eq!(r.location.as_ref().unwrap().value, "38SMB4484012345");
        assert_eq!(r.location.as_ref().unwrap().sources, ["m1"]);
        assert_eq!(r.enemy.len(), 1);
        assert_eq!(r.enemy[0].size, Some(6));
        assert_eq!(r.enemy[0].location.as_deref(), Some("38SMB4500012800"));
        assert_eq!(r.enemy[0].time.as_deref(), Some("1410Z"));
        assert_eq!(r.enemy[0].equipment, ["TECHNICALS"]);
        assert_eq!((r.casualties.kia, r.casualties.wia), (0, 3));
        assert_eq!(r.casualties.sources, ["m3", "m5"]);
        assert_eq!(r.logistics.ammo.as_ref().unwrap().state, "RED");
        assert_eq!(r.logistics.ammo.as_ref().unwrap().sources, ["m5"]);
        assert_eq!(r.logistics.fuel.as_ref().unwrap().state, "60%");
        assert_eq!(r.logistics.water.as_ref().unwrap().state, "GREEN");
        assert_eq!(r.requests.len(), 1);
        assert_eq!(r.requests[0].sources, ["m3"]);
        assert_eq!(r.places[0].name, "LZ CROW");
        assert_eq!(r.confidence, "low");
        assert_eq!(r.inputs, ["m1", "m2", "m3", "m4", "m5"]);
        // "No contact" is not an enemy report.
        let quiet = build("X", &[src("q", 0, "At checkpoint 4, no contact, fuel 80%")]);
        assert!(quiet.enemy.is_empty(), "{:?}", quiet.enemy);
        let text = render(&r);
        assert!(text.contains("4. CASUALTIES: 0 KIA, 3 WIA"), "{text}");
        // The extractive narrative itself passes validation.
        assert!(validate_prose(&r.narrative.text, &s, &r).is_empty());
    }

    #[test]
    fn prose_stating_an_absent_fact_is_refused() {
        let s = field_traffic();
        let mut r = build("2 PLATOON", &s);
        let good = "2 PLATOON holds at 38SMB 44840 12345; 6 enemy fighters moved south at 1410Z. 3 WIA, MEDEVAC requested.";
        assert!(accept_prose(&mut r.clone(), good, "m", &s).is_ok());
        for bad in [
            "2 PLATOON reports 4 WIA.",
            "Enemy seen at grid 38SMB 11111 22222.",
            "Contact at 1500Z.",
            "Bravo Company took 3 WIA.",
        ] {
            let err = accept_prose(&mut r, bad, "m", &s).unwrap_err();
            assert!(!err.is_empty(), "{bad} passed");
            assert_eq!(r.confidence, "low");
        }
    }

    #[test]
    fn dtg_format() {
        // 2026-12-03T14:10:00Z
        assert_eq!(dtg(1_796_307_000_000), "031410ZDEC26");
    }
}
