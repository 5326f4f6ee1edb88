//! Sealing a short secret to one node, knowing only its node id.
//!
//! A node id is an Ed25519 public key. Its X25519 counterpart is the birational image of
//! the Edwards point on the Montgomery curve, and the matching secret scalar is the
//! clamped first half of SHA-512 of the Ed25519 seed (RFC 8032), the same conversion
//! libsodium and age's ssh-ed25519 recipients use. So a key grant can be addressed to any
//! node id seen on a credential, without a second key to publish or to trust.
//!
//! Construction (an ECIES in the shape of HPKE base mode):
//!
//! ```text
//! e            random 32 bytes;  E = X25519(e, 9)
//! shared       X25519(e, R)      (rejected if all zero: R has small order)
//! key          HKDF-SHA256(salt "fieldmesh/sealbox/v1", ikm shared,
//!                          info E || R || context)
//! box          E || ChaCha20-Poly1305(key, nonce 0, aad context, secret)
//! ```
//!
//! The key is fresh for every box (a fresh `e`), so the constant nonce never repeats under
//! one key. `context` binds the box to what it is for (compartment, epoch, recipient):
//! a box cannot be replayed into another grant.

use crate::NodeKey;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;
use fieldmesh_core::NodeId;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest;
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Bytes a box adds to its secret: the ephemeral public key and the AEAD tag.
pub const SEALBOX_OVERHEAD: usize = 32 + 16;

/// Sealing or opening a box failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealBoxError {
    /// The recipient id is not a valid Ed25519 point, or has small order.
    #[error("node id {0} is not a usable public key")]
    BadRecipient(String),
    /// The system random source failed.
    #[error("system random number generator failed")]
    Rng,
    /// The box is shorter than its fixed overhead.
    #[error("sealed box is {0} bytes; it cannot be shorter than {SEALBOX_OVERHEAD}")]
    Truncated(usize),
    /// The box does not open with this node's key: it was sealed to another key, for
    /// another purpose, or altered.
    #[error("sealed box does not open with this node's key: sealed to another key, or altered")]
    WrongKey,
}

fn montgomery_of(node: &NodeId) -> Result<MontgomeryPoint, SealBoxError> {
    let point = CompressedEdwardsY(node.0)
        .decompress()
        .ok_or_else(|| SealBoxError::BadRecipient(node.short()))?;
    if point.is_small_order() {
        return Err(SealBoxError::BadRecipient(node.short()));
    }
    Ok(point.to_montgomery())
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn aead_key(
    shared: &[u8; 32],
    eph: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> LessSafeKey {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fieldmesh/sealbox/v1");
    let prk = salt.extract(shared);
    let info = [&eph[..], &recipient[..], context];
    let okm = prk
        .expand(&info, Len32)
        .expect("32 bytes is within HKDF's limit");
    let mut key = [0u8; 32];
    okm.fill(&mut key).expect("32 bytes is within HKDF's limit");
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-byte key"))
}

/// Seals `secret` so that only the holder of `recipient`'s node key can open it.
pub fn seal_to(recipient: &NodeId, context: &[u8], secret: &[u8]) -> Result<Vec<u8>, SealBoxError> {
    let r = montgomery_of(recipient)?;
    let mut e = [0u8; 32];
    SystemRandom::new()
        .fill(&mut e)
        .map_err(|_| SealBoxError::Rng)?;
    let eph = MontgomeryPoint::mul_base_clamped(e);
    let shared = r.mul_clamped(e);
    if shared.0 == [0u8; 32] {
        return Err(SealBoxError::BadRecipient(recipient.short()));
    }
    let key = aead_key(&shared.0, &eph.0, &r.0, context);
    let mut buf = secret.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(context),
        &mut buf,
    )
    .expect("chacha20-poly1305 seal cannot fail for in-range lengths");
    let mut out = Vec::with_capacity(32 + buf.len());
    out.extend_from_slice(&eph.0);
    out.extend_from_slice(&buf);
    Ok(out)
}

impl NodeKey {
    fn x25519_scalar(&self) -> [u8; 32] {
        let h = digest::digest(&digest::SHA512, &self.transport_seed());
        let mut s = [0u8; 32];
        s.copy_from_slice(&h.as_ref()[..32]);
        s
    }

    /// Opens a box sealed to this node with [`seal_to`] under the same `context`.
    pub fn open_sealed(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealBoxError> {
        if sealed.len() < SEALBOX_OVERHEAD {
            return Err(SealBoxError::Truncated(sealed.len()));
        }
        let eph: [u8; 32] = sealed[..32].try_into().expect("32");
        let shared = MontgomeryPoint(eph).mul_clamped(self.x25519_scalar());
        if shared.0 == [0u8; 32] {
            return Err(SealBoxError::WrongKey);
        }
        let me = montgomery_of(&self.node_id())?;
        let key = aead_key(&shared.0, &eph, &me.0, context);
        let mut buf = sealed[32..].to_vec();
        let n = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| SealBoxError::WrongKey)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_and_only_in_context() {
        let alice = NodeKey::from_seed([1; 32]);
        let bob = NodeKey::from_seed([2; 32]);
        let b = seal_to(&alice.node_id(), b"ctx", b"epoch key bytes").unwrap();
        assert_eq!(b.len(), 15 + SEALBOX_OVERHEAD);
        assert_eq!(alice.open_sealed(b"ctx", &b).unwrap(), b"epoch key bytes");
        assert_eq!(bob.open_sealed(b"ctx", &b), Err(SealBoxError::WrongKey));
        assert_eq!(alice.open_sealed(b"other", &b), Err(SealBoxError::WrongKey));
        let mut t = b.clone();
        t[40] ^= 1;
        assert_eq!(alice.open_sealed(b"ctx", &t), Err(SealBoxError::WrongKey));
        assert_eq!(
            alice.open_sealed(b"ctx", &b[..20]),
            Err(SealBoxError::Truncated(20))
        );
        // Fresh ephemeral key every time.
        assert_ne!(
            b,
            seal_to(&alice.node_id(), b"ctx", b"epoch key bytes").unwrap()
        );
    }

    #[test]
    fn the_converted_public_key_matches_the_secret() {
        for seed in 0..20u8 {
            let k = NodeKey::from_seed([seed; 32]);
            let from_secret = MontgomeryPoint::mul_base_clamped(k.x25519_scalar());
            assert_eq!(from_secret, montgomery_of(&k.node_id()).unwrap());
        }
    }

    #[test]
    fn small_order_and_invalid_recipients_are_refused() {
        // The identity point (y = 1) has small order.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert!(matches!(
            seal_to(&NodeId(id), b"", b"x"),
            Err(SealBoxError::BadRecipient(_))
        ));
    }
}
