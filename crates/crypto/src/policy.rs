//! Compartment policies: boolean expressions over credential attributes.
//!
//! ```text
//! expr   := or
//! or     := and ("or" and)*
//! and    := not ("and" not)*
//! not    := "not" not | atom
//! atom   := "(" expr ")" | NAME "in" "[" VALUE ("," VALUE)* "]" | NAME OP VALUE
//! OP     := "==" | "!=" | ">=" | "<=" | ">" | "<"
//! ```
//!
//! `clearance` is ordered UNCLASSIFIED < CUI < CONFIDENTIAL < SECRET < TOP_SECRET; other
//! attributes order as integers when both sides are integers. A comparison that cannot be
//! ordered, or names an attribute the credential lacks, is unknown, and so is `not` of
//! anything unknown: `and` is false if any part is false, `or` true if any part is true,
//! and a policy grants only when it comes out true. So it only ever grants on evidence:
//! `not nation in [RUS]` does not admit a credential that says nothing of its nation (an
//! authority can always leave an attribute out). Unknown clearance levels are refused
//! when the policy is parsed.
//!
//! ```
//! use fieldmesh_crypto::Policy;
//! use std::collections::BTreeMap;
//! let p: Policy = "nation in [USA, JPN] and clearance >= SECRET".parse().unwrap();
//! let attrs = BTreeMap::from([
//!     ("nation".to_string(), "JPN".to_string()),
//!     ("clearance".to_string(), "TOP_SECRET".to_string()),
//! ]);
//! assert!(p.allows(&attrs));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// Clearance levels in ascending order.
pub const CLEARANCE_LEVELS: [&str; 5] = [
    "UNCLASSIFIED",
    "CUI",
    "CONFIDENTIAL",
    "SECRET",
    "TOP_SECRET",
];

/// A policy could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("policy {policy:?}: {reason} (at character {at})")]
pub struct PolicyError {
    policy: String,
    reason: String,
    at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    In(String, Vec<String>),
    Cmp(String, Op, String),
}

/// A parsed policy. Its text form is canonical: parsing [`Policy::to_string`] gives the
/// same policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, (usize, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' => i += 1,
            b'(' => (out.push((i, Tok::LParen)), i += 1).1,
            b')' => (out.push((i, Tok::RParen)), i += 1).1,
            b'[' => (out.push((i, Tok::LBracket)), i += 1).1,
            b']' => (out.push((i, Tok::RBracket)), i += 1).1,
            b',' => (out.push((i, Tok::Comma)), i += 1).1,
            b'=' | b'!' | b'>' | b'<' => {
                let two = b.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'>', true) => Op::Ge,
                    (b'<', true) => Op::Le,
                    (b'>', false) => Op::Gt,
                    (b'<', false) => Op::Lt,
                    _ => return Err((i, format!("unexpected {:?}", c as char))),
                };
                out.push((i, Tok::Op(op)));
                i += if two { 2 } else { 1 };
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_-.".contains(&b[i])) {
                    i += 1;
                }
                out.push((start, Tok::Word(s[start..i].to_owned())));
            }
            _ => {
                return Err((
                    i,
                    format!("unexpected {:?}", s[i..].chars().next().unwrap_or(' ')),
                ));
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [(usize, Tok)],
    pos: usize,
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |t| t.0)
    }
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, (usize, String)> {
        Err((self.at(), reason.into()))
    }
    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w == kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<(), (usize, String)> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(format!("expected {what}"))
        }
    }
    fn value(&mut self) -> Result<String, (usize, String)> {
        match self.peek() {
            Some(Tok::Word(w)) if !["and", "or", "not", "in"].contains(&w.as_str()) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => self.err("expected a value"),
        }
    }
    fn or(&mut self) -> Result<Expr, (usize, String)> {
        let mut v = vec![self.and()?];
        while self.keyword("or") {
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one")
        } else {
            Expr::Or(v)
        })
    }
    fn and(&mut self) -> Result<Expr, (usize, String)> {
        let mut v = vec![self.not()?];
        while self.keyword("and") {
            v.push(self.not()?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one")
        } else {
            Expr::And(v)
        })
    }
    fn not(&mut self) -> Result<Expr, (usize, String)> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<Expr, (usize, String)> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(e);
        }
        let name_at = self.at();
        let name = self
            .value()
            .map_err(|(a, _)| (a, "expected an attribute name".to_owned()))?;
        if !name.bytes().all(|c| c.is_ascii_lowercase() || c == b'_') {
            return Err((name_at, format!("attribute names are lower_case: {name:?}")));
        }
        if self.keyword("in") {
            self.expect(Tok::LBracket, "'['")?;
            let mut values = vec![self.checked(&name)?];
            while self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                values.push(self.checked(&name)?);
            }
            self.expect(Tok::RBracket, "']'")?;
            return Ok(Expr::In(name, values));
        }
        let op = match self.peek() {
            Some(Tok::Op(op)) => *op,
            _ => return self.err(format!("expected an operator or 'in' after {name:?}")),
        };
        self.pos += 1;
        let v = self.checked(&name)?;
        Ok(Expr::Cmp(name, op, v))
    }
    fn checked(&mut self, name: &str) -> Result<String, (usize, String)> {
        let at = self.at();
        let v = self.value()?;
        if name == "clearance" && !CLEARANCE_LEVELS.contains(&v.as_str()) {
            return Err((
                at,
                format!(
                    "unknown clearance {v:?}; levels are {}",
                    CLEARANCE_LEVELS.join(" < ")
                ),
            ));
        }
        Ok(v)
    }
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Policy, PolicyError> {
        let fail = |(at, reason): (usize, String)| PolicyError {
            policy: s.to_owned(),
            reason,
            at,
        };
        let toks = lex(s).map_err(fail)?;
        if toks.is_empty() {
            return Err(fail((0, "empty policy".into())));
        }
        let mut p = Parser {
            toks: &toks,
            pos: 0,
            end: s.len(),
        };
        let expr = p.or().map_err(fail)?;
        if p.pos != toks.len() {
            return Err(fail((p.at(), "unexpected text after the policy".into())));
        }
        Ok(Policy { expr })
    }
}

fn rank(name: &str, v: &str) -> Option<i128> {
    if name == "clearance" {
        return CLEARANCE_LEVELS
            .iter()
            .position(|l| *l == v)
            .map(|p| p as i128);
    }
    v.parse().ok()
}

/// `or` (`decides` true) or `and` (`decides` false) of three-valued parts: the deciding
/// value if any part has it, else unknown if any part is unknown.
fn kleene(parts: impl Iterator<Item = Option<bool>>, decides: bool) -> Option<bool> {
    let mut unknown = false;
    for p in parts {
        match p {
            Some(b) if b == decides => return Some(decides),
            None => unknown = true,
            Some(_) => {}
        }
    }
    (!unknown).then_some(!decides)
}

/// Three-valued: `None` is unknown (an attribute missing, or values that do not order).
fn eval(e: &Expr, attrs: &BTreeMap<String, String>) -> Option<bool> {
    match e {
        Expr::Or(v) => kleene(v.iter().map(|e| eval(e, attrs)), true),
        Expr::And(v) => kleene(v.iter().map(|e| eval(e, attrs)), false),
        Expr::Not(e) => eval(e, attrs).map(|b| !b),
        Expr::In(name, values) => attrs.get(name).map(|a| values.contains(a)),
        Expr::Cmp(name, op, v) => {
            let a = attrs.get(name)?;
            match op {
                Op::Eq => Some(a == v),
                Op::Ne => Some(a != v),
                _ => {
                    let (x, y) = (rank(name, a)?, rank(name, v)?);
                    Some(match op {
                        Op::Ge => x >= y,
                        Op::Le => x <= y,
                        Op::Gt => x > y,
                        Op::Lt => x < y,
                        Op::Eq | Op::Ne => unreachable!("handled above"),
                    })
                }
            }
        }
    }
}

impl Policy {
    /// Whether a holder of these attributes satisfies the policy.
    pub fn allows(&self, attrs: &BTreeMap<String, String>) -> bool {
        eval(&self.expr, attrs) == Some(true)
    }
}

fn write_expr(e: &Expr, f: &mut fmt::Formatter<'_>, top: bool) -> fmt::Result {
    let list = |f: &mut fmt::Formatter<'_>, v: &[Expr], sep: &str| -> fmt::Result {
        if !top {
            f.write_str("(")?;
        }
        for (i, e) in v.iter().enumerate() {
            if i > 0 {
                f.write_str(sep)?;
            }
            write_expr(e, f, false)?;
        }
        if !top {
            f.write_str(")")?;
        }
        Ok(())
    };
    match e {
        Expr::Or(v) => list(f, v, " or "),
        Expr::And(v) => list(f, v, " and "),
        Expr::Not(e) => {
            f.write_str("not ")?;
            write_expr(e, f, false)
        }
        Expr::In(n, v) => write!(f, "{n} in [{}]", v.join(", ")),
        Expr::Cmp(n, op, v) => {
            let op = match op {
                Op::Eq => "==",
                Op::Ne => "!=",
                Op::Ge => ">=",
                Op::Le => "<=",
                Op::Gt => ">",
                Op::Lt => "<",
            };
            write!(f, "{n} {op} {v}")
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(&self.expr, f, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evaluates_membership_order_and_logic() {
        let p: Policy = "nation in [USA, JPN] and clearance >= SECRET"
            .parse()
            .unwrap();
        assert!(p.allows(&attrs(&[("nation", "USA"), ("clearance", "SECRET")])));
        assert!(p.allows(&attrs(&[("nation", "JPN"), ("clearance", "TOP_SECRET")])));
        assert!(!p.allows(&attrs(&[("nation", "GBR"), ("clearance", "TOP_SECRET")])));
        assert!(!p.allows(&attrs(&[("nation", "USA"), ("clearance", "CONFIDENTIAL")])));
        assert!(
            !p.allows(&attrs(&[("nation", "USA")])),
            "missing attribute grants nothing"
        );

        let q: Policy = "role == medic or (unit == 1-5 and not nation != USA) or level > 3"
            .parse()
            .unwrap();
        assert!(q.allows(&attrs(&[("role", "medic")])));
        assert!(q.allows(&attrs(&[("unit", "1-5"), ("nation", "USA")])));
        assert!(!q.allows(&attrs(&[("unit", "1-5"), ("nation", "JPN")])));
        assert!(q.allows(&attrs(&[("level", "4")])));
        assert!(
            !q.allows(&attrs(&[("level", "three")])),
            "unordered compares false"
        );
    }

    /// `not` of a missing attribute is not evidence: an authority can leave `nation` out
    /// of a credential, and "not in [RUS, CHN]" must not admit it.
    #[test]
    fn negation_of_the_unknown_grants_nothing() {
        let p: Policy = "clearance >= SECRET and not nation in [RUS, CHN]"
            .parse()
            .unwrap();
        assert!(p.allows(&attrs(&[("clearance", "SECRET"), ("nation", "USA")])));
        assert!(!p.allows(&attrs(&[("clearance", "SECRET"), ("nation", "RUS")])));
        assert!(
            !p.allows(&attrs(&[("clearance", "SECRET")])),
            "nation unknown"
        );
        let q: Policy = "not level < 3".parse().unwrap();
        assert!(q.allows(&attrs(&[("level", "5")])));
        assert!(!q.allows(&attrs(&[("level", "five")])), "unordered");
        assert!(!q.allows(&attrs(&[])));
        // Unknown parts do not matter where the rest decides.
        let r: Policy = "role == medic or not nation == RUS".parse().unwrap();
        assert!(r.allows(&attrs(&[("role", "medic")])));
        assert!(!r.allows(&attrs(&[("role", "driver")])));
        let s: Policy = "not (nation == RUS and level > 3)".parse().unwrap();
        assert!(
            s.allows(&attrs(&[("nation", "USA")])),
            "false and unknown is false"
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "nation in [USA, JPN] and clearance >= SECRET",
            "a == b or (c != d and not e < 5)",
            "not (x == 1 or y == 2)",
        ] {
            let p: Policy = s.parse().unwrap();
            let again: Policy = p.to_string().parse().unwrap();
            assert_eq!(p, again, "{s} -> {p}");
        }
    }

    #[test]
    fn errors_say_where() {
        let e = "nation in [USA, JPN"
            .parse::<Policy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected ']'"), "{e}");
        let e = "clearance >= SEKRET"
            .parse::<Policy>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown clearance \"SEKRET\"") && e.contains("character 13"),
            "{e}"
        );
        let e = "".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = "nation == USA USA"
            .parse::<Policy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unexpected text"), "{e}");
        let e = "Nation == USA".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("lower_case"), "{e}");
        let e = "nation ~ USA".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("unexpected '~'"), "{e}");
    }
}
