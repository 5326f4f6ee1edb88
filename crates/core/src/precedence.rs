//! Message precedence, after the military scale: FLASH > IMMEDIATE > PRIORITY > ROUTINE.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How urgent an envelope is. Ordered: `Flash` is the greatest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precedence {
    /// Everyday traffic.
    Routine = 0,
    /// Traffic that should go ahead of routine.
    Priority = 1,
    /// Operationally urgent.
    Immediate = 2,
    /// Life or mission critical: goes first on every link.
    Flash = 3,
}

/// The text is not a precedence name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown precedence {0:?}: expected flash, immediate, priority or routine")]
pub struct ParsePrecedenceError(pub String);

impl Precedence {
    /// All values, most urgent first.
    pub const ALL: [Precedence; 4] = [
        Precedence::Flash,
        Precedence::Immediate,
        Precedence::Priority,
        Precedence::Routine,
    ];

    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// From the wire byte; `None` for an unknown value.
    pub fn from_u8(b: u8) -> Option<Precedence> {
        match b {
            0 => Some(Precedence::Routine),
            1 => Some(Precedence::Priority),
            2 => Some(Precedence::Immediate),
            3 => Some(Precedence::Flash),
            _ => None,
        }
    }

    /// Lowercase name, as used in the CLI and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Precedence::Routine => "routine",
            Precedence::Priority => "priority",
            Precedence::Immediate => "immediate",
            Precedence::Flash => "flash",
        }
    }

    /// Parses a name, case-insensitively; single letters (`z`, `o`, `p`, `r`) are the
    /// traditional prosigns and are accepted too.
    pub fn parse(s: &str) -> Result<Precedence, ParsePrecedenceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "flash" | "z" => Ok(Precedence::Flash),
            "immediate" | "o" => Ok(Precedence::Immediate),
            "priority" | "p" => Ok(Precedence::Priority),
            "routine" | "r" => Ok(Precedence::Routine),
            _ => Err(ParsePrecedenceError(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Precedence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precedence {
    type Err = ParsePrecedenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precedence::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_round_trip() {
        assert!(Precedence::Flash > Precedence::Immediate);
        assert!(Precedence::Immediate > Precedence::Priority);
        assert!(Precedence::Priority > Precedence::Routine);
        for p in Precedence::ALL {
            assert_eq!(Precedence::from_u8(p.as_u8()), Some(p));
            assert_eq!(Precedence::parse(p.name()).unwrap(), p);
        }
        assert_eq!(Precedence::from_u8(4), None);
        assert!(Precedence::parse("urgent").is_err());
    }
}
