//! The value log: large envelopes (attachment chunks) live in append-only segment files
//! beside sled, which keeps a pointer under the envelope's key: 34 bytes with the
//! envelope's summary (kind, precedence, time: the sync index and channel reads use it
//! without reading the value), or 24 bytes without, as format-2 stores wrote them.
//!
//! sled writes a whole leaf page again whenever one of its (up to 17) values changes
//! neighbourhood, and writes any log item over a quarter of its 512 KiB segments to a
//! file of its own: a leaf of 48 KiB chunks was rewritten, as a new file, again and again
//! (about 650 files created a second while receiving an attachment). Here a chunk is
//! written once, sequentially, and made durable with one `fdatasync` per group commit.
//!
//! Each record starts at a 4 KiB boundary (format 4; before, the records of one group
//! commit were packed back to back), and a commit is written with `O_DIRECT` where the
//! file system allows it: the bytes go from our buffer to the device without being copied
//! into the page cache. Receiving an attachment, that copy was about a quarter of the
//! receiver's CPU (`copy_folio_from_iter_atomic` in a profile), more than QUIC's
//! decryption. Where `O_DIRECT` is refused (tmpfs, some network file systems) the same
//! aligned layout is written through the page cache. The gap after each record is zeros
//! that no pointer names (at most 4 KiB less one byte per record, about 4% of an
//! attachment chunk).
//!
//! Crash safety: values are durable before sled's batch that points at them is written,
//! so sled never names bytes that are not on disk. A crash between the two leaves bytes
//! nothing points at (never read); a torn append leaves a tail that the next open skips
//! (appends start at the file's end). Every read is checked by the caller against the
//! envelope's id (its SHA-256), so a damaged segment reads as a corrupt envelope, never
//! as a different one. A removed envelope's bytes are given back to the file system by
//! punching a hole over its blocks (`fallocate`), after sled's batch that drops its
//! pointer is durable; segments are never rewritten or compacted. A record owns every
//! block from its start to the next boundary after its end, so all of them go. Packed
//! records (pointers written before format 4) shared their first and last blocks with
//! their neighbours, which therefore stayed allocated: about 8% of everything a relay
//! ever carried and let go stayed on its disk.

use crate::Summary;
use fieldmesh_core::{Hlc, Kind, Precedence};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Envelopes at least this large go to the value log; smaller ones stay in sled.
pub(crate) const MIN_BYTES: usize = 8 * 1024;
/// A segment is closed once it holds this much.
const SEGMENT_BYTES: u64 = 256 << 20;
/// A pointer as the first value-log format wrote it: where, and the CRC.
const MAGIC: &[u8; 4] = b"FMVL";
/// A pointer that also carries the envelope's summary (kind, precedence, time).
const MAGIC_SUMMARY: &[u8; 4] = b"FMVS";
/// The same, to a record that owns its blocks: it starts on a block boundary and nothing
/// else is written before the next boundary after its end.
const MAGIC_OWNED: &[u8; 4] = b"FMVO";
const POINTER_BYTES: usize = 24;
/// Bytes of a pointer record this build writes.
pub(crate) const SUMMARY_POINTER_BYTES: usize = POINTER_BYTES + 10;

/// Where a value lives: segment, offset, length, and the value's CRC-32C, so that a
/// read can be checked without hashing the envelope again (sending a chunk from the
/// store costs a CRC instead of a SHA-256); and what the envelope is, so that the sync
/// index at start and a channel read that skips attachment chunks need not read it
/// (pointers written before the summary was kept have none: those envelopes are read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    seg: u32,
    offset: u64,
    len: u32,
    crc: u32,
    pub(crate) summary: Option<Summary>,
    /// The record owns its blocks (see [`MAGIC_OWNED`]): releasing it frees all of them.
    owns_blocks: bool,
}

impl Pointer {
    /// Bytes of the record it points at.
    pub(crate) fn record_len(&self) -> u32 {
        self.len
    }

    /// The record stored in sled (with the summary when it is known).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SUMMARY_POINTER_BYTES);
        b.extend_from_slice(match (&self.summary, self.owns_blocks) {
            (Some(_), true) => MAGIC_OWNED,
            (Some(_), false) => MAGIC_SUMMARY,
            (None, _) => MAGIC,
        });
        b.extend_from_slice(&self.seg.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b.extend_from_slice(&self.len.to_be_bytes());
        b.extend_from_slice(&self.crc.to_be_bytes());
        if let Some(s) = &self.summary {
            b.push(s.kind.0);
            b.push(s.precedence.as_u8());
            b.extend_from_slice(&s.hlc.0.to_be_bytes());
        }
        b
    }

    /// A pointer record, or `None` for anything else (an envelope stored inline starts
    /// with its own magic, `FMEV`).
    pub(crate) fn decode(v: &[u8]) -> Option<Pointer> {
        let magic = v.get(..4)?;
        let owns_blocks = magic == MAGIC_OWNED;
        let summary = match (v.len(), magic) {
            (POINTER_BYTES, m) if m == MAGIC => None,
            (SUMMARY_POINTER_BYTES, m) if m == MAGIC_SUMMARY || m == MAGIC_OWNED => Some(Summary {
                kind: Kind(v[24]),
                precedence: Precedence::from_u8(v[25])?,
                hlc: Hlc(u64::from_be_bytes(v[26..34].try_into().ok()?)),
                size: u32::from_be_bytes(v[16..20].try_into().ok()?),
            }),
            _ => return None,
        };
        Some(Pointer {
            seg: u32::from_be_bytes(v[4..8].try_into().ok()?),
            offset: u64::from_be_bytes(v[8..16].try_into().ok()?),
            len: u32::from_be_bytes(v[16..20].try_into().ok()?),
            crc: u32::from_be_bytes(v[20..24].try_into().ok()?),
            summary,
            owns_blocks,
        })
    }
}

/// A write buffer up to this size is kept for the next append: a fresh multi-megabyte
/// buffer per group commit cost the receiving node page faults and zeroing every time.
const KEEP_BUF_BYTES: usize = 32 << 20;

/// Commits start at multiples of this, and direct writes are whole blocks of it.
const BLOCK: u64 = 4096;

fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

struct Active {
    seg: u32,
    file: File,
    /// The same file opened with `O_DIRECT`, if the file system allows it.
    direct: Option<File>,
    len: u64,
}

/// Opens a segment for appending; `new`: it must not exist yet.
fn open_segment(path: &Path, new: bool) -> io::Result<(File, Option<File>)> {
    let file = OpenOptions::new()
        .create(true)
        .create_new(new)
        .truncate(false)
        .write(true)
        .read(true)
        .open(path)?;
    Ok((file, open_direct(path)))
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

/// A buffer of `len` bytes (a multiple of [`BLOCK`]) whose start is aligned to [`BLOCK`],
/// as `O_DIRECT` requires: a slice of a slightly larger vector.
struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let vec = vec![0u8; len + BLOCK as usize];
        let start = vec.as_ptr().align_offset(BLOCK as usize);
        AlignedBuf { vec, start, len }
    }

    /// The most this buffer can hold.
    fn capacity(&self) -> usize {
        self.vec.len() - self.start
    }

    fn bytes(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// The segment files of one store.
pub(crate) struct ValueLog {
    dir: PathBuf,
    active: Mutex<Active>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// The last append's write buffer, kept for the next one (see [`KEEP_BUF_BYTES`]).
    buf: Mutex<Option<AlignedBuf>>,
    /// [`SEGMENT_BYTES`]; smaller in tests.
    segment_bytes: u64,
}

impl std::fmt::Debug for ValueLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:08}.seg"))
}

/// Makes a new directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ValueLog {
    /// Opens the log in `dir` (created if missing), appending to its newest segment.
    pub(crate) fn open(dir: &Path) -> io::Result<ValueLog> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut newest = None;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(seg) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            newest = newest.max(Some(seg));
        }
        let seg = newest.unwrap_or(0);
        let path = segment_path(dir, seg);
        // Kept as it is: appends go after whatever it holds (a torn tail included).
        let (file, direct) = open_segment(&path, false)?;
        if newest.is_none() {
            sync_dir(dir)?;
        }
        let len = file.metadata()?.len();
        Ok(ValueLog {
            dir: dir.to_owned(),
            active: Mutex::new(Active {
                seg,
                file,
                direct,
                len,
            }),
            readers: Mutex::new(HashMap::new()),
            buf: Mutex::new(None),
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// Appends `values` and makes them durable; returns where each went. On failure
    /// nothing is returned and the segment is cut back to where it was.
    pub(crate) fn append(&self, values: &[&[u8]]) -> io::Result<Vec<Pointer>> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // Each record from a block boundary: what it takes on disk is its own alone.
        let footprint: u64 = values.iter().map(|v| align_up(v.len() as u64)).sum();
        if a.len > 0 && align_up(a.len) + footprint > self.segment_bytes {
            let seg = a.seg + 1;
            let path = segment_path(&self.dir, seg);
            let (file, direct) = match open_segment(&path, true) {
                // Left by an earlier attempt whose directory sync failed: still empty,
                // it is this segment (else every later append failed until a restart).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let (file, direct) = open_segment(&path, false)?;
                    if file.metadata()?.len() != 0 {
                        return Err(io::Error::other(format!(
                            "{} already holds data",
                            path.display()
                        )));
                    }
                    (file, direct)
                }
                r => r?,
            };
            sync_dir(&self.dir)?;
            *a = Active {
                seg,
                file,
                direct,
                len: 0,
            };
        }
        let start = align_up(a.len);
        let padded = usize::try_from(footprint)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "batch too large"))?;
        let mut buf = self.take_buf(padded);
        let mut out = Vec::with_capacity(values.len());
        let mut at = 0usize;
        for v in values {
            let len = u32::try_from(v.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "value over 4 GiB"))?;
            out.push(Pointer {
                seg: a.seg,
                offset: start + at as u64,
                len,
                crc: crc32fast::hash(v),
                summary: None,
                owns_blocks: true,
            });
            let own = align_up(v.len() as u64) as usize;
            buf.bytes_mut()[at..at + v.len()].copy_from_slice(v);
            // The padding up to the next block: zeros that no pointer names.
            buf.bytes_mut()[at + v.len()..at + own].fill(0);
            at += own;
        }
        let written = match &a.direct {
            Some(direct) => match direct.write_all_at(buf.bytes(), start) {
                // Refused for this file after all (alignment rules of an odd device):
                // from now on through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(%e, "direct writes refused; the value log writes through the page cache");
                    a.direct = None;
                    a.file.write_all_at(buf.bytes(), start)
                }
                r => r,
            },
            None => a.file.write_all_at(buf.bytes(), start),
        }
        .and_then(|()| a.file.sync_data());
        if buf.capacity() <= KEEP_BUF_BYTES {
            *self.buf.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        }
        if let Err(e) = written {
            // Best effort: the torn tail is never pointed at either way.
            let _ = a.file.set_len(a.len);
            return Err(e);
        }
        a.len = start + footprint;
        Ok(out)
    }

    /// Gives the disk blocks of the values `pointers` name back to the file system
    /// (sparse segments): every block of a record that owns its blocks; of a packed one
    /// (written before format 4), only the whole blocks inside it, so that neighbouring
    /// records are never touched. Best effort: a file system without hole punching keeps
    /// the bytes, and nothing names them any more either way. Returns the bytes released.
    pub(crate) fn release(&self, pointers: &[Pointer]) -> u64 {
        let mut by_seg: HashMap<u32, Vec<&Pointer>> = HashMap::new();
        for p in pointers {
            by_seg.entry(p.seg).or_default().push(p);
        }
        let mut released = 0;
        for (seg, ps) in by_seg {
            let file = match OpenOptions::new()
                .write(true)
                .open(segment_path(&self.dir, seg))
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(seg, %e, "value log: cannot open a segment to release space");
                    continue;
                }
            };
            for p in ps {
                let start = align_up(p.offset);
                let end = if p.owns_blocks {
                    align_up(p.offset + u64::from(p.len))
                } else {
                    (p.offset + u64::from(p.len)) / BLOCK * BLOCK
                };
                if end <= start {
                    continue;
                }
                let punched = rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    start,
                    end - start,
                );
                if let Err(e) = punched {
                    tracing::debug!(seg, %e, "value log: hole punching refused; the space stays used");
                    break;
                }
                released += end - start;
            }
        }
        released
    }

    /// A block-aligned buffer of `len` bytes, contents unspecified: the kept one if it is
    /// large enough.
    fn take_buf(&self, len: usize) -> AlignedBuf {
        match self.buf.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(mut b) if b.capacity() >= len => {
                b.len = len;
                b
            }
            _ => AlignedBuf::zeroed(len),
        }
    }

    /// The bytes a pointer names, checked against its CRC (`InvalidData` if they differ,
    /// `UnexpectedEof` if the segment is shorter: damage either way).
    pub(crate) fn read(&self, p: &Pointer) -> io::Result<Vec<u8>> {
        let file = {
            let mut r = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            match r.get(&p.seg) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(segment_path(&self.dir, p.seg))?);
                    r.insert(p.seg, f.clone());
                    f
                }
            }
        };
        let mut buf = vec![0u8; p.len as usize];
        file.read_exact_at(&mut buf, p.offset)?;
        if crc32fast::hash(&buf) != p.crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {} at {}: checksum mismatch", p.seg, p.offset),
            ));
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn blocks_on_disk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
            .sum()
    }

    /// Records of odd sizes, appended in group commits and all released, leave nothing
    /// allocated; releasing some leaves the rest readable. Packed records (from before
    /// format 4) leaked their shared edge blocks, about 8% of what a relay let go.
    #[test]
    fn released_records_give_back_every_block() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path()).unwrap();
        let values: Vec<Vec<u8>> = [10_000usize, 49_999, 8_193, 4_096, 12_289, 50_001]
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8 + 1; n])
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let mut pointers = log.append(&refs[..3]).unwrap();
        pointers.extend(log.append(&refs[3..]).unwrap());
        for p in &pointers {
            assert_eq!(p.offset % BLOCK, 0);
            assert!(p.owns_blocks);
            assert_eq!(
                Pointer::decode(&{
                    let mut q = *p;
                    q.summary = Some(Summary {
                        kind: Kind(7),
                        precedence: Precedence::Routine,
                        hlc: Hlc(1),
                        size: p.len,
                    });
                    q.encode()
                })
                .map(|q| q.owns_blocks),
                Some(true)
            );
        }
        let footprint: u64 = values.iter().map(|v| align_up(v.len() as u64)).sum();
        let before = blocks_on_disk(dir.path());
        if before < footprint {
            eprintln!("file system allocates lazily ({before} < {footprint}); not measured");
            return;
        }
        let released = log.release(&pointers[..3]);
        if released == 0 {
            eprintln!("file system refuses hole punching; not measured");
            return;
        }
        for (p, v) in pointers[3..].iter().zip(&values[3..]) {
            assert_eq!(&log.read(p).unwrap(), v);
        }
        assert_eq!(log.release(&pointers[3..]) + released, footprint);
        assert_eq!(blocks_on_disk(dir.path()), 0, "every block given back");
        // A packed record (an older pointer) still frees only its inner whole blocks.
        let older = Pointer {
            seg: 0,
            offset: 100,
            len: 3 * BLOCK as u32,
            crc: 0,
            summary: None,
            owns_blocks: false,
        };
        assert_eq!(
            Pointer::decode(&older.encode()).map(|p| p.owns_blocks),
            Some(false)
        );
        assert_eq!(log.release(&[older]), 2 * BLOCK);
    }

    /// A new segment whose creation was not made durable (the directory sync failed)
    /// is left on disk empty: the next append takes it rather than failing on it.
    #[test]
    fn an_empty_segment_left_by_a_failed_roll_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ValueLog::open(dir.path()).unwrap();
        log.segment_bytes = 3 * BLOCK;
        let value = vec![7u8; 2 * BLOCK as usize];
        let first = log.append(&[&value]).unwrap();
        File::create(segment_path(dir.path(), 1)).unwrap();
        let second = log.append(&[&value]).unwrap();
        assert_eq!((first[0].seg, second[0].seg), (0, 1));
        assert_eq!(log.read(&second[0]).unwrap(), value);
        // One holding data is never written over.
        std::fs::write(segment_path(dir.path(), 2), b"someone's bytes").unwrap();
        assert!(log.append(&[&value]).is_err());
        assert_eq!(
            std::fs::read(segment_path(dir.path(), 2)).unwrap(),
            b"someone's bytes"
        );
    }
}
