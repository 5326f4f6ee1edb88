//! The profile schema: plain data, one struct per TOML table.
//!
//! Every struct rejects unknown fields, so a typo in a profile is a load error rather than
//! a silently ignored setting. Structural checks (types, required fields) happen while
//! parsing; range and cross-field checks happen in [`Profile::validate`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bytes in one mebibyte; storage budgets are given in MiB.
const MIB: u64 = 1024 * 1024;
/// Seconds in one day; retention periods are given in days.
const DAY_S: u64 = 24 * 60 * 60;

/// The model name that disables a task.
pub const MODEL_NONE: &str = "none";

/// A firmware profile: everything the node needs to know about the hardware class it runs
/// on, and the budgets it must stay within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name, `[a-z0-9-]+`; for a checked-in profile it equals the file stem and is
    /// what `--profile NAME` takes.
    pub name: String,
    /// One line for humans: the hardware class and its role.
    pub description: String,
    /// CPU and memory of the hardware class.
    pub hardware: Hardware,
    /// On-disk budgets.
    pub storage: Storage,
    /// Links the node may use, in order of preference (at least one).
    pub bearers: Vec<Bearer>,
    /// Which model runs each inference task.
    pub models: Models,
    /// Sync engine budgets.
    pub sync: SyncBudget,
    /// How long envelopes are kept, per precedence, and the audit log.
    pub retention: Retention,
    /// Local API settings.
    pub api: Api,
}

/// CPU architecture of a hardware class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit ARM (`"aarch64"`): Raspberry Pi, Jetson.
    #[serde(rename = "aarch64")]
    Aarch64,
    /// 64-bit x86 (`"x86_64"`): laptops, servers, CI.
    #[serde(rename = "x86_64")]
    X86_64,
}

/// CPU and memory of the hardware class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// CPU architecture: `"aarch64"` or `"x86_64"`.
    pub arch: Arch,
    /// Physical CPU cores available to the node (>= 1). Bounds every task's `threads`.
    pub cores: u32,
    /// Installed RAM in MiB (>= 256).
    pub memory_mb: u32,
}

/// On-disk budgets, all in MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Total envelope store budget in MiB (> 0), including the relay quota.
    pub budget_mb: u64,
    /// Part of `budget_mb`, in MiB (> 0, <= `budget_mb`), for store-and-forward envelopes
    /// of compartments this node cannot read.
    pub relay_quota_mb: u64,
    /// Blob (attachment, audio, model chunk) cache in MiB (> 0).
    pub blob_cache_mb: u64,
}

impl Storage {
    /// `budget_mb` in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_mb.saturating_mul(MIB)
    }

    /// `relay_quota_mb` in bytes.
    pub fn relay_quota_bytes(&self) -> u64 {
        self.relay_quota_mb.saturating_mul(MIB)
    }

    /// `blob_cache_mb` in bytes.
    pub fn blob_cache_bytes(&self) -> u64 {
        self.blob_cache_mb.saturating_mul(MIB)
    }
}

/// The kind of a bearer (link technology).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BearerKind {
    /// `"wifi-mesh"`: 802.11s or similar Wi-Fi mesh.
    WifiMesh,
    /// `"manet-radio"`: tactical MANET radio (narrow- or wideband).
    ManetRadio,
    /// `"satcom"`: satellite link (GEO or LEO).
    Satcom,
    /// `"ethernet"`: wired LAN.
    Ethernet,
    /// `"lora"`: LoRa, typically duty-cycle limited with a 255-byte payload.
    Lora,
    /// `"loopback"`: 127.0.0.1, for tests.
    Loopback,
}

/// One link the node may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bearer {
    /// Bearer name, unique within the profile (e.g. the interface name, `"wlan0-mesh"`).
    pub name: String,
    /// Link technology.
    pub kind: BearerKind,
    /// Usable throughput in kbit/s (1000 bit/s units, >= 1), not the PHY rate.
    pub rate_kbps: u32,
    /// Largest packet the link carries, in bytes (64..=65535).
    pub mtu_bytes: u32,
    /// Typical one-way latency in milliseconds.
    pub latency_ms: u32,
    /// Fraction of time the node may transmit, in (0, 1]; e.g. 0.01 for EU868 LoRa.
    pub duty_cycle: f64,
}

impl Bearer {
    /// Usable rate in bytes per second, before the duty cycle is applied.
    pub fn rate_bytes_per_s(&self) -> u64 {
        u64::from(self.rate_kbps) * 1000 / 8
    }

    /// Long-run average rate in bytes per second once the duty cycle is applied.
    pub fn sustained_bytes_per_s(&self) -> u64 {
        // Truncation is intended: this is a budget, rounding down is the safe direction.
        (self.rate_bytes_per_s() as f64 * self.duty_cycle) as u64
    }

    /// Typical one-way latency.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(u64::from(self.latency_ms))
    }
}

/// Which model runs each inference task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// SITREP prose generation (LLM).
    pub sitrep: LlmTask,
    /// Translation (LLM).
    pub translate: LlmTask,
    /// Speech-to-text (e.g. a Whisper model).
    pub transcribe: ModelTask,
    /// Sentence embeddings for search and de-duplication.
    pub embed: ModelTask,
}

/// A task served by a language model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmTask {
    /// Model registry name (e.g. `"qwen2.5-coder-1.5b-instruct-q4_k_m"`), or `"none"` to
    /// disable the task. Non-empty.
    pub model: String,
    /// Inference threads (1..=`hardware.cores`).
    pub threads: u32,
    /// Context window the node may use, in tokens (>= 1); prompts are truncated to fit.
    pub max_context_tokens: u32,
}

impl LlmTask {
    /// The model name, or `None` when the task is disabled (`model = "none"`).
    pub fn enabled_model(&self) -> Option<&str> {
        enabled(&self.model)
    }
}

/// A task served by a non-generative model (speech-to-text, embeddings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTask {
    /// Model registry name (e.g. `"whisper-base"`), or `"none"` to disable the task.
    /// Non-empty.
    pub model: String,
    /// Inference threads (1..=`hardware.cores`).
    pub threads: u32,
}

impl ModelTask {
    /// The model name, or `None` when the task is disabled (`model = "none"`).
    pub fn enabled_model(&self) -> Option<&str> {
        enabled(&self.model)
    }
}

fn enabled(model: &str) -> Option<&str> {
    (model != MODEL_NONE).then_some(model)
}

/// Sync engine budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncBudget {
    /// Largest sync frame on the wire, in bytes (320 KiB..=16 MiB).
    pub max_frame_bytes: u32,
    /// Largest single envelope, in bytes (1..=`max_frame_bytes`); bigger content travels
    /// as chunked blobs.
    pub max_message_bytes: u32,
    /// Bytes per second one peer link may use for sync (>= 1).
    pub per_link_budget_bytes_per_s: u64,
    /// Most peers synced with at once (>= 1).
    pub max_peers: u32,
    /// Seconds between reconciliation rounds with a connected peer (>= 1).
    pub reconcile_interval_s: u32,
    /// Peers to keep a connection to, as multiaddrs (`/ip4/A/udp/P/quic-v1` or
    /// `/ip4/A/tcp/P`), besides those given with `run --peer`.
    #[serde(default)]
    pub peers: Vec<String>,
}

impl SyncBudget {
    /// `reconcile_interval_s` as a [`Duration`].
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.reconcile_interval_s))
    }
}

/// Retention per precedence, in days (each >= 1).
///
/// More urgent traffic is kept at least as long:
/// `flash_days >= immediate_days >= priority_days >= routine_days`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Days ROUTINE envelopes are kept.
    pub routine_days: u32,
    /// Days PRIORITY envelopes are kept.
    pub priority_days: u32,
    /// Days IMMEDIATE envelopes are kept.
    pub immediate_days: u32,
    /// Days FLASH envelopes are kept.
    pub flash_days: u32,
    /// Days audit log entries are kept.
    pub audit_days: u32,
}

impl Retention {
    /// Converts a number of days (one of this struct's fields) to a [`Duration`].
    pub fn days(days: u32) -> Duration {
        Duration::from_secs(u64::from(days) * DAY_S)
    }
}

/// Local API settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Default HTTP listen address, e.g. `"127.0.0.1:7878"`; port 0 lets the OS choose.
    pub http_default: SocketAddr,
}
