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

use fieldmesh_core::sha256;

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

/// Reassembles a blob from its chunks (any order, duplicates allowed) and verifies it.
pub fn assemble(
    hash: &[u8; 32],
    size: u64,
    chunks: impl IntoIterator<Item = Chunk>,
) -> Result<Vec<u8>, String> {
    let mut parts: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    let mut total = None;
    for c in chunks
        .into_iter()
        .filter(|c| &c.hash == hash && c.size == size)
    {
        total = Some(c.total);
        parts.insert(c.index, c.data);
    }
    let total = total.unwrap_or_else(|| size.div_ceil(CHUNK_BYTES as u64).max(1) as u32);
    if parts.len() < total as usize {
        return Err(format!(
            "attachment incomplete: {} of {total} chunks here so far (the rest arrive as the mesh syncs)",
            parts.len()
        ));
    }
    let data: Vec<u8> = parts.into_values().collect::<Vec<_>>().concat();
    if data.len() as u64 != size || &sha256(&data) != hash {
        return Err("attachment chunks do not hash to the attachment id".into());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_assemble_in_any_order() {
        let data: Vec<u8> = (0..(3 * CHUNK_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let (hash, payloads) = split(&data);
        assert_eq!(payloads.len(), 4);
        let mut chunks: Vec<Chunk> = payloads.iter().map(|p| decode(p).unwrap()).collect();
        chunks.reverse();
        chunks.push(chunks[0].clone());
        assert_eq!(
            assemble(&hash, data.len() as u64, chunks.clone()).unwrap(),
            data
        );
        let err = assemble(&hash, data.len() as u64, chunks[1..3].to_vec()).unwrap_err();
        assert!(err.contains("2 of 4"), "{err}");
        // Chunk 2 (position 1 after the reversal) has no duplicate: corrupt it.
        let mut bad = chunks.clone();
        bad[1].data[0] ^= 1;
        let res = assemble(&hash, data.len() as u64, bad);
        assert!(
            matches!(&res, Err(e) if e.contains("do not hash")),
            "corruption not detected"
        );
        assert!(decode(b"nope").is_err());
    }

    #[test]
    fn empty_blob_is_one_chunk() {
        let (hash, p) = split(&[]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            assemble(&hash, 0, p.iter().map(|x| decode(x).unwrap())).unwrap(),
            Vec::<u8>::new()
        );
    }
}
