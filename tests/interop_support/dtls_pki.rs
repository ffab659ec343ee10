//! Interop over DTLS 1.2 with X.509 certificates (`coaps://`, libcoap's PKI mode): a gateway
//! fixture whose `coaps://` listener offers the committed gateway certificate next to PSK,
//! and helpers for `coap-server-openssl -c/-j/-C` devices read over DTLS.
//!
//! Peer behaviours accounted for (libcoap 4.3.1):
//! * `coap-client-openssl -c CERT -j KEY -C CA coaps://...` runs a DTLS PKI handshake,
//!   verifying the gateway's chain against `-C`; with `-v 6` it prints the PDUs as over PSK.
//!   A refused handshake, like a 4.xx, still exits 0: assert on what it prints.
//! * `coap-server-openssl -c/-j/-C -p P` serves DTLS (and TLS) on P+1 with the certificate,
//!   verifies the client's chain against `-C`, and serves plain UDP (and TCP) on P; `-d 50`
//!   resources created over UDP on P are the same ones DTLS on P+1 answers from.
//! * Both log the peer's chain as `CN '...' presented by client|server (CA|Certificate)`,
//!   the leaf under its first SAN DNS name (`gateway.example`, not CN `gateway`), and mark
//!   the session's transport on the surrounding lines (`DTLS:` vs `TLS :`); a TLS
//!   readiness probe presenting the gateway's certificate logs the same CN line, so
//!   [`dtls_cns_presented`] only counts lines inside a DTLS handshake. coap-server logs
//!   `DTLS: Using PKI ciphers` when a client offers certificate suites.

use std::path::Path;

use privgw::config::{Config, EndpointUri, Scheme};
use privgw::gateway::Gateway;

use super::stream::{StreamDevice, cert, key, push_stream_devices};
use super::{SSID_A, SSID_B, Scratch};

/// Gateway config: `coaps://` and `coap://` listeners, the committed gateway certificate;
/// server A known by `san-dns:serverA.example` and by PSK serverA/secretA, server B by PSK;
/// the given lwm2m devices (with their extra TOML lines) in group G1.
pub fn dtls_pki_gateway_toml(store: &Path, devices: &[StreamDevice]) -> String {
    let mut toml = format!(
        r#"[gateway]
listen = ["coaps://127.0.0.1:0", "coap://127.0.0.1:0"]
store = {store:?}
device_timeout_ms = 5000
cert = {:?}
key = {:?}
ca = {:?}

[[servers]]
id = "ServerA"
ssid = {SSID_A}
cert_match = "san-dns:serverA.example"
psk_identity = "serverA"
psk_key = "secretA"

[[servers]]
id = "ServerB"
ssid = {SSID_B}
psk_identity = "serverB"
psk_key = "secretB"
"#,
        cert("gateway"),
        key("gateway"),
        cert("ca"),
    );
    push_stream_devices(&mut toml, devices);
    toml
}

/// The in-process gateway on `coaps://` (PSK and certificates) and `coap://`.
pub struct DtlsPkiGateway {
    pub gateway: Gateway,
    pub coaps: EndpointUri,
}

impl DtlsPkiGateway {
    pub async fn start(scratch: &Scratch, devices: &[StreamDevice]) -> DtlsPkiGateway {
        let toml = dtls_pki_gateway_toml(&scratch.path().join("privgw.redb"), devices);
        let config =
            Config::parse(&toml).unwrap_or_else(|e| panic!("gateway config rejected: {e}\n{toml}"));
        let gateway = Gateway::start(config).await.expect("start the gateway");
        let coaps = *gateway
            .listeners()
            .iter()
            .find(|l| l.scheme == Scheme::Coaps)
            .expect("coaps listener bound");
        DtlsPkiGateway { gateway, coaps }
    }

    /// `coaps://127.0.0.1:PORT<path>`
    pub fn coaps_url(&self, path: &str) -> String {
        format!("coaps://{}{path}", self.coaps.addr)
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
    }
}

/// The certificate subjects libcoap logged as `CN '...' presented by <by> (Certificate)`
/// inside a DTLS handshake: the nearest preceding session line must be a `DTLS:` one (not
/// `TLS :`), so a TLS readiness probe's certificate does not count.
pub fn dtls_cns_presented(log: &str, by: &str) -> Vec<String> {
    let needle = format!("' presented by {by} (Certificate)");
    let mut transport_is_dtls = false;
    let mut cns = Vec::new();
    for line in log.lines() {
        if line.contains(" DTLS: ") {
            transport_is_dtls = true;
        } else if line.contains(" TLS : ") {
            transport_is_dtls = false;
        }
        if let Some((_, rest)) = line.split_once("CN '") {
            if let Some((cn, _)) = rest.split_once(&needle) {
                if transport_is_dtls {
                    cns.push(cn.to_owned());
                }
            }
        }
    }
    cns
}

/// Whether libcoap logged a DTLS handshake with certificate suites (`DTLS: Using PKI
/// ciphers`, logged by coap-server at `-v 7`).
pub fn dtls_pki_handshake_logged(log: &str) -> bool {
    log.lines().any(|l| l.contains(" DTLS: Using PKI ciphers"))
}
