//! The lower bound: earliest arrival through the time-varying contact graph.
//!
//! For an envelope of `size` bytes posted at node `src` at `t0`, the earliest time it can
//! be at node v is found with Dijkstra over (node, time): leaving u at time t over link
//! (u, v) takes the first up-interval of that link that still has room for the frame
//! after t, and costs serialization plus latency (no jitter, no loss, no queueing, no
//! protocol: the physics of the contacts alone). Crashed nodes neither hold nor forward
//! (their links' intervals already exclude the down time). Hostile nodes are left out:
//! honest nodes stop talking to them, so paths through them are not promised.

use crate::scenario::{Link, Micros};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Frame bytes of an envelope push (frame header included).
pub fn push_frame_bytes(envelope: u64) -> u64 {
    envelope + 2
}

/// Earliest departure over `link` at or after `t` for a frame taking `ser` to send,
/// with the contact lasting at least `ser + margin` from departure.
fn departure(link: &Link, t: Micros, ser: Micros, margin: Micros) -> Option<Micros> {
    let need = ser + margin;
    let i = link
        .up
        .partition_point(|&(_, e)| e < t.saturating_add(need));
    link.up[i..].iter().find_map(|&(s, e)| {
        let d = s.max(t);
        (d + need <= e).then_some(d)
    })
}

/// What a contact must leave, beyond the frame itself, for a protocol to use it: a
/// transport handshake and a reconciliation exchange (three round trips) and a second.
/// Pairs reachable only through shorter contacts are not required to converge.
pub fn usable_contact_margin(link: &Link) -> Micros {
    6 * link.latency_us + 1_000_000
}

/// Earliest arrival at every node (`Micros::MAX` if unreachable before the end).
pub fn earliest_arrival(
    links: &[Link],
    adj: &[Vec<(u32, u32)>],
    excluded: &[bool],
    src: u32,
    t0: Micros,
    frame: u64,
    margin: impl Fn(&Link) -> Micros,
) -> Vec<Micros> {
    let n = adj.len();
    let mut best = vec![Micros::MAX; n];
    best[src as usize] = t0;
    let mut heap = BinaryHeap::new();
    heap.push(Reverse((t0, src)));
    while let Some(Reverse((t, u))) = heap.pop() {
        if t > best[u as usize] {
            continue;
        }
        for &(v, l) in &adj[u as usize] {
            if excluded[v as usize] {
                continue;
            }
            let link = &links[l as usize];
            let ser = link.serialization_us(frame);
            if let Some(d) = departure(link, t, ser, margin(link)) {
                let arrive = d + ser + link.latency_us;
                if arrive < best[v as usize] {
                    best[v as usize] = arrive;
                    heap.push(Reverse((arrive, v)));
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(a: u32, b: u32, up: Vec<(Micros, Micros)>) -> Link {
        Link {
            a,
            b,
            model: "t".into(),
            latency_us: 1_000,
            jitter_us: 0,
            loss: 0.0,
            rate_bps: 8_000_000,
            mtu: 1200,
            up,
        }
    }

    #[test]
    fn waits_for_contacts_and_takes_the_faster_path() {
        // 0-1 always; 1-2 only from t=10s; 0-2 never.
        let links = vec![
            link(0, 1, vec![(0, 100_000_000)]),
            link(1, 2, vec![(10_000_000, 20_000_000)]),
        ];
        let adj = vec![vec![(1, 0)], vec![(0, 0), (2, 1)], vec![(1, 1)]];
        let ex = vec![false; 3];
        let none = |_: &Link| 0;
        let t = earliest_arrival(&links, &adj, &ex, 0, 0, 952, none);
        // 952 frame bytes + 48 packet header = 1000 bytes at 1 MB/s = 1 ms, plus 1 ms.
        assert_eq!(t[1], 2_000);
        assert_eq!(t[2], 10_000_000 + 2_000);
        // Posted after the window closes: never.
        let late = earliest_arrival(&links, &adj, &ex, 0, 30_000_000, 952, none);
        // Posted 0.5 s before the window closes: physically possible, not usable.
        let tight = earliest_arrival(&links, &adj, &ex, 0, 19_500_000, 952, none);
        assert_eq!(tight[2], 19_500_000 + 2_000 + 2_000);
        let usable = earliest_arrival(&links, &adj, &ex, 0, 19_500_000, 952, usable_contact_margin);
        assert_eq!(usable[2], Micros::MAX);
        assert_eq!(late[2], Micros::MAX);
        // Node 1 excluded: 2 unreachable.
        let t = earliest_arrival(&links, &adj, &[false, true, false], 0, 0, 952, none);
        assert_eq!(t[2], Micros::MAX);
    }
}
