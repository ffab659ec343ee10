//! `privgw bench`: tiny loads through the real binary against libcoap's `coap-server-openssl`
//! (installed here and in CI), checking what the tables say, and the plots they make.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn privgw(out: &Path, args: &[&str]) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_privgw"))
        .arg("bench")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("privgw runs");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "privgw bench {args:?} failed: {stdout}\n{stderr}"
    );
    (stdout, stderr)
}

fn table(out: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(out.join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("{name}.json: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn num(row: &Value, column: &str) -> f64 {
    row[column]
        .as_f64()
        .unwrap_or_else(|| panic!("{column} is not a number in {row}"))
}

#[test]
fn bench_front_compares_privgw_with_libcoap_on_every_target_and_transport() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = privgw(
        dir.path(),
        &[
            "front",
            "--shapes",
            "2x1",
            "--requests",
            "200",
            "--runs",
            "1",
        ],
    );
    assert!(stdout.contains("== front"), "{stdout}");
    let t = table(dir.path(), "front");
    let rows = t["rows"].as_array().unwrap();
    // Two targets over UDP in the one shape, and both over one DTLS session.
    assert_eq!(rows.len(), 4, "{t}");
    let mut seen = Vec::new();
    for r in rows {
        let (p, l, ratio) = (num(r, "privgw_rps"), num(r, "libcoap_rps"), num(r, "ratio"));
        assert!(p > 0.0 && l > 0.0, "{r}");
        assert!((ratio - p / l).abs() < 1e-3 * ratio.max(1.0), "{r}");
        assert!(num(r, "privgw_p50_ms") > 0.0 && num(r, "libcoap_p50_ms") > 0.0);
        assert!(num(r, "privgw_p99_ms") >= num(r, "privgw_p50_ms"));
        seen.push((
            r["target"].as_str().unwrap().to_owned(),
            r["transport"].as_str().unwrap().to_owned(),
            r["shape"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(seen.contains(&("/.well-known/core".into(), "udp".into(), "2x1".into())));
    assert!(
        seen.iter()
            .any(|(t, tr, s)| t.starts_with("data") && tr == "udp" && s == "2x1")
    );
    assert!(
        seen.iter()
            .any(|(t, tr, s)| t.starts_with("data") && tr.starts_with("dtls") && s == "1x1")
    );
    // The data rows read bodies of the same size on both sides.
    let data = rows
        .iter()
        .find(|r| r["target"].as_str().unwrap().starts_with("data"))
        .unwrap();
    assert_eq!(num(data, "privgw_bytes"), num(data, "libcoap_bytes"));
    let csv = std::fs::read_to_string(dir.path().join("front.csv")).unwrap();
    assert!(csv.starts_with("target,transport,shape,"), "{csv}");
    assert_eq!(csv.lines().count(), 5);
}

/// A short `bench handshakes` run with `client`: both servers complete handshakes, none fail.
fn handshakes_with(client: &str) {
    let dir = tempfile::tempdir().unwrap();
    privgw(
        dir.path(),
        &[
            "handshakes",
            "--clients",
            "2",
            "--seconds",
            "0.5",
            "--runs",
            "1",
            "--client",
            client,
        ],
    );
    let t = table(dir.path(), "handshakes");
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one run and the median row: {t}");
    let last = &rows[1];
    assert_eq!(last["run"], "median");
    assert_eq!(last["client"], client);
    let (p, l) = (num(last, "privgw_hs_per_s"), num(last, "libcoap_hs_per_s"));
    assert!(p > 0.0 && l > 0.0, "{t}");
    assert!((num(last, "ratio") - p / l).abs() < 1e-2, "{t}");
    assert_eq!(num(&rows[0], "privgw_failed"), 0.0, "{t}");
    assert_eq!(num(&rows[0], "libcoap_failed"), 0.0, "{t}");
    assert!(num(&rows[0], "client_cpu_us_per_hs") > 0.0, "{t}");
    assert_eq!(num(&rows[0], "clients"), 2.0);
}

/// The lean PSK client (our own handshake, `bench handshakes`' default) completes full
/// handshakes and a GET with both privgw and libcoap's OpenSSL server.
#[test]
fn bench_handshakes_counts_full_handshakes_on_both_sides() {
    handshakes_with("lean");
}

#[test]
fn bench_handshakes_with_the_openssl_client_counts_full_handshakes_on_both_sides() {
    handshakes_with("openssl");
}

#[test]
fn bench_plot_draws_svg_from_a_hand_written_table_and_skips_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let front = serde_json::json!({
        "name": "front",
        "columns": ["target", "transport", "shape", "privgw_rps", "libcoap_rps", "ratio"],
        "rows": [
            {"target": "/.well-known/core", "transport": "udp", "shape": "1x1",
             "privgw_rps": 15300.0, "libcoap_rps": 26900.0, "ratio": 0.57},
            {"target": "data", "transport": "udp", "shape": "16x1",
             "privgw_rps": 20900.0, "libcoap_rps": 54900.0, "ratio": 0.38}
        ]
    });
    std::fs::write(dir.path().join("front.json"), front.to_string()).unwrap();
    let images = dir.path().join("img");
    let (stdout, stderr) = privgw(
        dir.path(),
        &[
            "plot",
            "--images",
            images.to_str().unwrap(),
            "--markdown",
            "--link-prefix",
            "docs/bench",
        ],
    );
    let svg = std::fs::read_to_string(images.join("front_throughput.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("privgw") && svg.contains("libcoap"));
    assert!(
        svg.contains("data udp 16x1"),
        "the bars are labelled by row"
    );
    assert!(svg.contains("<rect"), "bars are drawn");
    // Only the front table exists: the others are named as skipped, not drawn.
    assert!(stderr.contains("no group table"), "{stderr}");
    assert!(!images.join("group_latency.svg").exists());
    assert!(
        stdout.contains("| /.well-known/core | udp | 1x1 | 15300 | 26900 | 0.57 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(docs/bench/front_throughput.svg)"),
        "{stdout}"
    );
}

#[test]
fn bench_soak_samples_the_gateway_under_gets_and_handshake_churn_and_plots_its_rss() {
    let dir = tempfile::tempdir().unwrap();
    privgw(
        dir.path(),
        &[
            "soak",
            "--seconds",
            "1.5",
            "--sample-seconds",
            "0.5",
            "--shape",
            "4x2",
            "--handshakers",
            "2",
        ],
    );
    let t = table(dir.path(), "soak");
    let rows = t["rows"].as_array().unwrap();
    assert!((3..=4).contains(&rows.len()), "a sample every 0.5 s: {t}");
    let mut last_t = 0.0;
    for r in rows {
        assert!(num(r, "t_s") > last_t, "samples in time order: {t}");
        last_t = num(r, "t_s");
        assert!(num(r, "rss_kib") > 1000.0, "the gateway's VmRSS: {r}");
        assert!(num(r, "fds") > 0.0 && num(r, "threads") > 0.0, "{r}");
        assert!(num(r, "gets_per_s") > 0.0, "{r}");
        assert_eq!(num(r, "get_troubles"), 0.0, "{r}");
        assert_eq!(num(r, "handshakes_failed"), 0.0, "{r}");
    }
    assert!(
        rows.iter().any(|r| num(r, "handshakes_per_s") > 0.0),
        "the churn completes handshakes: {t}"
    );
    let s = table(dir.path(), "soak_summary");
    let s = &s["rows"][0];
    assert_eq!(s["shape"], "4x2");
    assert!(num(s, "gets") > 0.0 && num(s, "handshakes") > 0.0, "{s}");
    let max = rows.iter().map(|r| num(r, "rss_kib")).fold(0.0, f64::max);
    assert_eq!(num(s, "rss_max_kib"), max);
    let drift = num(s, "rss_last_third_kib") - num(s, "rss_first_third_kib");
    assert!((num(s, "drift_kib") - drift).abs() < 1e-6, "{s}");
    assert!(["flat", "growing"].contains(&s["rss"].as_str().unwrap()));
    let images = dir.path().join("img");
    privgw(dir.path(), &["plot", "--images", images.to_str().unwrap()]);
    let svg = std::fs::read_to_string(images.join("soak_rss.svg")).unwrap();
    assert!(
        svg.contains("gateway RSS") && svg.contains("<polyline"),
        "{svg}"
    );
}
