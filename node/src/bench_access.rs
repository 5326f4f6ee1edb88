//! `fieldmesh bench access`: what compartments cost, measured side by side in one run.

use anyhow::Result;
use fieldmesh_core::{ChannelId, CompartmentId, EnvelopeId, Header, Hlc, Kind, Precedence};
use fieldmesh_crypto::access::{Record, seal_grant, seal_record};
use fieldmesh_crypto::credential::parse_date;
use fieldmesh_crypto::{
    CompartmentDef, Credential, Directory, NodeKey, PayloadKey, open_envelope, seal_envelope,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

fn per_op_us(n: usize, f: impl FnMut()) -> f64 {
    let mut f = f;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

pub fn run(members: usize, n: usize) -> Result<()> {
    let author = NodeKey::from_seed([1; 32]);
    let text = vec![b'x'; 512];
    let header = |c: CompartmentId, epoch: u32, i: u64| Header {
        kind: Kind::CHANNEL_CHANGE,
        precedence: Precedence::Routine,
        compartment: c,
        epoch,
        channel: ChannelId([2; 32]),
        author: author.node_id(),
        hlc: Hlc(i << 16),
        deps: vec![],
    };
    let open = PayloadKey::open_compartment();
    let key = PayloadKey::generate()?;
    let cid = CompartmentId([3; 32]);
    println!(
        "== seal and open, {n} envelopes of {} bytes (Ed25519 signing included)",
        text.len()
    );
    let mut i = 0u64;
    let seal_open = per_op_us(n, || {
        i += 1;
        let _ = seal_envelope(&author, header(CompartmentId::OPEN, 0, i), &open, &text);
    });
    let seal_comp = per_op_us(n, || {
        i += 1;
        let _ = seal_envelope(&author, header(cid, 1, i), &key, &text);
    });
    let env = seal_envelope(&author, header(cid, 1, 1), &key, &text)?;
    let opened = per_op_us(n, || {
        let _ = open_envelope(&env, &key);
    });
    // A member of a compartment tries the keys it holds for the epoch: worst case two
    // (concurrent rotations), the first one wrong.
    let wrong = PayloadKey::generate()?;
    let opened_two = per_op_us(n, || {
        let _ = open_envelope(&env, &wrong).or_else(|_| open_envelope(&env, &key));
    });
    println!("seal, open compartment:       {seal_open:8.1} us");
    println!(
        "seal, compartment key:        {seal_comp:8.1} us   ratio {:.2}",
        seal_comp / seal_open
    );
    println!("open, right key:              {opened:8.1} us");
    println!(
        "open, wrong key then right:   {opened_two:8.1} us   ratio {:.2}",
        opened_two / opened
    );

    println!("== grants");
    let recipient = NodeKey::from_seed([9; 32]);
    let rot = EnvelopeId([4; 32]);
    let g = seal_grant(&cid, 1, &rot, &recipient.node_id(), &key)?;
    let seal_g = per_op_us(n.min(2000), || {
        let _ = seal_grant(&cid, 1, &rot, &recipient.node_id(), &key);
    });
    let bytes = hex::decode(&g)?;
    let ctx = fieldmesh_crypto::access::grant_context(&cid, 1, &rot, &recipient.node_id());
    let open_g = per_op_us(n.min(2000), || {
        let _ = recipient.open_sealed(&ctx, &bytes);
    });
    let grant_env = seal_record(
        &author,
        &Record::Grant {
            compartment: cid,
            epoch: 1,
            rotation: rot,
            recipient: recipient.node_id(),
            sealed: g,
        },
        Hlc(1),
    )?;
    println!("seal a grant (X25519 + HKDF + AEAD): {seal_g:8.1} us");
    println!("open a grant:                        {open_g:8.1} us");
    println!(
        "grant envelope on the wire:          {:8} bytes (32-byte key inside)",
        grant_env.encoded_len()
    );

    println!("== rotation of a {members}-member compartment (admin side, then one member)");
    let admin = NodeKey::from_seed([5; 32]);
    let auth = NodeKey::from_seed([6; 32]);
    let now = parse_date("2026-12-01").map_err(anyhow::Error::msg)?;
    let mut dir = Directory::default();
    let put = |dir: &mut Directory, k: &NodeKey, r: Record, h: u64| {
        let e = seal_record(k, &r, Hlc(h << 16)).expect("seal");
        let p = open_envelope(&e, &open).expect("open");
        dir.insert(&e, &p).expect("insert");
        e
    };
    let def = CompartmentDef {
        name: "C".into(),
        policy: "clearance >= SECRET".into(),
        admins: vec![],
        nonce: "n".into(),
    };
    let id = def.id(&admin.node_id());
    put(&mut dir, &admin, Record::Compartment { def }, 1);
    let keys: Vec<NodeKey> = (0..members).map(|i| NodeKey::from_seed(sha(i))).collect();
    for (i, k) in keys.iter().enumerate() {
        let c = Credential::issue(
            &auth,
            "A",
            k.node_id(),
            BTreeMap::from([("clearance".to_string(), "SECRET".to_string())]),
            now,
            now + 86_400_000,
        )?;
        put(
            &mut dir,
            k,
            Record::Credential { credential: c },
            2 + i as u64,
        );
    }
    let trust = [fieldmesh_crypto::TrustedAuthority {
        name: "A".into(),
        id: auth.node_id(),
        scope: BTreeMap::new(),
    }];
    let t = Instant::now();
    let rot = put(
        &mut dir,
        &admin,
        Record::Rotation {
            compartment: id,
            epoch: 1,
            revoked: vec![],
            reason: "bench".into(),
        },
        1_000_000,
    );
    let epoch_key = PayloadKey::generate()?;
    let plan = dir.plan(
        &id,
        &admin.node_id(),
        now,
        &trust,
        &BTreeSet::from([rot.id()]),
    );
    let mut wire = rot.encoded_len();
    for (j, a) in plan.iter().enumerate() {
        if let fieldmesh_crypto::access::AdminAction::Grant { recipient, .. } = a {
            let sealed = seal_grant(&id, 1, &rot.id(), recipient, &epoch_key)?;
            let e = put(
                &mut dir,
                &admin,
                Record::Grant {
                    compartment: id,
                    epoch: 1,
                    rotation: rot.id(),
                    recipient: *recipient,
                    sealed,
                },
                1_000_001 + j as u64,
            );
            wire += e.encoded_len();
        }
    }
    let admin_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let (held, _) = dir.open_grants(&keys[0]);
    let member_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(held.len() == 1, "member did not get its key");
    println!("grants planned: {} (members and the admin)", plan.len());
    println!(
        "admin: plan, seal, sign, index:  {admin_ms:8.1} ms  ({:.1} us per member)",
        admin_ms * 1e3 / members as f64
    );
    println!("member: find and open its grant: {member_ms:8.1} ms");
    println!(
        "directory bytes for the rotation: {wire} ({:.0} per member)",
        wire as f64 / members as f64
    );

    println!("== what a relay carries");
    let plain = text.len();
    println!(
        "a {plain}-byte change as an envelope: {} bytes, the same sealed under a compartment as under the open key (ratio {:.2}); compartment adds 0 bytes per envelope",
        env.encoded_len(),
        env.encoded_len() as f64
            / seal_envelope(&author, header(CompartmentId::OPEN, 0, 1), &open, &text)?.encoded_len()
                as f64
    );
    for msgs in [100usize, 1000, 10_000] {
        let traffic = msgs * env.encoded_len();
        println!(
            "{msgs:>6} messages per epoch among {members} members: directory share {:.1}% of the relay's bytes",
            100.0 * wire as f64 / (wire + traffic) as f64
        );
    }
    Ok(())
}

fn sha(i: usize) -> [u8; 32] {
    fieldmesh_core::sha256(&(i as u64).to_be_bytes())
}
