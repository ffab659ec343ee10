//! Duplicate suppression that survives a restart: the fingerprint of a request whose write
//! was committed, stored with the answer it got, in the same transaction as the write.
//!
//! RFC 7252 §4.5 asks a server to answer a retransmitted CON (same MID, within
//! EXCHANGE_LIFETIME) from its first answer; the message layer's table does that in memory,
//! and this record does it across a crash: a client retransmitting an Add it sent before
//! the gateway went down gets the same code and Location-Path, and no second entry.
//!
//! Owns: [`Fingerprint`] (what identifies one request of one server) and [`Recorded`] (the
//! answer, encoded for the store). Does not own: when to record or look up (the service),
//! or the tables (each store).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coap_lite::Packet;

/// SHA-256 over the server's identity, the request's MID and token, and the request itself
/// (code, options, payload): equal only for a retransmission of the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `request` (as received, MID and token included) from `server_id`.
    pub fn of_request(server_id: &str, request: &Packet) -> Fingerprint {
        let mut input = Vec::with_capacity(64 + request.payload.len());
        push_bytes(&mut input, server_id.as_bytes());
        input.extend_from_slice(&request.header.message_id.to_be_bytes());
        push_bytes(&mut input, request.get_token());
        input.push(u8::from(request.header.code));
        for (number, values) in request.options() {
            for value in values {
                input.extend_from_slice(&number.to_be_bytes());
                push_bytes(&mut input, value);
            }
        }
        push_bytes(&mut input, &request.payload);
        Fingerprint(openssl::sha::sha256(&input))
    }
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The answer a fingerprinted request got, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Milliseconds since the Unix epoch (wall clock: it must mean the same after a restart).
    pub at_ms: u64,
    /// The response code byte (class << 5 | detail).
    pub code: u8,
    pub content_format: Option<u16>,
    pub location_path: Vec<String>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable dedup record: {0}")]
pub struct RecordError(String);

/// Wall-clock milliseconds since the epoch (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Recorded {
    /// Recorded at `now` and still within `max_age` of it. A clock that went backwards
    /// counts as fresh only up to `max_age` into the future.
    pub fn is_fresh(&self, now: SystemTime, max_age: Duration) -> bool {
        let now = unix_ms(now);
        let age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        now.abs_diff(self.at_ms) < age
    }

    /// CBOR: `[at_ms, code, content_format or null, [location…], payload bytes]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut enc = minicbor::Encoder::new(Vec::new());
        // Writing into a Vec cannot fail.
        let _ = (|| -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
            enc.array(5)?.u64(self.at_ms)?.u8(self.code)?;
            match self.content_format {
                Some(cf) => enc.u16(cf)?,
                None => enc.null()?,
            };
            enc.array(self.location_path.len() as u64)?;
            for seg in &self.location_path {
                enc.str(seg)?;
            }
            enc.bytes(&self.payload)?;
            Ok(())
        })();
        enc.into_writer()
    }

    pub fn decode(bytes: &[u8]) -> Result<Recorded, RecordError> {
        let err = |e: minicbor::decode::Error| RecordError(e.to_string());
        let mut dec = minicbor::Decoder::new(bytes);
        if dec.array().map_err(err)? != Some(5) {
            return Err(RecordError("not a 5-element array".into()));
        }
        let at_ms = dec.u64().map_err(err)?;
        let code = dec.u8().map_err(err)?;
        let content_format = match dec.datatype().map_err(err)? {
            minicbor::data::Type::Null => {
                dec.skip().map_err(err)?;
                None
            }
            _ => Some(dec.u16().map_err(err)?),
        };
        let n = dec
            .array()
            .map_err(err)?
            .ok_or_else(|| RecordError("indefinite location".into()))?;
        let mut location_path = Vec::new();
        for _ in 0..n.min(16) {
            location_path.push(dec.str().map_err(err)?.to_owned());
        }
        let payload = dec.bytes().map_err(err)?.to_vec();
        Ok(Recorded {
            at_ms,
            code,
            content_format,
            location_path,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{CoapOption, MessageClass, RequestType};

    fn post(mid: u16, token: &[u8], payload: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = mid;
        p.set_token(token.to_vec());
        p.add_option(CoapOption::UriPath, b"GwConfig".to_vec());
        p.payload = payload.to_vec();
        p
    }

    #[test]
    fn fingerprints_differ_in_every_part() {
        let base = Fingerprint::of_request("ServerA", &post(1, &[1], b"x"));
        assert_eq!(
            base,
            Fingerprint::of_request("ServerA", &post(1, &[1], b"x"))
        );
        assert_ne!(
            base,
            Fingerprint::of_request("ServerB", &post(1, &[1], b"x"))
        );
        assert_ne!(
            base,
            Fingerprint::of_request("ServerA", &post(2, &[1], b"x"))
        );
        assert_ne!(
            base,
            Fingerprint::of_request("ServerA", &post(1, &[2], b"x"))
        );
        assert_ne!(
            base,
            Fingerprint::of_request("ServerA", &post(1, &[1], b"y"))
        );
        let mut other_path = post(1, &[1], b"x");
        other_path.add_option(CoapOption::UriPath, b"p1".to_vec());
        assert_ne!(base, Fingerprint::of_request("ServerA", &other_path));
    }

    #[test]
    fn records_round_trip_and_expire() {
        let r = Recorded {
            at_ms: 1_000_000,
            code: 0x41,
            content_format: Some(60),
            location_path: vec!["GwConfig".into(), "Privileges".into(), "p1".into()],
            payload: vec![0xa0, 0xff],
        };
        assert_eq!(Recorded::decode(&r.encode()).unwrap(), r);
        let plain = Recorded {
            content_format: None,
            location_path: vec![],
            ..r.clone()
        };
        assert_eq!(Recorded::decode(&plain.encode()).unwrap(), plain);
        assert!(Recorded::decode(b"\x80").is_err());
        let at = UNIX_EPOCH + Duration::from_millis(1_000_000);
        let life = Duration::from_secs(247);
        assert!(r.is_fresh(at + Duration::from_secs(246), life));
        assert!(!r.is_fresh(at + Duration::from_secs(247), life));
    }
}
