//! Conversion of a CTranslate2 Whisper model (`model.bin` + vocabulary) into
//! whisper.cpp's legacy ggml model file.
//!
//! The CTranslate2 directory (as exported by `ct2-transformers-converter` or
//! shipped by faster-whisper) holds `model.bin` and `vocabulary.txt` (or
//! `vocabulary.json`). whisper.cpp wants one file with, in order:
//!
//! 1. the magic `0x67676d6c` and eleven `i32` hyper-parameters,
//! 2. the mel filter bank (computed here with librosa's Slaney formula),
//! 3. the base byte-level BPE vocabulary (ids below `<|endoftext|>`),
//! 4. every tensor, named as in OpenAI's checkpoints, with F32 for 1-D
//!    tensors, conv biases and positional embeddings, F16 otherwise.
//!
//! CTranslate2 fuses the self-attention Q|K|V projections and the
//! cross-attention K|V projections; they are split here, and the fused key
//! bias (always zero: Whisper's key projections have no bias) is dropped.
//!
//! All lengths read from `model.bin` are checked against the file size before
//! use, so a truncated or corrupt file yields a [`ConvertError`] rather than a
//! panic or a huge allocation.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

/// Magic number at the start of a legacy ggml file (`"ggml"` read as a little-endian `u32`).
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// ggml tensor type id for `f32`.
const GGML_TYPE_F32: i32 = 0;
/// ggml tensor type id for `f16`.
const GGML_TYPE_F16: i32 = 1;
/// ggml file type "mostly f16".
const GGML_FTYPE_MOSTLY_F16: i32 = 1;
/// Newest CTranslate2 `model.bin` version this parser understands.
const CT2_MAX_BINARY_VERSION: u32 = 6;
/// Whisper's STFT window length; filters have `N_FFT / 2 + 1` bins.
const N_FFT: usize = 400;
/// Whisper's sampling rate.
const SAMPLE_RATE: f64 = 16_000.0;
/// The token that ends the base vocabulary.
const END_OF_TEXT: &str = "<|endoftext|>";

/// Errors from [`convert_ct2_to_ggml`].
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `model.bin` does not follow the CTranslate2 layout (truncated, corrupt, not a model).
    #[error("malformed model.bin at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset at which the problem was detected.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// `model.bin` is well formed but is not something this converter handles.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A variable the Whisper spec requires is absent.
    #[error("model.bin lacks variable `{0}`")]
    MissingVariable(String),
    /// A variable has a shape that does not fit the model's dimensions.
    #[error("variable `{name}` has shape {actual:?}, expected {expected:?}")]
    BadShape {
        /// The CTranslate2 variable name.
        name: String,
        /// Its shape in the file.
        actual: Vec<u32>,
        /// The shape implied by the model's hyper-parameters.
        expected: Vec<usize>,
    },
    /// The vocabulary file is missing, malformed or inconsistent with the model.
    #[error("vocabulary: {0}")]
    Vocabulary(String),
}

/// whisper.cpp hyper-parameters, in the order they are written to the ggml header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GgmlHparams {
    /// Vocabulary size including special tokens (51864 for `.en`, 51865+ multilingual).
    pub n_vocab: i32,
    /// Encoder context length in frames (1500).
    pub n_audio_ctx: i32,
    /// Encoder width.
    pub n_audio_state: i32,
    /// Encoder attention heads.
    pub n_audio_head: i32,
    /// Encoder layers (4 tiny, 6 base, 12 small, 24 medium, 32 large).
    pub n_audio_layer: i32,
    /// Decoder context length in tokens (448).
    pub n_text_ctx: i32,
    /// Decoder width (equal to `n_audio_state`).
    pub n_text_state: i32,
    /// Decoder attention heads.
    pub n_text_head: i32,
    /// Decoder layers.
    pub n_text_layer: i32,
    /// Mel bands (80, or 128 for large-v3).
    pub n_mels: i32,
    /// ggml file type (1 = mostly f16).
    pub ftype: i32,
}

impl GgmlHparams {
    fn as_array(&self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }
}

/// Summary of a successful conversion.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvertReport {
    /// Hyper-parameters written to the ggml header.
    pub hparams: GgmlHparams,
    /// Number of tensors written (167 for tiny, 250 for base).
    pub tensor_count: usize,
    /// Number of vocabulary entries written (the base vocabulary only).
    pub vocab_written: usize,
    /// Size of the output file in bytes.
    pub bytes_written: u64,
}

/// Converts the CTranslate2 Whisper model in `ct2_dir` into a whisper.cpp ggml file at `out`.
///
/// The file is written to `out` with `.tmp` appended and renamed into place
/// once complete, so `out` never holds a partial model.
///
/// # Errors
/// Returns [`ConvertError`] if a file cannot be read or written, if
/// `model.bin` is truncated, corrupt or not a `WhisperSpec` model, if a
/// required variable is missing or mis-shaped, or if the vocabulary does not
/// match the model.
pub fn convert_ct2_to_ggml(ct2_dir: &Path, out: &Path) -> Result<ConvertReport, ConvertError> {
    let model_path = ct2_dir.join("model.bin");
    let bytes = fs::read(&model_path).map_err(|source| ConvertError::Io {
        action: "reading",
        path: model_path.clone(),
        source,
    })?;
    let model = Ct2Model::parse(&bytes)?;
    let vocab = read_vocabulary(ct2_dir)?;
    let plan = build_plan(&model, &vocab)?;

    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let io_err = |source| ConvertError::Io {
        action: "writing",
        path: tmp.clone(),
        source,
    };
    let result = write_ggml(&tmp, &plan).map_err(io_err);
    let bytes_written = match result {
        Ok(n) => n,
        Err(e) => {
            // Best effort: do not leave a partial file behind.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ConvertError::Io {
            action: "renaming into",
            path: out.to_path_buf(),
            source,
        }
    })?;
    Ok(ConvertReport {
        hparams: plan.hparams,
        tensor_count: plan.tensors.len(),
        vocab_written: plan.vocab.len(),
        bytes_written,
    })
}

/// Computes librosa's `filters.mel(sr=16000, n_fft=400, n_mels, htk=False, norm="slaney")`.
///
/// Returns `n_mels * 201` weights, row-major (`w[j * 201 + k]` is band `j`,
/// FFT bin `k`), computed in `f64` and rounded to `f32` like librosa. These
/// are the filters OpenAI ships in `mel_filters.npz`.
pub fn slaney_mel_filters(n_mels: usize) -> Vec<f32> {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    // librosa computes this as (1000 - 0) / f_sp, which is 14.999999999999998.
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f < MIN_LOG_HZ {
            f / F_SP
        } else {
            min_log_mel + (f / MIN_LOG_HZ).ln() / logstep
        }
    };
    let mel_to_hz = |m: f64| {
        if m < min_log_mel {
            F_SP * m
        } else {
            MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
        }
    };

    let n_bins = N_FFT / 2 + 1;
    let mel_max = hz_to_mel(SAMPLE_RATE / 2.0);
    let n_points = n_mels + 2;
    // numpy.linspace(0, mel_max, n_points): start + i * step, last point exact.
    let step = mel_max / (n_points - 1) as f64;
    let hz: Vec<f64> = (0..n_points)
        .map(|i| {
            let m = if i + 1 == n_points {
                mel_max
            } else {
                i as f64 * step
            };
            mel_to_hz(m)
        })
        .collect();

    let mut weights = vec![0f32; n_mels * n_bins];
    for (j, row) in weights.chunks_exact_mut(n_bins).enumerate() {
        let (lo, mid, hi) = (hz[j], hz[j + 1], hz[j + 2]);
        let enorm = 2.0 / (hi - lo);
        for (k, w) in row.iter_mut().enumerate() {
            let f = k as f64 * SAMPLE_RATE / N_FFT as f64;
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            *w = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    weights
}

// ---------------------------------------------------------------------------
// CTranslate2 model.bin parsing
// ---------------------------------------------------------------------------

/// Element type of a CTranslate2 variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// Pre-version-4 files store the item size instead of a type id.
    fn from_item_size(size: u8) -> Option<Self> {
        Some(match size {
            4 => Self::F32,
            2 => Self::I16,
            1 => Self::I8,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable of `model.bin`, borrowing its data from the file buffer.
#[derive(Debug)]
struct Variable<'a> {
    dims: Vec<u32>,
    dtype: DType,
    data: &'a [u8],
}

impl Variable<'_> {
    fn element_count(&self) -> usize {
        // Consistent with data.len() (checked at parse time), so no overflow.
        self.data.len() / self.dtype.size()
    }

    /// Reads a scalar integer variable (e.g. `num_heads`).
    fn scalar_int(&self, name: &str) -> Result<i64, ConvertError> {
        let bad = || ConvertError::Unsupported(format!("`{name}` is not an integer scalar"));
        if !self.dims.is_empty() {
            return Err(bad());
        }
        let d = self.data;
        Ok(match (self.dtype, d.len()) {
            (DType::I8, 1) => i64::from(i8::from_le_bytes([d[0]])),
            (DType::I16, 2) => i64::from(i16::from_le_bytes([d[0], d[1]])),
            (DType::I32, 4) => i64::from(i32::from_le_bytes([d[0], d[1], d[2], d[3]])),
            _ => return Err(bad()),
        })
    }
}

/// A parsed `model.bin`.
#[derive(Debug)]
struct Ct2Model<'a> {
    variables: HashMap<String, Variable<'a>>,
}

/// Bounds-checked little-endian reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: impl Into<String>) -> ConvertError {
        ConvertError::Malformed {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ConvertError> {
        if n > self.remaining() {
            return Err(self.malformed(format!(
                "{what} needs {n} bytes but only {} remain (file truncated?)",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ConvertError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ConvertError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, ConvertError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// CTranslate2 string: `u16` length including a trailing NUL, then the bytes.
    fn string(&mut self, what: &str) -> Result<String, ConvertError> {
        let start = self.pos;
        let len = usize::from(self.u16(what)?);
        let raw = self.take(len, what)?;
        let Some((&0, body)) = raw.split_last() else {
            self.pos = start;
            return Err(self.malformed(format!("{what} is not NUL-terminated")));
        };
        // The C++ reader stops at the first NUL.
        let body = body.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8(body.to_vec()).map_err(|_| {
            self.pos = start;
            self.malformed(format!("{what} is not valid UTF-8"))
        })
    }
}

impl<'a> Ct2Model<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, ConvertError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u32("binary version")?;
        if version == 0 || version > CT2_MAX_BINARY_VERSION {
            return Err(r.malformed(format!(
                "binary version {version} is not a CTranslate2 model.bin version (1..={CT2_MAX_BINARY_VERSION})"
            )));
        }
        if version < 2 {
            return Err(ConvertError::Unsupported(format!(
                "model.bin version {version} has no spec name; re-export with a recent CTranslate2"
            )));
        }
        let spec = r.string("spec name")?;
        if spec != "WhisperSpec" {
            return Err(ConvertError::Unsupported(format!(
                "spec is `{spec}`, expected `WhisperSpec`"
            )));
        }
        let _revision = r.u32("spec revision")?;
        let count = r.u32("variable count")?;
        // Each variable needs at least 2 (name len) + 1 (NUL) + 1 (rank) + 5 bytes.
        if u64::from(count) * 9 > r.remaining() as u64 {
            return Err(r.malformed(format!("variable count {count} exceeds the file size")));
        }

        let mut variables = HashMap::new();
        for _ in 0..count {
            let name = r.string("variable name")?;
            let rank = r.u8("variable rank")?;
            let mut dims = Vec::with_capacity(usize::from(rank));
            for _ in 0..rank {
                dims.push(r.u32("variable dimension")?);
            }
            let (dtype, num_bytes) = if version >= 4 {
                let id = r.u8("dtype")?;
                let dtype = DType::from_id(id)
                    .ok_or_else(|| r.malformed(format!("unknown dtype id {id} for `{name}`")))?;
                (dtype, u64::from(r.u32("byte count")?))
            } else {
                let size = r.u8("item size")?;
                let dtype = DType::from_item_size(size)
                    .ok_or_else(|| r.malformed(format!("unknown item size {size} for `{name}`")))?;
                let n = u64::from(r.u32("element count")?);
                (dtype, n * size as u64)
            };
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
                .and_then(|n| n.checked_mul(dtype.size() as u64));
            if elements != Some(num_bytes) {
                return Err(r.malformed(format!(
                    "`{name}` declares {num_bytes} bytes but shape {dims:?} of {dtype:?} needs {elements:?}"
                )));
            }
            let num_bytes = usize::try_from(num_bytes)
                .map_err(|_| r.malformed(format!("`{name}` is too large")))?;
            let data = r.take(num_bytes, &format!("data of `{name}`"))?;
            if variables
                .insert(name.clone(), Variable { dims, dtype, data })
                .is_some()
            {
                return Err(r.malformed(format!("duplicate variable `{name}`")));
            }
        }
        if version >= 3 {
            let aliases = r.u32("alias count")?;
            if u64::from(aliases) * 4 > r.remaining() as u64 {
                return Err(r.malformed(format!("alias count {aliases} exceeds the file size")));
            }
            for _ in 0..aliases {
                r.string("alias name")?;
                r.string("alias target")?;
            }
        }
        if r.remaining() != 0 {
            return Err(r.malformed(format!("{} unexpected trailing bytes", r.remaining())));
        }
        Ok(Self { variables })
    }

    fn get(&self, name: &str) -> Result<&Variable<'a>, ConvertError> {
        self.variables
            .get(name)
            .ok_or_else(|| ConvertError::MissingVariable(name.to_owned()))
    }

    /// Looks a variable up and checks its shape.
    fn shaped(&self, name: &str, expected: &[usize]) -> Result<&Variable<'a>, ConvertError> {
        let v = self.get(name)?;
        let matches = v.dims.len() == expected.len()
            && v.dims.iter().zip(expected).all(|(&a, &e)| a as usize == e);
        if !matches {
            return Err(ConvertError::BadShape {
                name: name.to_owned(),
                actual: v.dims.clone(),
                expected: expected.to_vec(),
            });
        }
        match v.dtype {
            DType::F32 | DType::F16 | DType::Bf16 => Ok(v),
            other => Err(ConvertError::Unsupported(format!(
                "`{name}` is {other:?}; only float32/float16/bfloat16 models can be converted \
                 (int8-quantized CTranslate2 models are not supported)"
            ))),
        }
    }

    /// Number of `prefix<N>/` layers, checking they are numbered 0..N.
    fn layer_count(&self, prefix: &str) -> Result<usize, ConvertError> {
        let indices: BTreeSet<usize> = self
            .variables
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('/').next())
            .filter_map(|n| n.parse().ok())
            .collect();
        let n = indices.len();
        if indices.iter().copied().ne(0..n) {
            return Err(ConvertError::Unsupported(format!(
                "layers `{prefix}N` are not numbered contiguously from 0: {indices:?}"
            )));
        }
        Ok(n)
    }

    fn dim(&self, name: &str, axis: usize) -> Result<usize, ConvertError> {
        let v = self.get(name)?;
        v.dims.get(axis).map(|&d| d as usize).ok_or_else(|| {
            ConvertError::Unsupported(format!(
                "`{name}` has rank {}, expected > {axis}",
                v.dims.len()
            ))
        })
    }
}

// ---------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------

/// Inverse of GPT-2's `bytes_to_unicode`: maps each printable stand-in char back to its byte.
fn gpt2_byte_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next_extra = 0u32;
    for b in 0u8..=255 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let c = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + next_extra).unwrap_or(char::REPLACEMENT_CHARACTER);
            next_extra += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// Reads `vocabulary.json` (a JSON array of strings) or else `vocabulary.txt` (one token per line).
fn read_vocabulary(dir: &Path) -> Result<Vec<String>, ConvertError> {
    let json_path = dir.join("vocabulary.json");
    let txt_path = dir.join("vocabulary.txt");
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| ConvertError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })
    };
    if json_path.is_file() {
        let text = read(&json_path)?;
        serde_json::from_str::<Vec<String>>(&text)
            .map_err(|e| ConvertError::Vocabulary(format!("{}: {e}", json_path.display())))
    } else if txt_path.is_file() {
        let text = read(&txt_path)?;
        Ok(text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
            .collect())
    } else {
        Err(ConvertError::Vocabulary(format!(
            "neither vocabulary.json nor vocabulary.txt in {}",
            dir.display()
        )))
    }
}

/// Byte-decodes the base vocabulary (tokens before `<|endoftext|>`).
fn base_vocab_bytes(vocab: &[String], n_vocab: usize) -> Result<Vec<Vec<u8>>, ConvertError> {
    if vocab.len() != n_vocab {
        return Err(ConvertError::Vocabulary(format!(
            "{} tokens, but the model's embedding has {n_vocab} rows",
            vocab.len()
        )));
    }
    let eot = vocab
        .iter()
        .position(|t| t == END_OF_TEXT)
        .ok_or_else(|| ConvertError::Vocabulary(format!("no {END_OF_TEXT} token")))?;
    let decoder = gpt2_byte_decoder();
    vocab[..eot]
        .iter()
        .enumerate()
        .map(|(id, tok)| {
            tok.chars()
                .map(|c| decoder.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    ConvertError::Vocabulary(format!(
                        "token {id} ({tok:?}) is not a GPT-2 byte-level string"
                    ))
                })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Conversion plan and ggml writer
// ---------------------------------------------------------------------------

/// One tensor to write: a range of elements of a CTranslate2 variable.
#[derive(Debug)]
struct OutTensor<'m, 'a> {
    name: String,
    /// numpy-order shape; written reversed (ggml `ne` order).
    shape: Vec<usize>,
    f32_out: bool,
    src: &'m Variable<'a>,
    elements: Range<usize>,
}

#[derive(Debug)]
struct Plan<'m, 'a> {
    hparams: GgmlHparams,
    mel: Vec<f32>,
    n_mels: usize,
    vocab: Vec<Vec<u8>>,
    tensors: Vec<OutTensor<'m, 'a>>,
}

/// Collects the output tensors, checking every shape against the hyper-parameters.
struct PlanBuilder<'m, 'a> {
    model: &'m Ct2Model<'a>,
    tensors: Vec<OutTensor<'m, 'a>>,
}

impl<'m, 'a> PlanBuilder<'m, 'a> {
    /// Whole variable `src` (expected numpy shape `shape`) as `name`.
    fn whole(
        &mut self,
        src: &str,
        shape: &[usize],
        name: &str,
        f32_out: bool,
    ) -> Result<(), ConvertError> {
        let v = self.model.shaped(src, shape)?;
        self.tensors.push(OutTensor {
            name: name.to_owned(),
            shape: shape.to_vec(),
            f32_out,
            src: v,
            elements: 0..v.element_count(),
        });
        Ok(())
    }

    /// Conv bias `[d]`, written as F32 `[d, 1]` (ggml `ne = [1, d]`) as whisper.cpp expects.
    fn conv_bias(&mut self, src: &str, d: usize, name: &str) -> Result<(), ConvertError> {
        self.whole(src, &[d], name, true)?;
        if let Some(t) = self.tensors.last_mut() {
            t.shape = vec![d, 1];
        }
        Ok(())
    }

    /// Linear layer: `[out, inp]` weight (F16) and `[out]` bias (F32).
    fn linear(
        &mut self,
        src: &str,
        out: usize,
        inp: usize,
        name: &str,
    ) -> Result<(), ConvertError> {
        self.whole(
            &format!("{src}/weight"),
            &[out, inp],
            &format!("{name}.weight"),
            false,
        )?;
        self.whole(
            &format!("{src}/bias"),
            &[out],
            &format!("{name}.bias"),
            true,
        )
    }

    fn layer_norm(&mut self, src: &str, d: usize, name: &str) -> Result<(), ConvertError> {
        self.whole(
            &format!("{src}/gamma"),
            &[d],
            &format!("{name}.weight"),
            true,
        )?;
        self.whole(&format!("{src}/beta"), &[d], &format!("{name}.bias"), true)
    }

    /// Splits a fused `[parts*d, d]` projection into `names`; `false` marks the key
    /// projection, whose (all-zero) bias slice is dropped.
    fn fused(&mut self, src: &str, d: usize, names: &[(&str, bool)]) -> Result<(), ConvertError> {
        let parts = names.len();
        let w = self
            .model
            .shaped(&format!("{src}/weight"), &[parts * d, d])?;
        let b = self.model.shaped(&format!("{src}/bias"), &[parts * d])?;
        for (i, &(name, has_bias)) in names.iter().enumerate() {
            self.tensors.push(OutTensor {
                name: format!("{name}.weight"),
                shape: vec![d, d],
                f32_out: false,
                src: w,
                elements: i * d * d..(i + 1) * d * d,
            });
            if has_bias {
                self.tensors.push(OutTensor {
                    name: format!("{name}.bias"),
                    shape: vec![d],
                    f32_out: true,
                    src: b,
                    elements: i * d..(i + 1) * d,
                });
            }
        }
        Ok(())
    }

    fn ffn(&mut self, src: &str, d: usize, ff: usize, name: &str) -> Result<(), ConvertError> {
        self.layer_norm(&format!("{src}/layer_norm"), d, &format!("{name}.mlp_ln"))?;
        self.linear(&format!("{src}/linear_0"), ff, d, &format!("{name}.mlp.0"))?;
        self.linear(&format!("{src}/linear_1"), d, ff, &format!("{name}.mlp.2"))
    }

    fn self_attention(&mut self, src: &str, d: usize, name: &str) -> Result<(), ConvertError> {
        self.layer_norm(&format!("{src}/layer_norm"), d, &format!("{name}.attn_ln"))?;
        let (q, k, v) = (
            format!("{name}.attn.query"),
            format!("{name}.attn.key"),
            format!("{name}.attn.value"),
        );
        self.fused(
            &format!("{src}/linear_0"),
            d,
            &[(&q, true), (&k, false), (&v, true)],
        )?;
        self.linear(
            &format!("{src}/linear_1"),
            d,
            d,
            &format!("{name}.attn.out"),
        )
    }
}

fn to_i32(value: usize, what: &str) -> Result<i32, ConvertError> {
    i32::try_from(value)
        .map_err(|_| ConvertError::Unsupported(format!("{what} = {value} does not fit in i32")))
}

fn heads(model: &Ct2Model<'_>, name: &str, d: usize) -> Result<i32, ConvertError> {
    let h = model.get(name)?.scalar_int(name)?;
    match usize::try_from(h) {
        Ok(h) if h > 0 && d.is_multiple_of(h) => to_i32(h, name),
        _ => Err(ConvertError::Unsupported(format!(
            "`{name}` = {h} does not divide width {d}"
        ))),
    }
}

fn build_plan<'m, 'a>(
    model: &'m Ct2Model<'a>,
    vocab: &[String],
) -> Result<Plan<'m, 'a>, ConvertError> {
    let n_vocab = model.dim("decoder/embeddings/weight", 0)?;
    let d = model.dim("decoder/embeddings/weight", 1)?;
    let n_audio_ctx = model.dim("encoder/position_encodings/encodings", 0)?;
    let n_audio_state = model.dim("encoder/position_encodings/encodings", 1)?;
    let n_text_ctx = model.dim("decoder/position_encodings/encodings", 0)?;
    let n_mels = model.dim("encoder/conv1/weight", 1)?;
    if n_audio_state != d {
        return Err(ConvertError::Unsupported(format!(
            "encoder width {n_audio_state} differs from decoder width {d}"
        )));
    }
    if d == 0 || n_mels == 0 {
        return Err(ConvertError::Unsupported(
            "zero model width or mel count".into(),
        ));
    }
    let n_audio_layer = model.layer_count("encoder/layer_")?;
    let n_text_layer = model.layer_count("decoder/layer_")?;
    let hparams = GgmlHparams {
        n_vocab: to_i32(n_vocab, "n_vocab")?,
        n_audio_ctx: to_i32(n_audio_ctx, "n_audio_ctx")?,
        n_audio_state: to_i32(d, "n_audio_state")?,
        n_audio_head: heads(model, "encoder/num_heads", d)?,
        n_audio_layer: to_i32(n_audio_layer, "n_audio_layer")?,
        n_text_ctx: to_i32(n_text_ctx, "n_text_ctx")?,
        n_text_state: to_i32(d, "n_text_state")?,
        n_text_head: heads(model, "decoder/num_heads", d)?,
        n_text_layer: to_i32(n_text_layer, "n_text_layer")?,
        n_mels: to_i32(n_mels, "n_mels")?,
        ftype: GGML_FTYPE_MOSTLY_F16,
    };

    let ff = model.dim("encoder/layer_0/ffn/linear_0/weight", 0)?;
    let mut b = PlanBuilder {
        model,
        tensors: Vec::new(),
    };

    // Encoder.
    b.whole(
        "encoder/position_encodings/encodings",
        &[n_audio_ctx, d],
        "encoder.positional_embedding",
        true,
    )?;
    b.whole(
        "encoder/conv1/weight",
        &[d, n_mels, 3],
        "encoder.conv1.weight",
        false,
    )?;
    b.conv_bias("encoder/conv1/bias", d, "encoder.conv1.bias")?;
    b.whole(
        "encoder/conv2/weight",
        &[d, d, 3],
        "encoder.conv2.weight",
        false,
    )?;
    b.conv_bias("encoder/conv2/bias", d, "encoder.conv2.bias")?;
    b.layer_norm("encoder/layer_norm", d, "encoder.ln_post")?;
    for i in 0..n_audio_layer {
        let src = format!("encoder/layer_{i}");
        let name = format!("encoder.blocks.{i}");
        b.self_attention(&format!("{src}/self_attention"), d, &name)?;
        b.ffn(&format!("{src}/ffn"), d, ff, &name)?;
    }

    // Decoder.
    b.whole(
        "decoder/position_encodings/encodings",
        &[n_text_ctx, d],
        "decoder.positional_embedding",
        true,
    )?;
    b.whole(
        "decoder/embeddings/weight",
        &[n_vocab, d],
        "decoder.token_embedding.weight",
        false,
    )?;
    b.layer_norm("decoder/layer_norm", d, "decoder.ln")?;
    for i in 0..n_text_layer {
        let src = format!("decoder/layer_{i}");
        let name = format!("decoder.blocks.{i}");
        b.self_attention(&format!("{src}/self_attention"), d, &name)?;
        b.layer_norm(
            &format!("{src}/attention/layer_norm"),
            d,
            &format!("{name}.cross_attn_ln"),
        )?;
        b.linear(
            &format!("{src}/attention/linear_0"),
            d,
            d,
            &format!("{name}.cross_attn.query"),
        )?;
        let (k, v) = (
            format!("{name}.cross_attn.key"),
            format!("{name}.cross_attn.value"),
        );
        b.fused(
            &format!("{src}/attention/linear_1"),
            d,
            &[(&k, false), (&v, true)],
        )?;
        b.linear(
            &format!("{src}/attention/linear_2"),
            d,
            d,
            &format!("{name}.cross_attn.out"),
        )?;
        b.ffn(&format!("{src}/ffn"), d, ff, &name)?;
    }

    let expected = (7 + 15 * n_audio_layer) + (4 + 24 * n_text_layer);
    debug_assert_eq!(b.tensors.len(), expected);

    Ok(Plan {
        hparams,
        mel: slaney_mel_filters(n_mels),
        n_mels,
        vocab: base_vocab_bytes(vocab, n_vocab)?,
        tensors: b.tensors,
    })
}

/// Writes `plan` as a ggml file at `path`; returns the number of bytes written.
fn write_ggml(path: &Path, plan: &Plan<'_, '_>) -> std::io::Result<u64> {
    let file = File::create(path)?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        count: 0,
    };
    let too_big = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} too large"),
        )
    };
    let i32_of = |v: usize, what: &str| i32::try_from(v).map_err(|_| too_big(what));

    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in plan.hparams.as_array() {
        w.write_all(&v.to_le_bytes())?;
    }

    w.write_all(&i32_of(plan.n_mels, "n_mels")?.to_le_bytes())?;
    w.write_all(&i32_of(N_FFT / 2 + 1, "n_fft")?.to_le_bytes())?;
    for v in &plan.mel {
        w.write_all(&v.to_le_bytes())?;
    }

    w.write_all(&i32_of(plan.vocab.len(), "vocab")?.to_le_bytes())?;
    for tok in &plan.vocab {
        let len = u32::try_from(tok.len()).map_err(|_| too_big("token"))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(tok)?;
    }

    let mut buf = Vec::new();
    for t in &plan.tensors {
        let n_dims = i32_of(t.shape.len(), "rank")?;
        let ttype = if t.f32_out {
            GGML_TYPE_F32
        } else {
            GGML_TYPE_F16
        };
        w.write_all(&n_dims.to_le_bytes())?;
        w.write_all(&i32_of(t.name.len(), "name")?.to_le_bytes())?;
        w.write_all(&ttype.to_le_bytes())?;
        for &dim in t.shape.iter().rev() {
            w.write_all(&i32_of(dim, "dimension")?.to_le_bytes())?;
        }
        w.write_all(t.name.as_bytes())?;
        encode(t, &mut buf);
        w.write_all(&buf)?;
    }
    let count = w.count;
    let file = w.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(count)
}

/// Encodes the tensor's element range in its output type into `buf` (cleared first).
fn encode(t: &OutTensor<'_, '_>, buf: &mut Vec<u8>) {
    buf.clear();
    let size = t.src.dtype.size();
    // Ranges were derived from checked shapes, so they lie within the data.
    let raw = &t.src.data[t.elements.start * size..t.elements.end * size];
    let values = raw.chunks_exact(size);
    match (t.src.dtype, t.f32_out) {
        (DType::F16, false) | (DType::F32, true) => buf.extend_from_slice(raw),
        (DType::F16, true) => {
            for c in values {
                buf.extend_from_slice(&f16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes());
            }
        }
        (DType::Bf16, true) => {
            for c in values {
                buf.extend_from_slice(&bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes());
            }
        }
        (DType::F32, false) => {
            for c in values {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                buf.extend_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        (DType::Bf16, false) => {
            for c in values {
                let v = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                buf.extend_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        // `shaped` only admits float variables into the plan.
        (DType::I8 | DType::I16 | DType::I32, _) => {}
    }
}

/// Counts bytes passing through to the inner writer.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values computed in f64 with plain Python from librosa's formula.
    #[test]
    fn mel_filters_match_librosa() {
        let w = slaney_mel_filters(80);
        assert_eq!(w.len(), 80 * 201);
        let at = |j: usize, k: usize| w[j * 201 + k];
        let cases = [
            (0, 1, 0.024_862_594_902_515_41_f64),
            (0, 2, 0.0),
            (1, 1, 0.001_990_821_911_022_067),
            (1, 2, 0.022_871_771_827_340_126),
            (10, 10, 0.019_908_219_575_881_958),
            (25, 24, 0.020_874_010_398_983_955),
            (40, 43, 0.014_735_565_520_823_002),
            (60, 91, 0.003_441_219_218_075_275_4),
            (79, 186, 0.000_366_741_674_952_209),
            (79, 190, 0.002_232_054_946_944_117_5),
            (79, 200, 0.0),
        ];
        // The reference values are f32 results printed as f64.
        for (j, k, expected) in cases {
            let got = f64::from(at(j, k));
            assert!(
                (got - expected).abs() <= expected.abs() * 2e-7,
                "w[{j}][{k}] = {got}, expected {expected}"
            );
        }
        // Properties of OpenAI's mel_filters.npz["mel_80"].
        assert_eq!(w.iter().filter(|&&v| v != 0.0).count(), 391);
        let max = w.iter().copied().fold(0f32, f32::max);
        assert!((max - 0.025_880_683).abs() < 1e-8, "max {max}");
    }

    #[test]
    fn byte_decoder_inverts_gpt2_mapping() {
        let d = gpt2_byte_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'Ċ'], b'\n');
        assert_eq!(d[&'a'], b'a');
        assert_eq!(d[&'\u{100}'], 0);
        assert_eq!(d[&'\u{143}'], 173);
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fm-convert-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        fs::write(dir.join("vocabulary.txt"), "a\nb\n<|endoftext|>\n").expect("write vocab");
        dir
    }

    /// A minimal valid prefix of a CTranslate2 model.bin with one variable.
    fn tiny_model_bin() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        let spec = b"WhisperSpec\0";
        b.extend_from_slice(&(spec.len() as u16).to_le_bytes());
        b.extend_from_slice(spec);
        b.extend_from_slice(&3u32.to_le_bytes()); // revision
        b.extend_from_slice(&1u32.to_le_bytes()); // one variable
        let name = b"encoder/conv1/bias\0";
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.push(1); // rank
        b.extend_from_slice(&4u32.to_le_bytes()); // dims
        b.push(4); // float16
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        b.extend_from_slice(&0u32.to_le_bytes()); // no aliases
        b
    }

    #[test]
    fn parses_minimal_model() {
        let bytes = tiny_model_bin();
        let m = Ct2Model::parse(&bytes).expect("parse");
        assert_eq!(m.get("encoder/conv1/bias").expect("var").dims, vec![4]);
    }

    #[test]
    fn truncated_model_is_an_error() {
        let bytes = tiny_model_bin();
        for cut in 0..bytes.len() {
            match Ct2Model::parse(&bytes[..cut]) {
                Err(ConvertError::Malformed { .. }) => {}
                other => panic!("cut at {cut}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn huge_declared_sizes_are_rejected_without_allocating() {
        let mut bytes = tiny_model_bin();
        // Variable count 0xFFFF_FFFF.
        let count_at = 4 + 2 + 12 + 4;
        bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Ct2Model::parse(&bytes),
            Err(ConvertError::Malformed { .. })
        ));

        // Byte count inconsistent with the shape.
        let mut bytes = tiny_model_bin();
        let nbytes_at = bytes.len() - 4 - 8 - 4;
        bytes[nbytes_at..nbytes_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Ct2Model::parse(&bytes),
            Err(ConvertError::Malformed { .. })
        ));
    }

    #[test]
    fn truncated_model_file_fails_conversion_cleanly() {
        let dir = scratch_dir("trunc");
        let mut bytes = tiny_model_bin();
        bytes.truncate(bytes.len() - 6);
        fs::write(dir.join("model.bin"), &bytes).expect("write model");
        let out = dir.join("out.bin");
        let err = convert_ct2_to_ggml(&dir, &out).expect_err("must fail");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(!out.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_file_fails_conversion_cleanly() {
        let dir = scratch_dir("garbage");
        let garbage: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(dir.join("model.bin"), &garbage).expect("write model");
        let out = dir.join("out.bin");
        let err = convert_ct2_to_ggml(&dir, &out).expect_err("must fail");
        assert!(
            matches!(
                err,
                ConvertError::Malformed { .. } | ConvertError::Unsupported(_)
            ),
            "{err}"
        );
        // A JSON file is not a model either.
        fs::write(dir.join("model.bin"), b"{\"not\": \"a model\"}").expect("write model");
        assert!(convert_ct2_to_ggml(&dir, &out).is_err());
        // Nor is an empty file.
        fs::write(dir.join("model.bin"), b"").expect("write model");
        assert!(matches!(
            convert_ct2_to_ggml(&dir, &out),
            Err(ConvertError::Malformed { .. })
        ));
        assert!(!out.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_directory_is_io_error() {
        let err = convert_ct2_to_ggml(Path::new("/nonexistent/fm"), Path::new("/tmp/never.bin"))
            .expect_err("must fail");
        assert!(matches!(err, ConvertError::Io { .. }));
    }

    #[test]
    fn minimal_model_lacks_whisper_variables() {
        let bytes = tiny_model_bin();
        let m = Ct2Model::parse(&bytes).expect("parse");
        let err = build_plan(&m, &[]).expect_err("incomplete model");
        assert!(matches!(err, ConvertError::MissingVariable(_)), "{err}");
    }
}
