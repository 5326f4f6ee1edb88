//! Speech-to-text with whisper.cpp (through `whisper-rs`), plus the small
//! audio helpers it needs: a RIFF/WAVE reader, a resampler to 16 kHz and a
//! word-error-rate metric for evaluating transcripts.
//!
//! The model is a legacy ggml file as written by
//! [`convert_ct2_to_ggml`](super::convert::convert_ct2_to_ggml).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperError,
};

/// Sample rate whisper expects.
pub const WHISPER_SAMPLE_RATE: u32 = 16_000;

static SILENCE_WHISPER_LOGS: Once = Once::new();

/// Errors from loading a model or transcribing audio.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    /// The model file does not exist.
    #[error("whisper model not found at {0}")]
    ModelNotFound(PathBuf),
    /// whisper.cpp refused the model file (wrong format, wrong tensor shapes, ...).
    #[error("loading whisper model {path}: {source}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// The whisper-rs error.
        #[source]
        source: WhisperError,
    },
    /// No samples were given.
    #[error("no audio samples to transcribe")]
    EmptyAudio,
    /// The requested language is unknown to whisper or unsupported by the model.
    #[error("unsupported language `{0}` for this model")]
    Language(String),
    /// whisper.cpp failed while running.
    #[error("whisper inference failed: {0}")]
    Inference(#[from] WhisperError),
}

/// Errors from [`read_wav`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// The data is not a RIFF/WAVE file.
    #[error("not a RIFF/WAVE file")]
    NotWave,
    /// A chunk runs past the end of the data.
    #[error("chunk `{chunk}` at byte {offset} declares {size} bytes, but only {available} remain")]
    Truncated {
        /// The chunk id.
        chunk: String,
        /// Byte offset of the chunk header.
        offset: usize,
        /// Declared chunk size.
        size: u32,
        /// Bytes actually present.
        available: usize,
    },
    /// No `fmt ` chunk.
    #[error("missing `fmt ` chunk")]
    MissingFormat,
    /// No `data` chunk.
    #[error("missing `data` chunk")]
    MissingData,
    /// The `fmt ` chunk is malformed or inconsistent.
    #[error("invalid `fmt ` chunk: {0}")]
    BadFormat(String),
    /// A valid but unsupported encoding.
    #[error("unsupported WAV encoding: {0}")]
    Unsupported(String),
}

/// One timed piece of a transcript.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// Start, in milliseconds from the beginning of the audio (clamped to the audio length).
    pub start_ms: u64,
    /// End, in milliseconds from the beginning of the audio (clamped to the audio length).
    pub end_ms: u64,
    /// Text, trimmed of surrounding whitespace.
    pub text: String,
    /// Mean probability of the segment's text tokens (special tokens excluded), 0..=1.
    pub confidence: f32,
    /// whisper's estimate that the segment's window holds no speech, 0..=1.
    pub no_speech_prob: f32,
}

/// The result of [`Transcriber::transcribe`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Transcript {
    /// All segment texts joined by single spaces.
    pub text: String,
    /// ISO 639-1 code of the language transcribed (given or detected).
    pub language: String,
    /// Timed segments in order.
    pub segments: Vec<Segment>,
    /// Segment confidences averaged with segment durations as weights (0 if no segments).
    pub confidence: f32,
    /// Duration of the input audio in milliseconds.
    pub audio_ms: u64,
}

/// A loaded whisper model, shareable across threads (`&self` methods only).
pub struct Transcriber {
    ctx: WhisperContext,
    threads: i32,
    path: PathBuf,
}

impl fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transcriber")
            .field("path", &self.path)
            .field("threads", &self.threads)
            .field("multilingual", &self.ctx.is_multilingual())
            .finish_non_exhaustive()
    }
}

impl Transcriber {
    /// Loads a whisper.cpp ggml model, to run on `threads` CPU threads (at least 1).
    ///
    /// The first call routes whisper.cpp's and ggml's log output into
    /// whisper-rs's hooks, which discard it; load failures are still reported
    /// through the returned error.
    ///
    /// # Errors
    /// [`TranscribeError::ModelNotFound`] if `path` is not a file,
    /// [`TranscribeError::Load`] if whisper.cpp rejects it.
    pub fn load(path: &Path, threads: usize) -> Result<Self, TranscribeError> {
        SILENCE_WHISPER_LOGS.call_once(whisper_rs::install_logging_hooks);
        if !path.is_file() {
            return Err(TranscribeError::ModelNotFound(path.to_path_buf()));
        }
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        let ctx = WhisperContext::new_with_params(path, params).map_err(|source| {
            TranscribeError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            ctx,
            threads: i32::try_from(threads.max(1)).unwrap_or(i32::MAX),
            path: path.to_path_buf(),
        })
    }

    /// Whether the model handles languages other than English.
    pub fn is_multilingual(&self) -> bool {
        self.ctx.is_multilingual()
    }

    /// Transcribes 16 kHz mono samples in `[-1, 1]`.
    ///
    /// `language` is an ISO 639-1 code such as `"en"`; `None` or `"auto"`
    /// detects it (multilingual models) or means English (`.en` models).
    ///
    /// # Errors
    /// [`TranscribeError::EmptyAudio`] for no samples,
    /// [`TranscribeError::Language`] for an unknown language or a non-English
    /// language on an English-only model, [`TranscribeError::Inference`] if
    /// whisper.cpp fails.
    pub fn transcribe(
        &self,
        samples_16k_mono: &[f32],
        language: Option<&str>,
    ) -> Result<Transcript, TranscribeError> {
        if samples_16k_mono.is_empty() {
            return Err(TranscribeError::EmptyAudio);
        }
        let requested = language
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "auto");
        let lang: &str = match (requested, self.ctx.is_multilingual()) {
            (Some(l), multi) => {
                if whisper_rs::get_lang_id(l).is_none() || (!multi && l != "en") {
                    return Err(TranscribeError::Language(l.to_owned()));
                }
                l
            }
            (None, true) => "auto",
            (None, false) => "en",
        };

        // Non-finite samples would poison the mel spectrogram.
        let cleaned: Vec<f32>;
        let samples = if samples_16k_mono.iter().all(|s| s.is_finite()) {
            samples_16k_mono
        } else {
            cleaned = samples_16k_mono
                .iter()
                .map(|&s| if s.is_finite() { s } else { 0.0 })
                .collect();
            &cleaned
        };

        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_language(Some(lang));
        params.set_translate(false);
        params.set_no_context(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);

        let mut state = self.ctx.create_state()?;
        state.full(params, samples)?;

        let language = if lang == "auto" {
            whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .unwrap_or("unknown")
                .to_owned()
        } else {
            lang.to_owned()
        };

        let audio_ms = samples.len() as u64 * 1000 / u64::from(WHISPER_SAMPLE_RATE);
        let eot = self.ctx.token_eot();
        let mut segments = Vec::new();
        for seg in state.as_iter() {
            let text = seg.to_str_lossy()?.trim().to_owned();
            let (sum, count) = (0..seg.n_tokens())
                .filter_map(|i| seg.get_token(i))
                .filter(|t| t.token_id() < eot)
                .fold((0f64, 0u32), |(s, n), t| {
                    (s + f64::from(t.token_probability()), n + 1)
                });
            let confidence = if count == 0 {
                0.0
            } else {
                (sum / f64::from(count)) as f32
            };
            // whisper pads input to 30 s windows, so timestamps can overshoot the audio.
            let start_ms = centis_to_ms(seg.start_timestamp()).min(audio_ms);
            let end_ms = centis_to_ms(seg.end_timestamp()).clamp(start_ms, audio_ms);
            segments.push(Segment {
                start_ms,
                end_ms,
                text,
                confidence,
                no_speech_prob: seg.no_speech_probability(),
            });
        }

        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            language,
            confidence: weighted_confidence(&segments),
            segments,
            audio_ms,
        })
    }
}

fn centis_to_ms(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0).saturating_mul(10)
}

/// Duration-weighted mean confidence; plain mean if all durations are zero.
fn weighted_confidence(segments: &[Segment]) -> f32 {
    if segments.is_empty() {
        return 0.0;
    }
    let total: u64 = segments.iter().map(|s| s.end_ms - s.start_ms).sum();
    if total == 0 {
        let sum: f64 = segments.iter().map(|s| f64::from(s.confidence)).sum();
        return (sum / segments.len() as f64) as f32;
    }
    let sum: f64 = segments
        .iter()
        .map(|s| f64::from(s.confidence) * (s.end_ms - s.start_ms) as f64)
        .sum();
    (sum / total as f64) as f32
}

// ---------------------------------------------------------------------------
// WAV reading
// ---------------------------------------------------------------------------

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleFormat {
    Pcm16,
    Float32,
}

/// Parses a `fmt ` chunk body into (format, channels, sample rate).
fn parse_fmt(body: &[u8]) -> Result<(SampleFormat, u16, u32), WavError> {
    let short = || WavError::BadFormat(format!("{} bytes, need at least 16", body.len()));
    let mut tag = le_u16(body, 0).ok_or_else(short)?;
    let channels = le_u16(body, 2).ok_or_else(short)?;
    let rate = le_u32(body, 4).ok_or_else(short)?;
    let block_align = le_u16(body, 12).ok_or_else(short)?;
    let bits = le_u16(body, 14).ok_or_else(short)?;
    if tag == WAVE_FORMAT_EXTENSIBLE {
        // cbSize (2), valid bits (2), channel mask (4), then the sub-format GUID
        // whose first two bytes are the real format tag.
        tag = le_u16(body, 24).ok_or_else(|| {
            WavError::BadFormat("WAVE_FORMAT_EXTENSIBLE without a sub-format".into())
        })?;
    }
    if channels == 0 {
        return Err(WavError::BadFormat("zero channels".into()));
    }
    if rate == 0 {
        return Err(WavError::BadFormat("zero sample rate".into()));
    }
    let format = match (tag, bits) {
        (WAVE_FORMAT_PCM, 16) => SampleFormat::Pcm16,
        (WAVE_FORMAT_IEEE_FLOAT, 32) => SampleFormat::Float32,
        (t, b) => {
            return Err(WavError::Unsupported(format!(
                "format tag {t} with {b} bits per sample (supported: 16-bit PCM, 32-bit float)"
            )));
        }
    };
    let expected_align = u32::from(channels) * u32::from(bits / 8);
    if u32::from(block_align) != expected_align {
        return Err(WavError::BadFormat(format!(
            "block align {block_align}, expected {expected_align} for {channels} channels of {bits} bits"
        )));
    }
    Ok((format, channels, rate))
}

/// Decodes a RIFF/WAVE file into mono `f32` samples in `[-1, 1]`.
///
/// Supports 16-bit PCM and 32-bit IEEE float (also inside
/// `WAVE_FORMAT_EXTENSIBLE`), any channel count (channels are averaged to
/// mono). Unknown chunks are skipped; a trailing partial frame is ignored. A
/// `data` chunk whose size is the streaming placeholder `0xFFFFFFFF` extends
/// to the end of the input.
///
/// Returns `(mono samples, sample rate, original channel count)`.
///
/// # Errors
/// [`WavError`] if the input is not RIFF/WAVE, a chunk overruns the input,
/// the `fmt ` or `data` chunk is missing or inconsistent, or the encoding is
/// unsupported.
pub fn read_wav(bytes: &[u8]) -> Result<(Vec<f32>, u32, u16), WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    // The RIFF size is often wrong in streamed files; walk to the real end instead.
    let mut pos = 12;
    let mut fmt = None;
    let mut data = None;
    while bytes.len() - pos >= 8 {
        let id = &bytes[pos..pos + 4];
        let size = le_u32(bytes, pos + 4).ok_or(WavError::NotWave)?;
        let body_start = pos + 8;
        let available = bytes.len() - body_start;
        let body_len = if id == b"data" && size == u32::MAX {
            available
        } else {
            usize::try_from(size)
                .ok()
                .filter(|&n| n <= available)
                .ok_or_else(|| WavError::Truncated {
                    chunk: String::from_utf8_lossy(id).into_owned(),
                    offset: pos,
                    size,
                    available,
                })?
        };
        let body = &bytes[body_start..body_start + body_len];
        match id {
            b"fmt " if fmt.is_none() => fmt = Some(parse_fmt(body)?),
            b"data" if data.is_none() => data = Some(body),
            _ => {}
        }
        // Chunks are padded to an even length; the pad byte may be missing at the very end.
        pos = (body_start + body_len + (body_len & 1)).min(bytes.len());
    }
    let (format, channels, rate) = fmt.ok_or(WavError::MissingFormat)?;
    let data = data.ok_or(WavError::MissingData)?;

    let width = match format {
        SampleFormat::Pcm16 => 2,
        SampleFormat::Float32 => 4,
    };
    let frame = width * usize::from(channels);
    let scale = 1.0 / f32::from(channels);
    let decode = |s: &[u8]| match format {
        SampleFormat::Pcm16 => f32::from(i16::from_le_bytes([s[0], s[1]])) / 32_768.0,
        SampleFormat::Float32 => f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
    };
    let samples = data
        .chunks_exact(frame)
        .map(|f| f.chunks_exact(width).map(decode).sum::<f32>() * scale)
        .collect();
    Ok((samples, rate, channels))
}

// ---------------------------------------------------------------------------
// Resampling
// ---------------------------------------------------------------------------

/// Resamples mono audio from `rate` Hz to 16 kHz with a Blackman-windowed sinc filter.
///
/// When downsampling (e.g. espeak-ng's 22 050 Hz) the filter cut-off is
/// lowered below the new Nyquist frequency, so there is no aliasing. The
/// output has `ceil(len * 16000 / rate)` samples. `rate == 16000` copies the
/// input; `rate == 0` yields no samples.
///
/// The filter is polyphase: the kernel for each of the `16000 / gcd(rate, 16000)`
/// sub-sample offsets is computed once (320 for 22 050 Hz), unless there are
/// more offsets than output samples.
pub fn resample_to_16k(samples: &[f32], rate: u32) -> Vec<f32> {
    /// Sinc zero crossings on each side of the kernel centre.
    const ZERO_CROSSINGS: f64 = 16.0;
    if rate == WHISPER_SAMPLE_RATE {
        return samples.to_vec();
    }
    if rate == 0 || samples.is_empty() {
        return Vec::new();
    }
    let g = gcd(u64::from(rate), u64::from(WHISPER_SAMPLE_RATE));
    // Output sample n sits at input position n * step / den = index + phase / den.
    let step = u64::from(rate) / g;
    let den = u64::from(WHISPER_SAMPLE_RATE) / g;
    // Cut-off as a fraction of the input Nyquist; 5 % margin for the transition band.
    let cutoff = (f64::from(WHISPER_SAMPLE_RATE) / f64::from(rate)).min(1.0) * 0.95;
    let half_width = ZERO_CROSSINGS / cutoff; // in input samples
    // Taps cover input indices index - reach + 1 ..= index + reach.
    let reach = half_width.ceil() as usize;
    let taps = 2 * reach;
    let out_len =
        usize::try_from((samples.len() as u64 * den).div_ceil(step)).unwrap_or(usize::MAX);

    // Weight of tap j for a given phase: distance x = phase/den + reach - 1 - j.
    let weight = |phase: u64, j: usize| {
        let x = phase as f64 / den as f64 + (reach as f64 - 1.0 - j as f64);
        (sinc(cutoff * x) * blackman(x / half_width)) as f32
    };
    let table: Option<Vec<f32>> = (den as usize <= out_len).then(|| {
        (0..den)
            .flat_map(|p| (0..taps).map(move |j| weight(p, j)))
            .collect()
    });

    let mut out = Vec::with_capacity(out_len);
    let mut kernel = vec![0f32; taps];
    for n in 0..out_len as u64 {
        let pos = n * step;
        let (index, phase) = ((pos / den) as usize, pos % den);
        let kernel: &[f32] = match &table {
            Some(t) => &t[phase as usize * taps..(phase as usize + 1) * taps],
            None => {
                for (j, w) in kernel.iter_mut().enumerate() {
                    *w = weight(phase, j);
                }
                &kernel
            }
        };
        // Clip the kernel to the input's bounds.
        let first = (index + 1).saturating_sub(reach);
        let skip = first + reach - 1 - index;
        let last = (index + reach).min(samples.len() - 1);
        let (mut acc, mut norm) = (0f32, 0f32);
        if first <= last {
            for (w, &s) in kernel[skip..].iter().zip(&samples[first..=last]) {
                acc += w * s;
                norm += w;
            }
        }
        // Normalising by the kernel sum keeps unity DC gain, also at the edges.
        out.push(if norm.abs() > 1e-6 { acc / norm } else { 0.0 });
    }
    out
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Blackman window on `[-1, 1]`, zero outside.
fn blackman(u: f64) -> f64 {
    if u.abs() >= 1.0 {
        return 0.0;
    }
    let a = std::f64::consts::PI * u;
    0.42 + 0.5 * a.cos() + 0.08 * (2.0 * a).cos()
}

// ---------------------------------------------------------------------------
// Word error rate
// ---------------------------------------------------------------------------

/// Lower-cases and splits into words; punctuation separates words, except
/// apostrophes, which are dropped (`"don't"` → `"dont"`).
fn normalise_words(text: &str) -> Vec<String> {
    let cleaned: String = text
        .chars()
        .filter(|&c| c != '\'' && c != '\u{2019}')
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    cleaned.split_whitespace().map(str::to_owned).collect()
}

/// Word error rate of `hypothesis` against `reference`: word-level Levenshtein
/// distance (substitutions + deletions + insertions) divided by the number of
/// reference words, after lower-casing and removing punctuation.
///
/// An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
/// The result can exceed 1.0 when the hypothesis has many insertions.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = normalise_words(reference);
    let h = normalise_words(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    // Single-row dynamic programme over hypothesis positions.
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let substitution = diag + usize::from(rw != hw);
            diag = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diag + 1);
        }
    }
    row[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8], extra: &[u8]) -> Vec<u8> {
        let block = channels * (bits / 8);
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        fmt.extend_from_slice(&block.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        let mut body = Vec::new();
        body.extend_from_slice(b"WAVE");
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        body.extend_from_slice(&fmt);
        body.extend_from_slice(extra);
        body.extend_from_slice(b"data");
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn reads_pcm16_mono() {
        let data: Vec<u8> = [0i16, 16_384, -32_768, 32_767]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let (s, rate, ch) = read_wav(&wav(1, 1, 22_050, 16, &data, &[])).expect("valid");
        assert_eq!((rate, ch), (22_050, 1));
        assert_eq!(s, vec![0.0, 0.5, -1.0, 32_767.0 / 32_768.0]);
    }

    #[test]
    fn downmixes_float_stereo_and_skips_unknown_chunks() {
        let data: Vec<u8> = [0.5f32, -0.5, 1.0, 0.0]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        // An odd-sized LIST chunk with its pad byte.
        let extra = [b"LIST".as_slice(), &3u32.to_le_bytes(), b"abc", &[0]].concat();
        let (s, rate, ch) = read_wav(&wav(3, 2, 48_000, 32, &data, &extra)).expect("valid");
        assert_eq!((rate, ch), (48_000, 2));
        assert_eq!(s, vec![0.0, 0.5]);
    }

    #[test]
    fn rejects_malformed_wavs() {
        assert_eq!(read_wav(b""), Err(WavError::NotWave));
        assert_eq!(read_wav(b"RIFF\0\0\0\0WAVX"), Err(WavError::NotWave));
        assert_eq!(read_wav(b"RIFF\0\0\0\0WAVE"), Err(WavError::MissingFormat));
        let data = [0u8; 8];
        let good = wav(1, 1, 16_000, 16, &data, &[]);
        // Truncated data chunk.
        assert!(matches!(
            read_wav(&good[..good.len() - 3]),
            Err(WavError::Truncated { .. })
        ));
        // Every prefix either parses or errors; never panics.
        for cut in 0..good.len() {
            let _ = read_wav(&good[..cut]);
        }
        assert!(matches!(
            read_wav(&wav(1, 1, 16_000, 24, &data, &[])),
            Err(WavError::Unsupported(_))
        ));
        assert!(matches!(
            read_wav(&wav(1, 0, 16_000, 16, &data, &[])),
            Err(WavError::BadFormat(_))
        ));
        assert!(matches!(
            read_wav(&wav(1, 1, 0, 16, &data, &[])),
            Err(WavError::BadFormat(_))
        ));
        // Huge declared chunk size.
        let mut huge = good.clone();
        let at = huge.len() - data.len() - 4;
        huge[at..at + 4].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert!(matches!(read_wav(&huge), Err(WavError::Truncated { .. })));
    }

    #[test]
    fn resample_preserves_a_low_tone() {
        let rate = 22_050u32;
        let tone: Vec<f32> = (0..rate)
            .map(|i| {
                (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / f64::from(rate)).sin() as f32
            })
            .collect();
        let out = resample_to_16k(&tone, rate);
        assert_eq!(out.len(), 16_000);
        // Compare away from the edges with the ideal 16 kHz tone.
        let max_err = (200..15_800)
            .map(|n| {
                let ideal = (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 16_000.0).sin() as f32;
                (out[n] - ideal).abs()
            })
            .fold(0f32, f32::max);
        assert!(max_err < 1e-3, "max error {max_err}");
    }

    #[test]
    fn resample_removes_content_above_new_nyquist() {
        let rate = 44_100u32;
        let tone: Vec<f32> = (0..rate)
            .map(|i| {
                (2.0 * std::f64::consts::PI * 12_000.0 * f64::from(i) / f64::from(rate)).sin()
                    as f32
            })
            .collect();
        let out = resample_to_16k(&tone, rate);
        let rms = (out[200..15_800].iter().map(|s| s * s).sum::<f32>() / 15_600.0).sqrt();
        assert!(rms < 0.01, "aliased energy {rms}");
        assert_eq!(resample_to_16k(&tone[..10], 16_000), tone[..10].to_vec());
        // Odd rate (no phase table for short input) and upsampling keep a DC level.
        for rate in [44_101u32, 8_000, 11_025] {
            let out = resample_to_16k(&[0.5; 300], rate);
            assert!(
                out.iter().all(|v| (v - 0.5).abs() < 1e-3),
                "rate {rate}: {out:?}"
            );
        }
        assert!(resample_to_16k(&tone, 0).is_empty());
    }

    #[test]
    fn wer_counts_edits_after_normalising() {
        assert_eq!(word_error_rate("Hello, World!", "hello world"), 0.0);
        assert_eq!(word_error_rate("a b c d", "a x c d"), 0.25);
        assert_eq!(word_error_rate("a b c d", "a c d"), 0.25);
        assert_eq!(word_error_rate("a b", "a b c d"), 1.0);
        assert_eq!(word_error_rate("Don't stop", "dont stop"), 0.0);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "x"), 1.0);
        assert_eq!(word_error_rate("x y", ""), 1.0);
    }

    #[test]
    fn confidence_is_duration_weighted() {
        let seg = |start_ms, end_ms, confidence| Segment {
            start_ms,
            end_ms,
            text: String::new(),
            confidence,
            no_speech_prob: 0.0,
        };
        let c = weighted_confidence(&[seg(0, 3000, 1.0), seg(3000, 4000, 0.0)]);
        assert!((c - 0.75).abs() < 1e-6);
        assert_eq!(weighted_confidence(&[]), 0.0);
    }
}
