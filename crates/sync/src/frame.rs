//! The sync wire codec. Every frame has a size cap; decoding never allocates more than the
//! frame's own length and rejects trailing bytes.
//!
//! ```text
//! frame    = version u8 (1) | type u8 | body
//! type 1   Range:    count u16 | msg*
//!   msg    = tag u8 (1 fingerprint | 2 id list | 3 want) | fields
//!   range  = flags u8 (bit 0: lower present, bit 1: upper present) | bound? | bound?
//!   bound  = n u8 (<= 32) | the first n bytes of the id (the rest are zero)
//!   1      = range | fingerprint[16]
//!   2      = range | n u16 | id[32]*n
//!   3      = n u16 | id[32]*n
//!   4      = total u64 | start u32 | n u16 | (key u64 | check u64 | count zigzag-varint)*n
//!   5      = start u32 | end u32
//!   6      = n u16 | key u64*n
//! type 2   Envelope: the envelope's canonical bytes (verified by the receiver)
//! type 3   Announce: n u16 | id[32]*n   (ids of new envelopes, for live push)
//! type 4   Prune:    n u16 | id[32]*n   (already had these: push to me lazily)
//! ```

use crate::Fingerprint;
use crate::ranger::{IdRange, RangeMsg};
use crate::riblt::{Cell, MAX_CELLS_PER_MESSAGE};
use fieldmesh_core::{EnvelopeId, MAX_ENVELOPE_BYTES};
use thiserror::Error;

/// Wire version.
pub const VERSION: u8 = 1;
/// The first bytes of an `Envelope` frame: the envelope's bytes follow. A sender that has
/// the bytes in a buffer of their own writes this, then them, instead of copying both
/// into a frame.
pub const ENVELOPE_PREFIX: [u8; 2] = [VERSION, 2];
/// The largest frame any node accepts, whatever its profile says.
pub const MAX_FRAME_BYTES: usize = MAX_ENVELOPE_BYTES + 64;

/// A sync frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Reconciliation messages.
    Range(Vec<RangeMsg>),
    /// One envelope.
    Envelope(Vec<u8>),
    /// Ids of new envelopes (live push).
    Announce(Vec<EnvelopeId>),
    /// The sender already held these envelopes when they were pushed to it eagerly:
    /// announce to it from now on instead of pushing (the peer-sampling tree prunes).
    Prune(Vec<EnvelopeId>),
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than the cap.
    #[error("frame of {len} bytes exceeds the cap of {cap}")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// Unknown version.
    #[error("frame version {0} not supported (this build speaks {VERSION})")]
    Version(u8),
    /// Unknown type or tag.
    #[error("unknown frame type or message tag {0}")]
    Unknown(u8),
    /// Ends early.
    #[error("frame truncated")]
    Truncated,
    /// Bytes after the last field.
    #[error("{0} trailing bytes after frame")]
    Trailing(usize),
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A zigzag LEB128 signed integer of at most 10 bytes.
    fn varint(&mut self) -> Result<i64, FrameError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(FrameError::Unknown(0x80))
    }
    fn cells(&mut self) -> Result<Vec<Cell>, FrameError> {
        let n = usize::from(self.u16()?);
        if n > MAX_CELLS_PER_MESSAGE || self.b.len() < 17 * n {
            return Err(FrameError::Truncated);
        }
        (0..n)
            .map(|_| {
                Ok(Cell {
                    key: self.u64()?,
                    check: self.u64()?,
                    count: self.varint()?,
                })
            })
            .collect()
    }
    fn keys(&mut self) -> Result<Vec<u64>, FrameError> {
        let n = usize::from(self.u16()?);
        if self.b.len() < 8 * n {
            return Err(FrameError::Truncated);
        }
        (0..n).map(|_| self.u64()).collect()
    }
    fn id(&mut self) -> Result<EnvelopeId, FrameError> {
        Ok(EnvelopeId(self.take(32)?.try_into().expect("32 bytes")))
    }
    fn ids(&mut self) -> Result<Vec<EnvelopeId>, FrameError> {
        let n = usize::from(self.u16()?);
        if self.b.len() < 32 * n {
            return Err(FrameError::Truncated);
        }
        (0..n).map(|_| self.id()).collect()
    }
    fn bound(&mut self) -> Result<EnvelopeId, FrameError> {
        let len = usize::from(self.u8()?);
        if len > 32 {
            return Err(FrameError::Unknown(len as u8));
        }
        let mut b = [0u8; 32];
        b[..len].copy_from_slice(self.take(len)?);
        Ok(EnvelopeId(b))
    }

    fn range(&mut self) -> Result<IdRange, FrameError> {
        let flags = self.u8()?;
        if flags > 3 {
            return Err(FrameError::Unknown(flags));
        }
        let lower = if flags & 1 != 0 {
            Some(self.bound()?)
        } else {
            None
        };
        let upper = if flags & 2 != 0 {
            Some(self.bound()?)
        } else {
            None
        };
        Ok(IdRange { lower, upper })
    }
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[EnvelopeId]) {
    out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&id.0);
    }
}

/// A bound is sent without its trailing zero bytes (split bounds are short prefixes).
fn put_range(out: &mut Vec<u8>, r: &IdRange) {
    out.push(u8::from(r.lower.is_some()) | (u8::from(r.upper.is_some()) << 1));
    for b in [r.lower, r.upper].into_iter().flatten() {
        let len = 32 - b.0.iter().rev().take_while(|x| **x == 0).count();
        out.push(len as u8);
        out.extend_from_slice(&b.0[..len]);
    }
}

/// A frame read from a bulk stream as its two-byte head and the rest in a buffer of its
/// own, so that an envelope's bytes go on to verification and the store without being
/// copied out of the frame (48 KiB per attachment chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkFrame {
    /// `None`: the frame is shorter than a head, and `rest` is all of it.
    head: Option<[u8; 2]>,
    rest: Vec<u8>,
}

impl BulkFrame {
    /// A frame read as its head and the rest.
    pub fn split(head: [u8; 2], rest: Vec<u8>) -> BulkFrame {
        BulkFrame {
            head: Some(head),
            rest,
        }
    }

    /// A whole frame in one buffer (shorter frames than a head included: they decode as
    /// truncated).
    pub fn whole(mut frame: Vec<u8>) -> BulkFrame {
        if frame.len() < 2 {
            return BulkFrame {
                head: None,
                rest: frame,
            };
        }
        let rest = frame.split_off(2);
        BulkFrame::split([frame[0], frame[1]], rest)
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.head.map_or(0, |h| h.len()) + self.rest.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes as [`Frame::decode`] does; an `Envelope` frame keeps the buffer it was
    /// read into.
    pub fn decode(self, cap: usize) -> Result<Frame, FrameError> {
        let len = self.len();
        let cap = cap.min(MAX_FRAME_BYTES);
        if len > cap {
            return Err(FrameError::TooLarge { len, cap });
        }
        match self.head {
            Some(head) if head == ENVELOPE_PREFIX => Ok(Frame::Envelope(self.rest)),
            Some(head) => {
                let mut all = Vec::with_capacity(len);
                all.extend_from_slice(&head);
                all.extend_from_slice(&self.rest);
                Frame::decode(&all, cap)
            }
            None => Frame::decode(&self.rest, cap),
        }
    }
}

impl Frame {
    /// Canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Frame::Range(msgs) => {
                out.push(1);
                out.extend_from_slice(&(msgs.len() as u16).to_be_bytes());
                for m in msgs {
                    match m {
                        RangeMsg::Fingerprint { range, fp } => {
                            out.push(1);
                            put_range(&mut out, range);
                            out.extend_from_slice(&fp.0);
                        }
                        RangeMsg::IdList { range, ids } => {
                            out.push(2);
                            put_range(&mut out, range);
                            put_ids(&mut out, ids);
                        }
                        RangeMsg::Want { ids } => {
                            out.push(3);
                            put_ids(&mut out, ids);
                        }
                        RangeMsg::Symbols {
                            total,
                            start,
                            cells,
                        } => {
                            out.push(4);
                            out.extend_from_slice(&total.to_be_bytes());
                            out.extend_from_slice(&start.to_be_bytes());
                            out.extend_from_slice(&(cells.len() as u16).to_be_bytes());
                            for c in cells {
                                out.extend_from_slice(&c.key.to_be_bytes());
                                out.extend_from_slice(&c.check.to_be_bytes());
                                put_varint(&mut out, c.count);
                            }
                        }
                        RangeMsg::MoreSymbols { start, end } => {
                            out.push(5);
                            out.extend_from_slice(&start.to_be_bytes());
                            out.extend_from_slice(&end.to_be_bytes());
                        }
                        RangeMsg::WantKeys { keys } => {
                            out.push(6);
                            out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
                            for k in keys {
                                out.extend_from_slice(&k.to_be_bytes());
                            }
                        }
                    }
                }
            }
            Frame::Envelope(bytes) => {
                out.push(ENVELOPE_PREFIX[1]);
                out.extend_from_slice(bytes);
            }
            Frame::Announce(ids) => {
                out.push(3);
                put_ids(&mut out, ids);
            }
            Frame::Prune(ids) => {
                out.push(4);
                put_ids(&mut out, ids);
            }
        }
        out
    }

    /// Decodes a frame no larger than `cap` bytes (and never larger than
    /// [`MAX_FRAME_BYTES`]).
    pub fn decode(bytes: &[u8], cap: usize) -> Result<Frame, FrameError> {
        let cap = cap.min(MAX_FRAME_BYTES);
        if bytes.len() > cap {
            return Err(FrameError::TooLarge {
                len: bytes.len(),
                cap,
            });
        }
        let mut r = Reader { b: bytes };
        let v = r.u8()?;
        if v != VERSION {
            return Err(FrameError::Version(v));
        }
        let frame = match r.u8()? {
            1 => {
                let n = usize::from(r.u16()?);
                let mut msgs = Vec::with_capacity(n.min(r.b.len()));
                for _ in 0..n {
                    msgs.push(match r.u8()? {
                        1 => {
                            let range = r.range()?;
                            RangeMsg::Fingerprint {
                                range,
                                fp: Fingerprint(r.take(16)?.try_into().expect("16")),
                            }
                        }
                        2 => RangeMsg::IdList {
                            range: r.range()?,
                            ids: r.ids()?,
                        },
                        3 => RangeMsg::Want { ids: r.ids()? },
                        4 => RangeMsg::Symbols {
                            total: r.u64()?,
                            start: r.u32()?,
                            cells: r.cells()?,
                        },
                        5 => RangeMsg::MoreSymbols {
                            start: r.u32()?,
                            end: r.u32()?,
                        },
                        6 => RangeMsg::WantKeys { keys: r.keys()? },
                        t => return Err(FrameError::Unknown(t)),
                    });
                }
                Frame::Range(msgs)
            }
            2 => return Ok(Frame::Envelope(r.b.to_vec())),
            3 => Frame::Announce(r.ids()?),
            4 => Frame::Prune(r.ids()?),
            t => return Err(FrameError::Unknown(t)),
        };
        if !r.b.is_empty() {
            return Err(FrameError::Trailing(r.b.len()));
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = EnvelopeId> {
        any::<[u8; 32]>().prop_map(EnvelopeId)
    }
    fn arb_range() -> impl Strategy<Value = IdRange> {
        (
            proptest::option::of(arb_id()),
            proptest::option::of(arb_id()),
        )
            .prop_map(|(lower, upper)| IdRange { lower, upper })
    }
    fn arb_msg() -> impl Strategy<Value = RangeMsg> {
        prop_oneof![
            (arb_range(), any::<[u8; 16]>()).prop_map(|(range, fp)| RangeMsg::Fingerprint {
                range,
                fp: Fingerprint(fp)
            }),
            (arb_range(), proptest::collection::vec(arb_id(), 0..5))
                .prop_map(|(range, ids)| RangeMsg::IdList { range, ids }),
            proptest::collection::vec(arb_id(), 0..5).prop_map(|ids| RangeMsg::Want { ids }),
            (
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec((any::<u64>(), any::<u64>(), any::<i64>()), 0..5)
            )
                .prop_map(|(total, start, cells)| RangeMsg::Symbols {
                    total,
                    start,
                    cells: cells
                        .into_iter()
                        .map(|(key, check, count)| Cell { key, check, count })
                        .collect()
                }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(start, end)| RangeMsg::MoreSymbols { start, end }),
            proptest::collection::vec(any::<u64>(), 0..5)
                .prop_map(|keys| RangeMsg::WantKeys { keys }),
        ]
    }
    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            proptest::collection::vec(arb_msg(), 0..6).prop_map(Frame::Range),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Frame::Envelope),
            proptest::collection::vec(arb_id(), 0..6).prop_map(Frame::Announce),
            proptest::collection::vec(arb_id(), 0..6).prop_map(Frame::Prune),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in arb_frame()) {
            let bytes = f.encode();
            prop_assert_eq!(Frame::decode(&bytes, MAX_FRAME_BYTES).unwrap(), f);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&bytes, MAX_FRAME_BYTES);
        }

        /// A frame read from a bulk stream in two parts decodes exactly as it would in
        /// one, valid or not, over the cap or not.
        #[test]
        fn bulk_frames_decode_as_whole_frames(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                arb_frame().prop_map(|f| f.encode()),
            ],
            cap in 0usize..400,
        ) {
            let split = BulkFrame::whole(bytes.clone());
            prop_assert_eq!(split.len(), bytes.len());
            prop_assert_eq!(split.decode(cap), Frame::decode(&bytes, cap));
        }
    }

    #[test]
    fn caps_and_errors() {
        let big = Frame::Envelope(vec![0; 2000]).encode();
        assert_eq!(big[..2], ENVELOPE_PREFIX);
        assert_eq!(big.len(), 2 + 2000);
        assert_eq!(
            Frame::decode(&big, 1024),
            Err(FrameError::TooLarge {
                len: 2002,
                cap: 1024
            })
        );
        assert_eq!(Frame::decode(&[9, 1], 100), Err(FrameError::Version(9)));
        assert_eq!(Frame::decode(&[1, 7], 100), Err(FrameError::Unknown(7)));
        // An announce claiming 1000 ids in a 10-byte frame is truncated, not allocated.
        assert_eq!(
            Frame::decode(&[1, 3, 0x03, 0xe8, 0, 0], 100),
            Err(FrameError::Truncated)
        );
        let mut ok = Frame::Announce(vec![]).encode();
        ok.push(0);
        assert_eq!(Frame::decode(&ok, 100), Err(FrameError::Trailing(1)));
    }
}
