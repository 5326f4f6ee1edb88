//! Read-only views of a channel: what the CLI, the API and exports show.

use crate::Channel;
use automerge::{ObjId, ROOT, ReadDoc};
use fieldmesh_core::{ChannelId, Hlc, NodeId, Precedence};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A reference to a content-addressed blob attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// SHA-256 of the content, hex.
    pub hash: String,
    /// File name shown to people.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
}

impl AttachmentRef {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("attachment hash must be 64 hex characters".into());
        }
        if self.name.len() > crate::schema::MAX_LABEL_BYTES
            || self.mime.len() > crate::schema::MAX_LABEL_BYTES
        {
            return Err("attachment name or type too long".into());
        }
        Ok(())
    }
}

/// One message as people see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id.
    pub id: String,
    /// Author node id.
    pub author: NodeId,
    /// Channel id.
    pub channel: ChannelId,
    /// Current text (empty once redacted).
    pub text: String,
    /// Precedence.
    pub precedence: Precedence,
    /// Author's HLC timestamp.
    pub timestamp: Hlc,
    /// The same time in RFC 3339, UTC.
    pub time: String,
    /// The message this one replies to.
    pub reply_to: Option<String>,
    /// Reaction → node id prefixes of those who reacted.
    pub reactions: BTreeMap<String, Vec<String>>,
    /// Whether the text was edited.
    pub edited: bool,
    /// Whether the message was redacted by its author.
    pub redacted: bool,
    /// Attachments (none once redacted).
    pub attachments: Vec<AttachmentRef>,
    /// Machine annotation, JSON: provenance and structured content of an AI product
    /// (SITREP, translation, transcript) or a triage verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<String>,
    /// Reviewer node id prefix → `approved` | `rejected[: note]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reviews: BTreeMap<String, String>,
    /// Received and authenticated, but waiting for earlier changes it builds on: shown
    /// early so urgent traffic is readable at once; reactions and edits come later.
    #[serde(default)]
    pub pending: bool,
}

/// A channel in listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSummary {
    /// Channel id.
    pub id: ChannelId,
    /// Name from the genesis.
    pub name: String,
    /// Creator.
    pub creator: NodeId,
    /// Creation time.
    pub created: Hlc,
    /// Number of messages.
    pub messages: usize,
}

/// RFC 3339 in UTC with milliseconds (moved to `fieldmesh_core`).
pub use fieldmesh_core::rfc3339;

fn get_str(doc: &automerge::Automerge, obj: &ObjId, key: &str) -> Option<String> {
    doc.get(obj, key)
        .ok()
        .flatten()
        .and_then(|(v, _)| v.as_str().map(str::to_owned))
}

fn get_u64(doc: &automerge::Automerge, obj: &ObjId, key: &str) -> Option<u64> {
    doc.get(obj, key)
        .ok()
        .flatten()
        .and_then(|(v, _)| v.as_u64())
}

impl Channel {
    fn messages_obj(&self) -> Option<ObjId> {
        self.doc
            .get(ROOT, "messages")
            .ok()
            .flatten()
            .map(|(_, id)| id)
    }

    /// Summary for listings; `None` until the genesis has been applied.
    pub fn summary(&self) -> Option<ChannelSummary> {
        let g = self.genesis()?;
        Some(ChannelSummary {
            id: self.id(),
            name: g.name.clone(),
            creator: g.creator,
            created: g.created,
            messages: self.views.len(),
        })
    }

    /// One message by id, including a post still waiting for its predecessors.
    pub fn message(&self, id: &str) -> Option<MessageView> {
        self.views
            .get(id)
            .or_else(|| self.provisional.values().find(|v| v.id == id))
            .cloned()
    }

    /// Reads one message's view from the document.
    pub(crate) fn read_view(&self, id: &str) -> Option<MessageView> {
        let messages = self.messages_obj()?;
        let (_, obj) = self.doc.get(&messages, id).ok().flatten()?;
        self.view_of(id, &obj)
    }

    /// All messages in time order (message ids sort by time), including posts still
    /// waiting for causal predecessors (marked `pending`).
    pub fn messages(&self) -> Vec<MessageView> {
        if self.provisional.is_empty() {
            return self.views.values().cloned().collect();
        }
        let mut all = self.views.clone();
        for v in self.provisional.values() {
            all.entry(v.id.clone()).or_insert_with(|| v.clone());
        }
        all.into_values().collect()
    }

    fn view_of(&self, id: &str, obj: &ObjId) -> Option<MessageView> {
        let doc = &self.doc;
        let author = self.role_author(id)?;
        let redacted = doc
            .get_all(obj, "redacted")
            .map(|vals| vals.iter().any(|(v, _)| v.as_bool() == Some(true)))
            .unwrap_or(false);
        let ts = Hlc(get_u64(doc, obj, "ts").unwrap_or(0));
        let mut reactions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some((_, r)) = doc.get(obj, "reactions").ok().flatten() {
            for item in doc.map_range(&r, ..) {
                if let Some((who, what)) = item.key.split_once(':') {
                    reactions
                        .entry(what.to_owned())
                        .or_default()
                        .push(who.to_owned());
                }
            }
        }
        let mut reviews = BTreeMap::new();
        if let Some((_, r)) = doc.get(obj, "reviews").ok().flatten() {
            for item in doc.map_range(&r, ..) {
                if let Some(v) = get_str(doc, &r, &item.key) {
                    reviews.insert(item.key.to_string(), v);
                }
            }
        }
        let mut attachments = Vec::new();
        if !redacted && let Some((_, list)) = doc.get(obj, "attachments").ok().flatten() {
            for item in doc.list_range(&list, ..) {
                let a = item.id();
                attachments.push(AttachmentRef {
                    hash: get_str(doc, &a, "hash").unwrap_or_default(),
                    name: get_str(doc, &a, "name").unwrap_or_default(),
                    size: get_u64(doc, &a, "size").unwrap_or(0),
                    mime: get_str(doc, &a, "mime").unwrap_or_default(),
                });
            }
        }
        Some(MessageView {
            id: id.to_owned(),
            author,
            channel: self.id(),
            text: if redacted {
                String::new()
            } else {
                get_str(doc, obj, "text").unwrap_or_default()
            },
            precedence: get_u64(doc, obj, "precedence")
                .and_then(|p| Precedence::from_u8(p as u8))
                .unwrap_or(Precedence::Routine),
            timestamp: ts,
            time: rfc3339(ts.wall_ms()),
            reply_to: get_str(doc, obj, "reply_to"),
            reactions,
            edited: get_u64(doc, obj, "edited_ts").is_some() && !redacted,
            redacted,
            attachments,
            ai: if redacted {
                None
            } else {
                get_str(doc, obj, "ai")
            },
            reviews,
            pending: false,
        })
    }
}
