//! Unit tests: one per validation rule, plus parse errors.

use super::*;

/// The CI profile with a second bearer, so per-bearer errors can be checked at index 1.
fn base() -> Profile {
    let mut p = Profile::default_for_tests();
    p.bearers.push(Bearer {
        name: "eth0".to_owned(),
        kind: BearerKind::Ethernet,
        rate_kbps: 1_000_000,
        mtu_bytes: 1500,
        latency_ms: 1,
        duty_cycle: 1.0,
    });
    p.validate().expect("base profile is valid");
    p
}

/// Applies `edit` to [`base`] and asserts validation fails on `field`.
#[track_caller]
fn rejects(field: &str, edit: impl FnOnce(&mut Profile)) {
    let mut p = base();
    edit(&mut p);
    match p.validate() {
        Err(LoadError::Invalid {
            profile,
            field: got,
            reason,
        }) => {
            assert_eq!(got, field, "wrong field (reason: {reason})");
            assert_eq!(profile, p.name);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Invalid on `{field}`, got {other:?}"),
    }
}

/// Applies `edit` to [`base`] and asserts the result is still valid.
#[track_caller]
fn accepts(edit: impl FnOnce(&mut Profile)) {
    let mut p = base();
    edit(&mut p);
    if let Err(e) = p.validate() {
        panic!("expected valid, got {e}");
    }
}

/// Parses `text` and asserts a Parse error whose message contains every needle.
#[track_caller]
fn parse_error(text: &str, needles: &[&str]) {
    match Profile::from_toml_str(text) {
        Err(LoadError::Parse { origin, message }) => {
            assert_eq!(origin, "<string>");
            for n in needles {
                assert!(message.contains(n), "`{n}` not in: {message}");
            }
        }
        other => panic!("expected Parse error, got {other:?}"),
    }
}

fn ci_text() -> &'static str {
    builtin_toml(TEST_PROFILE).expect("ci profile is built in")
}

#[test]
fn name_must_be_a_slug() {
    rejects("name", |p| p.name.clear());
    rejects("name", |p| p.name = "CI Loopback".to_owned());
    rejects("name", |p| p.name = "../etc".to_owned());
}

#[test]
fn cores_at_least_one() {
    rejects("hardware.cores", |p| p.hardware.cores = 0);
}

#[test]
fn memory_at_least_256_mb() {
    rejects("hardware.memory_mb", |p| p.hardware.memory_mb = 255);
    accepts(|p| p.hardware.memory_mb = 256);
}

#[test]
fn storage_budgets_positive() {
    rejects("storage.budget_mb", |p| p.storage.budget_mb = 0);
    rejects("storage.relay_quota_mb", |p| p.storage.relay_quota_mb = 0);
    rejects("storage.blob_cache_mb", |p| p.storage.blob_cache_mb = 0);
}

#[test]
fn relay_quota_within_budget() {
    rejects("storage.relay_quota_mb", |p| {
        p.storage.relay_quota_mb = p.storage.budget_mb + 1;
    });
    accepts(|p| p.storage.relay_quota_mb = p.storage.budget_mb);
}

#[test]
fn at_least_one_bearer() {
    rejects("bearers", |p| p.bearers.clear());
}

#[test]
fn bearer_names_unique_and_non_empty() {
    rejects("bearers[1].name", |p| p.bearers[1].name = "lo".to_owned());
    rejects("bearers[1].name", |p| p.bearers[1].name = " ".to_owned());
}

#[test]
fn bearer_rate_positive() {
    rejects("bearers[1].rate_kbps", |p| p.bearers[1].rate_kbps = 0);
}

#[test]
fn mtu_in_range() {
    rejects("bearers[1].mtu_bytes", |p| p.bearers[1].mtu_bytes = 63);
    rejects("bearers[1].mtu_bytes", |p| p.bearers[1].mtu_bytes = 65536);
    rejects("bearers[0].mtu_bytes", |p| p.bearers[0].mtu_bytes = 0);
    accepts(|p| p.bearers[1].mtu_bytes = 64);
    accepts(|p| p.bearers[1].mtu_bytes = 65535);
}

#[test]
fn duty_cycle_in_zero_one() {
    for bad in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
        rejects("bearers[1].duty_cycle", |p| p.bearers[1].duty_cycle = bad);
    }
    accepts(|p| p.bearers[1].duty_cycle = 1.0);
    accepts(|p| p.bearers[1].duty_cycle = 0.001);
}

#[test]
fn threads_between_one_and_cores() {
    rejects("models.sitrep.threads", |p| p.models.sitrep.threads = 0);
    rejects("models.translate.threads", |p| {
        p.models.translate.threads = 3
    });
    rejects("models.transcribe.threads", |p| {
        p.models.transcribe.threads = 0
    });
    rejects("models.embed.threads", |p| {
        p.models.embed.threads = p.hardware.cores + 1;
    });
    accepts(|p| p.models.embed.threads = p.hardware.cores);
}

#[test]
fn model_names_non_empty() {
    rejects("models.sitrep.model", |p| p.models.sitrep.model.clear());
    rejects("models.translate.model", |p| {
        p.models.translate.model = "  ".to_owned();
    });
    rejects("models.transcribe.model", |p| {
        p.models.transcribe.model.clear()
    });
    rejects("models.embed.model", |p| p.models.embed.model.clear());
}

#[test]
fn context_tokens_positive() {
    rejects("models.sitrep.max_context_tokens", |p| {
        p.models.sitrep.max_context_tokens = 0;
    });
    rejects("models.translate.max_context_tokens", |p| {
        p.models.translate.max_context_tokens = 0;
    });
}

#[test]
fn none_disables_a_task() {
    let p = base();
    assert_eq!(p.models.sitrep.enabled_model(), None);
    let mut t = p.models.transcribe.clone();
    t.model = "whisper-tiny.en".to_owned();
    assert_eq!(t.enabled_model(), Some("whisper-tiny.en"));
}

#[test]
fn frame_size_in_range() {
    rejects("sync.max_frame_bytes", |p| {
        p.sync.max_frame_bytes = 320 * 1024 - 1
    });
    rejects("sync.max_frame_bytes", |p| p.sync.max_frame_bytes = 65536);
    rejects("sync.max_frame_bytes", |p| {
        p.sync.max_frame_bytes = 16 * 1024 * 1024 + 1;
    });
    accepts(|p| {
        p.sync.max_frame_bytes = 320 * 1024;
        p.sync.max_message_bytes = 1024;
    });
    accepts(|p| p.sync.max_frame_bytes = 16 * 1024 * 1024);
}

#[test]
fn message_fits_in_frame() {
    rejects("sync.max_message_bytes", |p| {
        p.sync.max_message_bytes = p.sync.max_frame_bytes + 1;
    });
    rejects("sync.max_message_bytes", |p| p.sync.max_message_bytes = 0);
    accepts(|p| p.sync.max_message_bytes = p.sync.max_frame_bytes);
}

#[test]
fn sync_counters_positive() {
    rejects("sync.per_link_budget_bytes_per_s", |p| {
        p.sync.per_link_budget_bytes_per_s = 0;
    });
    rejects("sync.max_peers", |p| p.sync.max_peers = 0);
    rejects("sync.reconcile_interval_s", |p| {
        p.sync.reconcile_interval_s = 0
    });
}

#[test]
fn retention_days_at_least_one() {
    // Zero everywhere: the first field reported is routine_days.
    rejects("retention.routine_days", |p| p.retention.routine_days = 0);
    rejects("retention.audit_days", |p| p.retention.audit_days = 0);
    rejects("retention.flash_days", |p| {
        p.retention = Retention {
            routine_days: 1,
            priority_days: 1,
            immediate_days: 1,
            flash_days: 0,
            audit_days: 1,
        };
    });
}

#[test]
fn urgent_traffic_kept_at_least_as_long() {
    // ci-loopback has routine 1, priority 2, immediate 3, flash 4.
    rejects("retention.priority_days", |p| p.retention.routine_days = 3);
    rejects("retention.immediate_days", |p| {
        p.retention.immediate_days = 1
    });
    rejects("retention.flash_days", |p| p.retention.flash_days = 2);
    accepts(|p| {
        p.retention.routine_days = 5;
        p.retention.priority_days = 5;
        p.retention.immediate_days = 5;
        p.retention.flash_days = 5;
    });
}

#[test]
fn invalid_error_names_field_through_from_toml_str() {
    let text = ci_text().replace("duty_cycle = 1.0", "duty_cycle = 1.5");
    let err = Profile::from_toml_str(&text).unwrap_err();
    assert_eq!(err.field(), Some("bearers[0].duty_cycle"));
    assert_eq!(
        err.to_string(),
        "profile `ci-loopback`: invalid `bearers[0].duty_cycle`: is 1.5; must be in (0, 1]"
    );
}

#[test]
fn unknown_fields_rejected_at_every_level() {
    parse_error(
        &format!("colour = \"green\"\n{}", ci_text()),
        &["colour", "line 1"],
    );
    parse_error(
        &ci_text().replace("cores = 2", "cores = 2\ngpu = \"none\""),
        &["gpu"],
    );
    parse_error(
        &ci_text().replace("duty_cycle = 1.0", "duty_cycle = 1.0\nencrypted = true"),
        &["encrypted"],
    );
    // Only LLM tasks have a context window.
    parse_error(
        &ci_text().replace(
            "[models.embed]\nmodel = \"none\"",
            "[models.embed]\nmodel = \"none\"\nmax_context_tokens = 256",
        ),
        &["max_context_tokens"],
    );
    parse_error(
        &format!(
            "{}\n[models.summarise]\nmodel = \"none\"\nthreads = 1\n",
            ci_text()
        ),
        &["summarise"],
    );
}

#[test]
fn malformed_toml_reports_line_and_column() {
    let text = "name = \"x\"\ndescription = \"y\"\n[hardware\narch = \"aarch64\"\n";
    parse_error(text, &["line 3", "column"]);
}

#[test]
fn wrong_types_and_missing_fields_are_parse_errors() {
    parse_error(
        &ci_text().replace("cores = 2", "cores = \"two\""),
        &["cores"],
    );
    parse_error(&ci_text().replace("cores = 2", "cores = -2"), &["cores"]);
    parse_error(
        &ci_text().replace("arch = \"x86_64\"", "arch = \"riscv64\""),
        &["riscv64"],
    );
    parse_error(
        &ci_text().replace("kind = \"loopback\"", "kind = \"carrier-pigeon\""),
        &["carrier-pigeon"],
    );
    parse_error(&ci_text().replace("budget_mb = 512\n", ""), &["budget_mb"]);
    parse_error(
        &ci_text().replace("\"127.0.0.1:0\"", "\"localhost\""),
        &["http_default"],
    );
}

#[test]
fn unknown_builtin_lists_known_names() {
    match Profile::builtin("pdp-11") {
        Err(e @ LoadError::UnknownProfile { .. }) => {
            let msg = e.to_string();
            let LoadError::UnknownProfile { name, known } = e else {
                unreachable!()
            };
            assert_eq!(name, "pdp-11");
            assert_eq!(known, builtin_names());
            assert!(msg.contains("rpi4-4gb"), "{msg}");
        }
        other => panic!("expected UnknownProfile, got {other:?}"),
    }
}

#[test]
fn resolve_treats_dot_toml_as_a_path() {
    match Profile::resolve("no-such-dir/rpi4-4gb.toml") {
        Err(LoadError::Io { path, source }) => {
            assert_eq!(path, Path::new("no-such-dir/rpi4-4gb.toml"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io error, got {other:?}"),
    }
    assert!(matches!(
        Profile::resolve("no-such-profile"),
        Err(LoadError::UnknownProfile { .. })
    ));
    assert_eq!(
        Profile::resolve("rpi4-4gb").unwrap(),
        Profile::builtin("rpi4-4gb").unwrap()
    );
}

#[test]
fn every_builtin_round_trips_through_toml() {
    for (name, _) in BUILTIN {
        let p = Profile::builtin(name).unwrap();
        let text = toml::to_string(&p).unwrap();
        assert_eq!(Profile::from_toml_str(&text).unwrap(), p, "{name}");
    }
}

#[test]
fn unit_helpers() {
    let p = Profile::builtin("rpi4-4gb").unwrap();
    assert_eq!(p.storage.budget_bytes(), 8192 * 1024 * 1024);
    let lora = p
        .bearers
        .iter()
        .find(|b| b.kind == BearerKind::Lora)
        .unwrap();
    assert_eq!(lora.rate_bytes_per_s(), 625);
    assert_eq!(lora.sustained_bytes_per_s(), 6);
    assert_eq!(p.sync.reconcile_interval().as_secs(), 30);
    assert_eq!(Retention::days(2).as_secs(), 2 * 86_400);
}
