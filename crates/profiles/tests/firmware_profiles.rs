//! Every checked-in profile in `firmware-profiles/` loads, validates and is built in.

use std::fs;
use std::path::{Path, PathBuf};

use fieldmesh_profiles::{BUILTIN, LoadError, Profile};

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../firmware-profiles")
}

/// `(file stem, path)` of every `*.toml` in `firmware-profiles/`, sorted.
fn profile_files() -> Vec<(String, PathBuf)> {
    let mut files: Vec<_> = fs::read_dir(profiles_dir())
        .expect("firmware-profiles/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
            (stem, p)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_profile_file_loads_and_validates() {
    let files = profile_files();
    assert!(files.len() >= 4, "only {} profiles", files.len());
    for (stem, path) in &files {
        let p = Profile::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&p.name, stem, "profile name must equal the file stem");
        assert!(
            !p.description.trim().is_empty(),
            "{stem}: empty description"
        );
        // Loading by path through `resolve` gives the same profile.
        assert_eq!(Profile::resolve(path.to_str().unwrap()).unwrap(), p);
    }
}

#[test]
fn builtin_covers_every_file_exactly() {
    let files = profile_files();
    let mut builtin_names: Vec<_> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
    builtin_names.sort();
    let file_names: Vec<_> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        builtin_names, file_names,
        "BUILTIN and firmware-profiles/ differ"
    );

    for (stem, path) in &files {
        let on_disk = fs::read_to_string(path).unwrap();
        let embedded = BUILTIN.iter().find(|(n, _)| n == stem).unwrap().1;
        assert_eq!(embedded, on_disk, "{stem}: embedded text is stale");
        assert_eq!(
            Profile::builtin(stem).unwrap(),
            Profile::load(path).unwrap()
        );
    }
}

#[test]
fn readme_lists_every_profile() {
    let readme = fs::read_to_string(profiles_dir().join("README.md")).unwrap();
    for (stem, _) in profile_files() {
        assert!(
            readme.contains(&format!("`{stem}`")),
            "README.md misses {stem}"
        );
    }
}

#[test]
fn default_for_tests_is_the_ci_profile() {
    let p = Profile::default_for_tests();
    assert_eq!(p.name, "ci-loopback");
    assert_eq!(p.hardware.cores, 2);
}

#[test]
fn load_reports_the_path_in_parse_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    fs::write(&path, "name = \"broken\"\ndescription = \n").unwrap();
    match Profile::load(&path) {
        Err(e @ LoadError::Parse { .. }) => {
            let LoadError::Parse {
                ref origin,
                ref message,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(origin, &path.display().to_string());
            assert!(message.contains("line 2"), "{message}");
            assert!(e.to_string().contains("broken.toml"), "{e}");
        }
        other => panic!("expected Parse error, got {other:?}"),
    }
}

#[test]
fn load_reports_missing_files_as_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = Profile::load(&path).unwrap_err();
    assert!(
        matches!(&err, LoadError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert!(err.to_string().contains("absent.toml"));
}

#[test]
fn resolve_prefers_an_existing_file_without_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom-profile");
    let text = BUILTIN.iter().find(|(n, _)| *n == "rpi4-4gb").unwrap().1;
    fs::write(&path, text.replace("budget_mb = 8192", "budget_mb = 9000")).unwrap();
    let p = Profile::resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(p.storage.budget_mb, 9000);
}
