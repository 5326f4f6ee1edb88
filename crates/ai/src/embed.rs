//! Sentence embeddings (all-MiniLM-L6-v2 on candle's BERT): mean pooling over real
//! tokens, then L2 normalisation, so the dot product is the cosine similarity.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use thiserror::Error;
use tokenizers::Tokenizer;

#[derive(Debug, Error)]
pub enum EmbedError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Longest input in tokens; longer texts are truncated (MiniLM was trained on 256).
pub const MAX_TOKENS: usize = 256;

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    dim: usize,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|source| EmbedError::Io {
        path: path.display().to_string(),
        source,
    })
}

impl Embedder {
    /// Checks that `config.json` describes a BERT model candle can load.
    pub fn check_config(path: &Path) -> Result<usize, EmbedError> {
        let bytes = read(path)?;
        let config = |e: serde_json::Error| EmbedError::Config(e.to_string());
        // candle's `Config` must accept it; its fields are private, so the width is read
        // from the JSON itself.
        serde_json::from_slice::<Config>(&bytes).map_err(config)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(config)?;
        v.get("hidden_size")
            .and_then(serde_json::Value::as_u64)
            .map(|d| d as usize)
            .ok_or_else(|| EmbedError::Config("no hidden_size".into()))
    }

    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, threads: usize) -> Result<Embedder, EmbedError> {
        let dim = Self::check_config(&dir.join("config.json"))?;
        let cfg: Config = serde_json::from_slice(&read(&dir.join("config.json"))?)
            .map_err(|e| EmbedError::Config(e.to_string()))?;
        let mut tokenizer = Tokenizer::from_bytes(read(&dir.join("tokenizer.json"))?)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // The file pads every input to 128 tokens; pad per batch instead and mask.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let weights = read(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
        let model = BertModel::load(vb, &cfg)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("embed-{i}"))
            .build()
            .map_err(|e| EmbedError::Config(e.to_string()))?;
        Ok(Embedder {
            model,
            tokenizer,
            dim,
            pool,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Unit-length embeddings of `texts`, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        // Batches of similar cost; padding is masked out of the mean.
        for batch in texts.chunks(32) {
            let encs = self
                .tokenizer
                .encode_batch(batch.to_vec(), true)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
            let len = encs
                .iter()
                .map(|e| e.get_ids().len())
                .max()
                .unwrap_or(1)
                .max(1);
            let mut ids = Vec::with_capacity(batch.len() * len);
            let mut mask = Vec::with_capacity(batch.len() * len);
            for e in &encs {
                let n = e.get_ids().len();
                ids.extend_from_slice(e.get_ids());
                ids.extend(std::iter::repeat_n(0u32, len - n));
                mask.extend(std::iter::repeat_n(1u32, n));
                mask.extend(std::iter::repeat_n(0u32, len - n));
            }
            let vecs = self.pool.install(|| -> Result<Vec<Vec<f32>>, EmbedError> {
                let dev = Device::Cpu;
                let ids = Tensor::from_vec(ids, (batch.len(), len), &dev)?;
                let mask = Tensor::from_vec(mask, (batch.len(), len), &dev)?;
                let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?.clamp(1.0, f64::MAX)?;
                let mean = summed.broadcast_div(&counts)?;
                let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
                Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
            })?;
            out.extend(vecs);
        }
        Ok(out)
    }
}

/// Dot product of two unit vectors: their cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
