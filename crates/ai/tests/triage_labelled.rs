//! Triage precision and recall on labelled message sets that include hard negatives
//! (negations, drills, equipment, places named after casualties).
//!
//! * `data/triage-dev.tsv` was written alongside the rules.
//! * `data/triage-dev2.tsv` was written blind (by someone who had not seen the rules); on first
//!   contact the rules scored precision 0.77, recall 0.67 on it; its misses were then used
//!   to widen the rules, so it is development data now.
//! * `tests/data/triage-blind2.tsv` was written blind after that and never used to change the rules:
//!   its figure is the honest one.

use fieldmesh_ai::triage::triage;

struct Score {
    tp: usize,
    fp: usize,
    fn_: usize,
    tn: usize,
    hard: usize,
    hard_fp: usize,
    mistakes: Vec<String>,
}

impl Score {
    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
}

fn score(data: &str) -> Score {
    score_with(data, triage)
}

fn score_with(data: &str, triage: impl Fn(&str) -> Option<fieldmesh_ai::triage::Triage>) -> Score {
    let mut s = Score {
        tp: 0,
        fp: 0,
        fn_: 0,
        tn: 0,
        hard: 0,
        hard_fp: 0,
        mistakes: vec![],
    };
    for line in data
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut cols = line.split('\t');
        let label = cols.next().unwrap() == "1";
        let text = cols.next().unwrap();
        let is_hard = cols.next() == Some("hard");
        let got = triage(text);
        if let Some(t) = &got {
            assert!(!t.reason.is_empty() && text.to_lowercase().contains(&t.cue.to_lowercase()));
        }
        let got = got.map(|t| t.category);
        match (label, &got) {
            (true, Some(_)) => s.tp += 1,
            (true, None) => {
                s.fn_ += 1;
                s.mistakes.push(format!("missed: {text}"));
            }
            (false, Some(c)) => {
                s.fp += 1;
                s.mistakes.push(format!("false flag: {text} ({c:?})"));
            }
            (false, None) => s.tn += 1,
        }
        if is_hard {
            s.hard += 1;
            s.hard_fp += usize::from(got.is_some());
        }
    }
    s
}

fn report(name: &str, s: &Score) {
    println!(
        "triage {name}: {} TP, {} FP, {} FN, {} TN; precision {:.3}, recall {:.3}; hard negatives flagged {}/{}",
        s.tp,
        s.fp,
        s.fn_,
        s.tn,
        s.precision(),
        s.recall(),
        s.hard_fp,
        s.hard
    );
    for m in &s.mistakes {
        println!("  {m}");
    }
}

/// A development set: the rules were written or widened on it, so they must do well.
fn assert_development(name: &str, data: &str) {
    let s = score(data);
    report(name, &s);
    assert!(
        s.tp + s.fn_ >= 30 && s.hard >= 20,
        "the labelled set shrank"
    );
    assert!(
        s.recall() >= 0.95,
        "recall {:.3}: {:#?}",
        s.recall(),
        s.mistakes
    );
    assert!(
        s.precision() >= 0.90,
        "precision {:.3}: {:#?}",
        s.precision(),
        s.mistakes
    );
}

#[test]
fn precision_and_recall_on_the_development_set() {
    assert_development("development set", include_str!("../data/triage-dev.tsv"));
}

#[test]
fn precision_and_recall_on_the_second_development_set() {
    assert_development(
        "second development set",
        include_str!("../data/triage-dev2.tsv"),
    );
}

/// The honest figures: rules alone, then rules plus the embedding check, on a set
/// neither was tuned on. The bounds are regression guards at the measured level; the
/// figures are printed.
#[test]
fn precision_and_recall_on_the_blind_set() {
    let data = include_str!("data/triage-blind2.tsv");
    let rules = score(data);
    report("blind set, rules", &rules);
    assert!(
        rules.tp + rules.fn_ >= 30 && rules.hard >= 25,
        "the labelled set shrank"
    );
    let dir =
        std::path::PathBuf::from(std::env::var("FIELDMESH_MODELS").unwrap_or_else(|_| {
            format!("{}/.cache/fieldmesh/models", std::env::var("HOME").unwrap())
        }))
        .join("minilm-l6-v2");
    let e = fieldmesh_ai::embed::Embedder::load(&dir, 2)
        .unwrap_or_else(|err| panic!("{err}: run scripts/fetch-models.sh"));
    let sem = fieldmesh_ai::triage::Semantic::new(&e).unwrap();
    let both = score_with(data, |t| sem.triage(t, &e.embed(&[t]).unwrap()[0]));
    report("blind set, rules + embeddings", &both);
    assert!(
        both.recall() > rules.recall(),
        "the embedding check adds nothing"
    );
    assert!(both.recall() >= 0.80, "recall {:.3}", both.recall());
    assert!(
        both.precision() >= 0.65,
        "precision {:.3}",
        both.precision()
    );
    assert!(
        rules.precision() >= 0.65,
        "precision {:.3}",
        rules.precision()
    );
}
