//! A test PKI made with OpenSSL: an EC P-256 CA and the certificates it issues (gateway,
//! servers, devices). Used by `privgw certs` to write `certs/` and by tests that need fresh
//! keys, expired certificates or a foreign CA. Test material only: keys are written
//! unencrypted.

use std::net::IpAddr;
use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("OpenSSL: {0}")]
    Ssl(#[from] ErrorStack),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What a certificate may be used for (its Extended Key Usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// TLS server only.
    Server,
    /// TLS client only.
    Client,
    /// Both: gateways and devices act in both roles.
    Both,
}

/// A certificate with its private key.
#[derive(Clone)]
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issued {
    pub fn cert_pem(&self) -> Result<Vec<u8>, PkiError> {
        Ok(self.cert.to_pem()?)
    }

    /// The key as unencrypted PKCS#8 PEM.
    pub fn key_pem(&self) -> Result<Vec<u8>, PkiError> {
        Ok(self.key.private_key_to_pem_pkcs8()?)
    }

    /// SHA-256 of the SubjectPublicKeyInfo, hex (the value of `spki_sha256` in the config).
    pub fn spki_sha256_hex(&self) -> Result<String, PkiError> {
        let spki = self.key.public_key_to_der()?;
        Ok(crate::transport::cert::hex(&openssl::sha::sha256(&spki)))
    }

    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), PkiError> {
        write(&dir.join(format!("{name}.pem")), &self.cert_pem()?)?;
        write(&dir.join(format!("{name}.key")), &self.key_pem()?)
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, bytes).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn p256_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn serial() -> Result<openssl::asn1::Asn1Integer, ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

/// A certificate authority.
pub struct Pki {
    pub ca: Issued,
}

impl Pki {
    /// A new self-signed CA valid for ten years.
    pub fn new_ca(common_name: &str) -> Result<Pki, PkiError> {
        let key = p256_key()?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let serial = serial()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
        b.set_not_after(Asn1Time::days_from_now(3650)?.as_ref())?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok(Pki {
            ca: Issued {
                cert: b.build(),
                key,
            },
        })
    }

    /// Issues an end-entity certificate valid from now for `days` days (a negative `days`
    /// gives a certificate that has already expired, for tests).
    pub fn issue(
        &self,
        common_name: &str,
        dns: &[&str],
        uris: &[&str],
        ips: &[IpAddr],
        profile: Profile,
        days: i64,
    ) -> Result<Issued, PkiError> {
        let key = p256_key()?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let (not_before, not_after) = if days >= 0 {
            (now - 60, now + days * 86_400)
        } else {
            (now + (days - 1) * 86_400, now + days * 86_400)
        };
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let serial = serial()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(self.ca.cert.subject_name())?;
        b.set_pubkey(&key)?;
        b.set_not_before(Asn1Time::from_unix(not_before)?.as_ref())?;
        b.set_not_after(Asn1Time::from_unix(not_after)?.as_ref())?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()?,
        )?;
        let mut eku = ExtendedKeyUsage::new();
        match profile {
            Profile::Server => eku.server_auth(),
            Profile::Client => eku.client_auth(),
            Profile::Both => eku.server_auth().client_auth(),
        };
        b.append_extension(eku.build()?)?;
        if !(dns.is_empty() && uris.is_empty() && ips.is_empty()) {
            let mut san = SubjectAlternativeName::new();
            for d in dns {
                san.dns(d);
            }
            for u in uris {
                san.uri(u);
            }
            for ip in ips {
                san.ip(&ip.to_string());
            }
            let ext = san.build(&b.x509v3_context(Some(&self.ca.cert), None))?;
            b.append_extension(ext)?;
        }
        let ski =
            SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&self.ca.cert), None))?;
        b.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&self.ca.cert), None))?;
        b.append_extension(aki)?;
        b.sign(&self.ca.key, MessageDigest::sha256())?;
        Ok(Issued {
            cert: b.build(),
            key,
        })
    }
}

/// The files `privgw certs` writes: a CA, the gateway, servers A–C and devices A–C, all
/// EC P-256, valid ten years. Returns the names written (without extension).
pub fn write_test_pki(dir: &Path) -> Result<Vec<String>, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let pki = Pki::new_ca("privgw test CA")?;
    pki.ca.write(dir, "ca")?;
    let loopback: [IpAddr; 2] = [
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    let mut names = vec!["ca".to_owned()];
    let days = 3650;
    let gateway = pki.issue(
        "gateway",
        &["gateway.example", "localhost"],
        &[],
        &loopback,
        Profile::Both,
        days,
    )?;
    gateway.write(dir, "gateway")?;
    names.push("gateway".into());
    for s in ["serverA", "serverB", "serverC"] {
        let dns = format!("{s}.example");
        pki.issue(s, &[&dns], &[], &[], Profile::Both, days)?
            .write(dir, s)?;
        names.push(s.into());
    }
    for d in ["devA", "devB", "devC"] {
        let dns = format!("{d}.example");
        pki.issue(d, &[&dns, "localhost"], &[], &loopback, Profile::Both, days)?
            .write(dir, d)?;
        names.push(d.into());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509VerifyResult};

    fn verify(ca: &X509, cert: &X509) -> X509VerifyResult {
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca.clone()).unwrap();
        let store = store.build();
        let chain = openssl::stack::Stack::new().unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, cert, &chain, |c| {
            c.verify_cert()?;
            Ok(c.error())
        })
        .unwrap()
    }

    #[test]
    fn issued_certificates_verify_against_their_ca_only() {
        let pki = Pki::new_ca("CA one").unwrap();
        let other = Pki::new_ca("CA two").unwrap();
        let leaf = pki
            .issue("devA", &["devA.example"], &[], &[], Profile::Both, 30)
            .unwrap();
        assert_eq!(verify(&pki.ca.cert, &leaf.cert), X509VerifyResult::OK);
        assert_ne!(verify(&other.ca.cert, &leaf.cert), X509VerifyResult::OK);
    }

    #[test]
    fn negative_days_give_an_expired_certificate() {
        let pki = Pki::new_ca("CA").unwrap();
        let leaf = pki
            .issue("old", &["old.example"], &[], &[], Profile::Client, -1)
            .unwrap();
        let result = verify(&pki.ca.cert, &leaf.cert);
        assert_eq!(
            result.as_raw(),
            10,
            "X509_V_ERR_CERT_HAS_EXPIRED, got {result:?}"
        );
    }

    #[test]
    fn test_pki_writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let names = write_test_pki(dir.path()).unwrap();
        assert_eq!(names.len(), 8);
        for n in names {
            assert!(dir.path().join(format!("{n}.pem")).exists());
            assert!(dir.path().join(format!("{n}.key")).exists());
        }
    }
}
