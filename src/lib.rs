//! privgw — a gateway that lets device-management servers grant each other rights on
//! constrained end devices, securely.
//!
//! Before a primary server may add or change a privilege for a secondary server, the gateway
//! reads the real ACL of that resource from every target device over secured CoAP and commits
//! only if the primary holds Replace rights there (the OMA DM Gateway change request
//! "Add or Modify Privilege ACL in Secure way").
//!
//! # Layout
//!
//! Protocol and policy logic is sans-IO: plain values in, plain values out.
//!
//! * [`acl`] — DM ACL strings and the LwM2M Access Control object: parse once, evaluate pure.
//! * [`lwm2m`] — LwM2M content formats (TLV, SenML-JSON, SenML-CBOR, LwM2M-CBOR) for `/2`.
//! * [`mo`] — the Gateway Config MO: privileges, groups, devices, and DM commands on them.
//! * [`verifier`] — the one verifier: plan → replies → decision, for devices and groups.
//! * [`proxy`] — the secure proxy's enforcement decision: request → command, privilege index.
//! * [`registry`] — the LwM2M registration interface (`/rd`): requests, registrations, lifetimes.
//! * [`coap`] — sans-IO CoAP: message layer (dedup, retransmission), tokens, block-wise,
//!   RFC 8323 framing and signals.
//!
//! Sockets and crypto live at the edges:
//!
//! * [`transport`] — one UDP socket per endpoint demultiplexed by peer; DTLS 1.2 (OpenSSL,
//!   PSK and X.509); TCP; TLS 1.2/1.3 (rustls); identities proven by each.
//! * [`runtime`] — tokio drivers: listeners, sessions, the shared request pipeline, client
//!   channels over every transport.
//! * [`south`] — secured ACL reads from end devices, per device profile.
//! * [`store`] — redb, one file, atomic and durable commits, the change feed.
//! * [`audit`] — the audit trail: privilege write decisions and proxied decisions.
//! * [`front`] — CoAP routes → DM commands on the MO → answers.
//! * [`gateway`] — wires listeners, front, verifier, south and store together.
//! * [`config`] — the TOML configuration, validated at start.
//! * [`device`] — the simulated end device (demo, tests, interop tables).
//! * [`pki`] — the test PKI behind `privgw certs`.
//! * [`cli`] — `serve`, `device`, `ctl`, `demo`, `load`, `certs`.

pub mod acl;
pub mod audit;
pub mod cli;
pub mod coap;
pub mod config;
pub mod device;
pub mod fleet;
pub mod front;
pub mod gateway;
pub mod lwm2m;
pub mod mo;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod south;
pub mod store;
pub mod transport;
pub mod verifier;
