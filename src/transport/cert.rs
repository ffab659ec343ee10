//! Identities proven by X.509 certificates, and the rules that map them to configured peers.
//!
//! A chain is verified by the TLS library (OpenSSL for DTLS, rustls for TLS) against the
//! configured CA; this module only reads the verified leaf: subject CN, SAN DNS names, SAN
//! URIs, and the SHA-256 of its SubjectPublicKeyInfo (for pinning). Parsing uses OpenSSL,
//! which the DTLS edge needs anyway.

use std::fmt;
use std::str::FromStr;

use openssl::nid::Nid;
use openssl::x509::{X509, X509Ref};

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertIdentity {
    pub subject_cn: Option<String>,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read certificate: {0}")]
pub struct CertError(#[from] openssl::error::ErrorStack);

impl CertIdentity {
    pub fn from_x509(cert: &X509Ref) -> Result<CertIdentity, CertError> {
        let subject_cn = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok());
        let mut san_dns = Vec::new();
        let mut san_uri = Vec::new();
        if let Some(names) = cert.subject_alt_names() {
            for name in &names {
                if let Some(d) = name.dnsname() {
                    san_dns.push(d.to_owned());
                } else if let Some(u) = name.uri() {
                    san_uri.push(u.to_owned());
                }
            }
        }
        let spki = cert.public_key()?.public_key_to_der()?;
        Ok(CertIdentity {
            subject_cn,
            san_dns,
            san_uri,
            spki_sha256: openssl::sha::sha256(&spki),
        })
    }

    pub fn from_der(der: &[u8]) -> Result<CertIdentity, CertError> {
        let cert = X509::from_der(der)?;
        CertIdentity::from_x509(&cert)
    }

    /// A short readable name for logs: the first SAN DNS name, else the CN.
    pub fn display_name(&self) -> String {
        self.san_dns
            .first()
            .or(self.san_uri.first())
            .or(self.subject_cn.as_ref())
            .cloned()
            .unwrap_or_else(|| format!("spki:{}", hex(&self.spki_sha256)))
    }
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which field of a certificate names the peer (`cert_match` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertMatch {
    /// `san-dns:NAME` — a SAN dNSName equal to NAME (ASCII case-insensitive).
    SanDns(String),
    /// `san-uri:URI` — a SAN uniformResourceIdentifier equal to URI.
    SanUri(String),
    /// `cn:NAME` — the subject common name equal to NAME.
    Cn(String),
}

impl FromStr for CertMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not san-dns:NAME, san-uri:URI or cn:NAME"))?;
        if value.is_empty() {
            return Err(format!("'{s}' names nothing"));
        }
        match kind {
            "san-dns" => Ok(CertMatch::SanDns(value.to_owned())),
            "san-uri" => Ok(CertMatch::SanUri(value.to_owned())),
            "cn" => Ok(CertMatch::Cn(value.to_owned())),
            other => Err(format!(
                "'{other}' is not a certificate field (san-dns, san-uri, cn)"
            )),
        }
    }
}

impl fmt::Display for CertMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertMatch::SanDns(v) => write!(f, "san-dns:{v}"),
            CertMatch::SanUri(v) => write!(f, "san-uri:{v}"),
            CertMatch::Cn(v) => write!(f, "cn:{v}"),
        }
    }
}

/// How a configured peer is recognised by its certificate: a name match and an optional
/// SPKI pin (both must hold).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertRule {
    pub matcher: CertMatch,
    pub spki_sha256: Option<[u8; 32]>,
}

impl CertRule {
    pub fn matches(&self, id: &CertIdentity) -> bool {
        let named = match &self.matcher {
            CertMatch::SanDns(n) => id.san_dns.iter().any(|d| d.eq_ignore_ascii_case(n)),
            CertMatch::SanUri(u) => id.san_uri.iter().any(|x| x == u),
            CertMatch::Cn(n) => id.subject_cn.as_deref() == Some(n.as_str()),
        };
        named && self.spki_sha256.is_none_or(|pin| pin == id.spki_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Pki, Profile};

    #[test]
    fn identity_reads_cn_sans_and_spki() {
        let pki = Pki::new_ca("Test CA").unwrap();
        let issued = pki
            .issue(
                "serverA",
                &["serverA.example"],
                &["coap://serverA"],
                &[],
                Profile::Client,
                30,
            )
            .unwrap();
        let id = CertIdentity::from_x509(&issued.cert).unwrap();
        assert_eq!(id.subject_cn.as_deref(), Some("serverA"));
        assert_eq!(id.san_dns, vec!["serverA.example"]);
        assert_eq!(id.san_uri, vec!["coap://serverA"]);
        let spki = issued.key.public_key_to_der().unwrap();
        assert_eq!(id.spki_sha256, openssl::sha::sha256(&spki));
        assert_eq!(id.display_name(), "serverA.example");
    }

    #[test]
    fn rules_match_by_field_and_pin() {
        let id = CertIdentity {
            subject_cn: Some("serverA".into()),
            san_dns: vec!["ServerA.Example".into()],
            san_uri: vec![],
            spki_sha256: [7; 32],
        };
        let rule = |m: &str, pin: Option<[u8; 32]>| CertRule {
            matcher: m.parse().unwrap(),
            spki_sha256: pin,
        };
        assert!(rule("san-dns:servera.example", None).matches(&id));
        assert!(rule("cn:serverA", Some([7; 32])).matches(&id));
        assert!(
            !rule("cn:serverA", Some([8; 32])).matches(&id),
            "pin mismatch"
        );
        assert!(!rule("cn:serverB", None).matches(&id));
        assert!(!rule("san-uri:coap://serverA", None).matches(&id));
        assert!("dns:x".parse::<CertMatch>().is_err());
        assert!("cn:".parse::<CertMatch>().is_err());
    }
}
