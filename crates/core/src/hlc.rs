//! Hybrid logical clock: 48 bits of wall-clock milliseconds, 16 bits of logical counter.
//!
//! Timestamps from one clock are strictly increasing even if the wall clock stalls or
//! steps back, and a node that observes a remote timestamp never issues one below it.
//! A remote timestamp too far in the future (a peer with a wrong clock) is not allowed
//! to drag our clock forward: [`HlcClock::observe`] ignores it beyond `max_skew_ms`.

use serde::{Deserialize, Serialize};

/// A hybrid-logical-clock timestamp. Ordered by wall time, then logical counter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
const MAX_WALL_MS: u64 = (1 << 48) - 1;

impl Hlc {
    /// The zero timestamp, before everything.
    pub const ZERO: Hlc = Hlc(0);

    /// Builds a timestamp from parts; `wall_ms` is clamped to 48 bits.
    pub fn new(wall_ms: u64, logical: u16) -> Hlc {
        Hlc((wall_ms.min(MAX_WALL_MS) << LOGICAL_BITS) | u64::from(logical))
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter within one millisecond.
    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// A node's clock state. Pure: the caller passes the wall time in.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    max_skew_ms: u64,
}

impl Default for HlcClock {
    fn default() -> Self {
        HlcClock::new(Hlc::ZERO, 24 * 3600 * 1000)
    }
}

impl HlcClock {
    /// A clock that has issued nothing after `last`, ignoring remote timestamps more than
    /// `max_skew_ms` ahead of the wall clock.
    pub fn new(last: Hlc, max_skew_ms: u64) -> HlcClock {
        HlcClock { last, max_skew_ms }
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Issues a new timestamp, strictly greater than every one before.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let candidate = Hlc::new(now_ms, 0);
        let next = if candidate > self.last {
            candidate
        } else {
            Hlc(self.last.0 + 1)
        };
        debug_assert!(next > self.last);
        self.last = next;
        next
    }

    /// Takes a remote timestamp into account. Returns `false` (and ignores it) if it is
    /// more than `max_skew_ms` ahead of `now_ms`.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> bool {
        if remote.wall_ms() > now_ms.saturating_add(self.max_skew_ms) {
            return false;
        }
        if remote > self.last {
            self.last = remote;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parts_round_trip() {
        let h = Hlc::new(1_700_000_000_123, 7);
        assert_eq!(h.wall_ms(), 1_700_000_000_123);
        assert_eq!(h.logical(), 7);
        assert_eq!(h.to_string(), "1700000000123.7");
    }

    #[test]
    fn skewed_remote_is_ignored() {
        let mut c = HlcClock::new(Hlc::ZERO, 1000);
        assert!(!c.observe(Hlc::new(10_000, 0), 1_000));
        assert_eq!(c.last(), Hlc::ZERO);
        assert!(c.observe(Hlc::new(1_500, 3), 1_000));
        assert!(c.tick(1_000) > Hlc::new(1_500, 3));
    }

    proptest! {
        /// Whatever the wall clock does, issued timestamps strictly increase and never
        /// fall below an accepted remote timestamp.
        #[test]
        fn monotonic(steps in proptest::collection::vec((0u64..5_000, any::<bool>(), 0u64..6_000), 1..200)) {
            let mut c = HlcClock::new(Hlc::ZERO, 2_000);
            let mut prev = Hlc::ZERO;
            for (now, remote_first, remote_ms) in steps {
                if remote_first {
                    let r = Hlc::new(remote_ms, 1);
                    if c.observe(r, now) {
                        prop_assert!(c.last() >= r);
                    }
                }
                let t = c.tick(now);
                prop_assert!(t > prev);
                prev = t;
            }
        }
    }
}

/// Formats milliseconds since the epoch as RFC 3339 UTC (`2026-11-22T05:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod rfc3339_tests {
    #[test]
    fn rfc3339_known_values() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
