//! The four `/2` (Access Control object) decoders: TLV, SenML-JSON, SenML-CBOR, LwM2M-CBOR.
//! The first byte picks the format; whatever decodes must re-encode (in every format) to
//! something that decodes to the same instances.
//!
//! Also `tlv::decode_with_default_instance`, the path for a bare-resource `/2/<n>` answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use privgw::lwm2m::{content_format as cf, decode_access_control, encode_access_control, tlv};

const FORMATS: [u16; 4] = [cf::TLV, cf::SENML_JSON, cf::SENML_CBOR, cf::LWM2M_CBOR];

fuzz_target!(|data: &[u8]| {
    let [selector, payload @ ..] = data else {
        return;
    };
    let format = FORMATS[usize::from(selector % 4)];
    let decoded = if format == cf::TLV && selector & 0x80 != 0 {
        tlv::decode_with_default_instance(payload, u16::from(*selector))
    } else {
        decode_access_control(format, payload)
    };
    let Ok(instances) = decoded else {
        return;
    };
    for to in FORMATS {
        let Ok(bytes) = encode_access_control(to, &instances) else {
            continue;
        };
        let back = decode_access_control(to, &bytes)
            .unwrap_or_else(|e| panic!("{to}: our own encoding does not decode: {e}"));
        assert_eq!(back, instances, "{format} → {to}");
    }
});
