//! Calls Tencent Cloud: rate budget, TC3 signing, the HTTP call and envelope parsing.

pub mod envelope;
pub mod rate_budget;
pub mod signer;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::credentials::CredentialStore;
use crate::domain::{Action, PackageKey, Region};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::settings::{SettingsError, UpstreamSettings};
use envelope::UpstreamAnswer;
use rate_budget::RateBudget;

/// Upstream answers larger than this are not the envelope we expect.
const MAX_UPSTREAM_BODY_BYTES: usize = 256 * 1024;
/// The content type the gateway sends and signs.
const CONTENT_TYPE: &str = "application/json";

/// A URL as upstream answered it.
#[derive(Clone, Debug)]
pub struct FetchedUrl {
    /// The presigned package URL.
    pub url: String,
    /// Upstream's `RequestId`.
    pub request_id: Option<String>,
}

/// The signing HTTP client for the TCSAS API, with one rate budget per action.
#[derive(Debug)]
pub struct UpstreamClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    host: String,
    service: String,
    version: String,
    default_region: Region,
    timeout: Duration,
    credentials: Arc<CredentialStore>,
    budgets: [RateBudget; Action::ALL.len()],
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    /// Builds the client; keep-alive connections are pooled across calls.
    pub fn new(
        settings: &UpstreamSettings,
        credentials: Arc<CredentialStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SettingsError> {
        let bad_endpoint = |problem: String| SettingsError {
            key: "upstream.endpoint".to_owned(),
            problem,
        };
        let endpoint =
            reqwest::Url::parse(&settings.endpoint).map_err(|e| bad_endpoint(e.to_string()))?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(bad_endpoint("has no host".to_owned())),
        };
        let default_region = Region::parse(&settings.region).map_err(|_| SettingsError {
            key: "upstream.region".to_owned(),
            problem: "must be 1-32 characters of [a-z0-9-]".to_owned(),
        })?;
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tcsas-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad_endpoint(format!("cannot build the HTTP client: {e}")))?;
        let budget = || RateBudget::new(settings.rate_limit_per_sec, settings.max_waiting);
        Ok(UpstreamClient {
            http,
            endpoint,
            host,
            service: settings.service.clone(),
            version: settings.version.clone(),
            default_region,
            timeout: Duration::from_millis(settings.timeout_ms),
            credentials,
            budgets: [budget(), budget()],
            metrics,
        })
    }

    /// The rate budget of one action.
    pub fn budget(&self, action: Action) -> &RateBudget {
        &self.budgets[action.index()]
    }

    /// Whether valid credentials are held to sign with.
    pub fn has_credentials(&self) -> bool {
        self.credentials.current().is_some()
    }

    /// The timeout of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The region used when the client names none.
    pub fn default_region(&self) -> &Region {
        &self.default_region
    }

    /// Makes one signed call holding `slot`, which stays busy until one
    /// second after the answer.
    pub async fn call<Slot: Send>(
        &self,
        key: &PackageKey,
        region: &Region,
        trace_id: &str,
        deadline: Instant,
        slot: Slot,
    ) -> Result<FetchedUrl, GatewayError> {
        let credentials = self
            .credentials
            .current()
            .ok_or_else(|| GatewayError::NotReady("no credentials loaded".to_owned()))?;
        let body = key.upstream_body();
        let timestamp = unix_now_secs();
        let authorization = signer::authorization(&signer::SigningInput {
            secret_id: &credentials.secret_id,
            secret_key: credentials.secret_key.expose(),
            service: &self.service,
            host: &self.host,
            content_type: CONTENT_TYPE,
            timestamp,
            body: &body,
        });
        let timeout = self
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .timeout(timeout)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(http::header::AUTHORIZATION, authorization)
            .header("X-TC-Action", key.action.tc_name())
            .header("X-TC-Version", &self.version)
            .header("X-TC-Region", region.as_str())
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-TraceId", trace_id)
            .body(body);
        if let Some(token) = &credentials.token {
            request = request.header("X-TC-Token", token.expose());
        }
        let sent_at = std::time::Instant::now();
        let outcome = self.send(request, timeout).await;
        let result = match &outcome {
            Ok(UpstreamAnswer::Url { .. }) => "ok",
            Ok(UpstreamAnswer::ApiError(api)) => api.code.as_str(),
            Err(_) => "transport",
        };
        self.metrics
            .upstream_call(key.action, result, sent_at.elapsed());
        if let Ok(UpstreamAnswer::ApiError(api)) = &outcome {
            if api.is_rate_limited() {
                // Before the slot is dropped, so this slot is held longer too.
                self.budget(key.action).note_throttled();
            }
            if api.code == "AuthFailure.SignatureExpire" {
                tracing::warn!(
                    code = %api.code,
                    "upstream rejected the request timestamp: check this host's clock (NTP)"
                );
            }
        }
        drop(slot);
        match outcome? {
            UpstreamAnswer::Url { url, request_id } => Ok(FetchedUrl { url, request_id }),
            UpstreamAnswer::ApiError(api) => Err(GatewayError::Upstream(api)),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                GatewayError::UpstreamTimeout {
                    timeout_ms: timeout.as_millis() as u64,
                }
            } else {
                GatewayError::UpstreamTransport(error_chain(&e.without_url()))
            }
        };
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_UPSTREAM_BODY_BYTES {
                return Err(GatewayError::UpstreamTransport(format!(
                    "upstream answer exceeds {MAX_UPSTREAM_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status != reqwest::StatusCode::OK {
            return Err(GatewayError::UpstreamTransport(format!(
                "upstream answered HTTP {}",
                status.as_u16()
            )));
        }
        envelope::parse_answer(&body).map_err(GatewayError::UpstreamTransport)
    }
}

/// The current Unix time in seconds.
pub fn unix_now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
