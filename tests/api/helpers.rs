//! `spawn_app()`: a gateway and a simulated upstream on loopback, plus request helpers.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tcsas_gateway::credentials::{CredentialProvider, CredentialStore, Credentials};
use tcsas_gateway::settings::Settings;
use tcsas_gateway::simulated_upstream::{SimulatedUpstream, SimulatorConfig};
use tcsas_gateway::App;
use tokio::sync::oneshot;

pub const PLATFORM: &str = "T04257DS9431720WTAG";
pub const MNP_ACTION: &str = "DescribeMNPOfflinePackageURL";
pub const MNG_ACTION: &str = "DescribeMNGOfflinePackageURL";

/// A running gateway wired to its own simulator.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub sim: SimulatedUpstream,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
    }
}

/// Settings for a test gateway: loopback port 0 for both listeners.
pub fn test_settings(endpoint: &str) -> Settings {
    let env = [
        ("TCSAS_GATEWAY__SERVER__LISTEN", "127.0.0.1:0"),
        ("TCSAS_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0"),
        ("TCSAS_GATEWAY__UPSTREAM__ENDPOINT", endpoint),
    ];
    Settings::load_with_env(None, env.map(|(k, v)| (k.to_owned(), v.to_owned())))
        .expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tune: impl FnOnce(&mut Settings)) -> TestApp {
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .expect("simulator starts");
    let mut settings = test_settings(&sim.endpoint());
    tune(&mut settings);
    let credentials = Credentials::new(&sim.config().secret_id, &sim.config().secret_key);
    let store = Arc::new(CredentialStore::with(credentials));
    start(sim, settings, store, None).await
}

/// A gateway whose credentials come from a real provider, reading `env`;
/// `tune` gets the settings and the simulator (for its endpoint).
pub async fn spawn_app_with_provider(
    env: Vec<(String, String)>,
    tune: impl FnOnce(&mut Settings, &SimulatedUpstream),
) -> TestApp {
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .expect("simulator starts");
    let mut settings = test_settings(&sim.endpoint());
    tune(&mut settings, &sim);
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    let provider =
        CredentialProvider::from_settings(&settings.credentials, |k| env.get(k).cloned())
            .expect("provider settings are valid");
    let (store, refresher) = provider.start().await.expect("credentials load");
    start(sim, settings, store, Some(refresher)).await
}

async fn start(
    sim: SimulatedUpstream,
    settings: Settings,
    store: Arc<CredentialStore>,
    refresher: Option<tokio::task::JoinHandle<()>>,
) -> TestApp {
    let app = App::build(settings, store).await.expect("app builds");
    let addr = app.local_addr();
    let admin = app.admin_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(tcsas_gateway::run(app, async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        admin,
        sim,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client builds"),
        stop: Some(stop),
        refresher,
    }
}

/// A parsed answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    /// `Response.Data.Data` (TC shape) or `url` (REST shape).
    pub fn url(&self) -> Option<&str> {
        self.body["Response"]["Data"]["Data"]
            .as_str()
            .or_else(|| self.body["url"].as_str())
    }

    /// `Response.Error.Code` (TC shape) or `error.code` (REST shape).
    pub fn error_code(&self) -> Option<&str> {
        self.body["Response"]["Error"]["Code"]
            .as_str()
            .or_else(|| self.body["error"]["code"].as_str())
    }
}

pub async fn into_answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn rest_path(kind: &str, platform: &str, mnp: &str) -> String {
        format!("/v1/platforms/{platform}/{kind}/{mnp}/offline-package-url")
    }

    /// `POST /` in the Tencent Cloud shape.
    pub fn tc(&self, action: &str, body: String) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/"))
            .header("X-TC-Action", action)
            .header("Content-Type", "application/json")
            .body(body)
    }

    pub async fn tc_get(&self, mnp: &str) -> Answer {
        into_answer(
            self.tc(MNP_ACTION, tc_body(PLATFORM, mnp))
                .send()
                .await
                .expect("sent"),
        )
        .await
    }

    pub async fn rest_get_owned(&self, mnp: String) -> Answer {
        self.rest_get(&mnp).await
    }

    pub async fn rest_get(&self, mnp: &str) -> Answer {
        let path = Self::rest_path("mini-programs", PLATFORM, mnp);
        into_answer(self.http.get(self.url(&path)).send().await.expect("sent")).await
    }
}

pub fn tc_body(platform: &str, mnp: &str) -> String {
    format!(r#"{{"MNPId":"{mnp}","PlatformId":"{platform}"}}"#)
}

/// Runs futures concurrently on this task and collects their outputs in order.
pub async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    futures_util::future::join_all(futures).await
}
