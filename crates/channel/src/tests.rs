//! Rule tests: hostile changes built by hand are rejected, honest ones are applied.

use crate::{
    ApplyError, ApplyOutcome, Channel, Incoming, LocalChange, LocalOpError, PAYLOAD_VERSION,
};
use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT, ReadDoc};
use fieldmesh_core::{EnvelopeId, Hlc, Kind, NodeId, Precedence, sha256};

const A: NodeId = NodeId([0xa1; 32]);
const B: NodeId = NodeId([0xb2; 32]);

fn env_id(c: &LocalChange) -> EnvelopeId {
    EnvelopeId(sha256(&c.payload))
}

fn inc<'a>(author: NodeId, c: &'a LocalChange) -> Incoming<'a> {
    Incoming {
        envelope: env_id(c),
        author,
        kind: c.kind,
        hlc: c.hlc,
        plaintext: &c.payload,
    }
}

/// A channel by A with one message by A, and B's replica of it.
fn setup() -> (Channel, Channel, String, Vec<LocalChange>) {
    let (mut a, g) = Channel::create(A, "net", Hlc::new(1000, 0)).unwrap();
    a.bind(g.change, env_id(&g));
    let p = a
        .post(
            A,
            Hlc::new(2000, 0),
            "hello",
            Precedence::Routine,
            None,
            vec![],
        )
        .unwrap();
    a.bind(p.change, env_id(&p));
    let mut b = Channel::new(a.id());
    b.apply(inc(A, &g)).unwrap();
    b.apply(inc(A, &p)).unwrap();
    let id = p.message_id.clone();
    (a, b, id, vec![g, p])
}

/// Builds a raw change on B's replica with arbitrary ops, bypassing the API's checks.
fn raw_change(
    b: &mut Channel,
    actor: NodeId,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
) -> Vec<u8> {
    let mut doc = b.doc.fork().with_actor(ActorId::from(&actor.0[..]));
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
    let c = doc.get_last_local_change().unwrap();
    let mut p = vec![PAYLOAD_VERSION];
    p.extend_from_slice(c.raw_bytes());
    p
}

/// Applies a hand-built change as a replica that has seen no other refused change.
fn apply_raw(ch: &mut Channel, author: NodeId, payload: &[u8]) -> Result<ApplyOutcome, ApplyError> {
    ch.forget_refused_claims();
    ch.apply(Incoming {
        envelope: EnvelopeId(sha256(payload)),
        author,
        kind: Kind::CHANNEL_CHANGE,
        hlc: Hlc::new(5000, 0),
        plaintext: payload,
    })
}

fn rejected(r: Result<ApplyOutcome, ApplyError>, what: &str) {
    match r {
        Err(ApplyError::Rejected { reason, .. }) => {
            assert!(reason.contains(what), "reason {reason:?} lacks {what:?}")
        }
        other => panic!("expected rejection containing {what:?}, got {other:?}"),
    }
}

#[test]
fn edit_of_another_authors_message_is_rejected() {
    let (_a, mut b, id, _) = setup();
    let msgs = b.doc.get(ROOT, "messages").unwrap().unwrap().1;
    let msg = b.doc.get(&msgs, id.as_str()).unwrap().unwrap().1;
    let p = raw_change(&mut b, B, |tx| tx.put(&msg, "text", "forged").unwrap());
    rejected(apply_raw(&mut b, B, &p), "only the author");
    assert_eq!(b.messages()[0].text, "hello");
    assert_eq!(b.rejected().len(), 1);
}

#[test]
fn actor_must_be_the_envelope_author() {
    let (_a, mut b, id, _) = setup();
    let msgs = b.doc.get(ROOT, "messages").unwrap().unwrap().1;
    let msg = b.doc.get(&msgs, id.as_str()).unwrap().unwrap().1;
    // B signs an envelope carrying a change that claims to be A's.
    let p = raw_change(&mut b, A, |tx| tx.put(&msg, "text", "forged").unwrap());
    rejected(apply_raw(&mut b, B, &p), "actor is not the envelope author");
}

#[test]
fn unredact_and_root_writes_are_rejected() {
    let (mut a, mut b, id, _) = setup();
    let r = a.redact(A, Hlc::new(3000, 0), &id).unwrap();
    b.apply(inc(A, &r)).unwrap();
    assert!(b.messages()[0].redacted);
    assert_eq!(b.messages()[0].text, "");
    let msgs = b.doc.get(ROOT, "messages").unwrap().unwrap().1;
    let msg = b.doc.get(&msgs, id.as_str()).unwrap().unwrap().1;
    let p = raw_change(&mut b, A, |tx| tx.put(&msg, "redacted", false).unwrap());
    rejected(apply_raw(&mut b, A, &p), "redacted");
    let p = raw_change(&mut b, A, |tx| tx.put(ROOT, "messages", "gone").unwrap());
    rejected(apply_raw(&mut b, A, &p), "root");
    // And the local API refuses to touch a redacted message.
    assert_eq!(
        a.edit(A, Hlc::new(4000, 0), &id, "back").unwrap_err(),
        LocalOpError::Redacted(id.clone())
    );
}

#[test]
fn message_keys_must_name_their_author_and_reactions_their_reactor() {
    let (_a, mut b, id, _) = setup();
    let msgs = b.doc.get(ROOT, "messages").unwrap().unwrap().1;
    let fake_id = crate::schema::message_id(Hlc::new(9000, 0), &A);
    let p = raw_change(&mut b, B, |tx| {
        tx.put_object(&msgs, fake_id.as_str(), automerge::ObjType::Map)
            .unwrap();
    });
    rejected(apply_raw(&mut b, B, &p), "name its author");
    // A's own id for a time other than the envelope's (apply_raw dates it 5000.0), and a
    // timestamp other than the envelope's, are refused too.
    let p = raw_change(&mut b, A, |tx| {
        tx.put_object(&msgs, fake_id.as_str(), automerge::ObjType::Map)
            .unwrap();
    });
    rejected(apply_raw(&mut b, A, &p), "envelope's time");
    let msg = b.doc.get(&msgs, id.as_str()).unwrap().unwrap().1;
    let p = raw_change(&mut b, A, |tx| {
        tx.put(&msg, "edited_ts", Hlc::new(9_000_000, 0).0).unwrap()
    });
    rejected(apply_raw(&mut b, A, &p), "edited_ts");
    let msg = b.doc.get(&msgs, id.as_str()).unwrap().unwrap().1;
    let reactions = b.doc.get(&msg, "reactions").unwrap().unwrap().1;
    let key = format!("{}:+1", &A.to_hex()[..16]);
    let p = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, key.as_str(), true).unwrap()
    });
    rejected(apply_raw(&mut b, B, &p), "own reactions");
}

#[test]
fn genesis_must_hash_to_the_channel_and_comes_first() {
    let (a, _b, _id, changes) = setup();
    let mut other = Channel::new(fieldmesh_core::ChannelId([9; 32]));
    rejected(other.apply(inc(A, &changes[0])), "does not hash");
    // A post before its genesis waits, then applies when the genesis arrives.
    let mut late = Channel::new(a.id());
    assert_eq!(
        late.apply(inc(A, &changes[1])).unwrap(),
        ApplyOutcome::Pending
    );
    assert_eq!(
        late.apply(inc(A, &changes[0])).unwrap(),
        ApplyOutcome::Applied { unblocked: 1 }
    );
    assert_eq!(
        late.apply(inc(A, &changes[1])).unwrap(),
        ApplyOutcome::Duplicate
    );
    assert_eq!(late.messages(), a.messages());
}

/// A valid change in Automerge's compressed form (chunk type 2), as the library itself
/// writes it for changes over 256 bytes: refused, since inflating one has no limit.
fn compressed_change() -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    doc.put(ROOT, "text", "x".repeat(4096)).unwrap();
    let mut change = doc.get_last_local_change().unwrap().clone();
    let bytes = change.bytes().into_owned();
    assert_eq!(bytes[8], 2, "compressed");
    let mut p = vec![PAYLOAD_VERSION];
    p.extend_from_slice(&bytes);
    p
}

#[test]
fn malformed_payloads_have_clear_errors() {
    let (_a, mut b, _id, _) = setup();
    for (bytes, what) in [
        (&b""[..], "empty"),
        (&[9u8, 1, 2][..], "payload version 9"),
        (&[1u8, 0xff, 0][..], "malformed"),
        (
            &compressed_change()[..],
            "not an uncompressed Automerge change",
        ),
    ] {
        let err = b
            .apply(Incoming {
                envelope: EnvelopeId([0; 32]),
                author: B,
                kind: Kind::CHANNEL_CHANGE,
                hlc: Hlc::ZERO,
                plaintext: bytes,
            })
            .unwrap_err();
        assert!(err.to_string().contains(what), "{err} lacks {what}");
    }
}

#[test]
fn local_ops_check_their_inputs() {
    let (mut a, mut b, id, _) = setup();
    assert_eq!(
        b.edit(B, Hlc::new(3000, 0), &id, "x").unwrap_err(),
        LocalOpError::NotAuthor(id.clone())
    );
    assert!(matches!(
        a.post(
            A,
            Hlc::new(3000, 1),
            &"x".repeat(crate::MAX_TEXT_BYTES + 1),
            Precedence::Routine,
            None,
            vec![]
        ),
        Err(LocalOpError::Invalid(_))
    ));
    assert!(matches!(
        a.post(
            A,
            Hlc::new(3000, 2),
            "re",
            Precedence::Routine,
            Some("nope"),
            vec![]
        ),
        Err(LocalOpError::UnknownMessage(_))
    ));
    assert!(matches!(
        Channel::create(A, "  ", Hlc::ZERO),
        Err(LocalOpError::Invalid(_))
    ));
    let mut empty = Channel::new(a.id());
    assert_eq!(
        empty
            .post(A, Hlc::new(1, 0), "x", Precedence::Routine, None, vec![])
            .unwrap_err(),
        LocalOpError::NoGenesis
    );
}

#[test]
fn thread_reactions_edits_and_attachments_replicate() {
    let (mut a, mut b, id, _) = setup();
    let reply = b
        .post(
            B,
            Hlc::new(3000, 0),
            "roger",
            Precedence::Priority,
            Some(&id),
            vec![],
        )
        .unwrap();
    let react = b.react(B, Hlc::new(3001, 0), &id, "👍", true).unwrap();
    let edit = a
        .edit(A, Hlc::new(3002, 0), &id, "hello, corrected")
        .unwrap();
    let att = crate::AttachmentRef {
        hash: "ab".repeat(32),
        name: "map.png".into(),
        size: 1234,
        mime: "image/png".into(),
    };
    let photo = a
        .post(
            A,
            Hlc::new(3003, 0),
            "photo",
            Precedence::Routine,
            None,
            vec![att.clone()],
        )
        .unwrap();
    a.apply(inc(B, &reply)).unwrap();
    a.apply(inc(B, &react)).unwrap();
    b.apply(inc(A, &edit)).unwrap();
    b.apply(inc(A, &photo)).unwrap();
    assert_eq!(a.heads(), b.heads());
    let m = a.messages();
    assert_eq!(m, b.messages());
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].text, "hello, corrected");
    assert!(m[0].edited);
    assert_eq!(m[0].reactions["👍"], vec![B.to_hex()[..16].to_owned()]);
    assert_eq!(m[1].reply_to.as_deref(), Some(id.as_str()));
    assert_eq!(m[1].precedence, Precedence::Priority);
    assert_eq!(m[2].attachments, vec![att]);
    // Un-react.
    let unreact = b.react(B, Hlc::new(3004, 0), &id, "👍", false).unwrap();
    assert!(
        b.message(&id).unwrap().reactions.is_empty(),
        "{:?}",
        b.message(&id)
    );
    assert!(matches!(
        a.apply(inc(B, &unreact)).unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    assert!(
        a.message(&id).unwrap().reactions.is_empty(),
        "{:?}",
        a.message(&id)
    );
    // The export is a standard Automerge file with the same content.
    let loaded = automerge::Automerge::load(&a.export()).unwrap();
    assert_eq!(loaded.get_heads().len(), a.doc.get_heads().len());
}

#[test]
fn a_post_waiting_for_its_predecessors_is_shown_as_pending() {
    let (mut a, _b, _id, changes) = setup();
    let flash = a
        .post(
            A,
            Hlc::new(9000, 0),
            "FLASH contact",
            Precedence::Flash,
            None,
            vec![],
        )
        .unwrap();
    let mut late = Channel::new(a.id());
    late.apply(inc(A, &changes[0])).unwrap();
    // The routine post `changes[1]` has not arrived; the FLASH builds on it.
    assert_eq!(late.apply(inc(A, &flash)).unwrap(), ApplyOutcome::Pending);
    let shown = late.messages();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].text, "FLASH contact");
    assert_eq!(shown[0].precedence, Precedence::Flash);
    assert!(shown[0].pending);
    late.apply(inc(A, &changes[1])).unwrap();
    let all = late.messages();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| !m.pending));
    assert_eq!(all, a.messages());
}

#[test]
fn annotations_replicate_and_reviews_are_each_reviewers_own() {
    let (mut a, mut b, _, _) = setup();
    let ai = r#"{"task":"sitrep","sources":["x"]}"#;
    let p = a
        .post_annotated(
            A,
            Hlc::new(3000, 0),
            "SITREP draft",
            Precedence::Priority,
            None,
            vec![],
            Some(ai),
        )
        .unwrap();
    a.bind(p.change, env_id(&p));
    b.apply(inc(A, &p)).unwrap();
    let id = p.message_id.clone();
    assert_eq!(b.message(&id).unwrap().ai.as_deref(), Some(ai));
    assert!(b.message(&id).unwrap().reviews.is_empty());

    // B approves on its replica; A sees it; A then rejects with a note.
    let r = b.review(B, Hlc::new(4000, 0), &id, "approved").unwrap();
    b.bind(r.change, env_id(&r));
    a.apply(inc(B, &r)).unwrap();
    let r2 = a
        .review(A, Hlc::new(4100, 0), &id, "rejected: grid is stale")
        .unwrap();
    a.bind(r2.change, env_id(&r2));
    b.apply(inc(A, &r2)).unwrap();
    let reviews = b.message(&id).unwrap().reviews;
    assert_eq!(
        reviews.get(&A.to_hex()[..16]).unwrap(),
        "rejected: grid is stale"
    );
    assert_eq!(reviews.get(&B.to_hex()[..16]).unwrap(), "approved");
    assert_eq!(a.message(&id).unwrap().reviews, reviews);

    // Malformed verdicts are refused locally; forged ones (another's key, bad value)
    // are refused by every replica.
    assert!(matches!(
        a.review(A, Hlc::new(4200, 0), &id, "looks fine"),
        Err(LocalOpError::Invalid(_))
    ));
    let msgs = b.doc.get(ROOT, "messages").unwrap().unwrap().1;
    let msg = b.doc.get(&msgs, id.as_str()).unwrap().unwrap().1;
    let rv = b.doc.get(&msg, "reviews").unwrap().unwrap().1;
    let a_key = A.to_hex()[..16].to_owned();
    let p = raw_change(&mut b, B, |tx| {
        tx.put(&rv, a_key.as_str(), "approved").unwrap()
    });
    rejected(apply_raw(&mut b, B, &p), "own review");
    let b_key = B.to_hex()[..16].to_owned();
    let p = raw_change(&mut b, B, |tx| {
        tx.put(&rv, b_key.as_str(), "maybe").unwrap()
    });
    rejected(apply_raw(&mut b, B, &p), "review is");
    // Only the author writes the annotation.
    let p = raw_change(&mut b, B, |tx| tx.put(&msg, "ai", "{}").unwrap());
    rejected(apply_raw(&mut b, B, &p), "only the author");
    // Nor can the author wipe the reviewers' verdicts (or reactions) by making the map
    // again: those maps are made only with the message.
    for field in ["reviews", "reactions"] {
        let p = raw_change(&mut b, A, |tx| {
            tx.put_object(&msg, field, automerge::ObjType::Map).unwrap();
        });
        rejected(apply_raw(&mut b, A, &p), field);
    }
    assert_eq!(b.message(&id).unwrap().reviews, reviews);
    // Oversized annotations are refused before anything is written.
    let big = "x".repeat(crate::schema::MAX_AI_BYTES + 1);
    assert!(matches!(
        a.post_annotated(
            A,
            Hlc::new(5000, 0),
            "t",
            Precedence::Routine,
            None,
            vec![],
            Some(&big)
        ),
        Err(LocalOpError::Invalid(_))
    ));
}

/// A change chunk written by hand: `ops` puts of null at `ROOT.a` by `actor` on `deps`,
/// every column a single run, with a correct checksum.
fn run_length_change(actor: NodeId, deps: &[automerge::ChangeHash], ops: u64) -> Vec<u8> {
    use crate::shape::tests::{sleb, uleb};
    let run = |value: &[u8]| {
        let mut c = Vec::new();
        sleb(ops as i64, &mut c);
        c.extend_from_slice(value);
        c
    };
    let mut insert = Vec::new();
    uleb(ops, &mut insert); // `ops` times false
    // (spec, data), in Automerge's column order: key string, insert, action, value
    // metadata (null), predecessor group (none).
    let columns = [
        (1 << 4 | 5, run(&[1, b'a'])),
        (3 << 4 | 4, insert),
        (4 << 4 | 2, run(&[1])),
        (5 << 4 | 6, run(&[0])),
        (7 << 4, run(&[0])),
    ];
    let mut data = Vec::new();
    uleb(deps.len() as u64, &mut data);
    for d in deps {
        data.extend_from_slice(&d.0);
    }
    uleb(32, &mut data);
    data.extend_from_slice(&actor.0);
    uleb(1, &mut data); // seq
    uleb(100, &mut data); // start op
    sleb(0, &mut data); // time
    uleb(0, &mut data); // message
    uleb(0, &mut data); // other actors
    uleb(columns.len() as u64, &mut data);
    for (spec, col) in &columns {
        uleb(*spec, &mut data);
        uleb(col.len() as u64, &mut data);
    }
    for (_, col) in &columns {
        data.extend_from_slice(col);
    }
    let mut hashed = vec![1u8];
    uleb(data.len() as u64, &mut hashed);
    hashed.extend_from_slice(&data);
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83];
    chunk.extend_from_slice(&sha256(&hashed)[..4]);
    chunk.extend_from_slice(&hashed);
    let mut payload = vec![PAYLOAD_VERSION];
    payload.extend_from_slice(&chunk);
    payload
}

#[test]
fn a_change_declaring_a_huge_op_count_is_refused_before_automerge_walks_it() {
    let (_, mut b, _, _) = setup();
    let heads = b.heads();
    // The same hand-written layout with three rows is a real change: Automerge parses it
    // and the channel rules judge it (a write to the root is not allowed).
    rejected(apply_raw(&mut b, B, &run_length_change(B, &heads, 3)), "");
    // 2^40 rows in about a hundred bytes: Automerge would walk every one of them.
    let bomb = run_length_change(B, &heads, 1 << 40);
    assert!(bomb.len() < 200);
    match apply_raw(&mut b, B, &bomb) {
        Err(ApplyError::Malformed { reason, .. }) => {
            assert!(reason.contains("more than 4096"), "{reason}")
        }
        other => panic!("expected a malformed change, got {other:?}"),
    }
    // Just over the cap is refused; at the cap the layout passes.
    let over = run_length_change(B, &heads, crate::shape::MAX_CHANGE_OPS + 1);
    assert!(matches!(
        apply_raw(&mut b, B, &over),
        Err(ApplyError::Malformed { .. })
    ));
    let at = run_length_change(B, &heads, crate::shape::MAX_CHANGE_OPS);
    assert_eq!(
        crate::shape::check(&at[1..]),
        Ok(crate::shape::MAX_CHANGE_OPS)
    );
    assert_eq!(b.change_count(), 2, "nothing was applied");
}

#[test]
fn the_largest_post_fits_the_op_cap_and_is_counted_as_automerge_counts() {
    let (mut a, mut b, _, _) = setup();
    let att = |i: usize| crate::AttachmentRef {
        hash: format!("{i:064x}"),
        name: "n".repeat(crate::schema::MAX_LABEL_BYTES),
        size: i as u64,
        mime: "m".repeat(crate::schema::MAX_LABEL_BYTES),
    };
    let too_many: Vec<_> = (0..=crate::MAX_ATTACHMENTS).map(att).collect();
    assert!(matches!(
        a.post(
            A,
            Hlc::new(3000, 0),
            "x",
            Precedence::Routine,
            None,
            too_many
        ),
        Err(LocalOpError::Invalid(_))
    ));
    let most: Vec<_> = (0..crate::MAX_ATTACHMENTS).map(att).collect();
    let text = "t".repeat(crate::MAX_TEXT_BYTES);
    let p = a
        .post(A, Hlc::new(3000, 0), &text, Precedence::Flash, None, most)
        .unwrap();
    let raw = &p.payload[1..];
    let change = automerge::Change::from_bytes(raw.to_vec()).unwrap();
    assert_eq!(crate::shape::check(raw), Ok(change.len() as u64));
    assert!(change.len() as u64 <= crate::shape::MAX_CHANGE_OPS / 2);
    assert!(matches!(
        b.apply(inc(A, &p)),
        Ok(ApplyOutcome::Applied { .. })
    ));
    assert_eq!(b.messages().len(), 2);
    // Every other kind of change this node writes counts the same way too.
    let id = p.message_id.clone();
    for c in [
        a.edit(A, Hlc::new(4000, 0), &id, "y").unwrap(),
        a.react(A, Hlc::new(4001, 0), &id, "ok", true).unwrap(),
    ] {
        let raw = &c.payload[1..];
        let n = automerge::Change::from_bytes(raw.to_vec()).unwrap().len() as u64;
        assert_eq!(crate::shape::check(raw), Ok(n));
    }
}

fn raw_inc(author: NodeId, payload: &[u8]) -> Incoming<'_> {
    Incoming {
        envelope: EnvelopeId(sha256(payload)),
        author,
        kind: Kind::CHANNEL_CHANGE,
        hlc: Hlc::new(5000, 0),
        plaintext: payload,
    }
}

/// `payload`'s change with its fields edited by `f`: what an author could sign.
fn resigned(payload: &[u8], f: impl FnOnce(&mut automerge::ExpandedChange)) -> Vec<u8> {
    let mut ex = change_of(payload).decode();
    f(&mut ex);
    ex.hash = None;
    let mut p = vec![PAYLOAD_VERSION];
    p.extend_from_slice(automerge::Change::from(ex).raw_bytes());
    p
}

fn change_of(payload: &[u8]) -> automerge::Change {
    automerge::Change::from_bytes(payload[1..].to_vec()).unwrap()
}

fn replica_of(id: fieldmesh_core::ChannelId, base: &[LocalChange]) -> Channel {
    let mut ch = Channel::new(id);
    for c in base {
        ch.apply(inc(A, c)).unwrap();
    }
    ch
}

/// The reactions map of the message `id` on replica `b`.
fn reactions_of(b: &Channel, id: &str) -> automerge::ObjId {
    let msgs = b.doc.get(ROOT, "messages").unwrap().unwrap().1;
    let msg = b.doc.get(&msgs, id).unwrap().unwrap().1;
    b.doc.get(&msg, "reactions").unwrap().unwrap().1
}

#[test]
fn an_author_signing_two_changes_with_one_seq_cannot_split_replicas() {
    let (a, mut b, id, base) = setup();
    let reactions = reactions_of(&b, &id);
    let mine = |r: &str| format!("{}:{r}", &B.to_hex()[..16]);
    // Two different changes, each B's first (seq 1): what a node that lost its store and
    // started over, or a malicious member, would sign.
    let x = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine("ok").as_str(), true).unwrap()
    });
    let y = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine("no").as_str(), true).unwrap()
    });
    assert_eq!((change_of(&x).seq(), change_of(&y).seq()), (1, 1));
    // Replica P hears x, then y: y shows that B forked at seq 1, so B's changes from
    // there on are refused, x included, which P had applied: P must be rebuilt.
    let mut p = replica_of(a.id(), &base);
    assert!(matches!(
        p.apply(raw_inc(B, &x)),
        Ok(ApplyOutcome::Applied { .. })
    ));
    assert_eq!(p.apply(raw_inc(B, &y)), Err(ApplyError::Superseded(a.id())));
    assert!(p.needs_rebuild());
    assert_eq!(
        p.apply(inc(A, &base[1])),
        Err(ApplyError::Superseded(a.id()))
    );
    // Rebuilt from what each holds, in either order, replicas agree: neither change of B
    // stands, and A's traffic is untouched.
    let rebuild = |order: [&[u8]; 2]| {
        let mut r = Channel::new(a.id());
        let errors = r
            .apply_many([
                raw_inc(B, order[0]),
                inc(A, &base[0]),
                inc(A, &base[1]),
                raw_inc(B, order[1]),
            ])
            .unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .all(|e| e.to_string().contains("equivocation"))
        );
        assert!(!r.needs_rebuild());
        r
    };
    let (p, q) = (rebuild([&x, &y]), rebuild([&y, &x]));
    assert_eq!(p.heads(), q.heads());
    assert_eq!(p.messages(), q.messages());
    assert_eq!(p.messages(), replica_of(a.id(), &base).messages());
    // B's later changes, on either branch, are refused too.
    let mut fork = replica_of(a.id(), &base);
    fork.apply(raw_inc(B, &y)).unwrap();
    let reactions = reactions_of(&fork, &id);
    let next = raw_change(&mut fork, B, |tx| {
        tx.put(&reactions, mine("later").as_str(), true).unwrap()
    });
    let mut p = p;
    rejected(p.apply(raw_inc(B, &next)), "equivocation");
    assert_eq!(p.pending_len(), 0);
    // A replica that heard y alone, with B's next change waiting on it, drops that too.
    let mut late = replica_of(a.id(), &base[..1]);
    assert_eq!(late.apply(raw_inc(B, &y)), Ok(ApplyOutcome::Pending));
    assert_eq!(late.apply(raw_inc(B, &next)), Ok(ApplyOutcome::Pending));
    rejected(late.apply(raw_inc(B, &x)), "equivocation");
    assert_eq!(late.pending_len(), 0);
    // And B itself, told of the fork, refuses to write there with a clear reason.
    let mut own = Channel::new(a.id());
    own.apply_many([
        inc(A, &base[0]),
        inc(A, &base[1]),
        raw_inc(B, &x),
        raw_inc(B, &y),
    ])
    .unwrap();
    match own.post(
        B,
        Hlc::new(6000, 0),
        "again",
        Precedence::Routine,
        None,
        vec![],
    ) {
        Err(LocalOpError::Invalid(why)) => assert!(why.contains("seq 1"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_change_not_built_on_its_authors_previous_one_waits_for_it() {
    let (a, mut b, id, base) = setup();
    let reactions = reactions_of(&b, &id);
    let mine = |r: &str| format!("{}:{r}", &B.to_hex()[..16]);
    let first = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine("ok").as_str(), true).unwrap()
    });
    b.apply(raw_inc(B, &first)).unwrap();
    let honest = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine("no").as_str(), true).unwrap()
    });
    // B's second change, re-signed to depend only on what came before B's first.
    let second = resigned(&honest, |ex| {
        assert_eq!(ex.seq, 2);
        ex.deps = change_of(&first).deps().to_vec();
    });
    // In order, both apply.
    let mut p = replica_of(a.id(), &base);
    p.apply(raw_inc(B, &first)).unwrap();
    assert!(matches!(
        p.apply(raw_inc(B, &second)),
        Ok(ApplyOutcome::Applied { .. })
    ));
    // Second first: its deps are all here, yet it waits for B's first, then applies.
    let mut q = replica_of(a.id(), &base);
    assert_eq!(q.apply(raw_inc(B, &second)), Ok(ApplyOutcome::Pending));
    assert_eq!(
        q.apply(raw_inc(B, &first)),
        Ok(ApplyOutcome::Applied { unblocked: 1 })
    );
    assert_eq!(q.heads(), p.heads());
    assert_eq!(q.messages(), p.messages());
    assert_eq!(q.messages()[0].reactions.len(), 2);
}

#[test]
fn a_change_writing_in_an_object_not_yet_made_here_waits_for_it() {
    let (a, mut b, id, base) = setup();
    let reactions = reactions_of(&b, &id);
    let mine = format!("{}:ok", &B.to_hex()[..16]);
    let honest = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine.as_str(), true).unwrap()
    });
    // B's reaction, re-signed to depend on the genesis alone: the post that makes the
    // message (and its reactions map) is not among its dependencies.
    let reaction = resigned(&honest, |ex| {
        ex.deps = vec![change_of(&base[0].payload).hash()];
    });
    // With the post first, it applies.
    let mut p = replica_of(a.id(), &base);
    assert!(matches!(
        p.apply(raw_inc(B, &reaction)),
        Ok(ApplyOutcome::Applied { .. })
    ));
    // Before the post, it waits for the map instead of being refused, then applies.
    let mut q = replica_of(a.id(), &base[..1]);
    assert_eq!(q.apply(raw_inc(B, &reaction)), Ok(ApplyOutcome::Pending));
    assert_eq!(q.pending_len(), 1);
    assert_eq!(
        q.apply(inc(A, &base[1])),
        Ok(ApplyOutcome::Applied { unblocked: 1 })
    );
    assert_eq!(q.pending_len(), 0);
    assert_eq!(q.heads(), p.heads());
    assert_eq!(q.messages(), p.messages());
    assert_eq!(q.messages()[0].reactions.len(), 1);
    // The same in one batch, reaction first (as a rebuild in time order could meet it).
    let mut r = Channel::new(a.id());
    let errors = r
        .apply_many([inc(A, &base[0]), raw_inc(B, &reaction), inc(A, &base[1])])
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(r.messages(), p.messages());
}

#[test]
fn a_change_reusing_its_authors_operation_counters_is_refused() {
    let (a, mut b, id, base) = setup();
    let reactions = reactions_of(&b, &id);
    let mine = |r: &str| format!("{}:{r}", &B.to_hex()[..16]);
    let first = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine("ok").as_str(), true).unwrap()
    });
    b.apply(raw_inc(B, &first)).unwrap();
    let honest = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine("no").as_str(), true).unwrap()
    });
    let start = change_of(&first).start_op();
    // B's second change, re-signed with the counters of its first.
    let reused = resigned(&honest, |ex| {
        assert!(ex.start_op > start);
        ex.start_op = start;
    });
    let mut p = replica_of(a.id(), &base);
    p.apply(raw_inc(B, &first)).unwrap();
    rejected(p.apply(raw_inc(B, &reused)), "reuse");
    assert_eq!(p.messages()[0].reactions.len(), 1);
    // With fresh counters the same change stands (on a replica that has not seen the
    // reused one: both claim B's seq 2).
    let mut q = replica_of(a.id(), &base);
    q.apply(raw_inc(B, &first)).unwrap();
    assert!(matches!(
        q.apply(raw_inc(B, &honest)),
        Ok(ApplyOutcome::Applied { .. })
    ));
    assert_eq!(q.messages()[0].reactions.len(), 2);
}

#[test]
fn a_local_write_releases_what_waits_for_it() {
    let (mut a, _, _, base) = setup();
    // B predicts A's next post (its counters follow from A's document, which B has too)
    // and reacts in its reactions map before the post exists, naming only the genesis.
    let post = |ch: &mut Channel| {
        ch.post(
            A,
            Hlc::new(7000, 0),
            "next",
            Precedence::Routine,
            None,
            vec![],
        )
        .unwrap()
    };
    let mut seer = replica_of(a.id(), &base);
    let predicted = post(&mut seer);
    let reactions = reactions_of(&seer, &predicted.message_id);
    let mine = format!("{}:ok", &B.to_hex()[..16]);
    let w = raw_change(&mut seer, B, |tx| {
        tx.put(&reactions, mine.as_str(), true).unwrap()
    });
    let w = resigned(&w, |ex| ex.deps = vec![change_of(&base[0].payload).hash()]);
    assert_eq!(a.apply(raw_inc(B, &w)), Ok(ApplyOutcome::Pending));
    // A's own post makes the map: the reaction applies at once, as on every other replica.
    let made = post(&mut a);
    assert_eq!(made.change, predicted.change);
    assert_eq!(a.pending_len(), 0);
    let shown = a.messages();
    let next = shown.iter().find(|m| m.id == made.message_id).unwrap();
    assert_eq!(next.reactions.len(), 1, "{next:?}");
}

#[test]
fn a_node_does_not_write_over_its_own_waiting_change() {
    let (mut a, mut b, id, base) = setup();
    let p2 = a
        .post(
            A,
            Hlc::new(3000, 0),
            "two",
            Precedence::Routine,
            None,
            vec![],
        )
        .unwrap();
    a.bind(p2.change, env_id(&p2));
    b.apply(inc(A, &p2)).unwrap();
    let reactions = reactions_of(&b, &id);
    let mine = format!("{}:ok", &B.to_hex()[..16]);
    // B's change from an earlier life, built on A's second post.
    let old = raw_change(&mut b, B, |tx| {
        tx.put(&reactions, mine.as_str(), true).unwrap()
    });
    // B starting over from the first two envelopes gets its old change back before what
    // it builds on: writing now would sign another seq 1.
    let mut fresh = replica_of(a.id(), &base);
    assert_eq!(fresh.apply(raw_inc(B, &old)), Ok(ApplyOutcome::Pending));
    match fresh.post(
        B,
        Hlc::new(6000, 0),
        "hello again",
        Precedence::Routine,
        None,
        vec![],
    ) {
        Err(LocalOpError::Invalid(why)) => assert!(why.contains("waiting"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    fresh.apply(inc(A, &p2)).unwrap();
    assert_eq!(fresh.pending_len(), 0);
    let again = fresh
        .post(
            B,
            Hlc::new(6001, 0),
            "hello again",
            Precedence::Routine,
            None,
            vec![],
        )
        .unwrap();
    assert_eq!(change_of(&again.payload).seq(), 2);
}
