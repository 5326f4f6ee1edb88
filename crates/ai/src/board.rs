//! The merged board: the latest SITREP per unit, totals, and conflicts between units
//! flagged with both sources.

use crate::sitrep::{Sitrep, SupplyState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A SITREP as it sits on the board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Id of the message carrying the SITREP.
    pub id: String,
    /// `draft`, `approved` or `rejected`.
    pub state: String,
    /// Node that produced it.
    pub producer: String,
    pub sitrep: Sitrep,
}

/// One class of supply across units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyRollup {
    /// The worst state reported, and by which unit.
    pub worst: Option<(String, String)>,
    /// Unit → its state.
    pub by_unit: BTreeMap<String, String>,
}

/// Totals across the units on the board.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub kia: u32,
    pub wia: u32,
    pub unspecified: u32,
    pub enemy_reports: usize,
    pub open_requests: usize,
    pub ammo: Option<SupplyRollup>,
    pub fuel: Option<SupplyRollup>,
    pub water: Option<SupplyRollup>,
}

/// Two units disagree; both sides are given with their sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub what: String,
    pub a: Claim,
    pub b: Claim,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub unit: String,
    pub sitrep: String,
    pub says: String,
    pub sources: Vec<String>,
}

impl Claim {
    fn of(e: &Entry, says: String, sources: &[String]) -> Claim {
        Claim {
            unit: e.sitrep.unit.clone(),
            sitrep: e.id.clone(),
            says,
            sources: sources.to_vec(),
        }
    }
}

/// One line of the consolidated narrative, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarrativeLine {
    pub unit: String,
    pub text: String,
    pub sitrep: String,
    /// `extractive` or the model that wrote the unit's narrative.
    pub by: String,
    pub confidence: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    /// Latest SITREP per unit, by unit name.
    pub units: BTreeMap<String, Entry>,
    pub totals: Totals,
    pub conflicts: Vec<Conflict>,
    pub narrative: Vec<NarrativeLine>,
}

fn rollup(
    entries: &[&Entry],
    pick: impl Fn(&Sitrep) -> Option<&SupplyState>,
) -> Option<SupplyRollup> {
    let mut by_unit = BTreeMap::new();
    let mut worst: Option<(u8, String, String)> = None;
    for e in entries {
        if let Some(s) = pick(&e.sitrep) {
            by_unit.insert(e.sitrep.unit.clone(), s.state.clone());
            let sev = s.severity();
            if worst.as_ref().is_none_or(|(w, _, _)| sev > *w) {
                worst = Some((sev, s.state.clone(), e.sitrep.unit.clone()));
            }
        }
    }
    if by_unit.is_empty() {
        return None;
    }
    Some(SupplyRollup {
        worst: worst.map(|(_, s, u)| (s, u)),
        by_unit,
    })
}

/// Grid distance in metres between two grids of the same 100 km square and precision;
/// `None` when they cannot be compared.
fn grid_distance_m(a: &str, b: &str) -> Option<f64> {
    let split = |g: &str| -> Option<(String, u64, u64, u32)> {
        let digits_at = g.len() - g.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (prefix, digits) = g.split_at(digits_at);
        if digits.len() % 2 != 0 || digits.is_empty() {
            return None;
        }
        let half = digits.len() / 2;
        let scale = 10u64.pow(5 - half as u32);
        Some((
            prefix.to_owned(),
            digits[..half].parse::<u64>().ok()? * scale,
            digits[half..].parse::<u64>().ok()? * scale,
            half as u32,
        ))
    };
    let (pa, ea, na, _) = split(a)?;
    let (pb, eb, nb, _) = split(b)?;
    if pa != pb {
        return None;
    }
    Some(((ea as f64 - eb as f64).powi(2) + (na as f64 - nb as f64).powi(2)).sqrt())
}

/// Builds the board from every SITREP the node can read. Rejected SITREPs are left off;
/// among the rest, the latest per unit (by DTG window end, then id) is shown.
pub fn build(entries: &[Entry]) -> Board {
    let mut units: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.state != "rejected") {
        let key = e.sitrep.unit.clone();
        let newer = units
            .get(&key)
            .is_none_or(|cur| (e.sitrep.to_ms, &e.id) > (cur.sitrep.to_ms, &cur.id));
        if newer {
            units.insert(key, e.clone());
        }
    }
    let latest: Vec<&Entry> = units.values().collect();
    let mut totals = Totals::default();
    for e in &latest {
        let c = &e.sitrep.casualties;
        totals.kia += c.kia;
        totals.wia += c.wia;
        totals.unspecified += c.unspecified;
        totals.enemy_reports += e.sitrep.enemy.len();
        totals.open_requests += e.sitrep.requests.len();
    }
    totals.ammo = rollup(&latest, |s| s.logistics.ammo.as_ref());
    totals.fuel = rollup(&latest, |s| s.logistics.fuel.as_ref());
    totals.water = rollup(&latest, |s| s.logistics.water.as_ref());

    let mut conflicts = Vec::new();
    for (i, a) in latest.iter().enumerate() {
        for b in &latest[i + 1..] {
            // The same named place at different grids.
            for pa in &a.sitrep.places {
                for pb in b.sitrep.places.iter().filter(|p| p.name == pa.name) {
                    let far = grid_distance_m(&pa.grid, &pb.grid).is_none_or(|d| d > 100.0);
                    if far {
                        conflicts.push(Conflict {
                            what: format!("{} is placed at different grids", pa.name),
                            a: Claim::of(a, pa.grid.clone(), &pa.sources),
                            b: Claim::of(b, pb.grid.clone(), &pb.sources),
                        });
                    }
                }
            }
            // The same enemy position (within 300 m) reported with different sizes.
            for ea in &a.sitrep.enemy {
                for eb in &b.sitrep.enemy {
                    let (Some(la), Some(lb)) = (&ea.location, &eb.location) else {
                        continue;
                    };
                    let near = grid_distance_m(la, lb).is_some_and(|d| d <= 300.0);
                    if near
                        && let (Some(sa), Some(sb)) = (ea.size, eb.size)
                        && sa != sb
                    {
                        conflicts.push(Conflict {
                            what: format!("enemy strength near {la} differs"),
                            a: Claim::of(a, format!("{sa}: {}", ea.activity), &ea.sources),
                            b: Claim::of(b, format!("{sb}: {}", eb.activity), &eb.sources),
                        });
                    }
                }
            }
            // Two units claiming the same own position (fratricide risk or stale report).
            if let (Some(la), Some(lb)) = (&a.sitrep.location, &b.sitrep.location)
                && grid_distance_m(&la.value, &lb.value).is_some_and(|d| d <= 50.0)
            {
                conflicts.push(Conflict {
                    what: format!("both units report their own position at {}", la.value),
                    a: Claim::of(a, la.value.clone(), &la.sources),
                    b: Claim::of(b, lb.value.clone(), &lb.sources),
                });
            }
        }
    }
    let narrative = latest
        .iter()
        .map(|e| NarrativeLine {
            unit: e.sitrep.unit.clone(),
            text: e.sitrep.narrative.text.clone(),
            sitrep: e.id.clone(),
            by: e.sitrep.narrative.by.clone(),
            confidence: e.sitrep.confidence.clone(),
            state: e.state.clone(),
        })
        .collect();
    Board {
        units,
        totals,
        conflicts,
        narrative,
    }
}

/// The board as text.
pub fn render(b: &Board) -> String {
    let mut out = String::new();
    out.push_str(&format!("BOARD: {} unit(s)\n", b.units.len()));
    for (unit, e) in &b.units {
        let c = &e.sitrep.casualties;
        out.push_str(&format!(
            "  {unit:<20} {} [{}] {} KIA {} WIA, ammo {}, fuel {}, water {}  (sitrep {}, confidence {})\n",
            e.sitrep.dtg,
            e.state,
            c.kia,
            c.wia,
            e.sitrep.logistics.ammo.as_ref().map_or("-", |s| s.state.as_str()),
            e.sitrep.logistics.fuel.as_ref().map_or("-", |s| s.state.as_str()),
            e.sitrep.logistics.water.as_ref().map_or("-", |s| s.state.as_str()),
            e.id,
            e.sitrep.confidence
        ));
    }
    let t = &b.totals;
    out.push_str(&format!(
        "TOTALS: {} KIA, {} WIA, {} unspecified; {} enemy report(s); {} open request(s)\n",
        t.kia, t.wia, t.unspecified, t.enemy_reports, t.open_requests
    ));
    for (name, r) in [("ammo", &t.ammo), ("fuel", &t.fuel), ("water", &t.water)] {
        if let Some(r) = r
            && let Some((state, unit)) = &r.worst
        {
            out.push_str(&format!("  {name}: worst {state} ({unit})\n"));
        }
    }
    if b.conflicts.is_empty() {
        out.push_str("CONFLICTS: none\n");
    } else {
        out.push_str(&format!("CONFLICTS: {}\n", b.conflicts.len()));
        for c in &b.conflicts {
            out.push_str(&format!(
                "  ! {}\n    {} says {} (sitrep {}, sources {})\n    {} says {} (sitrep {}, sources {})\n",
                c.what,
                c.a.unit,
                c.a.says,
                c.a.sitrep,
                c.a.sources.join(","),
                c.b.unit,
                c.b.says,
                c.b.sitrep,
                c.b.sources.join(",")
            ));
        }
    }
    out.push_str("NARRATIVE:\n");
    for l in &b.narrative {
        out.push_str(&format!(
            "  {}: {} [{} by {}, {} confidence, {}]\n",
            l.unit, l.text, l.sitrep, l.by, l.confidence, l.state
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sitrep::{Source, build as sitrep};

    fn s(id: &str, t: u64, text: &str) -> Source {
        Source {
            id: id.into(),
            author: "x".into(),
            time_ms: 1_796_307_000_000 + t,
            text: text.into(),
        }
    }

    fn entry(id: &str, unit: &str, state: &str, src: &[Source]) -> Entry {
        Entry {
            id: id.into(),
            state: state.into(),
            producer: "n".into(),
            sitrep: sitrep(unit, src),
        }
    }

    #[test]
    fn latest_per_unit_totals_and_conflicts() {
        let a_old = entry(
            "s1",
            "ALPHA",
            "approved",
            &[s("a0", 0, "1 WIA. Ammo green.")],
        );
        let a_new = entry(
            "s2",
            "ALPHA",
            "draft",
            &[s(
                "a1",
                100,
                "2 WIA. Ammo amber. Bridge Kilo at grid 38SMB 40000 10000. 5 enemy fighters at grid 38SMB 41000 11000.",
            )],
        );
        let b = entry(
            "s3",
            "BRAVO",
            "approved",
            &[s(
                "b1",
                50,
                "1 KIA. Ammo red, water green. Bridge Kilo at grid 38SMB 42000 10000. 12 enemy fighters at grid 38SMB 41100 11000.",
            )],
        );
        let c_rejected = entry("s4", "CHARLIE", "rejected", &[s("c1", 10, "9 KIA")]);
        let board = build(&[a_old, a_new, b, c_rejected]);
        assert_eq!(board.units.keys().collect::<Vec<_>>(), ["ALPHA", "BRAVO"]);
        assert_eq!(board.units["ALPHA"].id, "s2");
        assert_eq!((board.totals.kia, board.totals.wia), (1, 2));
        let ammo = board.totals.ammo.as_ref().unwrap();
        assert_eq!(ammo.worst, Some(("RED".into(), "BRAVO".into())));
        assert_eq!(ammo.by_unit["ALPHA"], "AMBER");
        assert_eq!(board.conflicts.len(), 2, "{:#?}", board.conflicts);
        let bridge = board
            .conflicts
            .iter()
            .find(|c| c.what.contains("BRIDGE KILO"))
            .unwrap();
        assert_eq!(bridge.a.sources, ["a1"]);
        assert_eq!(bridge.b.sources, ["b1"]);
        let enemy = board
            .conflicts
            .iter()
            .find(|c| c.what.contains("enemy"))
            .unwrap();
        assert!(enemy.a.says.starts_with("5:") && enemy.b.says.starts_with("12:"));
        let text = render(&board);
        assert!(text.contains("TOTALS: 1 KIA, 2 WIA"), "{text}");
        assert_eq!(board.narrative.len(), 2);
    }

    #[test]
    fn grid_distances() {
        assert_eq!(
            grid_distance_m("38SMB4000010000", "38SMB4000010100"),
            Some(100.0)
        );
        assert_eq!(grid_distance_m("38SMB400100", "38SMB400101"), Some(100.0));
        assert_eq!(grid_distance_m("38SMB4000010000", "38SMC4000010000"), None);
    }
}
