//! Identities proven by X.509 certificates, and the rules that map them to configured peers.
//!
//! A chain is verified by the TLS library (OpenSSL for DTLS, rustls for TLS) against the
//! configured CAs; this module reads the verified leaf (subject CN, SAN DNS names, SAN URIs,
//! the SHA-256 of its SubjectPublicKeyInfo for pinning) and records which trust anchor the
//! chain verified to, so a rule can be scoped to the anchors trusted for one peer
//! ([`ScopedRule`]). Parsing uses OpenSSL, which the DTLS edge needs anyway.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use openssl::nid::Nid;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreRef;
use openssl::x509::{X509, X509Ref, X509StoreContext};

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertIdentity {
    pub subject_cn: Option<String>,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// SHA-256 of the DER trust anchor (CA certificate) the chain was verified to, as
    /// recorded by the transport; `None` when none was recorded. [`ScopedRule`] admits only
    /// anchors it lists, so `None` is trusted by no scoped rule.
    pub trust_anchor: Option<[u8; 32]>,
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
            trust_anchor: None,
        })
    }

    /// This identity with the trust anchor its chain verified to.
    pub fn with_trust_anchor(mut self, anchor: Option<[u8; 32]>) -> CertIdentity {
        self.trust_anchor = anchor;
        self
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

/// The fingerprint that names a trust anchor: SHA-256 of its DER encoding.
pub fn anchor_fingerprint(anchor: &X509Ref) -> Option<[u8; 32]> {
    anchor.to_der().ok().map(|der| openssl::sha::sha256(&der))
}

/// The anchor at the top of a verified chain (leaf first, anchor last).
pub fn chain_anchor<'a>(chain: impl IntoIterator<Item = &'a X509Ref>) -> Option<[u8; 32]> {
    chain.into_iter().last().and_then(anchor_fingerprint)
}

/// Verifies `leaf` (with the `intermediates` the peer sent) against `store` and returns the
/// fingerprint of the anchor it chains to; `None` if it does not verify. For a transport
/// whose library does not say which anchor it used (rustls).
pub fn verified_anchor(
    store: &X509StoreRef,
    leaf: &X509Ref,
    intermediates: &[X509],
) -> Option<[u8; 32]> {
    let mut chain = Stack::new().ok()?;
    for cert in intermediates {
        chain.push(cert.clone()).ok()?;
    }
    let mut ctx = X509StoreContext::new().ok()?;
    ctx.init(store, leaf, &chain, |c| {
        if c.verify_cert()? {
            Ok(c.chain().and_then(chain_anchor))
        } else {
            Ok(None)
        }
    })
    .ok()
    .flatten()
}

/// The trust anchors a peer's chain may verify to, by fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchors(BTreeSet<[u8; 32]>);

impl Anchors {
    /// The set of these anchors' fingerprints.
    pub fn of<'a>(certs: impl IntoIterator<Item = &'a X509>) -> Anchors {
        Anchors(
            certs
                .into_iter()
                .filter_map(|c| anchor_fingerprint(c))
                .collect(),
        )
    }

    /// Both sets.
    pub fn union(&self, other: &Anchors) -> Anchors {
        Anchors(self.0.union(&other.0).copied().collect())
    }

    /// Whether `anchor` is one of them (`None` never is).
    pub fn contains(&self, anchor: Option<&[u8; 32]>) -> bool {
        anchor.is_some_and(|a| self.0.contains(a))
    }
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

/// A [`CertRule`] that counts only for chains verified to one of `anchors`: a server's
/// rule with the gateway's CA and that server's own `ca`, so another server's CA cannot
/// vouch for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedRule {
    pub rule: CertRule,
    pub anchors: Anchors,
}

impl ScopedRule {
    /// The chain verified to one of our anchors, and the rule matches.
    pub fn admits(&self, id: &CertIdentity) -> bool {
        self.anchors.contains(id.trust_anchor.as_ref()) && self.rule.matches(id)
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
            trust_anchor: None,
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

    #[test]
    fn a_scoped_rule_admits_only_chains_verified_to_its_anchors() {
        let ours = Pki::new_ca("gateway CA").unwrap();
        let theirs = Pki::new_ca("server C's CA").unwrap();
        let issue = |pki: &Pki| {
            pki.issue(
                "serverA",
                &["serverA.example"],
                &[],
                &[],
                Profile::Client,
                30,
            )
            .unwrap()
            .cert
        };
        let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
        store.add_cert(ours.ca.cert.clone()).unwrap();
        store.add_cert(theirs.ca.cert.clone()).unwrap();
        let store = store.build();
        let identity = |cert: &X509| {
            let anchor = verified_anchor(&store, cert, &[]);
            CertIdentity::from_x509(cert)
                .unwrap()
                .with_trust_anchor(anchor)
        };
        let server_a = ScopedRule {
            rule: CertRule {
                matcher: "san-dns:serverA.example".parse().unwrap(),
                spki_sha256: None,
            },
            anchors: Anchors::of([&ours.ca.cert]),
        };
        let genuine = identity(&issue(&ours));
        assert_eq!(genuine.trust_anchor, anchor_fingerprint(&ours.ca.cert));
        assert!(server_a.admits(&genuine));
        let impostor = identity(&issue(&theirs));
        assert_eq!(impostor.trust_anchor, anchor_fingerprint(&theirs.ca.cert));
        assert!(server_a.rule.matches(&impostor), "same name");
        assert!(!server_a.admits(&impostor), "another server's CA");
        let unrecorded = CertIdentity::from_x509(&issue(&ours)).unwrap();
        assert!(
            !server_a.admits(&unrecorded),
            "no anchor recorded: fail closed"
        );
        let foreign = Pki::new_ca("foreign").unwrap();
        assert_eq!(verified_anchor(&store, &issue(&foreign), &[]), None);
    }
}
