//! Errors, one enum per kind of operation.

use fieldmesh_core::{DecodeError, EnvelopeId};
use std::path::PathBuf;
use thiserror::Error;

/// Opening a store failed. Nothing was modified.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (usually the running daemon) has the store open.
    #[error("store {0} is in use by another process (is `fieldmesh run` running?)")]
    Locked(PathBuf),
    /// The store was written by a newer Fieldmesh.
    #[error(
        "store {path} has format version {found}; this build reads up to {supported}: upgrade fieldmesh"
    )]
    NewerFormat {
        /// Store directory.
        path: PathBuf,
        /// Version on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The directory holds data that is not a Fieldmesh store.
    #[error("store {path} is not a Fieldmesh store: {reason}")]
    NotAStore {
        /// Store directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No room on disk to open (sled writes on recovery).
    #[error(
        "cannot open store {path}: disk full ({source}); free space and retry, nothing was lost"
    )]
    DiskFull {
        /// Store directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error("cannot open store {path}: {source}")]
    Engine {
        /// Store directory.
        path: PathBuf,
        /// The underlying error.
        source: sled::Error,
    },
}

/// Writing failed. Nothing of the failed call is visible afterwards.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The disk is full (or a file size limit was hit). The write was not acknowledged.
    #[error("disk full ({0}); the write was not stored")]
    DiskFull(std::io::Error),
    /// An earlier write failed after reaching the engine; until the store is reopened
    /// (which recovers to the last durable state) no write can be acknowledged.
    #[error("store is read-only after an earlier failed write; restart the node to recover")]
    Poisoned,
    /// The write would take the store past its byte quota.
    #[error(
        "store quota exceeded: {used} + {adding} bytes > quota {quota} bytes; nothing was written"
    )]
    QuotaExceeded {
        /// Bytes stored now.
        used: u64,
        /// Bytes this write adds.
        adding: u64,
        /// The quota.
        quota: u64,
    },
    /// The storage engine failed.
    #[error("store write failed: {0}")]
    Engine(sled::Error),
}

/// Reading failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A stored record does not decode or does not hash to its key: disk corruption.
    #[error("stored envelope {id} is corrupt: {source}")]
    Corrupt {
        /// The id it is stored under.
        id: EnvelopeId,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// A key in the store has an unexpected shape.
    #[error("store index is corrupt: {0}")]
    CorruptIndex(String),
    /// The storage engine failed.
    #[error("store read failed: {0}")]
    Engine(sled::Error),
}

impl From<sled::Error> for WriteError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) if is_disk_full(&io) => WriteError::DiskFull(io),
            other => WriteError::Engine(other),
        }
    }
}

impl From<sled::Error> for ReadError {
    fn from(e: sled::Error) -> Self {
        ReadError::Engine(e)
    }
}

pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    // ENOSPC, EDQUOT and EFBIG (file size limit) all mean: no room to write.
    matches!(e.raw_os_error(), Some(28) | Some(122) | Some(27))
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::FileTooLarge
}
