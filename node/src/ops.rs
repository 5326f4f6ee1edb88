//! The operations every front end offers, and their request/response types. The local
//! [`crate::node::Node`] and the HTTP [`crate::client::Client`] both implement [`Ops`], so
//! CLI commands behave the same whether or not a daemon holds the store.

use fieldmesh_channel::{ChannelSummary, MessageView};
use fieldmesh_core::{ChannelId, Precedence};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why an operation failed; maps to an HTTP status and back.
#[derive(Debug, Error)]
pub enum NodeError {
    /// No such channel or message.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// This node may not do or see that: not granted, revoked, or not an admin.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the state (not the author, redacted, name taken).
    #[error("{0}")]
    Conflict(String),
    /// The message exceeds the profile's size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Disk full or quota exceeded: nothing was written.
    #[error("{0}")]
    Storage(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    pub fn status(&self) -> u16 {
        match self {
            NodeError::NotFound(_) => 404,
            NodeError::BadRequest(_) => 400,
            NodeError::Forbidden(_) => 403,
            NodeError::Conflict(_) => 409,
            NodeError::TooLarge(_) => 413,
            NodeError::Storage(_) => 507,
            NodeError::Internal(_) => 500,
        }
    }

    pub fn from_status(status: u16, msg: String) -> NodeError {
        match status {
            404 => NodeError::NotFound(msg),
            400 => NodeError::BadRequest(msg),
            403 => NodeError::Forbidden(msg),
            409 => NodeError::Conflict(msg),
            413 => NodeError::TooLarge(msg),
            507 => NodeError::Storage(msg),
            _ => NodeError::Internal(msg),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub short: String,
    pub id: String,
    pub profile: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostRequest {
    pub text: String,
    #[serde(default)]
    pub precedence: Option<Precedence>,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Blobs stored beforehand with `put_blob`.
    #[serde(default)]
    pub attachments: Vec<fieldmesh_channel::AttachmentRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Posted {
    /// Message id.
    pub id: String,
    /// Envelope id carrying the change.
    pub envelope: String,
    /// Channel id.
    pub channel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub total: usize,
    pub inserted: usize,
    pub duplicates: usize,
    /// Others' traffic not kept: over this node's relay quota.
    #[serde(default)]
    pub declined: usize,
    /// Others' traffic stored earlier and pushed out to make room for this import.
    #[serde(default)]
    pub evicted: usize,
    /// Frames that failed verification, with reasons. None of them was stored.
    pub rejected: Vec<String>,
    /// Authentic envelopes, stored, whose change the channel rules refused.
    pub channel_rejects: Vec<String>,
}

/// A message that became visible: the payload of the event stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub channel: ChannelId,
    pub message: MessageView,
}

/// One peer in `peers` / `sync-status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub peer: String,
    pub addresses: Vec<String>,
    pub last_contact_ms: u64,
    pub envelopes_sent: u64,
    pub bytes_sent: u64,
    pub envelopes_received: u64,
    pub bytes_received: u64,
    pub sessions: u64,
    /// Sessions the peer opened with this node.
    #[serde(default)]
    pub sessions_answered: u64,
    /// Strikes for misbehaviour, kept across reconnections.
    pub strikes: u32,
    /// Whether a connection is up now (peers stay listed after they leave).
    pub connected: bool,
    /// Refused until then (ms since the epoch) for misbehaviour; 0 when not banned.
    pub banned_until_ms: u64,
    /// UDP bytes to and from the peer over QUIC, everything included (TCP not counted).
    #[serde(default)]
    pub wire_bytes_sent: u64,
    #[serde(default)]
    pub wire_bytes_received: u64,
    /// UDP datagrams to and from the peer over QUIC.
    #[serde(default)]
    pub wire_datagrams_sent: u64,
    #[serde(default)]
    pub wire_datagrams_received: u64,
    /// The largest QUIC path MTU (UDP payload bytes) reached with the peer.
    #[serde(default)]
    pub path_mtu: u16,
    /// Envelopes queued for this peer, by precedence.
    pub backlog: std::collections::BTreeMap<String, usize>,
}

/// The network as the API and CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetView {
    pub peer_id: String,
    pub listen: Vec<String>,
    pub envelopes: usize,
    /// Frames and envelopes rejected from misbehaving peers since start.
    pub rejected: u64,
    /// Bytes stored for others (compartments this node holds no key of), the profile's
    /// relay quota, envelopes declined over it (or dated over a day ahead) since start, envelopes pushed out to
    /// make room since start, and envelopes removed or declined past the profile's
    /// retention since start.
    #[serde(default)]
    pub relay_bytes: u64,
    #[serde(default)]
    pub relay_quota_bytes: u64,
    #[serde(default)]
    pub relay_declined: u64,
    #[serde(default)]
    pub relay_evicted: u64,
    #[serde(default)]
    pub relay_aged_out: u64,
    pub peers: Vec<PeerView>,
}

impl From<fieldmesh_net::NetStatus> for NetView {
    fn from(s: fieldmesh_net::NetStatus) -> Self {
        NetView {
            peer_id: s.peer_id.to_string(),
            listen: s.listen.iter().map(|a| a.to_string()).collect(),
            envelopes: s.envelopes,
            rejected: s.rejected,
            relay_bytes: 0,
            relay_quota_bytes: 0,
            relay_declined: 0,
            relay_evicted: 0,
            relay_aged_out: 0,
            peers: s
                .peers
                .into_iter()
                .map(|p| PeerView {
                    peer: p.peer.to_string(),
                    addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
                    last_contact_ms: p.stats.last_contact_ms,
                    envelopes_sent: p.stats.envelopes_sent,
                    bytes_sent: p.stats.bytes_sent,
                    envelopes_received: p.stats.envelopes_received,
                    bytes_received: p.stats.bytes_received,
                    sessions: p.stats.sessions,
                    sessions_answered: p.stats.sessions_answered,
                    strikes: p.stats.strikes,
                    wire_bytes_sent: p.wire.bytes_sent,
                    wire_bytes_received: p.wire.bytes_received,
                    wire_datagrams_sent: p.wire.datagrams_sent,
                    wire_datagrams_received: p.wire.datagrams_received,
                    path_mtu: p.wire.mtu,
                    connected: p.stats.connected,
                    banned_until_ms: p.stats.banned_until_ms,
                    backlog: p
                        .stats
                        .backlog
                        .iter()
                        .map(|(pr, n)| (pr.name().to_owned(), *n))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What the node can do, wherever it runs.
pub trait Ops {
    fn identity(&self) -> Result<Identity, NodeError>;
    fn channels(&self) -> Result<Vec<ChannelSummary>, NodeError>;
    fn create_channel(
        &self,
        name: &str,
        compartment: Option<&str>,
    ) -> Result<ChannelSummary, NodeError>;
    /// Credentials, compartments and revocation.
    fn access(&self, req: &crate::access::AccessRequest) -> Result<serde_json::Value, NodeError>;
    /// SITREPs, reviews, the board, triage, translation, transcription and search.
    fn ai(&self, req: &crate::ai::AiRequest) -> Result<serde_json::Value, NodeError>;
    fn read(&self, channel: &str) -> Result<Vec<MessageView>, NodeError>;
    fn post(&self, channel: &str, req: &PostRequest) -> Result<Posted, NodeError>;
    fn edit(&self, channel: &str, msg: &str, text: &str) -> Result<Posted, NodeError>;
    fn react(
        &self,
        channel: &str,
        msg: &str,
        reaction: &str,
        on: bool,
    ) -> Result<Posted, NodeError>;
    fn redact(&self, channel: &str, msg: &str) -> Result<Posted, NodeError>;
    fn export_channel(&self, channel: &str) -> Result<Vec<u8>, NodeError>;
    fn export_bundle(&self, channel: Option<&str>) -> Result<Vec<u8>, NodeError>;
    fn import_bundle(&self, bytes: &[u8]) -> Result<ImportReport, NodeError>;
    fn net(&self) -> Result<NetView, NodeError>;
    /// Stores a blob as chunk envelopes in a channel; returns the reference to attach.
    fn put_blob(
        &self,
        channel: &str,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<fieldmesh_channel::AttachmentRef, NodeError>;
    /// The verified content of attachment `index` of a message.
    fn get_attachment(&self, message: &str, index: usize) -> Result<Vec<u8>, NodeError>;
}
