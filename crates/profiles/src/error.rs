//! Errors from loading and validating a profile.

use std::path::PathBuf;

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The profile file could not be read.
    #[error("cannot read profile {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The text is not valid TOML, or does not match the schema (wrong type, missing or
    /// unknown field).
    #[error("cannot parse profile {origin}: {message}")]
    Parse {
        /// Where the text came from: a file path, `builtin:NAME`, or `<string>`.
        origin: String,
        /// The TOML parser's message, including line and column.
        message: String,
    },

    /// The profile parsed but breaks a rule (a range, or a relation between fields).
    #[error("profile `{profile}`: invalid `{field}`: {reason}")]
    Invalid {
        /// The profile's `name` field.
        profile: String,
        /// Path of the offending field, e.g. `bearers[1].mtu_bytes`.
        field: String,
        /// What is wrong with it, and what is allowed.
        reason: String,
    },

    /// No built-in profile has this name.
    #[error("unknown profile `{name}`; built-in profiles: {}", known.join(", "))]
    UnknownProfile {
        /// The name that was asked for.
        name: String,
        /// The names of all built-in profiles.
        known: Vec<String>,
    },
}

impl LoadError {
    /// For [`LoadError::Invalid`], the path of the offending field.
    pub fn field(&self) -> Option<&str> {
        match self {
            LoadError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
