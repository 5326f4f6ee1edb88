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
//!
//! Carried traffic also ages out: past the profile's retention for its precedence
//! (`[retention]`, in days), an envelope carried for others is removed, and one that
//! arrives already that old is declined. The time is the same as for the rank, so an
//! envelope dated in the future ages from when it was judged; one dated more than a day
//! ahead of this node's clock is declined (otherwise each recount would judge it new
//! again, and it would never age out). A genesis never ages out:
//! without it, no later envelope of its channel can be opened by those it is carried to.

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

/// How far ahead of this node's clock an envelope carried for others may be dated (as
/// far as this node's clock follows a peer's): one dated later is declined, so that
/// everything carried ages out in the end, whatever its author's clock says.
pub(crate) const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// Whether an envelope for others is dated too far ahead to carry at `now_ms`.
pub(crate) fn too_far_ahead(s: &Summary, now_ms: u64) -> bool {
    s.hlc.wall_ms() > now_ms.saturating_add(MAX_AHEAD_MS)
}

/// How often the daemon removes what it carries for others past the profile's retention
/// (retention is given in days; a quarter of an hour late is within its precision).
pub(crate) const RETENTION_SWEEP: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The least rank that is never pushed out for room: the first IMMEDIATE.
const FIRST_URGENT: Rank = (Precedence::Immediate, Hlc::ZERO, EnvelopeId([0; 32]));

/// How long carried envelopes are kept, per precedence, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    routine: u64,
    priority: u64,
    immediate: u64,
    flash: u64,
}

impl Retention {
    pub(crate) fn of(r: &fieldmesh_profiles::Retention) -> Retention {
        let ms = |days: u32| {
            u64::try_from(fieldmesh_profiles::Retention::days(days).as_millis()).unwrap_or(u64::MAX)
        };
        Retention {
            routine: ms(r.routine_days),
            priority: ms(r.priority_days),
            immediate: ms(r.immediate_days),
            flash: ms(r.flash_days),
        }
    }

    fn keep_ms(&self, p: Precedence) -> u64 {
        match p {
            Precedence::Routine => self.routine,
            Precedence::Priority => self.priority,
            Precedence::Immediate => self.immediate,
            Precedence::Flash => self.flash,
        }
    }

    /// The oldest time still kept at `now_ms` for precedence `p`: anything before it has
    /// aged out.
    fn cutoff(&self, p: Precedence, now_ms: u64) -> Hlc {
        Hlc::new(now_ms.saturating_sub(self.keep_ms(p)), 0)
    }

    /// Whether an envelope for others is too old to carry at `now_ms` (never a genesis).
    pub(crate) fn aged_out(&self, s: &Summary, now_ms: u64) -> bool {
        s.kind != Kind::CHANNEL_GENESIS && s.hlc < self.cutoff(s.precedence, now_ms)
    }
}

/// The node's relay state. Taken before `access`, never while holding `channels`.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    /// What is held for others, read from the store on first need.
    pub(crate) held: Option<Held>,
    /// Envelopes declined since start: over the quota, or dated too far ahead.
    pub(crate) declined: u64,
    /// Envelopes pushed out since start, to make room.
    pub(crate) evicted: u64,
    /// Envelopes removed or declined since start, past their retention.
    pub(crate) aged_out: u64,
}

/// Bytes held for others, and what may make room.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The keys generation this count was made under (see `Node::keys_generation`).
    pub(crate) generation: u64,
    /// Admitted and counted in `used`, being stored: another ingest of the same
    /// envelope meanwhile does not count it again.
    pub(crate) pending: std::collections::HashSet<EnvelopeId>,
    pub(crate) used: u64,
    /// Everything held but the genesis envelopes, least worth first, with their sizes:
    /// ROUTINE and PRIORITY ones may be pushed out for room, and all of them age out.
    carried: BTreeMap<Rank, u64>,
}

impl Held {
    /// Counts a stored envelope.
    pub(crate) fn add(&mut self, id: EnvelopeId, s: &Summary, now_ms: u64) {
        self.used += u64::from(s.size);
        self.track(id, s, now_ms);
    }

    /// Lets a stored envelope (already counted in `used`) make room and age out later.
    pub(crate) fn track(&mut self, id: EnvelopeId, s: &Summary, now_ms: u64) {
        if s.kind != Kind::CHANNEL_GENESIS {
            self.carried
                .insert(rank(id, s, now_ms).0, u64::from(s.size));
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
        for (r, s) in self.carried.range(..min(*rank, FIRST_URGENT)) {
            if freed >= need {
                break;
            }
            freed += s;
            out.push((*r, *s));
        }
        if freed < need && !urgent {
            return None;
        }
        self.take(&out);
        Some(out)
    }

    /// The envelopes aged out at `now_ms` (taken out of the count), oldest first within
    /// each precedence.
    pub(crate) fn age_out(&mut self, retention: &Retention, now_ms: u64) -> Vec<(Rank, u64)> {
        let zero = EnvelopeId([0; 32]);
        let out: Vec<(Rank, u64)> = Precedence::ALL
            .iter()
            .flat_map(|&p| {
                let cutoff = retention.cutoff(p, now_ms);
                self.carried
                    .range((p, Hlc::ZERO, zero)..(p, cutoff, zero))
                    .map(|(r, s)| (*r, *s))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.take(&out);
        out
    }

    fn take(&mut self, victims: &[(Rank, u64)]) {
        for (r, s) in victims {
            self.carried.remove(r);
            self.used -= s;
        }
    }

    /// Undoes a judgement whose batch was not stored: the arrivals' reservations and
    /// the envelopes chosen to make room for them.
    pub(crate) fn release(&mut self, carried: &[(EnvelopeId, Summary)], victims: &[(Rank, u64)]) {
        for (id, s) in carried {
            self.used = self.used.saturating_sub(u64::from(s.size));
            self.pending.remove(id);
        }
        self.restore(victims);
    }

    /// Puts back envelopes that could not be pushed out after all.
    pub(crate) fn restore(&mut self, victims: &[(Rank, u64)]) {
        for (r, s) in victims {
            self.used += s;
            self.carried.insert(*r, *s);
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
    /// Aging out takes each precedence's own cutoff, never a genesis, and an envelope
    /// dated in the future ages from when it was judged.
    #[test]
    fn each_precedence_ages_out_at_its_own_retention() {
        const DAY: u64 = 86_400_000;
        let retention = Retention::of(&fieldmesh_profiles::Retention {
            routine_days: 1,
            priority_days: 2,
            immediate_days: 3,
            flash_days: 4,
            audit_days: 5,
        });
        let now = 100 * DAY;
        let at = |ms: u64| Hlc::new(ms, 0).0;
        let mut held = Held::default();
        held.add(id(1), &summary(Precedence::Routine, at(now), 10), now);
        held.add(id(2), &summary(Precedence::Priority, at(now), 10), now);
        held.add(id(3), &summary(Precedence::Immediate, at(now), 10), now);
        held.add(id(4), &summary(Precedence::Flash, at(now), 10), now);
        held.add(
            id(5),
            &summary(Precedence::Routine, at(now + 30 * DAY), 10),
            now,
        );
        let mut genesis = summary(Precedence::Routine, at(0), 10);
        genesis.kind = Kind::CHANNEL_GENESIS;
        held.add(id(6), &genesis, now);
        assert!(retention.aged_out(&summary(Precedence::Routine, at(now - DAY - 1), 1), now));
        assert!(!retention.aged_out(&summary(Precedence::Flash, at(now - DAY - 1), 1), now));
        assert!(!retention.aged_out(&genesis, now));

        let gone = |held: &mut Held, days: u64| -> Vec<EnvelopeId> {
            held.age_out(&retention, now + days * DAY + 1)
                .iter()
                .map(|(r, _)| r.2)
                .collect()
        };
        assert_eq!(gone(&mut held, 0), []);
        // The future-dated one was judged as of `now`: it ages with the other routine.
        assert_eq!(gone(&mut held, 1), [id(1), id(5)]);
        assert_eq!(gone(&mut held, 2), [id(2)]);
        assert_eq!(gone(&mut held, 4), [id(4), id(3)]);
        assert_eq!(held.used, 10, "the genesis stays");
    }
}
