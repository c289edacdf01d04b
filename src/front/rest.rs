//! The plain REST shape: `GET /v1/platforms/{PlatformId}/{mini-programs|mini-games}/{MNPId}/offline-package-url`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, ALLOW, CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Method, StatusCode};

use super::{
    client_region, json_response, wants_revalidation, AppState, GatewayResponse, RequestLog,
};
use crate::domain::{Action, MnpId, PackageKey, PlatformId, RequestId};
use crate::error::GatewayError;
use crate::resolver::{Lookup, Served};

/// Handles every path other than `/` and the probes.
pub async fn handle(
    state: &Arc<AppState>,
    request: &Parts,
    request_id: &RequestId,
    received: Instant,
) -> (GatewayResponse, RequestLog) {
    let mut log = RequestLog::new("rest");
    let lookup = match parse(request, request_id, received, state, &mut log) {
        Ok(lookup) => lookup,
        Err(e) => return (error_response(&e, &mut log), log),
    };
    let resolution = state.resolver.resolve(lookup).await;
    log.cache = Some(resolution.cache);
    log.upstream_ms = resolution.upstream_ms;
    let response = match resolution.outcome {
        Ok(served) => {
            let mut response = json_response(StatusCode::OK, url_body(&served));
            let headers = response.headers_mut();
            headers.insert(
                CACHE_CONTROL,
                seconds(b"max-age=", served.url().fresh_secs_left(received)),
            );
            headers.insert(AGE, seconds(b"", served.url().age_secs(received)));
            response
        }
        Err(e) => error_response(&e, &mut log),
    };
    (response, log)
}

/// `{"url":<URL>}`, written into one exact allocation.
fn url_body(served: &Served) -> Bytes {
    const HEAD: &[u8] = br#"{"url":"#;
    let mut body = Vec::with_capacity(HEAD.len() + served.url_json_len() + 1);
    body.extend_from_slice(HEAD);
    served.write_url_json(&mut body);
    body.push(b'}');
    Bytes::from(body)
}

/// `<head><secs>` as a header value, in one allocation (`format!` and
/// `HeaderValue::from(u64)` take two).
fn seconds(head: &[u8], secs: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(secs).as_bytes();
    let mut text = [0u8; 32];
    let len = head.len() + digits.len();
    text[..head.len()].copy_from_slice(head);
    text[head.len()..len].copy_from_slice(digits);
    // A short ASCII head and digits: always a valid header value.
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static("0"))
}

/// Answers a refused client: 401 (with `WWW-Authenticate`) or 403.
pub fn refuse(e: &GatewayError) -> (GatewayResponse, RequestLog) {
    let mut log = RequestLog::new("rest");
    let mut response = error_response(e, &mut log);
    if matches!(e, GatewayError::Unauthorized(_)) {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    (response, log)
}

fn parse(
    request: &Parts,
    request_id: &RequestId,
    received: Instant,
    state: &AppState,
    log: &mut RequestLog,
) -> Result<Lookup, GatewayError> {
    let path = request.uri.path();
    let Some((platform, kind, mnp)) = route(path) else {
        return Err(GatewayError::NotFound(format!(
            "no route for {}; see /v1/platforms/{{PlatformId}}/mini-programs/{{MNPId}}/offline-package-url",
            crate::domain::truncate_for_message(path)
        )));
    };
    let action = Action::from_rest_segment(kind).ok_or_else(|| {
        GatewayError::NotFound("the kind must be mini-programs or mini-games".to_owned())
    })?;
    log.action = Some(action);
    if request.method != Method::GET {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed here; use GET",
            request.method
        )));
    }
    let key = PackageKey {
        action,
        platform_id: PlatformId::parse(platform)?,
        mnp_id: MnpId::parse(mnp)?,
    };
    log.key = Some(key.clone());
    Ok(Lookup {
        key,
        region: client_region(&request.headers)?,
        revalidate: wants_revalidation(&request.headers),
        received,
        deadline: super::deadline(state, received),
        request_id: request_id.clone(),
    })
}

/// `(PlatformId, kind, MNPId)` of `/v1/platforms/{PlatformId}/{kind}/{MNPId}/offline-package-url`.
fn route(path: &str) -> Option<(&str, &str, &str)> {
    // A byte scan: `split('/')` goes through memchr, which costs more than
    // it saves on segments this short.
    fn segment(rest: &str) -> Option<(&str, &str)> {
        let slash = rest.bytes().position(|b| b == b'/')?;
        Some((&rest[..slash], &rest[slash + 1..]))
    }
    let rest = path.strip_prefix("/v1/platforms/")?;
    let (platform, rest) = segment(rest)?;
    let (kind, rest) = segment(rest)?;
    let (mnp, leaf) = segment(rest)?;
    (leaf == "offline-package-url").then_some((platform, kind, mnp))
}

/// `{"error":{"code":...,"message":...}}` with the status the error maps to.
fn error_response(e: &GatewayError, log: &mut RequestLog) -> GatewayResponse {
    log.failed(e);
    let body = serde_json::json!({"error": {"code": e.tc_code(), "message": e.message()}});
    let mut response = json_response(e.rest_status(), Bytes::from(body.to_string()));
    if let Some(after) = e.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    if matches!(e, GatewayError::MethodNotAllowed(_)) {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response
}
