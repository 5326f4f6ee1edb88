//! Typed, validated firmware profiles for Fieldmesh nodes.
//!
//! A firmware profile describes one hardware class (a Raspberry Pi field unit, a Jetson,
//! a rugged laptop, a command-post server, a CI machine): its cores and memory, storage
//! budgets, bearers (rate, MTU, latency, duty cycle), which model runs each inference task
//! and with how many threads, sync budgets and retention. Profiles are TOML files in the
//! repository's `firmware-profiles/` directory; all of them are also compiled into this
//! crate ([`BUILTIN`]), so `--profile NAME` works without the files on disk.
//!
//! Loading parses with unknown fields rejected, then [validates](Profile::validate) ranges
//! and relations between fields. Errors name the offending field by path
//! (e.g. `bearers[1].mtu_bytes`).
//!
//! ```
//! use fieldmesh_profiles::{BearerKind, LoadError, Profile};
//!
//! let pi = Profile::builtin("rpi4-4gb")?;
//! assert_eq!(pi.hardware.cores, 4);
//! assert!(pi.bearers.iter().any(|b| b.kind == BearerKind::Lora));
//! assert_eq!(pi.models.embed.enabled_model(), Some("all-minilm-l6-v2"));
//!
//! // `resolve` takes a built-in name or a path to a .toml file.
//! let ci = Profile::resolve("ci-loopback")?;
//! assert_eq!(ci, Profile::default_for_tests());
//!
//! // Rules are checked on load; errors carry the field path.
//! let mut text = fieldmesh_profiles::builtin_toml("ci-loopback").unwrap().to_owned();
//! text = text.replace("mtu_bytes = 1500", "mtu_bytes = 32");
//! let err = Profile::from_toml_str(&text).unwrap_err();
//! assert_eq!(err.field(), Some("bearers[0].mtu_bytes"));
//! assert!(matches!(err, LoadError::Invalid { .. }));
//! # Ok::<(), LoadError>(())
//! ```

mod builtin;
mod error;
mod schema;
mod validate;

use std::path::Path;

pub use builtin::BUILTIN;
pub use error::LoadError;
pub use schema::{
    Api, Arch, Bearer, BearerKind, Hardware, LlmTask, MODEL_NONE, ModelTask, Models, Profile,
    Retention, Storage, SyncBudget,
};
pub use validate::{FRAME_RANGE, MIN_MEMORY_MB, MTU_RANGE};

/// The name of the profile returned by [`Profile::default_for_tests`].
pub const TEST_PROFILE: &str = "ci-loopback";

/// The TOML text of a built-in profile, if there is one with this name.
pub fn builtin_toml(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The names of all built-in profiles.
pub fn builtin_names() -> Vec<String> {
    BUILTIN.iter().map(|(n, _)| (*n).to_owned()).collect()
}

impl Profile {
    /// Parses and validates a profile from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Profile, LoadError> {
        Self::parse(text, "<string>")
    }

    /// Reads, parses and validates a profile file.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates the built-in profile `name` (see [`BUILTIN`]).
    ///
    /// Fails with [`LoadError::UnknownProfile`] if there is none by that name.
    pub fn builtin(name: &str) -> Result<Profile, LoadError> {
        let text = builtin_toml(name).ok_or_else(|| LoadError::UnknownProfile {
            name: name.to_owned(),
            known: builtin_names(),
        })?;
        Self::parse(text, &format!("builtin:{name}"))
    }

    /// Loads `name_or_path` as a file if it is an existing file or ends in `.toml`;
    /// otherwise as a built-in profile name. This is what `--profile` accepts.
    pub fn resolve(name_or_path: &str) -> Result<Profile, LoadError> {
        let path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || path.is_file() {
            Self::load(path)
        } else {
            Self::builtin(name_or_path)
        }
    }

    /// The `ci-loopback` profile: two cores, loopback only, small budgets, no models.
    ///
    /// # Panics
    ///
    /// Never in practice: the built-in profile is checked by this crate's tests.
    pub fn default_for_tests() -> Profile {
        match Self::builtin(TEST_PROFILE) {
            Ok(p) => p,
            Err(e) => panic!("built-in test profile is broken: {e}"),
        }
    }

    /// Checks ranges and relations between fields; returns the first violation as
    /// [`LoadError::Invalid`]. Every loader calls this; call it again after editing a
    /// profile in code.
    pub fn validate(&self) -> Result<(), LoadError> {
        validate::validate(self)
    }

    fn parse(text: &str, origin: &str) -> Result<Profile, LoadError> {
        let profile: Profile = toml::from_str(text).map_err(|e| LoadError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        profile.validate()?;
        Ok(profile)
    }
}

#[cfg(test)]
mod tests;
