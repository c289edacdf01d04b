//! Domain types parsed once at the edge: `PlatformId`, `MnpId`, `Action`, `Region`, `PackageKey`, `RequestId`.
//!
//! Past the front nothing handles a raw id string, so input that is not a
//! valid id can never reach upstream or spend rate budget.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use smol_str::SmolStr;

use crate::error::GatewayError;

/// The longest id the gateway accepts (PlatformId and MNPId alike).
pub const MAX_ID_LEN: usize = 64;

/// Checks the shared id grammar: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// Ids are kept in a `SmolStr`: the usual id (up to 23 bytes) lives inline,
/// so parsing one allocates nothing on the hit path and a cache key is one
/// allocation less per entry (BENCHMARKS.md).
fn parse_id(param: &'static str, raw: &str) -> Result<SmolStr, GatewayError> {
    if raw.is_empty() {
        return Err(GatewayError::MissingParameter(param));
    }
    let valid_chars = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if raw.len() > MAX_ID_LEN || !valid_chars {
        return Err(GatewayError::InvalidParameter(format!(
            "{param} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(SmolStr::new(raw))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $param:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(SmolStr);

        impl $name {
            /// The parameter name Tencent Cloud uses for this id.
            pub const PARAM: &'static str = $param;

            /// Parses a client-supplied id; the error names the parameter.
            pub fn parse(raw: &str) -> Result<Self, GatewayError> {
                parse_id(Self::PARAM, raw).map(Self)
            }

            /// The id as sent upstream.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0.as_str())
            }
        }
    };
}

id_type!(
    /// A superapp platform id (`PlatformId`), e.g. `T04257DS9431720WTAG`.
    PlatformId,
    "PlatformId"
);
id_type!(
    /// A mini program or mini game id (`MNPId`), e.g. `mpjl3td541qppx9k`.
    MnpId,
    "MNPId"
);

/// The upstream API action: mini programs and mini games have one each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `DescribeMNPOfflinePackageURL`
    MiniProgram,
    /// `DescribeMNGOfflinePackageURL`
    MiniGame,
}

impl Action {
    /// Every action, in a fixed order (used to size per-action state).
    pub const ALL: [Action; 2] = [Action::MiniProgram, Action::MiniGame];

    /// The Tencent Cloud action name (`X-TC-Action`).
    pub fn tc_name(self) -> &'static str {
        match self {
            Action::MiniProgram => "DescribeMNPOfflinePackageURL",
            Action::MiniGame => "DescribeMNGOfflinePackageURL",
        }
    }

    /// Parses an `X-TC-Action` value.
    pub fn from_tc_name(name: &str) -> Result<Self, GatewayError> {
        Action::ALL
            .into_iter()
            .find(|a| a.tc_name() == name)
            .ok_or_else(|| {
                GatewayError::InvalidAction(format!(
                    "action must be DescribeMNPOfflinePackageURL or DescribeMNGOfflinePackageURL, got {:?}",
                    truncate_for_message(name)
                ))
            })
    }

    /// The REST path segment (`mini-programs` / `mini-games`).
    pub fn rest_segment(self) -> &'static str {
        match self {
            Action::MiniProgram => "mini-programs",
            Action::MiniGame => "mini-games",
        }
    }

    /// Parses a REST path segment.
    pub fn from_rest_segment(segment: &str) -> Option<Self> {
        Action::ALL
            .into_iter()
            .find(|a| a.rest_segment() == segment)
    }

    /// A dense index for per-action arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tc_name())
    }
}

/// A Tencent Cloud region such as `ap-singapore` (`X-TC-Region`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region(Arc<str>);

impl Region {
    /// Parses a region name: 1–32 characters of `[a-z0-9-]`.
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let ok = !raw.is_empty()
            && raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Region(Arc::from(raw)))
        } else {
            Err(GatewayError::InvalidParameter(
                "X-TC-Region must be 1-32 characters of [a-z0-9-]".to_owned(),
            ))
        }
    }

    /// The region as sent upstream.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the cache is keyed by: one package URL per (action, PlatformId, MNPId).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageKey {
    /// Mini program or mini game.
    pub action: Action,
    /// The platform the package belongs to.
    pub platform_id: PlatformId,
    /// The mini program / mini game.
    pub mnp_id: MnpId,
}

impl PackageKey {
    /// The exact JSON body sent upstream for this key.
    pub fn upstream_body(&self) -> Vec<u8> {
        // Ids are [A-Za-z0-9_-] only, so they need no JSON escaping.
        format!(
            r#"{{"MNPId":"{}","PlatformId":"{}"}}"#,
            self.mnp_id, self.platform_id
        )
        .into_bytes()
    }
}

impl fmt::Display for PackageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.action, self.platform_id, self.mnp_id)
    }
}

/// A request's id (`X-Request-Id`, sent upstream as `X-TC-TraceId`).
#[derive(Clone)]
pub enum RequestId {
    /// The client's, sharing the bytes of its request header.
    Client(HeaderValue),
    /// Made here: a hyphenated v4 UUID kept inline, so passing it around
    /// allocates nothing.
    Generated([u8; 36]),
}

impl RequestId {
    /// The client's `X-Request-Id` when it is 1–128 characters of
    /// `[A-Za-z0-9._-]`, else a new one.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        let valid = |v: &&HeaderValue| {
            (1..=128).contains(&v.len())
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        match value.filter(valid) {
            Some(value) => RequestId::Client(value.clone()),
            None => RequestId::generate(),
        }
    }

    /// A random (version 4) UUID. fastrand's thread-local generator rather
    /// than the OS: ids need to be unique, not unpredictable, and a getrandom
    /// call per request cost the hit path measurably (BENCHMARKS.md).
    pub fn generate() -> Self {
        let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut text);
        RequestId::Generated(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Both forms hold visible ASCII only (checked or generated above).
        match self {
            RequestId::Client(value) => value.to_str().unwrap_or_default(),
            RequestId::Generated(text) => std::str::from_utf8(text).unwrap_or_default(),
        }
    }

    /// The id as a response header value.
    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            RequestId::Client(value) => value.clone(),
            RequestId::Generated(text) => {
                HeaderValue::from_bytes(text).unwrap_or(HeaderValue::from_static(""))
            }
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({:?})", self.as_str())
    }
}

/// Cuts client-controlled text before it is echoed in an error message.
pub(crate) fn truncate_for_message(raw: &str) -> String {
    raw.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_examples() {
        assert!(PlatformId::parse("T04257DS9431720WTAG").is_ok());
        assert!(MnpId::parse("mpjl3td541qppx9k").is_ok());
        assert!(MnpId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn ids_reject_empty_long_and_foreign_characters() {
        assert!(matches!(
            MnpId::parse(""),
            Err(GatewayError::MissingParameter("MNPId"))
        ));
        assert!(MnpId::parse(&"a".repeat(65)).is_err());
        for bad in ["a b", "a/b", "é", "a.b", "a\"b", "a\nb"] {
            assert!(PlatformId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn an_id_parses_exactly_when_it_fits_the_grammar(raw in "[A-Za-z0-9_./ \"\\-]{0,70}|\\PC{0,70}") {
            let fits = (1..=64).contains(&raw.len())
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            proptest::prop_assert_eq!(MnpId::parse(&raw).is_ok(), fits);
            proptest::prop_assert_eq!(PlatformId::parse(&raw).is_ok(), fits);
        }

        #[test]
        fn every_valid_id_round_trips(raw in "[A-Za-z0-9_-]{1,64}") {
            let id = MnpId::parse(&raw).unwrap();
            proptest::prop_assert_eq!(id.as_str(), raw.as_str());
        }
    }

    #[test]
    fn a_valid_client_request_id_is_kept_and_a_bad_one_replaced() {
        let kept = RequestId::from_header(Some(&HeaderValue::from_static("abc-1.2_3")));
        assert_eq!(kept.as_str(), "abc-1.2_3");
        for bad in ["", "a b", "a/b"] {
            let id = RequestId::from_header(Some(&HeaderValue::from_static(bad)));
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{bad:?} kept");
        }
        let made = RequestId::from_header(None);
        assert_eq!(made.to_header_value(), made.as_str());
        assert_ne!(made.as_str(), RequestId::generate().as_str());
    }

    #[test]
    fn upstream_body_is_compact_json() {
        let key = PackageKey {
            action: Action::MiniProgram,
            platform_id: PlatformId::parse("P1").unwrap(),
            mnp_id: MnpId::parse("m-1").unwrap(),
        };
        assert_eq!(key.upstream_body(), br#"{"MNPId":"m-1","PlatformId":"P1"}"#);
    }
}
