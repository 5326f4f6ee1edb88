//! SentencePiece BPE tokenization from GGUF metadata (`tokenizer.ggml.model = "llama"`,
//! as Gemma 3 ships it): the vocabulary, its scores and token types, no merges.
//!
//! The behaviour follows llama.cpp, the reference these files were made for:
//! * user-defined pieces (newline and space runs, HTML tags) are cut out of the raw text
//!   first, and so are control tokens (`<start_of_turn>`) when specials are parsed;
//! * in the rest, spaces become `▁` (and a `▁` is prefixed when the file asks for it);
//! * characters start as symbols; the adjacent pair whose concatenation is a piece with
//!   the highest score merges first (ties: leftmost), until no pair is a piece;
//! * a symbol that is not a piece is spelled with byte tokens `<0xXX>`, else `<unk>`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// Token types as GGUF stores them.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

const SPACE: &str = "\u{2581}";

#[derive(Debug, thiserror::Error)]
pub enum SpmError {
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
}

/// A SentencePiece BPE vocabulary.
pub struct SpmTokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<String, u32>,
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
    /// Pieces matched in the raw text before BPE, longest first: (text, id, is_control).
    specials: Vec<(String, u32, bool)>,
    add_space_prefix: bool,
}

impl std::fmt::Debug for SpmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpmTokenizer")
            .field("vocab", &self.pieces.len())
            .field("specials", &self.specials.len())
            .finish_non_exhaustive()
    }
}

fn byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to notice candidates made stale by other merges.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Higher score first; on a tie, the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmTokenizer {
    /// Builds the tokenizer from the vocabulary arrays.
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<SpmTokenizer, SpmError> {
        let n = pieces.len();
        if n == 0 || scores.len() != n || types.len() != n {
            return Err(SpmError::Metadata(format!(
                "{n} tokens, {} scores, {} types",
                scores.len(),
                types.len()
            )));
        }
        if u32::try_from(n).is_err() {
            return Err(SpmError::Metadata(format!("{n} tokens")));
        }
        let mut index = HashMap::with_capacity(n);
        let mut bytes = [None; 256];
        let mut specials = Vec::new();
        for (i, (p, t)) in pieces.iter().zip(&types).enumerate() {
            let id = i as u32;
            if *t == BYTE
                && let Some(b) = byte_piece(p)
            {
                bytes[b as usize] = Some(id);
            }
            if (*t == USER_DEFINED || *t == CONTROL) && !p.is_empty() {
                specials.push((p.clone(), id, *t == CONTROL));
            }
            index.entry(p.clone()).or_insert(id);
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(SpmTokenizer {
            pieces,
            scores,
            types,
            index,
            bytes,
            unk,
            specials,
            add_space_prefix,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Token ids of `text`; control tokens in it are parsed when `parse_control`.
    pub fn encode(&self, text: &str, parse_control: bool) -> Vec<u32> {
        // Longest special pieces claim their occurrences first (as llama.cpp partitions).
        let mut claimed = vec![false; text.len()];
        let mut hits: Vec<(usize, usize, u32)> = Vec::new();
        for (p, id, control) in &self.specials {
            if *control && !parse_control {
                continue;
            }
            // Every occurrence in the unclaimed text: after one that overlaps a claimed
            // span, search again from the next character, not from its end.
            let mut from = 0;
            while let Some(i) = text[from..].find(p.as_str()) {
                let at = from + i;
                let span = at..at + p.len();
                if claimed[span.clone()].iter().any(|c| *c) {
                    from = at + text[at..].chars().next().map_or(1, char::len_utf8);
                } else {
                    claimed[span].iter_mut().for_each(|c| *c = true);
                    hits.push((at, p.len(), *id));
                    from = at + p.len();
                }
            }
        }
        hits.sort_unstable();
        let mut out = Vec::new();
        let mut done = 0;
        for (at, len, id) in hits {
            self.encode_plain(&text[done..at], &mut out);
            out.push(id);
            done = at + len;
        }
        self.encode_plain(&text[done..], &mut out);
        out
    }

    /// BPE over text between special pieces; each such fragment gets the `▁` prefix when
    /// the file asks for one (llama.cpp prefixes after every special token too).
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix {
            s.push_str(SPACE);
        }
        s.push_str(&text.replace(' ', SPACE));
        let mut syms: Vec<Symbol> = s
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let count = syms.len();
        for (i, sym) in syms.iter_mut().enumerate() {
            sym.prev = i.checked_sub(1);
            sym.next = (i + 1 < count).then_some(i + 1);
        }
        let mut heap = BinaryHeap::new();
        let candidate = |syms: &[Symbol], left: usize, right: usize| -> Option<Bigram> {
            let (l, r) = (syms[left], syms[right]);
            let piece = &s[l.start..r.start + r.len];
            let id = *self.index.get(piece)?;
            Some(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                len: piece.len(),
            })
        };
        for i in 1..count {
            if let Some(b) = candidate(&syms, i - 1, i) {
                heap.push(b);
            }
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != Some(b.right) {
                continue; // stale: one side has merged since
            }
            syms[b.left].len += r.len;
            syms[b.left].next = r.next;
            syms[b.right].len = 0;
            if let Some(n) = r.next {
                syms[n].prev = Some(b.left);
            }
            if let Some(p) = syms[b.left].prev
                && let Some(c) = candidate(&syms, p, b.left)
            {
                heap.push(c);
            }
            if let Some(n) = syms[b.left].next
                && let Some(c) = candidate(&syms, b.left, n)
            {
                heap.push(c);
            }
        }
        let mut at = (count > 0).then_some(0);
        while let Some(i) = at {
            let sym = syms[i];
            let piece = &s[sym.start..sym.start + sym.len];
            match self.index.get(piece) {
                Some(id) => out.push(*id),
                None => {
                    for b in piece.bytes() {
                        match (self.bytes[b as usize], self.unk) {
                            (Some(id), _) | (None, Some(id)) => out.push(id),
                            (None, None) => {}
                        }
                    }
                }
            }
            at = sym.next;
        }
    }

    /// Text of `ids`; control tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else {
                continue;
            };
            match self.types[id as usize] {
                BYTE => match byte_piece(p) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(p.as_bytes()),
                },
                CONTROL if skip_special => {}
                NORMAL => bytes.extend_from_slice(p.replace(SPACE, " ").as_bytes()),
                _ => bytes.extend_from_slice(p.as_bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if self.add_space_prefix {
            text.strip_prefix(' ').map(str::to_owned).unwrap_or(text)
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> SpmTokenizer {
        // id: piece (score)
        let vocab: &[(&str, f32, i32)] = &[
            ("<unk>", 0.0, 2),
            ("<bos>", 0.0, CONTROL),
            ("<start_of_turn>", 0.0, CONTROL),
            ("\n", 0.0, USER_DEFINED),
            ("<0x41>", 0.0, BYTE), // 'A'
            ("<0xC3>", 0.0, BYTE),
            ("<0xA9>", 0.0, BYTE),
            ("\u{2581}", -10.0, NORMAL),
            ("h", -11.0, NORMAL),
            ("i", -12.0, NORMAL),
            ("hi", -3.0, NORMAL),
            ("\u{2581}hi", -1.0, NORMAL),
            ("t", -13.0, NORMAL),
            ("it", -2.0, NORMAL), // beats "hi" in "hit"
        ];
        SpmTokenizer::new(
            vocab.iter().map(|v| v.0.to_owned()).collect(),
            vocab.iter().map(|v| v.1).collect(),
            vocab.iter().map(|v| v.2).collect(),
            Some(0),
            false,
        )
        .unwrap()
    }

    #[test]
    fn merges_by_score_and_spells_unknowns_in_bytes() {
        let t = tiny();
        // "hi hi": h+i -> hi, then ▁+hi -> ▁hi.
        assert_eq!(t.encode("hi hi", true), vec![10, 11]);
        // "hit": "it" (-2) outranks "hi" (-3).
        assert_eq!(t.encode("hit", true), vec![8, 13]);
        // 'A' is not a piece but has a byte token; 'é' is two byte tokens.
        assert_eq!(t.encode("A\u{e9}", true), vec![4, 5, 6]);
        // A character without a piece or byte token is <unk>.
        assert_eq!(t.encode("z", true), vec![0]);
    }

    #[test]
    fn specials_are_cut_out_before_bpe() {
        let t = tiny();
        assert_eq!(t.encode("<start_of_turn>hi\nhi", true), vec![2, 10, 3, 10]);
        // Without parsing control tokens, the text is spelled out (here: bytes/unk),
        // but user-defined pieces still match.
        let spelled = t.encode("<bos>\n", false);
        assert!(!spelled.contains(&1), "{spelled:?}");
        assert_eq!(spelled.last(), Some(&3));
    }

    /// A shorter special piece still matches in what a longer one left unclaimed, even
    /// when an occurrence of it overlapped the longer one (llama.cpp's partition).
    #[test]
    fn shorter_specials_fill_the_gaps_longer_ones_leave() {
        let vocab: &[(&str, f32, i32)] = &[
            ("<unk>", 0.0, 2),
            ("aaa", 0.0, USER_DEFINED),
            ("aa", 0.0, USER_DEFINED),
            ("a", -1.0, NORMAL),
        ];
        let t = SpmTokenizer::new(
            vocab.iter().map(|v| v.0.to_owned()).collect(),
            vocab.iter().map(|v| v.1).collect(),
            vocab.iter().map(|v| v.2).collect(),
            Some(0),
            false,
        )
        .unwrap();
        // "aaaaa": "aaa" claims 0..3; "aa" at 2..4 overlaps, but 3..5 is free.
        assert_eq!(t.encode("aaaaa", true), vec![1, 2]);
        assert_eq!(t.encode("aaaa", true), vec![1, 3]);
    }

    #[test]
    fn decode_inverts_encode() {
        let t = tiny();
        for s in ["hi hi", "hit", "A\u{e9}", "<start_of_turn>hi\nhi"] {
            let ids = t.encode(s, true);
            assert_eq!(t.decode(&ids, false), s);
        }
        assert_eq!(t.decode(&t.encode("<start_of_turn>hi", true), true), "hi");
    }

    #[test]
    fn inconsistent_metadata_is_an_error() {
        let e = SpmTokenizer::new(vec!["a".into()], vec![], vec![1], None, false);
        assert!(e.is_err());
    }
}
