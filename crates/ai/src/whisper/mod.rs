//! Speech to text with Whisper through whisper.cpp (whisper-rs), and the conversion of
//! CTranslate2 Whisper models (what the registries carry) into whisper.cpp's format.

pub mod convert;
pub mod transcribe;

pub use transcribe::{
    Segment, TranscribeError, Transcriber, Transcript, WavError, read_wav, resample_to_16k,
    word_error_rate,
};
