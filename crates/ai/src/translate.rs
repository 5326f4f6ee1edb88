//! Translation: a language model when the profile names one, checked; Apertium (rule-based,
//! deterministic) as the fallback for the pairs it has.
//!
//! A translation must carry the source's grid references, times and digit quantities
//! unchanged: a model output that drops or alters one is refused.

use crate::facts::{self, FactKind};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TranslateError {
    #[error("unknown language {0:?} (use an ISO 639 code such as en, es, fr)")]
    UnknownLanguage(String),
    #[error("no rule-based translator for {0} -> {1} on this node")]
    NoPair(String, String),
    #[error("apertium: {0}")]
    Apertium(String),
}

/// ISO 639-1 code, ISO 639-3 code and English name of the languages we recognise.
const LANGS: &[(&str, &str, &str)] = &[
    ("en", "eng", "English"),
    ("es", "spa", "Spanish"),
    ("fr", "fra", "French"),
    ("de", "deu", "German"),
    ("ca", "cat", "Catalan"),
    ("gl", "glg", "Galician"),
    ("eo", "epo", "Esperanto"),
    ("eu", "eus", "Basque"),
    ("is", "isl", "Icelandic"),
    ("mk", "mkd", "Macedonian"),
    ("pt", "por", "Portuguese"),
    ("it", "ita", "Italian"),
    ("ar", "ara", "Arabic"),
    ("uk", "ukr", "Ukrainian"),
    ("ru", "rus", "Russian"),
    ("pl", "pol", "Polish"),
];

/// A language by ISO 639-1 or 639-3 code or English name: (639-1, 639-3, name).
pub fn language(s: &str) -> Result<(&'static str, &'static str, &'static str), TranslateError> {
    let l = s.trim().to_ascii_lowercase();
    LANGS
        .iter()
        .find(|(a, b, n)| *a == l || *b == l || n.eq_ignore_ascii_case(&l))
        .copied()
        .ok_or_else(|| TranslateError::UnknownLanguage(s.to_owned()))
}

const STOPWORDS: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "the", "and", "at", "is", "are", "of", "to", "in", "we", "with", "on", "request",
            "enemy",
        ],
    ),
    (
        "es",
        &[
            "el", "la", "los", "las", "y", "en", "de", "que", "con", "por", "un", "una", "es",
            "del", "al",
        ],
    ),
    (
        "fr",
        &[
            "le", "la", "les", "et", "en", "de", "des", "du", "un", "une", "est", "nous", "au",
            "avec", "pour",
        ],
    ),
    (
        "de",
        &[
            "der", "die", "das", "und", "ist", "mit", "wir", "ein", "eine", "zu", "auf", "von",
            "den",
        ],
    ),
];

/// The most likely language of `text` among English, Spanish, French and German, by
/// common words; `None` when there is no evidence.
pub fn detect(text: &str) -> Option<&'static str> {
    let words: Vec<String> = crate::search::tokens(text).collect();
    let mut best: Option<(&str, usize)> = None;
    for (lang, stops) in STOPWORDS {
        let n = words.iter().filter(|w| stops.contains(&w.as_str())).count();
        if n > 0 && best.is_none_or(|(_, b)| n > b) {
            best = Some((lang, n));
        }
    }
    best.map(|(l, _)| l)
}

/// The Apertium mode for a pair, if installed (`/usr/share/apertium/modes/eng-spa.mode`).
pub fn apertium_mode(from: &str, to: &str) -> Option<String> {
    let (_, f3, _) = language(from).ok()?;
    let (_, t3, _) = language(to).ok()?;
    let mode = format!("{f3}-{t3}");
    Path::new("/usr/share/apertium/modes")
        .join(format!("{mode}.mode"))
        .is_file()
        .then_some(mode)
}

/// Rule-based translation with Apertium (`-u`: no unknown-word marks).
pub fn apertium(text: &str, from: &str, to: &str) -> Result<String, TranslateError> {
    let mode = apertium_mode(from, to)
        .ok_or_else(|| TranslateError::NoPair(from.to_owned(), to.to_owned()))?;
    let mut child = Command::new("apertium")
        .args(["-u", &mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TranslateError::Apertium(format!("cannot start apertium: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| TranslateError::Apertium("no stdin".into()))?;
    let input = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    // Apertium is fast; a stuck process must not hang the node.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                return Err(TranslateError::Apertium("timed out after 30 s".into()));
            }
            Err(e) => return Err(TranslateError::Apertium(e.to_string())),
        }
    }
    let _ = writer.join();
    let out = child
        .wait_with_output()
        .map_err(|e| TranslateError::Apertium(e.to_string()))?;
    if !out.status.success() {
        return Err(TranslateError::Apertium(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Grids, times and digit quantities of `source` missing from `translation`.
pub fn missing_facts(source: &str, translation: &str) -> Vec<String> {
    let have = facts::extract(translation);
    let digits_only = |v: &str| {
        v.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'%')
    };
    facts::extract(source)
        .into_iter()
        .filter(|f| match f.kind {
            FactKind::Grid | FactKind::Time => true,
            // Number words are translated; digits must survive as digits.
            FactKind::Number => {
                digits_only(&f.value) && source.contains(f.value.trim_end_matches('%'))
            }
            FactKind::Unit => false,
        })
        .filter(|f| !have.contains(f))
        .map(|f| f.value)
        .collect()
}

/// The instructions and message for a model translation.
pub fn prompt(text: &str, from: &str, to: &str) -> (String, String) {
    let name = |c: &str| language(c).map(|l| l.2).unwrap_or("the target language");
    (
        format!(
            "You are a translator. Translate the user's message from {} to {}. Keep grid references, times, numbers and call signs exactly as written. Reply with the translation only.",
            name(from),
            name(to)
        ),
        text.to_owned(),
    )
}

/// Why a model's translation is unusable, if it is.
pub fn check_model_output(source: &str, out: &str, to: &str) -> Result<(), String> {
    let out_t = out.trim();
    if out_t.is_empty() {
        return Err("empty output".into());
    }
    if out_t.eq_ignore_ascii_case(source.trim()) {
        return Err("output equals the input".into());
    }
    let ratio = out_t.len() as f64 / source.trim().len().max(1) as f64;
    if !(0.3..=3.0).contains(&ratio) {
        return Err(format!("output length ratio {ratio:.2} is implausible"));
    }
    let missing = missing_facts(source, out_t);
    if !missing.is_empty() {
        return Err(format!("facts lost or altered: {}", missing.join(", ")));
    }
    if let (Some(got), Ok((want, _, _))) = (detect(out_t), language(to))
        && STOPWORDS.iter().any(|(l, _)| *l == want)
        && got != want
    {
        return Err(format!("output reads as {got}, not {want}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_and_detection() {
        assert_eq!(language("ES").unwrap().1, "spa");
        assert_eq!(language("spanish").unwrap().0, "es");
        assert!(language("klingon").is_err());
        assert_eq!(detect("the enemy is at the bridge"), Some("en"));
        assert_eq!(
            detect("el enemigo está en el puente de la ciudad"),
            Some("es")
        );
        assert_eq!(detect("38SMB 1234"), None);
    }

    #[test]
    fn facts_must_survive_translation() {
        let src = "2 WIA at grid 38SMB 44840 12345 at 1530Z";
        assert!(
            missing_facts(
                src,
                "2 heridos en la cuadrícula 38SMB 44840 12345 a las 1530Z"
            )
            .is_empty()
        );
        assert_eq!(
            missing_facts(src, "3 heridos en 38SMB 44840 12345 a las 1530Z"),
            ["2"]
        );
        assert_eq!(
            check_model_output(src, "2 heridos en 38SMB 44840 12399 a las 1530Z", "es")
                .unwrap_err(),
            "facts lost or altered: 38SMB4484012345"
        );
        assert!(check_model_output("the bridge is down", "the bridge is down", "es").is_err());
    }
}
