//! Fieldmesh sync, without I/O: reconciliation of two peers' envelope sets and
//! precedence-first transfer of the difference within a byte budget.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: time comes in as an
//! argument (milliseconds), and every decision is a pure function of the inputs, so the
//! simulator drives exactly this code.
//!
//! * [`Index`]: the sorted set of envelope ids a node holds, with the metadata transfer
//!   scheduling needs (precedence, size, HLC).
//! * [`ranger`]: range-based set reconciliation. Each side splits the id space into
//!   ranges and compares fingerprints; equal ranges are done, small differing ranges are
//!   settled by listing ids. Rounds grow with the logarithm of the set size; bytes grow
//!   with the difference.
//! * [`TransferQueue`] and [`TokenBucket`]: what to send next, most urgent first, within
//!   the link's byte budget; urgent traffic that arrives later still goes first.
//! * [`frame`]: the wire codec, with a size cap on every frame.
//!
//! ```
//! use fieldmesh_core::{EnvelopeId, Hlc, Precedence};
//! use fieldmesh_sync::{Index, Meta, ranger::Reconciler};
//!
//! let meta = |i: u8| Meta { precedence: Precedence::Routine, size: 100, hlc: Hlc(u64::from(i)) };
//! let mut a = Index::default();
//! let mut b = Index::default();
//! for i in 0..50u8 { a.insert(EnvelopeId([i; 32]), meta(i)); b.insert(EnvelopeId([i; 32]), meta(i)); }
//! a.insert(EnvelopeId([200; 32]), meta(200)); // only A has it
//! b.insert(EnvelopeId([201; 32]), meta(201)); // only B has it
//!
//! let (a_needs, b_needs, rounds) = Reconciler::default().run_local(&a, &b, 10).unwrap();
//! assert_eq!(a_needs, vec![EnvelopeId([201; 32])]);
//! assert_eq!(b_needs, vec![EnvelopeId([200; 32])]);
//! assert!(rounds <= 3);
//! ```

pub mod engine;
pub mod frame;
mod index;
pub mod ranger;
pub mod riblt;
mod schedule;

pub use index::{Fingerprint, Index, Meta};
pub use schedule::{TokenBucket, TransferQueue};
