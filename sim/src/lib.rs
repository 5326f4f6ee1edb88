//! `fieldmesh-sim`: a deterministic discrete-event simulator of DDIL networks that drives
//! the real `fieldmesh-sync` engine over in-memory stores.
//!
//! * [`scenario`]: scenario files and their expansion with a seed.
//! * [`world`]: the event loop (links, group commit, crashes, hostile nodes).
//! * [`bound`]: the earliest-arrival lower bound through the contact graph.
//! * [`report`]: safety and liveness checks, metrics, the plot.
//! * [`impair`]: a UDP impairment proxy for the second tier: real processes, bad links.
//!
//! A run is a pure function of (scenario, seed): one seeded generator per purpose,
//! events ordered by (time, sequence), no hash-map iteration, no wall clock. Envelopes
//! are real: Ed25519-signed, sealed, Automerge channel changes.

pub mod bound;
pub mod impair;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod world;

pub use report::{Report, run};
pub use scenario::Scenario;
