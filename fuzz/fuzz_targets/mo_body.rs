//! Request bodies: a privilege document as CBOR (Content-Format 60) or JSON (50), decoded
//! into the MO value tree and then into a privilege entry. Bit 0 of the first byte picks
//! the encoding. A decoded value survives a CBOR round trip; an accepted privilege survives
//! its own document form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use privgw::mo::privilege::Privilege;
use privgw::mo::repr::Value;

fuzz_target!(|data: &[u8]| {
    let [selector, body @ ..] = data else {
        return;
    };
    let value = if selector & 1 == 0 {
        Value::from_cbor(body)
    } else {
        Value::from_json(body)
    };
    let Ok(value) = value else {
        return;
    };
    let cbor = value.to_cbor();
    assert_eq!(Value::from_cbor(&cbor).as_ref(), Ok(&value));
    let _ = value.to_json();
    let _ = value.to_display();
    let Ok(privilege) = Privilege::from_request(&value) else {
        return;
    };
    let stored = privilege.to_value();
    let again = Privilege::from_stored(&stored).expect("an accepted privilege reads back");
    assert!(again.same_grant(&privilege));
});
