//! Two engines wired back to back: the smallest simulator.

use super::*;
use fieldmesh_core::{Hlc, sha256};
use std::collections::{BTreeMap, VecDeque};

type Net = BTreeMap<EnvelopeId, (Meta, Vec<u8>)>;

struct Node {
    engine: Engine<u8>,
    held: BTreeMap<EnvelopeId, Vec<u8>>,
    arrivals: Vec<EnvelopeId>,
    disconnected: Vec<u8>,
    /// Pushes are sent but never arrive nor get acknowledged (a link far slower than
    /// its budget): they are recorded here instead.
    stall_pushes: Option<Vec<EnvelopeId>>,
}

fn envelope(n: u64, p: Precedence) -> (EnvelopeId, Meta, Vec<u8>) {
    let bytes = format!("envelope {n}").into_bytes();
    (
        EnvelopeId(sha256(&bytes)),
        Meta {
            precedence: p,
            size: 500,
            hlc: Hlc(n),
        },
        bytes,
    )
}

fn node(cfg: EngineConfig, items: &[(EnvelopeId, Meta, Vec<u8>)]) -> Node {
    let mut ix = Index::default();
    let mut held = BTreeMap::new();
    for (id, m, b) in items {
        ix.insert(*id, *m);
        held.insert(*id, b.clone());
    }
    Node {
        engine: Engine::new(cfg, ix),
        held,
        arrivals: vec![],
        disconnected: vec![],
        stall_pushes: None,
    }
}

/// Delivers outputs between nodes 0 and 1 until quiet; `tick_ms` of virtual time pass
/// whenever the queue drains, up to `max_ms`. Request ids from 1000 up are pushes: their
/// answer comes back as `PushDone`.
fn run(
    nodes: &mut [Node; 2],
    net: &Net,
    start: Vec<(usize, Input<u8>)>,
    from_ms: u64,
    tick_ms: u64,
    max_ms: u64,
) -> u64 {
    let mut q: VecDeque<(usize, Input<u8>)> = start.into();
    let mut now = from_ms;
    let mut pushes: BTreeMap<u64, EnvelopeId> = BTreeMap::new();
    let mut next_push = 1000u64;
    loop {
        while let Some((to, input)) = q.pop_front() {
            let from_peer = 1 - to;
            let outs = nodes[to].engine.handle(now, input);
            for o in outs {
                match o {
                    Output::Request { frame, .. } => q.push_back((
                        from_peer,
                        Input::Request {
                            peer: to as u8,
                            request: 0,
                            frame,
                        },
                    )),
                    Output::Respond { request, .. } if request >= 1000 => {
                        let id = pushes.remove(&request).expect("push in flight");
                        q.push_back((
                            from_peer,
                            Input::PushDone {
                                peer: to as u8,
                                id,
                                delivered: true,
                            },
                        ));
                    }
                    Output::Respond { frame, .. } => q.push_back((
                        from_peer,
                        Input::Response {
                            peer: to as u8,
                            frame,
                        },
                    )),
                    Output::Push { id, .. } if nodes[to].stall_pushes.is_some() => {
                        nodes[to].stall_pushes.as_mut().expect("checked").push(id);
                    }
                    Output::Push { id, .. } => {
                        let bytes = nodes[to].held[&id].clone();
                        next_push += 1;
                        pushes.insert(next_push, id);
                        let frame = Frame::Envelope(bytes).encode();
                        q.push_back((
                            from_peer,
                            Input::Request {
                                peer: to as u8,
                                request: next_push,
                                frame,
                            },
                        ));
                    }
                    Output::Ingest { peer, envelope } => {
                        let id = EnvelopeId(sha256(&envelope));
                        match net.get(&id) {
                            Some((meta, _)) => {
                                if nodes[to].held.insert(id, envelope).is_none() {
                                    nodes[to].arrivals.push(id);
                                }
                                q.push_back((
                                    to,
                                    Input::Inserted {
                                        id,
                                        meta: *meta,
                                        from: Some(peer),
                                    },
                                ));
                            }
                            None => q.push_back((to, Input::Refused { peer })),
                        }
                    }
                    Output::Announce { frame } => q.push_back((
                        from_peer,
                        Input::Announce {
                            peer: to as u8,
                            frame,
                        },
                    )),
                    Output::Disconnect { peer, .. } => nodes[to].disconnected.push(peer),
                    Output::Unanswered { .. } => {}
                }
            }
        }
        if now >= max_ms {
            return now;
        }
        now += tick_ms;
        q.push_back((0, Input::Tick));
        q.push_back((1, Input::Tick));
    }
}

fn all(items: &[(EnvelopeId, Meta, Vec<u8>)]) -> Net {
    items
        .iter()
        .map(|(id, m, b)| (*id, (*m, b.clone())))
        .collect()
}

#[test]
fn two_peers_converge_on_the_union() {
    let items: Vec<_> = (0..300)
        .map(|n| envelope(n, Precedence::ALL[(n % 4) as usize]))
        .collect();
    let net = all(&items);
    let a_items: Vec<_> = items[..200].to_vec();
    let b_items: Vec<_> = items[150..].to_vec();
    let mut nodes = [
        node(EngineConfig::default(), &a_items),
        node(EngineConfig::default(), &b_items),
    ];
    run(
        &mut nodes,
        &net,
        vec![(0, Input::PeerUp(1)), (1, Input::PeerUp(0))],
        0,
        100,
        1000,
    );
    assert_eq!(nodes[0].held.len(), 300);
    assert_eq!(nodes[1].held.len(), 300);
    assert_eq!(nodes[0].engine.index().len(), 300);
    // Each missing envelope crossed exactly once.
    assert_eq!(nodes[0].arrivals.len(), 100);
    assert_eq!(nodes[1].arrivals.len(), 150);
}

#[test]
fn a_forgotten_envelope_is_fetched_again_at_the_next_reconciliation() {
    let items: Vec<_> = (0..50).map(|n| envelope(n, Precedence::Routine)).collect();
    let net = all(&items);
    let cfg = EngineConfig {
        resync_interval_ms: 1_000,
        ..EngineConfig::default()
    };
    // Node 1 gets everything from node 0 (pushes, acknowledged).
    let mut nodes = [node(cfg, &items), node(cfg, &[])];
    let now = run(
        &mut nodes,
        &net,
        vec![(0, Input::PeerUp(1)), (1, Input::PeerUp(0))],
        0,
        100,
        2_000,
    );
    assert_eq!(nodes[1].arrivals.len(), 50);
    // Then finds one copy damaged.
    let lost = items[17].0;
    nodes[1].held.remove(&lost);
    let outs = nodes[1].engine.handle(now, Input::Forget { id: lost });
    assert!(outs.is_empty(), "{outs:?}");
    assert!(!nodes[1].engine.index().contains(&lost));
    assert_eq!(nodes[1].engine.index().len(), 49);
    // Forgetting what is not held changes nothing.
    nodes[1].engine.handle(now, Input::Forget { id: lost });
    assert_eq!(nodes[1].engine.index().len(), 49);
    // Node 0 does not serve a want for what it delivered moments ago (a want computed
    // before the push arrived): resyncs come every second, the push was acknowledged
    // after time 0, and its memory lasts 5 s.
    let memory = nodes[0].engine.delivered_memory_ms();
    assert_eq!(memory, 5_000);
    let now = run(&mut nodes, &net, vec![], now, 100, now + 1_500);
    assert_eq!(nodes[1].arrivals.len(), 50, "not served twice at once");
    // Once that memory has passed, it is.
    run(&mut nodes, &net, vec![], now, 100, now + memory + 1_000);
    assert_eq!(nodes[1].arrivals.len(), 51, "fetched again, and only it");
    assert_eq!(nodes[1].arrivals[50], lost);
    assert!(nodes[1].engine.index().contains(&lost));
    assert_eq!(nodes[1].held[&lost], net[&lost].1);
}

/// A push that could not be loaded (the copy here is damaged) is reported done, but the
/// peer never got it: once the copy is repaired, it goes to that peer at once.
#[test]
fn a_repaired_envelope_goes_to_the_peer_its_failed_push_was_for() {
    let (id, meta, _) = envelope(1, Precedence::Routine);
    let mut n = node(EngineConfig::default(), &[]);
    n.engine.handle(0, Input::PeerUp(7));
    let first = n.engine.handle(
        1,
        Input::Inserted {
            id,
            meta,
            from: None,
        },
    );
    let pushes = |o: &[Output<u8>]| {
        o.iter()
            .filter(|x| matches!(x, Output::Push { peer: 7, id: i } if *i == id))
            .count()
    };
    // The push goes out; loading it fails; the driver forgets it and reports it done.
    let first = [first, n.engine.handle(2, Input::Tick)].concat();
    assert_eq!(pushes(&first), 1, "{first:?}");
    assert!(n.engine.handle(3, Input::Forget { id }).is_empty());
    n.engine.handle(
        4,
        Input::PushDone {
            peer: 7,
            id,
            delivered: true,
        },
    );
    // Repaired from elsewhere: pushed to peer 7 again.
    let o = n.engine.handle(
        5,
        Input::Inserted {
            id,
            meta,
            from: Some(8),
        },
    );
    let o = [o, n.engine.handle(6, Input::Tick)].concat();
    assert_eq!(pushes(&o), 1, "{o:?}");
}

#[test]
fn flash_overtakes_routine_on_a_throttled_link() {
    let routine: Vec<_> = (0..1000)
        .map(|n| envelope(n, Precedence::Routine))
        .collect();
    let flash = envelope(5000, Precedence::Flash);
    let mut everything = routine.clone();
    everything.push(flash.clone());
    let net = all(&everything);
    // 5 KB/s: ten 500-byte envelopes per second.
    let cfg = EngineConfig {
        link_rate_bytes_per_s: 5_000,
        link_burst_bytes: 5_000,
        ..EngineConfig::default()
    };
    let mut nodes = [node(cfg, &routine), node(cfg, &[])];
    let t = run(
        &mut nodes,
        &net,
        vec![(0, Input::PeerUp(1)), (1, Input::PeerUp(0))],
        0,
        100,
        2_000,
    );
    let before = nodes[1].arrivals.len();
    assert!(before > 0 && before < 100, "throttle not applied: {before}");
    // A FLASH is posted on A after the 1,000 routine ones were queued.
    nodes[0].held.insert(flash.0, flash.2.clone());
    run(
        &mut nodes,
        &net,
        vec![(
            0,
            Input::Inserted {
                id: flash.0,
                meta: flash.1,
                from: None,
            },
        )],
        t,
        100,
        t + 500,
    );
    let pos = nodes[1]
        .arrivals
        .iter()
        .position(|id| *id == flash.0)
        .expect("flash delivered");
    assert!(
        pos <= before + 10,
        "flash arrived at position {pos}, after {before} routine had arrived"
    );
    assert!(
        nodes[1].arrivals.len() < 1001,
        "flash must not wait for the routine backlog"
    );
}

/// On a link slower than its budget the window fills with bulk awaiting acknowledgement;
/// an IMMEDIATE or FLASH envelope still goes at once (within the reserve), and routine
/// traffic does not.
#[test]
fn urgent_traffic_does_not_wait_for_a_full_window() {
    let routine: Vec<_> = (0..300).map(|n| envelope(n, Precedence::Routine)).collect();
    let cfg = EngineConfig::default();
    let mut nodes = [node(cfg, &routine), node(cfg, &[])];
    nodes[0].stall_pushes = Some(vec![]);
    let t = run(
        &mut nodes,
        &all(&routine),
        vec![(0, Input::PeerUp(1)), (1, Input::PeerUp(0))],
        0,
        100,
        1_000,
    );
    let stalled = nodes[0].stall_pushes.as_ref().map_or(0, Vec::len);
    assert_eq!(stalled, cfg.max_inflight, "the window is full");

    let late_routine = envelope(6000, Precedence::Routine);
    let flash = envelope(5000, Precedence::Flash);
    let immediate = envelope(5001, Precedence::Immediate);
    for (id, meta, bytes) in [&late_routine, &flash, &immediate] {
        nodes[0].held.insert(*id, bytes.clone());
        let o = nodes[0].engine.handle(
            t,
            Input::Inserted {
                id: *id,
                meta: *meta,
                from: None,
            },
        );
        let pushed: Vec<_> = o
            .iter()
            .filter_map(|o| match o {
                Output::Push { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        if meta.precedence >= Precedence::Immediate {
            assert_eq!(pushed, vec![*id], "urgent goes at once: {o:?}");
        } else {
            assert!(pushed.is_empty(), "routine waits for the window: {o:?}");
        }
    }
    // Ticks change nothing while no acknowledgement comes back.
    let o = nodes[0].engine.handle(t + 5_000, Input::Tick);
    assert!(!o.iter().any(|o| matches!(o, Output::Push { .. })), "{o:?}");
}

/// A periodic session waits while a transfer to the peer is under way (it would only
/// find the difference being sent again, at a cost in bytes that grows with it), and
/// opens once the transfer is done, or after ten intervals at the latest.
#[test]
fn resync_waits_for_a_transfer_under_way() {
    let routine: Vec<_> = (0..300).map(|n| envelope(n, Precedence::Routine)).collect();
    let cfg = EngineConfig {
        resync_interval_ms: 1_000,
        ..EngineConfig::default()
    };
    let mut nodes = [node(cfg, &routine), node(cfg, &[])];
    nodes[0].stall_pushes = Some(vec![]);
    run(
        &mut nodes,
        &all(&routine),
        vec![(0, Input::PeerUp(1)), (1, Input::PeerUp(0))],
        0,
        100,
        500,
    );
    let sessions = |o: &[Output<u8>]| {
        o.iter()
            .filter(|o| matches!(o, Output::Request { .. }))
            .count()
    };
    // The first session is done and pushes are in flight: no session for 9 intervals.
    for t in (1_000..10_000).step_by(500) {
        let o = nodes[0].engine.handle(t, Input::Tick);
        assert_eq!(sessions(&o), 0, "at {t} ms: {o:?}");
    }
    // The tenth interval forces one.
    let o = nodes[0].engine.handle(10_600, Input::Tick);
    assert_eq!(sessions(&o), 1, "{o:?}");
}

#[test]
fn garbage_and_forgeries_earn_strikes_then_disconnect() {
    let items: Vec<_> = (0..10).map(|n| envelope(n, Precedence::Routine)).collect();
    let cfg = EngineConfig {
        max_strikes: 3,
        ..EngineConfig::default()
    };
    let mut n = node(cfg, &items);
    n.engine.handle(0, Input::PeerUp(7));
    let o = n.engine.handle(
        1,
        Input::Request {
            peer: 7,
            request: 1,
            frame: vec![0xde, 0xad],
        },
    );
    assert!(
        matches!(o.last(), Some(Output::Respond { request: 1, .. })),
        "the node still answers"
    );
    let o = n.engine.handle(
        2,
        Input::Request {
            peer: 7,
            request: 2,
            frame: vec![1; 10_000_000],
        },
    );
    assert!(!o.iter().any(|x| matches!(x, Output::Disconnect { .. })));
    let o = n.engine.handle(3, Input::Refused { peer: 7 });
    assert!(
        o.iter()
            .any(|x| matches!(x, Output::Disconnect { peer: 7, .. })),
        "{o:?}"
    );
    assert_eq!(n.engine.peer_stats()[0].1.strikes, 3);

    // Gone, the peer stays listed with its strikes, and is banned.
    n.engine.handle(4, Input::PeerDown(7));
    let (_, st) = &n.engine.peer_stats()[0];
    assert!(!st.connected);
    assert_eq!((st.strikes, st.banned_until_ms), (3, 4 + cfg.ban_ms));
    // Coming back within the ban: refused at once, and still banned.
    let o = n.engine.handle(5, Input::PeerUp(7));
    assert!(
        matches!(o.as_slice(), [Output::Disconnect { peer: 7, reason }] if reason.contains("banned")),
        "{o:?}"
    );
    assert!(!n.engine.peer_stats()[0].1.connected);
    // Nor is a request answered that arrives before (or without) a connection event.
    let o = n.engine.handle(
        6,
        Input::Request {
            peer: 7,
            request: 3,
            frame: Frame::Range(vec![]).encode(),
        },
    );
    assert!(
        matches!(
            o.as_slice(),
            [
                Output::Disconnect { peer: 7, .. },
                Output::Unanswered { request: 3 }
            ]
        ),
        "{o:?}"
    );
    // After the ban, it starts again from zero strikes.
    let o = n.engine.handle(4 + cfg.ban_ms, Input::PeerUp(7));
    assert!(
        !o.iter().any(|x| matches!(x, Output::Disconnect { .. })),
        "{o:?}"
    );
    let (_, st) = &n.engine.peer_stats()[0];
    assert!(st.connected);
    assert_eq!((st.strikes, st.banned_until_ms), (0, 0));
}

/// Requests to peer 7 among `o`: how the resync tests see a session start.
fn requests(o: &[Output<u8>]) -> usize {
    o.iter()
        .filter(|o| matches!(o, Output::Request { peer: 7, .. }))
        .count()
}

/// A session whose request fails (a link that drops it) is given up, and the next one
/// starts after the resync interval instead of never.
#[test]
fn a_failed_session_request_does_not_stop_resync() {
    let cfg = EngineConfig {
        resync_interval_ms: 1_000,
        ..EngineConfig::default()
    };
    let mut n = node(cfg, &[envelope(1, Precedence::Routine)]);
    assert_eq!(
        requests(&n.engine.handle(0, Input::PeerUp(7))),
        1,
        "session opened"
    );
    // The request is lost: without news, no session ever starts again.
    assert_eq!(requests(&n.engine.handle(5_000, Input::Tick)), 0);
    n.engine.handle(5_001, Input::RequestFailed { peer: 7 });
    assert_eq!(
        requests(&n.engine.handle(5_500, Input::Tick)),
        0,
        "waits a moment"
    );
    assert_eq!(
        requests(&n.engine.handle(6_001, Input::Tick)),
        1,
        "then a new session (the grace or the interval, whichever is shorter)"
    );
}

/// An answer that breaks the protocol earns a strike and ends the session: the next one
/// starts at the usual interval (it had stayed open until the peer reconnected).
#[test]
fn a_garbled_answer_does_not_stop_resync() {
    let cfg = EngineConfig {
        resync_interval_ms: 1_000,
        ..EngineConfig::default()
    };
    let mut n = node(cfg, &[envelope(1, Precedence::Routine)]);
    assert_eq!(requests(&n.engine.handle(0, Input::PeerUp(7))), 1);
    for (t, frame) in [
        (10, vec![0xff, 0, 1]),
        (1_010, Frame::Envelope(b"not an answer".to_vec()).encode()),
    ] {
        n.engine.handle(
            t,
            Input::Response {
                peer: 7,
                frame: frame.clone(),
            },
        );
        assert_eq!(
            requests(&n.engine.handle(t + 1_000, Input::Tick)),
            1,
            "a new session after {frame:?}"
        );
    }
    assert_eq!(n.engine.total_strikes(), 2);
}

/// A profile may allow frames larger than any node decodes: reconciliation frames are
/// packed to the cap every node applies, so an honest peer never refuses them.
#[test]
fn reconciliation_frames_fit_every_decoder() {
    let cfg = EngineConfig {
        max_frame_bytes: 4 * 1024 * 1024,
        ..EngineConfig::default()
    };
    let n = node(cfg, &[]);
    let ids: Vec<EnvelopeId> = (0..40_000u64)
        .map(|i| EnvelopeId(sha256(&i.to_be_bytes())))
        .collect();
    let mut msgs: Vec<RangeMsg> = ids
        .chunks(crate::ranger::MAX_IDS_PER_MESSAGE)
        .map(|c| {
            let mut ids = c.to_vec();
            ids.sort();
            RangeMsg::Want { ids }
        })
        .collect();
    // And more messages than a frame can count.
    msgs.extend(std::iter::repeat_n(
        RangeMsg::MoreSymbols { start: 0, end: 1 },
        70_000,
    ));
    let frames = n.engine.pack(msgs.clone());
    assert!(frames.len() > 2);
    let mut back = Vec::new();
    for f in &frames {
        assert!(f.len() <= MAX_FRAME_BYTES, "{} bytes", f.len());
        match Frame::decode(f, MAX_FRAME_BYTES) {
            Ok(Frame::Range(m)) => back.extend(m),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, msgs);
}

/// Two nodes that meet open one session between them: the lower id at once, the other
/// answers it and waits a whole interval for its own. If the opener's session never
/// comes, the other opens its own after the grace.
#[test]
fn a_meeting_opens_one_session_and_the_other_side_covers_a_silent_opener() {
    let cfg = EngineConfig {
        resync_interval_ms: 30_000,
        answer_grace_ms: 2_000,
        ..EngineConfig::default()
    };
    let requests = |o: &[Output<u8>]| {
        o.iter()
            .filter(|o| matches!(o, Output::Request { .. }))
            .count()
    };
    let items = [envelope(1, Precedence::Routine)];
    let mut low = node(cfg, &items);
    low.engine = Engine::new(cfg, low.engine.index().clone()).with_local(1);
    let mut high = node(cfg, &items);
    high.engine = Engine::new(cfg, high.engine.index().clone()).with_local(2);
    let opened = low.engine.handle(0, Input::PeerUp(2));
    assert_eq!(requests(&opened), 1, "the lower id opens at once");
    assert_eq!(
        requests(&high.engine.handle(0, Input::PeerUp(1))),
        0,
        "the other waits"
    );
    // The opener's request arrives and is answered: the answerer's own waits an interval.
    let Some(Output::Request { frame, .. }) = opened.into_iter().next() else {
        panic!("a request");
    };
    high.engine.handle(
        10,
        Input::Request {
            peer: 1,
            request: 1,
            frame,
        },
    );
    assert_eq!(high.engine.peer_stats()[0].1.sessions_answered, 1);
    assert_eq!(requests(&high.engine.handle(2_100, Input::Tick)), 0);
    assert_eq!(requests(&high.engine.handle(29_000, Input::Tick)), 0);
    assert_eq!(requests(&high.engine.handle(30_100, Input::Tick)), 1);
    // A silent opener: the other side opens its own after the grace.
    let mut alone = node(cfg, &items);
    alone.engine = Engine::new(cfg, alone.engine.index().clone()).with_local(2);
    assert_eq!(requests(&alone.engine.handle(0, Input::PeerUp(1))), 0);
    assert_eq!(requests(&alone.engine.handle(1_900, Input::Tick)), 0);
    assert_eq!(requests(&alone.engine.handle(2_000, Input::Tick)), 1);
}

/// An envelope this node declined counts as held (peers do not offer it again) but is
/// never pushed: a peer that wants it is not sent a push that cannot load.
#[test]
fn a_declined_envelope_is_never_pushed() {
    let (id, meta, _) = envelope(42, Precedence::Routine);
    let mut n = node(EngineConfig::default(), &[]);
    n.engine.handle(0, Input::PeerUp(7));
    n.engine.handle(1, Input::Declined { id, meta });
    assert!(n.engine.index().contains(&id));
    let o = n.engine.handle(
        2,
        Input::Request {
            peer: 7,
            request: 1,
            frame: Frame::Range(vec![RangeMsg::Want { ids: vec![id] }]).encode(),
        },
    );
    let o = [o, n.engine.handle(3, Input::Tick)].concat();
    assert!(!o.iter().any(|x| matches!(x, Output::Push { .. })), "{o:?}");
}

/// An envelope removed to make room (relay quota) stays counted as held: a peer that
/// lacks it is never pushed it, and a peer that has it does not send it back.
#[test]
fn an_evicted_envelope_is_neither_pushed_nor_fetched_back() {
    let kept = envelope(1, Precedence::Routine);
    let gone = envelope(2, Precedence::Routine);
    let theirs = envelope(3, Precedence::Routine);
    let net = all(&[kept.clone(), gone.clone(), theirs.clone()]);
    for peer_has_it in [false, true] {
        let mut b_items = vec![theirs.clone()];
        if peer_has_it {
            b_items.push(gone.clone());
        }
        let mut nodes = [
            node(EngineConfig::default(), &[kept.clone(), gone.clone()]),
            node(EngineConfig::default(), &b_items),
        ];
        nodes[0].engine.handle(0, Input::Evicted { id: gone.0 });
        nodes[0].held.remove(&gone.0);
        run(
            &mut nodes,
            &net,
            vec![(0, Input::PeerUp(1)), (1, Input::PeerUp(0))],
            0,
            100,
            2_000,
        );
        assert!(nodes[0].engine.index().contains(&gone.0));
        assert_eq!(
            nodes[0].arrivals,
            vec![theirs.0],
            "peer has it: {peer_has_it}"
        );
        assert_eq!(
            nodes[1].arrivals,
            vec![kept.0],
            "peer has it: {peer_has_it}"
        );
    }
}

/// A strike for a peer not connected (an event arriving after it left) is kept for its
/// return.
#[test]
fn a_strike_after_the_peer_left_is_kept() {
    let mut n = node(EngineConfig::default(), &[]);
    n.engine.handle(0, Input::PeerUp(7));
    n.engine.handle(1, Input::PeerDown(7));
    n.engine.handle(2, Input::Refused { peer: 7 });
    assert_eq!(n.engine.peer_stats()[0].1.strikes, 1);
    n.engine.handle(3, Input::PeerUp(7));
    let (_, st) = &n.engine.peer_stats()[0];
    assert!(st.connected);
    assert_eq!(st.strikes, 1);
}

/// A peer whose last bad frames were judged after it left (reaching the strike limit
/// while away) is banned when it comes back.
#[test]
fn struck_out_while_away_is_banned_on_return() {
    let cfg = EngineConfig {
        max_strikes: 2,
        ..EngineConfig::default()
    };
    let mut n = node(cfg, &[]);
    n.engine.handle(0, Input::PeerUp(7));
    n.engine.handle(1, Input::PeerDown(7));
    n.engine.handle(2, Input::Refused { peer: 7 });
    n.engine.handle(3, Input::Refused { peer: 7 });
    let o = n.engine.handle(4, Input::PeerUp(7));
    assert!(
        matches!(o.as_slice(), [Output::Disconnect { peer: 7, reason }] if reason.contains("banned")),
        "{o:?}"
    );
    assert_eq!(n.engine.peer_stats()[0].1.banned_until_ms, 4 + cfg.ban_ms);
}

/// Strikes short of a ban are kept across reconnections: a hostile peer cannot wipe
/// them by reconnecting.
#[test]
fn strikes_outlive_a_reconnection() {
    let cfg = EngineConfig {
        max_strikes: 3,
        ..EngineConfig::default()
    };
    let mut n = node(cfg, &[]);
    for round in 0..2u64 {
        n.engine.handle(10 * round, Input::PeerUp(7));
        let o = n.engine.handle(10 * round + 1, Input::Refused { peer: 7 });
        assert!(!o.iter().any(|x| matches!(x, Output::Disconnect { .. })));
        n.engine.handle(10 * round + 2, Input::PeerDown(7));
    }
    n.engine.handle(30, Input::PeerUp(7));
    let o = n.engine.handle(31, Input::Refused { peer: 7 });
    assert!(
        o.iter()
            .any(|x| matches!(x, Output::Disconnect { peer: 7, .. })),
        "third strike over three connections: {o:?}"
    );
}

#[test]
fn bulk_stream_carries_only_envelopes() {
    let cfg = EngineConfig {
        max_strikes: 2,
        ..EngineConfig::default()
    };
    let mut n = node(cfg, &[]);
    n.engine.handle(0, Input::PeerUp(7));
    let env = envelope(1, Precedence::Routine).2;
    let o = n.engine.handle(
        1,
        Input::Bulk {
            peer: 7,
            frame: BulkFrame::whole(Frame::Envelope(env.clone()).encode()),
        },
    );
    assert_eq!(
        o,
        vec![Output::Ingest {
            peer: 7,
            envelope: env
        }]
    );
    // A well-formed frame of another kind is a protocol violation there, and garbage is
    // garbage: two strikes disconnect.
    let o = n.engine.handle(
        2,
        Input::Bulk {
            peer: 7,
            frame: BulkFrame::whole(Frame::Prune(vec![]).encode()),
        },
    );
    assert!(o.is_empty(), "{o:?}");
    let o = n.engine.handle(
        3,
        Input::Bulk {
            peer: 7,
            frame: BulkFrame::whole(vec![0xde, 0xad]),
        },
    );
    assert!(
        o.iter()
            .any(|x| matches!(x, Output::Disconnect { peer: 7, .. })),
        "{o:?}"
    );
    assert_eq!(n.engine.peer_stats()[0].1.strikes, 2);
}

#[test]
fn pushes_stay_within_the_byte_window() {
    // Room for two 500-byte envelopes in flight, whatever the count limit says.
    let cfg = EngineConfig {
        max_inflight_bytes: 1_200,
        ..EngineConfig::default()
    };
    let items: Vec<_> = (0..5).map(|n| envelope(n, Precedence::Routine)).collect();
    let mut n = node(cfg, &[]);
    n.engine.handle(0, Input::PeerUp(1));
    let mut pushed = Vec::new();
    for (id, meta, _) in &items {
        for o in n.engine.handle(
            1,
            Input::Inserted {
                id: *id,
                meta: *meta,
                from: None,
            },
        ) {
            if let Output::Push { id, .. } = o {
                pushed.push(id);
            }
        }
    }
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    // One acknowledgement frees room for exactly one more.
    let o = n.engine.handle(
        2,
        Input::PushDone {
            peer: 1,
            id: pushed[0],
            delivered: true,
        },
    );
    let more: Vec<_> = o
        .iter()
        .filter(|x| matches!(x, Output::Push { .. }))
        .collect();
    assert_eq!(more.len(), 1, "{o:?}");
}
