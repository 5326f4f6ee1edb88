//! A blocking client for the daemon's localhost HTTP API (used by the CLI while the
//! daemon holds the store).

use crate::ops::{Identity, ImportReport, NodeError, Ops, PostRequest, Posted};
use fieldmesh_channel::{ChannelSummary, MessageView};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::time::Duration;

/// Largest response the client accepts (a whole-store bundle export).
const MAX_BODY: u64 = 1 << 30;

#[derive(Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(addr: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Client {
            base: format!("http://{addr}/api/v1"),
            agent,
        }
    }

    fn finish(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, NodeError> {
        let mut resp = resp.map_err(|e| NodeError::Internal(format!("daemon unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| NodeError::Internal(format!("reading daemon response: {e}")))?;
        if status >= 400 {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(NodeError::from_status(status, msg));
        }
        Ok(body)
    }

    fn json<T: DeserializeOwned>(body: Vec<u8>) -> Result<T, NodeError> {
        serde_json::from_slice(&body)
            .map_err(|e| NodeError::Internal(format!("bad daemon response: {e}")))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, NodeError> {
        Self::json(Self::finish(
            self.agent.get(format!("{}{path}", self.base)).call(),
        )?)
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, NodeError> {
        Self::json(Self::finish(
            self.agent
                .post(format!("{}{path}", self.base))
                .send_json(body),
        )?)
    }
}

impl Ops for Client {
    fn identity(&self) -> Result<Identity, NodeError> {
        self.get("/node")
    }
    fn channels(&self) -> Result<Vec<ChannelSummary>, NodeError> {
        self.get("/channels")
    }
    fn create_channel(
        &self,
        name: &str,
        compartment: Option<&str>,
    ) -> Result<ChannelSummary, NodeError> {
        self.post_json(
            "/channels",
            json!({ "name": name, "compartment": compartment }),
        )
    }
    fn access(&self, req: &crate::access::AccessRequest) -> Result<serde_json::Value, NodeError> {
        self.post_json(
            "/access",
            serde_json::to_value(req).map_err(|e| NodeError::Internal(e.to_string()))?,
        )
    }
    fn ai(&self, req: &crate::ai::AiRequest) -> Result<serde_json::Value, NodeError> {
        self.post_json(
            "/ai",
            serde_json::to_value(req).map_err(|e| NodeError::Internal(e.to_string()))?,
        )
    }
    fn read(&self, channel: &str) -> Result<Vec<MessageView>, NodeError> {
        self.get(&format!("/channels/{}/messages", seg(channel)))
    }
    fn post(&self, channel: &str, req: &PostRequest) -> Result<Posted, NodeError> {
        let body = serde_json::to_value(req).map_err(|e| NodeError::Internal(e.to_string()))?;
        self.post_json(&format!("/channels/{}/messages", seg(channel)), body)
    }
    fn edit(&self, channel: &str, msg: &str, text: &str) -> Result<Posted, NodeError> {
        self.post_json(
            &format!("/channels/{}/messages/{}/edit", seg(channel), seg(msg)),
            json!({ "text": text }),
        )
    }
    fn react(
        &self,
        channel: &str,
        msg: &str,
        reaction: &str,
        on: bool,
    ) -> Result<Posted, NodeError> {
        self.post_json(
            &format!("/channels/{}/messages/{}/react", seg(channel), seg(msg)),
            json!({ "reaction": reaction, "on": on }),
        )
    }
    fn redact(&self, channel: &str, msg: &str) -> Result<Posted, NodeError> {
        self.post_json(
            &format!("/channels/{}/messages/{}/redact", seg(channel), seg(msg)),
            json!({}),
        )
    }
    fn export_channel(&self, channel: &str) -> Result<Vec<u8>, NodeError> {
        Self::finish(
            self.agent
                .get(format!("{}/channels/{}/export", self.base, seg(channel)))
                .call(),
        )
    }
    fn export_bundle(&self, channel: Option<&str>) -> Result<Vec<u8>, NodeError> {
        let q = channel
            .map(|c| format!("?channel={}", seg(c)))
            .unwrap_or_default();
        Self::finish(self.agent.get(format!("{}/bundle{q}", self.base)).call())
    }
    fn net(&self) -> Result<crate::ops::NetView, NodeError> {
        self.get("/sync-status")
    }
    fn put_blob(
        &self,
        channel: &str,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<fieldmesh_channel::AttachmentRef, NodeError> {
        // The daemon would close the connection mid-upload ("broken pipe").
        crate::blob::check_size(data.len() as u64)?;
        let url = format!(
            "{}/channels/{}/blobs?name={}&mime={}",
            self.base,
            seg(channel),
            seg(name),
            seg(mime)
        );
        let resp = self
            .agent
            .post(url)
            .header("content-type", "application/octet-stream")
            .send(data);
        Self::json(Self::finish(resp)?)
    }
    fn get_attachment(&self, message: &str, index: usize) -> Result<Vec<u8>, NodeError> {
        Self::finish(
            self.agent
                .get(format!(
                    "{}/messages/{}/attachments/{index}",
                    self.base,
                    seg(message)
                ))
                .call(),
        )
    }
    fn import_bundle(&self, bytes: &[u8]) -> Result<ImportReport, NodeError> {
        let resp = self
            .agent
            .post(format!("{}/bundle", self.base))
            .header("content-type", "application/octet-stream")
            .send(bytes);
        Self::json(Self::finish(resp)?)
    }
}
