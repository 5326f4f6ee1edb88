//! The same test bodies against both backends, so the in-memory fake cannot drift.

use fieldmesh_core::{ChannelId, CompartmentId, Envelope, Header, Hlc, Kind, Precedence};
use fieldmesh_crypto::{NodeKey, PayloadKey, seal_envelope};
use fieldmesh_store::{MemStore, PutOutcome, SledStore, Store, Summary, WriteError};

fn env(key: &NodeKey, ch: u8, hlc: u64, kind: Kind, body: &[u8]) -> Envelope {
    let header = Header {
        kind,
        precedence: Precedence::Routine,
        compartment: CompartmentId::OPEN,
        epoch: 0,
        channel: ChannelId([ch; 32]),
        author: key.node_id(),
        hlc: Hlc(hlc),
        deps: vec![],
    };
    seal_envelope(key, header, &PayloadKey::open_compartment(), body).unwrap()
}

fn put_get_duplicate(s: &dyn Store) {
    let k = NodeKey::from_seed([1; 32]);
    let a = env(&k, 1, 10, Kind::CHANNEL_GENESIS, b"a");
    assert!(s.is_empty().unwrap());
    assert_eq!(s.put(&a).unwrap(), PutOutcome::Inserted);
    assert_eq!(s.put(&a).unwrap(), PutOutcome::Duplicate);
    assert_eq!(s.get(&a.id()).unwrap().unwrap(), a);
    assert!(s.contains(&a.id()).unwrap());
    let stats = s.stats().unwrap();
    assert_eq!(stats.envelopes, 1);
    assert_eq!(stats.bytes, a.encoded_len() as u64);
}

fn channel_order_and_listing(s: &dyn Store) {
    let k = NodeKey::from_seed([2; 32]);
    let g = env(&k, 5, 1, Kind::CHANNEL_GENESIS, b"genesis");
    let later = env(&k, 5, 30, Kind::CHANNEL_CHANGE, b"later");
    let earlier = env(&k, 5, 20, Kind::CHANNEL_CHANGE, b"earlier");
    let other = env(&k, 6, 25, Kind::CHANNEL_CHANGE, b"other channel");
    let outcomes = s
        .put_batch(&[
            later.clone(),
            g.clone(),
            earlier.clone(),
            other.clone(),
            later.clone(),
        ])
        .unwrap();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == PutOutcome::Inserted)
            .count(),
        4
    );
    assert_eq!(outcomes[4], PutOutcome::Duplicate);
    let got: Vec<_> = s
        .channel_envelopes(&ChannelId([5; 32]))
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(got, vec![g.id(), earlier.id(), later.id()]);
    assert_eq!(s.channels().unwrap(), vec![(ChannelId([5; 32]), g.id())]);
    let mut ids = vec![g.id(), earlier.id(), later.id(), other.id()];
    ids.sort();
    assert_eq!(s.ids().unwrap(), ids);
}

/// Every channel is listed with its earliest envelope, genesis or not, including the
/// last channel id there is (the scan's next key wraps past it).
fn channel_firsts_list_every_channel(s: &dyn Store) {
    let k = NodeKey::from_seed([2; 32]);
    let g = env(&k, 5, 10, Kind::CHANNEL_GENESIS, b"g");
    let later = env(&k, 5, 30, Kind::CHANNEL_CHANGE, b"l");
    let headless = env(&k, 6, 25, Kind::BLOB_CHUNK, b"c");
    let last = env(&k, 0xff, 1, Kind::CHANNEL_CHANGE, b"x");
    s.put_batch(&[later, last.clone(), headless.clone(), g.clone()])
        .unwrap();
    assert_eq!(
        s.channel_firsts().unwrap(),
        vec![
            (ChannelId([5; 32]), g.id()),
            (ChannelId([6; 32]), headless.id()),
            (ChannelId([0xff; 32]), last.id()),
        ]
    );
}

fn quota_rejects_whole_batch(s: &dyn Store) {
    let k = NodeKey::from_seed([3; 32]);
    let big: Vec<Envelope> = (0..4)
        .map(|i| env(&k, 9, i, Kind::CHANNEL_CHANGE, &[7u8; 400]))
        .collect();
    s.put(&big[0]).unwrap();
    let err = s.put_batch(&big[1..]).unwrap_err();
    assert!(matches!(err, WriteError::QuotaExceeded { .. }), "{err}");
    assert!(err.to_string().contains("nothing was written"));
    assert_eq!(
        s.len().unwrap(),
        1,
        "a rejected batch must leave nothing behind"
    );
    assert!(!s.contains(&big[1].id()).unwrap());
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod mem {
            $(#[test] fn $name() { super::$name(&fieldmesh_store::MemStore::new(Some(1000))); })*
        }
        mod sled {
            $(#[test] fn $name() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(&fieldmesh_store::SledStore::open(dir.path(), Some(1000)).unwrap());
            })*
        }
    };
}
conformance!(
    put_get_duplicate,
    channel_order_and_listing,
    channel_firsts_list_every_channel,
    quota_rejects_whole_batch
);

#[test]
fn sled_persists_and_refuses_newer_format() {
    let dir = tempfile::tempdir().unwrap();
    let k = NodeKey::from_seed([4; 32]);
    let a = env(&k, 1, 1, Kind::CHANNEL_GENESIS, b"persist");
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        s.put(&a).unwrap();
        // A second open while the first is alive is refused clearly.
        let err = SledStore::open(dir.path(), None).unwrap_err();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        assert_eq!(s.get(&a.id()).unwrap().unwrap(), a);
        assert_eq!(s.channels().unwrap().len(), 1);
        s.force_format_version(99).unwrap();
    }
    let err = SledStore::open(dir.path(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "store {} has format version 99; this build reads up to {}: upgrade fieldmesh",
            dir.path().display(),
            fieldmesh_store::FORMAT_VERSION
        )
    );
}

#[test]
fn mem_store_has_no_quota_by_default() {
    let s = MemStore::new(None);
    let k = NodeKey::from_seed([5; 32]);
    for i in 0..50 {
        s.put(&env(&k, 1, i, Kind::CHANNEL_CHANGE, &[0u8; 1000]))
            .unwrap();
    }
    assert_eq!(s.len().unwrap(), 50);
}

/// sled 0.34.7 picks a half-written `snap.<lsn>.generating` (left by a crash mid-snapshot)
/// as the newest snapshot and refuses to open. The store moves such files aside and keeps
/// everything; a damaged *finished* snapshot is still refused.
#[test]
fn sled_recovers_from_a_crash_mid_snapshot_and_refuses_real_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let k = NodeKey::from_seed([5; 32]);
    let a = env(&k, 2, 1, Kind::CHANNEL_GENESIS, b"survives");
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        s.put(&a).unwrap();
    }
    // What a SIGKILL during snapshot writing leaves (as found after a crash test failure).
    let half = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&half, b"").unwrap();
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        assert_eq!(s.get(&a.id()).unwrap().unwrap(), a);
    }
    assert!(!half.exists());
    assert!(
        dir.path()
            .join("unfinished-snapshots/snap.7FFFFFFFFFFFFFFF.generating")
            .exists(),
        "the unfinished snapshot is kept, not deleted"
    );
    // A finished snapshot that is damaged is real corruption: refused, nothing touched.
    let bad = dir.path().join("snap.7FFFFFFFFFFFFFFF");
    std::fs::write(&bad, b"torn").unwrap();
    let err = SledStore::open(dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("orrupt"), "{err}");
    assert!(bad.exists());
}

/// Attachment-sized envelopes next to small ones, in one batch and across calls.
fn large_and_small_envelopes(s: &dyn Store) {
    let k = NodeKey::from_seed([7; 32]);
    let g = env(&k, 9, 1, Kind::CHANNEL_GENESIS, b"genesis");
    let big: Vec<Envelope> = (0..5u8)
        .map(|i| {
            env(
                &k,
                9,
                10 + u64::from(i),
                Kind::CHANNEL_CHANGE,
                &vec![i; 20_000 + usize::from(i)],
            )
        })
        .collect();
    let mut batch = vec![g.clone()];
    batch.extend(big[..3].iter().cloned());
    s.put_batch(&batch).unwrap();
    s.put_batch(&big[3..]).unwrap();
    assert_eq!(s.put(&big[1]).unwrap(), PutOutcome::Duplicate);
    for e in big.iter().chain([&g]) {
        assert_eq!(&s.get(&e.id()).unwrap().unwrap(), e);
        assert_eq!(s.get_bytes(&e.id()).unwrap().unwrap(), e.as_bytes());
    }
    let listed = s.channel_envelopes(&ChannelId([9; 32])).unwrap();
    assert_eq!(listed.len(), 6);
    assert_eq!(listed[1..], big[..]);
    // Summaries describe every envelope, large or small, in id order.
    let mut want: Vec<_> = big
        .iter()
        .chain([&g])
        .map(|e| (e.id(), Summary::of(e)))
        .collect();
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(s.summaries().unwrap(), want);
    // A channel read by kind.
    let genesis_only = s
        .channel_envelopes_of(&ChannelId([9; 32]), &|k| k == Kind::CHANNEL_GENESIS)
        .unwrap();
    assert_eq!(genesis_only, vec![g.clone()]);
    let stats = s.stats().unwrap();
    assert_eq!(
        stats.bytes,
        big.iter()
            .chain([&g])
            .map(|e| e.encoded_len() as u64)
            .sum::<u64>()
    );
}

/// Removal: envelopes large and small go (from reads, channel lists, summaries and the
/// counters); a genesis and unknown ids are skipped; a second removal removes nothing.
fn remove_envelopes(s: &dyn Store) -> (Envelope, Vec<Envelope>) {
    let k = NodeKey::from_seed([11; 32]);
    let g = env(&k, 4, 1, Kind::CHANNEL_GENESIS, b"genesis");
    let small: Vec<Envelope> = (0..4u64)
        .map(|i| env(&k, 4, 10 + i, Kind::CHANNEL_CHANGE, b"small"))
        .collect();
    let large: Vec<Envelope> = (0..3u8)
        .map(|i| {
            env(
                &k,
                4,
                20 + u64::from(i),
                Kind::CHANNEL_CHANGE,
                &vec![i; 60_000],
            )
        })
        .collect();
    let mut all = vec![g.clone()];
    all.extend(small.iter().cloned());
    all.extend(large.iter().cloned());
    s.put_batch(&all).unwrap();
    let before = s.stats().unwrap();
    let gone = [&small[1], &small[3], &large[0], &large[2]];
    let mut ids: Vec<_> = gone.iter().map(|e| e.id()).collect();
    ids.push(g.id());
    ids.push(env(&k, 4, 99, Kind::CHANNEL_CHANGE, b"never stored").id());
    let removed = s.remove(&ids).unwrap();
    let bytes: u64 = gone.iter().map(|e| e.encoded_len() as u64).sum();
    assert_eq!(removed.envelopes, 4);
    assert_eq!(removed.bytes, bytes);
    assert_eq!(s.stats().unwrap().envelopes, before.envelopes - 4);
    assert_eq!(s.stats().unwrap().bytes, before.bytes - bytes);
    for e in gone {
        assert!(!s.contains(&e.id()).unwrap());
        assert_eq!(s.get(&e.id()).unwrap(), None);
    }
    let kept = vec![
        g.clone(),
        small[0].clone(),
        small[2].clone(),
        large[1].clone(),
    ];
    assert_eq!(s.channel_envelopes(&ChannelId([4; 32])).unwrap(), kept);
    let summaries: Vec<_> = kept.iter().map(|e| (e.id(), Summary::of(e))).collect();
    assert_eq!(s.channel_summaries(&ChannelId([4; 32])).unwrap(), summaries);
    assert_eq!(s.summaries().unwrap().len(), 4);
    assert_eq!(s.channels().unwrap(), vec![(ChannelId([4; 32]), g.id())]);
    assert_eq!(
        s.remove(&ids).unwrap().envelopes,
        0,
        "nothing left to remove"
    );
    // Removed envelopes can be stored again.
    assert_eq!(s.put(&large[0]).unwrap(), PutOutcome::Inserted);
    assert_eq!(s.get(&large[0].id()).unwrap().as_ref(), Some(&large[0]));
    (g, kept)
}

#[test]
fn mem_remove_envelopes() {
    remove_envelopes(&MemStore::new(None));
}

/// On sled, removal is durable (a reopen agrees) and the value log gives the removed
/// chunks' disk blocks back.
#[test]
fn sled_remove_envelopes_durably_and_releases_value_log_space() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let blocks = |d: &std::path::Path| -> u64 {
        std::fs::read_dir(d.join("vlog"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().blocks())
            .sum()
    };
    let (stats, kept) = {
        let s = SledStore::open(dir.path(), None).unwrap();
        let (_, kept) = remove_envelopes(&s);
        (s.stats().unwrap(), kept)
    };
    // sled's background threads can hold the lock for a moment after a drop.
    let mut tries = 0;
    let s = loop {
        match SledStore::open(dir.path(), None) {
            Err(fieldmesh_store::OpenError::Locked(_)) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(s.stats().unwrap(), stats);
    // What was kept, and the large envelope stored again after its removal.
    assert_eq!(
        s.channel_envelopes(&ChannelId([4; 32])).unwrap().len(),
        kept.len() + 1
    );
    for e in &kept {
        assert_eq!(s.get(&e.id()).unwrap().as_ref(), Some(e));
    }
    // Removing the two large envelopes left gives their blocks back (where the file
    // system punches holes: tmpfs and ext4 do).
    let before = blocks(dir.path());
    let large: Vec<_> = s
        .channel_envelopes(&ChannelId([4; 32]))
        .unwrap()
        .into_iter()
        .filter(|e| e.encoded_len() > 50_000)
        .map(|e| e.id())
        .collect();
    assert_eq!(large.len(), 2);
    assert_eq!(s.remove(&large).unwrap().envelopes, 2);
    let after = blocks(dir.path());
    // 512-byte units: two 60 KB records hold at least 2 x 14 whole 4 KiB blocks.
    assert!(
        before - after >= 2 * 14 * 8,
        "value log blocks {before} -> {after}"
    );
}

#[test]
fn mem_large_and_small_envelopes() {
    large_and_small_envelopes(&MemStore::new(None));
}

#[test]
fn sled_large_and_small_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    large_and_small_envelopes(&SledStore::open(dir.path(), None).unwrap());
}

/// Large envelopes live in the value log: they survive a reopen; a torn tail left by a
/// crash mid-append is skipped; damage inside a value reads as corruption, never as
/// another envelope.
#[test]
fn sled_value_log_survives_reopen_torn_tails_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    let k = NodeKey::from_seed([8; 32]);
    let a = env(&k, 3, 1, Kind::CHANNEL_GENESIS, &[1; 30_000]);
    let b = env(&k, 3, 2, Kind::CHANNEL_CHANGE, &[2; 30_000]);
    let seg = dir.path().join("vlog").join("00000000.seg");
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        s.put(&a).unwrap();
    }
    // The value is in the log once, at the start; commits start on 4 KiB boundaries, so
    // the rest of the last block is zeros.
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(bytes.len(), a.encoded_len().div_ceil(4096) * 4096);
    assert_eq!(&bytes[..a.encoded_len()], a.as_bytes());
    assert!(bytes[a.encoded_len()..].iter().all(|&b| b == 0));
    // A crash in the middle of the next append: bytes nothing points at.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xee; 1000]).unwrap();
    }
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        assert_eq!(s.get(&a.id()).unwrap().unwrap(), a);
        s.put(&b).unwrap();
        assert_eq!(s.get(&b.id()).unwrap().unwrap(), b);
    }
    // One flipped byte inside `a`: refused as corrupt, and `b` is untouched.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0x55], 500).unwrap();
    }
    let s = SledStore::open(dir.path(), None).unwrap();
    let err = s.get(&a.id()).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    // The node is told of each damaged envelope: what was found before it listened, as
    // soon as it does; a notice it does not take (a full queue), again by the next read
    // that finds the damage; and then never again.
    let found = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tell = found.clone();
    s.on_damage(Box::new(move |id| {
        let mut f = tell.lock().unwrap();
        f.push(id);
        f.len() > 1
    }));
    assert_eq!(*found.lock().unwrap(), vec![a.id()]);
    // The bytes sent to peers are checked too (by the entry's checksum).
    let err = s.get_bytes(&a.id()).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(*found.lock().unwrap(), vec![a.id(), a.id()]);
    assert!(s.get(&a.id()).is_err());
    assert_eq!(s.get(&b.id()).unwrap().unwrap(), b);
    assert_eq!(s.get_bytes(&b.id()).unwrap().unwrap(), b.as_bytes());
    // The channel stays readable without the damaged envelope.
    assert_eq!(
        s.channel_envelopes(&ChannelId([3; 32])).unwrap(),
        vec![b.clone()]
    );
    assert_eq!(
        found.lock().unwrap().len(),
        2,
        "told until taken, then not again"
    );
    // A verified copy (from a peer) replaces the damaged one, counted once; an intact
    // envelope offered again is still a duplicate.
    let before = s.stats().unwrap();
    assert_eq!(s.put(&a).unwrap(), PutOutcome::Inserted);
    assert_eq!(s.put(&b).unwrap(), PutOutcome::Duplicate);
    assert_eq!(s.get(&a.id()).unwrap().unwrap(), a);
    assert_eq!(s.get_bytes(&a.id()).unwrap().unwrap(), a.as_bytes());
    assert_eq!(s.stats().unwrap(), before);
    assert_eq!(s.put(&a).unwrap(), PutOutcome::Duplicate);
    assert_eq!(
        found.lock().unwrap().len(),
        2,
        "the repaired copy reads clean"
    );
    drop(s);
    let s = SledStore::open(dir.path(), None).unwrap();
    assert_eq!(s.get(&a.id()).unwrap().unwrap(), a, "the repair is durable");
    assert_eq!(
        s.channel_envelopes(&ChannelId([3; 32])).unwrap(),
        vec![a, b]
    );
}

/// A large envelope's summary is kept beside its value-log pointer: the sync index at
/// start and a channel read that skips attachment chunks do not read the chunks, so
/// damage in a chunk costs neither; the read that needs the chunk finds it.
#[test]
fn sled_summaries_and_kind_filtered_reads_skip_large_values() {
    let dir = tempfile::tempdir().unwrap();
    let k = NodeKey::from_seed([9; 32]);
    let g = env(&k, 4, 1, Kind::CHANNEL_GENESIS, b"genesis");
    let chunk = env(&k, 4, 2, Kind::BLOB_CHUNK, &[3; 40_000]);
    let change = env(&k, 4, 3, Kind::CHANNEL_CHANGE, b"post");
    {
        let s = SledStore::open(dir.path(), None).unwrap();
        s.put_batch(&[g.clone(), chunk.clone(), change.clone()])
            .unwrap();
    }
    // The chunk is the only value in the log: damage it.
    {
        use std::os::unix::fs::FileExt;
        let seg = dir.path().join("vlog").join("00000000.seg");
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0x55], 1000).unwrap();
    }
    let s = SledStore::open(dir.path(), None).unwrap();
    let found = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tell = found.clone();
    s.on_damage(Box::new(move |id| {
        tell.lock().unwrap().push(id);
        true
    }));
    let mut want: Vec<_> = [&g, &chunk, &change]
        .iter()
        .map(|e| (e.id(), Summary::of(e)))
        .collect();
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(
        s.summaries().unwrap(),
        want,
        "from the pointer, not the value"
    );
    assert_eq!(
        s.channel_envelopes_of(&ChannelId([4; 32]), &|k| k.is_channel_change())
            .unwrap(),
        vec![g.clone(), change.clone()]
    );
    assert!(found.lock().unwrap().is_empty(), "the chunk was never read");
    // The read that needs the chunk finds the damage.
    assert!(
        s.channel_envelopes_of(&ChannelId([4; 32]), &|k| k == Kind::BLOB_CHUNK)
            .unwrap()
            .is_empty()
    );
    assert_eq!(*found.lock().unwrap(), vec![chunk.id()]);
}

/// The value log reuses its write buffer across group commits: a later, smaller commit
/// writes its values and zeros up to the block boundary, never bytes left in the buffer by
/// an earlier, larger one.
#[test]
fn sled_value_log_reused_buffer_pads_with_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let k = NodeKey::from_seed([9; 32]);
    let big: Vec<Envelope> = (0..3)
        .map(|i| env(&k, 4, 10 + i, Kind::CHANNEL_CHANGE, &[0xab; 40_000]))
        .collect();
    let small = env(&k, 4, 20, Kind::CHANNEL_CHANGE, &[0x11; 9_000]);
    let seg = dir.path().join("vlog").join("00000000.seg");
    let s = SledStore::open(dir.path(), None).unwrap();
    s.put_batch(&big).unwrap();
    let first = std::fs::metadata(&seg).unwrap().len();
    s.put(&small).unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let start = usize::try_from(first.div_ceil(4096) * 4096).unwrap();
    let end = start + small.encoded_len();
    assert_eq!(bytes.len(), end.div_ceil(4096) * 4096);
    assert_eq!(&bytes[start..end], small.as_bytes());
    assert!(
        bytes[end..].iter().all(|&b| b == 0),
        "stale bytes in the padding"
    );
    for e in big.iter().chain([&small]) {
        assert_eq!(s.get_bytes(&e.id()).unwrap().unwrap(), e.as_bytes());
    }
}
