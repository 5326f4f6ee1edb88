//! Triage precision and recall on a labelled message set that includes hard negatives
//! (negations, drills, equipment, places named after casualties).

use fieldmesh_ai::triage::triage;

#[test]
fn precision_and_recall_on_the_labelled_set() {
    let data = include_str!("data/triage.tsv");
    let (mut tp, mut fp, mut fn_, mut tn, mut hard, mut hard_fp) = (0, 0, 0, 0, 0, 0);
    let mut mistakes = Vec::new();
    for line in data.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut cols = line.split('\t');
        let label = cols.next().unwrap() == "1";
        let text = cols.next().unwrap();
        let is_hard = cols.next() == Some("hard");
        let got = triage(text);
        if let Some(t) = &got {
            assert!(!t.reason.is_empty() && text.to_lowercase().contains(&t.cue.to_lowercase()));
        }
        match (label, got.is_some()) {
            (true, true) => tp += 1,
            (true, false) => {
                fn_ += 1;
                mistakes.push(format!("missed: {text}"));
            }
            (false, true) => {
                fp += 1;
                mistakes.push(format!("false flag: {text} ({:?})", got.unwrap().cue));
            }
            (false, false) => tn += 1,
        }
        if is_hard {
            hard += 1;
            if got.is_some() {
                hard_fp += 1;
            }
        }
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    println!(
        "triage: {tp} TP, {fp} FP, {fn_} FN, {tn} TN; precision {precision:.3}, recall {recall:.3}; hard negatives {hard_fp}/{hard} flagged"
    );
    for m in &mistakes {
        println!("  {m}");
    }
    assert!(tp + fn_ >= 30 && hard >= 20, "the labelled set shrank");
    assert!(recall >= 0.95, "recall {recall:.3}: {mistakes:#?}");
    assert!(precision >= 0.90, "precision {precision:.3}: {mistakes:#?}");
}
