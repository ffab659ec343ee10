//! The TOML configuration: parse and validate from a string (`Config::parse_in`).
//!
//! Validation opens the certificate files a config names (and reads a server's `cert`), so
//! the target keeps it to one folder: inputs where a file key (`cert`, `key`, `ca`, at any
//! depth) holds a path separator are skipped, and bare names resolve against the
//! repository's `certs/` (the test PKI), which holds only small regular files. Nothing is
//! written (`store` is only a path at this stage).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use privgw::config::Config;

/// The keys whose values validation opens as files.
const FILE_KEYS: [&str; 3] = ["cert", "key", "ca"];

/// Whether every file key in the document names a file inside the base folder.
fn files_stay_local(v: &toml::Value) -> bool {
    match v {
        toml::Value::Array(a) => a.iter().all(files_stay_local),
        toml::Value::Table(t) => t.iter().all(|(k, v)| {
            let local = match v {
                toml::Value::String(s) => !s.contains(['/', '\\']),
                _ => true,
            };
            (local || !FILE_KEYS.contains(&k.as_str())) && files_stay_local(v)
        }),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Anything the TOML parser refuses never reaches validation, so it is safe as is.
    if toml::from_str::<toml::Table>(text).is_ok_and(|t| !files_stay_local(&toml::Value::Table(t)))
    {
        return;
    }
    let certs = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../certs"));
    let _ = Config::parse_in(text, Some(certs));
});
