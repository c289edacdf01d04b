//! TC3-HMAC-SHA256 request signing: pure, given the timestamp and the exact body bytes.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The signing algorithm name.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The headers that are signed, in canonical order.
pub const SIGNED_HEADERS: &str = "content-type;host";

/// Everything a TC3 signature depends on.
#[derive(Clone, Copy, Debug)]
pub struct SigningInput<'a> {
    /// The SecretId.
    pub secret_id: &'a str,
    /// The SecretKey.
    pub secret_key: &'a str,
    /// Service name in the credential scope, e.g. `tcsas`.
    pub service: &'a str,
    /// The `Host` header value, with the port when there is one.
    pub host: &'a str,
    /// The `Content-Type` header value.
    pub content_type: &'a str,
    /// Unix seconds; also `X-TC-Timestamp`.
    pub timestamp: i64,
    /// The exact body bytes that are sent.
    pub body: &'a [u8],
}

/// The canonical request (method POST, URI `/`, empty query).
pub fn canonical_request(input: &SigningInput<'_>) -> String {
    format!(
        "POST\n/\n\ncontent-type:{}\nhost:{}\n\n{SIGNED_HEADERS}\n{}",
        input.content_type.trim().to_ascii_lowercase(),
        input.host.trim().to_ascii_lowercase(),
        hex::encode(Sha256::digest(input.body)),
    )
}

/// The UTC date (`YYYY-MM-DD`) of a Unix timestamp, as used in the credential scope.
pub fn utc_date(timestamp: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(timestamp)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// `<date>/<service>/tc3_request`.
pub fn credential_scope(input: &SigningInput<'_>) -> String {
    format!(
        "{}/{}/tc3_request",
        utc_date(input.timestamp),
        input.service
    )
}

/// The string to sign.
pub fn string_to_sign(input: &SigningInput<'_>) -> String {
    format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        input.timestamp,
        credential_scope(input),
        hex::encode(Sha256::digest(canonical_request(input).as_bytes())),
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The hex signature.
pub fn signature(input: &SigningInput<'_>) -> String {
    let secret_date = hmac_sha256(
        format!("TC3{}", input.secret_key).as_bytes(),
        utc_date(input.timestamp).as_bytes(),
    );
    let secret_service = hmac_sha256(&secret_date, input.service.as_bytes());
    let secret_signing = hmac_sha256(&secret_service, b"tc3_request");
    hex::encode(hmac_sha256(
        &secret_signing,
        string_to_sign(input).as_bytes(),
    ))
}

/// The `Authorization` header value.
pub fn authorization(input: &SigningInput<'_>) -> String {
    format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={SIGNED_HEADERS}, Signature={}",
        input.secret_id,
        credential_scope(input),
        signature(input),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_date_is_utc() {
        assert_eq!(utc_date(1767225599), "2025-12-31");
        assert_eq!(utc_date(1767225600), "2026-01-01");
    }
}
