//! Range-based set reconciliation (after Meyer's "Range-Based Set Reconciliation").
//!
//! One side sends the fingerprint of the whole id space. A receiver whose fingerprint of
//! a range differs either lists its ids in that range (when it holds few) or splits the
//! range into `fanout` parts and sends their fingerprints. A receiver of an id list pushes
//! the ids the sender lacks and asks for the ones it lacks itself. Equal ranges cost one
//! fingerprint and end there, so bytes grow with the difference, rounds with
//! log_fanout(n / threshold).

pub use crate::index::IdRange;
use crate::riblt::{self, Cell, Decoder, MAX_CELLS_PER_MESSAGE, MAX_SYMBOLS};
use crate::{Fingerprint, Index};
use fieldmesh_core::EnvelopeId;
use thiserror::Error;

/// Most ids in one id list or want message.
pub const MAX_IDS_PER_MESSAGE: usize = 4096;

/// One reconciliation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeMsg {
    /// "My fingerprint of this range is …"
    Fingerprint {
        /// The range.
        range: IdRange,
        /// The sender's fingerprint of it.
        fp: Fingerprint,
    },
    /// "These are all the ids I hold in this range."
    IdList {
        /// The range.
        range: IdRange,
        /// The sender's ids in it, ascending.
        ids: Vec<EnvelopeId>,
    },
    /// "Send me these."
    Want {
        /// Ids the sender lacks, ascending.
        ids: Vec<EnvelopeId>,
    },
    /// Coded symbols `start..start+cells.len()` of the sender's whole set (see
    /// [`crate::riblt`]).
    Symbols {
        /// How many ids the sender holds.
        total: u64,
        /// Index of the first symbol.
        start: u32,
        /// The symbols.
        cells: Vec<Cell>,
    },
    /// "Send me coded symbols `start..end`."
    MoreSymbols {
        /// First.
        start: u32,
        /// End (exclusive).
        end: u32,
    },
    /// "Send me the ids with these 64-bit keys" (found by coded symbols).
    WantKeys {
        /// Keys, ascending.
        keys: Vec<u64>,
    },
}

/// A peer sent a message that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RangeError {
    /// A range with lower >= upper.
    #[error("invalid range")]
    InvalidRange,
    /// Ids not ascending, outside their range, or too many.
    #[error("malformed id list: {0}")]
    MalformedIds(&'static str),
    /// The exchange did not finish within the allowed rounds.
    #[error("reconciliation did not converge within {0} rounds")]
    NoConvergence(usize),
    /// Coded symbols out of sequence, or too many asked for.
    #[error("bad coded symbols: {0}")]
    Symbols(&'static str),
    /// One batch asked for more work than any honest batch needs (see [`Budget`]).
    #[error("a batch that asks for {spent} units of work (at most {limit})")]
    TooMuchWork {
        /// Units spent when the batch was refused.
        spent: u64,
        /// The batch's allowance.
        limit: u64,
    },
}

/// The work one batch of messages may cost, counted in ids visited, listed or pushed and
/// coded symbols made. Every message is small on the wire but some cost a pass over a
/// range of the index (a 9-byte request for symbols costs a pass over the whole set; a
/// 4-byte empty id list over everything pushes the whole set), so a batch of thousands of
/// them would freeze the node and fill its memory. An honest batch covers disjoint ranges:
/// its fingerprints, listings and splits together visit each id at most about twice,
/// and it asks for symbols once. The allowance is twice that, plus room for the id lists
/// and symbols a full frame can carry. A message is charged before its work where the
/// size is known, after it otherwise, so a refused batch did at most one message more.
#[derive(Debug)]
struct Budget {
    spent: u64,
    limit: u64,
}

impl Budget {
    fn for_index(index: &Index) -> Budget {
        let n = index.len() as u64;
        Budget {
            spent: 0,
            limit: 4 * n + 2 * u64::from(MAX_SYMBOLS) + 16 * MAX_IDS_PER_MESSAGE as u64,
        }
    }

    fn spend(&mut self, units: u64) -> Result<(), RangeError> {
        self.spent = self.spent.saturating_add(units);
        if self.spent > self.limit {
            return Err(RangeError::TooMuchWork {
                spent: self.spent,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// What one side does in response to a batch of messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    /// Messages to send back (empty: this side is done).
    pub reply: Vec<RangeMsg>,
    /// Ids the peer lacks: queue them for transfer.
    pub push: Vec<EnvelopeId>,
}

/// Reconciliation parameters. Both sides may use different values.
#[derive(Debug, Clone, Copy)]
pub struct Reconciler {
    /// Sub-ranges per split.
    pub fanout: usize,
    /// A differing range with at most this many ids is settled by listing them.
    pub threshold: usize,
    /// Coded symbols sent when whole sets differ (0: range fingerprints only).
    pub symbols: u32,
}

impl Default for Reconciler {
    fn default() -> Self {
        Reconciler {
            fanout: 32,
            threshold: 16,
            symbols: 32,
        }
    }
}

/// Runs of consecutive coded-symbol messages joined into one message each, or None if
/// there is nothing to join. Adding symbols costs a pass over our whole set whatever
/// their number: 29 messages of 512 (a difference of 10,000) added one by one had taken
/// a second over a set of 100,000, long enough for the periodic session to start again.
fn merge_symbols(msgs: &[RangeMsg]) -> Option<Vec<RangeMsg>> {
    let runs = msgs
        .windows(2)
        .any(|w| matches!(w, [RangeMsg::Symbols { .. }, RangeMsg::Symbols { .. }]));
    if !runs {
        return None;
    }
    let mut out: Vec<RangeMsg> = Vec::with_capacity(msgs.len());
    for m in msgs {
        if let (
            Some(RangeMsg::Symbols {
                total,
                start,
                cells,
            }),
            RangeMsg::Symbols {
                total: next_total,
                start: next_start,
                cells: next_cells,
            },
        ) = (out.last_mut(), m)
            && u64::from(*start) + cells.len() as u64 == u64::from(*next_start)
        {
            *total = *next_total;
            cells.extend_from_slice(next_cells);
            continue;
        }
        out.push(m.clone());
    }
    Some(out)
}

fn check_ids(range: &IdRange, ids: &[EnvelopeId]) -> Result<(), RangeError> {
    if ids.len() > MAX_IDS_PER_MESSAGE {
        return Err(RangeError::MalformedIds("too many ids"));
    }
    if !ids.windows(2).all(|w| w[0] < w[1]) {
        return Err(RangeError::MalformedIds("ids not strictly ascending"));
    }
    let inside = |id: &EnvelopeId| {
        range.lower.is_none_or(|l| *id >= l) && range.upper.is_none_or(|u| *id < u)
    };
    if !ids.iter().all(inside) {
        return Err(RangeError::MalformedIds("id outside its range"));
    }
    Ok(())
}

impl Reconciler {
    /// A sub-range after a split: a fingerprint (cheap when the peer's matches), or an
    /// empty id list for an empty range (cheaper still, and settles it at once).
    fn describe(&self, index: &Index, range: IdRange, out: &mut Vec<RangeMsg>) {
        let (count, fp) = index.fingerprint(&range);
        if count == 0 {
            out.push(RangeMsg::IdList {
                range,
                ids: Vec::new(),
            });
        } else {
            out.push(RangeMsg::Fingerprint { range, fp });
        }
    }

    /// The opening messages of a session: the ids themselves when few, else the
    /// fingerprint of everything.
    pub fn initiate(&self, index: &Index) -> Vec<RangeMsg> {
        if index.len() <= self.threshold {
            return vec![RangeMsg::IdList {
                range: IdRange::ALL,
                ids: index.ids().copied().collect(),
            }];
        }
        let (_, fp) = index.fingerprint(&IdRange::ALL);
        vec![RangeMsg::Fingerprint {
            range: IdRange::ALL,
            fp,
        }]
    }

    /// Answers a batch of messages from the peer, without coded-symbol state (for
    /// range messages; use [`Reconciler::respond_in`] in a session).
    pub fn respond(&self, index: &Index, msgs: &[RangeMsg]) -> Result<Step, RangeError> {
        self.respond_in(index, msgs, &mut Decoder::default())
    }

    /// Answers a batch of messages from the peer; `decoder` holds this peer's coded
    /// symbols across the rounds of a session.
    pub fn respond_in(
        &self,
        index: &Index,
        msgs: &[RangeMsg],
        decoder: &mut Decoder,
    ) -> Result<Step, RangeError> {
        let mut step = Step::default();
        let mut want = Vec::new();
        let mut their_total = None;
        let merged = merge_symbols(msgs);
        let mut budget = Budget::for_index(index);
        let n = index.len() as u64;
        for m in merged.as_deref().unwrap_or(msgs) {
            match m {
                RangeMsg::Symbols {
                    total,
                    start,
                    cells,
                } => {
                    budget.spend(n + cells.len() as u64)?;
                    if !decoder.add(index, *start, cells) {
                        return Err(RangeError::Symbols("out of sequence"));
                    }
                    if decoder.is_inconsistent() {
                        decoder.reset_decoding();
                        return Err(RangeError::Symbols("inconsistent (forged) symbols"));
                    }
                    their_total = Some(*total);
                }
                RangeMsg::MoreSymbols { start, end } => {
                    if start >= end || *end > MAX_SYMBOLS {
                        return Err(RangeError::Symbols("invalid range of symbols"));
                    }
                    if end - start > MAX_SYMBOLS / 4 {
                        return Err(RangeError::Symbols("too many symbols asked for at once"));
                    }
                    budget.spend(n + u64::from(end - start))?;
                    let (total, cells) = decoder.symbols_to_send(index, *start, *end);
                    step.reply.extend(symbol_msgs(total, *start, &cells));
                }
                RangeMsg::WantKeys { keys } => {
                    if keys.len() > MAX_IDS_PER_MESSAGE {
                        return Err(RangeError::MalformedIds("too many keys"));
                    }
                    budget.spend(keys.len() as u64)?;
                    for k in keys {
                        let before = step.push.len();
                        step.push.extend(riblt::ids_with_key(index, *k));
                        budget.spend((step.push.len() - before) as u64)?;
                    }
                }
                RangeMsg::Fingerprint { range, fp } => {
                    if !range.is_valid() {
                        return Err(RangeError::InvalidRange);
                    }
                    let (count, mine) = index.fingerprint(range);
                    budget.spend(count)?;
                    if mine == *fp {
                        continue;
                    }
                    // Listing, splitting or encoding the range visits it again.
                    budget.spend(if *range == IdRange::ALL { n } else { count })?;
                    if count as usize <= self.threshold {
                        step.reply.push(RangeMsg::IdList {
                            range: *range,
                            ids: index.range(range).copied().collect(),
                        });
                    } else if *range == IdRange::ALL && self.symbols > 0 {
                        // The sets differ: settle it with coded symbols, whose cost
                        // grows with the difference alone.
                        let first = self.symbols.min(MAX_CELLS_PER_MESSAGE as u32);
                        let (total, cells) = decoder.symbols_to_send(index, 0, first);
                        step.reply.extend(symbol_msgs(total, 0, &cells));
                    } else {
                        for sub in index.split(range, self.fanout) {
                            self.describe(index, sub, &mut step.reply);
                        }
                    }
                }
                RangeMsg::IdList { range, ids } => {
                    if !range.is_valid() {
                        return Err(RangeError::InvalidRange);
                    }
                    check_ids(range, ids)?;
                    budget.spend(ids.len() as u64)?;
                    let mut visited = 0u64;
                    let mut theirs = ids.iter().peekable();
                    for mine in index.range(range) {
                        visited += 1;
                        while theirs.next_if(|t| *t < mine).is_some_and(|t| {
                            want.push(*t);
                            true
                        }) {}
                        if theirs.next_if_eq(&mine).is_none() {
                            step.push.push(*mine);
                        }
                    }
                    want.extend(theirs.copied());
                    budget.spend(visited)?;
                }
                RangeMsg::Want { ids } => {
                    check_ids(&IdRange::ALL, ids)?;
                    budget.spend(ids.len() as u64)?;
                    step.push.extend(ids.iter().filter(|id| index.contains(id)));
                }
            }
        }
        if let Some(total) = their_total {
            self.after_symbols(index, total, decoder, &mut step);
        }
        want.sort();
        want.dedup();
        for chunk in want.chunks(MAX_IDS_PER_MESSAGE) {
            step.reply.push(RangeMsg::Want {
                ids: chunk.to_vec(),
            });
        }
        Ok(step)
    }

    /// After a batch of coded symbols: settle the difference if it is decoded, else ask
    /// for more, sized from the difference of the set sizes (a lower bound on the
    /// symmetric difference), or fall back to range fingerprints if too many are needed.
    fn after_symbols(&self, index: &Index, total: u64, decoder: &mut Decoder, step: &mut Step) {
        if decoder.done() {
            // Keys are looked up in the current index: whatever arrived since the
            // snapshot is found too.
            for k in decoder.local_only() {
                step.push.extend(riblt::ids_with_key(index, *k));
            }
            let mut keys = decoder.remote_only().to_vec();
            keys.sort_unstable();
            keys.dedup();
            for chunk in keys.chunks(MAX_IDS_PER_MESSAGE) {
                step.reply.push(RangeMsg::WantKeys {
                    keys: chunk.to_vec(),
                });
            }
            decoder.reset_decoding();
            return;
        }
        let have = decoder.len();
        let gap = total.abs_diff(decoder.local_len());
        let next = u64::from(have) * 2;
        let next = next.max(gap.saturating_mul(3) / 2 + 16);
        // The size gap bounds the difference from below; a difference far beyond it
        // (both sides hold much the other lacks) is settled by ranges instead.
        let cap = (gap.saturating_mul(3) + 1024).min(u64::from(MAX_SYMBOLS));
        if next > cap {
            decoder.reset_decoding();
            for sub in index.split(&IdRange::ALL, self.fanout) {
                self.describe(index, sub, &mut step.reply);
            }
            return;
        }
        step.reply.push(RangeMsg::MoreSymbols {
            start: have,
            end: next as u32,
        });
    }

    /// Runs a whole session between two local indexes: for tests, benches and the
    /// simulator's accounting. Returns (ids A lacks, ids B lacks, round trips).
    pub fn run_local(
        &self,
        a: &Index,
        b: &Index,
        max_rounds: usize,
    ) -> Result<(Vec<EnvelopeId>, Vec<EnvelopeId>, usize), RangeError> {
        self.run_local_measured(a, b, max_rounds)
            .map(|(an, bn, rounds, _)| (an, bn, rounds))
    }

    /// [`Reconciler::run_local`], also returning the bytes of every frame exchanged
    /// (the real codec, plus a 4-byte length prefix per frame).
    pub fn run_local_measured(
        &self,
        a: &Index,
        b: &Index,
        max_rounds: usize,
    ) -> Result<(Vec<EnvelopeId>, Vec<EnvelopeId>, usize, usize), RangeError> {
        let (mut a_needs, mut b_needs) = (Vec::new(), Vec::new());
        let (mut a_dec, mut b_dec) = (Decoder::default(), Decoder::default());
        let mut msgs = self.initiate(a);
        let mut bytes = wire_len(&msgs);
        let mut half_trips = 1;
        let mut a_turn = false;
        while !msgs.is_empty() {
            if half_trips > 2 * max_rounds {
                return Err(RangeError::NoConvergence(max_rounds));
            }
            let (me, pushes_to, dec) = if a_turn {
                (a, &mut b_needs, &mut a_dec)
            } else {
                (b, &mut a_needs, &mut b_dec)
            };
            let step = self.respond_in(me, &msgs, dec)?;
            pushes_to.extend(step.push);
            msgs = step.reply;
            if !msgs.is_empty() {
                bytes += wire_len(&msgs);
                half_trips += 1;
            }
            a_turn = !a_turn;
        }
        a_needs.sort();
        a_needs.dedup();
        b_needs.sort();
        b_needs.dedup();
        Ok((a_needs, b_needs, half_trips.div_ceil(2), bytes))
    }
}

fn wire_len(msgs: &[RangeMsg]) -> usize {
    crate::frame::Frame::Range(msgs.to_vec()).encode().len() + 4
}

/// Coded symbols from `start`, as messages of at most [`MAX_CELLS_PER_MESSAGE`].
fn symbol_msgs(total: u64, start: u32, cells: &[Cell]) -> Vec<RangeMsg> {
    cells
        .chunks(MAX_CELLS_PER_MESSAGE)
        .enumerate()
        .map(|(i, c)| RangeMsg::Symbols {
            total,
            start: start + (i * MAX_CELLS_PER_MESSAGE) as u32,
            cells: c.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
