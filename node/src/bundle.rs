//! Bundles: envelopes in a file, for carrying traffic by hand (USB stick, data mule).
//!
//! ```text
//! "FMBUNDLE" | version u8 (1) | { length u32 BE | envelope bytes }*
//! ```
//! Each envelope is verified on import exactly as if it came from the network.

use fieldmesh_core::{Envelope, MAX_ENVELOPE_BYTES};

const MAGIC: &[u8; 8] = b"FMBUNDLE";
const VERSION: u8 = 1;

pub fn encode(envs: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + envs.iter().map(|e| 4 + e.encoded_len()).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for e in envs {
        out.extend_from_slice(&(e.encoded_len() as u32).to_be_bytes());
        out.extend_from_slice(e.as_bytes());
    }
    out
}

/// One frame of a bundle: a verified envelope, or why frame `index` was rejected.
pub type Frame = Result<Envelope, (usize, String)>;

/// Splits and verifies a bundle. A broken frame header ends the walk (the rest cannot be
/// framed) and is reported as the last item.
pub fn decode(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    if bytes.len() < 9 || &bytes[..8] != MAGIC {
        return Err("not a Fieldmesh bundle (bad magic)".into());
    }
    if bytes[8] != VERSION {
        return Err(format!(
            "bundle version {} is not supported (this build reads {VERSION})",
            bytes[8]
        ));
    }
    let mut out = Vec::new();
    let mut at = 9;
    let mut index = 0;
    while at < bytes.len() {
        if bytes.len() - at < 4 {
            out.push(Err((index, format!("truncated frame header at byte {at}"))));
            break;
        }
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        if len > MAX_ENVELOPE_BYTES {
            out.push(Err((
                index,
                format!("frame of {len} bytes exceeds the envelope limit {MAX_ENVELOPE_BYTES}"),
            )));
            break;
        }
        if bytes.len() - at < len {
            out.push(Err((
                index,
                format!(
                    "truncated frame: {len} bytes announced, {} left",
                    bytes.len() - at
                ),
            )));
            break;
        }
        out.push(Envelope::decode(&bytes[at..at + len]).map_err(|e| (index, e.to_string())));
        at += len;
        index += 1;
    }
    Ok(out)
}
