//! Range-based set reconciliation (after Meyer's "Range-Based Set Reconciliation").
//!
//! One side sends the fingerprint of the whole id space. A receiver whose fingerprint of
//! a range differs either lists its ids in that range (when it holds few) or splits the
//! range into `fanout` parts and sends their fingerprints. A receiver of an id list pushes
//! the ids the sender lacks and asks for the ones it lacks itself. Equal ranges cost one
//! fingerprint and end there, so bytes grow with the difference, rounds with
//! log_fanout(n / threshold).

pub use crate::index::IdRange;
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
}

impl Default for Reconciler {
    fn default() -> Self {
        Reconciler {
            fanout: 32,
            threshold: 16,
        }
    }
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
        let (count, fp) = index.fingerprint(&IdRange::ALL);
        if count as usize <= self.threshold {
            vec![RangeMsg::IdList {
                range: IdRange::ALL,
                ids: index.ids().copied().collect(),
            }]
        } else {
            vec![RangeMsg::Fingerprint {
                range: IdRange::ALL,
                fp,
            }]
        }
    }

    /// Answers a batch of messages from the peer.
    pub fn respond(&self, index: &Index, msgs: &[RangeMsg]) -> Result<Step, RangeError> {
        let mut step = Step::default();
        let mut want = Vec::new();
        for m in msgs {
            match m {
                RangeMsg::Fingerprint { range, fp } => {
                    if !range.is_valid() {
                        return Err(RangeError::InvalidRange);
                    }
                    let (count, mine) = index.fingerprint(range);
                    if mine == *fp {
                        continue;
                    }
                    if count as usize <= self.threshold {
                        step.reply.push(RangeMsg::IdList {
                            range: *range,
                            ids: index.range(range).copied().collect(),
                        });
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
                    let mut theirs = ids.iter().peekable();
                    for mine in index.range(range) {
                        while theirs.next_if(|t| *t < mine).is_some_and(|t| {
                            want.push(*t);
                            true
                        }) {}
                        if theirs.next_if_eq(&mine).is_none() {
                            step.push.push(*mine);
                        }
                    }
                    want.extend(theirs.copied());
                }
                RangeMsg::Want { ids } => {
                    check_ids(&IdRange::ALL, ids)?;
                    step.push.extend(ids.iter().filter(|id| index.contains(id)));
                }
            }
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

    /// Runs a whole session between two local indexes: for tests, benches and the
    /// simulator's accounting. Returns (ids A lacks, ids B lacks, round trips).
    pub fn run_local(
        &self,
        a: &Index,
        b: &Index,
        max_rounds: usize,
    ) -> Result<(Vec<EnvelopeId>, Vec<EnvelopeId>, usize), RangeError> {
        let (mut a_needs, mut b_needs) = (Vec::new(), Vec::new());
        let mut msgs = self.initiate(a);
        let mut half_trips = 1;
        let mut a_turn = false;
        while !msgs.is_empty() {
            if half_trips > 2 * max_rounds {
                return Err(RangeError::NoConvergence(max_rounds));
            }
            let (me, pushes_to) = if a_turn {
                (a, &mut b_needs)
            } else {
                (b, &mut a_needs)
            };
            let step = self.respond(me, &msgs)?;
            pushes_to.extend(step.push);
            msgs = step.reply;
            if !msgs.is_empty() {
                half_trips += 1;
            }
            a_turn = !a_turn;
        }
        a_needs.sort();
        a_needs.dedup();
        b_needs.sort();
        b_needs.dedup();
        Ok((a_needs, b_needs, half_trips.div_ceil(2)))
    }
}

#[cfg(test)]
mod tests;
