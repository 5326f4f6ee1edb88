//! Credentials: an authority's signed statement of a node's attributes, verifiable
//! offline, with an expiry; and the local list of authorities a node trusts.
//!
//! The signed bytes are `"fieldmesh/credential/v1\n"` followed by the body as JSON with
//! its fields in declaration order and attributes sorted (a `BTreeMap`), so a verifier
//! re-derives them exactly from the parsed body.

use crate::NodeKey;
use fieldmesh_core::{NodeId, Signer};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

const DOMAIN: &[u8] = b"fieldmesh/credential/v1\n";
const DAY_MS: u64 = 86_400_000;

/// What an authority asserts about a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    /// Format version (1).
    pub version: u32,
    /// The authority's public key.
    pub authority: NodeId,
    /// The authority's name, for people (not trusted by itself).
    pub authority_name: String,
    /// The node the attributes belong to.
    pub subject: NodeId,
    /// Attributes: nation, clearance, role, unit...
    pub attributes: BTreeMap<String, String>,
    /// Issued at, milliseconds since the Unix epoch.
    pub issued_ms: u64,
    /// Not valid from this instant on.
    pub expires_ms: u64,
}

/// A signed credential, as written to a file and carried in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// What is asserted.
    pub credential: CredentialBody,
    /// Ed25519 signature by `credential.authority`, hex.
    pub signature: String,
}

/// A credential is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Not a credential file.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// The signature does not verify: forged or altered.
    #[error(
        "credential for {subject} does not verify against authority {authority}: forged or altered"
    )]
    BadSignature {
        /// Claimed subject.
        subject: String,
        /// Claimed authority.
        authority: String,
    },
    /// Past its expiry.
    #[error("credential for {subject} expired on {expired}")]
    Expired {
        /// Subject.
        subject: String,
        /// Expiry date, UTC.
        expired: String,
    },
    /// Issued in the future (clock skew beyond a day, or a forgery).
    #[error("credential for {subject} is issued in the future ({issued})")]
    NotYetValid {
        /// Subject.
        subject: String,
        /// Issue date, UTC.
        issued: String,
    },
    /// This node does not trust the signer.
    #[error(
        "credential for {subject} is signed by {authority_name} ({authority}), an authority this node does not trust (see `fieldmesh authority trust`)"
    )]
    Untrusted {
        /// Subject.
        subject: String,
        /// Authority name as claimed.
        authority_name: String,
        /// Authority id.
        authority: String,
    },
    /// The authority is trusted, but not to assert this attribute value.
    #[error(
        "authority {authority_name} may not assert {attribute}={value} (trusted only for {attribute} in [{allowed}])"
    )]
    OutOfScope {
        /// Authority.
        authority_name: String,
        /// Attribute name.
        attribute: String,
        /// Asserted value.
        value: String,
        /// What the trust allows.
        allowed: String,
    },
    /// An attribute name or value is not allowed.
    #[error(
        "bad attribute {0:?}: names are lower_case, values are letters, digits, '_', '-' or '.' (1-64 characters)"
    )]
    BadAttribute(String),
}

/// Checks the shape of one attribute.
pub fn check_attribute(name: &str, value: &str) -> Result<(), CredentialError> {
    let name_ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|c| c.is_ascii_lowercase() || c == b'_');
    let value_ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(CredentialError::BadAttribute(format!("{name}={value}")))
    }
}

impl CredentialBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = DOMAIN.to_vec();
        out.extend_from_slice(&serde_json::to_vec(self).expect("a credential body serialises"));
        out
    }
}

impl Credential {
    /// Issues a credential signed by `authority`.
    pub fn issue(
        authority: &NodeKey,
        authority_name: &str,
        subject: NodeId,
        attributes: BTreeMap<String, String>,
        issued_ms: u64,
        expires_ms: u64,
    ) -> Result<Credential, CredentialError> {
        for (k, v) in &attributes {
            check_attribute(k, v)?;
        }
        if expires_ms <= issued_ms {
            return Err(CredentialError::Malformed(
                "expiry is not after issue".into(),
            ));
        }
        let body = CredentialBody {
            version: 1,
            authority: authority.node_id(),
            authority_name: authority_name.to_owned(),
            subject,
            attributes,
            issued_ms,
            expires_ms,
        };
        let sig = authority.sign(&body.signed_bytes());
        Ok(Credential {
            credential: body,
            signature: hex::encode(sig),
        })
    }

    /// Parses a credential file's bytes (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Credential, CredentialError> {
        serde_json::from_slice(bytes).map_err(|e| CredentialError::Malformed(e.to_string()))
    }

    /// The credential as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a credential serialises")
    }

    /// Checks the signature and the validity period at `now_ms`, trusting nobody in
    /// particular: what any node can check offline.
    pub fn verify(&self, now_ms: u64) -> Result<(), CredentialError> {
        let b = &self.credential;
        if b.version != 1 {
            return Err(CredentialError::Malformed(format!(
                "version {} is not supported",
                b.version
            )));
        }
        for (k, v) in &b.attributes {
            check_attribute(k, v)?;
        }
        let sig = hex::decode(&self.signature).map_err(|_| CredentialError::BadSignature {
            subject: b.subject.short(),
            authority: b.authority.short(),
        })?;
        UnparsedPublicKey::new(&ED25519, b.authority.as_bytes())
            .verify(&b.signed_bytes(), &sig)
            .map_err(|_| CredentialError::BadSignature {
                subject: b.subject.short(),
                authority: b.authority.short(),
            })?;
        if now_ms >= b.expires_ms {
            return Err(CredentialError::Expired {
                subject: b.subject.short(),
                expired: format_date(b.expires_ms),
            });
        }
        if b.issued_ms > now_ms + DAY_MS {
            return Err(CredentialError::NotYetValid {
                subject: b.subject.short(),
                issued: format_date(b.issued_ms),
            });
        }
        Ok(())
    }

    /// [`Credential::verify`], then checks that a trusted authority signed it within its
    /// scope.
    pub fn verify_trusted(
        &self,
        now_ms: u64,
        trust: &[TrustedAuthority],
    ) -> Result<(), CredentialError> {
        self.verify(now_ms)?;
        let b = &self.credential;
        let Some(t) = trust.iter().find(|t| t.id == b.authority) else {
            return Err(CredentialError::Untrusted {
                subject: b.subject.short(),
                authority_name: b.authority_name.clone(),
                authority: b.authority.short(),
            });
        };
        for (attr, allowed) in &t.scope {
            if let Some(v) = b.attributes.get(attr)
                && !allowed.contains(v)
            {
                return Err(CredentialError::OutOfScope {
                    authority_name: t.name.clone(),
                    attribute: attr.clone(),
                    value: v.clone(),
                    allowed: allowed.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// An authority this node trusts, optionally only for some attribute values (a partner
/// nation's authority may assert `nation=JPN` and nothing else for `nation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedAuthority {
    /// Local name.
    pub name: String,
    /// Its public key.
    pub id: NodeId,
    /// Attribute name -> values it may assert. Attributes not listed are unrestricted.
    #[serde(default)]
    pub scope: BTreeMap<String, Vec<String>>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses `YYYY-MM-DD` as midnight UTC, in milliseconds since the Unix epoch.
pub fn parse_date(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a date: use YYYY-MM-DD");
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > 31 {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return Err(format!("{s:?} is not a day of the calendar"));
    }
    Ok(days as u64 * DAY_MS)
}

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DD` (UTC).
pub fn format_date(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("nation".to_string(), "JPN".to_string()),
            ("clearance".to_string(), "SECRET".to_string()),
        ])
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2027-06-01").unwrap(), 1_811_808_000_000);
        assert_eq!(format_date(1_811_808_000_000), "2027-06-01");
        assert_eq!(format_date(parse_date("2028-02-29").unwrap()), "2028-02-29");
        assert!(parse_date("2027-02-29").unwrap_err().contains("not a day"));
        assert!(parse_date("2027-6-1").is_err());
        assert!(parse_date("tomorrow").is_err());
    }

    #[test]
    fn issue_verify_forge_expire_trust() {
        let auth = NodeKey::from_seed([7; 32]);
        let subject = NodeKey::from_seed([8; 32]).node_id();
        let now = parse_date("2026-12-01").unwrap();
        let exp = parse_date("2027-06-01").unwrap();
        let c = Credential::issue(&auth, "JPN", subject, attrs(), now, exp).unwrap();
        let back = Credential::from_json(c.to_json().as_bytes()).unwrap();
        assert_eq!(back, c);
        back.verify(now).unwrap();

        let mut forged = c.clone();
        forged
            .credential
            .attributes
            .insert("clearance".into(), "TOP_SECRET".into());
        assert!(matches!(
            forged.verify(now),
            Err(CredentialError::BadSignature { .. })
        ));

        let e = c.verify(exp).unwrap_err().to_string();
        assert!(e.contains("expired on 2027-06-01"), "{e}");

        let e = c.verify_trusted(now, &[]).unwrap_err();
        assert!(matches!(e, CredentialError::Untrusted { .. }));
        let scoped = TrustedAuthority {
            name: "JPN".into(),
            id: auth.node_id(),
            scope: BTreeMap::from([("nation".to_string(), vec!["JPN".to_string()])]),
        };
        c.verify_trusted(now, std::slice::from_ref(&scoped))
            .unwrap();
        let mut a = attrs();
        a.insert("nation".into(), "USA".into());
        let overreach = Credential::issue(&auth, "JPN", subject, a, now, exp).unwrap();
        let e = overreach
            .verify_trusted(now, &[scoped])
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not assert nation=USA"), "{e}");

        assert!(Credential::from_json(b"{}").is_err());
        let mut bad = attrs();
        bad.insert("Nation".into(), "x y".into());
        assert!(Credential::issue(&auth, "JPN", subject, bad, now, exp).is_err());
    }
}
