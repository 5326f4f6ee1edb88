//! The channel schema and the rules every change must follow.
//!
//! ```text
//! ROOT
//! ├── meta: { name, creator, created, schema }            genesis only
//! └── messages: { <message id>: Message }
//!     Message: { author, text, ts, precedence, reply_to?, edited_ts?, redacted?,
//!                reactions: { "<reactor prefix>:<emoji>": true },
//!                ai?: "<JSON: what produced this message, from which sources>",
//!                reviews: { "<reviewer prefix>": "approved" | "rejected[: note]" },
//!                attachments: [ { hash, name, size, mime } ] }
//! ```
//!
//! [`validate`] is a pure function of a change and of the objects created in its causal
//! past (objects never move in Automerge), so every replica reaches the same verdict.

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{ObjType, ScalarValue};
use fieldmesh_core::{ChannelId, Hlc, Kind, NodeId, sha256};
use std::collections::HashMap;

/// Schema version written into `meta.schema`.
pub const SCHEMA_VERSION: u64 = 1;
/// Longest reaction (emoji or short word) in bytes.
pub const MAX_REACTION_BYTES: usize = 32;
/// Longest attachment name or MIME type in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest machine annotation (`ai`: provenance and structured content) in bytes.
pub const MAX_AI_BYTES: usize = 32 * 1024;
/// Longest review verdict (`approved`, or `rejected: <note>`) in bytes.
pub const MAX_REVIEW_BYTES: usize = 512;

/// Whether a review value is well formed: `approved`, `rejected`, or `rejected: note`.
pub fn is_review(v: &str) -> bool {
    v.len() <= MAX_REVIEW_BYTES
        && !v.chars().any(char::is_control)
        && (v == "approved" || v == "rejected" || v.starts_with("rejected: "))
}

/// An Automerge object, by the id of the op that made it: (counter, actor bytes).
pub(crate) type ObjKey = (u64, Vec<u8>);

/// What an object is in the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Meta,
    Messages,
    Message { author: NodeId, id: String },
    Reactions { message: String },
    Reviews { message: String },
    Attachments { author: NodeId, message: String },
    Attachment { author: NodeId, message: String },
}

/// What the genesis said about the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisInfo {
    /// Channel name.
    pub name: String,
    /// Creator's node id.
    pub creator: NodeId,
    /// Creation time.
    pub created: Hlc,
}

/// Objects and sequence numbers seen so far in one channel.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    pub(crate) roles: HashMap<ObjKey, Role>,
    pub(crate) messages: HashMap<String, NodeId>,
    pub(crate) last_seq: HashMap<NodeId, u64>,
    /// Per author: the highest operation counter of its changes applied so far.
    pub(crate) last_op: HashMap<NodeId, u64>,
    pub(crate) genesis: Option<GenesisInfo>,
    /// The `messages` map, once the genesis is in.
    pub(crate) messages_obj: Option<ObjKey>,
}

/// What a valid change adds to the registry.
#[derive(Debug)]
pub(crate) struct Validated {
    roles: Vec<(ObjKey, Role)>,
    messages: Vec<(String, NodeId)>,
    genesis: Option<GenesisInfo>,
    author: NodeId,
    seq: u64,
    max_op: u64,
    /// Messages whose view this change alters.
    pub(crate) touched: Vec<String>,
}

impl Validated {
    /// The objects the change makes.
    pub(crate) fn made(&self) -> impl Iterator<Item = &ObjKey> {
        self.roles.iter().map(|(k, _)| k)
    }
}

impl Registry {
    pub(crate) fn commit(&mut self, v: Validated) -> Vec<String> {
        if let Some((k, _)) = v.roles.iter().find(|(_, r)| *r == Role::Messages) {
            self.messages_obj = Some(k.clone());
        }
        self.roles.extend(v.roles);
        self.messages.extend(v.messages);
        self.last_seq.insert(v.author, v.seq);
        self.last_op.insert(v.author, v.max_op);
        if v.genesis.is_some() {
            self.genesis = v.genesis;
        }
        v.touched
    }
}

/// The id of a message posted by `author` at `hlc`: 16 hex digits of the HLC, then the
/// first 16 hex digits of the author's node id. It sorts by time.
pub fn message_id(hlc: Hlc, author: &NodeId) -> String {
    format!("{:016x}{}", hlc.0, &author.to_hex()[..16])
}

/// Whether `id` is a well-formed message id of `author`.
pub fn is_message_id_of(id: &str, author: &NodeId) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id[16..] == author.to_hex()[..16]
}

/// The channel id that a genesis by `creator` at `created` named `name` must carry.
pub fn channel_id(creator: &NodeId, name: &str, created: Hlc) -> ChannelId {
    let mut buf = Vec::with_capacity(64 + name.len());
    buf.extend_from_slice(b"fieldmesh/channel/v1");
    buf.extend_from_slice(&creator.0);
    buf.extend_from_slice(&created.0.to_be_bytes());
    buf.extend_from_slice(name.as_bytes());
    ChannelId(sha256(&buf))
}

/// Prefix of the author's node id used in message and reaction keys.
pub(crate) fn prefix(node: &NodeId) -> String {
    node.to_hex()[..16].to_owned()
}

fn str_of(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Str(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Why a change was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It breaks a rule: refused for good.
    Rule(String),
    /// It writes into an object that no change applied here has made yet. It waits for
    /// that object: judged now, the verdict would depend on the order of arrival, since
    /// the change that makes it need not be among the change's dependencies.
    Waits(ObjKey),
}

impl From<String> for Refusal {
    fn from(s: String) -> Refusal {
        Refusal::Rule(s)
    }
}

impl From<&str> for Refusal {
    fn from(s: &str) -> Refusal {
        Refusal::Rule(s.to_owned())
    }
}

/// Checks one change against the rules; returns what it adds to the registry.
pub(crate) fn validate(
    reg: &Registry,
    channel: &ChannelId,
    author: &NodeId,
    kind: Kind,
    hlc: Hlc,
    change: &automerge::Change,
) -> Result<Validated, Refusal> {
    if change.actor_id().to_bytes() != author.0 {
        return Err("change actor is not the envelope author".into());
    }
    let expected_seq = reg.last_seq.get(author).copied().unwrap_or(0) + 1;
    if change.seq() != expected_seq {
        return Err(Refusal::Rule(format!(
            "change seq {} from {} but {} expected (equivocation or replay)",
            change.seq(),
            author.short(),
            expected_seq
        )));
    }
    // An operation's id is its counter and its author: counters at or below the author's
    // previous change would name that change's objects again (a message made with the
    // id of the channel's `meta` map, say), and Automerge's handling of such a document
    // is undefined. Changes are applied in each author's sequence order, so this is
    // judged the same everywhere.
    let last_op = reg.last_op.get(author).copied().unwrap_or(0);
    if change.start_op().get() <= last_op {
        return Err(Refusal::Rule(format!(
            "operation counters from {} reuse those of {}'s earlier changes (up to {last_op})",
            change.start_op(),
            author.short()
        )));
    }
    let expanded = change.decode();
    let start = expanded.start_op.get();
    let mut v = Validated {
        roles: vec![],
        messages: vec![],
        genesis: None,
        author: *author,
        seq: change.seq(),
        max_op: change.max_op(),
        touched: vec![],
    };
    let is_genesis = change.deps().is_empty();
    match (is_genesis, kind) {
        (true, Kind::CHANNEL_GENESIS) => {
            if reg.genesis.is_some() {
                return Err("channel already has a genesis".into());
            }
        }
        (false, Kind::CHANNEL_CHANGE) => {
            if reg.genesis.is_none() {
                return Err("change before genesis".into());
            }
        }
        (true, _) => return Err("a change without dependencies must be a genesis envelope".into()),
        (false, _) => {
            return Err("a genesis envelope must carry a change without dependencies".into());
        }
    }
    let mut meta_name: Option<String> = None;
    for (i, op) in expanded.operations.iter().enumerate() {
        let opid: ObjKey = (start + i as u64, author.0.to_vec());
        let role = match &op.obj {
            ObjectId::Root => None,
            ObjectId::Id(id) => {
                let key: ObjKey = (id.0, id.1.to_bytes().to_vec());
                let found = v
                    .roles
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, r)| r)
                    .or_else(|| reg.roles.get(&key));
                Some(found.ok_or(Refusal::Waits(key))?.clone())
            }
        };
        let map_key = match &op.key {
            Key::Map(k) => Some(k.as_str()),
            Key::Seq(_) => None,
        };
        let err = |what: &str| Err(Refusal::Rule(format!("op {i}: {what}")));
        match (role, map_key) {
            (None, Some(k)) => {
                if !is_genesis {
                    return err("only the genesis may write the channel root");
                }
                match (k, &op.action) {
                    ("meta", OpType::Make(ObjType::Map)) => v.roles.push((opid, Role::Meta)),
                    ("messages", OpType::Make(ObjType::Map)) => {
                        v.roles.push((opid, Role::Messages))
                    }
                    _ => return err("genesis may only create `meta` and `messages` maps"),
                }
            }
            (Some(Role::Meta), Some(k)) => {
                if !is_genesis {
                    return err("channel meta is written only by the genesis");
                }
                match (k, &op.action) {
                    ("name", OpType::Put(ScalarValue::Str(s))) => meta_name = Some(s.to_string()),
                    ("creator", OpType::Put(ScalarValue::Str(s)))
                        if s.as_str() == author.to_hex() => {}
                    ("created", OpType::Put(ScalarValue::Uint(t))) if *t == hlc.0 => {}
                    ("schema", OpType::Put(ScalarValue::Uint(SCHEMA_VERSION))) => {}
                    _ => return err("bad meta field"),
                }
            }
            (Some(Role::Messages), Some(k)) => {
                if !is_message_id_of(k, author) {
                    return err("message key does not name its author");
                }
                // Nor another time than its envelope's: an id (and `ts`) far ahead would
                // pin a message as the newest for good.
                if k != message_id(hlc, author) {
                    return err("message key does not carry its envelope's time");
                }
                if !matches!(op.action, OpType::Make(ObjType::Map)) || !op.pred.is_empty() {
                    return err("a message is created once, as a map");
                }
                if reg.messages.contains_key(k) || v.messages.iter().any(|(m, _)| m == k) {
                    return err("message id already used");
                }
                v.roles.push((
                    opid,
                    Role::Message {
                        author: *author,
                        id: k.to_owned(),
                    },
                ));
                v.messages.push((k.to_owned(), *author));
                v.touched.push(k.to_owned());
            }
            (Some(Role::Message { author: owner, id }), Some(k)) => {
                if owner != *author {
                    return err(&format!("only the author may change message {id}"));
                }
                v.touched.push(id.clone());
                // The maps others write in (reviews of an AI product, reactions) are made
                // only with the message: made again later, by its author, the new empty
                // map would win and wipe the reviewers' verdicts (a rejection included).
                let new_message = v.messages.iter().any(|(m, _)| *m == id);
                let ok = match (k, &op.action) {
                    ("author", OpType::Put(s)) => str_of(s) == Some(author.to_hex().as_str()),
                    ("text", OpType::Put(s)) => {
                        str_of(s).is_some_and(|t| t.len() <= crate::MAX_TEXT_BYTES)
                    }
                    ("ts" | "edited_ts", OpType::Put(ScalarValue::Uint(t))) => *t == hlc.0,
                    ("precedence", OpType::Put(ScalarValue::Uint(p))) => *p <= 3,
                    ("reply_to", OpType::Put(s)) => str_of(s).is_some_and(|r| r.len() == 32),
                    ("redacted", OpType::Put(ScalarValue::Boolean(true))) => true,
                    ("ai", OpType::Put(s)) => str_of(s).is_some_and(|t| t.len() <= MAX_AI_BYTES),
                    ("reviews", OpType::Make(ObjType::Map)) if new_message => {
                        v.roles.push((
                            opid,
                            Role::Reviews {
                                message: id.clone(),
                            },
                        ));
                        true
                    }
                    ("reactions", OpType::Make(ObjType::Map)) if new_message => {
                        v.roles.push((
                            opid,
                            Role::Reactions {
                                message: id.clone(),
                            },
                        ));
                        true
                    }
                    ("attachments", OpType::Make(ObjType::List)) => {
                        v.roles.push((
                            opid,
                            Role::Attachments {
                                author: *author,
                                message: id.clone(),
                            },
                        ));
                        true
                    }
                    _ => false,
                };
                if !ok {
                    return err(&format!("invalid write to message field {k:?}"));
                }
            }
            (Some(Role::Reactions { message }), Some(k)) => {
                v.touched.push(message);
                let Some(emoji) = k.strip_prefix(&format!("{}:", prefix(author))) else {
                    return err("a node may only write its own reactions");
                };
                if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
                    return err("reaction is empty or too long");
                }
                if !matches!(
                    op.action,
                    OpType::Put(ScalarValue::Boolean(true)) | OpType::Delete
                ) {
                    return err("a reaction is set to true or deleted");
                }
            }
            (Some(Role::Reviews { message }), Some(k)) => {
                v.touched.push(message);
                if k != prefix(author) {
                    return err("a node may only write its own review");
                }
                match &op.action {
                    OpType::Put(s) if str_of(s).is_some_and(is_review) => {}
                    OpType::Delete => {}
                    _ => return err("a review is `approved`, `rejected[: note]`, or deleted"),
                }
            }
            (
                Some(Role::Attachments {
                    author: owner,
                    message,
                }),
                None,
            ) => {
                if owner != *author
                    || !op.insert
                    || !matches!(op.action, OpType::Make(ObjType::Map))
                {
                    return err("only the author appends attachment maps");
                }
                v.roles.push((
                    opid,
                    Role::Attachment {
                        author: *author,
                        message,
                    },
                ));
            }
            (Some(Role::Attachment { author: owner, .. }), Some(k)) => {
                let ok = owner == *author
                    && match (k, &op.action) {
                        ("hash", OpType::Put(s)) => str_of(s).is_some_and(|h| h.len() == 64),
                        ("name" | "mime", OpType::Put(s)) => {
                            str_of(s).is_some_and(|t| t.len() <= MAX_LABEL_BYTES)
                        }
                        ("size", OpType::Put(ScalarValue::Uint(_))) => true,
                        _ => false,
                    };
                if !ok {
                    return err("invalid attachment field");
                }
            }
            _ => return err("operation does not fit the channel schema"),
        }
    }
    if is_genesis {
        let name = meta_name.ok_or("genesis without a name")?;
        if channel_id(author, &name, hlc) != *channel {
            return Err("genesis does not hash to this channel id".into());
        }
        if !v.roles.iter().any(|(_, r)| *r == Role::Messages) {
            return Err("genesis without `messages`".into());
        }
        v.genesis = Some(GenesisInfo {
            name,
            creator: *author,
            created: hlc,
        });
    }
    v.touched.sort();
    v.touched.dedup();
    Ok(v)
}
