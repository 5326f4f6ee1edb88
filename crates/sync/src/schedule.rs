//! What to send next: most urgent first, within the link's byte budget.

use crate::Meta;
use fieldmesh_core::{EnvelopeId, Hlc, Precedence};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// A token bucket of bytes: `rate` bytes per second, holding at most `burst` bytes.
///
/// Kept in thousandths of a byte, so that a refill every millisecond at a rate below
/// 1000 bytes a second still adds up (whole bytes per refill had rounded every refill
/// down to nothing: a slow link's queue, FLASH included, never moved). Spending more
/// than the bucket holds (an envelope larger than the burst, sent when the bucket is
/// full) leaves a debt that later refills pay first, so the rate holds over time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second: thousandths of a byte per millisecond.
    rate: u64,
    burst_milli: i128,
    /// Negative while in debt.
    milli: i128,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(rate_bytes_per_s: u64, burst: u64, now_ms: u64) -> TokenBucket {
        let burst_milli = i128::from(burst) * 1000;
        TokenBucket {
            rate: rate_bytes_per_s,
            burst_milli,
            milli: burst_milli,
            last_ms: now_ms,
        }
    }

    /// Refills for the time elapsed and returns the bytes available (0 while in debt).
    pub fn available(&mut self, now_ms: u64) -> u64 {
        let dt = now_ms.saturating_sub(self.last_ms);
        self.milli = (self.milli + i128::from(dt) * i128::from(self.rate)).min(self.burst_milli);
        self.last_ms = now_ms.max(self.last_ms);
        u64::try_from(self.milli.max(0) / 1000).unwrap_or(u64::MAX)
    }

    /// Whether the bucket holds its whole burst.
    pub fn is_full(&self) -> bool {
        self.milli >= self.burst_milli
    }

    /// Spends `n` bytes; more than the bucket holds leaves a debt.
    pub fn spend(&mut self, n: u64) {
        self.milli -= i128::from(n) * 1000;
    }

    /// Milliseconds until `n` bytes are available (0 if they are); never more than the
    /// burst is waited for.
    pub fn wait_ms(&self, n: u64) -> u64 {
        let need = (i128::from(n) * 1000).min(self.burst_milli) - self.milli;
        if need <= 0 {
            0
        } else if self.rate == 0 {
            u64::MAX
        } else {
            u64::try_from((need as u128).div_ceil(u128::from(self.rate))).unwrap_or(u64::MAX)
        }
    }
}

type Key = (Precedence, Reverse<Hlc>, Reverse<EnvelopeId>);

/// Envelopes waiting to go to one peer, ordered FLASH > IMMEDIATE > PRIORITY > ROUTINE,
/// oldest first within a precedence. Duplicates are ignored.
#[derive(Debug, Default, Clone)]
pub struct TransferQueue {
    heap: BinaryHeap<(Key, u32)>,
    queued: BTreeSet<EnvelopeId>,
    bytes: u64,
}

impl TransferQueue {
    /// Queues an envelope; returns false if it was already queued.
    pub fn push(&mut self, id: EnvelopeId, meta: &Meta) -> bool {
        if !self.queued.insert(id) {
            return false;
        }
        self.bytes += u64::from(meta.size);
        self.heap
            .push(((meta.precedence, Reverse(meta.hlc), Reverse(id)), meta.size));
        true
    }

    /// Number of queued envelopes.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Queued counts per precedence, most urgent first.
    pub fn backlog(&self) -> [(Precedence, usize); 4] {
        let mut out = Precedence::ALL.map(|p| (p, 0));
        for ((p, _, _), _) in &self.heap {
            out[3 - p.as_u8() as usize].1 += 1;
        }
        out
    }

    /// Takes the most urgent envelopes whose sizes fit in `budget` bytes, in sending
    /// order. Stops at the first that does not fit, so a large routine envelope never
    /// lets smaller ones of lower precedence jump ahead of it.
    pub fn take(&mut self, budget: u64, max: usize) -> Vec<EnvelopeId> {
        self.take_at_least(Precedence::Routine, budget, max)
    }

    /// Precedence of the envelope that would go next.
    pub fn head_precedence(&self) -> Option<Precedence> {
        self.heap.peek().map(|((p, _, _), _)| *p)
    }

    /// Like [`TransferQueue::take`], stopping at the first envelope below `at_least`.
    pub fn take_at_least(
        &mut self,
        at_least: Precedence,
        mut budget: u64,
        max: usize,
    ) -> Vec<EnvelopeId> {
        let mut out = Vec::new();
        while let Some(&((p, _, Reverse(id)), size)) = self.heap.peek() {
            if p < at_least || u64::from(size) > budget || out.len() >= max {
                break;
            }
            self.heap.pop();
            self.queued.remove(&id);
            self.bytes -= u64::from(size);
            budget -= u64::from(size);
            out.push(id);
        }
        out
    }

    /// Drops a queued envelope (the peer got it elsewhere).
    pub fn cancel(&mut self, id: &EnvelopeId) -> bool {
        if !self.queued.remove(id) {
            return false;
        }
        let mut rest = BinaryHeap::with_capacity(self.heap.len());
        for item in self.heap.drain() {
            if (item.0).2.0 == *id {
                self.bytes -= u64::from(item.1);
            } else {
                rest.push(item);
            }
        }
        self.heap = rest;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: Precedence, t: u64, size: u32) -> Meta {
        Meta {
            precedence: p,
            size,
            hlc: Hlc(t),
        }
    }

    #[test]
    fn flash_preempts_queued_routine() {
        let mut q = TransferQueue::default();
        for i in 0..1000u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            q.push(EnvelopeId(b), &m(Precedence::Routine, u64::from(i), 500));
        }
        let first = q.take(5_000, usize::MAX);
        assert_eq!(first.len(), 10);
        // A FLASH posted later goes before the remaining 990 routine envelopes.
        q.push(EnvelopeId([0xff; 32]), &m(Precedence::Flash, 5000, 300));
        assert_eq!(q.take(300, usize::MAX), vec![EnvelopeId([0xff; 32])]);
        assert_eq!(q.backlog()[3], (Precedence::Routine, 990));
        assert!(!q.push(first_id(0), &m(Precedence::Routine, 0, 500)) || q.len() == 991);
    }

    fn first_id(i: u32) -> EnvelopeId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        EnvelopeId(b)
    }

    #[test]
    fn budget_is_respected_and_cancel_works() {
        let mut q = TransferQueue::default();
        q.push(EnvelopeId([1; 32]), &m(Precedence::Priority, 1, 700));
        q.push(EnvelopeId([2; 32]), &m(Precedence::Routine, 0, 100));
        assert!(
            q.take(600, usize::MAX).is_empty(),
            "nothing may jump the priority envelope"
        );
        assert!(q.cancel(&EnvelopeId([1; 32])));
        assert_eq!(q.take(600, usize::MAX), vec![EnvelopeId([2; 32])]);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn token_bucket_refills_at_rate() {
        let mut b = TokenBucket::new(1000, 2000, 0);
        assert_eq!(b.available(0), 2000);
        b.spend(2000);
        assert_eq!(b.available(500), 500);
        assert_eq!(b.wait_ms(1000), 500);
        assert_eq!(b.available(10_000), 2000);
    }

    /// 300 bytes a second, looked at every millisecond: each look adds 0.3 bytes, which
    /// whole-byte arithmetic rounded away every time.
    #[test]
    fn slow_rates_refill_when_looked_at_often() {
        let mut b = TokenBucket::new(300, 600, 0);
        b.spend(600);
        for t in 1..=1000 {
            b.available(t);
        }
        assert_eq!(b.available(1000), 300);
        assert_eq!(b.wait_ms(600), 1000);
    }

    /// An envelope larger than the burst goes when the bucket is full and is paid for
    /// after: over time the link gets its rate, not a burst a second.
    #[test]
    fn more_than_the_burst_is_paid_back() {
        let mut b = TokenBucket::new(1000, 1000, 0);
        assert!(b.is_full());
        b.spend(3000);
        assert_eq!(b.available(1000), 0, "1000 bytes still owed");
        assert!(!b.is_full());
        assert_eq!(b.wait_ms(1), 1001);
        assert_eq!(b.available(3000), 1000);
        assert!(b.is_full());
    }
}
