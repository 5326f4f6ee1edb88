//! On-device AI for Fieldmesh.
//!
//! Everything here that produces text for people carries its provenance and is checked
//! against its sources. The deterministic parts ([`facts`], [`triage`], [`sitrep`],
//! [`board`], [`search`]'s keyword side, [`translate`]'s rule-based fallback) need no
//! model and always run; the model runtimes ([`llm`], [`embed`], [`whisper`]) are given
//! only files the node has verified against a signed manifest.

pub mod board;
mod decoder;
pub mod embed;
pub mod facts;
pub mod llm;
mod qmm;

pub use qmm::kernel_bench;
pub mod search;
pub mod sitrep;
pub mod spm;
pub mod translate;
pub mod triage;
pub mod whisper;
