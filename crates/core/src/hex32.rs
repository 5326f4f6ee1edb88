//! Shared plumbing for 32-byte identifiers shown as lowercase hex.

use thiserror::Error;

/// A string could not be parsed as a 32-byte identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The text is not 64 hexadecimal characters.
    #[error("expected 64 hex characters for a {what}, got {len} characters")]
    Length {
        /// Which identifier was being parsed.
        what: &'static str,
        /// Length of the text given.
        len: usize,
    },
    /// The text contains a character that is not hexadecimal.
    #[error("{what} is not valid hex: {text:?}")]
    NotHex {
        /// Which identifier was being parsed.
        what: &'static str,
        /// The offending text.
        text: String,
    },
}

pub(crate) fn parse32(what: &'static str, s: &str) -> Result<[u8; 32], ParseIdError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(ParseIdError::Length { what, len: s.len() });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError::NotHex {
        what,
        text: s.to_owned(),
    })?;
    Ok(out)
}

/// Declares a 32-byte id newtype with hex display, parsing and ordering.
macro_rules! id32 {
    ($(#[$m:meta])* $name:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex characters: for people, never for lookups.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::hex32::ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::hex32::parse32($what, s).map(Self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use id32;
