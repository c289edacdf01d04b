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
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;

use crate::access::AccessPolicy;
use crate::credentials::CredentialStore;
use crate::domain::{Action, PackageKey, Region};
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
    let started = Instant::now();
    let request_id = request_id(&request);
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path();
    let (mut response, log) = if let Some(probe) = probe(&state, &method, path) {
        // Probes answer everyone: kubelets send no token.
        probe
    } else if let Err(refused) = state.access.check(peer.ip(), &request) {
        if path == "/" {
            tc::refuse(&refused, &request_id)
        } else {
            rest::refuse(&refused)
        }
    } else if path == "/" {
        tc::handle(&state, request, &request_id).await
    } else {
        rest::handle(&state, request, &request_id).await
    };
    finish(&mut response, &request_id, log.cache);
    let took = started.elapsed();
    if log.front != "probe" {
        state
            .metrics
            .request(log.front, log.action, log.outcome(), took);
    }
    tracing::info!(
        request_id = %request_id,
        front = log.front,
        method = %method,
        path = %path,
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
fn finish(response: &mut GatewayResponse, request_id: &str, cache: Option<CacheStatus>) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    let cache = cache.unwrap_or(CacheStatus::Miss);
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(cache.as_str()));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The client's `X-Request-Id` when it is 1–128 characters of `[A-Za-z0-9._-]`, else a new one.
pub fn request_id<B>(request: &Request<B>) -> Arc<str> {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map(Arc::from)
        .unwrap_or_else(new_request_id)
}

/// A random (version 4) UUID. fastrand's thread-local generator rather than
/// the OS: ids need to be unique, not unpredictable, and a getrandom call per
/// request cost the hit path measurably (BENCHMARKS.md).
fn new_request_id() -> Arc<str> {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Arc::from(&*uuid.hyphenated().encode_lower(&mut text))
}

/// `X-TC-Region` when the client sent one.
pub fn client_region<B>(request: &Request<B>) -> Result<Option<Region>, GatewayError> {
    match request.headers().get("x-tc-region") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map_err(|_| GatewayError::InvalidParameter("X-TC-Region is not ASCII".to_owned()))
            .and_then(Region::parse)
            .map(Some),
    }
}

/// True when the client asked to revalidate (`Cache-Control: no-cache`).
pub fn wants_revalidation<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|d| d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0"))
}

/// Reads the whole body, refusing more than `limit_bytes`.
pub async fn read_body<B>(request: Request<B>, limit_bytes: usize) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit_bytes as u64) {
        return Err(GatewayError::BodyTooLarge { limit_bytes });
    }
    match Limited::new(request.into_body(), limit_bytes)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit_bytes })
        }
        Err(e) => Err(GatewayError::InvalidParameter(format!(
            "could not read the request body: {}",
            short(&e)
        ))),
    }
}

fn short(e: &dyn Display) -> String {
    e.to_string().chars().take(200).collect()
}

/// Appends a JSON string literal of `text` to `out`.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}
