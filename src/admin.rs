//! The admin listener: probes and cache purge.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};

use crate::domain::{Action, MnpId, PackageKey, PlatformId};
use crate::error::GatewayError;
use crate::front::{json_response, probe, AppState, GatewayResponse};

/// Answers one request on the admin listener from the client at `peer`.
pub async fn handle<B>(
    state: Arc<AppState>,
    request: Request<B>,
    peer: SocketAddr,
) -> GatewayResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Some((response, _)) = probe(&state, &method, &path) {
        return response;
    }
    if let Err(e) = state.admin_access.check(peer.ip(), request.headers()) {
        return error_response(&e);
    }
    if method == Method::GET && path == "/metrics" {
        return metrics_response(&state);
    }
    let segments: Vec<&str> = path.split('/').collect();
    let outcome = match (&method, &segments[..]) {
        (&Method::DELETE, ["", "admin", "cache"]) => Ok(state.resolver.purge_all().await),
        (&Method::DELETE, ["", "admin", "cache", action, platform, mnp]) => {
            purge_one(&state, action, platform, mnp).await
        }
        _ => Err(GatewayError::NotFound(format!(
            "no admin route {method} {}",
            crate::domain::truncate_for_message(&path)
        ))),
    };
    match outcome {
        Ok(purged) => {
            tracing::info!(%path, purged, "cache purge");
            let body = serde_json::json!({ "purged": purged });
            json_response(StatusCode::OK, Bytes::from(body.to_string()))
        }
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &GatewayError) -> GatewayResponse {
    let body = serde_json::json!({"error": {"code": e.tc_code(), "message": e.message()}});
    json_response(e.rest_status(), Bytes::from(body.to_string()))
}

async fn purge_one(
    state: &AppState,
    action: &str,
    platform: &str,
    mnp: &str,
) -> Result<u64, GatewayError> {
    let action =
        Action::from_tc_name(action).or_else(|e| Action::from_rest_segment(action).ok_or(e))?;
    let key = PackageKey {
        action,
        platform_id: PlatformId::parse(platform)?,
        mnp_id: MnpId::parse(mnp)?,
    };
    Ok(u64::from(state.resolver.evict(&key).await))
}

/// `GET /metrics`: the Prometheus / OpenMetrics text exposition.
fn metrics_response(state: &AppState) -> GatewayResponse {
    let upstream = state.resolver.upstream();
    let waiting = Action::ALL.map(|a| (a, upstream.budget(a).waiting()));
    let degraded = state.resolver.fleet().is_some_and(|f| f.is_degraded());
    let text = state
        .metrics
        .encode(state.resolver.entry_count(), waiting, degraded);
    let mut response = http::Response::new(http_body_util::Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
