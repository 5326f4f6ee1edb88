//! Range and cross-field checks applied after parsing.

use std::collections::HashSet;

use crate::LoadError;
use crate::schema::{LlmTask, ModelTask, Profile};

/// Smallest allowed `hardware.memory_mb`.
pub const MIN_MEMORY_MB: u32 = 256;
/// Allowed `bearers[].mtu_bytes`.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 64..=65535;
/// Allowed `sync.max_frame_bytes`: 320 KiB ..= 16 MiB. Every node must pass the largest
/// valid envelope (256 KiB of payload, its header, dependencies, signature and batch
/// proof; the node's tests check the floor against it), whatever its own profile: a
/// smaller cap would strand such envelopes at this node.
pub const FRAME_RANGE: std::ops::RangeInclusive<u32> = 320 * 1024..=16 * 1024 * 1024;

/// Accumulates the context needed to build [`LoadError::Invalid`].
struct Checker<'a> {
    profile: &'a str,
}

impl Checker<'_> {
    fn ensure(
        &self,
        ok: bool,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<(), LoadError> {
        if ok {
            Ok(())
        } else {
            Err(LoadError::Invalid {
                profile: self.profile.to_owned(),
                field: field.into(),
                reason: reason.into(),
            })
        }
    }

    fn model(&self, task: &str, model: &str, threads: u32, cores: u32) -> Result<(), LoadError> {
        self.ensure(
            !model.trim().is_empty(),
            format!("models.{task}.model"),
            "must be a model name, or \"none\" to disable the task",
        )?;
        self.ensure(
            threads >= 1 && threads <= cores,
            format!("models.{task}.threads"),
            format!("is {threads}; must be 1..=hardware.cores ({cores})"),
        )
    }

    fn llm(&self, task: &str, t: &LlmTask, cores: u32) -> Result<(), LoadError> {
        self.model(task, &t.model, t.threads, cores)?;
        self.ensure(
            t.max_context_tokens >= 1,
            format!("models.{task}.max_context_tokens"),
            "must be >= 1",
        )
    }

    fn task(&self, task: &str, t: &ModelTask, cores: u32) -> Result<(), LoadError> {
        self.model(task, &t.model, t.threads, cores)
    }
}

/// Checks every rule; returns the first violation.
pub(crate) fn validate(p: &Profile) -> Result<(), LoadError> {
    let c = Checker { profile: &p.name };

    // name
    c.ensure(
        !p.name.is_empty()
            && p.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "name",
        "must be non-empty and contain only a-z, 0-9 and '-'",
    )?;

    // hardware
    let hw = &p.hardware;
    c.ensure(hw.cores >= 1, "hardware.cores", "must be >= 1")?;
    c.ensure(
        hw.memory_mb >= MIN_MEMORY_MB,
        "hardware.memory_mb",
        format!("is {}; must be >= {MIN_MEMORY_MB}", hw.memory_mb),
    )?;

    // storage
    let st = &p.storage;
    c.ensure(st.budget_mb > 0, "storage.budget_mb", "must be > 0")?;
    c.ensure(
        st.relay_quota_mb > 0,
        "storage.relay_quota_mb",
        "must be > 0",
    )?;
    c.ensure(
        st.relay_quota_mb <= st.budget_mb,
        "storage.relay_quota_mb",
        format!(
            "is {}; must be <= storage.budget_mb ({})",
            st.relay_quota_mb, st.budget_mb
        ),
    )?;
    c.ensure(st.blob_cache_mb > 0, "storage.blob_cache_mb", "must be > 0")?;

    // bearers
    c.ensure(
        !p.bearers.is_empty(),
        "bearers",
        "at least one bearer is required",
    )?;
    let mut names = HashSet::new();
    for (i, b) in p.bearers.iter().enumerate() {
        c.ensure(
            !b.name.trim().is_empty(),
            format!("bearers[{i}].name"),
            "must be non-empty",
        )?;
        c.ensure(
            names.insert(b.name.as_str()),
            format!("bearers[{i}].name"),
            format!("duplicate bearer name `{}`", b.name),
        )?;
        c.ensure(
            b.rate_kbps >= 1,
            format!("bearers[{i}].rate_kbps"),
            "must be >= 1",
        )?;
        c.ensure(
            MTU_RANGE.contains(&b.mtu_bytes),
            format!("bearers[{i}].mtu_bytes"),
            format!(
                "is {}; must be {}..={}",
                b.mtu_bytes,
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ),
        )?;
        // Written so that NaN fails too.
        c.ensure(
            b.duty_cycle > 0.0 && b.duty_cycle <= 1.0,
            format!("bearers[{i}].duty_cycle"),
            format!("is {}; must be in (0, 1]", b.duty_cycle),
        )?;
    }

    // models
    let m = &p.models;
    c.llm("sitrep", &m.sitrep, hw.cores)?;
    c.llm("translate", &m.translate, hw.cores)?;
    c.task("transcribe", &m.transcribe, hw.cores)?;
    c.task("embed", &m.embed, hw.cores)?;

    // sync
    let s = &p.sync;
    c.ensure(
        FRAME_RANGE.contains(&s.max_frame_bytes),
        "sync.max_frame_bytes",
        format!(
            "is {}; must be {}..={}",
            s.max_frame_bytes,
            FRAME_RANGE.start(),
            FRAME_RANGE.end()
        ),
    )?;
    c.ensure(
        s.max_message_bytes >= 1 && s.max_message_bytes <= s.max_frame_bytes,
        "sync.max_message_bytes",
        format!(
            "is {}; must be 1..=sync.max_frame_bytes ({})",
            s.max_message_bytes, s.max_frame_bytes
        ),
    )?;
    c.ensure(
        s.per_link_budget_bytes_per_s >= 1,
        "sync.per_link_budget_bytes_per_s",
        "must be >= 1",
    )?;
    c.ensure(s.max_peers >= 1, "sync.max_peers", "must be >= 1")?;
    c.ensure(
        s.reconcile_interval_s >= 1,
        "sync.reconcile_interval_s",
        "must be >= 1",
    )?;

    // retention
    let r = &p.retention;
    for (field, days) in [
        ("retention.routine_days", r.routine_days),
        ("retention.priority_days", r.priority_days),
        ("retention.immediate_days", r.immediate_days),
        ("retention.flash_days", r.flash_days),
        ("retention.audit_days", r.audit_days),
    ] {
        c.ensure(days >= 1, field, "must be >= 1")?;
    }
    // More urgent traffic is kept at least as long as less urgent traffic.
    for (field, days, lower_field, lower) in [
        (
            "retention.priority_days",
            r.priority_days,
            "routine_days",
            r.routine_days,
        ),
        (
            "retention.immediate_days",
            r.immediate_days,
            "priority_days",
            r.priority_days,
        ),
        (
            "retention.flash_days",
            r.flash_days,
            "immediate_days",
            r.immediate_days,
        ),
    ] {
        c.ensure(
            days >= lower,
            field,
            format!("is {days}; must be >= retention.{lower_field} ({lower}): more urgent traffic is kept at least as long"),
        )?;
    }

    Ok(())
}
