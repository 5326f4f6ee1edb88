//! Quantized GGUF language models on candle: the Llama family (SmolLM2), Qwen2 and
//! Gemma 3, run by our own decoder ([`crate::decoder`]).
//!
//! The tokenizer is built from the GGUF metadata (`tokenizer.ggml.*`), so a model is one
//! file. The KV cache is bounded: a prompt and its generation never exceed
//! [`GenOptions::max_context`] tokens, and the prompt is cut from the front of the
//! user's content, never the instructions, when it would. Tokens stream to a callback
//! that can stop generation. Work runs on a private thread pool sized from the profile.

use crate::decoder::{Config, Decoder};
use crate::spm::SpmTokenizer;
use candle_core::Device;
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;
use thiserror::Error;
use tokenizers::Tokenizer;

#[derive(Debug, Error)]
pub enum LlmError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a usable GGUF model: {0}")]
    Format(String),
    #[error("unsupported architecture {0:?} (supported: llama, qwen2, gemma3)")]
    Arch(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference: {0}")]
    Inference(String),
    #[error("prompt of {0} tokens leaves no room in a context of {1}")]
    Context(usize, usize),
}

impl From<candle_core::Error> for LlmError {
    fn from(e: candle_core::Error) -> LlmError {
        LlmError::Inference(e.to_string())
    }
}

/// Positions a loaded model supports at most (RoPE tables, KV cache bound), whatever the
/// architecture declares: field hardware has no memory for 32k-token contexts.
pub const MAX_POSITIONS: usize = 8192;

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// Bound on prompt + generated tokens: the KV cache never holds more.
    pub max_context: usize,
    /// 0 for greedy (deterministic) decoding.
    pub temperature: f64,
    pub seed: u64,
    /// Penalty on tokens already generated (1.0 = none).
    pub repeat_penalty: f32,
}

impl Default for GenOptions {
    fn default() -> GenOptions {
        GenOptions {
            max_tokens: 256,
            max_context: 2048,
            temperature: 0.0,
            seed: 299_792_458,
            repeat_penalty: 1.1,
        }
    }
}

/// What a generation produced and what it cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generate_ms: f64,
    /// Stopped by the end-of-turn token (not by the token limit or the callback).
    pub finished: bool,
}

impl Generation {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prompt_ms / 1000.0).max(1e-9)
    }
    pub fn tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / (self.generate_ms / 1000.0).max(1e-9)
    }
}

/// A loaded model. Generation is serialised (one KV cache).
pub struct Llm {
    weights: Mutex<Decoder>,
    tokenizer: TextCodec,
    /// Prepended to every prompt when the file asks for it (Gemma).
    bos: Option<u32>,
    stop: Vec<u32>,
    arch: String,
    name: String,
    /// The architecture's own position limit.
    arch_context: usize,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

pub(crate) fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    use gguf_file::Value as V;
    match ct.metadata.get(key)? {
        V::U8(v) => Some(u32::from(*v)),
        V::U16(v) => Some(u32::from(*v)),
        V::U32(v) => Some(*v),
        V::I32(v) => u32::try_from(*v).ok(),
        V::U64(v) => u32::try_from(*v).ok(),
        V::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

pub(crate) fn meta_str<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a str> {
    ct.metadata.get(key)?.to_string().ok().map(String::as_str)
}

/// A model's tokenizer: byte-level BPE (`gpt2` vocabularies: Qwen2, SmolLM2) through the
/// `tokenizers` crate, or SentencePiece BPE (`llama` vocabularies: Gemma 3) of our own.
pub enum TextCodec {
    /// Behind a lock: encoding text whose special-token strings must stay text flips a
    /// setting of the tokenizer for the call.
    Bpe(Mutex<Tokenizer>),
    SentencePiece(SpmTokenizer),
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextCodec::Bpe(_) => f.write_str("TextCodec::Bpe"),
            TextCodec::SentencePiece(t) => write!(f, "TextCodec::SentencePiece({t:?})"),
        }
    }
}

impl TextCodec {
    /// Token ids of `text`; special tokens written in it (`<|im_start|>`) are parsed.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`, parsing the special tokens written in it only if `specials`:
    /// text from users and the field is encoded without, so that a message cannot close
    /// its turn and speak as the system.
    pub fn encode_with(&self, text: &str, specials: bool) -> Result<Vec<u32>, LlmError> {
        match self {
            TextCodec::Bpe(t) => {
                let mut t = t
                    .lock()
                    .map_err(|_| LlmError::Tokenizer("tokenizer lock poisoned".into()))?;
                t.set_encode_special_tokens(!specials);
                let ids = t.encode(text, false).map(|e| e.get_ids().to_vec());
                t.set_encode_special_tokens(false);
                ids.map_err(|e| LlmError::Tokenizer(e.to_string()))
            }
            TextCodec::SentencePiece(t) => Ok(t.encode(text, specials)),
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, LlmError> {
        match self {
            TextCodec::Bpe(t) => t
                .lock()
                .map_err(|_| LlmError::Tokenizer("tokenizer lock poisoned".into()))?
                .decode(ids, skip_special)
                .map_err(|e| LlmError::Tokenizer(e.to_string())),
            TextCodec::SentencePiece(t) => Ok(t.decode(ids, skip_special)),
        }
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        match self {
            TextCodec::Bpe(t) => t.lock().ok()?.token_to_id(piece),
            TextCodec::SentencePiece(t) => t.token_to_id(piece),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            TextCodec::Bpe(t) => t.lock().map_or(0, |t| t.get_vocab_size(true)),
            TextCodec::SentencePiece(t) => t.vocab_size(),
        }
    }
}

fn meta_array<'a>(
    ct: &'a gguf_file::Content,
    key: &str,
) -> Result<&'a [gguf_file::Value], LlmError> {
    match ct.metadata.get(key) {
        Some(gguf_file::Value::Array(v)) => Ok(v),
        _ => Err(LlmError::Tokenizer(format!("no array {key}"))),
    }
}

/// The tokenizer a GGUF file describes.
pub fn codec_from_gguf(ct: &gguf_file::Content) -> Result<TextCodec, LlmError> {
    if meta_str(ct, "tokenizer.ggml.model") != Some("llama") {
        return tokenizer_from_gguf(ct).map(|t| TextCodec::Bpe(Mutex::new(t)));
    }
    let bad = |what: &str| LlmError::Tokenizer(format!("tokenizer.ggml.{what}: wrong value type"));
    let pieces = meta_array(ct, "tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|_| bad("tokens")))
        .collect::<Result<Vec<_>, _>>()?;
    let scores = meta_array(ct, "tokenizer.ggml.scores")?
        .iter()
        .map(|v| v.to_f32().map_err(|_| bad("scores")))
        .collect::<Result<Vec<_>, _>>()?;
    let types = meta_array(ct, "tokenizer.ggml.token_type")?
        .iter()
        .map(|v| v.to_i32().map_err(|_| bad("token_type")))
        .collect::<Result<Vec<_>, _>>()?;
    let add_space_prefix = matches!(
        ct.metadata.get("tokenizer.ggml.add_space_prefix"),
        Some(gguf_file::Value::Bool(true))
    );
    let unk = meta_u32(ct, "tokenizer.ggml.unknown_token_id");
    SpmTokenizer::new(pieces, scores, types, unk, add_space_prefix)
        .map(TextCodec::SentencePiece)
        .map_err(|e| LlmError::Tokenizer(e.to_string()))
}

/// The byte-level BPE tokenizer a GGUF file describes, with the pre-tokenizer its
/// `tokenizer.ggml.pre` asks for (candle's default adds a prefix space SmolLM2 does not use).
fn tokenizer_from_gguf(ct: &gguf_file::Content) -> Result<Tokenizer, LlmError> {
    use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence};
    let mut tok = Tokenizer::from_gguf(ct).map_err(|e| LlmError::Tokenizer(e.to_string()))?;
    match meta_str(ct, "tokenizer.ggml.pre") {
        Some("qwen2" | "llama3" | "smaug-bpe" | "lfm2") => {}
        Some("smollm") => {
            tok.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        _ => {
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    Ok(tok)
}

impl Llm {
    /// Loads a GGUF file. `threads` sizes the private pool the model runs on.
    pub fn load(path: &Path, name: &str, threads: usize) -> Result<Llm, LlmError> {
        let io = |source| LlmError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        let ct = gguf_file::Content::read(&mut f).map_err(|e| LlmError::Format(e.to_string()))?;
        let arch = meta_str(&ct, "general.architecture")
            .ok_or_else(|| LlmError::Format("no general.architecture".into()))?
            .to_owned();
        let tokenizer = codec_from_gguf(&ct)?;
        let bos = match ct.metadata.get("tokenizer.ggml.add_bos_token") {
            Some(gguf_file::Value::Bool(true)) => meta_u32(&ct, "tokenizer.ggml.bos_token_id"),
            _ => None,
        };
        let mut stop = Vec::new();
        if let Some(eos) = meta_u32(&ct, "tokenizer.ggml.eos_token_id") {
            stop.push(eos);
        }
        for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = tokenizer.token_to_id(t)
                && !stop.contains(&id)
            {
                stop.push(id);
            }
        }
        if crate::decoder::Family::from_arch(&arch).is_none() {
            return Err(LlmError::Arch(arch));
        }
        let cfg = Config::read(&ct, &arch).map_err(|e| LlmError::Format(e.to_string()))?;
        let device = Device::Cpu;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("llm-{i}"))
            .build()
            .map_err(|e| LlmError::Inference(e.to_string()))?;
        let weights = pool.install(|| Decoder::load(&ct, cfg, &mut f, MAX_POSITIONS, &device))?;
        let arch_context = weights.positions();
        Ok(Llm {
            weights: Mutex::new(weights),
            tokenizer,
            bos,
            stop,
            arch,
            name: name.to_owned(),
            arch_context,
            pool,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn tokenizer(&self) -> &TextCodec {
        &self.tokenizer
    }

    /// Token ids of `text` (no BOS added; special tokens written in it are parsed).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.tokenizer.encode(text)
    }

    /// A conversation in the model's own turn format, ready for the assistant's turn, as
    /// pieces of text and whether each is the template's own (its special tokens parsed):
    /// ChatML (Qwen2, SmolLM2), or Gemma's turns (no system role: the instructions open
    /// the user's turn). The pieces split where the template's special tokens are, so
    /// encoding them one by one gives the ids of the whole text, unless the instructions
    /// or the user's text spell a special token, which then stays text.
    pub fn chat_pieces(&self, system: &str, user: &str) -> Vec<(String, bool)> {
        let t = |s: &str| (s.to_owned(), true);
        if self.arch == "gemma3" {
            vec![
                t("<start_of_turn>"),
                (format!("user\n{system}\n\n{user}"), false),
                t("<end_of_turn>\n<start_of_turn>model\n"),
            ]
        } else {
            vec![
                t("<|im_start|>"),
                (format!("system\n{system}"), false),
                t("<|im_end|>\n<|im_start|>"),
                (format!("user\n{user}"), false),
                t("<|im_end|>\n<|im_start|>assistant\n"),
            ]
        }
    }

    /// [`Llm::chat_pieces`] as one text (for display and raw prompts).
    pub fn chat(&self, system: &str, user: &str) -> String {
        self.chat_pieces(system, user)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// The token ids of [`Llm::chat_pieces`]: special tokens only where the template
    /// puts them.
    pub fn chat_ids(&self, system: &str, user: &str) -> Result<Vec<u32>, LlmError> {
        let mut ids = Vec::new();
        for (text, template) in self.chat_pieces(system, user) {
            ids.extend(self.tokenizer.encode_with(&text, template)?);
        }
        Ok(ids)
    }

    /// Generates from a raw prompt (special tokens written in it are parsed); `on_token`
    /// receives each new piece of text and returns `false` to stop.
    pub fn generate(
        &self,
        prompt: &str,
        opts: &GenOptions,
        on_token: impl FnMut(&str) -> bool + Send,
    ) -> Result<Generation, LlmError> {
        self.generate_ids(self.encode(prompt)?, opts, on_token)
    }

    /// Generates from prompt token ids (see [`Llm::chat_ids`]); a BOS is added when the
    /// model wants one.
    pub fn generate_ids(
        &self,
        mut ids: Vec<u32>,
        opts: &GenOptions,
        mut on_token: impl FnMut(&str) -> bool + Send,
    ) -> Result<Generation, LlmError> {
        if let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        let limit = opts.max_context.min(self.arch_context);
        if ids.len() + 1 >= limit {
            return Err(LlmError::Context(ids.len(), limit));
        }
        let max_new = opts.max_tokens.min(limit - ids.len());
        self.pool.install(|| {
            let mut weights = self
                .weights
                .lock()
                .map_err(|_| LlmError::Inference("a previous generation panicked".into()))?;
            weights.reset(ids.len() + max_new);
            let sampling = if opts.temperature <= 0.0 {
                Sampling::ArgMax
            } else {
                Sampling::All {
                    temperature: opts.temperature,
                }
            };
            let mut lp = LogitsProcessor::from_sampling(opts.seed, sampling);
            let started = Instant::now();
            let logits = weights.forward(&ids, 0)?;
            let mut next = lp.sample(&logits)?;
            let prompt_ms = started.elapsed().as_secs_f64() * 1e3;
            let gen_started = Instant::now();
            let mut out: Vec<u32> = Vec::new();
            let mut shown = 0usize;
            let mut finished = false;
            loop {
                if self.stop.contains(&next) {
                    finished = true;
                    break;
                }
                out.push(next);
                let text = self.tokenizer.decode(&out, true)?;
                // Emit only complete characters (a token can end inside a UTF-8 sequence).
                if text.len() > shown && !text.ends_with('\u{fffd}') {
                    let piece = text.get(shown..).unwrap_or("");
                    if !on_token(piece) {
                        break;
                    }
                    shown = text.len();
                }
                if out.len() >= max_new {
                    break;
                }
                let logits = weights.forward(&[next], ids.len() + out.len() - 1)?;
                let logits = if opts.repeat_penalty != 1.0 {
                    let start = out.len().saturating_sub(64);
                    candle_transformers::utils::apply_repeat_penalty(
                        &logits,
                        opts.repeat_penalty,
                        &out[start..],
                    )?
                } else {
                    logits
                };
                next = lp.sample(&logits)?;
            }
            let generate_ms = gen_started.elapsed().as_secs_f64() * 1e3;
            // Free the cache between requests: memory stays bounded by one context.
            weights.reset(0);
            let text = self.tokenizer.decode(&out, true)?;
            Ok(Generation {
                text,
                prompt_tokens: ids.len(),
                generated_tokens: out.len(),
                prompt_ms,
                generate_ms,
                finished,
            })
        })
    }
}

/// What a GGUF file declares, checked by building its tokenizer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufInfo {
    pub arch: String,
    pub name: Option<String>,
    pub tensors: usize,
    pub vocab: usize,
    pub context_length: Option<u32>,
    pub tokenizer_model: Option<String>,
    pub pre_tokenizer: Option<String>,
}

/// Reads a GGUF header and builds its tokenizer, without loading the weights.
pub fn inspect(path: &Path) -> Result<GgufInfo, LlmError> {
    let mut f =
        std::io::BufReader::new(std::fs::File::open(path).map_err(|source| LlmError::Io {
            path: path.display().to_string(),
            source,
        })?);
    let ct = gguf_file::Content::read(&mut f).map_err(|e| LlmError::Format(e.to_string()))?;
    let arch = meta_str(&ct, "general.architecture")
        .ok_or_else(|| LlmError::Format("no general.architecture".into()))?
        .to_owned();
    if crate::decoder::Family::from_arch(&arch).is_none() {
        return Err(LlmError::Arch(arch));
    }
    let tok = codec_from_gguf(&ct)?;
    Ok(GgufInfo {
        name: meta_str(&ct, "general.name").map(str::to_owned),
        tensors: ct.tensor_infos.len(),
        vocab: tok.vocab_size(),
        context_length: meta_u32(&ct, &format!("{arch}.context_length")),
        tokenizer_model: meta_str(&ct, "tokenizer.ggml.model").map(str::to_owned),
        pre_tokenizer: meta_str(&ct, "tokenizer.ggml.pre").map(str::to_owned),
        arch,
    })
}
