//! Which Content-Formats to ask a registered device for when reading `/2` (the Access
//! Control object), by the LwM2M version it registered with, and [`FormatMemory`]: the
//! per-device memory of the format that last worked, tried first next time.
//!
//! The orders follow what real clients answer (PEERS.md): TLV first, because every LwM2M
//! 1.x client must support it and Wakaama refuses SenML-CBOR and LwM2M-CBOR with 4.06;
//! then SenML-CBOR, SenML-JSON and LwM2M-CBOR for 1.1 and 1.2 clients. A 1.0 client gets
//! TLV only (LwM2M 1.0 knows no SenML or LwM2M-CBOR). Pure values; the read itself is the
//! caller's.

use super::params::Version;
use crate::lwm2m::content_format::{LWM2M_CBOR, SENML_CBOR, SENML_JSON, TLV};

const V1_0: &[u16] = &[TLV];
const V1_1: &[u16] = &[TLV, SENML_CBOR, SENML_JSON, LWM2M_CBOR];

/// The Accept values to try for `/2`, in order, for a client of `version`.
pub fn read_formats(version: Version) -> &'static [u16] {
    match version {
        Version::V1_0 => V1_0,
        Version::V1_1 | Version::V1_2 => V1_1,
    }
}

/// One device's Accept order for `/2`: the format that last worked first, then the rest in
/// [`read_formats`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatMemory {
    version: Version,
    last_good: Option<u16>,
}

impl FormatMemory {
    /// No memory yet, for a client registered with `version`.
    pub fn new(version: Version) -> FormatMemory {
        FormatMemory {
            version,
            last_good: None,
        }
    }

    /// The Accept order now.
    pub fn order(&self) -> Vec<u16> {
        let rest = read_formats(self.version)
            .iter()
            .copied()
            .filter(|&cf| Some(cf) != self.last_good);
        self.last_good.into_iter().chain(rest).collect()
    }

    /// The Accept value to try first.
    pub fn first(&self) -> u16 {
        self.last_good.unwrap_or(read_formats(self.version)[0])
    }

    /// The Accept value to try after `current` was answered 4.06 Not Acceptable, or `None`
    /// when the order is exhausted (or `current` is not in it).
    pub fn next_after_406(&self, current: u16) -> Option<u16> {
        let order = self.order();
        let at = order.iter().position(|&cf| cf == current)?;
        order.get(at + 1).copied()
    }

    /// Remembers that `cf` worked (a 2.05 that decoded). A format outside this version's
    /// order is ignored.
    pub fn worked(&mut self, cf: u16) {
        if read_formats(self.version).contains(&cf) {
            self.last_good = Some(cf);
        }
    }

    /// The remembered format, if any.
    pub fn last_good(&self) -> Option<u16> {
        self.last_good
    }

    /// A new Register changed the version: keep the memory only if still in the order.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
        if self
            .last_good
            .is_some_and(|cf| !read_formats(version).contains(&cf))
        {
            self.last_good = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_version() {
        assert_eq!(read_formats(Version::V1_0), &[11542]);
        assert_eq!(read_formats(Version::V1_1), &[11542, 112, 110, 11544]);
        assert_eq!(read_formats(Version::V1_2), &[11542, 112, 110, 11544]);
    }

    #[test]
    fn walks_the_order_on_406() {
        let m = FormatMemory::new(Version::V1_1);
        assert_eq!(m.first(), 11542);
        assert_eq!(m.next_after_406(11542), Some(112));
        assert_eq!(m.next_after_406(112), Some(110));
        assert_eq!(m.next_after_406(110), Some(11544));
        assert_eq!(m.next_after_406(11544), None);
        assert_eq!(m.next_after_406(60), None);
        assert_eq!(FormatMemory::new(Version::V1_0).next_after_406(11542), None);
    }

    #[test]
    fn remembers_what_worked_first() {
        let mut m = FormatMemory::new(Version::V1_2);
        m.worked(110);
        assert_eq!(m.first(), 110);
        assert_eq!(m.order(), vec![110, 11542, 112, 11544]);
        // The remembered format now answers 4.06: the rest is still tried, each once.
        assert_eq!(m.next_after_406(110), Some(11542));
        assert_eq!(m.next_after_406(11542), Some(112));
        assert_eq!(m.next_after_406(11544), None);
        m.worked(112);
        assert_eq!(m.order(), vec![112, 11542, 110, 11544]);
    }

    #[test]
    fn ignores_foreign_formats_and_forgets_on_version_change() {
        let mut m = FormatMemory::new(Version::V1_0);
        m.worked(112);
        assert_eq!(m.last_good(), None);
        let mut m = FormatMemory::new(Version::V1_1);
        m.worked(112);
        m.set_version(Version::V1_2);
        assert_eq!(m.last_good(), Some(112));
        m.set_version(Version::V1_0);
        assert_eq!(m.last_good(), None);
        assert_eq!(m.order(), vec![11542]);
    }
}
