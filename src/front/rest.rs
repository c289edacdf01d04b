//! The plain REST shape: `GET /v1/platforms/{PlatformId}/{mini-programs|mini-games}/{MNPId}/offline-package-url`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, ALLOW, CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, StatusCode};

use super::{
    client_region, json_response, wants_revalidation, AppState, GatewayResponse, RequestLog,
};
use crate::domain::{Action, MnpId, PackageKey, PlatformId};
use crate::error::GatewayError;
use crate::resolver::Lookup;

/// Handles every path other than `/` and the probes.
pub async fn handle<B>(
    state: &Arc<AppState>,
    request: Request<B>,
    request_id: &Arc<str>,
) -> (GatewayResponse, RequestLog) {
    let mut log = RequestLog::new("rest");
    let lookup = match parse(&request, request_id, state, &mut log) {
        Ok(lookup) => lookup,
        Err(e) => return (error_response(&e, &mut log), log),
    };
    let resolution = state.resolver.resolve(lookup).await;
    log.cache = Some(resolution.cache);
    log.upstream_ms = resolution.upstream_ms;
    let response = match resolution.outcome {
        Ok(served) => {
            let now = Instant::now();
            let mut response = json_response(StatusCode::OK, served.url.rest_body.clone());
            let headers = response.headers_mut();
            let max_age = format!("max-age={}", served.url.fresh_secs_left(now));
            if let Ok(value) = HeaderValue::from_str(&max_age) {
                headers.insert(CACHE_CONTROL, value);
            }
            headers.insert(AGE, HeaderValue::from(served.url.age_secs(now)));
            response
        }
        Err(e) => error_response(&e, &mut log),
    };
    (response, log)
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

fn parse<B>(
    request: &Request<B>,
    request_id: &Arc<str>,
    state: &AppState,
    log: &mut RequestLog,
) -> Result<Lookup, GatewayError> {
    let mut segments = request.uri().path().splitn(8, '/');
    let mut next = || segments.next().unwrap_or("/");
    let [_, v1, platforms, platform, kind, mnp, leaf, rest] = std::array::from_fn(|_| next());
    let ("v1", "platforms", "offline-package-url", "/") = (v1, platforms, leaf, rest) else {
        return Err(GatewayError::NotFound(format!(
            "no route for {}; see /v1/platforms/{{PlatformId}}/mini-programs/{{MNPId}}/offline-package-url",
            crate::domain::truncate_for_message(request.uri().path())
        )));
    };
    let action = Action::from_rest_segment(kind).ok_or_else(|| {
        GatewayError::NotFound("the kind must be mini-programs or mini-games".to_owned())
    })?;
    log.action = Some(action);
    if request.method() != Method::GET {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed here; use GET",
            request.method()
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
        region: client_region(request)?,
        revalidate: wants_revalidation(request),
        deadline: tokio::time::Instant::now() + state.settings.server.request_timeout(),
        request_id: Arc::clone(request_id),
    })
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
