//! The typed parameters of the registration interface (LwM2M Core 1.1 §6.2.1–§6.2.2): the
//! LwM2M version, the binding, and what a Register or an Update carries once parsed.
//!
//! Plain values only: parsing them out of a CoAP request is [`super::request`], keeping them
//! per device is [`super::table`].

use std::fmt;

use super::link_format::ObjectList;

/// Lifetime when a Register carries no `lt` (LwM2M Core 1.1 §6.2.1, Table 6.2.1.-1).
pub const DEFAULT_LIFETIME_S: u32 = 86_400;

/// The LwM2M enabler version a client registered with (`lwm2m=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// LwM2M 1.0 (also what a Register without `lwm2m` means, as LwM2M 1.0 §5.3.1 defines).
    V1_0,
    /// LwM2M 1.1.
    V1_1,
    /// LwM2M 1.2.
    V1_2,
}

impl Version {
    /// The `lwm2m=` text of this version.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The version for an exact `lwm2m=` text, if the gateway supports it.
    pub fn from_query(text: &str) -> Option<Version> {
        [Version::V1_0, Version::V1_1, Version::V1_2]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The binding mode (`b=`). The gateway's LwM2M listeners serve UDP (and DTLS) only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Binding {
    /// `U`: UDP (the default when `b` is absent).
    #[default]
    U,
    /// `UQ`: UDP in queue mode (LwM2M 1.0 spelling; 1.1 clients send `b=U` and `Q`).
    UQ,
}

impl Binding {
    /// The `b=` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::U => "U",
            Binding::UQ => "UQ",
        }
    }

    /// The binding for an exact `b=` text, if the gateway supports it.
    pub fn from_query(text: &str) -> Option<Binding> {
        [Binding::U, Binding::UQ]
            .into_iter()
            .find(|b| b.as_str() == text)
    }

    /// Whether this binding alone means queue mode.
    pub fn is_queue(self) -> bool {
        self == Binding::UQ
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a Register carries besides the endpoint name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterParams {
    /// `lt`, seconds (≥ 1), [`DEFAULT_LIFETIME_S`] when absent.
    pub lifetime_s: u32,
    /// `lwm2m`, [`Version::V1_0`] when absent.
    pub version: Version,
    /// `b`, [`Binding::U`] when absent.
    pub binding: Binding,
    /// The `Q` flag (LwM2M 1.1+ queue mode).
    pub queue_flag: bool,
    /// The object list of the payload.
    pub objects: ObjectList,
}

impl RegisterParams {
    /// Whether the client asked for queue mode (`Q`, or `b=UQ`).
    pub fn queue_mode(&self) -> bool {
        self.queue_flag || self.binding.is_queue()
    }
}

/// What an Update carries: each field is `None` when the Update leaves it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateParams {
    /// A new `lt`, seconds (≥ 1).
    pub lifetime_s: Option<u32>,
    /// A new `b`.
    pub binding: Option<Binding>,
    /// A new object list (non-empty payload).
    pub objects: Option<ObjectList>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_unknown_ones_are_none() {
        for v in [Version::V1_0, Version::V1_1, Version::V1_2] {
            assert_eq!(Version::from_query(v.as_str()), Some(v));
            assert_eq!(v.to_string(), v.as_str());
        }
        for t in ["1.3", "2.0", "1", "1.10", ""] {
            assert_eq!(Version::from_query(t), None, "{t}");
        }
    }

    #[test]
    fn bindings_round_trip_and_queue() {
        assert_eq!(Binding::from_query("U"), Some(Binding::U));
        assert_eq!(Binding::from_query("UQ"), Some(Binding::UQ));
        for t in ["u", "S", "T", "UQS", "N", ""] {
            assert_eq!(Binding::from_query(t), None, "{t}");
        }
        assert!(Binding::UQ.is_queue() && !Binding::U.is_queue());
        assert_eq!(Binding::default(), Binding::U);
    }
}
