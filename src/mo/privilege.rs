//! One node of `/GwConfig/Privileges/<x>`: its name, its four writable leaves and the two
//! read-only leaves the gateway stamps on a verified write.

use std::fmt;

use crate::acl::dm::DmAcl;
use crate::mo::Value;

/// A privilege node name `<x>`: 1–64 of `[A-Za-z0-9_-]` (safe in a Uri-Path and a redb key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrivilegeName(String);

impl PrivilegeName {
    pub fn new(s: &str) -> Result<Self, PrivilegeError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(PrivilegeName(s.to_owned()))
        } else {
            Err(PrivilegeError::Name(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PrivilegeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetType {
    Device,
    Group,
}

impl TargetType {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Device => "Device",
            TargetType::Group => "Group",
        }
    }

    pub fn parse(s: &str) -> Result<Self, PrivilegeError> {
        match s {
            "Device" => Ok(TargetType::Device),
            "Group" => Ok(TargetType::Group),
            other => Err(PrivilegeError::TargetType(other.to_owned())),
        }
    }
}

/// What can be wrong with a privilege's fields, before any device is asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivilegeError {
    #[error("'{0}' is not a privilege name (1-64 of A-Z a-z 0-9 _ -)")]
    Name(String),
    #[error("TargetType '{0}' is not Device or Group")]
    TargetType(String),
    #[error("URI '{0}' is not a device resource path")]
    Uri(String),
    #[error("ACL: {0}")]
    Acl(String),
    #[error("ACL names '{0}', which is not a server this gateway knows")]
    UnknownServer(String),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("unknown node '{0}'")]
    UnknownNode(String),
    #[error("{0} must be a text string")]
    NotText(String),
    #[error("{0} is read-only")]
    ReadOnly(String),
}

/// A privilege entry: the grant of `acl` on `uri` of the target's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub target_id: String,
    pub target_type: TargetType,
    pub uri: String,
    pub acl: DmAcl,
    /// ServerID of the server whose verified write last changed this entry.
    pub grantor: String,
    /// RFC 3339 time of that verification.
    pub verified_at: String,
}

/// The leaves a server may write.
pub const WRITABLE_LEAVES: [&str; 4] = ["TargetID", "TargetType", "URI", "ACL"];
/// The leaves the gateway stamps.
pub const READ_ONLY_LEAVES: [&str; 2] = ["Grantor", "VerifiedAt"];

/// Checks a device resource path: `/` followed by 1–8 non-empty segments of printable ASCII
/// without `?`, `#`, `&` or spaces. Profiles check their own stricter forms (LwM2M ids).
pub fn check_uri(uri: &str) -> Result<(), PrivilegeError> {
    let bad = || PrivilegeError::Uri(uri.to_owned());
    let rest = uri.strip_prefix('/').ok_or_else(bad)?;
    if uri.len() > 255 {
        return Err(bad());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() > 8 {
        return Err(bad());
    }
    for seg in segments {
        let ok = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'&'));
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

impl Privilege {
    /// The value of a leaf by its node name.
    pub fn leaf(&self, name: &str) -> Option<String> {
        Some(match name {
            "TargetID" => self.target_id.clone(),
            "TargetType" => self.target_type.as_str().to_owned(),
            "URI" => self.uri.clone(),
            "ACL" => self.acl.to_string(),
            "Grantor" => self.grantor.clone(),
            "VerifiedAt" => self.verified_at.clone(),
            _ => return None,
        })
    }

    /// Sets a writable leaf from its text value.
    pub fn set_leaf(&mut self, name: &str, value: &str) -> Result<(), PrivilegeError> {
        match name {
            "TargetID" => {
                crate::config::check_identifier(value)
                    .map_err(|_| PrivilegeError::Missing("a valid TargetID"))?;
                self.target_id = value.to_owned();
            }
            "TargetType" => self.target_type = TargetType::parse(value)?,
            "URI" => {
                check_uri(value)?;
                self.uri = value.to_owned();
            }
            "ACL" => {
                self.acl = DmAcl::parse(value).map_err(|e| PrivilegeError::Acl(e.to_string()))?
            }
            "Grantor" | "VerifiedAt" => return Err(PrivilegeError::ReadOnly(name.to_owned())),
            other => return Err(PrivilegeError::UnknownNode(other.to_owned())),
        }
        Ok(())
    }

    /// Builds an entry from the writable leaves as (name, value) pairs; all four are required
    /// and nothing else is accepted.
    pub fn from_leaves<'a>(
        leaves: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Privilege, PrivilegeError> {
        let mut p = Privilege {
            target_id: String::new(),
            target_type: TargetType::Device,
            uri: String::new(),
            acl: DmAcl::default(),
            grantor: String::new(),
            verified_at: String::new(),
        };
        let mut seen = [false; 4];
        for (name, value) in leaves {
            let idx = WRITABLE_LEAVES
                .iter()
                .position(|l| *l == name)
                .ok_or_else(|| {
                    if READ_ONLY_LEAVES.contains(&name) {
                        PrivilegeError::ReadOnly(name.to_owned())
                    } else {
                        PrivilegeError::UnknownNode(name.to_owned())
                    }
                })?;
            p.set_leaf(name, value)?;
            seen[idx] = true;
        }
        for (i, s) in seen.iter().enumerate() {
            if !s {
                return Err(PrivilegeError::Missing(WRITABLE_LEAVES[i]));
            }
        }
        Ok(p)
    }

    /// The node as a document: the four writable leaves and the two stamps.
    pub fn to_value(&self) -> Value {
        Value::map([
            ("TargetID", Value::text(&self.target_id)),
            ("TargetType", Value::text(self.target_type.as_str())),
            ("URI", Value::text(&self.uri)),
            ("ACL", Value::text(self.acl.to_string())),
            ("Grantor", Value::text(&self.grantor)),
            ("VerifiedAt", Value::text(&self.verified_at)),
        ])
    }

    /// Reads the stored form written by [`Privilege::to_value`].
    pub fn from_stored(v: &Value) -> Result<Privilege, PrivilegeError> {
        let leaf = |k: &'static str| {
            v.get(k)
                .and_then(Value::as_str)
                .ok_or(PrivilegeError::Missing(k))
        };
        let mut p = Privilege::from_leaves(
            WRITABLE_LEAVES
                .iter()
                .map(|k| Ok((*k, leaf(k)?)))
                .collect::<Result<Vec<_>, PrivilegeError>>()?,
        )?;
        p.grantor = leaf("Grantor")?.to_owned();
        p.verified_at = leaf("VerifiedAt")?.to_owned();
        Ok(p)
    }

    /// Builds an entry from a request body: a map of exactly the four writable leaves, as text.
    pub fn from_request(v: &Value) -> Result<Privilege, PrivilegeError> {
        let Value::Map(entries) = v else {
            return Err(PrivilegeError::Missing(
                "a map of TargetID, TargetType, URI, ACL",
            ));
        };
        let mut leaves = Vec::with_capacity(entries.len());
        for (k, x) in entries {
            let text = x
                .as_str()
                .ok_or_else(|| PrivilegeError::NotText(k.clone()))?;
            leaves.push((k.as_str(), text));
        }
        Privilege::from_leaves(leaves)
    }

    /// Whether two entries grant the same thing on the same place (stamps aside).
    pub fn same_grant(&self, other: &Privilege) -> bool {
        self.target_id == other.target_id
            && self.target_type == other.target_type
            && self.uri == other.uri
            && self.acl == other.acl
    }

    /// Whether the target/URI pair differs (a move changes access on both places).
    pub fn moves_from(&self, old: &Privilege) -> bool {
        self.target_id != old.target_id
            || self.target_type != old.target_type
            || self.uri != old.uri
    }
}

/// RFC 3339 UTC timestamp with second precision, e.g. `2026-11-29T10:00:00Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TargetID", "G1"),
            ("TargetType", "Group"),
            ("URI", "/3/0"),
            ("ACL", "Get=ServerB"),
        ]
    }

    #[test]
    fn from_leaves_needs_all_four() {
        let p = Privilege::from_leaves(leaves()).unwrap();
        assert_eq!(p.target_type, TargetType::Group);
        assert_eq!(p.leaf("ACL").unwrap(), "Get=ServerB");
        let mut three = leaves();
        three.pop();
        assert_eq!(
            Privilege::from_leaves(three),
            Err(PrivilegeError::Missing("ACL"))
        );
    }

    #[test]
    fn read_only_and_unknown_leaves_are_refused() {
        let mut l = leaves();
        l.push(("Grantor", "ServerA"));
        assert!(matches!(
            Privilege::from_leaves(l),
            Err(PrivilegeError::ReadOnly(_))
        ));
        let mut l = leaves();
        l.push(("Colour", "blue"));
        assert!(matches!(
            Privilege::from_leaves(l),
            Err(PrivilegeError::UnknownNode(_))
        ));
    }

    #[test]
    fn uris_are_checked() {
        assert!(check_uri("/3/0").is_ok());
        assert!(check_uri("/a/b_c/D").is_ok());
        for bad in ["", "3/0", "/", "/3//0", "/3/0/", "/a b", "/a?b", "/a&b"] {
            assert!(check_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(PrivilegeName::new("p1").is_ok());
        assert!(PrivilegeName::new("").is_err());
        assert!(PrivilegeName::new("a/b").is_err());
        assert!(PrivilegeName::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn stored_form_round_trips() {
        let mut p = Privilege::from_leaves(leaves()).unwrap();
        p.grantor = "ServerA".into();
        p.verified_at = "2026-11-29T10:00:00Z".into();
        let back = Privilege::from_stored(&Value::from_cbor(&p.to_value().to_cbor()).unwrap());
        assert_eq!(back.unwrap(), p);
    }

    #[test]
    fn request_body_must_be_text_leaves() {
        let body = Value::map([("TargetID", Value::Int(3))]);
        assert!(matches!(
            Privilege::from_request(&body),
            Err(PrivilegeError::NotText(_))
        ));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_948_800)),
            "2026-11-29T10:40:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn moves_are_detected() {
        let a = Privilege::from_leaves(leaves()).unwrap();
        let mut b = a.clone();
        b.acl = DmAcl::parse("Get=ServerC").unwrap();
        assert!(!b.moves_from(&a));
        b.uri = "/3/1".into();
        assert!(b.moves_from(&a));
    }
}
