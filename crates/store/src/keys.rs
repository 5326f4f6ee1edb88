//! Key layout, shared by both backends so that their orders agree.
//!
//! ```text
//! e | id(32)                       -> envelope bytes
//! c | channel(32) | hlc(8) | id(32) -> ()            channel index, time order
//! g | channel(32)                  -> genesis id(32)
//! m | name                         -> metadata
//! ```

use fieldmesh_core::{ChannelId, Envelope, EnvelopeId, Kind};

pub(crate) const ENVELOPE: u8 = b'e';
pub(crate) const CHANNEL: u8 = b'c';
pub(crate) const GENESIS: u8 = b'g';
pub(crate) const META: u8 = b'm';

pub(crate) fn envelope_key(id: &EnvelopeId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = ENVELOPE;
    k[1..].copy_from_slice(&id.0);
    k
}

pub(crate) fn channel_prefix(ch: &ChannelId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = CHANNEL;
    k[1..].copy_from_slice(&ch.0);
    k
}

pub(crate) fn channel_key(env: &Envelope) -> [u8; 73] {
    let h = env.header();
    let mut k = [0u8; 73];
    k[0] = CHANNEL;
    k[1..33].copy_from_slice(&h.channel.0);
    k[33..41].copy_from_slice(&h.hlc.0.to_be_bytes());
    k[41..].copy_from_slice(&env.id().0);
    k
}

/// The envelope id at the end of a channel index key.
pub(crate) fn id_from_channel_key(k: &[u8]) -> Option<EnvelopeId> {
    (k.len() == 73).then(|| EnvelopeId(k[41..].try_into().expect("32 bytes")))
}

/// The first key past every channel index key of `ch`.
pub(crate) fn after_channel(ch: &ChannelId) -> Vec<u8> {
    let mut k = channel_prefix(ch).to_vec();
    // Big-endian increment: the next prefix in key order.
    for b in k.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    k
}

/// The channel and envelope of a channel index key.
pub(crate) fn parse_channel_key(k: &[u8]) -> Option<(ChannelId, EnvelopeId)> {
    let id = id_from_channel_key(k)?;
    Some((ChannelId(k[1..33].try_into().expect("32 bytes")), id))
}

pub(crate) fn genesis_key(ch: &ChannelId) -> [u8; 33] {
    let mut k = channel_prefix(ch);
    k[0] = GENESIS;
    k
}

pub(crate) fn is_genesis(env: &Envelope) -> bool {
    env.header().kind == Kind::CHANNEL_GENESIS
}

pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}
