//! One quantized decoder-only transformer for the three GGUF families we run: Llama
//! (SmolLM2), Qwen2 and Gemma 3.
//!
//! Written here rather than taken from `candle-transformers` for four reasons, each
//! measured or documented in MODELS.md:
//!
//! * candle's CPU kernels have SIMD paths for Q4_0, Q8_0 and the K-quants only. GGUF files
//!   whose rows are not a multiple of 256 (Qwen2.5-0.5B's 896, SmolLM2's 576, Gemma 3
//!   270M's 640) fall back to Q4_1 / Q5_0 / Q5_1, which candle multiplies with scalar
//!   code (85% of generation time in a profile). Those, and Q8_0, are multiplied by our
//!   own kernels ([`crate::qmm`]) in the format the file stores.
//! * The token embedding stays quantized and is looked up row by row (and is the output
//!   projection when tied); candle's models dequantize it to f32 (545 MB for Qwen2.5's
//!   151,936-token vocabulary).
//! * Gemma 3 needs GELU (tanh) in its MLP, per-head Q/K norms, sandwich norms, scaled
//!   embeddings, and sliding-window layers with their own RoPE base; candle 0.11.1's
//!   `quantized_gemma3` uses SiLU and builds a rotary table per layer.
//! * One bounded, preallocated KV cache per layer instead of concatenating every step.

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{Device, IndexOp, Module, Result, Tensor, bail};
use std::sync::Arc;

use crate::qmm::{Format, QMatrix, matvec_many};

/// The architectures this decoder runs, with what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Llama,
    Qwen2,
    Gemma3,
}

impl Family {
    pub(crate) fn from_arch(arch: &str) -> Option<Family> {
        match arch {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "gemma3" => Some(Family::Gemma3),
            _ => None,
        }
    }
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub family: Family,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub rope_base: f32,
    /// Gemma 3's sliding-window layers use their own base.
    pub rope_base_local: f32,
    /// Linear RoPE scaling of the global layers (Gemma 3 4B and larger).
    pub rope_scale: f32,
    /// Sliding window of the local layers (Gemma 3), in tokens.
    pub window: Option<usize>,
    pub context: usize,
}

impl Config {
    /// Whether layer `i` attends only within the sliding window (Gemma 3: five local
    /// layers, then one global).
    fn is_local(&self, i: usize) -> bool {
        self.window.is_some() && !(i + 1).is_multiple_of(6)
    }
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    match crate::llm::meta_u32(ct, key) {
        Some(v) => Ok(v as usize),
        None => bail!("GGUF metadata has no integer {key}"),
    }
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

impl Config {
    pub(crate) fn read(ct: &gguf_file::Content, arch: &str) -> Result<Config> {
        let Some(family) = Family::from_arch(arch) else {
            bail!("unsupported architecture {arch}")
        };
        let hidden = md_u32(ct, &format!("{arch}.embedding_length"))?;
        let heads = md_u32(ct, &format!("{arch}.attention.head_count"))?;
        let kv_heads = md_u32(ct, &format!("{arch}.attention.head_count_kv")).unwrap_or(heads);
        if heads == 0 {
            bail!("GGUF metadata: zero attention heads")
        }
        let head_dim =
            md_u32(ct, &format!("{arch}.attention.key_length")).unwrap_or_else(|_| hidden / heads);
        if kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
        {
            bail!(
                "inconsistent attention shape: {heads} heads, {kv_heads} kv heads, head dim {head_dim}"
            )
        }
        // Sizes below (layers, RoPE tables) come from metadata: check them against the
        // tensors the file actually holds before allocating anything by them.
        let layers = md_u32(ct, &format!("{arch}.block_count"))?;
        let q_rows = ct
            .tensor_infos
            .get("blk.0.attn_q.weight")
            .map(|t| t.shape.dims().to_vec());
        if q_rows.as_deref() != Some(&[heads * head_dim, hidden][..]) {
            bail!(
                "blk.0.attn_q.weight is {q_rows:?}, metadata says {heads} heads x {head_dim} by {hidden}"
            )
        }
        if layers == 0
            || !ct
                .tensor_infos
                .contains_key(&format!("blk.{}.ffn_down.weight", layers - 1))
        {
            bail!("metadata says {layers} blocks; the file does not hold them")
        }
        let window = match family {
            Family::Gemma3 => Some(
                md_u32(ct, &format!("{arch}.attention.sliding_window"))
                    .unwrap_or(512)
                    .max(1),
            ),
            _ => None,
        };
        Ok(Config {
            family,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            eps: md_f32(ct, &format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6)
                as f64,
            rope_base: md_f32(ct, &format!("{arch}.rope.freq_base")).unwrap_or(match family {
                Family::Gemma3 => 1_000_000.0,
                _ => 10_000.0,
            }),
            rope_base_local: 10_000.0,
            rope_scale: md_f32(ct, &format!("{arch}.rope.scaling.factor"))
                .filter(|f| *f > 0.0)
                .unwrap_or(1.0),
            window,
            context: md_u32(ct, &format!("{arch}.context_length")).unwrap_or(2048),
        })
    }
}

/// A weight matrix: ours ([`QMatrix`]) for the block formats we multiply as stored,
/// candle's for the K-quants (which candle has in SIMD) and anything else.
#[derive(Debug, Clone)]
enum Linear {
    Ours(Arc<QMatrix>),
    Candle(QMatMul),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(w) => w.forward(x),
            Linear::Ours(w) => {
                let mut dims = x.dims().to_vec();
                let (n, k) = w.dims();
                if dims.last() != Some(&k) {
                    bail!("activations {dims:?} do not end in {k}")
                }
                let m = x.elem_count() / k;
                let out = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m);
                *dims.last_mut().expect("checked") = n;
                Tensor::from_vec(out, dims, x.device())
            }
        }
    }

    /// Output rows, input width.
    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Linear::Ours(w) => Ok(w.dims()),
            Linear::Candle(QMatMul::QTensor(t)) => t.shape().dims2(),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.shape().dims2(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Linear::Ours(w) => w.bytes(),
            Linear::Candle(QMatMul::QTensor(t)) => t.storage_size_in_bytes(),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        }
    }
}

/// Matrices of one width, each times the single row `x` (a generated token): ours in one
/// pass over the thread pool with the activations quantized once, candle's one by one.
fn project<const N: usize>(ws: [&Linear; N], x: &[f32], dev: &Device) -> Result<[Vec<f32>; N]> {
    let mut ours = Vec::with_capacity(N);
    for w in ws {
        if let Linear::Ours(m) = w {
            let (_, k) = m.dims();
            if k != x.len() {
                bail!("activations of {} values for a matrix {k} wide", x.len())
            }
            ours.push(&**m);
        }
    }
    let mut fused = matvec_many(&ours, x).into_iter();
    let mut out = Vec::with_capacity(N);
    for w in ws {
        out.push(match w {
            Linear::Ours(_) => fused.next().expect("one output per matrix"),
            Linear::Candle(m) => m
                .forward(&Tensor::from_slice(x, (1, x.len()), dev)?)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        });
    }
    Ok(out.try_into().expect("N outputs"))
}

/// A vector weight (norm, bias): a tensor for prompts, its values for single steps.
#[derive(Debug, Clone)]
struct Vector {
    t: Tensor,
    v: Vec<f32>,
}

/// RMS norm of one row, as candle's `rms_norm` computes it.
fn rms_row(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let m = (sum2 / x.len() as f32 + eps as f32).sqrt();
    x.iter().zip(w).map(|(v, w)| v / m * w).collect()
}

fn add_to(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// The MLP's gate: `gate` becomes `act(gate) * up`, with SiLU, or for Gemma 3 GELU in
/// its tanh form written as `x * sigmoid(2z)` (the same function; one `exp` instead of
/// `tanh`, which cost 10% of a prompt). Long rows are split over the thread pool.
fn gated(family: Family, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    let apply = |g: &mut [f32], u: &[f32]| match family {
        Family::Gemma3 => {
            for (g, u) in g.iter_mut().zip(u) {
                // 2 * sqrt(2 / pi) * (x + 0.044715 x^3)
                let z2 = 1.595_769 * *g * (1.0 + 0.044_715 * *g * *g);
                *g = *g / (1.0 + (-z2).exp()) * u;
            }
        }
        _ => {
            for (g, u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
    };
    const PER_TASK: usize = 8192;
    if gate.len() <= PER_TASK {
        apply(gate, up);
        return;
    }
    let chunks: Vec<std::sync::Mutex<(&mut [f32], &[f32])>> = gate
        .chunks_mut(PER_TASK)
        .zip(up.chunks(PER_TASK))
        .map(std::sync::Mutex::new)
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(chunks.len(), |range| {
        for c in &chunks[range] {
            let mut c = c.lock().expect("one task per chunk");
            let (g, u) = &mut *c;
            apply(g, u);
        }
    });
}

/// The dot product of two rows, eight lanes at a time (the compiler vectorizes it).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The token embedding, looked up row by row in its stored format.
enum Embed {
    Ours(Arc<QMatrix>),
    Candle(Arc<QTensor>),
}

impl Embed {
    fn lookup(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        match self {
            Embed::Candle(t) => t.embedding(&Tensor::new(ids, dev)?),
            Embed::Ours(m) => {
                let (vocab, hidden) = m.dims();
                let mut out = vec![0f32; ids.len() * hidden];
                for (id, row) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
                    let id = *id as usize;
                    if id >= vocab {
                        bail!("token id {id} is outside the vocabulary of {vocab}")
                    }
                    m.dequantize_row(id, row);
                }
                Tensor::from_vec(out, (ids.len(), hidden), dev)
            }
        }
    }
}

/// What loading did to the file's tensors, for `bench` and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub tensors: usize,
    /// Weight matrices multiplied by our kernels, in their stored format.
    pub ours: usize,
    /// Bytes of weights held in memory.
    pub weight_bytes: usize,
}

struct Loader<'a, R> {
    ct: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
    report: LoadReport,
}

impl<R: std::io::Read + std::io::Seek> Loader<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    /// A tensor as the file stores it.
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        let t = self.ct.tensor(self.reader, name, self.device)?;
        self.report.tensors += 1;
        Ok(t)
    }

    /// A matrix in one of our formats, read straight from the file into the buffer our
    /// kernels use (candle's reader holds two copies at its peak); `None` for others.
    fn ours(&mut self, name: &str) -> Result<Option<QMatrix>> {
        let Some(info) = self.ct.tensor_infos.get(name) else {
            bail!("the file has no tensor {name}")
        };
        let Some(format) = Format::of(info.ggml_dtype) else {
            return Ok(None);
        };
        let (n, k) = info.shape.dims2()?;
        let size = (n.checked_mul(k))
            .filter(|_| k.is_multiple_of(32))
            .map(|nk| nk / 32 * format.block_bytes());
        let Some(size) = size else {
            bail!("{name}: {n}x{k} is not a whole number of {format:?} blocks")
        };
        let start = self.ct.tensor_data_offset.saturating_add(info.offset);
        let end = self.reader.seek(std::io::SeekFrom::End(0))?;
        if (size as u64) > end.saturating_sub(start) {
            bail!("{name}: needs {size} bytes at offset {start}, the file ends at {end}")
        }
        let mut data = vec![0u8; size];
        self.reader.seek(std::io::SeekFrom::Start(start))?;
        self.reader.read_exact(&mut data)?;
        self.report.tensors += 1;
        self.report.ours += 1;
        self.report.weight_bytes += size;
        Ok(Some(QMatrix::new(format, n, k, data)?))
    }

    /// A weight matrix: ours when its format is, else candle's.
    fn matmul(&mut self, name: &str) -> Result<Linear> {
        if let Some(m) = self.ours(name)? {
            return Ok(Linear::Ours(Arc::new(m)));
        }
        let l = Linear::Candle(QMatMul::from_qtensor(self.qtensor(name)?)?);
        self.report.weight_bytes += l.bytes();
        Ok(l)
    }

    /// A vector (norm weight, bias) as f32.
    fn vector(&mut self, name: &str) -> Result<Vector> {
        let t = self.ct.tensor(self.reader, name, self.device)?;
        self.report.tensors += 1;
        let t = t.dequantize(self.device)?;
        self.report.weight_bytes += t.elem_count() * 4 * 2;
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(Vector { t, v })
    }

    fn optional_vector(&mut self, name: &str) -> Result<Option<Vector>> {
        if self.has(name) {
            self.vector(name).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// RoPE tables (cos, sin), one row per position.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables as values, `half` per position, for single steps.
    cos_v: Vec<f32>,
    sin_v: Vec<f32>,
    half: usize,
}

impl Rope {
    fn new(head_dim: usize, base: f32, scale: f32, positions: usize, dev: &Device) -> Result<Rope> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (base.powf(2.0 * i as f32 / head_dim as f32) * scale))
            .collect();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(inv.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (positions, half), dev)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        Ok(Rope {
            cos_v: cos.flatten_all()?.to_vec1()?,
            sin_v: sin.flatten_all()?.to_vec1()?,
            cos,
            sin,
            half,
        })
    }

    /// Rotates each head of one position's row (`heads` x `head_dim`) in place, as
    /// candle's `rope` (halves) or `rope_i` (interleaved pairs) would.
    fn apply_row(&self, x: &mut [f32], pos: usize, interleaved: bool) -> Result<()> {
        let half = self.half;
        let Some(cos) = self.cos_v.get(pos * half..(pos + 1) * half) else {
            bail!("position {pos} is beyond the RoPE table")
        };
        let sin = &self.sin_v[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(2 * half) {
            for i in 0..half {
                let (i1, i2) = if interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (a, b) = (head[i1], head[i2]);
                head[i1] = a * cos[i] - b * sin[i];
                head[i2] = a * sin[i] + b * cos[i];
            }
        }
        Ok(())
    }

    fn apply(&self, x: &Tensor, pos: usize, interleaved: bool) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        if interleaved {
            candle_nn::rotary_emb::rope_i(x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(x, &cos, &sin)
        }
    }
}

/// Keys and values of one layer, `heads` x `capacity` x `head_dim` each: allocated on
/// first use, never more than `capacity` positions.
#[derive(Debug)]
struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    heads: usize,
    dim: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    fn new(heads: usize, dim: usize, capacity: usize) -> KvCache {
        KvCache {
            k: Vec::new(),
            v: Vec::new(),
            heads,
            dim,
            len: 0,
            capacity,
        }
    }

    /// Empties the cache and bounds it anew; memory is taken on the first append.
    fn reset(&mut self, capacity: usize) {
        self.k = Vec::new();
        self.v = Vec::new();
        self.len = 0;
        self.capacity = capacity;
    }

    /// Makes room for `seq` more positions.
    fn reserve(&mut self, seq: usize) -> Result<()> {
        if self.len + seq > self.capacity {
            bail!(
                "KV cache full: {} + {seq} positions exceed its bound of {}",
                self.len,
                self.capacity
            )
        }
        if self.k.is_empty() {
            let n = self.heads * self.capacity * self.dim;
            self.k = vec![0f32; n];
            self.v = vec![0f32; n];
        }
        Ok(())
    }

    /// Position `p` of head `h`.
    fn at(&self, h: usize, p: usize) -> std::ops::Range<usize> {
        let start = (h * self.capacity + p) * self.dim;
        start..start + self.dim
    }

    /// Appends (1, heads, seq, head_dim) keys and values; returns all held so far in
    /// that shape.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, seq, d) = k.dims4()?;
        if b != 1 || h != self.heads || d != self.dim || v.dims4()? != (b, h, seq, d) {
            bail!(
                "keys {:?} and values {:?} do not fit this cache",
                k.dims(),
                v.dims()
            )
        }
        self.reserve(seq)?;
        let (kv, vv) = (
            k.flatten_all()?.to_vec1::<f32>()?,
            v.flatten_all()?.to_vec1::<f32>()?,
        );
        for head in 0..h {
            for s in 0..seq {
                let src = (head * seq + s) * d..(head * seq + s + 1) * d;
                let dst = self.at(head, self.len + s);
                self.k[dst.clone()].copy_from_slice(&kv[src.clone()]);
                self.v[dst].copy_from_slice(&vv[src]);
            }
        }
        self.len += seq;
        let held = |c: &[f32]| -> Result<Tensor> {
            let mut out = Vec::with_capacity(h * self.len * d);
            for head in 0..h {
                out.extend_from_slice(&c[self.at(head, 0).start..self.at(head, self.len).start]);
            }
            Tensor::from_vec(out, (1, h, self.len, d), k.device())
        };
        Ok((held(&self.k)?, held(&self.v)?))
    }

    /// Appends one position's keys and values (`heads` x `head_dim` each).
    fn push(&mut self, k: &[f32], v: &[f32]) -> Result<()> {
        self.reserve(1)?;
        for head in 0..self.heads {
            let dst = self.at(head, self.len);
            let src = head * self.dim..(head + 1) * self.dim;
            self.k[dst.clone()].copy_from_slice(&k[src.clone()]);
            self.v[dst].copy_from_slice(&v[src]);
        }
        self.len += 1;
        Ok(())
    }
}

struct Layer {
    attn_norm: Vector,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    bq: Option<Vector>,
    bk: Option<Vector>,
    bv: Option<Vector>,
    q_norm: Option<Vector>,
    k_norm: Option<Vector>,
    wo: Linear,
    post_attn_norm: Option<Vector>,
    ffn_norm: Vector,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vector>,
    local: bool,
    cache: KvCache,
}

/// A loaded model with its KV cache.
pub(crate) struct Decoder {
    cfg: Config,
    embed: Embed,
    embed_scale: Option<f64>,
    layers: Vec<Layer>,
    norm: Vector,
    output: Linear,
    rope: Rope,
    rope_local: Option<Rope>,
    positions: usize,
    pub(crate) report: LoadReport,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("cfg", &self.cfg)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// Loads the weights; `positions` bounds the KV cache and the RoPE tables.
    pub(crate) fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        cfg: Config,
        reader: &mut R,
        positions: usize,
        device: &Device,
    ) -> Result<Decoder> {
        let positions = positions.min(cfg.context).max(1);
        let mut l = Loader {
            ct,
            reader,
            device,
            report: LoadReport::default(),
        };
        // Tied output projection: the same bytes as the lookup table.
        let (embed, tied) = match l.ours("token_embd.weight")? {
            Some(m) => {
                let m = Arc::new(m);
                (Embed::Ours(m.clone()), Linear::Ours(m))
            }
            None => {
                let t = Arc::new(l.qtensor("token_embd.weight")?);
                l.report.weight_bytes += t.storage_size_in_bytes();
                (
                    Embed::Candle(t.clone()),
                    Linear::Candle(QMatMul::from_arc(t)?),
                )
            }
        };
        let (vocab, hidden) = match &embed {
            Embed::Ours(m) => m.dims(),
            Embed::Candle(t) => t.shape().dims2()?,
        };
        if hidden != cfg.hidden {
            bail!(
                "token_embd is {vocab}x{hidden}, metadata says hidden {}",
                cfg.hidden
            )
        }
        let output = if l.has("output.weight") {
            l.matmul("output.weight")?
        } else {
            tied
        };
        let norm = l.vector("output_norm.weight")?;
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: l.vector(&format!("{p}.attn_norm.weight"))?,
                wq: l.matmul(&format!("{p}.attn_q.weight"))?,
                wk: l.matmul(&format!("{p}.attn_k.weight"))?,
                wv: l.matmul(&format!("{p}.attn_v.weight"))?,
                bq: l.optional_vector(&format!("{p}.attn_q.bias"))?,
                bk: l.optional_vector(&format!("{p}.attn_k.bias"))?,
                bv: l.optional_vector(&format!("{p}.attn_v.bias"))?,
                q_norm: l.optional_vector(&format!("{p}.attn_q_norm.weight"))?,
                k_norm: l.optional_vector(&format!("{p}.attn_k_norm.weight"))?,
                wo: l.matmul(&format!("{p}.attn_output.weight"))?,
                post_attn_norm: l.optional_vector(&format!("{p}.post_attention_norm.weight"))?,
                ffn_norm: l.vector(&format!("{p}.ffn_norm.weight"))?,
                gate: l.matmul(&format!("{p}.ffn_gate.weight"))?,
                up: l.matmul(&format!("{p}.ffn_up.weight"))?,
                down: l.matmul(&format!("{p}.ffn_down.weight"))?,
                post_ffn_norm: l.optional_vector(&format!("{p}.post_ffw_norm.weight"))?,
                local: cfg.is_local(i),
                cache: KvCache::new(cfg.kv_heads, cfg.head_dim, 0),
            });
        }
        let (rope, rope_local, embed_scale) = match cfg.family {
            Family::Gemma3 => (
                Rope::new(
                    cfg.head_dim,
                    cfg.rope_base,
                    cfg.rope_scale,
                    positions,
                    device,
                )?,
                Some(Rope::new(
                    cfg.head_dim,
                    cfg.rope_base_local,
                    1.0,
                    positions,
                    device,
                )?),
                Some((cfg.hidden as f64).sqrt()),
            ),
            _ => (
                Rope::new(cfg.head_dim, cfg.rope_base, 1.0, positions, device)?,
                None,
                None,
            ),
        };
        for (i, layer) in layers.iter().enumerate() {
            layer
                .check(&cfg)
                .map_err(|e| candle_core::Error::Msg(format!("blk.{i}: {e}")))?;
        }
        if norm.v.len() != cfg.hidden {
            bail!(
                "output_norm has {} values for hidden {}",
                norm.v.len(),
                cfg.hidden
            )
        }
        let report = l.report;
        Ok(Decoder {
            cfg,
            embed,
            embed_scale,
            layers,
            norm,
            output,
            rope,
            rope_local,
            positions,
            report,
        })
    }

    /// Positions the KV cache holds at most.
    pub(crate) fn positions(&self) -> usize {
        self.positions
    }

    /// Empties the KV cache and bounds the next sequence to `capacity` positions (at
    /// most [`Decoder::positions`]). Capacity 0 frees the cache.
    pub(crate) fn reset(&mut self, capacity: usize) {
        let capacity = capacity.min(self.positions);
        for layer in &mut self.layers {
            layer.cache.reset(capacity);
        }
    }

    /// Runs `ids` (one sequence) starting at position `pos`; returns the logits of the
    /// last position, shape (vocab,).
    pub(crate) fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        let seq = ids.len();
        if seq == 0 {
            bail!("no tokens to run")
        }
        let dev = self.norm.t.device().clone();
        if let [id] = ids {
            return self.step(*id, pos, &dev);
        }
        let mut x = self.embed.lookup(ids, &dev)?.unsqueeze(0)?;
        if let Some(s) = self.embed_scale {
            x = (x * s)?;
        }
        let masks = Masks::new(seq, pos, self.cfg.window, &dev)?;
        for layer in &mut self.layers {
            let rope = match (&self.rope_local, layer.local) {
                (Some(r), true) => r,
                _ => &self.rope,
            };
            x = layer.forward(&x, pos, &self.cfg, rope, &masks)?;
        }
        let last = x.i((.., seq - 1..seq, ..))?;
        let last = rms(&last, &self.norm, self.cfg.eps)?;
        self.output.forward(&last)?.flatten_all()
    }

    /// One token at position `pos` (generation), on plain rows: the same arithmetic as
    /// [`Decoder::forward`] without a tensor operation per step of it, which at these
    /// widths cost more than the arithmetic.
    fn step(&mut self, id: u32, pos: usize, dev: &Device) -> Result<Tensor> {
        let mut x = self
            .embed
            .lookup(&[id], dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if let Some(s) = self.embed_scale {
            let s = s as f32;
            x.iter_mut().for_each(|v| *v *= s);
        }
        for layer in &mut self.layers {
            let rope = match (&self.rope_local, layer.local) {
                (Some(r), true) => r,
                _ => &self.rope,
            };
            layer.step(&mut x, pos, &self.cfg, rope, dev)?;
        }
        let h = rms_row(&x, &self.norm.v, self.cfg.eps);
        let [logits] = project([&self.output], &h, dev)?;
        let n = logits.len();
        Tensor::from_vec(logits, n, dev)
    }
}

/// Attention masks for one forward call: causal, and causal within the window.
struct Masks {
    causal: Option<Tensor>,
    local: Option<Tensor>,
}

impl Masks {
    fn new(seq: usize, pos: usize, window: Option<usize>, dev: &Device) -> Result<Masks> {
        let kv = pos + seq;
        let build = |win: Option<usize>| -> Result<Tensor> {
            let mut m = Vec::with_capacity(seq * kv);
            for i in 0..seq {
                let q = pos + i;
                for k in 0..kv {
                    let visible = k <= q && win.is_none_or(|w| q - k < w);
                    m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
            Tensor::from_vec(m, (seq, kv), dev)
        };
        let causal = if seq > 1 { Some(build(None)?) } else { None };
        // A single query needs a window mask only once the cache is longer than the window.
        let local = match window {
            Some(w) if seq > 1 || kv > w => Some(build(Some(w))?),
            _ => None,
        };
        Ok(Masks { causal, local })
    }
}

fn rms(x: &Tensor, w: &Vector, eps: f64) -> Result<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, &w.t, eps as f32)
}

impl Layer {
    /// Every weight's shape against the configuration, so that neither path meets a
    /// mismatch mid-sequence (the single-token path works on plain rows and would
    /// otherwise truncate or panic where the tensor path fails).
    fn check(&self, cfg: &Config) -> Result<()> {
        let (h, q, kv) = (
            cfg.hidden,
            cfg.heads * cfg.head_dim,
            cfg.kv_heads * cfg.head_dim,
        );
        let vectors = [
            ("attn_norm", Some(&self.attn_norm), h),
            ("ffn_norm", Some(&self.ffn_norm), h),
            ("post_attention_norm", self.post_attn_norm.as_ref(), h),
            ("post_ffw_norm", self.post_ffn_norm.as_ref(), h),
            ("attn_q_norm", self.q_norm.as_ref(), cfg.head_dim),
            ("attn_k_norm", self.k_norm.as_ref(), cfg.head_dim),
            ("attn_q.bias", self.bq.as_ref(), q),
            ("attn_k.bias", self.bk.as_ref(), kv),
            ("attn_v.bias", self.bv.as_ref(), kv),
        ];
        for (name, v, want) in vectors {
            if let Some(v) = v
                && v.v.len() != want
            {
                bail!("{name} has {} values, expected {want}", v.v.len())
            }
        }
        let ffn = self.gate.dims()?.0;
        let matrices = [
            ("attn_q", &self.wq, (q, h)),
            ("attn_k", &self.wk, (kv, h)),
            ("attn_v", &self.wv, (kv, h)),
            ("attn_output", &self.wo, (h, q)),
            ("ffn_gate", &self.gate, (ffn, h)),
            ("ffn_up", &self.up, (ffn, h)),
            ("ffn_down", &self.down, (h, ffn)),
        ];
        for (name, m, want) in matrices {
            let got = m.dims()?;
            if got != want {
                bail!(
                    "{name} is {}x{}, expected {}x{}",
                    got.0,
                    got.1,
                    want.0,
                    want.1
                )
            }
        }
        Ok(())
    }

    fn forward(
        &mut self,
        x: &Tensor,
        pos: usize,
        cfg: &Config,
        rope: &Rope,
        masks: &Masks,
    ) -> Result<Tensor> {
        let (b, seq, _) = x.dims3()?;
        let h = rms(x, &self.attn_norm, cfg.eps)?;
        let mut q = self.wq.forward(&h)?;
        let mut k = self.wk.forward(&h)?;
        let mut v = self.wv.forward(&h)?;
        if let Some(bq) = &self.bq {
            q = q.broadcast_add(&bq.t)?;
        }
        if let Some(bk) = &self.bk {
            k = k.broadcast_add(&bk.t)?;
        }
        if let Some(bv) = &self.bv {
            v = v.broadcast_add(&bv.t)?;
        }
        let d = cfg.head_dim;
        let mut q = q.reshape((b, seq, cfg.heads, d))?;
        let mut k = k.reshape((b, seq, cfg.kv_heads, d))?;
        let v = v.reshape((b, seq, cfg.kv_heads, d))?;
        if let Some(w) = &self.q_norm {
            q = rms(&q, w, cfg.eps)?;
        }
        if let Some(w) = &self.k_norm {
            k = rms(&k, w, cfg.eps)?;
        }
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let interleaved = cfg.family == Family::Llama;
        let q = rope.apply(&q, pos, interleaved)?;
        let k = rope.apply(&k, pos, interleaved)?;
        let (k, v) = self.cache.append(&k, &v)?;
        let kv_len = k.dim(2)?;

        // Grouped-query attention without copying keys per head: the query heads that
        // share a KV head are stacked along the sequence axis.
        let groups = cfg.heads / cfg.kv_heads;
        let q = q.reshape((b, cfg.kv_heads, groups * seq, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let mask = if self.local {
            masks.local.as_ref()
        } else {
            masks.causal.as_ref()
        };
        let att = match mask {
            Some(m) => att
                .reshape((b, cfg.kv_heads, groups, seq, kv_len))?
                .broadcast_add(m)?
                .reshape((b, cfg.kv_heads, groups * seq, kv_len))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // (b, kv_heads, groups * seq, d)
        let y = y
            .reshape((b, cfg.heads, seq, d))?
            .transpose(1, 2)?
            .reshape((b, seq, cfg.heads * d))?;
        let mut y = self.wo.forward(&y)?;
        if let Some(w) = &self.post_attn_norm {
            y = rms(&y, w, cfg.eps)?;
        }
        let x = (x + y)?;

        let h = rms(&x, &self.ffn_norm, cfg.eps)?;
        let gate = self.gate.forward(&h)?;
        let up = self.up.forward(&h)?;
        let mut act = gate.flatten_all()?.to_vec1::<f32>()?;
        gated(cfg.family, &mut act, &up.flatten_all()?.to_vec1::<f32>()?);
        let act = Tensor::from_vec(act, gate.shape(), gate.device())?;
        let mut y = self.down.forward(&act)?;
        if let Some(w) = &self.post_ffn_norm {
            y = rms(&y, w, cfg.eps)?;
        }
        x + y
    }

    /// [`Layer::forward`] for one position's row `x`, updated in place.
    fn step(
        &mut self,
        x: &mut [f32],
        pos: usize,
        cfg: &Config,
        rope: &Rope,
        dev: &Device,
    ) -> Result<()> {
        let (d, eps) = (cfg.head_dim, cfg.eps);
        if pos != self.cache.len {
            bail!(
                "position {pos} does not follow the {} cached",
                self.cache.len
            )
        }
        let h = rms_row(x, &self.attn_norm.v, eps);
        let [mut q, mut k, mut v] = project([&self.wq, &self.wk, &self.wv], &h, dev)?;
        for (y, b) in [(&mut q, &self.bq), (&mut k, &self.bk), (&mut v, &self.bv)] {
            if let Some(b) = b {
                add_to(y, &b.v);
            }
        }
        if q.len() != cfg.heads * d || k.len() != cfg.kv_heads * d || v.len() != k.len() {
            bail!("Q, K, V of {}, {}, {} values", q.len(), k.len(), v.len())
        }
        for (y, w) in [(&mut q, &self.q_norm), (&mut k, &self.k_norm)] {
            if let Some(w) = w {
                for head in y.chunks_exact_mut(d) {
                    let n = rms_row(head, &w.v, eps);
                    head.copy_from_slice(&n);
                }
            }
        }
        let interleaved = cfg.family == Family::Llama;
        rope.apply_row(&mut q, pos, interleaved)?;
        rope.apply_row(&mut k, pos, interleaved)?;
        self.cache.push(&k, &v)?;

        // Each query head against the keys of its KV head, within the window if local.
        let kv_len = self.cache.len;
        let first = match (self.local, cfg.window) {
            (true, Some(w)) => kv_len.saturating_sub(w),
            _ => 0,
        };
        let groups = cfg.heads / cfg.kv_heads;
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let mut y = vec![0f32; cfg.heads * d];
        let mut p = vec![0f32; kv_len - first];
        for (head, out) in y.chunks_exact_mut(d).enumerate() {
            let kv = head / groups;
            let qh = &q[head * d..(head + 1) * d];
            for (t, s) in (first..kv_len).zip(p.iter_mut()) {
                *s = dot8(qh, &self.cache.k[self.cache.at(kv, t)]) * scale;
            }
            let max = p.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let mut sum = 0f32;
            for s in p.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for (t, s) in (first..kv_len).zip(&p) {
                let w = s / sum;
                for (o, v) in out.iter_mut().zip(&self.cache.v[self.cache.at(kv, t)]) {
                    *o += w * v;
                }
            }
        }
        let [mut o] = project([&self.wo], &y, dev)?;
        if let Some(w) = &self.post_attn_norm {
            o = rms_row(&o, &w.v, eps);
        }
        add_to(x, &o);

        let h = rms_row(x, &self.ffn_norm.v, eps);
        let [mut act, up] = project([&self.gate, &self.up], &h, dev)?;
        gated(cfg.family, &mut act, &up);
        let [mut y] = project([&self.down], &act, dev)?;
        if let Some(w) = &self.post_ffn_norm {
            y = rms_row(&y, &w.v, eps);
        }
        add_to(x, &y);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_mask_hides_old_positions_and_the_future() {
        let dev = Device::Cpu;
        let m = Masks::new(3, 2, Some(2), &dev).unwrap();
        let local: Vec<Vec<f32>> = m.local.unwrap().to_vec2().unwrap();
        // Query at position 2 sees 1 and 2; at 3 sees 2 and 3; at 4 sees 3 and 4.
        let vis = |row: &Vec<f32>| -> Vec<usize> {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v == 0.0)
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(vis(&local[0]), vec![1, 2]);
        assert_eq!(vis(&local[1]), vec![2, 3]);
        assert_eq!(vis(&local[2]), vec![3, 4]);
        let causal: Vec<Vec<f32>> = m.causal.unwrap().to_vec2().unwrap();
        assert_eq!(vis(&causal[0]), vec![0, 1, 2]);
        assert_eq!(vis(&causal[2]), vec![0, 1, 2, 3, 4]);
        // One query with a cache no longer than the window needs no mask at all.
        let m = Masks::new(1, 1, Some(4), &dev).unwrap();
        assert!(m.local.is_none() && m.causal.is_none());
        let m = Masks::new(1, 5, Some(4), &dev).unwrap();
        let row: Vec<Vec<f32>> = m.local.unwrap().to_vec2().unwrap();
        assert_eq!(vis(&row[0]), vec![2, 3, 4, 5]);
    }

    #[test]
    fn gemma_layer_pattern_is_five_local_one_global() {
        let cfg = Config {
            family: Family::Gemma3,
            hidden: 8,
            layers: 12,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            eps: 1e-6,
            rope_base: 1e6,
            rope_base_local: 1e4,
            rope_scale: 1.0,
            window: Some(512),
            context: 1024,
        };
        let globals: Vec<usize> = (0..12).filter(|i| !cfg.is_local(*i)).collect();
        assert_eq!(globals, vec![5, 11]);
    }

    fn model(file: &str) -> std::path::PathBuf {
        let dir = match std::env::var_os("FIELDMESH_MODELS") {
            Some(p) => std::path::PathBuf::from(p),
            None => std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/fieldmesh/models"),
        };
        let path = dir.join(file);
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models.sh",
            path.display()
        );
        path
    }

    /// The single-token path (generation) against the batched one (prompts) on real
    /// weights: the logits of the last of 12 tokens, run as 11 + 1 and as 12 at once.
    /// Gemma's window is cut to 5 so that its local layers drop keys in both paths.
    #[test]
    fn one_token_step_matches_the_batched_path() {
        for file in [
            "smollm2-135m-instruct-q4_1.gguf",
            "qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "gemma3-270m-q4_k_m.gguf",
        ] {
            let mut f = std::io::BufReader::new(std::fs::File::open(model(file)).unwrap());
            let ct = gguf_file::Content::read(&mut f).unwrap();
            let arch = crate::llm::meta_str(&ct, "general.architecture")
                .unwrap()
                .to_owned();
            let mut cfg = Config::read(&ct, &arch).unwrap();
            if cfg.window.is_some() {
                cfg.window = Some(5);
            }
            let mut dec = Decoder::load(&ct, cfg, &mut f, 64, &Device::Cpu).unwrap();
            let ids: Vec<u32> = (0..12).map(|i| 100 + 37 * i).collect();
            step_matches_batched(&mut dec, &ids, file);
        }
    }

    /// The logits of the last of `ids`, run all at once and as all but one then a step.
    /// The arithmetic is the same; rounding differences between candle's batched
    /// operations and ours flip a few activations' int8 rounding, which compounds over 30
    /// layers. How much depends on the CPU's kernels: on an AVX2-only machine the largest
    /// single logit moved by 1.9% (SmolLM2) and 3.7% (Gemma) of the largest logit, where
    /// it had stayed under 2% on the machine this was written on, so a bound on the
    /// largest difference sat too close to real faults. The root-mean-square difference,
    /// relative to the logits' spread, separates them: rounding drift measured 0.061-0.065
    /// (Qwen 0), while a context off by one token (one dropped, one repeated: what a wrong
    /// rotation, window or cache position does) measured 0.20 (SmolLM2), 0.23 (Qwen) and
    /// 2.98 (Gemma). The bound, 0.12, is twice the drift.
    fn step_matches_batched(dec: &mut Decoder, ids: &[u32], what: &str) {
        let n = ids.len();
        dec.reset(n);
        let batched: Vec<f32> = dec.forward(ids, 0).unwrap().to_vec1().unwrap();
        dec.reset(n);
        dec.forward(&ids[..n - 1], 0).unwrap();
        let stepped: Vec<f32> = dec
            .forward(&ids[n - 1..], n - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(batched.len(), stepped.len(), "{what}");
        let rms = |v: &mut dyn Iterator<Item = f32>| {
            let (sum, count) = v.fold((0f64, 0usize), |(s, c), x| {
                (s + f64::from(x) * f64::from(x), c + 1)
            });
            (sum / count as f64).sqrt()
        };
        let mean = batched.iter().sum::<f32>() / batched.len() as f32;
        let spread = rms(&mut batched.iter().map(|x| x - mean));
        let diff = rms(&mut batched.iter().zip(&stepped).map(|(a, b)| a - b));
        assert!(
            spread > 0.0 && diff <= 0.12 * spread,
            "{what}: logits differ by {diff:.4} RMS against a spread of {spread:.4} (ratio {:.3}, bound 0.12)",
            diff / spread
        );
    }

    /// Writes a tiny Llama-family GGUF (2 layers, hidden 64, Q8_0 matrices, seeded
    /// values); `bad` replaces one tensor with a wrong-sized one.
    fn tiny_model(path: &std::path::Path, bad: Option<(&str, (usize, usize))>) {
        use candle_core::quantized::GgmlDType;
        use gguf_file::Value;
        let dev = Device::Cpu;
        let (hidden, heads, kv_heads, ffn, vocab, layers) =
            (64usize, 4usize, 2usize, 128usize, 96usize, 2usize);
        let kv = kv_heads * hidden / heads;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect()
        };
        let mut shapes: Vec<(String, (usize, usize))> = vec![
            ("token_embd.weight".into(), (vocab, hidden)),
            ("output_norm.weight".into(), (hidden, 0)),
        ];
        for i in 0..layers {
            let p = format!("blk.{i}");
            for (name, shape) in [
                ("attn_norm.weight", (hidden, 0)),
                ("ffn_norm.weight", (hidden, 0)),
                ("attn_q.weight", (hidden, hidden)),
                ("attn_k.weight", (kv, hidden)),
                ("attn_v.weight", (kv, hidden)),
                ("attn_output.weight", (hidden, hidden)),
                ("ffn_gate.weight", (ffn, hidden)),
                ("ffn_up.weight", (ffn, hidden)),
                ("ffn_down.weight", (hidden, ffn)),
            ] {
                shapes.push((format!("{p}.{name}"), shape));
            }
        }
        let tensors: Vec<(String, QTensor)> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let (n, k) = match bad {
                    Some((b, s)) if b == name => s,
                    _ => shape,
                };
                let t = if k == 0 {
                    // A norm weight: near 1.
                    let v: Vec<f32> = values(n, 0.2).into_iter().map(|v| 1.0 + v).collect();
                    QTensor::quantize(&Tensor::from_vec(v, n, &dev).unwrap(), GgmlDType::F32)
                } else {
                    let v = values(n * k, 0.3);
                    QTensor::quantize(&Tensor::from_vec(v, (n, k), &dev).unwrap(), GgmlDType::Q8_0)
                };
                (name, t.unwrap())
            })
            .collect();
        let md = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.embedding_length", Value::U32(hidden as u32)),
            ("llama.block_count", Value::U32(layers as u32)),
            ("llama.attention.head_count", Value::U32(heads as u32)),
            ("llama.attention.head_count_kv", Value::U32(kv_heads as u32)),
            ("llama.context_length", Value::U32(64)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ];
        let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut f, &md, &ts).unwrap();
    }

    fn load_tiny(path: &std::path::Path) -> Result<Decoder> {
        let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
        let ct = gguf_file::Content::read(&mut f)?;
        let cfg = Config::read(&ct, "llama")?;
        Decoder::load(&ct, cfg, &mut f, 32, &Device::Cpu)
    }

    /// A file whose weights do not fit its own metadata is refused when it loads, with
    /// the tensor named, instead of failing (or, on the single-token path, truncating)
    /// mid-generation. The well-formed file loads, and its two paths agree.
    #[test]
    fn a_file_with_a_mis_sized_weight_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.gguf");
        tiny_model(&good, None);
        let mut dec = load_tiny(&good).unwrap();
        let ids: Vec<u32> = (0..6).map(|i| 5 + 13 * i).collect();
        step_matches_batched(&mut dec, &ids, "tiny llama");
        // A step must follow the cache.
        let err = dec.forward(&ids[..1], 9).unwrap_err().to_string();
        assert!(err.contains("does not follow"), "{err}");

        for (tensor, shape, says) in [
            (
                "blk.1.attn_norm.weight",
                (63, 0),
                "blk.1: attn_norm has 63 values, expected 64",
            ),
            (
                "blk.0.ffn_up.weight",
                (96, 64),
                "blk.0: ffn_up is 96x64, expected 128x64",
            ),
            (
                "blk.1.attn_output.weight",
                (64, 32),
                "blk.1: attn_output is 64x32, expected 64x64",
            ),
            (
                "output_norm.weight",
                (32, 0),
                "output_norm has 32 values for hidden 64",
            ),
        ] {
            let path = dir.path().join("bad.gguf");
            tiny_model(&path, Some((tensor, shape)));
            let err = load_tiny(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{tensor}: {err}");
        }
    }

    #[test]
    fn kv_cache_is_bounded() {
        let dev = Device::Cpu;
        let mut c = KvCache::new(1, 4, 3);
        let t = Tensor::zeros((1, 1, 2, 4), candle_core::DType::F32, &dev).unwrap();
        let (k, _) = c.append(&t, &t).unwrap();
        assert_eq!(k.dims(), &[1, 1, 2, 4]);
        let err = c.append(&t, &t).unwrap_err().to_string();
        assert!(err.contains("KV cache full"), "{err}");
        c.reset(2);
        assert!(c.append(&t, &t).is_ok());
    }
}
