//! Hybrid search: BM25 keyword ranking and embedding similarity, fused by reciprocal
//! rank. Either side alone still answers (no embedding model: keyword only).

use std::collections::HashMap;

/// BM25 parameters (the usual defaults).
const K1: f32 = 1.2;
const B: f32 = 0.75;
/// Reciprocal-rank-fusion constant.
const RRF_K: f32 = 60.0;
/// Semantic candidates below this cosine similarity are ignored.
pub const MIN_SIMILARITY: f32 = 0.25;

/// Lower-case alphanumeric words (grids and call-sign numbers stay whole).
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    /// Position of the document in the order it was added.
    pub doc: usize,
    pub score: f32,
    pub keyword_rank: Option<usize>,
    pub semantic_rank: Option<usize>,
    pub similarity: Option<f32>,
}

/// An in-memory index over documents added in order.
#[derive(Debug, Default)]
pub struct Index {
    postings: HashMap<String, Vec<(u32, u16)>>,
    doc_len: Vec<u32>,
    total_len: u64,
    /// Unit vectors, `dim` floats per document, when an embedding model is used.
    vectors: Vec<f32>,
    dim: usize,
}

impl Index {
    pub fn new(dim: usize) -> Index {
        Index {
            dim,
            ..Index::default()
        }
    }

    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// Adds a document; `vector` must have the index's dimension when it has one.
    pub fn add(&mut self, text: &str, vector: Option<&[f32]>) {
        let doc = self.doc_len.len() as u32;
        let mut tf: HashMap<String, u16> = HashMap::new();
        let mut n = 0u32;
        for t in tokens(text) {
            *tf.entry(t).or_default() += 1;
            n += 1;
        }
        for (t, c) in tf {
            self.postings.entry(t).or_default().push((doc, c));
        }
        self.doc_len.push(n);
        self.total_len += u64::from(n);
        if self.dim > 0 {
            match vector {
                Some(v) if v.len() == self.dim => self.vectors.extend_from_slice(v),
                _ => self.vectors.extend(std::iter::repeat_n(0.0, self.dim)),
            }
        }
    }

    /// BM25 ranking of the documents matching any query word.
    pub fn keyword(&self, query: &str, k: usize) -> Vec<(usize, f32)> {
        let n = self.doc_len.len() as f32;
        if n == 0.0 {
            return vec![];
        }
        let avg = self.total_len as f32 / n;
        let mut scores: HashMap<u32, f32> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for t in tokens(query) {
            if !seen.insert(t.clone()) {
                continue;
            }
            let Some(list) = self.postings.get(&t) else {
                continue;
            };
            let df = list.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(d, tf) in list {
                let tf = f32::from(tf);
                let len = self.doc_len[d as usize] as f32;
                *scores.entry(d).or_default() +=
                    idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
            }
        }
        top(scores.into_iter().map(|(d, s)| (d as usize, s)), k)
    }

    /// Documents by cosine similarity to `q` (a unit vector).
    pub fn semantic(&self, q: &[f32], k: usize) -> Vec<(usize, f32)> {
        if self.dim == 0 || q.len() != self.dim {
            return vec![];
        }
        let sims = self
            .vectors
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(i, v)| (i, crate::embed::cosine(q, v)))
            .filter(|(_, s)| *s >= MIN_SIMILARITY);
        top(sims, k)
    }

    /// Keyword and semantic rankings fused by reciprocal rank.
    pub fn search(&self, query: &str, q: Option<&[f32]>, k: usize) -> Vec<Hit> {
        let depth = (k * 4).max(50);
        let kw = self.keyword(query, depth);
        let sem = q.map(|q| self.semantic(q, depth)).unwrap_or_default();
        let mut hits: HashMap<usize, Hit> = HashMap::new();
        // Each ranking adds 1 / (RRF_K + rank) to the documents it ranks.
        fn fuse(hits: &mut HashMap<usize, Hit>, d: usize, rank: usize) -> &mut Hit {
            let h = hits.entry(d).or_insert_with(|| Hit {
                doc: d,
                score: 0.0,
                keyword_rank: None,
                semantic_rank: None,
                similarity: None,
            });
            h.score += 1.0 / (RRF_K + rank as f32);
            h
        }
        for (i, (d, _)) in kw.iter().enumerate() {
            fuse(&mut hits, *d, i + 1).keyword_rank = Some(i + 1);
        }
        for (i, (d, s)) in sem.iter().enumerate() {
            let h = fuse(&mut hits, *d, i + 1);
            h.semantic_rank = Some(i + 1);
            h.similarity = Some(*s);
        }
        let mut v: Vec<Hit> = hits.into_values().collect();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.doc.cmp(&a.doc)));
        v.truncate(k);
        v
    }
}

/// The `k` best (highest score; ties to the newest document).
fn top(it: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<(usize, f32)> {
    let mut v: Vec<(usize, f32)> = it.collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_ranking_prefers_rarer_terms_and_fusion_merges() {
        let mut ix = Index::new(2);
        ix.add("fuel resupply at checkpoint bravo", Some(&[1.0, 0.0]));
        ix.add("contact at the bridge, enemy fighters", Some(&[0.0, 1.0]));
        ix.add("bridge is intact, fuel low", Some(&[0.6, 0.8]));
        let kw = ix.keyword("bridge fuel", 10);
        assert_eq!(kw.len(), 3);
        assert_eq!(kw[0].0, 2, "the document with both words ranks first");
        // A query vector close to doc 1 lifts it in the fused ranking.
        let hits = ix.search("enemy", Some(&[0.0, 1.0]), 3);
        assert_eq!(hits[0].doc, 1);
        assert_eq!(hits[0].keyword_rank, Some(1));
        assert_eq!(hits[0].semantic_rank, Some(1));
        // Keyword-only when there is no vector.
        assert_eq!(ix.search("resupply", None, 3)[0].doc, 0);
        assert!(ix.search("zebra", None, 3).is_empty());
    }
}
