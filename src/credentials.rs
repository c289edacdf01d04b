//! Tencent Cloud credentials: the providers (env, profile file, CVM role, TKE
//! OIDC), the store the signer reads, and the background refresh.

pub mod cvm_role;
pub mod profile;
pub mod tke_oidc;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::settings::{CredentialProviderKind, CredentialSettings, Secret, SettingsError};

/// Environment variable with the SecretId (the official SDKs' name).
pub const ENV_SECRET_ID: &str = "TENCENTCLOUD_SECRET_ID";
/// Environment variable with the SecretKey.
pub const ENV_SECRET_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
/// Environment variable with the optional session token of temporary credentials.
pub const ENV_SESSION_TOKEN: &str = "TENCENTCLOUD_SESSION_TOKEN";

/// Longest pause between failed refresh attempts.
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);

/// One set of Tencent Cloud credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The SecretId (not secret: it appears in every `Authorization` header).
    pub secret_id: String,
    /// The SecretKey.
    pub secret_key: Secret,
    /// The session token of temporary credentials (`X-TC-Token`).
    pub token: Option<Secret>,
    /// When temporary credentials stop working; `None` for long-term keys.
    pub expires_at: Option<SystemTime>,
}

impl Credentials {
    /// Long-term credentials.
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Credentials {
            secret_id: secret_id.into(),
            secret_key: Secret::new(secret_key),
            token: None,
            expires_at: None,
        }
    }

    /// Reads `TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY` and the optional
    /// `TENCENTCLOUD_SESSION_TOKEN`; the error names the missing variable.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Credentials, SettingsError> {
        let value = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let required = |name: &str| {
            value(name).ok_or_else(|| SettingsError {
                key: name.to_owned(),
                problem: "is not set (credentials are required)".to_owned(),
            })
        };
        Ok(Credentials {
            secret_id: required(ENV_SECRET_ID)?.trim().to_owned(),
            secret_key: Secret::new(required(ENV_SECRET_KEY)?.trim()),
            token: value(ENV_SESSION_TOKEN).map(|t| Secret::new(t.trim())),
            expires_at: None,
        })
    }

    fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The credentials the gateway currently signs with; empty until loaded.
#[derive(Debug, Default)]
pub struct CredentialStore {
    current: RwLock<Option<Arc<Credentials>>>,
}

impl CredentialStore {
    /// A store holding `credentials`.
    pub fn with(credentials: Credentials) -> Self {
        CredentialStore {
            current: RwLock::new(Some(Arc::new(credentials))),
        }
    }

    /// The credentials to sign the next request with, unless none are held
    /// or they have expired.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .filter(|c| !c.is_expired(SystemTime::now()))
    }

    /// Replaces the credentials (rotation, refresh).
    pub fn replace(&self, credentials: Credentials) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(credentials));
    }
}

/// Why credentials could not be obtained (never carries a secret).
#[derive(Clone, Debug, thiserror::Error)]
pub enum CredentialError {
    /// The source has nothing to offer (unset variables, no file).
    #[error("{0}")]
    Missing(String),
    /// The source answered something unusable.
    #[error("{0}")]
    Invalid(String),
    /// The source could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

/// One place credentials come from.
#[derive(Clone, Debug)]
enum Source {
    Env(Credentials),
    Profile(PathBuf),
    CvmRole(cvm_role::MetadataService),
    TkeOidc(tke_oidc::WebIdentity),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Env(_) => "env",
            Source::Profile(_) => "profile",
            Source::CvmRole(_) => "cvm_role",
            Source::TkeOidc(_) => "tke_oidc",
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Credentials, CredentialError> {
        match self {
            Source::Env(credentials) => Ok(credentials.clone()),
            Source::Profile(path) => profile::read(path),
            Source::CvmRole(metadata) => metadata.fetch(http).await,
            Source::TkeOidc(identity) => identity.fetch(http).await,
        }
    }
}

/// Finds credentials the way the official SDKs do and keeps them fresh.
#[derive(Debug)]
pub struct CredentialProvider {
    kind: CredentialProviderKind,
    refresh_before_expiry: Duration,
    /// Candidates in order; after the first successful load, only the one that worked.
    candidates: Vec<Source>,
    http: reqwest::Client,
}

impl CredentialProvider {
    /// The provider `settings` ask for, reading the environment through `env`.
    /// Fails, naming the variable or file, when a static source is incomplete.
    pub fn from_settings(
        settings: &CredentialSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let profile_path = profile::path(&env);
        let env_set = env(ENV_SECRET_ID).is_some() || env(ENV_SECRET_KEY).is_some();
        let cvm =
            || cvm_role::MetadataService::new(&settings.cvm_metadata_url).map(Source::CvmRole);
        let candidates = match settings.provider {
            CredentialProviderKind::Env => vec![Source::Env(Credentials::from_env(&env)?)],
            CredentialProviderKind::Profile => {
                let path = profile_path.ok_or_else(|| SettingsError {
                    key: profile::ENV_CREDENTIALS_FILE.to_owned(),
                    problem: "is not set and HOME is unknown".to_owned(),
                })?;
                vec![Source::Profile(path)]
            }
            CredentialProviderKind::CvmRole => vec![cvm()?],
            CredentialProviderKind::TkeOidc => {
                vec![Source::TkeOidc(tke_oidc::WebIdentity::from_env(
                    &settings.sts_endpoint,
                    &env,
                )?)]
            }
            CredentialProviderKind::Chain => {
                let mut chain = Vec::new();
                if env_set {
                    chain.push(Source::Env(Credentials::from_env(&env)?));
                }
                if let Some(path) = profile_path.filter(|p| p.is_file()) {
                    chain.push(Source::Profile(path));
                }
                chain.push(cvm()?);
                if let Ok(identity) = tke_oidc::WebIdentity::from_env(&settings.sts_endpoint, &env)
                {
                    chain.push(Source::TkeOidc(identity));
                }
                chain
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| SettingsError {
                key: "credentials".to_owned(),
                problem: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(CredentialProvider {
            kind: settings.provider,
            refresh_before_expiry: Duration::from_secs(settings.refresh_before_expiry_secs),
            candidates,
            http,
        })
    }

    /// True when a failed first load should stop start-up: everything but an
    /// explicit `cvm_role` / `tke_oidc`, whose service may come up later
    /// (the gateway then starts not ready and keeps trying).
    pub fn fails_fast(&self) -> bool {
        !matches!(
            self.kind,
            CredentialProviderKind::CvmRole | CredentialProviderKind::TkeOidc
        )
    }

    /// Loads credentials from the first candidate that has them, which then
    /// becomes the only source.
    pub async fn load(&mut self) -> Result<Credentials, CredentialError> {
        let mut failures = Vec::new();
        for (index, source) in self.candidates.iter().enumerate() {
            match source.fetch(&self.http).await {
                Ok(credentials) => {
                    tracing::info!(provider = source.name(), secret_id = %credentials.secret_id, "credentials loaded");
                    let chosen = self.candidates.swap_remove(index);
                    self.candidates = vec![chosen];
                    return Ok(credentials);
                }
                Err(e) => failures.push(format!("{}: {e}", source.name())),
            }
        }
        Err(CredentialError::Missing(format!(
            "no credentials found ({})",
            failures.join("; ")
        )))
    }

    /// Loads credentials (an error only when [`fails_fast`](Self::fails_fast)),
    /// then keeps them fresh on a background task.
    pub async fn start(
        mut self,
    ) -> Result<(Arc<CredentialStore>, tokio::task::JoinHandle<()>), CredentialError> {
        let store = Arc::new(CredentialStore::default());
        match self.load().await {
            Ok(credentials) => store.replace(credentials),
            Err(e) if self.fails_fast() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "no credentials yet: starting not ready"),
        }
        let refresher = tokio::spawn(self.keep_fresh(Arc::clone(&store)));
        Ok((store, refresher))
    }

    /// Keeps `store` fresh until the task is dropped: re-reads a profile file
    /// when it changes, renews temporary credentials before they expire.
    pub async fn keep_fresh(mut self, store: Arc<CredentialStore>) {
        if store.current().is_none() {
            self.load_with_backoff(&store).await;
        }
        let Some(source) = self.candidates.first().cloned() else {
            return;
        };
        match source {
            Source::Env(_) => {}
            Source::Profile(path) => profile::watch(&path, &store).await,
            Source::CvmRole(_) | Source::TkeOidc(_) => loop {
                let now = SystemTime::now();
                let expires_at = store.current().and_then(|c| c.expires_at).unwrap_or(now);
                let refresh_at = expires_at
                    .checked_sub(self.refresh_before_expiry)
                    .unwrap_or(now)
                    .max(now + Duration::from_secs(1));
                tokio::time::sleep(refresh_at.duration_since(now).unwrap_or_default()).await;
                self.refresh_with_backoff(&source, &store).await;
            },
        }
    }

    async fn load_with_backoff(&mut self, store: &CredentialStore) {
        let mut pause = Duration::from_secs(1);
        loop {
            match self.load().await {
                Ok(credentials) => return store.replace(credentials),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "no credentials yet; not ready");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_REFRESH_BACKOFF);
                }
            }
        }
    }

    /// One refresh (single-flight: only this task refreshes), retried with
    /// back-off; the old credentials stay in use until they expire.
    async fn refresh_with_backoff(&self, source: &Source, store: &CredentialStore) {
        let mut pause = Duration::from_secs(1);
        loop {
            match source.fetch(&self.http).await {
                Ok(credentials) => {
                    tracing::info!(provider = source.name(), secret_id = %credentials.secret_id, "credentials refreshed");
                    return store.replace(credentials);
                }
                Err(e) => {
                    tracing::warn!(provider = source.name(), error = %e, retry_in = ?pause, "credential refresh failed; keeping the current ones until they expire");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_REFRESH_BACKOFF);
                }
            }
        }
    }
}
