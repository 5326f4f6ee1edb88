//! Store-and-forward accounting: what a node carries only for others (a compartment it
//! holds no key of), against the profile's relay quota.
//!
//! Past the quota a relay makes room before it refuses: an arriving envelope may push out
//! stored ones that are worth less, ranked by precedence, then time (older first), then
//! id. The time is the author's, but never later than this node's clock when judged: an
//! envelope dated in the future (a bad clock, or a hostile author) ranks as new, not as
//! newer than everything to come. Only ROUTINE and PRIORITY envelopes are ever pushed out, and never a channel's
//! genesis. An arrival that cannot be given room is declined, unless it is IMMEDIATE or
//! FLASH: those are always carried (after pushing out what they can), even past the quota.

use fieldmesh_core::{EnvelopeId, Hlc, Kind, Precedence};
use fieldmesh_store::Summary;
use std::cmp::min;
use std::collections::BTreeMap;

/// How much an envelope is worth keeping: the least is pushed out first.
pub(crate) type Rank = (Precedence, Hlc, EnvelopeId);

/// The rank of an envelope judged at `now_ms`, and whether it may ever be pushed out.
pub(crate) fn rank(id: EnvelopeId, s: &Summary, now_ms: u64) -> (Rank, bool) {
    let evictable = s.precedence < Precedence::Immediate && s.kind != Kind::CHANNEL_GENESIS;
    let time = min(s.hlc, Hlc::new(now_ms, u16::MAX));
    ((s.precedence, time, id), evictable)
}

/// The node's relay state. Taken before `access`, never while holding `channels`.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    /// What is held for others, read from the store on first need.
    pub(crate) held: Option<Held>,
    /// Envelopes declined since start, over the quota.
    pub(crate) declined: u64,
    /// Envelopes pushed out since start, to make room.
    pub(crate) evicted: u64,
}

/// Bytes held for others, and what may make room.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) used: u64,
    /// Envelopes that may be pushed out, least worth first, with their sizes.
    evictable: BTreeMap<Rank, u64>,
}

impl Held {
    /// Counts a stored envelope.
    pub(crate) fn add(&mut self, id: EnvelopeId, s: &Summary, now_ms: u64) {
        self.used += u64::from(s.size);
        self.track(id, s, now_ms);
    }

    /// Lets a stored envelope (already counted in `used`) make room later.
    pub(crate) fn track(&mut self, id: EnvelopeId, s: &Summary, now_ms: u64) {
        let (rank, evictable) = rank(id, s, now_ms);
        if evictable {
            self.evictable.insert(rank, u64::from(s.size));
        }
    }

    /// Room for `size` more bytes ranked `rank` within `quota`. Returns the envelopes
    /// to push out for it (each ranked below `rank`, least worth first; taken out of
    /// the count), or None if they would not free enough: then nothing is taken, unless
    /// `urgent`, when what can go goes (an urgent arrival is kept either way).
    pub(crate) fn make_room(
        &mut self,
        quota: u64,
        size: u64,
        rank: &Rank,
        urgent: bool,
    ) -> Option<Vec<(Rank, u64)>> {
        let need = (self.used + size).saturating_sub(quota);
        if need == 0 {
            return Some(Vec::new());
        }
        let mut freed = 0;
        let mut out = Vec::new();
        for (r, s) in self.evictable.range(..*rank) {
            if freed >= need {
                break;
            }
            freed += s;
            out.push((*r, *s));
        }
        if freed < need && !urgent {
            return None;
        }
        for (r, s) in &out {
            self.evictable.remove(r);
            self.used -= s;
        }
        Some(out)
    }

    /// Puts back envelopes that could not be pushed out after all.
    pub(crate) fn restore(&mut self, victims: &[(Rank, u64)]) {
        for (r, s) in victims {
            self.used += s;
            self.evictable.insert(*r, *s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(precedence: Precedence, hlc: u64, size: u32) -> Summary {
        Summary {
            kind: Kind::BLOB_CHUNK,
            precedence,
            hlc: Hlc(hlc),
            size,
        }
    }

    fn id(n: u8) -> EnvelopeId {
        EnvelopeId([n; 32])
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn room_is_made_from_the_least_worth_and_never_from_urgent_or_genesis() {
        let mut held = Held::default();
        held.add(id(1), &summary(Precedence::Routine, 10, 100), NOW);
        held.add(id(2), &summary(Precedence::Routine, 20, 100), NOW);
        held.add(id(3), &summary(Precedence::Priority, 5, 100), NOW);
        held.add(id(4), &summary(Precedence::Flash, 1, 100), NOW);
        let mut genesis = summary(Precedence::Routine, 0, 100);
        genesis.kind = Kind::CHANNEL_GENESIS;
        held.add(id(5), &genesis, NOW);
        assert_eq!(held.used, 500);

        // Within the quota: nothing goes.
        let newer = rank(id(9), &summary(Precedence::Routine, 30, 100), NOW).0;
        assert_eq!(held.make_room(600, 100, &newer, false), Some(vec![]));
        // Past it: the oldest routine goes first.
        let room = held.make_room(500, 100, &newer, false).unwrap();
        assert_eq!(room.iter().map(|(r, _)| r.2).collect::<Vec<_>>(), [id(1)]);
        assert_eq!(held.used, 400);
        held.used += 100; // the arrival is stored

        // An older routine arrival is worth less than everything stored: declined, and
        // nothing is taken.
        let older = rank(id(8), &summary(Precedence::Routine, 1, 100), NOW).0;
        assert_eq!(held.make_room(500, 100, &older, false), None);
        assert_eq!(held.used, 500);

        // A priority arrival pushes out routine ones before older priority ones.
        let priority = rank(id(7), &summary(Precedence::Priority, 40, 200), NOW).0;
        let room = held.make_room(500, 200, &priority, false).unwrap();
        assert_eq!(
            room.iter().map(|(r, _)| r.2).collect::<Vec<_>>(),
            [id(2), id(3)]
        );
        held.used += 200;
        assert_eq!(held.used, 500);

        // Only FLASH and the genesis are left: an urgent arrival is kept past the quota
        // without pushing them out; a routine one is declined.
        let flash = rank(id(6), &summary(Precedence::Flash, 50, 100), NOW).0;
        assert_eq!(held.make_room(300, 100, &flash, true), Some(vec![]));
        let routine = rank(id(10), &summary(Precedence::Routine, 60, 100), NOW).0;
        held.used = 300;
        assert_eq!(held.make_room(300, 100, &routine, false), None);

        // What could not be removed after all goes back.
        held.restore(&room);
        assert_eq!(held.used, 500);
        let room = held.make_room(500, 100, &newer, false).unwrap();
        assert_eq!(room.iter().map(|(r, _)| r.2).collect::<Vec<_>>(), [id(2)]);
    }

    /// An envelope dated in the future ranks as judged now: a later arrival can still
    /// push it out.
    #[test]
    fn a_future_date_does_not_outrank_later_traffic() {
        let mut held = Held::default();
        let far = Hlc::new(NOW + 86_400_000, 0).0;
        held.add(id(1), &summary(Precedence::Routine, far, 100), NOW);
        let later = Hlc::new(NOW + 1_000, 0).0;
        let arrival = rank(
            id(2),
            &summary(Precedence::Routine, later, 100),
            NOW + 1_000,
        )
        .0;
        let room = held.make_room(100, 100, &arrival, false).unwrap();
        assert_eq!(room.iter().map(|(r, _)| r.2).collect::<Vec<_>>(), [id(1)]);
    }
}
