//! `privgw ctl`: a DM-server client for the gateway. [`GatewayClient`] is also what the demo
//! and the integration tests drive the gateway with: real sockets, real DTLS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::{Args, Subcommand};

use crate::cli::CliResult;
use crate::coap::{self, CoapOption, MessageClass, Packet, RequestType, TransportTuning};
use crate::config::{EndpointUri, Scheme, decode_hex};
use crate::lwm2m::content_format;
use crate::mo::Value;
use crate::runtime::{Channel, ChannelError, ChannelSecurity, ChannelTuning, OpenError};
use crate::transport::TransportError;
use crate::transport::dtls::{DtlsClient, PskClientConfig, X509ClientConfig, X509Credentials};
use crate::transport::mux::DatagramMux;
use crate::transport::tls::{TlsClient, TlsCredentials};
use std::sync::Arc;

/// A decoded answer from the gateway.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `2.01`, `4.03`, …
    pub code: String,
    pub location: Option<String>,
    pub content_format: Option<u16>,
    /// The body decoded as a document when it is CBOR or JSON.
    pub document: Option<Value>,
    pub payload: Vec<u8>,
}

impl Reply {
    fn from_packet(p: Packet) -> Reply {
        let cf = coap::content_format(&p);
        let document = match cf {
            Some(content_format::CBOR) => Value::from_cbor(&p.payload).ok(),
            Some(content_format::JSON) => Value::from_json(&p.payload).ok(),
            _ => None,
        };
        let location = p.get_option(CoapOption::LocationPath).map(|segs| {
            segs.iter()
                .map(|s| format!("/{}", String::from_utf8_lossy(s)))
                .collect::<String>()
        });
        Reply {
            code: coap::code_string(p.header.code),
            location,
            content_format: cf,
            document,
            payload: p.payload,
        }
    }

    /// The `DeviceID`s of the `Failed` list, in order.
    pub fn failed_ids(&self) -> Vec<String> {
        self.list_of("Failed", |v| {
            v.get("DeviceID").and_then(Value::as_str).map(str::to_owned)
        })
    }

    /// The `Verified` DeviceIDs.
    pub fn verified_ids(&self) -> Vec<String> {
        self.list_of("Verified", |v| v.as_str().map(str::to_owned))
    }

    fn list_of(&self, key: &str, f: impl Fn(&Value) -> Option<String>) -> Vec<String> {
        self.document
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(f).collect())
            .unwrap_or_default()
    }

    /// A readable rendering: code, location, body.
    pub fn render(&self) -> String {
        let mut out = self.code.clone();
        if let Some(l) = &self.location {
            out.push_str(&format!("  Location: {l}"));
        }
        match (&self.document, self.content_format) {
            (Some(d), _) => out.push_str(&format!("\n{}", d.to_display())),
            (None, _) if !self.payload.is_empty() => {
                out.push_str(&format!("\n{}", String::from_utf8_lossy(&self.payload)))
            }
            _ => {}
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), self.code.clone().into());
        if let Some(l) = &self.location {
            m.insert("location".into(), l.clone().into());
        }
        match &self.document {
            Some(d) => {
                m.insert("body".into(), d.to_json_value());
            }
            None if !self.payload.is_empty() => {
                m.insert(
                    "body".into(),
                    String::from_utf8_lossy(&self.payload).into_owned().into(),
                );
            }
            None => {}
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot open a socket: {0}")]
    Socket(TransportError),
    #[error("DTLS: {0}")]
    Dtls(TransportError),
    #[error("TLS: {0}")]
    Tls(TransportError),
    #[error("TCP: {0}")]
    Tcp(TransportError),
    #[error("coaps:// needs --psk-identity and --psk-key (or --cert, --key, --ca)")]
    NoCredentials,
    #[error("coaps+tcp:// needs --cert, --key and --ca")]
    NoCertificates,
    #[error("{0}")]
    Open(OpenError),
}

/// How the client proves who it is.
#[derive(Debug, Clone, Default)]
pub enum ClientCredentials {
    #[default]
    None,
    Psk {
        identity: Vec<u8>,
        key: Vec<u8>,
    },
    /// PEM files: our certificate, our key, the CA that verifies the gateway.
    Certificates {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        ca: std::path::PathBuf,
    },
}

/// How long the client waits for an answer over TCP/TLS (verifications take up to the
/// gateway's device timeout).
const STREAM_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Bound on connecting and on a DTLS/TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A DM server's CoAP client for the gateway.
pub struct GatewayClient {
    channel: Channel,
}

impl GatewayClient {
    /// Connects (and for `coaps://` handshakes) to `uri` with the PSK credentials given.
    pub async fn connect(
        uri: EndpointUri,
        psk: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<GatewayClient, ClientSetupError> {
        let creds = match psk {
            Some((identity, key)) => ClientCredentials::Psk { identity, key },
            None => ClientCredentials::None,
        };
        GatewayClient::connect_with(uri, creds).await
    }

    /// Connects over any of the four transports with the credentials given.
    pub async fn connect_with(
        uri: EndpointUri,
        creds: ClientCredentials,
    ) -> Result<GatewayClient, ClientSetupError> {
        let security = match (uri.scheme, creds) {
            (Scheme::Coap | Scheme::CoapTcp, _) => ChannelSecurity::None,
            (Scheme::Coaps, ClientCredentials::Psk { identity, key }) => {
                let mut cfg = PskClientConfig::new(identity, key);
                cfg.handshake_timeout = HANDSHAKE_TIMEOUT;
                ChannelSecurity::Dtls(Arc::new(
                    DtlsClient::new(cfg).map_err(ClientSetupError::Dtls)?,
                ))
            }
            (Scheme::Coaps, ClientCredentials::Certificates { cert, key, ca }) => {
                let files = X509Credentials::from_pem_files(&cert, &key, &ca)
                    .map_err(ClientSetupError::Dtls)?;
                let mut cfg = X509ClientConfig::new(files);
                cfg.handshake_timeout = HANDSHAKE_TIMEOUT;
                ChannelSecurity::Dtls(Arc::new(
                    DtlsClient::new(cfg).map_err(ClientSetupError::Dtls)?,
                ))
            }
            (Scheme::Coaps, ClientCredentials::None) => {
                return Err(ClientSetupError::NoCredentials);
            }
            (Scheme::CoapsTcp, ClientCredentials::Certificates { cert, key, ca }) => {
                let files = TlsCredentials::from_pem_files(&cert, &key, &ca)
                    .map_err(ClientSetupError::Tls)?;
                ChannelSecurity::Tls(Arc::new(
                    TlsClient::new(files, HANDSHAKE_TIMEOUT).map_err(ClientSetupError::Tls)?,
                ))
            }
            (Scheme::CoapsTcp, _) => return Err(ClientSetupError::NoCertificates),
        };
        let local = if uri.addr.is_ipv6() {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        };
        let (mux, _) = DatagramMux::bind(local, false)
            .await
            .map_err(ClientSetupError::Socket)?;
        let tuning = ChannelTuning {
            datagram: TransportTuning::unreliable(),
            connect_timeout: HANDSHAKE_TIMEOUT,
            stream_response_timeout: STREAM_RESPONSE_TIMEOUT,
            stream_max_message_size: 1 << 20,
            max_body: crate::coap::client::DEFAULT_MAX_BODY,
        };
        let (channel, _) = Channel::open(uri, &mux, &security, &tuning)
            .await
            .map_err(ClientSetupError::Open)?;
        Ok(GatewayClient { channel })
    }

    /// Sends one request; `body` is (content format, bytes).
    pub async fn request(
        &mut self,
        method: RequestType,
        path: &str,
        body: Option<(u16, Vec<u8>)>,
        accept: Option<u16>,
        options: &[(CoapOption, Vec<u8>)],
    ) -> Result<Reply, ChannelError> {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(method);
        coap::set_uri(&mut p, path);
        if let Some((cf, bytes)) = body {
            coap::set_content_format(&mut p, cf);
            p.payload = bytes;
        }
        if let Some(a) = accept {
            coap::set_accept(&mut p, a);
        }
        for (o, v) in options {
            p.add_option(*o, v.clone());
        }
        Ok(Reply::from_packet(self.channel.request(p).await?))
    }

    /// POST a new privilege on the collection (DM Add).
    pub async fn add(
        &mut self,
        target: &str,
        target_type: &str,
        uri: &str,
        acl: &str,
    ) -> Result<Reply, ChannelError> {
        let body = privilege_body(target, target_type, uri, acl).to_cbor();
        self.request(
            RequestType::Post,
            "/GwConfig/Privileges",
            Some((content_format::CBOR, body)),
            None,
            &[],
        )
        .await
    }
}

/// The CBOR/JSON request body of a privilege node.
pub fn privilege_body(target: &str, target_type: &str, uri: &str, acl: &str) -> Value {
    Value::map([
        ("TargetID", Value::text(target)),
        ("TargetType", Value::text(target_type)),
        ("URI", Value::text(uri)),
        ("ACL", Value::text(acl)),
    ])
}

#[derive(Args)]
pub struct CtlArgs {
    /// The gateway, e.g. coaps://127.0.0.1:5684
    #[arg(long, short, default_value = "coaps://127.0.0.1:5684")]
    gateway: String,
    #[arg(long)]
    psk_identity: Option<String>,
    #[arg(long)]
    psk_key: Option<String>,
    #[arg(long)]
    psk_key_hex: Option<String>,
    /// Our certificate (PEM), for coaps+tcp://
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    /// Our private key (PEM)
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// The CA that verifies the gateway (PEM)
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Add a privilege (POST, or PUT with If-None-Match when --name is given).
    Add {
        #[arg(long)]
        target: String,
        /// Device or Group
        #[arg(long = "type", default_value = "Device")]
        target_type: String,
        #[arg(long)]
        uri: String,
        #[arg(long)]
        acl: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Replace leaves of an existing privilege (PUT of the node with If-Match).
    Replace {
        name: String,
        #[arg(long)]
        target: Option<String>,
        #[arg(long = "type")]
        target_type: Option<String>,
        #[arg(long)]
        uri: Option<String>,
        #[arg(long)]
        acl: Option<String>,
    },
    /// Get one privilege (or one leaf of it).
    Get { name: String, leaf: Option<String> },
    /// List the privileges (one page when the gateway pages: pass its `Next` as --after).
    List {
        /// List names after this one.
        #[arg(long)]
        after: Option<String>,
        /// Page size (the gateway clamps it to its list_max_limit).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete a privilege.
    Delete { name: String },
    /// List groups.
    Groups,
    /// List devices.
    Devices,
}

pub async fn run(args: CtlArgs) -> CliResult<()> {
    let uri: EndpointUri = args.gateway.parse().map_err(|e: String| e)?;
    let key = match (args.psk_key, args.psk_key_hex) {
        (Some(k), None) => Some(k.into_bytes()),
        (None, Some(h)) => Some(decode_hex(&h)?),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("give --psk-key or --psk-key-hex, not both".into()),
    };
    let psk = match (args.psk_identity, key) {
        (Some(i), Some(k)) => Some((i.into_bytes(), k)),
        (None, None) => None,
        _ => return Err("--psk-identity and --psk-key go together".into()),
    };
    let creds = match (psk, args.cert, args.key, args.ca) {
        (Some((identity, key)), None, None, None) => ClientCredentials::Psk { identity, key },
        (None, Some(cert), Some(key), Some(ca)) => {
            ClientCredentials::Certificates { cert, key, ca }
        }
        (None, None, None, None) => ClientCredentials::None,
        (Some(_), _, _, _) => return Err("give PSK or certificates, not both".into()),
        _ => return Err("--cert, --key and --ca go together".into()),
    };
    let mut client = GatewayClient::connect_with(uri, creds).await?;
    let accept = args.json.then_some(content_format::JSON);
    let cbor = |v: Value| Some((content_format::CBOR, v.to_cbor()));
    let reply = match args.command {
        CtlCommand::Add {
            target,
            target_type,
            uri,
            acl,
            name: None,
        } => {
            let body = privilege_body(&target, &target_type, &uri, &acl);
            client
                .request(
                    RequestType::Post,
                    "/GwConfig/Privileges",
                    cbor(body),
                    accept,
                    &[],
                )
                .await?
        }
        CtlCommand::Add {
            target,
            target_type,
            uri,
            acl,
            name: Some(name),
        } => {
            let body = privilege_body(&target, &target_type, &uri, &acl);
            client
                .request(
                    RequestType::Put,
                    &format!("/GwConfig/Privileges/{name}"),
                    cbor(body),
                    accept,
                    &[(CoapOption::IfNoneMatch, Vec::new())],
                )
                .await?
        }
        CtlCommand::Replace {
            name,
            target,
            target_type,
            uri,
            acl,
        } => {
            let path = format!("/GwConfig/Privileges/{name}");
            let current = client
                .request(RequestType::Get, &path, None, None, &[])
                .await?;
            let Some(doc) = current.document.clone().filter(|_| current.code == "2.05") else {
                return Err(format!("cannot read {path}: {}", current.render()).into());
            };
            let leaf = |k: &str, new: Option<String>| {
                new.or_else(|| doc.get(k).and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default()
            };
            let body = privilege_body(
                &leaf("TargetID", target),
                &leaf("TargetType", target_type),
                &leaf("URI", uri),
                &leaf("ACL", acl),
            );
            client
                .request(
                    RequestType::Put,
                    &path,
                    cbor(body),
                    accept,
                    &[(CoapOption::IfMatch, Vec::new())],
                )
                .await?
        }
        CtlCommand::Get { name, leaf: None } => {
            client
                .request(
                    RequestType::Get,
                    &format!("/GwConfig/Privileges/{name}"),
                    None,
                    accept,
                    &[],
                )
                .await?
        }
        CtlCommand::Get {
            name,
            leaf: Some(leaf),
        } => {
            client
                .request(
                    RequestType::Get,
                    &format!("/GwConfig/Privileges/{name}/{leaf}"),
                    None,
                    None,
                    &[],
                )
                .await?
        }
        CtlCommand::List { after, limit } => {
            let query: Vec<String> = after
                .map(|a| format!("after={a}"))
                .into_iter()
                .chain(limit.map(|n| format!("limit={n}")))
                .collect();
            let path = if query.is_empty() {
                "/GwConfig/Privileges".to_owned()
            } else {
                format!("/GwConfig/Privileges?{}", query.join("&"))
            };
            client
                .request(RequestType::Get, &path, None, accept, &[])
                .await?
        }
        CtlCommand::Delete { name } => {
            client
                .request(
                    RequestType::Delete,
                    &format!("/GwConfig/Privileges/{name}"),
                    None,
                    accept,
                    &[],
                )
                .await?
        }
        CtlCommand::Groups => {
            client
                .request(RequestType::Get, "/GwConfig/Groups", None, accept, &[])
                .await?
        }
        CtlCommand::Devices => {
            client
                .request(RequestType::Get, "/GwConfig/Devices", None, accept, &[])
                .await?
        }
    };
    let text = if args.json {
        reply.to_json().to_string()
    } else {
        reply.render()
    };
    print_reply(&mut std::io::stdout().lock(), &text)?;
    if reply.code.starts_with('2') {
        Ok(())
    } else {
        Err(format!("gateway answered {}", reply.code).into())
    }
}

/// Writes the answer and a newline. A reader that went away (`privgw ctl … | head`) is not an
/// error of ours: the rest is simply not wanted (`println!` would panic there).
fn print_reply(out: &mut impl std::io::Write, text: &str) -> std::io::Result<()> {
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::print_reply;

    /// A writer whose reader has gone.
    struct Closed;

    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_ends_the_output_quietly_and_other_errors_are_reported() {
        assert!(print_reply(&mut Closed, "2.05 Content").is_ok());
        let mut full = [0u8; 4];
        let err = print_reply(&mut &mut full[..], "longer than four bytes").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
        let mut out = Vec::new();
        print_reply(&mut out, "2.05").unwrap();
        assert_eq!(out, b"2.05\n");
    }
}
