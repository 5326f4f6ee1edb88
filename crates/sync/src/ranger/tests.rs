use super::*;
use crate::Meta;
use fieldmesh_core::{Hlc, Precedence, sha256};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn id(n: u64) -> EnvelopeId {
    EnvelopeId(sha256(&n.to_be_bytes()))
}

fn index(ids: impl IntoIterator<Item = u64>) -> Index {
    let mut ix = Index::default();
    for n in ids {
        ix.insert(
            id(n),
            Meta {
                precedence: Precedence::Routine,
                size: 500,
                hlc: Hlc(n),
            },
        );
    }
    ix
}

fn expected(a: &BTreeSet<u64>, b: &BTreeSet<u64>) -> (Vec<EnvelopeId>, Vec<EnvelopeId>) {
    let mut an: Vec<_> = b.difference(a).map(|n| id(*n)).collect();
    let mut bn: Vec<_> = a.difference(b).map(|n| id(*n)).collect();
    an.sort();
    bn.sort();
    (an, bn)
}

/// Bytes a message costs on the wire, from the real codec.
fn wire_bytes(msgs: &[RangeMsg]) -> usize {
    crate::frame::Frame::Range(msgs.to_vec()).encode().len()
}

#[test]
fn identical_sets_finish_in_one_round_trip() {
    let a = index(0..10_000);
    let (an, bn, rounds) = Reconciler::default().run_local(&a, &a.clone(), 10).unwrap();
    assert!(an.is_empty() && bn.is_empty());
    assert_eq!(rounds, 1);
}

#[test]
fn small_difference_in_a_large_store_is_cheap() {
    let base: BTreeSet<u64> = (0..100_000).collect();
    let mut b = base.clone();
    b.insert(1_000_000);
    let (ia, ib) = (index(base.iter().copied()), index(b.iter().copied()));
    let r = Reconciler {
        fanout: 16,
        threshold: 32,
        symbols: 0,
    };
    let (an, bn, rounds) = r.run_local(&ia, &ib, 10).unwrap();
    assert_eq!(an, vec![id(1_000_000)]);
    assert!(bn.is_empty());
    assert!(rounds <= 4, "rounds {rounds}");
    // Count the bytes of the whole exchange.
    let mut msgs = r.initiate(&ia);
    let mut bytes = wire_bytes(&msgs);
    let mut turn_b = true;
    while !msgs.is_empty() {
        msgs = r
            .respond(if turn_b { &ib } else { &ia }, &msgs)
            .unwrap()
            .reply;
        bytes += wire_bytes(&msgs);
        turn_b = !turn_b;
    }
    assert!(
        bytes < 8_000,
        "{bytes} bytes to find one difference among 100,000"
    );
}

#[test]
fn hostile_messages_are_rejected() {
    let ix = index(0..100);
    let r = Reconciler::default();
    let bad = IdRange {
        lower: Some(id(5)),
        upper: Some(id(5)),
    };
    assert_eq!(
        r.respond(
            &ix,
            &[RangeMsg::Fingerprint {
                range: bad,
                fp: Fingerprint([0; 16])
            }]
        ),
        Err(RangeError::InvalidRange)
    );
    let mut ids = vec![id(1), id(2)];
    ids.sort();
    ids.reverse();
    assert!(matches!(
        r.respond(
            &ix,
            &[RangeMsg::IdList {
                range: IdRange::ALL,
                ids
            }]
        ),
        Err(RangeError::MalformedIds(_))
    ));
    let many: Vec<_> = {
        let mut v: Vec<_> = (0..5000).map(id).collect();
        v.sort();
        v
    };
    assert!(matches!(
        r.respond(&ix, &[RangeMsg::Want { ids: many }]),
        Err(RangeError::MalformedIds(_))
    ));
}

/// Tiny messages that each cost a pass over the store (or push all of it), repeated in one
/// batch as a full frame could carry them: refused once the batch's allowance is spent,
/// with the work done bounded by it, while an honest session over the same store passes.
#[test]
fn batches_that_amplify_work_are_refused() {
    let ix = index(0..20_000);
    let r = Reconciler::default();
    let repeat = |m: RangeMsg| vec![m; 20_000];
    for batch in [
        repeat(RangeMsg::MoreSymbols {
            start: 0,
            end: MAX_SYMBOLS / 4,
        }),
        repeat(RangeMsg::IdList {
            range: IdRange::ALL,
            ids: Vec::new(),
        }),
        repeat(RangeMsg::Fingerprint {
            range: IdRange::ALL,
            fp: Fingerprint([0; 16]),
        }),
    ] {
        let what = format!("{:?}", batch[0]);
        match r.respond(&ix, &batch) {
            Err(RangeError::TooMuchWork { spent, limit }) => {
                assert!(spent <= 2 * limit, "{what}: {spent} of {limit}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A peer missing half of it settles it within the allowance.
    let half = index(0..10_000);
    let (a_needs, b_needs, _) = r.run_local(&half, &ix, 10).unwrap();
    assert!(a_needs.len() == 10_000 && b_needs.is_empty());
}

#[test]
fn coded_symbols_cost_grows_with_the_difference_only() {
    let base = index(0..100_000);
    let plus = index((0..100_000).chain(5_000_000..5_000_100));
    let r = Reconciler::default();
    let (an, bn, rounds, bytes) = r.run_local_measured(&base, &plus, 10).unwrap();
    assert_eq!(an.len(), 100);
    assert!(bn.is_empty());
    assert!(rounds <= 3, "{rounds} round trips");
    // About 1.5 symbols of ~18 bytes per difference, plus 8 bytes to ask for each.
    assert!(
        bytes < 100 * 40,
        "{bytes} bytes for 100 differences among 100,000"
    );
    let (an, _, rounds, bytes) = r
        .run_local_measured(&base, &index((0..100_000).chain([9_999_999])), 10)
        .unwrap();
    assert_eq!(an, vec![id(9_999_999)]);
    assert!(
        rounds <= 2 && bytes < 800,
        "one difference: {rounds} round trips, {bytes} bytes"
    );
}

/// A batch of symbol messages is added in one pass over the set; the outcome is the one
/// of adding them one by one, and a gap in the sequence is still refused.
#[test]
fn symbols_in_one_batch_decode_like_symbols_one_by_one() {
    let a = index(0..20_000);
    let b = index((0..19_000).chain(1_000_000..1_000_050));
    let r = Reconciler::default();
    let (total, cells) = Decoder::default().symbols_to_send(&a, 0, 4_000);
    let msgs = symbol_msgs(total, 0, &cells);
    assert!(msgs.len() > 2);
    let sorted = |step: &Step| {
        let mut push = step.push.clone();
        push.sort();
        let mut keys: Vec<u64> = step
            .reply
            .iter()
            .flat_map(|m| match m {
                RangeMsg::WantKeys { keys } => keys.clone(),
                other => panic!("unexpected reply {other:?}"),
            })
            .collect();
        keys.sort_unstable();
        (push, keys)
    };
    let batch = sorted(&r.respond_in(&b, &msgs, &mut Decoder::default()).unwrap());
    let mut one = Decoder::default();
    let mut single = None;
    for m in &msgs {
        let step = r.respond_in(&b, std::slice::from_ref(m), &mut one).unwrap();
        if !step
            .reply
            .iter()
            .any(|m| matches!(m, RangeMsg::MoreSymbols { .. }))
        {
            single = Some(sorted(&step));
            break;
        }
    }
    assert_eq!(Some(&batch), single.as_ref());
    let mut lacking: Vec<EnvelopeId> = (1_000_000..1_000_050).map(id).collect();
    lacking.sort();
    assert_eq!(batch.0, lacking, "b pushes what a lacks");
    let mut wanted: Vec<u64> = (19_000..20_000).map(|n| riblt::key_of(&id(n))).collect();
    wanted.sort_unstable();
    assert_eq!(batch.1, wanted, "b asks for what it lacks");

    let mut gap = msgs[..1].to_vec();
    gap.extend(msgs[2..].iter().cloned());
    assert_eq!(
        r.respond_in(&b, &gap, &mut Decoder::default()),
        Err(RangeError::Symbols("out of sequence"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any two sets converge: each side learns exactly what it lacks, within a bounded
    /// number of rounds.
    #[test]
    fn any_two_sets_converge(common in 0u64..3000, only_a in proptest::collection::btree_set(10_000u64..20_000, 0..200),
                             only_b in proptest::collection::btree_set(20_000u64..30_000, 0..200),
                             fanout in 2usize..20, threshold in 1usize..40,
                             symbols in prop_oneof![Just(0u32), Just(8), Just(32)]) {
        let mut a: BTreeSet<u64> = (0..common).collect();
        let mut b = a.clone();
        a.extend(&only_a);
        b.extend(&only_b);
        let r = Reconciler { fanout, threshold, symbols };
        let (an, bn, rounds) = r.run_local(&index(a.iter().copied()), &index(b.iter().copied()), 64).unwrap();
        let (ea, eb) = expected(&a, &b);
        prop_assert_eq!(an, ea);
        prop_assert_eq!(bn, eb);
        // log_fanout(n / threshold) levels of splitting, plus list and want.
        let n = (a.len() + b.len()) as f64;
        let bound = if symbols == 0 {
            (n / threshold as f64).max(1.0).log(fanout as f64).ceil() as usize + 3
        } else {
            // Symbols double (at least) each round from `symbols`; then want and push.
            let d = (only_a.len() + only_b.len()) as f64;
            (1.6 * d / f64::from(symbols)).max(1.0).log2().ceil() as usize + 3
        };
        prop_assert!(rounds <= bound, "rounds {} > bound {}", rounds, bound);
    }

    /// Bytes exchanged grow with the difference, not with the store size.
    #[test]
    fn bytes_grow_with_difference_not_size(diff in 1u64..20) {
        let cost = |size: u64| {
            let a = index(0..size);
            let b = index((0..size).chain(1_000_000..1_000_000 + diff));
            Reconciler::default().run_local_measured(&a, &b, 64).unwrap().3
        };
        let small = cost(2_000);
        let large = cost(50_000);
        // 25x the store, but nowhere near 25x the bytes: only the split depth grows.
        prop_assert!(large < small * 3, "2k store: {} bytes, 50k store: {} bytes", small, large);
    }
}
