//! Downstream: routes client requests to the TC-compatible or the REST shape, serves probes, logs each request.

pub mod rest;
pub mod tc;

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;

use crate::access::AccessPolicy;
use crate::credentials::CredentialStore;
use crate::domain::{Action, PackageKey, Region, RequestId};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::resolver::{CacheStatus, Resolver};
use crate::settings::Settings;

/// What every handler answers with.
pub type GatewayResponse = Response<Full<Bytes>>;

/// `X-Cache`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-TC-Region`.
static X_TC_REGION: HeaderName = HeaderName::from_static("x-tc-region");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    /// Cache, coalescing and upstream.
    pub resolver: Arc<Resolver>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Who may call the front listener.
    pub access: AccessPolicy,
    /// Who may call the admin routes.
    pub admin_access: AccessPolicy,
    /// The effective settings.
    pub settings: Arc<Settings>,
    /// The credentials upstream calls are signed with.
    pub credentials: Arc<CredentialStore>,
    /// False once shutdown has begun.
    pub accepting: AtomicBool,
}

impl AppState {
    /// Ready = serving and holding credentials.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err("shutting down");
        }
        if self.credentials.current().is_none() {
            return Err("no credentials loaded");
        }
        Ok(())
    }
}

/// What one request did, for its log line.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// `tc`, `rest` or `probe`.
    pub front: &'static str,
    /// The action, once known.
    pub action: Option<Action>,
    /// The key, once parsed.
    pub key: Option<PackageKey>,
    /// The error code; `None` means ok.
    pub error_code: Option<String>,
    /// Cache status, once known.
    pub cache: Option<CacheStatus>,
    /// Time spent in upstream calls for this answer.
    pub upstream_ms: Option<u64>,
}

impl RequestLog {
    /// `ok` or the error code.
    pub fn outcome(&self) -> &str {
        self.error_code.as_deref().unwrap_or("ok")
    }

    /// Records the error answered.
    pub fn failed(&mut self, e: &GatewayError) {
        self.error_code = Some(e.tc_code().to_owned());
    }

    fn new(front: &'static str) -> Self {
        RequestLog {
            front,
            ..RequestLog::default()
        }
    }
}

/// Answers one request on the front listener from the client at `peer`.
pub async fn handle<B>(
    state: Arc<AppState>,
    request: Request<B>,
    peer: SocketAddr,
) -> GatewayResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // One clock read serves the whole request: freshness, `Age` and the
    // deadline are all taken from the instant it arrived.
    let received = Instant::now();
    // Split once and passed down by reference: every future on the way holds
    // (and moves) a pointer instead of its own copy of the request head.
    let (parts, body) = request.into_parts();
    let request_id = RequestId::from_header(parts.headers.get(&X_REQUEST_ID));
    let path = parts.uri.path();
    let tc_shape = path == "/";
    let (mut response, log) = if let Some(probe) = probe(&state, &parts.method, path) {
        // Probes answer everyone: kubelets send no token.
        probe
    } else if let Err(refused) = state.access.check(peer.ip(), &parts.headers) {
        if tc_shape {
            tc::refuse(&refused, request_id.as_str())
        } else {
            rest::refuse(&refused)
        }
    } else if tc_shape {
        tc::handle(&state, &parts, body, &request_id, received).await
    } else {
        rest::handle(&state, &parts, &request_id, received).await
    };
    finish(&mut response, &request_id, log.cache);
    let took = received.elapsed();
    if log.front != "probe" {
        state
            .metrics
            .request(log.front, log.action, log.outcome(), took);
    }
    tracing::info!(
        request_id = %request_id,
        front = log.front,
        method = %parts.method,
        path,
        action = log.action.map(Action::tc_name),
        key = log.key.as_ref().map(tracing::field::display),
        outcome = log.outcome(),
        cache = log.cache.map(CacheStatus::as_str),
        upstream_ms = log.upstream_ms,
        status = response.status().as_u16(),
        duration_ms = took.as_micros() as f64 / 1000.0,
        "request"
    );
    response
}

/// `/healthz` and `/readyz`, if that is what was asked.
pub fn probe(
    state: &AppState,
    method: &Method,
    path: &str,
) -> Option<(GatewayResponse, RequestLog)> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let response = match path {
        "/healthz" => json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)),
        "/readyz" => match state.readiness() {
            Ok(()) => match state.resolver.fleet() {
                // Degraded still serves (from this replica's cache, with its
                // fallback budget): ready, with the detail for operators.
                Some(fleet) if fleet.is_degraded() => json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"status":"ready","redis":"degraded"}"#),
                ),
                Some(_) => json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"status":"ready","redis":"ok"}"#),
                ),
                None => json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
            },
            Err(reason) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from(
                    serde_json::json!({"status": "not ready", "reason": reason}).to_string(),
                ),
            ),
        },
        _ => return None,
    };
    Some((response, RequestLog::new("probe")))
}

/// A response with a JSON body and exactly `Content-Type: application/json`
/// (the official SDKs accept no parameters on it).
pub fn json_response(status: StatusCode, body: Bytes) -> GatewayResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    response
}

/// Adds the headers every answer carries.
fn finish(response: &mut GatewayResponse, request_id: &RequestId, cache: Option<CacheStatus>) {
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), request_id.to_header_value());
    let cache = cache.unwrap_or(CacheStatus::Miss);
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(cache.as_str()));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// When a request received at `received` must be answered.
pub fn deadline(state: &AppState, received: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(received) + state.settings.server.request_timeout()
}

/// `X-TC-Region` when the client sent one.
pub fn client_region(headers: &HeaderMap) -> Result<Option<Region>, GatewayError> {
    match headers.get(&X_TC_REGION) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map_err(|_| GatewayError::InvalidParameter("X-TC-Region is not ASCII".to_owned()))
            .and_then(Region::parse)
            .map(Some),
    }
}

/// True when the client asked to revalidate (`Cache-Control: no-cache`).
pub fn wants_revalidation(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|d| d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0"))
}

/// Reads the whole body, refusing more than `limit_bytes`.
///
/// Frame by frame rather than with `collect()`: the usual body is one frame,
/// kept as it is, and the future stays small (every request carries it).
pub async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit_bytes: usize,
) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit_bytes as u64) {
        return Err(GatewayError::BodyTooLarge { limit_bytes });
    }
    let mut body = std::pin::pin!(body);
    let mut len = 0;
    // The first data frame, until a second one comes; then all of them, joined.
    let mut first = Bytes::new();
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            GatewayError::InvalidParameter(format!(
                "could not read the request body: {}",
                short(&e)
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > limit_bytes {
            return Err(GatewayError::BodyTooLarge { limit_bytes });
        }
        if data.is_empty() {
            continue;
        }
        if first.is_empty() && joined.is_empty() {
            first = data;
            continue;
        }
        if joined.is_empty() {
            joined.extend_from_slice(&std::mem::take(&mut first));
        }
        joined.extend_from_slice(&data);
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.into()
    })
}

fn short(e: &dyn Display) -> String {
    e.to_string().chars().take(200).collect()
}

/// Appends a JSON string literal of `text` to `out`.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Ids and URLs rarely need escaping: copy those as they are.
    if !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn json_strings_are_written_as_serde_json_writes_them(text in "\\PC{0,40}|[\\x00-\\x7f]{0,40}") {
            let mut out = Vec::new();
            super::push_json_string(&mut out, &text);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }
}
