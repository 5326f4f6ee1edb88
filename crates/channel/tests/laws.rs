//! Merge laws: any delivery order, with duplicates, yields identical documents.

use fieldmesh_channel::{ApplyOutcome, Channel, Incoming, LocalChange};
use fieldmesh_core::{EnvelopeId, Hlc, Kind, NodeId, Precedence, sha256};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Rec {
    envelope: EnvelopeId,
    author: NodeId,
    kind: Kind,
    hlc: Hlc,
    payload: Vec<u8>,
}

impl Rec {
    fn new(author: NodeId, c: &LocalChange) -> Rec {
        Rec {
            envelope: EnvelopeId(sha256(&c.payload)),
            author,
            kind: c.kind,
            hlc: c.hlc,
            payload: c.payload.clone(),
        }
    }
    fn inc(&self) -> Incoming<'_> {
        Incoming {
            envelope: self.envelope,
            author: self.author,
            kind: self.kind,
            hlc: self.hlc,
            plaintext: &self.payload,
        }
    }
}

/// Three replicas take turns doing random operations and occasionally syncing,
/// producing a realistic causal history with concurrency.
fn history(script: &[(u8, u8, u16, u8)]) -> (Channel, Vec<Rec>) {
    let nodes: Vec<NodeId> = (1..=3u8).map(|i| NodeId([i; 32])).collect();
    let (mut first, g) = Channel::create(nodes[0], "law", Hlc::new(1, 0)).unwrap();
    let g = Rec::new(nodes[0], &g);
    first.bind(first.heads()[0], g.envelope);
    let id = first.id();
    let mut replicas = [first, Channel::new(id), Channel::new(id)];
    replicas[1].apply(g.inc()).unwrap();
    replicas[2].apply(g.inc()).unwrap();
    let mut log = vec![g];
    let mut seen = [1usize; 3];
    let mut t = 10u64;
    for &(who, op, target, sync) in script {
        let w = usize::from(who % 3);
        let author = nodes[w];
        t += 1;
        let hlc = Hlc::new(t, 0);
        let msgs = replicas[w].messages();
        let pick = |own: bool| {
            let c: Vec<_> = msgs
                .iter()
                .filter(|m| !own || m.author == author)
                .filter(|m| !m.redacted)
                .collect();
            (!c.is_empty()).then(|| c[usize::from(target) % c.len()].id.clone())
        };
        let r = &mut replicas[w];
        let change = match op % 6 {
            0 | 1 => r
                .post(
                    author,
                    hlc,
                    &format!("m{t}"),
                    Precedence::from_u8(op % 4).unwrap(),
                    None,
                    vec![],
                )
                .ok(),
            2 => pick(false).and_then(|id| {
                r.post(author, hlc, "re", Precedence::Routine, Some(&id), vec![])
                    .ok()
            }),
            3 => pick(false).and_then(|id| {
                r.react(
                    author,
                    hlc,
                    &id,
                    ["+1", "ok"][usize::from(target % 2)],
                    target % 3 != 0,
                )
                .ok()
            }),
            4 => pick(true).and_then(|id| r.edit(author, hlc, &id, &format!("e{t}")).ok()),
            _ => pick(true).and_then(|id| r.redact(author, hlc, &id).ok()),
        };
        if let Some(c) = change {
            let rec = Rec::new(author, &c);
            replicas[w].bind(c.change, rec.envelope);
            log.push(rec);
        }
        // Sync: replica `sync % 4` (3 = nobody) catches up with the whole log.
        let s = usize::from(sync % 4);
        if s < 3 {
            for rec in &log[seen[s].min(log.len())..] {
                replicas[s].apply(rec.inc()).unwrap();
            }
            seen[s] = log.len();
        }
    }
    let mut reference = Channel::new(id);
    for rec in &log {
        let out = reference.apply(rec.inc()).unwrap();
        assert!(matches!(out, ApplyOutcome::Applied { .. }), "{out:?}");
    }
    assert!(reference.rejected().is_empty());
    (reference, log)
}

fn script() -> impl Strategy<Value = Vec<(u8, u8, u16, u8)>> {
    proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u8>()), 1..40)
}

fn shuffle(order: &mut [usize], seed: u64) {
    // Fisher-Yates driven by splitmix64, so a failing case replays from its seed.
    let mut x = seed;
    for i in (1..order.len()).rev() {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        order.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any permutation of the envelopes, with duplicates, converges to the same document.
    #[test]
    fn any_order_with_duplicates_converges(s in script(), perm_seed in any::<u64>(), dups in proptest::collection::vec(any::<u16>(), 0..10)) {
        let (reference, log) = history(&s);
        let mut order: Vec<usize> = (0..log.len()).collect();
        shuffle(&mut order, perm_seed);
        for d in dups {
            let at = usize::from(d) % (order.len() + 1);
            order.insert(at, usize::from(d) % log.len());
        }
        let mut replica = Channel::new(reference.id());
        for i in order {
            replica.apply(log[i].inc()).unwrap();
        }
        prop_assert_eq!(replica.pending_len(), 0);
        prop_assert!(replica.rejected().is_empty(), "{:?}", replica.rejected());
        prop_assert_eq!(replica.heads(), reference.heads());
        prop_assert_eq!(replica.messages(), reference.messages());
        prop_assert_eq!(replica.change_count(), log.len());

        // The batched path gives the same document as one-by-one application.
        let mut batched = Channel::new(reference.id());
        let errors = batched.apply_many(log.iter().rev().map(Rec::inc)).unwrap();
        prop_assert!(errors.is_empty(), "{:?}", errors);
        prop_assert_eq!(batched.heads(), reference.heads());
        prop_assert_eq!(batched.messages(), reference.messages());
    }

    /// Merging is commutative and idempotent: A∪B = B∪A, and (A∪B)∪B = A∪B.
    #[test]
    fn merge_commutes_and_is_idempotent(s in script(), split in any::<u16>()) {
        let (reference, log) = history(&s);
        let cut = usize::from(split) % log.len();
        let (left, right) = log.split_at(cut);
        let apply = |parts: &[&[Rec]]| {
            let mut c = Channel::new(reference.id());
            for p in parts { for r in *p { c.apply(r.inc()).unwrap(); } }
            c
        };
        let ab = apply(&[left, right]);
        let ba = apply(&[right, left]);
        let abb = apply(&[left, right, right]);
        prop_assert_eq!(ab.heads(), ba.heads());
        prop_assert_eq!(ab.messages(), ba.messages());
        prop_assert_eq!(abb.heads(), ab.heads());
        prop_assert_eq!(ab.messages(), reference.messages());
    }
}

/// A replica fed one envelope at a time, rebuilt from everything it has received
/// whenever an equivocating change outranks one it applied (as a node does).
fn deliver(id: fieldmesh_core::ChannelId, recs: &[&Rec]) -> Channel {
    let mut replica = Channel::new(id);
    for (i, rec) in recs.iter().enumerate() {
        if let Err(fieldmesh_channel::ApplyError::Superseded(_)) = replica.apply(rec.inc()) {
            replica = Channel::new(id);
            replica
                .apply_many(recs[..=i].iter().map(|r| r.inc()))
                .unwrap();
            assert!(!replica.needs_rebuild());
        }
    }
    replica
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// An author who restarts from an old copy of the channel (lost store, same key) signs
    /// new changes with sequence numbers it had used. Whatever the order of arrival, every
    /// replica ends with the same document as a rebuild from the whole set, in which the
    /// author's changes from the fork on are refused and nobody else's are touched.
    #[test]
    fn equivocation_converges_in_any_order(
        s in script(),
        cuts in (any::<u16>(), any::<u16>()),
        posts in (1u8..4, 1u8..4),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let (reference, log) = history(&s);
        let twin = NodeId([9; 32]);
        let mut all: Vec<Rec> = log.clone();
        for (life, (cut, n)) in [(cuts.0, posts.0), (cuts.1, posts.1)].into_iter().enumerate() {
            let cut = 1 + usize::from(cut) % log.len();
            let mut r = Channel::new(reference.id());
            for rec in &log[..cut] {
                r.apply(rec.inc()).unwrap();
            }
            for k in 0..n {
                let hlc = Hlc::new(1_000 + 100 * life as u64 + u64::from(k), 0);
                let c = r.post(twin, hlc, &format!("life {life} post {k}"), Precedence::Routine, None, vec![]).unwrap();
                let rec = Rec::new(twin, &c);
                r.bind(c.change, rec.envelope);
                all.push(rec);
            }
        }
        let mut whole = Channel::new(reference.id());
        whole.apply_many(all.iter().map(Rec::inc)).unwrap();
        // The twin forked at its first change: nothing of it stands, everything else does.
        prop_assert!(whole.messages().iter().all(|m| m.author != twin));
        prop_assert_eq!(whole.messages(), reference.messages());
        for seed in [seeds.0, seeds.1] {
            let mut order: Vec<usize> = (0..all.len()).collect();
            shuffle(&mut order, seed);
            let recs: Vec<&Rec> = order.iter().map(|&i| &all[i]).collect();
            let replica = deliver(reference.id(), &recs);
            prop_assert_eq!(replica.heads(), whole.heads());
            prop_assert_eq!(replica.messages(), whole.messages());
        }
    }
}
