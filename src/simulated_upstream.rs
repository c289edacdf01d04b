//! A stand-in for the TCSAS API, used by `demo` and the tests: it checks TC3
//! signatures, enforces the per-action rate limit as calls arrive, serves
//! presigned-style URLs, and counts everything it sees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::upstream::signer::{self, SigningInput};
use crate::upstream::unix_now_secs;

/// The SecretId the demo and the tests sign with.
pub const DEMO_SECRET_ID: &str = "AKIDsimulatedDEMOKEY0000000000000000";
/// The SecretKey the demo and the tests sign with.
pub const DEMO_SECRET_KEY: &str = "simulated-demo-secret-key-0000000";

/// How the simulator is set up.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// The only SecretId it accepts.
    pub secret_id: String,
    /// The SecretKey it verifies signatures with.
    pub secret_key: String,
    /// When set, `X-TC-Token` must equal it.
    pub token: Option<String>,
    /// Calls per action it accepts in any one-second window of arrivals.
    pub rate_limit_per_sec: usize,
    /// Validity window of the URLs it serves (`q-sign-time`).
    pub url_window_secs: u64,
    /// Service name expected in the credential scope.
    pub service: String,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            secret_id: DEMO_SECRET_ID.to_owned(),
            secret_key: DEMO_SECRET_KEY.to_owned(),
            token: None,
            rate_limit_per_sec: 20,
            url_window_secs: 600,
            service: "tcsas".to_owned(),
        }
    }
}

/// What the simulator answers for one (PlatformId, MNPId).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimAnswer {
    /// A fresh presigned URL.
    #[default]
    Url,
    /// `FailedOperation.MNPOnlineVersionNotExist`.
    NotExist,
    /// `FailedOperation.PackageAlreadyExpired`.
    Expired,
}

/// A way for upstream to fail, per key or for every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Never answer (the connection stays open).
    Hang,
    /// HTTP 500 with an HTML body.
    Http500,
    /// HTTP 200 with a body that is not JSON.
    NotJson,
    /// Close the connection without answering.
    ConnectionReset,
    /// `RequestLimitExceeded` in the envelope.
    RequestLimitExceeded,
    /// `InternalError` in the envelope.
    InternalError,
}

/// Per-key behaviour.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyBehaviour {
    /// What to answer.
    pub answer: SimAnswer,
    /// A failure that replaces the answer.
    pub fault: Option<Fault>,
    /// Extra delay before answering.
    pub latency: Duration,
    /// URL validity window for this key, instead of the default.
    pub url_window_secs: Option<u64>,
}

/// One call the simulator received.
#[derive(Clone, Debug)]
pub struct SeenCall {
    /// When it arrived.
    pub arrived: Instant,
    /// `X-TC-Action`.
    pub action: String,
    /// `PlatformId` from the body.
    pub platform_id: String,
    /// `MNPId` from the body.
    pub mnp_id: String,
    /// The SecretId in `Authorization`.
    pub secret_id: String,
    /// `X-TC-Timestamp`.
    pub timestamp: i64,
    /// `X-TC-Token`.
    pub token: Option<String>,
    /// `X-TC-Region`.
    pub region: Option<String>,
    /// `X-TC-TraceId`.
    pub trace_id: Option<String>,
    /// Every header, lower-case names.
    pub headers: Vec<(String, String)>,
    /// `ok` or the error code answered.
    pub outcome: String,
}

#[derive(Debug, Default)]
struct SimState {
    calls: Vec<SeenCall>,
    keys: HashMap<(String, String), KeyBehaviour>,
    served_versions: HashMap<(String, String), u64>,
    latency: Duration,
    fault: Option<Fault>,
    fail_next: HashMap<(String, String), (Fault, u32)>,
    /// SecretId -> what it signs with; the configured pair is always in it.
    accepted: HashMap<String, Accepted>,
    /// Temporary credentials minted by the metadata and STS endpoints.
    minted: u64,
    temp_lifetime_secs: i64,
    metadata_available: bool,
    metadata_fetches: usize,
    web_identity_tokens: Vec<String>,
}

/// Credentials the simulator accepts.
#[derive(Clone, Debug)]
struct Accepted {
    secret_key: String,
    token: Option<String>,
    expires_unix: Option<i64>,
}

/// A running simulator on a loopback port.
#[derive(Debug)]
pub struct SimulatedUpstream {
    addr: SocketAddr,
    config: Arc<SimulatorConfig>,
    state: Arc<Mutex<SimState>>,
    task: JoinHandle<()>,
}

impl Drop for SimulatedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimulatedUpstream {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start(config: SimulatorConfig) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, config: SimulatorConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut initial = SimState {
            temp_lifetime_secs: 7200,
            metadata_available: true,
            ..SimState::default()
        };
        initial.accepted.insert(
            config.secret_id.clone(),
            Accepted {
                secret_key: config.secret_key.clone(),
                token: config.token.clone(),
                expires_unix: None,
            },
        );
        let config = Arc::new(config);
        let state = Arc::new(Mutex::new(initial));
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&config),
            Arc::clone(&state),
        ));
        Ok(SimulatedUpstream {
            addr,
            config,
            state,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, for `upstream.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets what it answers for one (PlatformId, MNPId), for both actions.
    pub fn set_key(&self, platform_id: &str, mnp_id: &str, behaviour: KeyBehaviour) {
        self.state()
            .keys
            .insert((platform_id.to_owned(), mnp_id.to_owned()), behaviour);
    }

    /// Delay added to every answer (on top of a key's own latency).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// A failure for every call (a key's own fault wins), or `None` to heal.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state().fault = fault;
    }

    /// Also accepts these long-term credentials (for rotation tests).
    pub fn accept_credentials(&self, secret_id: &str, secret_key: &str) {
        self.state().accepted.insert(
            secret_id.to_owned(),
            Accepted {
                secret_key: secret_key.to_owned(),
                token: None,
                expires_unix: None,
            },
        );
    }

    /// Lifetime of the temporary credentials the metadata and STS endpoints mint.
    pub fn set_temporary_credential_lifetime(&self, secs: i64) {
        self.state().temp_lifetime_secs = secs;
    }

    /// Turns the metadata endpoint on or off (off: HTTP 404, no role bound).
    pub fn set_metadata_available(&self, available: bool) {
        self.state().metadata_available = available;
    }

    /// How many times the metadata endpoint handed out credentials.
    pub fn metadata_fetches(&self) -> usize {
        self.state().metadata_fetches
    }

    /// Every `WebIdentityToken` STS received, in order.
    pub fn web_identity_tokens(&self) -> Vec<String> {
        self.state().web_identity_tokens.clone()
    }

    /// Makes the next `calls` calls for one key fail with `fault`.
    pub fn fail_next(&self, platform_id: &str, mnp_id: &str, fault: Fault, calls: u32) {
        self.state()
            .fail_next
            .insert((platform_id.to_owned(), mnp_id.to_owned()), (fault, calls));
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<SeenCall> {
        self.state().calls.clone()
    }

    /// Calls received so far for one (PlatformId, MNPId), both actions.
    pub fn calls_for(&self, platform_id: &str, mnp_id: &str) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.platform_id == platform_id && c.mnp_id == mnp_id)
            .count()
    }

    /// All calls received so far.
    pub fn total_calls(&self) -> usize {
        self.state().calls.len()
    }

    /// The most calls of `action` that arrived within any one-second window.
    pub fn max_calls_in_any_second(&self, action: &str) -> usize {
        let arrivals: Vec<Instant> = self
            .state()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .map(|c| c.arrived)
            .collect();
        max_in_window(&arrivals, Duration::from_secs(1))
    }
}

/// Most entries of the sorted `arrivals` inside any half-open window of `width`.
fn max_in_window(arrivals: &[Instant], width: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, t) in arrivals.iter().enumerate() {
        while *t - arrivals[start] >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<SimulatorConfig>,
    state: Arc<Mutex<SimState>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let config = Arc::clone(&config);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let config = Arc::clone(&config);
                let state = Arc::clone(&state);
                async move { answer(&config, &state, request).await }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn envelope(response: Value) -> Response<Full<Bytes>> {
    let mut response_body = response;
    response_body["RequestId"] = json!(uuid::Uuid::new_v4().to_string());
    let mut reply = Response::new(Full::new(Bytes::from(
        json!({ "Response": response_body }).to_string(),
    )));
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    reply
}

fn api_error(code: &str, message: &str) -> Response<Full<Bytes>> {
    envelope(json!({"Error": {"Code": code, "Message": message}}))
}

/// Answers one call; an `Err` makes hyper drop the connection unanswered.
async fn answer(
    config: &SimulatorConfig,
    state: &Mutex<SimState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let arrived_early = Instant::now();
    if request.uri().path().starts_with(METADATA_PREFIX) {
        return Ok(metadata(state, request.uri().path()));
    }
    if request
        .headers()
        .get("x-tc-action")
        .is_some_and(|a| a == "AssumeRoleWithWebIdentity")
    {
        return Ok(assume_role_with_web_identity(state, request).await);
    }
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Ok(body) = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
    else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"body too large")));
        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        return Ok(r);
    };
    let fields: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let action = header("x-tc-action").unwrap_or_default();
    let authorization = header("authorization").unwrap_or_default();
    let mut call = SeenCall {
        arrived: arrived_early,
        action: action.clone(),
        platform_id: text("PlatformId"),
        mnp_id: text("MNPId"),
        secret_id: credential_of(&authorization).unwrap_or_default().to_owned(),
        timestamp: header("x-tc-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        token: header("x-tc-token"),
        region: header("x-tc-region"),
        trace_id: header("x-tc-traceid"),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        outcome: String::new(),
    };
    let key = (call.platform_id.clone(), call.mnp_id.clone());
    let (verdict, behaviour, fault, latency, version) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        // Arrival is stamped under the lock so the record stays in order.
        call.arrived = Instant::now();
        let recent = state
            .calls
            .iter()
            .rev()
            .take_while(|c| call.arrived - c.arrived < Duration::from_secs(1))
            .filter(|c| c.action == action)
            .count();
        let accepted = state.accepted.get(&call.secret_id).cloned();
        let verdict = check(config, &parts, &body, &call, accepted.as_ref(), recent);
        let behaviour = state.keys.get(&key).copied().unwrap_or_default();
        let one_off = match state.fail_next.get_mut(&key) {
            Some((fault, left)) if *left > 0 && verdict.is_ok() => {
                *left -= 1;
                Some(*fault)
            }
            _ => None,
        };
        let fault = one_off.or(behaviour.fault).or(state.fault);
        let latency = state.latency + behaviour.latency;
        let mut version = 0;
        if verdict.is_ok() && fault.is_none() && behaviour.answer == SimAnswer::Url {
            let v = state.served_versions.entry(key.clone()).or_insert(0);
            *v += 1;
            version = *v;
        }
        call.outcome = match (&verdict, behaviour.answer, fault) {
            (Err((code, _)), _, _) => code.to_string(),
            (Ok(()), _, Some(fault)) => format!("fault:{fault:?}"),
            (Ok(()), SimAnswer::Url, None) => "ok".to_owned(),
            (Ok(()), SimAnswer::NotExist, None) => {
                "FailedOperation.MNPOnlineVersionNotExist".to_owned()
            }
            (Ok(()), SimAnswer::Expired, None) => {
                "FailedOperation.PackageAlreadyExpired".to_owned()
            }
        };
        state.calls.push(call.clone());
        (verdict, behaviour, fault, latency, version)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Err((code, message)) = verdict {
        return Ok(api_error(code, &message));
    }
    if let Some(fault) = fault {
        return faulty_answer(fault).await;
    }
    Ok(match behaviour.answer {
        SimAnswer::NotExist => api_error(
            "FailedOperation.MNPOnlineVersionNotExist",
            "The mini program has no online version.",
        ),
        SimAnswer::Expired => api_error(
            "FailedOperation.PackageAlreadyExpired",
            "The offline package has expired.",
        ),
        SimAnswer::Url => {
            let window = behaviour.url_window_secs.unwrap_or(config.url_window_secs);
            let url = package_url(&action, &call.platform_id, &call.mnp_id, version, window);
            envelope(json!({"Data": {"Data": url}}))
        }
    })
}

/// The error a service returns to make hyper close the connection unanswered.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated connection reset")
    }
}

impl std::error::Error for ResetConnection {}

async fn faulty_answer(fault: Fault) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    match fault {
        Fault::Hang => {
            // Long enough for any test; the gateway's own timeout ends it first.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(ResetConnection)
        }
        Fault::Http500 => Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "<html><body>500 Internal Server Error</body></html>",
        )),
        Fault::NotJson => Ok(plain(StatusCode::OK, "<html>maintenance</html>")),
        Fault::ConnectionReset => Err(ResetConnection),
        Fault::RequestLimitExceeded => Ok(api_error(
            "RequestLimitExceeded",
            "The request frequency exceeds the limit of the action.",
        )),
        Fault::InternalError => Ok(api_error("InternalError", "An internal error occurred.")),
    }
}

/// A COS-style presigned URL valid from now for `window_secs`.
fn package_url(
    action: &str,
    platform_id: &str,
    mnp_id: &str,
    version: u64,
    window_secs: u64,
) -> String {
    let start = unix_now_secs();
    let end = start + window_secs as i64;
    let kind = if action == "DescribeMNGOfflinePackageURL" {
        "mng"
    } else {
        "mnp"
    };
    let path = format!("/{platform_id}/{kind}/{mnp_id}/v{version}.zip");
    let signature = hex::encode(&Sha256::digest(format!("{path}{start}{end}").as_bytes())[..20]);
    format!(
        "https://tcsas-pkg-1250000000.cos.ap-singapore.myqcloud.com{path}?q-sign-algorithm=sha1&q-ak=AKIDsimulatedCOS&q-sign-time={start};{end}&q-key-time={start};{end}&q-header-list=host&q-url-param-list=&q-signature={signature}"
    )
}

fn credential_of(authorization: &str) -> Option<&str> {
    authorization.split_once("Credential=")?.1.split('/').next()
}

type Verdict = Result<(), (&'static str, String)>;

/// Where the simulated CVM metadata service lives.
pub const METADATA_PREFIX: &str = "/latest/meta-data/";
/// The CAM role the simulated instance has.
const ROLE_NAME: &str = "tcsas-gateway-role";

/// Mints and registers one set of temporary credentials.
fn mint(state: &mut SimState, kind: &str) -> (String, String, String, i64) {
    state.minted += 1;
    let n = state.minted;
    let id = format!("AKIDtmp{kind}{n:08}");
    let key = format!(
        "tmp-secret-key-{kind}-{n}-{}",
        uuid::Uuid::new_v4().simple()
    );
    let token = format!("tmp-token-{kind}-{n}-{}", uuid::Uuid::new_v4().simple());
    let expires = unix_now_secs() + state.temp_lifetime_secs;
    state.accepted.insert(
        id.clone(),
        Accepted {
            secret_key: key.clone(),
            token: Some(token.clone()),
            expires_unix: Some(expires),
        },
    );
    (id, key, token, expires)
}

fn metadata(state: &Mutex<SimState>, path: &str) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if !state.metadata_available {
        return text(StatusCode::NOT_FOUND, "not found".to_owned());
    }
    let rest = &path[METADATA_PREFIX.len()..];
    match rest {
        "cam/security-credentials/" | "cam/security-credentials" => {
            text(StatusCode::OK, ROLE_NAME.to_owned())
        }
        _ if rest == format!("cam/security-credentials/{ROLE_NAME}") => {
            state.metadata_fetches += 1;
            let (id, key, token, expires) = mint(&mut state, "CVM");
            let body = json!({
                "TmpSecretId": id,
                "TmpSecretKey": key,
                "Token": token,
                "ExpiredTime": expires,
                "Expiration": time::OffsetDateTime::from_unix_timestamp(expires)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                "Code": "Success",
            });
            text(StatusCode::OK, body.to_string())
        }
        _ => text(StatusCode::NOT_FOUND, "not found".to_owned()),
    }
}

async fn assume_role_with_web_identity(
    state: &Mutex<SimState>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let skip = request
        .headers()
        .get("authorization")
        .is_some_and(|a| a == "SKIP");
    let body = Limited::new(request.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let fields: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or("");
    if !skip {
        return api_error(
            "AuthFailure.SignatureFailure",
            "Authorization must be SKIP.",
        );
    }
    if field("RoleArn").is_empty()
        || field("ProviderId").is_empty()
        || field("RoleSessionName").is_empty()
    {
        return api_error(
            "MissingParameter",
            "RoleArn, ProviderId and RoleSessionName are required.",
        );
    }
    let token = field("WebIdentityToken").to_owned();
    if token.is_empty() {
        return api_error(
            "InvalidParameter.WebIdentityTokenError",
            "The token is invalid.",
        );
    }
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    state.web_identity_tokens.push(token);
    let (id, key, session_token, expires) = mint(&mut state, "STS");
    envelope(json!({
        "Credentials": {"Token": session_token, "TmpSecretId": id, "TmpSecretKey": key},
        "ExpiredTime": expires,
        "Expiration": "",
    }))
}

/// What Tencent Cloud checks, in its order: headers, action, credentials,
/// timestamp, signature, rate limit, parameters.
fn check(
    config: &SimulatorConfig,
    parts: &http::request::Parts,
    body: &[u8],
    call: &SeenCall,
    accepted: Option<&Accepted>,
    recent_same_action: usize,
) -> Verdict {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let fail = |code: &'static str, message: &str| Err((code, message.to_owned()));
    if parts.method != http::Method::POST {
        return fail("UnsupportedProtocol", "only POST is simulated");
    }
    if !matches!(
        call.action.as_str(),
        "DescribeMNPOfflinePackageURL" | "DescribeMNGOfflinePackageURL"
    ) {
        return fail("InvalidAction", "The action does not exist.");
    }
    if header("x-tc-version") != Some("2025-01-06") {
        return fail("NoSuchVersion", "The API version does not exist.");
    }
    let Some(authorization) = header("authorization") else {
        return fail("AuthFailure.SignatureFailure", "Authorization is missing.");
    };
    let Some(accepted) = accepted else {
        return fail("AuthFailure.SecretIdNotFound", "The SecretId is not found.");
    };
    if (unix_now_secs() - call.timestamp).abs() > 300 {
        return fail(
            "AuthFailure.SignatureExpire",
            "The signature expired: the timestamp is more than 5 minutes off.",
        );
    }
    if accepted.token.is_some() && call.token != accepted.token {
        return fail("AuthFailure.TokenFailure", "The token is invalid.");
    }
    if accepted
        .expires_unix
        .is_some_and(|end| end <= unix_now_secs())
    {
        return fail(
            "AuthFailure.TokenFailure",
            "The temporary credentials have expired.",
        );
    }
    let expected = signer::authorization(&SigningInput {
        secret_id: &call.secret_id,
        secret_key: &accepted.secret_key,
        service: &config.service,
        host: header("host").unwrap_or(""),
        content_type: header("content-type").unwrap_or(""),
        timestamp: call.timestamp,
        body,
    });
    if authorization != expected {
        return fail(
            "AuthFailure.SignatureFailure",
            "The signature does not match.",
        );
    }
    if recent_same_action >= config.rate_limit_per_sec {
        return fail(
            "RequestLimitExceeded",
            "The request frequency exceeds the limit of the action.",
        );
    }
    if call.platform_id.is_empty() || call.mnp_id.is_empty() {
        return fail("MissingParameter", "PlatformId and MNPId are required.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_count_is_half_open() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let arrivals = [at(0), at(100), at(999), at(1000), at(1500)];
        assert_eq!(max_in_window(&arrivals, Duration::from_secs(1)), 3);
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }
}
