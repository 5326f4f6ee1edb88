//! Deterministic fact extraction: the numbers, grid references, times and unit names a
//! message states. SITREP fields are built from these, and generated prose is checked
//! against them: a fact the prose states must be one the sources state.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// What kind of fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactKind {
    /// A count or quantity ("3", "three", "40%").
    Number,
    /// A grid reference (MGRS "38SMB4484012345", or "grid 123456").
    Grid,
    /// A time ("1530Z", "031530ZDEC26", "15:30").
    Time,
    /// A unit or call sign ("2nd Platoon", "BRAVO-2", "Viper 6").
    Unit,
}

/// One fact, normalised so that two spellings of the same fact compare equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fact {
    pub kind: FactKind,
    /// Normalised form: digits for numbers, upper-case without spaces for grids and
    /// times, upper-case words for units.
    pub value: String,
}

impl Fact {
    fn new(kind: FactKind, value: impl Into<String>) -> Fact {
        Fact {
            kind,
            value: value.into(),
        }
    }
}

/// NATO phonetic alphabet: call signs and sub-unit names are built from it.
pub(crate) const PHONETIC: &[&str] = &[
    "ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL", "INDIA", "JULIET",
    "KILO", "LIMA", "MIKE", "NOVEMBER", "OSCAR", "PAPA", "QUEBEC", "ROMEO", "SIERRA", "TANGO",
    "UNIFORM", "VICTOR", "WHISKEY", "XRAY", "X-RAY", "YANKEE", "ZULU",
];

const NUMBER_WORDS: &[(&str, u32)] = &[
    ("zero", 0),
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("eleven", 11),
    ("twelve", 12),
    ("thirteen", 13),
    ("fourteen", 14),
    ("fifteen", 15),
    ("sixteen", 16),
    ("seventeen", 17),
    ("eighteen", 18),
    ("nineteen", 19),
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("hundred", 100),
    ("dozen", 12),
    ("single", 1),
    ("couple", 2),
];

/// The value of a number word, if `w` is one.
pub fn number_word(w: &str) -> Option<u32> {
    let w = w.to_ascii_lowercase();
    NUMBER_WORDS.iter().find(|(n, _)| *n == w).map(|(_, v)| *v)
}

static MGRS: LazyLock<Regex> = LazyLock::new(|| {
    // Zone + band, 100 km square, then easting and northing of equal length.
    Regex::new(r"(?i)\b(\d{1,2}[C-HJ-NP-X])\s?([A-HJ-NP-Z]{2})\s?(\d{2,5})\s?(\d{2,5})\b").unwrap()
});
static GRID_WORD: LazyLock<Regex> = LazyLock::new(|| {
    // "grid 123 456", "GR 123456", "grid ref 1234 5678".
    Regex::new(r"(?i)\b(?:grid(?:\s+ref(?:erence)?)?|gr)\.?\s*:?\s*(\d{3,5})\s?(\d{3,5})?\b")
        .unwrap()
});
static DTG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(\d{6})\s?([A-Z])\s?(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)\s?(\d{2})\b",
    )
    .unwrap()
});
static ZULU: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b([01]\d|2[0-3])([0-5]\d)\s?([ZJ]|hrs|hours|L)\b").unwrap());
static CLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([01]?\d|2[0-3]):([0-5]\d)\b").unwrap());
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(\d+(?:\.\d+)?)(\s?%|\s?percent)?").unwrap());
static WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[A-Za-z][A-Za-z'-]*").unwrap());
static UNIT: LazyLock<Regex> = LazyLock::new(|| {
    let phon = PHONETIC.join("|");
    Regex::new(&format!(
        r"(?i)\b(?:(?:1st|2nd|3rd|[4-9]th|\d{{1,2}})\s?(?:platoon|plt|squad|sqd|section|company|coy|co|troop|battery|btry|battalion|bn|team)\b|(?:{phon})(?:[\s-]?(?:company|coy|co|platoon|plt|squad|team|troop))?(?:[\s-]?\d{{1,2}}(?:[\s-]\d{{1,2}})?)?\b|(?:task\s+force|tf)\s+(?-i:[A-Z][a-z]+)\b|(?-i:[A-Z][a-z]+\s\d{{1,2}}(?:-\d)?)\b)"
    ))
    .unwrap()
});

/// Words that look like a call sign ("Word 6") but are not one.
const NOT_CALLSIGNS: &[&str] = &[
    "at",
    "in",
    "on",
    "of",
    "to",
    "by",
    "for",
    "the",
    "and",
    "or",
    "with",
    "from",
    "grid",
    "about",
    "around",
    "approx",
    "approximately",
    "over",
    "under",
    "only",
    "all",
    "our",
    "we",
    "are",
    "is",
    "was",
    "were",
    "has",
    "have",
    "had",
    "be",
    "been",
    "x",
    "and",
    "plus",
    "channel",
    "freq",
    "frequency",
    "net",
    "route",
    "phase",
    "line",
    "hill",
    "building",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "team",
    "figure",
    "figures",
    "dec",
    "nov",
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "room",
    "vehicles",
    "vehicle",
    "trucks",
    "truck",
    "men",
    "pax",
    "personnel",
    "fighters",
    "troops",
    "rounds",
    "mags",
    "magazines",
    "litres",
    "liters",
    "gallons",
    "jerrycans",
    "cases",
    "mrE",
    "mres",
    "boxes",
    "km",
    "m",
    "meters",
    "metres",
    "miles",
    "hrs",
    "up",
    "down",
    "till",
    "until",
    "since",
    "after",
    "before",
    "last",
    "next",
    "per",
    "every",
    "each",
    "than",
    "maybe",
    "some",
    "reported",
    "report",
    "sitrep",
    "spotrep",
    "casualties",
    "wia",
    "kia",
    "objective",
    "obj",
    "checkpoint",
    "cp",
    "lz",
    "hlz",
    "pl",
    "bridge",
    "point",
    "ammo",
    "fuel",
    "water",
    "class",
    "priority",
    "routine",
    "immediate",
    "flash",
    "urgent",
];

/// A grid reference, normalised: upper case, no spaces.
fn grid_norm(parts: &[&str]) -> String {
    parts.concat().to_ascii_uppercase()
}

/// All grid references in `text`, normalised, with their byte ranges.
pub fn grids(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    for c in MGRS.captures_iter(text) {
        let (e, n) = (&c[3], &c[4]);
        if e.len() != n.len() {
            continue;
        }
        let m = c.get(0).unwrap();
        out.push((grid_norm(&[&c[1], &c[2], e, n]), m.range()));
    }
    for c in GRID_WORD.captures_iter(text) {
        let m = c.get(0).unwrap();
        if out
            .iter()
            .any(|(_, r)| r.start < m.end() && m.start() < r.end)
        {
            continue;
        }
        let digits = match c.get(2) {
            Some(n) => format!("{}{}", &c[1], n.as_str()),
            None => c[1].to_owned(),
        };
        if digits.len() % 2 == 0 && digits.len() >= 6 {
            out.push((digits, c.get(1).unwrap().start()..m.end()));
        }
    }
    out.sort_by_key(|(_, r)| r.start);
    out
}

/// All times in `text`, normalised, with their byte ranges.
pub fn times(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    for c in DTG.captures_iter(text) {
        let m = c.get(0).unwrap();
        out.push((
            format!("{}{}{}{}", &c[1], &c[2], &c[3], &c[4]).to_ascii_uppercase(),
            m.range(),
        ));
    }
    for c in ZULU.captures_iter(text) {
        let m = c.get(0).unwrap();
        if out.iter().any(|(_, r): &(String, std::ops::Range<usize>)| {
            r.start <= m.start() && m.end() <= r.end
        }) {
            continue;
        }
        let zone = match c[3].to_ascii_uppercase().as_str() {
            "Z" => "Z",
            "J" | "L" => "L",
            _ => "",
        };
        out.push((format!("{}{}{zone}", &c[1], &c[2]), m.range()));
    }
    for c in CLOCK.captures_iter(text) {
        let m = c.get(0).unwrap();
        let h: u32 = c[1].parse().unwrap_or(0);
        out.push((format!("{h:02}{}", &c[2]), m.range()));
    }
    out.sort_by_key(|(_, r)| r.start);
    out
}

/// Unit names and call signs in `text`, normalised to upper-case single-spaced words.
pub fn units(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    for m in UNIT.find_iter(text) {
        let s = m.as_str();
        let first = s.split([' ', '-']).next().unwrap_or("");
        let is_phonetic = PHONETIC.iter().any(|p| p.eq_ignore_ascii_case(first));
        let is_ordinal = first.chars().next().is_some_and(|c| c.is_ascii_digit());
        let is_tf = first.eq_ignore_ascii_case("task") || first.eq_ignore_ascii_case("tf");
        // "Word 6" call signs: a capitalised word that is not a common word.
        if !is_phonetic && !is_ordinal && !is_tf {
            if NOT_CALLSIGNS.iter().any(|w| w.eq_ignore_ascii_case(first)) {
                continue;
            }
            // Sentence-initial capitals are not evidence of a name.
            let before = text[..m.start()].trim_end();
            if before.is_empty() || before.ends_with(['.', '!', '?', ':', '\n']) {
                continue;
            }
        }
        // A phonetic word alone is a letter, not a unit, unless capitalised as a name
        // (e.g. "Bravo") or followed by a number or echelon.
        if is_phonetic && !s.contains([' ', '-']) && s.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        out.push((normalise_unit(s), m.range()));
    }
    out
}

/// Canonical spelling of a unit name: upper case, echelon abbreviations expanded.
pub fn normalise_unit(s: &str) -> String {
    s.split([' ', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| match w.to_ascii_uppercase().as_str() {
            "PLT" => "PLATOON".to_owned(),
            "SQD" => "SQUAD".to_owned(),
            "CO" | "COY" => "COMPANY".to_owned(),
            "BTRY" => "BATTERY".to_owned(),
            "BN" => "BATTALION".to_owned(),
            "TF" => "TASK FORCE".to_owned(),
            "X-RAY" => "XRAY".to_owned(),
            "1ST" => "1".to_owned(),
            "2ND" => "2".to_owned(),
            "3RD" => "3".to_owned(),
            o if o.len() > 2
                && o.ends_with("TH")
                && o[..o.len() - 2].bytes().all(|b| b.is_ascii_digit()) =>
            {
                o[..o.len() - 2].to_owned()
            }
            o => o.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Numbers in `text` (digits and number words) outside grids, times and unit names.
pub fn numbers(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let taken: Vec<std::ops::Range<usize>> = grids(text)
        .into_iter()
        .chain(times(text))
        .chain(units(text))
        .map(|(_, r)| r)
        .collect();
    let free =
        |r: &std::ops::Range<usize>| !taken.iter().any(|t| t.start < r.end && r.start < t.end);
    let mut out = Vec::new();
    for c in NUMBER.captures_iter(text) {
        let m = c.get(0).unwrap();
        if !free(&m.range()) {
            continue;
        }
        // Part of an identifier such as "T-72" or "9-line": not a quantity.
        let before = text[..m.start()].chars().next_back();
        if before.is_some_and(|ch| ch == '-' || ch.is_ascii_alphabetic()) {
            continue;
        }
        let mut v = c[1].trim_start_matches('0').to_owned();
        if v.is_empty() || v.starts_with('.') {
            v.insert(0, '0');
        }
        if c.get(2).is_some() {
            v.push('%');
        }
        out.push((v, m.range()));
    }
    for m in WORD.find_iter(text) {
        if let Some(n) = number_word(m.as_str())
            && free(&m.range())
        {
            // "one of", "a single" and the like still state a count.
            out.push((n.to_string(), m.range()));
        }
    }
    out.sort_by_key(|(_, r)| r.start);
    out
}

/// Every fact `text` states.
pub fn extract(text: &str) -> BTreeSet<Fact> {
    let mut out = BTreeSet::new();
    for (g, _) in grids(text) {
        out.insert(Fact::new(FactKind::Grid, g));
    }
    for (t, _) in times(text) {
        out.insert(Fact::new(FactKind::Time, t));
    }
    for (u, _) in units(text) {
        out.insert(Fact::new(FactKind::Unit, u));
    }
    for (n, _) in numbers(text) {
        out.insert(Fact::new(FactKind::Number, n));
    }
    out
}

/// Splits text into sentences (on `.`, `!`, `?`, `;` and newlines), trimmed, non-empty.
/// Decimal points and grid punctuation do not split.
pub fn sentences(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let boundary = match b {
            b'\n' | b'!' | b'?' | b';' => true,
            b'.' => {
                let next_digit = bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
                let prev_digit = i > 0 && bytes[i - 1].is_ascii_digit();
                !(next_digit && prev_digit)
            }
            _ => false,
        };
        if boundary {
            let s = text[start..i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(v: Vec<(String, std::ops::Range<usize>)>) -> Vec<String> {
        v.into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn grids_in_common_spellings() {
        assert_eq!(
            vals(grids("contact at 38SMB 44840 12345 moving N")),
            ["38SMB4484012345"]
        );
        assert_eq!(vals(grids("OP at 38smb4484012345")), ["38SMB4484012345"]);
        assert_eq!(
            vals(grids("vic grid 123 456, and GR 4455 6677")),
            ["123456", "44556677"]
        );
        // Odd digit counts or mismatched halves are not grids.
        assert!(grids("grid 12345").is_empty());
        assert!(grids("38SMB 448 12345").is_empty());
    }

    #[test]
    fn times_and_dtgs() {
        assert_eq!(
            vals(times("at 031530ZDEC26 and 1600Z, RV 17:05")),
            ["031530ZDEC26", "1600Z", "1705"]
        );
        assert_eq!(vals(times("at 031530Z DEC 26")), ["031530ZDEC26"]);
        assert!(times("2500Z 1999").is_empty());
    }

    #[test]
    fn units_and_call_signs() {
        let u = vals(units(
            "2nd PLT and Bravo Company met Viper 6 near TF Hammer; charlie-1 holds.",
        ));
        assert_eq!(
            u,
            [
                "2 PLATOON",
                "BRAVO COMPANY",
                "VIPER 6",
                "TASK FORCE HAMMER",
                "CHARLIE 1"
            ]
        );
        // Ordinary words followed by numbers are not call signs.
        assert!(units("we have 3 vehicles, Route 7 is open").is_empty());
        assert!(units("plan alpha is a go").is_empty());
    }

    #[test]
    fn numbers_skip_identifiers_grids_and_times() {
        let n = vals(numbers(
            "3 WIA, two KIA, ammo at 40%, 1 T-72 at grid 123456 at 1500Z",
        ));
        assert_eq!(n, ["3", "2", "40%", "1"]);
        assert_eq!(vals(numbers("4.5 km, 007 rounds")), ["4.5", "7"]);
    }

    #[test]
    fn sentences_split_without_breaking_decimals() {
        assert_eq!(
            sentences("Moved 4.5 km north. Contact! Holding; awaiting orders\nout"),
            [
                "Moved 4.5 km north",
                "Contact",
                "Holding",
                "awaiting orders",
                "out"
            ]
        );
    }

    #[test]
    fn extract_is_spelling_insensitive() {
        let a = extract("2nd Plt reports 3 WIA at 38SMB 44840 12345 at 1530Z");
        let b = extract("At 1530Z, 2 PLATOON: three WIA, grid 38smb4484012345.");
        assert_eq!(a, b);
    }
}
