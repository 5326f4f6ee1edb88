use super::*;
use proptest::prelude::*;

/// A test signer from a fixed seed, so these tests need no crypto crate.
struct TestSigner(ring::signature::Ed25519KeyPair);

impl TestSigner {
    fn new(seed: u8) -> TestSigner {
        TestSigner(ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap())
    }
}

impl Signer for TestSigner {
    fn node_id(&self) -> NodeId {
        use ring::signature::KeyPair;
        NodeId(arr32(self.0.public_key().as_ref()))
    }
    fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(msg).as_ref().try_into().unwrap()
    }
}

fn header(author: NodeId, deps: Vec<EnvelopeId>) -> Header {
    Header {
        kind: Kind::CHANNEL_CHANGE,
        precedence: Precedence::Immediate,
        compartment: CompartmentId::OPEN,
        epoch: 0,
        channel: ChannelId([7; 32]),
        author,
        hlc: Hlc::new(1_700_000_000_000, 3),
        deps,
    }
}

fn make(seed: u8, payload: Vec<u8>, deps: Vec<EnvelopeId>) -> Envelope {
    let s = TestSigner::new(seed);
    UnsignedEnvelope {
        header: header(s.node_id(), deps),
        payload: SealedPayload {
            nonce: [9; NONCE_LEN],
            ciphertext: payload,
        },
    }
    .sign(&s)
    .unwrap()
}

#[test]
fn round_trip_and_accessors() {
    let e = make(
        1,
        b"hello".to_vec(),
        vec![EnvelopeId([1; 32]), EnvelopeId([2; 32])],
    );
    let d = Envelope::decode(e.as_bytes()).unwrap();
    assert_eq!(d, e);
    // The network's path keeps the buffer it is given: same envelope.
    assert_eq!(Envelope::decode_owned(e.as_bytes().to_vec()).unwrap(), e);
    assert_eq!(d.ciphertext(), b"hello");
    assert_eq!(d.nonce(), [9; NONCE_LEN]);
    assert_eq!(d.header().deps.len(), 2);
    assert_eq!(d.aad(), &d.header().encode()[..]);
    assert_eq!(
        d.id(),
        EnvelopeId(sha256(&d.as_bytes()[..d.encoded_len() - 64]))
    );
}

#[test]
fn every_flipped_bit_is_rejected() {
    let e = make(2, b"payload bytes".to_vec(), vec![EnvelopeId([3; 32])]);
    let bytes = e.as_bytes();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.to_vec();
            b[i] ^= bit;
            assert!(
                Envelope::decode(&b).is_err(),
                "flip at byte {i} bit {bit:#x} accepted"
            );
            assert_eq!(
                Envelope::decode_owned(b.clone()).err(),
                Envelope::decode(&b).err(),
                "the owned decode disagrees at byte {i} bit {bit:#x}"
            );
        }
    }
}

#[test]
fn forged_author_is_rejected() {
    let e = make(3, b"orders".to_vec(), vec![]);
    let mut b = e.as_bytes().to_vec();
    // Claim another author but keep the signature: must fail.
    let other = TestSigner::new(4).node_id();
    b[72..104].copy_from_slice(&other.0);
    assert!(matches!(
        Envelope::decode(&b),
        Err(DecodeError::BadSignature { .. })
    ));
}

#[test]
fn wrong_signer_and_limits() {
    let s = TestSigner::new(5);
    let err = UnsignedEnvelope {
        header: header(TestSigner::new(6).node_id(), vec![]),
        payload: SealedPayload {
            nonce: [0; 12],
            ciphertext: vec![],
        },
    }
    .sign(&s)
    .unwrap_err();
    assert!(matches!(err, SignError::WrongSigner { .. }));

    let err = UnsignedEnvelope {
        header: header(s.node_id(), vec![EnvelopeId([2; 32]), EnvelopeId([1; 32])]),
        payload: SealedPayload {
            nonce: [0; 12],
            ciphertext: vec![],
        },
    }
    .sign(&s)
    .unwrap_err();
    assert_eq!(err, SignError::Invalid(DecodeError::DepsNotSorted));

    let err = UnsignedEnvelope {
        header: header(s.node_id(), vec![]),
        payload: SealedPayload {
            nonce: [0; 12],
            ciphertext: vec![0; MAX_PAYLOAD_BYTES + 1],
        },
    }
    .sign(&s)
    .unwrap_err();
    assert!(matches!(
        err,
        SignError::Invalid(DecodeError::PayloadTooLarge(_))
    ));
}

#[test]
fn newer_version_and_garbage_have_clear_errors() {
    let e = make(7, vec![1, 2, 3], vec![]);
    let mut b = e.as_bytes().to_vec();
    b[4] = 9;
    let err = Envelope::decode(&b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "envelope wire version 9 is newer than supported version 1"
    );
    assert_eq!(
        Envelope::decode(b"nope").unwrap_err(),
        DecodeError::Truncated(4)
    );
    assert_eq!(
        Envelope::decode(&[0u8; 300]).unwrap_err(),
        DecodeError::BadMagic
    );
    let huge = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert!(matches!(
        Envelope::decode(&huge),
        Err(DecodeError::TooLarge(_))
    ));
}

#[test]
fn stored_decode_checks_id() {
    let e = make(8, vec![5; 10], vec![]);
    assert!(Envelope::decode_stored(e.as_bytes(), &e.id()).is_ok());
    let err = Envelope::decode_stored(e.as_bytes(), &EnvelopeId([0; 32])).unwrap_err();
    assert!(matches!(err, DecodeError::IdMismatch { .. }));
}

proptest! {
    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Envelope::decode(&bytes);
    }

    /// Encode/decode round-trips and the encoded length is exact.
    #[test]
    fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..4096),
                  ndeps in 0usize..8, seed in 1u8..50) {
        let mut deps: Vec<EnvelopeId> = (0..ndeps).map(|i| EnvelopeId([i as u8; 32])).collect();
        deps.dedup();
        let e = make(seed, payload.clone(), deps.clone());
        prop_assert_eq!(e.encoded_len(), FIXED_HEADER + 32 * deps.len() + NONCE_LEN + 4 + payload.len() + SIGNATURE_LEN);
        let d = Envelope::decode(e.as_bytes()).unwrap();
        prop_assert_eq!(d.ciphertext(), &payload[..]);
        prop_assert_eq!(&d.header().deps, &deps);
        prop_assert_eq!(d, e);
    }
}

fn unsigned(s: &TestSigner, i: usize) -> UnsignedEnvelope {
    let mut h = header(s.node_id(), vec![]);
    h.kind = Kind::BLOB_CHUNK;
    h.hlc = Hlc::new(1_700_000_000_000 + i as u64, 0);
    UnsignedEnvelope {
        header: h,
        payload: SealedPayload {
            nonce: [i as u8; NONCE_LEN],
            ciphertext: format!("chunk {i}").into_bytes(),
        },
    }
}

#[test]
fn a_batch_signature_authenticates_each_envelope_on_its_own() {
    let s = TestSigner::new(5);
    for n in [1usize, 2, 3, 7, 64] {
        let envs =
            UnsignedEnvelope::sign_batch((0..n).map(|i| unsigned(&s, i)).collect(), &s).unwrap();
        assert_eq!(envs.len(), n);
        for (i, e) in envs.iter().enumerate() {
            // The same content and id as signed alone; only the authentication differs.
            let alone = unsigned(&s, i).sign(&s).unwrap();
            assert_eq!(e.id(), alone.id());
            assert_eq!(e.is_batch_signed(), n > 1);
            assert_eq!(Envelope::decode(e.as_bytes()).unwrap(), *e);
            assert_eq!(Envelope::decode_stored(e.as_bytes(), &e.id()).unwrap(), *e);
        }
        // One signature for the whole batch.
        assert!(envs.iter().all(|e| e.signature() == envs[0].signature()));
    }
}

#[test]
fn tampered_stripped_or_spliced_batch_proofs_are_rejected() {
    let s = TestSigner::new(6);
    let envs = UnsignedEnvelope::sign_batch((0..5).map(|i| unsigned(&s, i)).collect(), &s).unwrap();
    let other =
        UnsignedEnvelope::sign_batch((5..9).map(|i| unsigned(&s, i)).collect(), &s).unwrap();
    // The batch's signature is cached after the first check: every flipped bit anywhere,
    // proof included, must still be refused.
    for e in [&envs[0], &envs[4]] {
        let bytes = e.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            assert!(Envelope::decode(&b).is_err(), "flip at byte {i} accepted");
        }
    }
    let e = &envs[2];
    // Index 2 of 5 sits three levels down: a proof of 4 + 3 * 32 bytes.
    let sig_end = e.encoded_len() - (4 + 32 * crate::batch::depth(2, 5));
    assert_eq!(sig_end, unsigned(&s, 2).sign(&s).unwrap().encoded_len());
    // Proof stripped: the signature is over the batch, not over this id alone.
    let stripped = &e.as_bytes()[..sig_end];
    assert!(matches!(
        Envelope::decode(stripped),
        Err(DecodeError::BadSignature { .. })
    ));
    // A proof appended to an envelope signed alone.
    let alone = unsigned(&s, 2).sign(&s).unwrap();
    let mut b = alone.as_bytes().to_vec();
    b.extend_from_slice(&e.as_bytes()[sig_end..]);
    assert!(matches!(
        Envelope::decode(&b),
        Err(DecodeError::BadSignature { .. })
    ));
    // Another batch's signature and proof on this content.
    let mut b = e.as_bytes()[..sig_end - 64].to_vec();
    let other_proof = 4 + 32 * crate::batch::depth(2, 4);
    b.extend_from_slice(&other[2].as_bytes()[other[2].encoded_len() - (64 + other_proof)..]);
    assert!(Envelope::decode(&b).is_err());
    // Malformed proofs: clear errors, whatever the signature.
    for (proof, why) in [
        (vec![0u8, 1], "shorter"),
        (vec![0, 0, 0, 1], "size out of range"),
        (vec![0, 5, 0, 5], "index beyond"),
        (vec![0, 0, 0, 5], "wrong length"),
    ] {
        let mut b = e.as_bytes()[..sig_end].to_vec();
        b.extend_from_slice(&proof);
        let err = Envelope::decode(&b).unwrap_err();
        assert!(
            matches!(&err, DecodeError::BadBatchProof(m) if m.contains(why)),
            "{why}: {err}"
        );
    }
    // Larger than any batch allows.
    let mut b = e.as_bytes()[..sig_end].to_vec();
    b.extend_from_slice(&[0, 0, 0x10, 0x01]);
    assert!(matches!(
        Envelope::decode(&b),
        Err(DecodeError::BadBatchProof(_))
    ));
}

#[test]
fn a_batch_is_signed_by_its_author_only() {
    let s = TestSigner::new(7);
    let mallory = TestSigner::new(8);
    let err =
        UnsignedEnvelope::sign_batch(vec![unsigned(&s, 0), unsigned(&s, 1)], &mallory).unwrap_err();
    assert!(matches!(err, SignError::WrongSigner { .. }));
    // Mallory's batch signature over Alice's envelopes (a valid Merkle proof) fails.
    let envs = UnsignedEnvelope::sign_batch(vec![unsigned(&s, 0), unsigned(&s, 1)], &s).unwrap();
    let mut forged = envs[0].as_bytes().to_vec();
    let at = forged.len() - (64 + 4 + 32);
    let ids = [envs[0].id().0, envs[1].id().0];
    let (root, _) = crate::batch::tree(&ids);
    forged[at..at + 64].copy_from_slice(&mallory.sign(&crate::batch::batch_message(2, &root)));
    assert!(matches!(
        Envelope::decode(&forged),
        Err(DecodeError::BadSignature { .. })
    ));
}
