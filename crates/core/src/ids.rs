//! Identifiers: nodes, envelopes, channels, compartments.

use crate::hex32::id32;

id32!(
    /// A node: its Ed25519 public key. Also the author of every envelope it signs.
    NodeId,
    "node id"
);
id32!(
    /// An envelope: SHA-256 of its canonical encoding (everything but the signature).
    EnvelopeId,
    "envelope id"
);
id32!(
    /// A channel: SHA-256 over the creator, the name and the creation time
    /// (see `fieldmesh-channel`), so that a channel id commits to its creator.
    ChannelId,
    "channel id"
);
id32!(
    /// A compartment: the unit of access control. Payloads are sealed under its keys.
    CompartmentId,
    "compartment id"
);

impl CompartmentId {
    /// The `open` compartment: sealed under a well-known key, readable by every node.
    pub const OPEN: CompartmentId = CompartmentId([0u8; 32]);
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = NodeId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<NodeId>().unwrap(), id);
        assert_eq!(id.short(), "abababab");
        let err = "abc".parse::<NodeId>().unwrap_err();
        assert!(err.to_string().contains("64 hex"), "{err}");
        let err = "zz".repeat(32).parse::<ChannelId>().unwrap_err();
        assert!(err.to_string().contains("not valid hex"), "{err}");
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
