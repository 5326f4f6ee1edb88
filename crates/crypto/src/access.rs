//! The directory: credentials, compartments, key rotations and key grants, carried as
//! envelopes of one well-known channel, and the compartment state every node derives
//! from them.
//!
//! Nothing here depends on arrival order. The state is a pure function of the set of
//! records, so nodes that hold the same records agree, whatever order they came in:
//!
//! * a compartment's admins are fixed by its definition; rotations and grants signed by
//!   anyone else are ignored (and reported);
//! * the current epoch is the highest epoch of any valid rotation; two rotations to the
//!   same epoch (admins rotating concurrently, on both sides of a partition) are ordered
//!   by envelope id and the smallest wins. Members keep the keys of both: envelopes sealed
//!   under either stay readable (the AEAD tag tells which key fits);
//! * revocations accumulate: the revoked set is the union over all valid rotations. When
//!   the winning rotation does not exclude everyone revoked (the loser of a concurrent
//!   pair revoked someone else), an admin rotates again with the union, so no revocation
//!   is lost to a tie-break.

use crate::credential::{Credential, TrustedAuthority};
use crate::policy::Policy;
use crate::sealbox::seal_to;
use crate::{NodeKey, PayloadKey, SealBoxError};
use fieldmesh_core::{
    ChannelId, CompartmentId, Envelope, EnvelopeId, Header, Hlc, Kind, NodeId, Precedence, sha256,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The channel every directory envelope belongs to.
pub fn directory_channel() -> ChannelId {
    ChannelId(sha256(b"fieldmesh/directory/v1"))
}

/// A compartment's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompartmentDef {
    /// Name, for people; unique per creator.
    pub name: String,
    /// Policy text (see [`Policy`]).
    pub policy: String,
    /// Nodes that may rotate and grant; the creator is always one.
    pub admins: Vec<NodeId>,
    /// Random, so that re-creating a name makes a new compartment.
    pub nonce: String,
}

impl CompartmentDef {
    /// The compartment id: it commits to the creator and the definition's name and nonce.
    pub fn id(&self, creator: &NodeId) -> CompartmentId {
        let mut b = b"fieldmesh/compartment/v1".to_vec();
        b.extend_from_slice(creator.as_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.push(0);
        b.extend_from_slice(self.nonce.as_bytes());
        CompartmentId(sha256(&b))
    }
}

/// One directory record: the payload of a directory envelope, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A credential, published so that admins can grant to its subject.
    Credential {
        /// The signed credential.
        credential: Credential,
    },
    /// A compartment's definition.
    Compartment {
        /// The definition.
        def: CompartmentDef,
    },
    /// A new epoch of a compartment.
    Rotation {
        /// Which compartment.
        compartment: CompartmentId,
        /// The new epoch.
        epoch: u32,
        /// Nodes revoked so far (cumulative).
        revoked: Vec<NodeId>,
        /// Why, for the audit trail.
        reason: String,
    },
    /// A rotation's epoch key, sealed to one node.
    Grant {
        /// Which compartment.
        compartment: CompartmentId,
        /// Which epoch.
        epoch: u32,
        /// The rotation envelope whose key this is.
        rotation: EnvelopeId,
        /// Who may open it.
        recipient: NodeId,
        /// The key, sealed with [`seal_to`] under [`grant_context`], hex.
        sealed: String,
    },
}

impl Record {
    /// The envelope kind that carries this record.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Credential { .. } => Kind::CREDENTIAL,
            Record::Compartment { .. } => Kind::COMPARTMENT,
            Record::Rotation { .. } => Kind::ROTATION,
            Record::Grant { .. } => Kind::KEY_GRANT,
        }
    }

    /// The record as payload bytes.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record serialises")
    }
}

/// What a grant's box is bound to.
pub fn grant_context(
    compartment: &CompartmentId,
    epoch: u32,
    rotation: &EnvelopeId,
    recipient: &NodeId,
) -> Vec<u8> {
    let mut c = b"fieldmesh/grant/v1".to_vec();
    c.extend_from_slice(compartment.as_bytes());
    c.extend_from_slice(&epoch.to_be_bytes());
    c.extend_from_slice(rotation.as_bytes());
    c.extend_from_slice(recipient.as_bytes());
    c
}

/// Seals an epoch key to a recipient: the `sealed` field of a grant.
pub fn seal_grant(
    compartment: &CompartmentId,
    epoch: u32,
    rotation: &EnvelopeId,
    recipient: &NodeId,
    key: &PayloadKey,
) -> Result<String, SealBoxError> {
    let ctx = grant_context(compartment, epoch, rotation, recipient);
    Ok(hex::encode(seal_to(recipient, &ctx, key.as_bytes())?))
}

/// Seals a directory record into an envelope of the directory channel (the open
/// compartment: every node can read the directory, and grants inside it are sealed to
/// their recipients).
pub fn seal_record(key: &NodeKey, record: &Record, hlc: Hlc) -> Result<Envelope, crate::SealError> {
    let header = Header {
        kind: record.kind(),
        precedence: Precedence::Priority,
        compartment: CompartmentId::OPEN,
        epoch: 0,
        channel: directory_channel(),
        author: key.node_id(),
        hlc,
        deps: Vec::new(),
    };
    crate::seal_envelope(
        key,
        header,
        &PayloadKey::open_compartment(),
        &record.to_payload(),
    )
}

#[derive(Debug, Clone)]
struct Located<T> {
    env: EnvelopeId,
    author: NodeId,
    item: T,
}

#[derive(Debug, Clone)]
struct RotationRec {
    compartment: CompartmentId,
    epoch: u32,
    revoked: BTreeSet<NodeId>,
    reason: String,
}

#[derive(Debug, Clone)]
struct GrantRec {
    compartment: CompartmentId,
    epoch: u32,
    rotation: EnvelopeId,
    recipient: NodeId,
    sealed: String,
}

/// All directory records a node holds.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    credentials: BTreeMap<EnvelopeId, Located<Credential>>,
    compartments: BTreeMap<CompartmentId, Located<CompartmentDef>>,
    rotations: BTreeMap<EnvelopeId, Located<RotationRec>>,
    grants: BTreeMap<EnvelopeId, Located<GrantRec>>,
    problems: BTreeMap<EnvelopeId, String>,
}

/// One rotation as the state reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpochView {
    /// The rotation envelope.
    pub rotation: EnvelopeId,
    /// Its epoch.
    pub epoch: u32,
    /// The admin who rotated.
    pub by: NodeId,
    /// Revoked as of this rotation.
    pub revoked: Vec<NodeId>,
    /// Why.
    pub reason: String,
    /// Nodes holding a grant of this rotation's key.
    pub granted: Vec<NodeId>,
}

/// A compartment as derived from the directory.
#[derive(Debug, Clone, Serialize)]
pub struct CompartmentState {
    /// Id.
    pub id: CompartmentId,
    /// Definition.
    pub def: CompartmentDef,
    /// Creator.
    pub creator: NodeId,
    /// Valid rotations, oldest epoch first; within an epoch, the winner first.
    pub epochs: Vec<EpochView>,
    /// Union of every valid rotation's revocations.
    pub revoked: Vec<NodeId>,
}

impl CompartmentState {
    /// The rotation new envelopes are sealed under: highest epoch, smallest id.
    pub fn current(&self) -> Option<&EpochView> {
        let top = self.epochs.iter().map(|e| e.epoch).max()?;
        self.epochs.iter().find(|e| e.epoch == top)
    }

    /// Whether `node` administers the compartment.
    pub fn is_admin(&self, node: &NodeId) -> bool {
        self.def.admins.contains(node)
    }
}

/// What an admin should do next for one compartment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// Start a new epoch excluding `revoked`.
    Rotate {
        /// Compartment.
        compartment: CompartmentId,
        /// The new epoch.
        epoch: u32,
        /// Cumulative revocations.
        revoked: Vec<NodeId>,
        /// Why.
        reason: String,
    },
    /// Seal the current key to a member that lacks it.
    Grant {
        /// Compartment.
        compartment: CompartmentId,
        /// Epoch.
        epoch: u32,
        /// Rotation whose key to grant.
        rotation: EnvelopeId,
        /// Member.
        recipient: NodeId,
    },
}

impl Directory {
    /// Adds a directory envelope and its opened payload. Returns an error (and records it
    /// as a problem) when the payload is not a record of the envelope's kind; the envelope
    /// is still kept and relayed by the store.
    pub fn insert(&mut self, env: &Envelope, payload: &[u8]) -> Result<(), String> {
        let res = self.insert_inner(env, payload);
        if let Err(e) = &res {
            self.problems.insert(env.id(), e.clone());
        }
        res
    }

    fn insert_inner(&mut self, env: &Envelope, payload: &[u8]) -> Result<(), String> {
        let h = env.header();
        let record: Record = serde_json::from_slice(payload).map_err(|e| {
            format!(
                "directory envelope {} is not a record: {e}",
                env.id().short()
            )
        })?;
        if record.kind() != h.kind {
            return Err(format!(
                "directory envelope {} has kind {} but carries a {:?}",
                env.id().short(),
                h.kind.0,
                record.kind()
            ));
        }
        fn at<T>(env: &Envelope, item: T) -> Located<T> {
            Located {
                env: env.id(),
                author: env.header().author,
                item,
            }
        }
        match record {
            Record::Credential { credential } => {
                self.credentials.insert(env.id(), at(env, credential));
            }
            Record::Compartment { mut def } => {
                if def.policy.parse::<Policy>().is_err() {
                    return Err(format!(
                        "compartment {:?} has an unparsable policy",
                        def.name
                    ));
                }
                if !def.admins.contains(&h.author) {
                    def.admins.insert(0, h.author);
                }
                let id = def.id(&h.author);
                self.compartments.entry(id).or_insert_with(|| at(env, def));
            }
            Record::Rotation {
                compartment,
                epoch,
                revoked,
                reason,
            } => {
                if epoch == 0 {
                    return Err("rotation to epoch 0 (reserved for the open compartment)".into());
                }
                self.rotations.insert(
                    env.id(),
                    at(
                        env,
                        RotationRec {
                            compartment,
                            epoch,
                            revoked: revoked.into_iter().collect(),
                            reason,
                        },
                    ),
                );
            }
            Record::Grant {
                compartment,
                epoch,
                rotation,
                recipient,
                sealed,
            } => {
                self.grants.insert(
                    env.id(),
                    at(
                        env,
                        GrantRec {
                            compartment,
                            epoch,
                            rotation,
                            recipient,
                            sealed,
                        },
                    ),
                );
            }
        }
        Ok(())
    }

    /// Records that failed to parse or were signed by someone without the right.
    pub fn problems(&self) -> Vec<(EnvelopeId, String)> {
        let mut out: Vec<_> = self.problems.iter().map(|(k, v)| (*k, v.clone())).collect();
        for r in self.rotations.values() {
            if let Some(c) = self.compartments.get(&r.item.compartment)
                && !c.item.admins.contains(&r.author)
            {
                out.push((
                    r.env,
                    format!(
                        "rotation of {:?} signed by {}, who is not an admin: ignored",
                        c.item.name,
                        r.author.short()
                    ),
                ));
            }
        }
        for g in self.grants.values() {
            if let Some(c) = self.compartments.get(&g.item.compartment)
                && !c.item.admins.contains(&g.author)
            {
                out.push((
                    g.env,
                    format!(
                        "grant in {:?} signed by {}, who is not an admin: ignored",
                        c.item.name,
                        g.author.short()
                    ),
                ));
            }
        }
        out
    }

    /// Every compartment, by name then id.
    pub fn compartments(&self) -> Vec<CompartmentState> {
        let mut v: Vec<_> = self
            .compartments
            .keys()
            .filter_map(|id| self.state(id))
            .collect();
        v.sort_by(|a, b| a.def.name.cmp(&b.def.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Compartment ids with this name (several creators may pick one name).
    pub fn by_name(&self, name: &str) -> Vec<CompartmentId> {
        self.compartments
            .iter()
            .filter(|(_, c)| c.item.name == name)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The derived state of one compartment.
    pub fn state(&self, id: &CompartmentId) -> Option<CompartmentState> {
        let def = self.compartments.get(id)?;
        let admins = &def.item.admins;
        let mut epochs: Vec<EpochView> = self
            .rotations
            .values()
            .filter(|r| r.item.compartment == *id && admins.contains(&r.author))
            .map(|r| EpochView {
                rotation: r.env,
                epoch: r.item.epoch,
                by: r.author,
                revoked: r.item.revoked.iter().copied().collect(),
                reason: r.item.reason.clone(),
                granted: self
                    .grants
                    .values()
                    .filter(|g| {
                        g.item.rotation == r.env
                            && g.item.compartment == *id
                            && g.item.epoch == r.item.epoch
                            && admins.contains(&g.author)
                    })
                    .map(|g| g.item.recipient)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            })
            .collect();
        epochs.sort_by(|a, b| a.epoch.cmp(&b.epoch).then(a.rotation.cmp(&b.rotation)));
        let revoked: BTreeSet<NodeId> = epochs
            .iter()
            .flat_map(|e| e.revoked.iter().copied())
            .collect();
        Some(CompartmentState {
            id: *id,
            def: def.item.clone(),
            creator: def.author,
            epochs,
            revoked: revoked.into_iter().collect(),
        })
    }

    /// Published credentials, with the envelope that carried each.
    pub fn credentials(&self) -> impl Iterator<Item = (EnvelopeId, &Credential)> {
        self.credentials.values().map(|c| (c.env, &c.item))
    }

    /// Opens every grant addressed to `me` by an admin. Returns the keys by (compartment,
    /// epoch) with their rotation ids, and the grants that did not open, with why.
    #[allow(clippy::type_complexity)]
    pub fn open_grants(
        &self,
        me: &NodeKey,
    ) -> (
        BTreeMap<(CompartmentId, u32), Vec<(EnvelopeId, PayloadKey)>>,
        Vec<(EnvelopeId, String)>,
    ) {
        let mut keys: BTreeMap<(CompartmentId, u32), Vec<(EnvelopeId, PayloadKey)>> =
            BTreeMap::new();
        let mut bad = Vec::new();
        let my = me.node_id();
        for g in self.grants.values().filter(|g| g.item.recipient == my) {
            let gi = &g.item;
            let Some(c) = self.compartments.get(&gi.compartment) else {
                continue; // the definition has not arrived yet
            };
            if !c.item.admins.contains(&g.author) {
                continue; // reported by problems()
            }
            let ctx = grant_context(&gi.compartment, gi.epoch, &gi.rotation, &my);
            let opened = hex::decode(&gi.sealed)
                .map_err(|_| "grant is not hex".to_owned())
                .and_then(|b| me.open_sealed(&ctx, &b).map_err(|e| e.to_string()))
                .and_then(|k| {
                    <[u8; 32]>::try_from(k.as_slice())
                        .map_err(|_| "grant key is not 32 bytes".to_owned())
                });
            match opened {
                Ok(k) => {
                    let v = keys.entry((gi.compartment, gi.epoch)).or_default();
                    if !v.iter().any(|(r, _)| *r == gi.rotation) {
                        v.push((gi.rotation, PayloadKey::from_bytes(k)));
                        v.sort_by_key(|(r, _)| *r);
                    }
                }
                Err(e) => bad.push((
                    g.env,
                    format!(
                        "grant {} of {:?} epoch {} for this node, from {}: {e}",
                        g.env.short(),
                        c.item.name,
                        gi.epoch,
                        g.author.short()
                    ),
                )),
            }
        }
        (keys, bad)
    }

    /// Subjects whose credentials, verified at `now_ms` against `trust`, satisfy the
    /// compartment's policy; and the credentials that failed, with why.
    pub fn qualifying(
        &self,
        state: &CompartmentState,
        now_ms: u64,
        trust: &[TrustedAuthority],
    ) -> (BTreeSet<NodeId>, Vec<(EnvelopeId, String)>) {
        let Ok(policy) = state.def.policy.parse::<Policy>() else {
            return (BTreeSet::new(), Vec::new());
        };
        let mut ok = BTreeSet::new();
        let mut rejected = Vec::new();
        for c in self.credentials.values() {
            match c.item.verify_trusted(now_ms, trust) {
                Ok(()) if policy.allows(&c.item.credential.attributes) => {
                    ok.insert(c.item.credential.subject);
                }
                Ok(()) => {}
                Err(e) => rejected.push((c.env, e.to_string())),
            }
        }
        (ok, rejected)
    }

    /// What `me`, an admin, should do for compartment `id` now.
    pub fn plan(
        &self,
        id: &CompartmentId,
        me: &NodeId,
        now_ms: u64,
        trust: &[TrustedAuthority],
        held: &BTreeSet<EnvelopeId>,
    ) -> Vec<AdminAction> {
        let Some(state) = self.state(id) else {
            return Vec::new();
        };
        if !state.is_admin(me) {
            return Vec::new();
        }
        let Some(cur) = state.current() else {
            return vec![AdminAction::Rotate {
                compartment: *id,
                epoch: 1,
                revoked: Vec::new(),
                reason: "first epoch".into(),
            }];
        };
        if state.revoked.iter().any(|r| !cur.revoked.contains(r)) {
            return vec![AdminAction::Rotate {
                compartment: *id,
                epoch: cur.epoch + 1,
                revoked: state.revoked.clone(),
                reason: "merge revocations of concurrent rotations".into(),
            }];
        }
        if !held.contains(&cur.rotation) {
            return Vec::new(); // another admin holds this key and will grant it
        }
        let (mut members, _) = self.qualifying(&state, now_ms, trust);
        members.extend(state.def.admins.iter().copied());
        members
            .into_iter()
            .filter(|m| !state.revoked.contains(m) && !cur.granted.contains(m))
            .map(|m| AdminAction::Grant {
                compartment: *id,
                epoch: cur.epoch,
                rotation: cur.rotation,
                recipient: m,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::parse_date;

    struct World {
        now: u64,
        hlc: u64,
        envs: Vec<Envelope>,
    }

    impl World {
        fn new() -> World {
            World {
                now: parse_date("2026-12-01").unwrap(),
                hlc: 1,
                envs: Vec::new(),
            }
        }
        fn put(&mut self, key: &NodeKey, r: Record) -> Envelope {
            self.hlc += 1;
            let e = seal_record(key, &r, Hlc(self.hlc << 16)).unwrap();
            self.envs.push(e.clone());
            e
        }
        fn dir(&self, order: &[usize]) -> Directory {
            let mut d = Directory::default();
            for &i in order {
                let e = &self.envs[i];
                let p = crate::open_envelope(e, &PayloadKey::open_compartment()).unwrap();
                d.insert(e, &p).unwrap();
            }
            d
        }
        fn all(&self) -> Directory {
            self.dir(&(0..self.envs.len()).collect::<Vec<_>>())
        }
        fn credential(&mut self, auth: &NodeKey, subject: &NodeKey, nation: &str, clearance: &str) {
            let attrs = BTreeMap::from([
                ("nation".to_string(), nation.to_string()),
                ("clearance".to_string(), clearance.to_string()),
            ]);
            let c = Credential::issue(
                auth,
                "AUTH",
                subject.node_id(),
                attrs,
                self.now,
                self.now + 86_400_000 * 100,
            )
            .unwrap();
            self.put(subject, Record::Credential { credential: c });
        }
        /// Carries out an admin's plan as the node would.
        fn act(
            &mut self,
            admin: &NodeKey,
            id: &CompartmentId,
            trust: &[TrustedAuthority],
            keys: &mut BTreeMap<EnvelopeId, PayloadKey>,
        ) -> usize {
            let held: BTreeSet<_> = keys.keys().copied().collect();
            let plan = self
                .all()
                .plan(id, &admin.node_id(), self.now, trust, &held);
            for a in &plan {
                match a {
                    AdminAction::Rotate {
                        compartment,
                        epoch,
                        revoked,
                        reason,
                    } => {
                        let r = self.put(
                            admin,
                            Record::Rotation {
                                compartment: *compartment,
                                epoch: *epoch,
                                revoked: revoked.clone(),
                                reason: reason.clone(),
                            },
                        );
                        keys.insert(r.id(), PayloadKey::generate().unwrap());
                    }
                    AdminAction::Grant {
                        compartment,
                        epoch,
                        rotation,
                        recipient,
                    } => {
                        let sealed =
                            seal_grant(compartment, *epoch, rotation, recipient, &keys[rotation])
                                .unwrap();
                        self.put(
                            admin,
                            Record::Grant {
                                compartment: *compartment,
                                epoch: *epoch,
                                rotation: *rotation,
                                recipient: *recipient,
                                sealed,
                            },
                        );
                    }
                }
            }
            plan.len()
        }
    }

    fn keys_of(d: &Directory, k: &NodeKey) -> BTreeSet<(u32, [u8; 32])> {
        d.open_grants(k)
            .0
            .into_iter()
            .flat_map(|((_, e), v)| v.into_iter().map(move |(_, k)| (e, *k.as_bytes())))
            .collect()
    }

    #[test]
    fn grant_revoke_and_order_independence() {
        let (auth, usa, jpn, gbr) = (
            NodeKey::from_seed([1; 32]),
            NodeKey::from_seed([2; 32]),
            NodeKey::from_seed([3; 32]),
            NodeKey::from_seed([4; 32]),
        );
        let trust = [TrustedAuthority {
            name: "AUTH".into(),
            id: auth.node_id(),
            scope: BTreeMap::new(),
        }];
        let mut w = World::new();
        let def = CompartmentDef {
            name: "BILAT".into(),
            policy: "nation in [USA, JPN] and clearance >= SECRET".into(),
            admins: vec![],
            nonce: "n1".into(),
        };
        let id = def.id(&usa.node_id());
        w.put(&usa, Record::Compartment { def });
        w.credential(&auth, &usa, "USA", "SECRET");
        w.credential(&auth, &jpn, "JPN", "TOP_SECRET");
        w.credential(&auth, &gbr, "GBR", "TOP_SECRET");
        let mut keys = BTreeMap::new();
        assert_eq!(w.act(&usa, &id, &trust, &mut keys), 1, "first epoch");
        assert_eq!(
            w.act(&usa, &id, &trust, &mut keys),
            2,
            "grants to the admin and JPN"
        );
        assert_eq!(w.act(&usa, &id, &trust, &mut keys), 0, "nothing left to do");
        assert_eq!(w.act(&jpn, &id, &trust, &mut keys), 0, "not an admin");
        let d = w.all();
        assert_eq!(keys_of(&d, &jpn), keys_of(&d, &usa));
        assert_eq!(keys_of(&d, &jpn).len(), 1);
        assert!(keys_of(&d, &gbr).is_empty());

        // Revoke JPN: epoch 2, granted to USA only.
        let cur = d.state(&id).unwrap().current().unwrap().clone();
        w.put(
            &usa,
            Record::Rotation {
                compartment: id,
                epoch: cur.epoch + 1,
                revoked: vec![jpn.node_id()],
                reason: "revoked".into(),
            },
        );
        let rot = w.envs.last().unwrap().id();
        keys.insert(rot, PayloadKey::generate().unwrap());
        assert_eq!(w.act(&usa, &id, &trust, &mut keys), 1);
        let d = w.all();
        assert_eq!(keys_of(&d, &usa).len(), 2);
        assert_eq!(keys_of(&d, &jpn).len(), 1, "JPN keeps epoch 1 only");
        let st = d.state(&id).unwrap();
        assert_eq!(st.current().unwrap().epoch, 2);
        assert_eq!(st.revoked, vec![jpn.node_id()]);

        // Any arrival order gives the same state and keys.
        let n = w.envs.len();
        let mut order: Vec<usize> = (0..n).rev().collect();
        for round in 0..8 {
            order.rotate_left(round % n);
            order.swap(0, (round * 7) % n);
            let d2 = w.dir(&order);
            let (a, b) = (d2.state(&id).unwrap(), st.clone());
            assert_eq!(a.epochs, b.epochs);
            assert_eq!(keys_of(&d2, &usa), keys_of(&d, &usa));
        }
    }

    #[test]
    fn concurrent_rotations_resolve_and_merge_revocations() {
        let (auth, a1, a2, m1, m2) = (
            NodeKey::from_seed([1; 32]),
            NodeKey::from_seed([2; 32]),
            NodeKey::from_seed([3; 32]),
            NodeKey::from_seed([4; 32]),
            NodeKey::from_seed([5; 32]),
        );
        let trust = [TrustedAuthority {
            name: "AUTH".into(),
            id: auth.node_id(),
            scope: BTreeMap::new(),
        }];
        let mut w = World::new();
        let def = CompartmentDef {
            name: "C".into(),
            policy: "clearance >= CUI".into(),
            admins: vec![a1.node_id(), a2.node_id()],
            nonce: "x".into(),
        };
        let id = def.id(&a1.node_id());
        w.put(&a1, Record::Compartment { def });
        for k in [&m1, &m2] {
            w.credential(&auth, k, "USA", "SECRET");
        }
        let mut k1 = BTreeMap::new();
        w.act(&a1, &id, &trust, &mut k1);
        w.act(&a1, &id, &trust, &mut k1);
        // Both admins rotate to epoch 2 on either side of a partition, revoking different nodes.
        let r1 = w.put(
            &a1,
            Record::Rotation {
                compartment: id,
                epoch: 2,
                revoked: vec![m1.node_id()],
                reason: "a1".into(),
            },
        );
        let r2 = w.put(
            &a2,
            Record::Rotation {
                compartment: id,
                epoch: 2,
                revoked: vec![m2.node_id()],
                reason: "a2".into(),
            },
        );
        let mut k2 = BTreeMap::new();
        k1.insert(r1.id(), PayloadKey::generate().unwrap());
        k2.insert(r2.id(), PayloadKey::generate().unwrap());
        let st = w.all().state(&id).unwrap();
        assert_eq!(
            st.current().unwrap().rotation,
            r1.id().min(r2.id()),
            "smallest id wins"
        );
        assert_eq!(st.revoked.len(), 2);
        // Both admins, whichever wins, plan the same merge rotation.
        let plan1 = w.all().plan(
            &id,
            &a1.node_id(),
            w.now,
            &trust,
            &k1.keys().copied().collect(),
        );
        let plan2 = w.all().plan(
            &id,
            &a2.node_id(),
            w.now,
            &trust,
            &k2.keys().copied().collect(),
        );
        assert_eq!(plan1, plan2);
        assert!(
            matches!(&plan1[..], [AdminAction::Rotate { epoch: 3, revoked, .. }] if revoked.len() == 2)
        );
        w.act(&a2, &id, &trust, &mut k2);
        w.act(&a2, &id, &trust, &mut k2);
        let d = w.all();
        let cur = d.state(&id).unwrap().current().unwrap().clone();
        assert_eq!(cur.epoch, 3);
        assert_eq!(
            cur.granted.len(),
            2,
            "both admins, neither revoked member: {cur:?}"
        );
        assert!(keys_of(&d, &m1).iter().all(|(e, _)| *e == 1));
        assert!(keys_of(&d, &m2).iter().all(|(e, _)| *e == 1));
    }

    #[test]
    fn non_admins_and_misdirected_grants_are_refused() {
        let (admin, member, other, intruder) = (
            NodeKey::from_seed([2; 32]),
            NodeKey::from_seed([3; 32]),
            NodeKey::from_seed([4; 32]),
            NodeKey::from_seed([5; 32]),
        );
        let mut w = World::new();
        let def = CompartmentDef {
            name: "C".into(),
            policy: "role == medic".into(),
            admins: vec![],
            nonce: "x".into(),
        };
        let id = def.id(&admin.node_id());
        w.put(&admin, Record::Compartment { def });
        let rot = w.put(
            &admin,
            Record::Rotation {
                compartment: id,
                epoch: 1,
                revoked: vec![],
                reason: "first".into(),
            },
        );
        let key = PayloadKey::generate().unwrap();
        // Addressed to `member` but sealed to `other`'s key.
        let sealed = seal_grant(&id, 1, &rot.id(), &other.node_id(), &key).unwrap();
        let g = w.put(
            &admin,
            Record::Grant {
                compartment: id,
                epoch: 1,
                rotation: rot.id(),
                recipient: member.node_id(),
                sealed,
            },
        );
        // A rotation by a non-admin.
        let bad = w.put(
            &intruder,
            Record::Rotation {
                compartment: id,
                epoch: 9,
                revoked: vec![admin.node_id()],
                reason: "coup".into(),
            },
        );
        let d = w.all();
        let (keys, rejected) = d.open_grants(&member);
        assert!(keys.is_empty());
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, g.id());
        assert!(
            rejected[0].1.contains("sealed to another key"),
            "{}",
            rejected[0].1
        );
        let st = d.state(&id).unwrap();
        assert_eq!(
            st.current().unwrap().epoch,
            1,
            "the intruder's epoch 9 is ignored"
        );
        assert!(st.revoked.is_empty());
        assert!(
            d.problems()
                .iter()
                .any(|(e, why)| *e == bad.id() && why.contains("not an admin"))
        );
        // Garbage payloads are refused with a reason and recorded.
        let mut d = d;
        let e = d.insert(&rot, b"not json").unwrap_err();
        assert!(e.contains("not a record"), "{e}");
    }
}
