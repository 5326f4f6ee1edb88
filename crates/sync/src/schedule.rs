//! What to send next: most urgent first, within the link's byte budget.

use crate::Meta;
use fieldmesh_core::{EnvelopeId, Hlc, Precedence};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// A token bucket of bytes: `rate` bytes per second, holding at most `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(rate_bytes_per_s: u64, burst: u64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            rate: rate_bytes_per_s,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Refills for the time elapsed and returns the bytes available.
    pub fn available(&mut self, now_ms: u64) -> u64 {
        let dt = now_ms.saturating_sub(self.last_ms);
        self.tokens = (self.tokens + dt.saturating_mul(self.rate) / 1000).min(self.burst);
        self.last_ms = now_ms.max(self.last_ms);
        self.tokens
    }

    /// Whether the bucket holds its whole burst.
    pub fn is_full(&self) -> bool {
        self.tokens >= self.burst
    }

    /// Spends `n` bytes (saturating).
    pub fn spend(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    /// Milliseconds until `n` bytes are available (0 if they are).
    pub fn wait_ms(&self, n: u64) -> u64 {
        let need = n.min(self.burst).saturating_sub(self.tokens);
        if self.rate == 0 {
            u64::MAX
        } else {
            (need * 1000).div_ceil(self.rate)
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
}
