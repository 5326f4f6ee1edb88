//! libp2p networking for Fieldmesh.
pub use libp2p;
