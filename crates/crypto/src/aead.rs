//! Payload sealing: ChaCha20-Poly1305 with a synthetic nonce and the header as AAD.

use crate::NodeKey;
use fieldmesh_core::{
    Envelope, Header, NONCE_LEN, SealedPayload, SignError, UnsignedEnvelope, sha256,
};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use thiserror::Error;

/// A 256-bit payload key: one compartment epoch's key.
#[derive(Clone)]
pub struct PayloadKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material; a fingerprint identifies it.
        write!(f, "PayloadKey({})", hex::encode(&sha256(&self.bytes)[..4]))
    }
}

impl PayloadKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PayloadKey {
        PayloadKey { bytes }
    }

    /// A fresh random key: a new compartment epoch.
    pub fn generate() -> Result<PayloadKey, crate::SealBoxError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| crate::SealBoxError::Rng)?;
        Ok(PayloadKey { bytes })
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The well-known key of the `open` compartment. It authenticates but hides nothing.
    pub fn open_compartment() -> PayloadKey {
        PayloadKey {
            bytes: sha256(b"fieldmesh/compartment/open/v1"),
        }
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.bytes).expect("32-byte key"))
    }

    fn synthetic_nonce(&self, aad: &[u8], plaintext: &[u8]) -> [u8; NONCE_LEN] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.bytes);
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(b"fieldmesh/nonce/v1");
        ctx.update(&(aad.len() as u64).to_be_bytes());
        ctx.update(aad);
        ctx.update(plaintext);
        let tag = ctx.sign();
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        n
    }

    /// Seals `plaintext` for `header`.
    pub fn seal(&self, header: &Header, plaintext: &[u8]) -> SealedPayload {
        let aad = header.encode();
        let nonce = self.synthetic_nonce(&aad, plaintext);
        let mut buf = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut buf,
            )
            .expect("chacha20-poly1305 seal cannot fail for in-range lengths");
        SealedPayload {
            nonce,
            ciphertext: buf,
        }
    }
}

/// Sealing and signing an envelope failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The envelope would break the wire format's limits, or the key is not the author's.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Opening a payload failed: the key is wrong or the ciphertext was altered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Authentication failed: wrong key, wrong epoch, or tampered bytes.
    #[error("cannot open payload of envelope {0}: wrong key or tampered ciphertext")]
    Authentication(fieldmesh_core::EnvelopeId),
}

/// Seals `plaintext` under `payload_key`, signs with `key`, and returns the envelope.
pub fn seal_envelope(
    key: &NodeKey,
    header: Header,
    payload_key: &PayloadKey,
    plaintext: &[u8],
) -> Result<Envelope, SealError> {
    let payload = payload_key.seal(&header, plaintext);
    Ok(UnsignedEnvelope { header, payload }.sign(key)?)
}

/// Seals many payloads and signs them together: one signature over a Merkle tree of
/// their ids (see [`UnsignedEnvelope::sign_batch`]), so that a receiver checks one
/// signature per batch instead of one per envelope. For attachment chunks.
pub fn seal_envelopes(
    key: &NodeKey,
    payload_key: &PayloadKey,
    items: impl IntoIterator<Item = (Header, Vec<u8>)>,
) -> Result<Vec<Envelope>, SealError> {
    let unsigned = items
        .into_iter()
        .map(|(header, plaintext)| UnsignedEnvelope {
            payload: payload_key.seal(&header, &plaintext),
            header,
        })
        .collect();
    Ok(UnsignedEnvelope::sign_batch(unsigned, key)?)
}

/// Opens an envelope's payload with `payload_key`.
pub fn open_envelope(env: &Envelope, payload_key: &PayloadKey) -> Result<Vec<u8>, OpenError> {
    let mut buf = env.ciphertext().to_vec();
    let n = payload_key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(env.nonce()),
            Aad::from(env.aad()),
            &mut buf,
        )
        .map_err(|_| OpenError::Authentication(env.id()))?
        .len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldmesh_core::{ChannelId, CompartmentId, Hlc, Kind, Precedence};

    fn header(key: &NodeKey, hlc: u64) -> Header {
        Header {
            kind: Kind::CHANNEL_CHANGE,
            precedence: Precedence::Flash,
            compartment: CompartmentId([3; 32]),
            epoch: 1,
            channel: ChannelId([1; 32]),
            author: key.node_id(),
            hlc: Hlc(hlc),
            deps: vec![],
        }
    }

    #[test]
    fn seal_open_and_wrong_key() {
        let k = NodeKey::from_seed([4; 32]);
        let pk = PayloadKey::from_bytes([9; 32]);
        let env = seal_envelope(&k, header(&k, 1), &pk, b"grid 38S MB 1234 5678").unwrap();
        assert_eq!(open_envelope(&env, &pk).unwrap(), b"grid 38S MB 1234 5678");
        assert!(
            !env.as_bytes().windows(4).any(|w| w == b"grid"),
            "plaintext leaked"
        );
        let err = open_envelope(&env, &PayloadKey::open_compartment()).unwrap_err();
        assert!(matches!(err, OpenError::Authentication(_)));
    }

    #[test]
    fn deterministic_and_nonce_depends_on_content() {
        let k = NodeKey::from_seed([4; 32]);
        let pk = PayloadKey::from_bytes([9; 32]);
        let a = seal_envelope(&k, header(&k, 1), &pk, b"same").unwrap();
        let b = seal_envelope(&k, header(&k, 1), &pk, b"same").unwrap();
        assert_eq!(a.id(), b.id());
        let c = seal_envelope(&k, header(&k, 2), &pk, b"same").unwrap();
        assert_ne!(a.nonce(), c.nonce());
        let d = seal_envelope(&k, header(&k, 1), &pk, b"diff").unwrap();
        assert_ne!(a.nonce(), d.nonce());
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let s = format!("{:?}", PayloadKey::from_bytes([0xab; 32]));
        assert!(!s.contains("abab"), "{s}");
    }
}
