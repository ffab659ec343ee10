//! The secure proxy (issue 8) with libcoap peers: `coap-client-openssl` as server B over
//! DTLS-PSK (`-u serverB -k secretB`) sending `METHOD /<prefix>/<path>` to the gateway, which
//! forwards `<path>` to `coap-server-openssl` devices or to our simulated LwM2M devices (dialled
//! or registering).
//!
//! libcoap 4.3.1 behaviours this module accounts for:
//! * `coap-server -d` creates any path PUT to it (Content-Format kept, Block1 reassembled), so
//!   one device serves both `/2` (TLV, for the gateway's ACL reads) and LwM2M data resources
//!   such as `/3/0/0`; it serves a body over 1024 bytes in Block2 blocks of 1024.
//! * `coap-client -b 64` asks for Block2 blocks of 64 bytes (and sends Block1 blocks of 64);
//!   `-o FILE` gets the reassembled 2.xx body; without `-o` the body goes to stdout.
//! * A separate response (empty ACK, later a CON) is followed by coap-client's own ACK and
//!   the body printed as usual.

use std::sync::Arc;

use super::{ClientRun, LibcoapServer, PrintedPdu, Scratch, run_client};

/// `coap-client` arguments for server B's PSK.
pub const SERVER_B_PSK: [&str; 4] = ["-u", "serverB", "-k", "secretB"];

/// Runs `coap-client-openssl` as server B (DTLS-PSK serverB/secretB): `args` go after its PSK
/// arguments (end them with the URL).
pub async fn run_server_b(scratch: &Arc<Scratch>, args: &[&str]) -> ClientRun {
    let mut full: Vec<&str> = SERVER_B_PSK.to_vec();
    full.extend_from_slice(args);
    run_client(scratch, &full).await
}

/// PUTs `body` with Content-Format `content_format` straight into libcoap device `dev` at
/// `path` (as the gateway would reach it, not through the gateway); 2.01 or 2.04 expected.
pub async fn put_on_device(
    scratch: &Arc<Scratch>,
    dev: &LibcoapServer,
    path: &str,
    content_format: &str,
    body: &[u8],
) {
    let file = scratch.write(&format!("{}-put.bin", dev.name), body);
    let file = file.to_string_lossy().into_owned();
    let mut args: Vec<String> = ["-m", "put", "-t", content_format, "-f", &file]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(dev.client_args(path));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_client(scratch, &args).await;
    let code = run.response().code;
    assert!(
        code == "2.01" || code == "2.04",
        "PUT {path} on {}\n{}",
        dev.name,
        run.transcript()
    );
}

/// GETs `path` straight from libcoap device `dev` (not through the gateway); the 2.05 body.
pub async fn get_from_device(scratch: &Arc<Scratch>, dev: &LibcoapServer, path: &str) -> Vec<u8> {
    let out = scratch.file(&format!("{}-get.out", dev.name));
    let out = out.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["-m".into(), "get".into(), "-o".into(), out];
    args.extend(dev.client_args(path));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_client(scratch, &args).await;
    run.expect_code("2.05");
    run.output_file
        .clone()
        .unwrap_or_else(|| panic!("-o file not written\n{}", run.transcript()))
}

impl PrintedPdu {
    /// The Uri-Path options joined: `/3/0/0` (`/` when there are none).
    pub fn uri_path(&self) -> String {
        let segments: Vec<&str> = self
            .options
            .split(", ")
            .filter_map(|o| o.trim().strip_prefix("Uri-Path:"))
            .collect();
        format!("/{}", segments.join("/"))
    }
}

impl LibcoapServer {
    /// The requests privgw sent this device, as `(method, path)` (`("GET", "/3/0/0")`).
    pub fn gateway_calls(&self) -> Vec<(String, String)> {
        self.gateway_requests()
            .into_iter()
            .map(|p| (p.code.clone(), p.uri_path()))
            .collect()
    }
}

/// `[[lwm2m.listen]]` on an ephemeral DTLS port (the gateway's own account) and a registering
/// LwM2M device `id` (PSK identity `id`, key `key`), as gateway TOML to append.
pub fn registering_device_toml(id: &str, key: &str) -> String {
    format!(
        "\n[[lwm2m.listen]]\nuri = \"coaps://127.0.0.1:0\"\n\n[[devices]]\nid = \"{id}\"\nregisters = true\nprofile = \"lwm2m\"\npsk_identity = \"{id}\"\npsk_key = \"{key}\"\n"
    )
}
