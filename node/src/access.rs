//! Compartments on a node: the directory it holds, the keys granted to it, the authorities
//! it trusts, admin duties (rotations and grants), and the audit trail of all of it.

use crate::node::{Node, lock, now_ms};
use crate::ops::NodeError;
use fieldmesh_core::{CompartmentId, Envelope, EnvelopeId, NodeId};
use fieldmesh_crypto::access::{AdminAction, seal_grant, seal_record};
use fieldmesh_crypto::{
    CompartmentDef, Credential, Directory, PayloadKey, Policy, Record, TrustedAuthority,
    directory_channel, open_envelope,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Keyring = BTreeMap<(CompartmentId, u32), Vec<(EnvelopeId, PayloadKey)>>;

/// What the node knows about compartments.
#[derive(Default)]
pub struct Access {
    pub dir: Directory,
    keys: Keyring,
    bad_grants: BTreeMap<EnvelopeId, String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Keys that may open an envelope of `compartment` sealed at `epoch`.
    pub fn keys_for(&self, compartment: &CompartmentId, epoch: u32) -> Vec<PayloadKey> {
        self.keys
            .get(&(*compartment, epoch))
            .map(|v| v.iter().map(|(_, k)| k.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether this node holds any key of the compartment.
    pub fn may_read(&self, compartment: &CompartmentId) -> bool {
        self.keys.keys().any(|(c, _)| c == compartment)
    }

    fn held_rotations(&self, compartment: &CompartmentId) -> BTreeSet<EnvelopeId> {
        self.keys
            .iter()
            .filter(|((c, _), _)| c == compartment)
            .flat_map(|(_, v)| v.iter().map(|(r, _)| *r))
            .collect()
    }

    fn key_of_rotation(&self, rotation: &EnvelopeId) -> Option<PayloadKey> {
        self.keys
            .values()
            .flat_map(|v| v.iter())
            .find(|(r, _)| r == rotation)
            .map(|(_, k)| k.clone())
    }

    /// The epoch and key new envelopes of `compartment` are sealed under.
    pub fn sealing_key(&self, compartment: &CompartmentId) -> Result<(u32, PayloadKey), NodeError> {
        let state = self.dir.state(compartment).ok_or_else(|| {
            NodeError::Forbidden(format!(
                "compartment {} is not known to this node",
                compartment.short()
            ))
        })?;
        let Some(cur) = state.current() else {
            return Err(NodeError::Forbidden(format!(
                "compartment {:?} has no key epoch yet",
                state.def.name
            )));
        };
        self.key_of_rotation(&cur.rotation)
            .map(|k| (cur.epoch, k))
            .ok_or_else(|| {
                NodeError::Forbidden(format!(
                    "this node holds no key for epoch {} of compartment {:?}: not granted, or revoked",
                    cur.epoch, state.def.name
                ))
            })
    }
}

/// The authorities a node trusts: `HOME/trust.json`.
pub fn load_trust(home: Option<&Path>) -> Result<Vec<TrustedAuthority>, NodeError> {
    let Some(home) = home else {
        return Ok(Vec::new());
    };
    let path = home.join("trust.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| NodeError::Internal(format!("{} is malformed: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(NodeError::Internal(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// Requests the CLI sends to the node (directly, or through the daemon's API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessRequest {
    ImportCredential {
        credential: Credential,
    },
    CreateCompartment {
        name: String,
        policy: String,
        admins: Vec<NodeId>,
    },
    Revoke {
        compartment: String,
        node: NodeId,
    },
    Compartments,
    Credentials,
}

impl Node {
    /// Loads the directory from the store and opens the grants addressed to this node.
    pub(crate) fn load_directory(&self) -> Result<(), NodeError> {
        let envs = self.store.channel_envelopes(&directory_channel())?;
        self.absorb_directory(&envs);
        Ok(())
    }

    /// Adds directory envelopes; reopens grants. Returns whether this node's keys changed.
    pub(crate) fn absorb_directory(&self, envs: &[Envelope]) -> bool {
        let open = PayloadKey::open_compartment();
        let mut access = lock(&self.access);
        for env in envs {
            let res = open_envelope(env, &open)
                .map_err(|e| e.to_string())
                .and_then(|p| access.dir.insert(env, &p));
            if let Err(e) = res {
                tracing::warn!(envelope = %env.id(), %e, "directory record refused");
                self.audit(json!({"event": "record_refused", "envelope": env.id(), "author": env.header().author, "reason": e}), false);
            }
        }
        let (keys, bad) = access.dir.open_grants(&self.key);
        let mut changed = false;
        for ((c, epoch), v) in &keys {
            for (rot, _) in v {
                let known = access
                    .keys
                    .get(&(*c, *epoch))
                    .is_some_and(|o| o.iter().any(|(r, _)| r == rot));
                if !known {
                    changed = true;
                    self.audit(json!({"event": "key_received", "compartment": c, "epoch": epoch, "rotation": rot}), true);
                }
            }
        }
        for (g, why) in bad {
            if let std::collections::btree_map::Entry::Vacant(slot) = access.bad_grants.entry(g) {
                tracing::warn!(grant = %g, %why, "key grant refused");
                self.audit(
                    json!({"event": "grant_refused", "grant": g, "reason": why}),
                    true,
                );
                slot.insert(why);
            }
        }
        let key_ids =
            |k: &BTreeMap<_, Vec<(EnvelopeId, _)>>| -> BTreeSet<(CompartmentId, u32, EnvelopeId)> {
                k.iter()
                    .flat_map(|((c, e), v)| v.iter().map(move |(r, _)| (*c, *e, *r)))
                    .collect()
            };
        if key_ids(&access.keys) != key_ids(&keys) {
            // Keys came or went: what counts as carried for others is read again.
            self.keys_generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        access.keys = keys;
        changed
    }

    /// Writes one audit event if the node has a log; failure to audit is logged loudly.
    pub(crate) fn audit(&self, event: serde_json::Value, durable: bool) {
        if let Some(log) = &self.audit
            && let Err(e) = log.append(&self.key, event, durable)
        {
            tracing::error!(%e, "could not write the audit log");
        }
    }

    fn trust(&self) -> Result<Vec<TrustedAuthority>, NodeError> {
        load_trust(self.home.as_deref())
    }

    /// Seals, stores durably and announces directory records, then absorbs them.
    fn publish(&self, records: &[Record]) -> Result<Vec<Envelope>, NodeError> {
        let mut envs = Vec::with_capacity(records.len());
        for r in records {
            let hlc = lock(&self.clock).tick(now_ms());
            envs.push(
                seal_record(&self.key, r, hlc).map_err(|e| NodeError::Internal(e.to_string()))?,
            );
        }
        self.store_directory(&envs)?;
        Ok(envs)
    }

    /// Stores directory envelopes in one durable write, announces them, and takes them in.
    fn store_directory(&self, envs: &[Envelope]) -> Result<(), NodeError> {
        self.store.put_batch(envs)?;
        for e in envs {
            self.announce(e);
        }
        if self.absorb_directory(envs) {
            lock(&self.channels).clear();
        }
        Ok(())
    }

    /// Does what this node must as admin of its compartments: rotate where revocations
    /// need merging, and grant the current key to every qualifying member that lacks it.
    /// Serialised, and re-planned after every step, so concurrent triggers never double up.
    pub fn run_duties(&self) -> Result<usize, NodeError> {
        let _one = lock(&self.duty_lock);
        let trust = self.trust()?;
        let me = self.node_id();
        let mut done = 0;
        let ids: Vec<CompartmentId> = lock(&self.access)
            .dir
            .compartments()
            .iter()
            .filter(|s| s.is_admin(&me))
            .map(|s| s.id)
            .collect();
        for id in ids {
            for _ in 0..4 {
                let plan = {
                    let a = lock(&self.access);
                    a.dir
                        .plan(&id, &me, now_ms(), &trust, &a.held_rotations(&id))
                };
                if plan.is_empty() {
                    break;
                }
                for action in plan {
                    match action {
                        AdminAction::Rotate {
                            compartment,
                            epoch,
                            revoked,
                            reason,
                        } => {
                            self.rotate(compartment, epoch, revoked, &reason)?;
                        }
                        AdminAction::Grant {
                            compartment,
                            epoch,
                            rotation,
                            recipient,
                        } => {
                            let key =
                                lock(&self.access)
                                    .key_of_rotation(&rotation)
                                    .ok_or_else(|| {
                                        NodeError::Internal(
                                            "planned a grant of a key not held".into(),
                                        )
                                    })?;
                            // One member whose grant cannot be sealed (a credential
                            // naming a key that is not a valid point) must not stop the
                            // grants to everyone else, revocations' new keys included.
                            let sealed = match seal_grant(
                                &compartment,
                                epoch,
                                &rotation,
                                &recipient,
                                &key,
                            ) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::warn!(%compartment, %recipient, %e, "cannot seal a grant for this member; granting the others");
                                    continue;
                                }
                            };
                            self.publish(&[Record::Grant {
                                compartment,
                                epoch,
                                rotation,
                                recipient,
                                sealed,
                            }])?;
                            self.audit(json!({"event": "grant_issued", "compartment": compartment, "epoch": epoch, "recipient": recipient}), true);
                        }
                    }
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    /// A new epoch: the rotation and the admin's own grant of its fresh key, in one write.
    fn rotate(
        &self,
        compartment: CompartmentId,
        epoch: u32,
        revoked: Vec<NodeId>,
        reason: &str,
    ) -> Result<(), NodeError> {
        let key = PayloadKey::generate().map_err(|e| NodeError::Internal(e.to_string()))?;
        let hlc = lock(&self.clock).tick(now_ms());
        let rec = Record::Rotation {
            compartment,
            epoch,
            revoked: revoked.clone(),
            reason: reason.to_owned(),
        };
        let rot =
            seal_record(&self.key, &rec, hlc).map_err(|e| NodeError::Internal(e.to_string()))?;
        let me = self.node_id();
        let sealed = seal_grant(&compartment, epoch, &rot.id(), &me, &key)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let hlc = lock(&self.clock).tick(now_ms());
        let grant = seal_record(
            &self.key,
            &Record::Grant {
                compartment,
                epoch,
                rotation: rot.id(),
                recipient: me,
                sealed,
            },
            hlc,
        )
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        let envs = [rot, grant];
        self.store_directory(&envs)?;
        self.audit(json!({"event": "rotated", "compartment": compartment, "epoch": epoch, "revoked": revoked, "reason": reason}), true);
        Ok(())
    }

    /// Runs duties now (no daemon), or wakes the daemon's duty thread.
    pub(crate) fn schedule_duties(&self) {
        match self.duty_tx.get() {
            Some(tx) => {
                // Full means a wake-up is already pending: that run will see this change.
                let _ = tx.try_send(());
            }
            None => {
                if let Err(e) = self.run_duties() {
                    tracing::warn!(%e, "admin duties failed");
                }
            }
        }
    }

    /// Starts the daemon's duty thread: directory changes from the network wake it, and
    /// every [`crate::relay::RETENTION_SWEEP`] it removes what it carries for others past the
    /// profile's retention.
    pub fn start_duty_thread(self: &std::sync::Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        if self.duty_tx.set(tx).is_err() {
            return;
        }
        let node = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("admin-duties".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                let mut next_sweep = std::time::Instant::now();
                loop {
                    let wait = next_sweep.saturating_duration_since(std::time::Instant::now());
                    let woken = match rx.recv_timeout(wait) {
                        Ok(()) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    while rx.try_recv().is_ok() {}
                    let Some(n) = node.upgrade() else { break };
                    if woken && let Err(e) = n.run_duties() {
                        tracing::warn!(%e, "admin duties failed");
                    }
                    if std::time::Instant::now() >= next_sweep {
                        if let Err(e) = n.age_out_relayed() {
                            tracing::warn!(%e, "retention sweep failed; next one retries");
                        }
                        next_sweep = std::time::Instant::now() + crate::relay::RETENTION_SWEEP;
                    }
                }
            })
            .expect("spawn the admin duty thread");
        let _ = self.duty_tx.get().map(|t| t.try_send(()));
    }

    /// Resolves a compartment by name or id.
    pub(crate) fn compartment(&self, spec: &str) -> Result<CompartmentId, NodeError> {
        let a = lock(&self.access);
        if let Ok(id) = spec.parse::<CompartmentId>() {
            return a
                .dir
                .state(&id)
                .map(|s| s.id)
                .ok_or_else(|| NodeError::NotFound(format!("unknown compartment {spec}")));
        }
        match a.dir.by_name(spec).as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::NotFound(format!(
                "unknown compartment {spec:?} (see `fieldmesh compartment list`)"
            ))),
            many => Err(NodeError::Conflict(format!(
                "{} compartments are named {spec:?}; use the id: {}",
                many.len(),
                many.iter()
                    .map(|c| c.to_hex())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub(crate) fn access_op(&self, req: &AccessRequest) -> Result<serde_json::Value, NodeError> {
        match req {
            AccessRequest::ImportCredential { credential } => self.import_credential(credential),
            AccessRequest::CreateCompartment {
                name,
                policy,
                admins,
            } => self.create_compartment(name, policy, admins),
            AccessRequest::Revoke { compartment, node } => self.revoke(compartment, node),
            AccessRequest::Compartments => self.list_compartments(),
            AccessRequest::Credentials => self.list_credentials(),
        }
    }

    fn import_credential(&self, c: &Credential) -> Result<serde_json::Value, NodeError> {
        let now = now_ms();
        if let Err(e) = c.verify(now) {
            self.audit(json!({"event": "credential_refused", "subject": c.credential.subject, "authority": c.credential.authority, "reason": e.to_string()}), true);
            return Err(NodeError::BadRequest(e.to_string()));
        }
        let present = lock(&self.access)
            .dir
            .credentials()
            .any(|(_, have)| have == c);
        let warning = c
            .verify_trusted(now, &self.trust()?)
            .err()
            .map(|e| e.to_string());
        if !present {
            self.publish(&[Record::Credential {
                credential: c.clone(),
            }])?;
            self.audit(json!({"event": "credential_imported", "subject": c.credential.subject, "authority": c.credential.authority, "attributes": c.credential.attributes}), true);
            self.schedule_duties();
        }
        Ok(json!({
            "subject": c.credential.subject,
            "authority": c.credential.authority_name,
            "expires": fieldmesh_crypto::credential::format_date(c.credential.expires_ms),
            "already_present": present,
            "warning": warning,
        }))
    }

    fn create_compartment(
        &self,
        name: &str,
        policy: &str,
        admins: &[NodeId],
    ) -> Result<serde_json::Value, NodeError> {
        let parsed: Policy =
            policy
                .parse()
                .map_err(|e: fieldmesh_crypto::policy::PolicyError| {
                    NodeError::BadRequest(e.to_string())
                })?;
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(NodeError::BadRequest(
                "compartment name must be 1-64 printable characters".into(),
            ));
        }
        if !lock(&self.access).dir.by_name(name).is_empty() {
            return Err(NodeError::Conflict(format!(
                "a compartment named {name:?} already exists"
            )));
        }
        let nonce = fieldmesh_crypto::random_bytes::<16>()
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let mut all_admins = vec![self.node_id()];
        all_admins.extend(admins.iter().filter(|a| **a != self.node_id()));
        let def = CompartmentDef {
            name: name.to_owned(),
            policy: parsed.to_string(),
            admins: all_admins,
            nonce: hex::encode(nonce),
        };
        let id = def.id(&self.node_id());
        self.publish(&[Record::Compartment { def: def.clone() }])?;
        self.audit(json!({"event": "compartment_created", "compartment": id, "name": name, "policy": def.policy, "admins": def.admins}), true);
        self.run_duties()?;
        Ok(json!({"id": id, "name": name, "policy": def.policy}))
    }

    fn revoke(&self, spec: &str, node: &NodeId) -> Result<serde_json::Value, NodeError> {
        let id = self.compartment(spec)?;
        let state = lock(&self.access)
            .dir
            .state(&id)
            .ok_or_else(|| NodeError::NotFound(spec.to_owned()))?;
        if !state.is_admin(&self.node_id()) {
            self.audit(
                json!({"event": "denied", "op": "revoke", "compartment": id, "node": node}),
                true,
            );
            return Err(NodeError::Forbidden(format!(
                "only an admin of {:?} may revoke (admins: {})",
                state.def.name,
                state
                    .def
                    .admins
                    .iter()
                    .map(|a| a.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if state.def.admins.contains(node) {
            return Err(NodeError::BadRequest(
                "an admin cannot be revoked from its own compartment".into(),
            ));
        }
        let epoch = state.current().map_or(1, |c| c.epoch + 1);
        let mut revoked: BTreeSet<NodeId> = state.revoked.iter().copied().collect();
        revoked.insert(*node);
        let _one = lock(&self.duty_lock);
        self.rotate(
            id,
            epoch,
            revoked.into_iter().collect(),
            &format!("revoke {}", node.short()),
        )?;
        drop(_one);
        self.audit(
            json!({"event": "revoked", "compartment": id, "node": node, "epoch": epoch}),
            true,
        );
        self.run_duties()?;
        Ok(json!({"compartment": id, "revoked": node, "epoch": epoch}))
    }

    fn list_compartments(&self) -> Result<serde_json::Value, NodeError> {
        let mut stored: BTreeMap<CompartmentId, (u64, u64)> = BTreeMap::new();
        for id in self.store.ids()? {
            if let Some(e) = self.store.get(&id)? {
                let s = stored.entry(e.header().compartment).or_default();
                s.0 += 1;
                s.1 += e.encoded_len() as u64;
            }
        }
        let a = lock(&self.access);
        let me = self.node_id();
        let problems = a.dir.problems();
        let out: Vec<_> = a
            .dir
            .compartments()
            .into_iter()
            .map(|s| {
                let cur = s.current();
                let held: Vec<u32> = a
                    .keys
                    .keys()
                    .filter(|(c, _)| *c == s.id)
                    .map(|(_, e)| *e)
                    .collect();
                let (env_count, env_bytes) = stored.get(&s.id).copied().unwrap_or_default();
                json!({
                    "id": s.id,
                    "name": s.def.name,
                    "policy": s.def.policy,
                    "creator": s.creator,
                    "admins": s.def.admins,
                    "admin": s.is_admin(&me),
                    "epoch": cur.map(|c| c.epoch),
                    "members": cur.map(|c| c.granted.clone()).unwrap_or_default(),
                    "revoked": s.revoked,
                    "epochs_held": held,
                    "can_write": cur.is_some_and(|c| a.key_of_rotation(&c.rotation).is_some()),
                    "can_read": !held.is_empty(),
                    "stored_envelopes": env_count,
                    "stored_bytes": env_bytes,
                })
            })
            .collect();
        Ok(json!({
            "compartments": out,
            "refused_grants": a.bad_grants.iter().map(|(g, why)| json!({"grant": g, "reason": why})).collect::<Vec<_>>(),
            "problems": problems.iter().map(|(e, why)| json!({"envelope": e, "reason": why})).collect::<Vec<_>>(),
        }))
    }

    fn list_credentials(&self) -> Result<serde_json::Value, NodeError> {
        let trust = self.trust()?;
        let now = now_ms();
        let a = lock(&self.access);
        let out: Vec<_> = a
            .dir
            .credentials()
            .map(|(env, c)| {
                let b = &c.credential;
                json!({
                    "envelope": env,
                    "subject": b.subject,
                    "authority": b.authority,
                    "authority_name": b.authority_name,
                    "attributes": b.attributes,
                    "expires": fieldmesh_crypto::credential::format_date(b.expires_ms),
                    "valid": c.verify_trusted(now, &trust).err().map_or_else(|| json!(true), |e| json!(e.to_string())),
                })
            })
            .collect();
        Ok(json!(out))
    }
}
