//! DM ACL strings (`Get=A+B&Replace=*`): strict parse, then the canonical rendering parses
//! back to the same ACL, and evaluation does not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use privgw::acl::DmCommand;
use privgw::acl::dm::DmAcl;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(acl) = DmAcl::parse(s) else {
        return;
    };
    let text = acl.to_string();
    let back = DmAcl::parse(&text).expect("the rendering of a parsed ACL parses");
    assert_eq!(back, acl, "{s:?} → {text:?}");
    let named: Vec<String> = acl.named_servers().map(str::to_owned).collect();
    for cmd in DmCommand::ALL {
        for id in named.iter().map(String::as_str).chain(["", "unknown"]) {
            let _ = acl.grants(cmd, id);
        }
    }
});
