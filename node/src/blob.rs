//! Attachments as content-addressed blobs, carried in chunk envelopes.
//!
//! A blob is cut into chunks of [`CHUNK_BYTES`]; each chunk travels as its own envelope
//! (kind `BLOB_CHUNK`) in the message's channel, sealed under the channel's compartment
//! key like any payload. So chunks are signed and verified one by one, relays carry them
//! without reading them, precedence puts them behind urgent traffic, and a transfer cut
//! off midway resumes: reconciliation only moves the chunks still missing.
//!
//! ```text
//! chunk payload = "FMBC" | blob sha256[32] | index u32 | total u32 | size u64 | data
//! ```

use fieldmesh_core::{EnvelopeId, NodeId, sha256};
use std::collections::HashMap;

/// Bytes of blob per chunk: a chunk envelope fits a 64 KiB frame.
pub const CHUNK_BYTES: usize = 48 * 1024;
/// Largest attachment. It is held in memory whole when posted and when read back, and the
/// daemon's API takes request bodies up to this size (plus [`API_BODY_SLACK`]).
pub const MAX_BLOB_BYTES: u64 = 256 << 20;
/// What the API accepts beyond the largest attachment (bundles of envelopes carry headers).
pub const API_BODY_SLACK: usize = 1 << 20;

/// Refuses an attachment over [`MAX_BLOB_BYTES`] before anything is read or sent.
pub fn check_size(bytes: u64) -> Result<(), crate::ops::NodeError> {
    if bytes > MAX_BLOB_BYTES {
        return Err(crate::ops::NodeError::TooLarge(format!(
            "attachment of {bytes} bytes exceeds the limit of {MAX_BLOB_BYTES} bytes ({} MiB)",
            MAX_BLOB_BYTES >> 20
        )));
    }
    Ok(())
}
const MAGIC: &[u8; 4] = b"FMBC";
const HEADER: usize = 4 + 32 + 4 + 4 + 8;

/// One decoded chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub hash: [u8; 32],
    pub index: u32,
    pub total: u32,
    pub size: u64,
    pub data: Vec<u8>,
}

/// Cuts `data` into chunk payloads; returns the blob hash and the payloads.
pub fn split(data: &[u8]) -> ([u8; 32], Vec<Vec<u8>>) {
    let hash = sha256(data);
    let total = data.len().div_ceil(CHUNK_BYTES).max(1) as u32;
    let mut out = Vec::with_capacity(total as usize);
    for i in 0..total as usize {
        let part =
            &data[(i * CHUNK_BYTES).min(data.len())..((i + 1) * CHUNK_BYTES).min(data.len())];
        let mut p = Vec::with_capacity(HEADER + part.len());
        p.extend_from_slice(MAGIC);
        p.extend_from_slice(&hash);
        p.extend_from_slice(&(i as u32).to_be_bytes());
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&(data.len() as u64).to_be_bytes());
        p.extend_from_slice(part);
        out.push(p);
    }
    (hash, out)
}

/// Decodes a chunk payload.
pub fn decode(p: &[u8]) -> Result<Chunk, String> {
    if p.len() < HEADER || &p[..4] != MAGIC {
        return Err("not a blob chunk".into());
    }
    let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    let chunk = Chunk {
        hash: p[4..36].try_into().expect("32 bytes"),
        index: u32_at(36),
        total: u32_at(40),
        size: u64::from_be_bytes(p[44..52].try_into().expect("8 bytes")),
        data: p[HEADER..].to_vec(),
    };
    if chunk.index >= chunk.total || chunk.data.len() > CHUNK_BYTES || chunk.size > MAX_BLOB_BYTES {
        return Err("chunk header out of range".into());
    }
    Ok(chunk)
}

/// A chunk as found in the store, with the node that signed its envelope.
#[derive(Debug, Clone)]
pub struct Found {
    pub signer: NodeId,
    pub id: EnvelopeId,
    pub chunk: Chunk,
}

/// Whole-blob hashes [`assemble`] computes at most, when copies of a position disagree.
const MAX_TRIES: usize = 16;
/// Signers of one position that [`assemble`] takes into account; later ones are ignored,
/// except the message's author.
const MAX_SIGNERS_PER_POSITION: usize = 64;

/// One distinct content of a chunk position.
struct Variant {
    /// An envelope that carries it, to read it again.
    id: EnvelopeId,
    /// SHA-256 of the content; not computed for the first variant, whose bytes are held.
    digest: [u8; 32],
    signers: usize,
}

/// What was found for one chunk position.
#[derive(Default)]
struct Position {
    /// The bytes of `variants[0]`.
    held: Option<Vec<u8>>,
    variants: Vec<Variant>,
    /// Who signed which variant: one copy per signer.
    signed: Vec<(NodeId, usize)>,
}

impl Position {
    fn signed_by(&self, who: &NodeId) -> Option<usize> {
        self.signed.iter().find(|(s, _)| s == who).map(|&(_, v)| v)
    }

    /// The variant the most signers (other than `except`) signed; the first found on a tie.
    fn popular(&self, except: Option<&NodeId>) -> usize {
        let dropped = except.and_then(|x| self.signed_by(x));
        let count = |v: usize| self.variants[v].signers - usize::from(dropped == Some(v));
        (0..self.variants.len())
            .max_by_key(|&v| (count(v), std::cmp::Reverse(v)))
            .unwrap_or(0)
    }
}

/// Which copy of each position a try takes.
#[derive(Clone, Copy)]
enum Choice {
    /// The message author's copies, elsewhere the most signed.
    Author,
    /// This signer's, elsewhere the author's, elsewhere the most signed.
    Signer(NodeId),
    /// The author's (unless it is this signer), elsewhere the most signed without this
    /// signer's copies.
    Without(NodeId),
}

/// Reassembles a blob from its chunks (any order, duplicates allowed) and verifies it.
///
/// Only the whole blob's hash is named in the message, so another member of the channel
/// could sign chunks that claim the attachment with other bytes. Chunks whose header does
/// not fit the blob (another size, chunk count or length for their position) are left
/// out. Where copies of a position differ, the copies signed by `author` (the message's
/// author) are tried first, then each other signer's, then all but each signer's, until
/// one choice hashes to the attachment id (at most [`MAX_TRIES`] whole-blob hashes). So a
/// forger cannot spoil an attachment whose author's chunks are all here; one that quotes
/// another node's attachment is recovered unless more than a dozen signers disagree.
/// Memory stays about one blob: one copy of each position is held, and the others are
/// read again through `reload` (by envelope id) only when a try needs them.
pub fn assemble(
    hash: &[u8; 32],
    size: u64,
    author: &NodeId,
    found: impl IntoIterator<Item = Found>,
    reload: impl Fn(&EnvelopeId) -> Option<Chunk>,
) -> Result<Vec<u8>, String> {
    if size > MAX_BLOB_BYTES {
        return Err(format!(
            "attachment of {size} bytes exceeds the limit of {MAX_BLOB_BYTES} bytes"
        ));
    }
    let total = size.div_ceil(CHUNK_BYTES as u64).max(1) as usize;
    let len_at = |i: usize| {
        if i + 1 < total {
            CHUNK_BYTES
        } else {
            (size - (total as u64 - 1) * CHUNK_BYTES as u64) as usize
        }
    };
    let fits = |c: &Chunk| {
        &c.hash == hash
            && c.size == size
            && c.total as usize == total
            && (c.index as usize) < total
            && c.data.len() == len_at(c.index as usize)
    };
    let mut positions: Vec<Position> = (0..total).map(|_| Position::default()).collect();
    // Each signer's position count, and the order signers were first seen in.
    let mut signers: HashMap<NodeId, (usize, usize)> = HashMap::new();
    for Found { signer, id, chunk } in found {
        if !fits(&chunk) {
            continue;
        }
        let p = &mut positions[chunk.index as usize];
        let crowded = p.signed.len() >= MAX_SIGNERS_PER_POSITION && signer != *author;
        if crowded || p.signed_by(&signer).is_some() {
            continue;
        }
        let v = match &p.held {
            None => {
                p.held = Some(chunk.data);
                p.variants.push(Variant {
                    id,
                    digest: [0; 32],
                    signers: 0,
                });
                0
            }
            Some(held) if *held == chunk.data => 0,
            Some(_) => {
                let digest = sha256(&chunk.data);
                match p.variants.iter().skip(1).position(|v| v.digest == digest) {
                    Some(k) => k + 1,
                    None => {
                        p.variants.push(Variant {
                            id,
                            digest,
                            signers: 0,
                        });
                        p.variants.len() - 1
                    }
                }
            }
        };
        p.variants[v].signers += 1;
        p.signed.push((signer, v));
        let seen = signers.len();
        signers.entry(signer).or_insert((0, seen)).0 += 1;
    }
    let have = positions.iter().filter(|p| p.held.is_some()).count();
    if have < total {
        return Err(format!(
            "attachment incomplete: {have} of {total} chunks here so far (the rest arrive as the mesh syncs)"
        ));
    }

    // The signers of contested positions, those covering most first.
    let mut disputed: Vec<NodeId> = positions
        .iter()
        .filter(|p| p.variants.len() > 1)
        .flat_map(|p| p.signed.iter().map(|(s, _)| *s))
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    disputed.sort_by_key(|s| {
        let (covered, first) = signers[s];
        (std::cmp::Reverse(covered), first)
    });
    let choices = std::iter::once(Choice::Author)
        .chain(
            disputed
                .iter()
                .filter(|s| *s != author)
                .map(|s| Choice::Signer(*s)),
        )
        .chain(disputed.iter().map(|s| Choice::Without(*s)));
    let pick = |choice: Choice, p: &Position| -> usize {
        match choice {
            Choice::Author => p.signed_by(author).unwrap_or_else(|| p.popular(None)),
            Choice::Signer(s) => p
                .signed_by(&s)
                .or_else(|| p.signed_by(author))
                .unwrap_or_else(|| p.popular(None)),
            Choice::Without(s) => (s != *author)
                .then(|| p.signed_by(author))
                .flatten()
                .unwrap_or_else(|| p.popular(Some(&s))),
        }
    };
    let mut tried = std::collections::HashSet::new();
    for choice in choices {
        if tried.len() == MAX_TRIES {
            break;
        }
        let picks: Vec<usize> = positions.iter().map(|p| pick(choice, p)).collect();
        if !tried.insert(picks.clone()) {
            continue;
        }
        // Copies other than the held ones are read again, and kept if the try succeeds.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut reread = Vec::new();
        for (i, (p, &v)) in positions.iter().zip(&picks).enumerate() {
            if v == 0 {
                ctx.update(p.held.as_deref().unwrap_or_default());
                continue;
            }
            match reload(&p.variants[v].id) {
                Some(c) if fits(&c) && c.index as usize == i => {
                    ctx.update(&c.data);
                    reread.push((i, c.data));
                }
                _ => break,
            }
        }
        let complete = reread.len() == picks.iter().filter(|&&v| v != 0).count();
        if complete && ctx.finish().as_ref() == hash {
            for (i, data) in reread {
                positions[i].held = Some(data);
            }
            let mut out = Vec::with_capacity(size as usize);
            for mut p in positions {
                out.append(p.held.get_or_insert_default());
            }
            return Ok(out);
        }
    }
    let by_author = positions
        .iter()
        .filter(|p| p.signed_by(author).is_some())
        .count();
    Err(if by_author < total {
        format!(
            "attachment incomplete: {by_author} of {total} chunks from its author here so far, \
             and the copies other nodes signed do not hash to the attachment id"
        )
    } else {
        format!(
            "attachment chunks do not hash to the attachment id ({} choice(s) of copies tried)",
            tried.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = NodeId([1; 32]);
    const OTHER: NodeId = NodeId([2; 32]);
    const FORGER: NodeId = NodeId([3; 32]);

    /// Chunks as signed envelopes would bring them, and a way to read each again.
    #[derive(Default)]
    struct Shelf {
        all: Vec<Found>,
    }

    impl Shelf {
        fn sign(&mut self, by: NodeId, chunks: &[Chunk]) -> &mut Self {
            for c in chunks {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(self.all.len() as u64).to_be_bytes());
                self.all.push(Found {
                    signer: by,
                    id: EnvelopeId(id),
                    chunk: c.clone(),
                });
            }
            self
        }

        fn assemble(&self, hash: &[u8; 32], size: u64) -> Result<Vec<u8>, String> {
            self.assemble_in(self.all.clone(), hash, size)
        }

        fn assemble_in(
            &self,
            order: Vec<Found>,
            hash: &[u8; 32],
            size: u64,
        ) -> Result<Vec<u8>, String> {
            let reload = |id: &EnvelopeId| {
                self.all
                    .iter()
                    .find(|f| f.id == *id)
                    .map(|f| f.chunk.clone())
            };
            assemble(hash, size, &ME, order, reload)
        }
    }

    fn decoded(payloads: &[Vec<u8>]) -> Vec<Chunk> {
        payloads.iter().map(|p| decode(p).unwrap()).collect()
    }

    #[test]
    fn split_and_assemble_in_any_order() {
        let data: Vec<u8> = (0..(3 * CHUNK_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let size = data.len() as u64;
        let (hash, payloads) = split(&data);
        assert_eq!(payloads.len(), 4);
        let mut chunks = decoded(&payloads);
        chunks.reverse();
        chunks.push(chunks[0].clone());
        assert_eq!(
            Shelf::default()
                .sign(ME, &chunks)
                .assemble(&hash, size)
                .unwrap(),
            data
        );
        let err = Shelf::default()
            .sign(ME, &chunks[1..3])
            .assemble(&hash, size)
            .unwrap_err();
        assert!(err.contains("2 of 4"), "{err}");
        // Chunk 2 (position 1 after the reversal) has no duplicate: corrupt it.
        let mut bad = chunks.clone();
        bad[1].data[0] ^= 1;
        let err = Shelf::default()
            .sign(ME, &bad)
            .assemble(&hash, size)
            .unwrap_err();
        assert!(
            err.contains("do not hash"),
            "corruption not detected: {err}"
        );
        assert!(decode(b"nope").is_err());
    }

    #[test]
    fn empty_blob_is_one_chunk() {
        let (hash, p) = split(&[]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            Shelf::default()
                .sign(ME, &decoded(&p))
                .assemble(&hash, 0)
                .unwrap(),
            Vec::<u8>::new()
        );
    }

    /// Another member signs chunks that claim the attachment with other bytes, another
    /// chunk count or another length: the author's own copies are still assembled,
    /// whichever arrived first, and misfits are not counted.
    #[test]
    fn forged_copies_do_not_break_an_attachment() {
        let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 999))
            .map(|i| (i % 253) as u8)
            .collect();
        let size = data.len() as u64;
        let (hash, payloads) = split(&data);
        let honest = decoded(&payloads);
        let mut wrong_bytes = honest[1].clone();
        wrong_bytes.data[7] ^= 0xff;
        let mut wrong_total = honest[2].clone();
        wrong_total.total = 9;
        let mut wrong_len = honest[2].clone();
        wrong_len.data.push(0);
        let forged = [wrong_bytes.clone(), wrong_total, wrong_len];

        let mut shelf = Shelf::default();
        shelf.sign(FORGER, &forged).sign(ME, &honest);
        assert_eq!(shelf.assemble(&hash, size).unwrap(), data);
        let mut reversed = shelf.all.clone();
        reversed.reverse();
        assert_eq!(shelf.assemble_in(reversed, &hash, size).unwrap(), data);

        // A message quoting another node's attachment: its author signed no chunk, and
        // the first copy of position 1 is the forgery; the honest signer's copies win.
        let mut quoted = Shelf::default();
        quoted.sign(FORGER, &forged).sign(OTHER, &honest);
        assert_eq!(quoted.assemble(&hash, size).unwrap(), data);

        // The author's own forgery loses to an honest signer's copies.
        let mut by_author = Shelf::default();
        by_author
            .sign(ME, &[wrong_bytes.clone()])
            .sign(OTHER, &honest);
        assert_eq!(by_author.assemble(&hash, size).unwrap(), data);

        // With only the forgery at position 1, nothing matches, and the error says why.
        let err = Shelf::default()
            .sign(FORGER, &forged)
            .sign(ME, &[honest[0].clone(), honest[2].clone()])
            .assemble(&hash, size)
            .unwrap_err();
        assert!(
            err.contains("incomplete: 2 of 3 chunks from its author"),
            "{err}"
        );
        // A chunk count or length that does not fit the size is not counted at all.
        let err = Shelf::default()
            .sign(FORGER, &forged[1..])
            .sign(ME, &honest[..2])
            .assemble(&hash, size)
            .unwrap_err();
        assert!(err.contains("2 of 3"), "{err}");
        // A size beyond the limit is refused before anything is gathered.
        let err = Shelf::default()
            .sign(ME, &honest)
            .assemble(&hash, MAX_BLOB_BYTES + 1)
            .unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
    }

    /// Two honest nodes uploaded the same file and each copy is only partly here, behind
    /// a forger's full set that arrived first: no one signer's copies make the blob, all
    /// but the forger's do.
    #[test]
    fn honest_copies_split_between_signers_still_assemble() {
        let data: Vec<u8> = (0..(3 * CHUNK_BYTES)).map(|i| (i % 249) as u8).collect();
        let size = data.len() as u64;
        let (hash, payloads) = split(&data);
        let honest = decoded(&payloads);
        let forged: Vec<Chunk> = honest
            .iter()
            .map(|c| {
                let mut f = c.clone();
                f.data[0] ^= 1;
                f
            })
            .collect();
        let b = NodeId([4; 32]);
        let c = NodeId([5; 32]);
        let mut shelf = Shelf::default();
        shelf
            .sign(FORGER, &forged)
            .sign(b, &honest[..2])
            .sign(c, &honest[2..]);
        assert_eq!(shelf.assemble(&hash, size).unwrap(), data);
    }

    /// Many copies from one signer count once, and a flood of signers past the limit of
    /// a position is ignored, so gathering stays linear and the honest copies still win.
    #[test]
    fn a_flood_of_forged_copies_is_bounded() {
        let data: Vec<u8> = (0..(CHUNK_BYTES + 5)).map(|i| (i % 247) as u8).collect();
        let size = data.len() as u64;
        let (hash, payloads) = split(&data);
        let honest = decoded(&payloads);
        let mut shelf = Shelf::default();
        for n in 0..2_000u32 {
            let mut f = honest[0].clone();
            f.data[..4].copy_from_slice(&n.to_be_bytes());
            let signer = if n % 2 == 0 {
                FORGER
            } else {
                NodeId([(n % 200) as u8 + 10; 32])
            };
            shelf.sign(signer, &[f]);
        }
        shelf.sign(ME, &honest);
        assert_eq!(shelf.assemble(&hash, size).unwrap(), data);
    }
}
