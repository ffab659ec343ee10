//! `privgw demo`: the four sequences of the change request, end to end in one process over
//! real loopback sockets and DTLS-PSK: a gateway, three simulated LwM2M devices A, B, C in
//! group G1 — A and B register with the gateway as their LwM2M server (they are the DTLS
//! clients and answer only over their registration), C is dialled by the gateway — and
//! server A as a CoAP client. Each sequence is printed like the seed's figures
//! and checked against what the seed says must happen; any difference exits non-zero.
//!
//! A fifth figure then uses what was committed (issue 8, the secure proxy): server B, over
//! its own DTLS-PSK session, reads through the gateway what the privileges grant it and is
//! refused what they do not, each decision shown from the audit trail and each refusal
//! checked to have caused no request on the device.

use std::fmt::Write as _;

use crate::cli::CliResult;
use crate::cli::ctl::{GatewayClient, Reply};
use crate::coap::RequestType;
use crate::config::Config;
use crate::device::{AcInstance, Behaviour, DeviceSimConfig, RunningDevice};
use crate::gateway::Gateway;

/// Server A's and server B's Short Server IDs in the demo.
const SSID_A: u16 = 101;
const SSID_B: u16 = 102;

fn ac(instance: u16, object: u16, owner: u16) -> AcInstance {
    AcInstance {
        instance,
        object,
        object_instance: 0,
        owner,
        acl: [(owner.to_string(), 31), ("0".to_owned(), 1)]
            .into_iter()
            .collect(),
    }
}

/// The demo fleet: every device owns /3/0 for server A; devA's /5/0 belongs to server B
/// (device failure), devB's /4/0 belongs to server B (group failure).
fn device_config(id: &str, key: &str) -> DeviceSimConfig {
    let owner_4 = if id == "devB" { SSID_B } else { SSID_A };
    let owner_5 = if id == "devA" { SSID_B } else { SSID_A };
    DeviceSimConfig {
        id: id.to_owned(),
        listen: "coaps://127.0.0.1:0".to_owned(),
        profile: "lwm2m".to_owned(),
        psk_identity: Some("gateway".to_owned()),
        psk_key: Some(key.to_owned()),
        psk_key_hex: None,
        cert: None,
        key: None,
        ca: None,
        behaviour: Behaviour::Normal,
        access_control: vec![ac(0, 3, SSID_A), ac(1, 4, owner_4), ac(2, 5, owner_5)],
        acls: Default::default(),
        ..DeviceSimConfig::default()
    }
}

/// The devices that register (the others are dialled).
const REGISTERING: [&str; 2] = ["devA", "devB"];

fn gateway_config(
    store: &std::path::Path,
    devices: &[(&str, &str, Option<&RunningDevice>)],
) -> CliResult<Config> {
    let mut toml = format!(
        r#"[gateway]
listen = ["coaps://127.0.0.1:0"]
store = {store:?}
device_timeout_ms = 3000

[[lwm2m.listen]]
uri = "coaps://127.0.0.1:0"

[[servers]]
id = "ServerA"
ssid = {SSID_A}
psk_identity = "serverA"
psk_key = "secretA"

[[servers]]
id = "ServerB"
ssid = {SSID_B}
psk_identity = "serverB"
psk_key = "secretB"
"#
    );
    for (id, key, dialled) in devices {
        match dialled {
            Some(dev) => write!(
                toml,
                "\n[[devices]]\nid = \"{id}\"\nuri = \"{}\"\nprofile = \"lwm2m\"\npolicy = \"owner\"\npsk_identity = \"gateway\"\npsk_key = \"{key}\"\n",
                dev.uri()
            )?,
            None => write!(
                toml,
                "\n[[devices]]\nid = \"{id}\"\nregisters = true\nprofile = \"lwm2m\"\npolicy = \"owner\"\npsk_identity = \"{id}\"\npsk_key = \"{key}\"\n"
            )?,
        }
    }
    toml.push_str("\n[[groups]]\nid = \"G1\"\nmembers = [\"devA\", \"devB\", \"devC\"]\n");
    Ok(Config::parse(&toml)?)
}

struct Sequence {
    title: &'static str,
    target: &'static str,
    target_type: &'static str,
    uri: &'static str,
    acl: &'static str,
    expect_code: &'static str,
    expect_failed: &'static [&'static str],
}

const SEQUENCES: [Sequence; 4] = [
    Sequence {
        title: "Figure 16: Add or Modify Privilege ACL in Secure Way for Device — Success",
        target: "devA",
        target_type: "Device",
        uri: "/3/0",
        acl: "Get=ServerB",
        expect_code: "2.01",
        expect_failed: &[],
    },
    Sequence {
        title: "Figure XX: Add or Modify Privilege ACL in Secure Way for Device — Failure",
        target: "devA",
        target_type: "Device",
        uri: "/5/0",
        acl: "Get=ServerB",
        expect_code: "4.03",
        expect_failed: &["devA"],
    },
    Sequence {
        title: "Figure YY: Add or Modify Privilege ACL in Secure Way for Group — Success",
        target: "G1",
        target_type: "Group",
        uri: "/3/0",
        acl: "Get=ServerB&Replace=ServerB",
        expect_code: "2.01",
        expect_failed: &[],
    },
    Sequence {
        title: "Figure ZZ: Add or Modify Privilege ACL in Secure Way for Group — Failure",
        target: "G1",
        target_type: "Group",
        uri: "/4/0",
        acl: "Get=ServerB",
        expect_code: "4.03",
        expect_failed: &["devB"],
    },
];

fn print_sequence(seq: &Sequence, devices: &[(&str, &RunningDevice)], reply: &Reply) {
    println!("\n━━ {}", seq.title);
    println!(
        "Step 1  ServerA → Gateway   POST /GwConfig/Privileges  {{TargetID: {:?}, TargetType: {:?}, URI: {:?}, ACL: {:?}}}  (DTLS-PSK)",
        seq.target, seq.target_type, seq.uri, seq.acl
    );
    let asked: Vec<&str> = devices
        .iter()
        .filter(|(id, _)| seq.target_type == "Group" || *id == seq.target)
        .map(|(id, _)| *id)
        .collect();
    for id in &asked {
        let how = if REGISTERING.contains(id) {
            "over its registration's DTLS session"
        } else {
            "dialled, DTLS-PSK"
        };
        println!("Step 2  Gateway → {id}   GET /2 (Access Control object, TLV; {how})");
    }
    for (_, dev) in devices {
        for line in dev.take_log() {
            println!("Step 3  {line}");
        }
    }
    let failed = reply.failed_ids();
    for id in &asked {
        let verdict = match reply
            .document
            .as_ref()
            .and_then(|d| d.get("Failed"))
            .and_then(|f| f.as_array())
        {
            Some(list) => list
                .iter()
                .find(|f| f.get("DeviceID").and_then(|v| v.as_str()) == Some(id))
                .map(|f| {
                    format!(
                        "FAILED ({}: {})",
                        f.get("Reason").and_then(|v| v.as_str()).unwrap_or("?"),
                        f.get("Detail").and_then(|v| v.as_str()).unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "has Replace (owner is ServerA)".to_owned()),
            None => "has Replace (owner is ServerA)".to_owned(),
        };
        println!(
            "Step 4  Gateway verifies {id} {} for ServerA: {verdict}",
            seq.uri
        );
    }
    if failed.is_empty() && reply.code.starts_with('2') {
        println!(
            "Step 5  Gateway commits the privilege {} (verified: {})",
            reply.location.as_deref().unwrap_or("?"),
            reply.verified_ids().join(", ")
        );
        println!(
            "Step 6  Gateway → ServerA   {}",
            reply.render().replace('\n', "  ")
        );
    } else {
        println!(
            "Step 5  Gateway → ServerA   {}  (nothing committed)",
            reply.render().replace('\n', "  ")
        );
    }
}

/// One request of the fifth figure: server B through the gateway, and what must happen.
struct ProxyRequest {
    method: RequestType,
    /// `/<prefix>/<path>` as server B sends it.
    path: &'static str,
    body: Option<&'static str>,
    device: &'static str,
    /// The path the device gets (when allowed).
    device_path: &'static str,
    /// What the path is, for the reader.
    what: &'static str,
    expect_code: &'static str,
    /// The body server B must get (2.05 only).
    expect_payload: Option<&'static str>,
}

/// Server B reads `/3/0` of devA (its own privilege, Figure 16) and of devC (G1's, Figure
/// YY); it may not write devA's (devA's own entry decides for devA, and grants Get only,
/// though G1's at the same URI grants Replace) nor delete on devC (G1's grants no Delete).
const PROXY_REQUESTS: [ProxyRequest; 4] = [
    ProxyRequest {
        method: RequestType::Get,
        path: "/devA/3/0/0",
        body: None,
        device: "devA",
        device_path: "/3/0/0",
        what: "Manufacturer",
        expect_code: "2.05",
        expect_payload: Some("privgw"),
    },
    ProxyRequest {
        method: RequestType::Get,
        path: "/devC/3/0/2",
        body: None,
        device: "devC",
        device_path: "/3/0/2",
        what: "Serial Number",
        expect_code: "2.05",
        expect_payload: Some("devC"),
    },
    ProxyRequest {
        method: RequestType::Put,
        path: "/devA/3/0/0",
        body: Some("x"),
        device: "devA",
        device_path: "/3/0/0",
        what: "Manufacturer",
        expect_code: "4.03",
        expect_payload: None,
    },
    ProxyRequest {
        method: RequestType::Delete,
        path: "/devC/3/0",
        body: None,
        device: "devC",
        device_path: "/3/0",
        what: "the Device object instance",
        expect_code: "4.03",
        expect_payload: None,
    },
];

/// What one proxied request did: server B's answer, and what the device served meanwhile.
struct ProxyOutcome {
    reply: Reply,
    served: u64,
    device_log: Vec<String>,
    requests_before: u64,
}

fn method_name(method: RequestType) -> &'static str {
    match method {
        RequestType::Get => "GET",
        RequestType::Put => "PUT",
        RequestType::Delete => "DELETE",
        RequestType::Post => "POST",
        _ => "?",
    }
}

/// The proxied records of the audit trail (read as server A, who may read the privileges),
/// once there are `count` of them; the trail is written in batches within about a second.
async fn proxied_records(
    server_a: &mut GatewayClient,
    count: usize,
) -> CliResult<Vec<crate::mo::Value>> {
    let mut records = Vec::new();
    for _ in 0..30 {
        let reply = server_a
            .request(
                RequestType::Get,
                "/GwConfig/Audit?limit=1000",
                None,
                None,
                &[],
            )
            .await?;
        records = reply
            .document
            .as_ref()
            .and_then(|d| d.get("Records"))
            .and_then(|r| r.as_array())
            .unwrap_or_default()
            .iter()
            .filter(|r| r.get("Kind").and_then(|k| k.as_str()) == Some("proxied"))
            .cloned()
            .collect();
        if records.len() >= count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(records)
}

/// The fifth figure: server B through the gateway. Returns what did not happen as expected.
async fn proxy_figure(
    gw_uri: crate::config::EndpointUri,
    server_a: &mut GatewayClient,
    devices: &[(&str, &RunningDevice)],
) -> CliResult<Vec<String>> {
    let mut server_b =
        GatewayClient::connect(gw_uri, Some((b"serverB".to_vec(), b"secretB".to_vec()))).await?;
    for (_, dev) in devices {
        dev.take_log();
    }
    let mut outcomes = Vec::new();
    for req in &PROXY_REQUESTS {
        let dev = devices
            .iter()
            .find(|(id, _)| *id == req.device)
            .map(|(_, d)| *d)
            .ok_or_else(|| format!("no device {}", req.device))?;
        let requests_before = dev.requests();
        let body = req.body.map(|b| (0, b.as_bytes().to_vec()));
        let reply = server_b
            .request(req.method, req.path, body, None, &[])
            .await?;
        outcomes.push(ProxyOutcome {
            reply,
            served: dev.requests() - requests_before,
            device_log: dev.take_log(),
            requests_before,
        });
    }
    let records = proxied_records(server_a, PROXY_REQUESTS.len()).await?;

    println!("\n━━ Fifth figure: Server B through the gateway (secure proxy)");
    let mut mismatches = Vec::new();
    let mut step = 0;
    let mut next = || {
        step += 1;
        step
    };
    for (req, out) in PROXY_REQUESTS.iter().zip(&outcomes) {
        let method = method_name(req.method);
        let body = req.body.map(|b| format!(" {b:?}")).unwrap_or_default();
        println!(
            "Step {}  ServerB → Gateway   {method} {}{body}  ({}; DTLS-PSK)",
            next(),
            req.path,
            req.what
        );
        let text = |key: &str, r: &crate::mo::Value| {
            r.get(key).and_then(|v| v.as_str()).map(str::to_owned)
        };
        let record = records.iter().find(|r| {
            text("Device", r).as_deref() == Some(req.device)
                && text("Method", r).as_deref() == Some(method)
                && text("Path", r).as_deref() == Some(req.device_path)
        });
        let allowed = req.expect_code.starts_with('2');
        match record {
            Some(r) => {
                let verdict = text("Verdict", r).unwrap_or_default();
                let grantor = text("Grantor", r)
                    .map(|g| format!(", granted by {g}"))
                    .unwrap_or_default();
                println!(
                    "Step {}  Gateway decides ServerB's {} on {} {}: {verdict} ({}{grantor})  [audit trail]",
                    next(),
                    text("Command", r).unwrap_or_default(),
                    req.device,
                    req.device_path,
                    text("Reason", r).unwrap_or_default()
                );
                let expected = if allowed { "allowed" } else { "denied" };
                if verdict != expected {
                    mismatches.push(format!(
                        "{method} {}: the audit trail says {verdict}, expected {expected}",
                        req.path
                    ));
                }
            }
            None => mismatches.push(format!(
                "{method} {}: no proxied decision in the audit trail",
                req.path
            )),
        }
        if out.served > 0 {
            let how = if REGISTERING.contains(&req.device) {
                "over its registration's DTLS session"
            } else {
                "dialled, DTLS-PSK"
            };
            println!(
                "Step {}  Gateway → {}   {method} {}{body} ({how})",
                next(),
                req.device,
                req.device_path
            );
            for line in &out.device_log {
                println!("Step {}  {line}", next());
            }
        }
        println!(
            "Step {}  Gateway → ServerB   {}",
            next(),
            out.reply.render().replace('\n', "  ")
        );
        if !allowed {
            println!(
                "Step {}  No request reached {}: it served {} requests before and {} after",
                next(),
                req.device,
                out.requests_before,
                out.requests_before + out.served
            );
        }
        let payload_ok = req
            .expect_payload
            .is_none_or(|p| out.reply.payload == p.as_bytes());
        if out.reply.code != req.expect_code || !payload_ok {
            mismatches.push(format!(
                "{method} {}: expected {} {:?}, got {}",
                req.path,
                req.expect_code,
                req.expect_payload.unwrap_or(""),
                out.reply.render().replace('\n', "  ")
            ));
        }
        let expect_served = u64::from(allowed);
        if out.served != expect_served {
            mismatches.push(format!(
                "{method} {}: {} served {} requests, expected {expect_served}",
                req.path, req.device, out.served
            ));
        }
    }
    Ok(mismatches)
}

pub async fn run() -> CliResult<()> {
    let dir = tempfile_dir()?;
    let keys = [
        ("devA", "devkeyA"),
        ("devB", "devkeyB"),
        ("devC", "devkeyC"),
    ];
    let mut dialled = Vec::new();
    for (id, key) in keys {
        if !REGISTERING.contains(&id) {
            dialled.push((id, RunningDevice::start(&device_config(id, key)).await?));
        }
    }
    let entries: Vec<(&str, &str, Option<&RunningDevice>)> = keys
        .iter()
        .map(|(id, key)| {
            (
                *id,
                *key,
                dialled.iter().find(|(d, _)| d == id).map(|(_, r)| r),
            )
        })
        .collect();
    let config = gateway_config(&dir.join("privgw-demo.redb"), &entries)?;
    let gateway = Gateway::start(config).await?;
    let gw_uri = gateway.listeners()[0];
    let lwm2m_uri = gateway.lwm2m_listeners()[0];
    println!(
        "privgw demo: gateway on {gw_uri} (servers), {lwm2m_uri} (LwM2M registrations); devices devA, devB, devC (LwM2M, DTLS-PSK) in group G1"
    );
    let mut running = Vec::new();
    for (id, key) in keys {
        if let Some(i) = dialled.iter().position(|(d, _)| *d == id) {
            let (id, dev) = dialled.remove(i);
            println!("  {id}: dialled by the gateway at {}", dev.uri());
            running.push((id, dev));
            continue;
        }
        let mut cfg = device_config(id, key);
        cfg.listen.clear();
        cfg.register = vec![lwm2m_uri.to_string()];
        cfg.psk_identity = Some(id.to_owned());
        let dev = RunningDevice::start(&cfg).await?;
        if !dev
            .wait_registered(std::time::Duration::from_secs(10))
            .await
        {
            return Err(format!("{id} did not register with {lwm2m_uri}").into());
        }
        println!(
            "  {id}: registered from {} → POST /rd?ep={id}&lt=300&lwm2m=1.1 → 2.01 Location-Path {}",
            dev.addr(),
            dev.locations()[0].as_deref().unwrap_or("?")
        );
        running.push((id, dev));
    }
    let devices: Vec<(&str, &RunningDevice)> = running.iter().map(|(id, d)| (*id, d)).collect();

    let mut server_a =
        GatewayClient::connect(gw_uri, Some((b"serverA".to_vec(), b"secretA".to_vec()))).await?;
    let mut mismatches = Vec::new();
    for seq in &SEQUENCES {
        let reply = server_a
            .add(seq.target, seq.target_type, seq.uri, seq.acl)
            .await?;
        print_sequence(seq, &devices, &reply);
        let failed = reply.failed_ids();
        if reply.code != seq.expect_code || failed != seq.expect_failed {
            mismatches.push(format!(
                "{}: expected {} with Failed {:?}, got {} with Failed {:?}",
                seq.title, seq.expect_code, seq.expect_failed, reply.code, failed
            ));
        }
    }
    let listing = server_a
        .request(
            crate::coap::RequestType::Get,
            "/GwConfig/Privileges",
            None,
            None,
            &[],
        )
        .await?;
    println!(
        "\n━━ Committed privileges (GET /GwConfig/Privileges)\n{}",
        listing.render()
    );
    let committed = match &listing.document {
        Some(crate::mo::Value::Map(m)) => m.len(),
        _ => 0,
    };
    if committed != 2 {
        mismatches.push(format!(
            "expected 2 committed privileges, found {committed}"
        ));
    }
    mismatches.extend(proxy_figure(gw_uri, &mut server_a, &devices).await?);

    gateway.stop().await;
    for (_, dev) in running {
        dev.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if mismatches.is_empty() {
        println!(
            "\nAll five figures ended as expected: the four sequences as the change request says, and server B got through the gateway exactly what it was granted, with no device request for what it was refused."
        );
        Ok(())
    } else {
        for m in &mismatches {
            eprintln!("MISMATCH: {m}");
        }
        Err(format!(
            "{} step(s) of the five figures did not end as expected",
            mismatches.len()
        )
        .into())
    }
}

pub(crate) fn tempfile_dir() -> CliResult<std::path::PathBuf> {
    let mut suffix = [0u8; 8];
    openssl::rand::rand_bytes(&mut suffix)?;
    let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("privgw-demo-{name}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
