//! The envelope and its canonical encoding (wire version 1).
//!
//! ```text
//! offset  size     field
//! 0       4        magic "FMEV"
//! 4       1        wire version (1)
//! 5       1        kind
//! 6       1        precedence (0 routine .. 3 flash)
//! 7       1        flags (reserved, must be 0)
//! 8       32       compartment id
//! 40      32       channel id
//! 72      32       author node id (Ed25519 public key)
//! 104     8        hybrid logical clock, big-endian
//! 112     4        compartment key epoch, big-endian
//! 116     2        number of causal deps n (<= MAX_DEPS), big-endian
//! 118     32*n     causal deps (envelope ids, strictly ascending)
//! ..      12       AEAD nonce
//! ..      4        payload length m (<= MAX_PAYLOAD_BYTES), big-endian
//! ..      m        payload: AEAD ciphertext and tag
//! ..      64       Ed25519 signature over "fieldmesh/envelope/v1" || id
//! ```
//!
//! The id is SHA-256 of every byte before the signature. There is exactly one encoding of
//! each envelope's content (fixed widths, sorted deps, no optional fields), so the id is
//! canonical.
//!
//! An envelope signed as part of a batch (see [`UnsignedEnvelope::sign_batch`]) carries,
//! after a signature over the batch instead, its proof of membership:
//!
//! ```text
//! ..      64       Ed25519 signature over "fieldmesh/envelope-batch/v1" || n || root
//! ..      2        index of this envelope in the batch, big-endian
//! ..      2        n, envelopes in the batch (2 ..= MAX_BATCH), big-endian
//! ..      32*d     audit path from this envelope's leaf to the root (d fixed by index, n)
//! ```
//!
//! The signature and proof authenticate the content; they are not part of it or of the
//! id. Releases before batches refuse such an envelope as a length mismatch.

use crate::{ChannelId, CompartmentId, EnvelopeId, Hlc, NodeId, Precedence, sha256};
use thiserror::Error;

/// The wire version this build writes and the newest it reads.
pub const WIRE_VERSION: u8 = 1;
/// Length of the AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Most causal dependencies one envelope may name.
pub const MAX_DEPS: usize = 64;
/// Largest payload (ciphertext with tag). Larger content travels as chunked blobs.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Largest encoded envelope.
pub const MAX_ENVELOPE_BYTES: usize = FIXED_HEADER
    + 32 * MAX_DEPS
    + NONCE_LEN
    + 4
    + MAX_PAYLOAD_BYTES
    + SIGNATURE_LEN
    + crate::batch::MAX_PROOF_BYTES;

const MAGIC: &[u8; 4] = b"FMEV";
const FIXED_HEADER: usize = 118;
const SIGNING_DOMAIN: &[u8] = b"fieldmesh/envelope/v1";

/// What an envelope carries. Unknown kinds are kept and forwarded, never rejected, so
/// that old relays carry new traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind(pub u8);

impl Kind {
    /// The first envelope of a channel: its genesis Automerge change.
    pub const CHANNEL_GENESIS: Kind = Kind(1);
    /// Later Automerge changes of a channel.
    pub const CHANNEL_CHANGE: Kind = Kind(2);
    /// One chunk of an attachment (a content-addressed blob) in a channel.
    pub const BLOB_CHUNK: Kind = Kind(3);
    /// A credential published to the directory.
    pub const CREDENTIAL: Kind = Kind(16);
    /// A compartment's definition: name, policy, admins.
    pub const COMPARTMENT: Kind = Kind(17);
    /// A compartment key rotation (a new epoch), with who is revoked.
    pub const ROTATION: Kind = Kind(18);
    /// An epoch key sealed to one member.
    pub const KEY_GRANT: Kind = Kind(19);

    /// Whether the payload is an Automerge change of the channel document.
    pub fn is_channel_change(self) -> bool {
        self == Kind::CHANNEL_GENESIS || self == Kind::CHANNEL_CHANGE
    }

    /// Whether the payload is a directory record (credentials, compartments, keys).
    pub fn is_directory(self) -> bool {
        (16..=19).contains(&self.0)
    }
}

/// Everything in an envelope but the payload, the nonce and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub kind: Kind,
    /// How urgent.
    pub precedence: Precedence,
    /// Whose keys seal the payload.
    pub compartment: CompartmentId,
    /// Which compartment key epoch sealed it (0 for the open compartment).
    pub epoch: u32,
    /// The channel it belongs to.
    pub channel: ChannelId,
    /// Who signed it.
    pub author: NodeId,
    /// When, by the author's hybrid logical clock.
    pub hlc: Hlc,
    /// Envelopes this one causally follows, strictly ascending, at most [`MAX_DEPS`].
    pub deps: Vec<EnvelopeId>,
}

impl Header {
    /// Canonical bytes of the header: also the AEAD associated data, so that a payload
    /// cannot be moved under another header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER + 32 * self.deps.len());
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.kind.0);
        out.push(self.precedence.as_u8());
        out.push(0);
        out.extend_from_slice(&self.compartment.0);
        out.extend_from_slice(&self.channel.0);
        out.extend_from_slice(&self.author.0);
        out.extend_from_slice(&self.hlc.0.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&(self.deps.len() as u16).to_be_bytes());
        for d in &self.deps {
            out.extend_from_slice(&d.0);
        }
    }

    fn check(&self) -> Result<(), DecodeError> {
        if self.deps.len() > MAX_DEPS {
            return Err(DecodeError::TooManyDeps(self.deps.len()));
        }
        if !self.deps.windows(2).all(|w| w[0] < w[1]) {
            return Err(DecodeError::DepsNotSorted);
        }
        Ok(())
    }
}

/// A sealed payload: nonce and AEAD ciphertext with tag. Produced by `fieldmesh-crypto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPayload {
    /// The AEAD nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: Vec<u8>,
}

/// Signs envelope ids. Implemented by the node key in `fieldmesh-crypto`.
pub trait Signer {
    /// The public key that verifies this signer's signatures.
    fn node_id(&self) -> NodeId;
    /// An Ed25519 signature over `msg`.
    fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN];
}

/// The bytes an author signs for envelope `id`.
pub fn signing_message(id: &EnvelopeId) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + 32);
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(&id.0);
    m
}

/// An envelope before its author's signature.
#[derive(Debug, Clone)]
pub struct UnsignedEnvelope {
    /// The header.
    pub header: Header,
    /// The sealed payload.
    pub payload: SealedPayload,
}

/// Building or signing an envelope failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignError {
    /// The header does not satisfy the wire format's limits.
    #[error("invalid envelope: {0}")]
    Invalid(#[from] DecodeError),
    /// The signer's key is not the header's author.
    #[error("signer {signer} is not the envelope author {author}")]
    WrongSigner {
        /// The key that tried to sign.
        signer: NodeId,
        /// The author named in the header.
        author: NodeId,
    },
}

impl UnsignedEnvelope {
    /// Signs with `signer` (who must be the header's author) and returns the envelope,
    /// verified exactly as a receiver would verify it.
    pub fn sign(self, signer: &dyn Signer) -> Result<Envelope, SignError> {
        let mut wire = self.content(signer)?;
        let id = EnvelopeId(sha256(&wire));
        let sig = signer.sign(&signing_message(&id));
        wire.extend_from_slice(&sig);
        Ok(Envelope::decode(&wire)?)
    }

    /// Signs many envelopes with one signature over a Merkle tree of their ids, in
    /// batches of at most [`MAX_BATCH`](crate::MAX_BATCH) (a lone envelope is signed
    /// alone). Each envelope is verified exactly as a receiver would verify it.
    pub fn sign_batch(
        envelopes: Vec<UnsignedEnvelope>,
        signer: &dyn Signer,
    ) -> Result<Vec<Envelope>, SignError> {
        let mut out = Vec::with_capacity(envelopes.len());
        let mut rest = envelopes.into_iter().peekable();
        while rest.peek().is_some() {
            let group: Vec<UnsignedEnvelope> = rest.by_ref().take(crate::MAX_BATCH).collect();
            if group.len() == 1 {
                for e in group {
                    out.push(e.sign(signer)?);
                }
                continue;
            }
            let wires = group
                .iter()
                .map(|e| e.content(signer))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<[u8; 32]> = wires.iter().map(|w| sha256(w)).collect();
            let (root, paths) = crate::batch::tree(&ids);
            let n = wires.len();
            let sig = signer.sign(&crate::batch::batch_message(n, &root));
            for (i, (mut wire, path)) in wires.into_iter().zip(paths).enumerate() {
                wire.extend_from_slice(&sig);
                wire.extend_from_slice(&(i as u16).to_be_bytes());
                wire.extend_from_slice(&(n as u16).to_be_bytes());
                path.iter().for_each(|h| wire.extend_from_slice(h));
                out.push(Envelope::decode(&wire)?);
            }
        }
        Ok(out)
    }

    /// The checked content bytes (everything the id covers).
    fn content(&self, signer: &dyn Signer) -> Result<Vec<u8>, SignError> {
        self.header.check()?;
        if self.payload.ciphertext.len() > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::PayloadTooLarge(self.payload.ciphertext.len()).into());
        }
        if signer.node_id() != self.header.author {
            return Err(SignError::WrongSigner {
                signer: signer.node_id(),
                author: self.header.author,
            });
        }
        let mut wire = self.header.encode();
        wire.extend_from_slice(&self.payload.nonce);
        wire.extend_from_slice(&(self.payload.ciphertext.len() as u32).to_be_bytes());
        wire.extend_from_slice(&self.payload.ciphertext);
        Ok(wire)
    }
}

/// Decoding or verifying an envelope failed. Every variant means the bytes are rejected
/// whole; nothing of them is stored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the smallest envelope.
    #[error("envelope truncated: {0} bytes")]
    Truncated(usize),
    /// More bytes than the largest envelope.
    #[error("envelope too large: {0} bytes (limit {MAX_ENVELOPE_BYTES})")]
    TooLarge(usize),
    /// The bytes do not start with the envelope magic.
    #[error("not a Fieldmesh envelope (bad magic)")]
    BadMagic,
    /// Written by a newer version of Fieldmesh.
    #[error("envelope wire version {found} is newer than supported version {supported}")]
    UnsupportedVersion {
        /// Version in the bytes.
        found: u8,
        /// Newest version this build reads.
        supported: u8,
    },
    /// Precedence byte out of range.
    #[error("unknown precedence value {0}")]
    BadPrecedence(u8),
    /// Reserved flags set.
    #[error("reserved flags set: {0:#04x}")]
    ReservedFlags(u8),
    /// More causal deps than allowed.
    #[error("too many causal deps: {0} (limit {MAX_DEPS})")]
    TooManyDeps(usize),
    /// Causal deps not strictly ascending (so the encoding would not be canonical).
    #[error("causal deps are not strictly ascending")]
    DepsNotSorted,
    /// Payload larger than allowed.
    #[error("payload too large: {0} bytes (limit {MAX_PAYLOAD_BYTES})")]
    PayloadTooLarge(usize),
    /// Length fields and byte count disagree.
    #[error("envelope length mismatch: fields say {expected} bytes, got {actual}")]
    LengthMismatch {
        /// Length implied by the fields.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The content hash is not the id it was stored or announced under.
    #[error("envelope id mismatch: expected {expected}, content hashes to {actual}")]
    IdMismatch {
        /// Id it was announced or stored under.
        expected: EnvelopeId,
        /// Id of the content.
        actual: EnvelopeId,
    },
    /// The proof of membership in a signed batch is malformed.
    #[error("malformed batch proof: {0}")]
    BadBatchProof(String),
    /// The signature does not verify under the author's key (forged or corrupted).
    #[error("bad signature: envelope {id} is not signed by its author {author}")]
    BadSignature {
        /// Id of the content.
        id: EnvelopeId,
        /// Claimed author.
        author: NodeId,
    },
}

/// Checks the shape of a batch proof (not what it proves): index and size in range, and
/// exactly as many hashes as that position's audit path has.
fn check_proof(proof: &[u8]) -> Result<(), DecodeError> {
    let bad = |why: &str| Err(DecodeError::BadBatchProof(why.to_owned()));
    if proof.len() < 4 {
        return bad("shorter than its index and size");
    }
    let (index, n) = (
        usize::from(be_u16(&proof[..2])),
        usize::from(be_u16(&proof[2..4])),
    );
    if !(2..=crate::MAX_BATCH).contains(&n) {
        return bad("batch size out of range");
    }
    if index >= n {
        return bad("index beyond the batch");
    }
    if proof.len() - 4 != 32 * crate::batch::depth(index, n) {
        return bad("audit path of the wrong length");
    }
    Ok(())
}

/// A verified envelope: its id is the hash of its content and its author signed it.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    id: EnvelopeId,
    header: Header,
    payload_start: usize,
    payload_len: usize,
    wire: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("kind", &self.header.kind)
            .field("precedence", &self.header.precedence)
            .field("channel", &self.header.channel)
            .field("author", &self.header.author)
            .field("hlc", &self.header.hlc)
            .field("payload_len", &self.payload_len)
            .finish()
    }
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn arr32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}

impl Envelope {
    /// Decodes and verifies: structure, limits, id and the author's signature.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        Self::check_len(bytes.len())?;
        Self::decode_owned(bytes.to_vec())
    }

    /// As [`Envelope::decode`], keeping `bytes` as the envelope's encoding instead of
    /// copying them (what arrives from a peer is verified and stored without a copy).
    pub fn decode_owned(bytes: Vec<u8>) -> Result<Envelope, DecodeError> {
        let env = Self::parse(bytes)?;
        let author = &env.header.author.0;
        let authentic = match env.batch_proof() {
            None => crate::ed25519::verify(author, &signing_message(&env.id), env.signature()),
            // The proof's shape was checked by `parse`, so a root always comes out.
            Some((index, n, path)) => crate::batch::root_from_path(&env.id.0, index, n, &path)
                .is_some_and(|root| crate::batch::verify(author, n, &root, env.signature())),
        };
        if !authentic {
            return Err(DecodeError::BadSignature {
                id: env.id,
                author: env.header.author,
            });
        }
        Ok(env)
    }

    /// Decodes and verifies, and checks that the content hashes to `expected`.
    pub fn decode_expecting(bytes: &[u8], expected: &EnvelopeId) -> Result<Envelope, DecodeError> {
        let env = Self::decode(bytes)?;
        env.check_id(expected)?;
        Ok(env)
    }

    /// Decodes bytes this node verified before and stored itself: checks structure and
    /// that the content hashes to `expected` (which catches disk corruption), but skips
    /// the signature check. Never use it on bytes from the network.
    pub fn decode_stored(bytes: &[u8], expected: &EnvelopeId) -> Result<Envelope, DecodeError> {
        Self::check_len(bytes.len())?;
        let env = Self::parse(bytes.to_vec())?;
        env.check_id(expected)?;
        Ok(env)
    }

    fn check_id(&self, expected: &EnvelopeId) -> Result<(), DecodeError> {
        if &self.id != expected {
            return Err(DecodeError::IdMismatch {
                expected: *expected,
                actual: self.id,
            });
        }
        Ok(())
    }

    /// Refuses a length over the limit before anything is copied.
    fn check_len(n: usize) -> Result<(), DecodeError> {
        if n > MAX_ENVELOPE_BYTES {
            return Err(DecodeError::TooLarge(n));
        }
        Ok(())
    }

    fn parse(bytes: Vec<u8>) -> Result<Envelope, DecodeError> {
        let n = bytes.len();
        Self::check_len(n)?;
        if n < FIXED_HEADER + NONCE_LEN + 4 + SIGNATURE_LEN {
            return Err(DecodeError::Truncated(n));
        }
        if &bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if bytes[4] != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: bytes[4],
                supported: WIRE_VERSION,
            });
        }
        let kind = Kind(bytes[5]);
        let precedence =
            Precedence::from_u8(bytes[6]).ok_or(DecodeError::BadPrecedence(bytes[6]))?;
        if bytes[7] != 0 {
            return Err(DecodeError::ReservedFlags(bytes[7]));
        }
        let ndeps = usize::from(be_u16(&bytes[116..118]));
        if ndeps > MAX_DEPS {
            return Err(DecodeError::TooManyDeps(ndeps));
        }
        let deps_end = FIXED_HEADER + 32 * ndeps;
        let len_at = deps_end + NONCE_LEN;
        if n < len_at + 4 + SIGNATURE_LEN {
            return Err(DecodeError::Truncated(n));
        }
        let payload_len = be_u32(&bytes[len_at..len_at + 4]) as usize;
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::PayloadTooLarge(payload_len));
        }
        let payload_start = len_at + 4;
        let expected = payload_start + payload_len + SIGNATURE_LEN;
        if n < expected {
            return Err(DecodeError::LengthMismatch {
                expected,
                actual: n,
            });
        }
        if n > expected {
            check_proof(&bytes[expected..])?;
        }
        let deps = bytes[FIXED_HEADER..deps_end]
            .chunks_exact(32)
            .map(|c| EnvelopeId(arr32(c)))
            .collect();
        let header = Header {
            kind,
            precedence,
            compartment: CompartmentId(arr32(&bytes[8..40])),
            channel: ChannelId(arr32(&bytes[40..72])),
            author: NodeId(arr32(&bytes[72..104])),
            hlc: Hlc(u64::from_be_bytes(
                bytes[104..112].try_into().expect("8 bytes"),
            )),
            epoch: be_u32(&bytes[112..116]),
            deps,
        };
        header.check()?;
        let id = EnvelopeId(sha256(&bytes[..payload_start + payload_len]));
        // Signed alone or in a batch, the content and so the id are the same.
        Ok(Envelope {
            id,
            header,
            payload_start,
            payload_len,
            wire: bytes,
        })
    }

    /// The content id.
    pub fn id(&self) -> EnvelopeId {
        self.id
    }
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The sealed payload (ciphertext and tag).
    pub fn ciphertext(&self) -> &[u8] {
        &self.wire[self.payload_start..self.payload_start + self.payload_len]
    }
    /// The AEAD nonce.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        let at = self.payload_start - 4 - NONCE_LEN;
        self.wire[at..at + NONCE_LEN]
            .try_into()
            .expect("nonce length")
    }
    /// The header bytes, which are the AEAD associated data.
    pub fn aad(&self) -> &[u8] {
        &self.wire[..self.payload_start - 4 - NONCE_LEN]
    }
    /// The author's signature (of this envelope alone, or of its batch).
    pub fn signature(&self) -> &[u8] {
        let at = self.payload_start + self.payload_len;
        &self.wire[at..at + SIGNATURE_LEN]
    }
    /// Whether it was signed as part of a batch (and carries its proof of membership).
    pub fn is_batch_signed(&self) -> bool {
        self.wire.len() > self.payload_start + self.payload_len + SIGNATURE_LEN
    }
    /// Index, batch size and audit path, if it was signed as part of a batch.
    fn batch_proof(&self) -> Option<(usize, usize, Vec<[u8; 32]>)> {
        let proof = &self.wire[self.payload_start + self.payload_len + SIGNATURE_LEN..];
        if proof.len() < 4 {
            return None;
        }
        let path = proof[4..].chunks_exact(32).map(arr32).collect();
        Some((
            usize::from(be_u16(&proof[..2])),
            usize::from(be_u16(&proof[2..4])),
            path,
        ))
    }
    /// The canonical encoding: exactly the bytes that were decoded or signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.wire
    }
    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        self.wire.len()
    }
}

#[cfg(test)]
mod tests;
