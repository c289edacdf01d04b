//! Typed, layered settings: built-in defaults → TOML file → `TCSAS_GATEWAY__…` environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The built-in defaults: the same file that documents every key.
const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "TCSAS_GATEWAY";

/// Everything the gateway can be configured with.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The front (downstream) listener.
    pub server: ServerSettings,
    /// The Tencent Cloud API.
    pub upstream: UpstreamSettings,
    /// The URL cache.
    pub cache: CacheSettings,
    /// Where credentials come from.
    pub credentials: CredentialSettings,
    /// The admin listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Fleet mode.
    pub redis: RedisSettings,
}

/// `[redis]`: fleet mode (unset `url`: embedded single-process mode).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL; unset for the embedded mode.
    pub url: Option<String>,
    /// Each replica's own upstream budget while Redis is unreachable.
    pub fallback_rate_per_sec: u32,
    /// A Redis operation slower than this counts as Redis trouble.
    pub timeout_ms: u64,
    /// `url` lists a Redis Cluster's seed nodes (comma-separated).
    pub cluster: bool,
    /// PEM file of the CA that signed the Redis server's certificate
    /// (`rediss://` with a private CA); unset: public WebPKI roots.
    pub ca_file: Option<String>,
}

/// `[server]`: the front listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the front listener.
    pub listen: SocketAddr,
    /// Longest a client request may take end to end.
    pub request_timeout_ms: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Time allowed for a client to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Client address ranges allowed to call; empty allows any.
    pub allow_cidrs: Vec<String>,
    /// A file holding the bearer token clients must present; unset: none needed.
    pub auth_token_file: Option<String>,
}

/// `[upstream]`: the Tencent Cloud TCSAS API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Base URL, e.g. `https://tcsas.intl.tencentcloudapi.com`.
    pub endpoint: String,
    /// Service name in the credential scope.
    pub service: String,
    /// `X-TC-Version`.
    pub version: String,
    /// Default `X-TC-Region`.
    pub region: String,
    /// Ceiling on upstream calls per action in any one-second window.
    pub rate_limit_per_sec: u32,
    /// Timeout of one upstream call.
    pub timeout_ms: u64,
    /// Most requests waiting at once, per action for a rate slot and per key
    /// behind one in-flight call.
    pub max_waiting: usize,
    /// Retries of retryable failures.
    pub max_retries: u32,
    /// After a failed refresh, how long a key with a stale URL is not retried.
    pub error_backoff_secs: u64,
}

/// `[cache]`: the URL cache.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Freshness of a cached URL.
    pub ttl_secs: u64,
    /// Capacity bound.
    pub max_entries: u64,
    /// How long "no online version" is remembered.
    pub negative_ttl_secs: u64,
    /// A URL is dropped this long before its own expiry.
    pub expiry_margin_secs: u64,
    /// Stale-while-revalidate window after freshness ends.
    pub stale_secs: u64,
    /// Stale-if-error window after freshness ends.
    pub stale_if_error_secs: u64,
}

/// `[credentials]`: where Tencent Cloud credentials come from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSettings {
    /// The provider.
    pub provider: CredentialProviderKind,
    /// Base URL of the CVM metadata service.
    pub cvm_metadata_url: String,
    /// STS endpoint for TKE OIDC.
    pub sts_endpoint: String,
    /// Temporary credentials are renewed this long before they expire.
    pub refresh_before_expiry_secs: u64,
}

/// `credentials.provider`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialProviderKind {
    /// Environment, then profile file, then CVM role, then TKE OIDC.
    Chain,
    /// `TENCENTCLOUD_SECRET_ID` / `TENCENTCLOUD_SECRET_KEY` / `TENCENTCLOUD_SESSION_TOKEN`.
    Env,
    /// `TENCENTCLOUD_CREDENTIALS_FILE`, else `~/.tencentcloud/credentials`.
    Profile,
    /// The CVM instance role, from the metadata service.
    CvmRole,
    /// TKE OIDC: STS `AssumeRoleWithWebIdentity`.
    TkeOidc,
}

/// `[admin]`: the admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// A file holding the bearer token the admin routes require; unset: none needed.
    pub auth_token_file: Option<String>,
}

/// `[log]`: logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// Tracing filter directive.
    pub level: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that is missing or invalid: names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {key}: {problem}")]
pub struct SettingsError {
    /// The dotted key, e.g. `upstream.rate_limit_per_sec`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SettingsError {
    fn new(key: &str, problem: impl Into<String>) -> Self {
        SettingsError {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError::new(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let prefix = format!("{ENV_PREFIX}__");
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("server.allow_cidrs")
                .source(Some(overrides)),
        );
        let raw = builder.build().map_err(describe_config_error)?;
        let settings: Settings = raw.try_deserialize().map_err(describe_config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks value ranges; the error names the first bad key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let endpoint = url::Url::parse(&self.upstream.endpoint)
            .map_err(|e| SettingsError::new("upstream.endpoint", e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(SettingsError::new(
                "upstream.endpoint",
                "must be an http:// or https:// URL with a host",
            ));
        }
        for (key, value) in [
            (
                "credentials.cvm_metadata_url",
                &self.credentials.cvm_metadata_url,
            ),
            ("credentials.sts_endpoint", &self.credentials.sts_endpoint),
        ] {
            let ok = url::Url::parse(value)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(SettingsError::new(
                    key,
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        if let Some(urls) = &self.redis.url {
            let ok = urls.split(',').all(|url| {
                url::Url::parse(url.trim()).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss"))
            });
            if !ok {
                return Err(SettingsError::new(
                    "redis.url",
                    "must be a redis:// or rediss:// URL (comma-separated seed nodes with redis.cluster)",
                ));
            }
            if urls.contains(',') && !self.redis.cluster {
                return Err(SettingsError::new(
                    "redis.url",
                    "lists several nodes: set redis.cluster = true for a Redis Cluster",
                ));
            }
        }
        if !(1..=10_000).contains(&self.redis.fallback_rate_per_sec) {
            return Err(SettingsError::new(
                "redis.fallback_rate_per_sec",
                "must be between 1 and 10000",
            ));
        }
        if crate::domain::Region::parse(&self.upstream.region).is_err() {
            return Err(SettingsError::new(
                "upstream.region",
                "must be 1-32 characters of [a-z0-9-]",
            ));
        }
        let checks: [(&str, bool, &str); 11] = [
            (
                "upstream.max_retries",
                self.upstream.max_retries <= 10,
                "must be at most 10",
            ),
            (
                "upstream.rate_limit_per_sec",
                (1..=10_000).contains(&self.upstream.rate_limit_per_sec),
                "must be between 1 and 10000",
            ),
            (
                "upstream.timeout_ms",
                (1..=600_000).contains(&self.upstream.timeout_ms),
                "must be between 1 and 600000",
            ),
            (
                "upstream.max_waiting",
                self.upstream.max_waiting >= 1,
                "must be at least 1",
            ),
            (
                "upstream.service",
                is_token(&self.upstream.service),
                "must be a non-empty name of [a-z0-9-]",
            ),
            (
                "upstream.version",
                is_token(&self.upstream.version),
                "must be a non-empty version such as 2025-01-06",
            ),
            (
                "server.request_timeout_ms",
                (1..=600_000).contains(&self.server.request_timeout_ms),
                "must be between 1 and 600000",
            ),
            (
                "server.max_body_bytes",
                (256..=16 << 20).contains(&self.server.max_body_bytes),
                "must be between 256 and 16777216",
            ),
            (
                "server.max_connections",
                self.server.max_connections >= 1,
                "must be at least 1",
            ),
            (
                "cache.max_entries",
                self.cache.max_entries >= 1,
                "must be at least 1",
            ),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms >= 1,
                "must be at least 1",
            ),
        ];
        for (key, ok, problem) in checks {
            if !ok {
                return Err(SettingsError::new(key, problem));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(SettingsError::new(
                "log.level",
                "must be a tracing filter such as info or tcsas_gateway=debug",
            ));
        }
        Ok(())
    }

    /// The effective settings as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        // serde_json::Value -> TOML text by hand keeps the `toml` crate out of the build.
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = String::new();
        if let serde_json::Value::Object(sections) = value {
            for (section, fields) in sections {
                out.push_str(&format!("[{section}]\n"));
                if let serde_json::Value::Object(fields) = fields {
                    for (k, v) in fields {
                        out.push_str(&format!("{k} = {v}\n"));
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}

impl ServerSettings {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Turns a `config` error into one line that names the key.
fn describe_config_error(e: config::ConfigError) -> SettingsError {
    let text = e.to_string();
    // `config` reports unknown fields as "unknown field `x`, expected ..." and
    // appends "for key `section`" when it knows where; keep both parts.
    let key = match (
        between(&text, "unknown field `", "`"),
        between(&text, "for key `", "`"),
    ) {
        (Some(field), Some(section)) => format!("{section}.{field}"),
        (Some(field), None) => field.to_owned(),
        (None, Some(key)) => key.to_owned(),
        (None, None) => "configuration".to_owned(),
    };
    SettingsError { key, problem: text }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// A secret value: its `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load_with_env(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = load(&[]).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            s.upstream.endpoint,
            "https://tcsas.intl.tencentcloudapi.com"
        );
        assert_eq!(s.upstream.rate_limit_per_sec, 20);
        assert_eq!(s.cache.ttl_secs, 300);
        assert_eq!(s.cache.expiry_margin_secs, 60);
        assert_eq!(s.admin.listen.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = load(&[
            ("TCSAS_GATEWAY__UPSTREAM__ENDPOINT", "http://127.0.0.1:1"),
            ("TCSAS_GATEWAY__UPSTREAM__RATE_LIMIT_PER_SEC", "7"),
        ])
        .unwrap();
        assert_eq!(s.upstream.endpoint, "http://127.0.0.1:1");
        assert_eq!(s.upstream.rate_limit_per_sec, 7);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = load(&[("TCSAS_GATEWAY__UPSTREAM__RATE_LIMIT_PER_SEC", "0")]).unwrap_err();
        assert_eq!(e.key, "upstream.rate_limit_per_sec");
        let e = load(&[("TCSAS_GATEWAY__UPSTREAM__ENDPOINT", "ftp://x")]).unwrap_err();
        assert_eq!(e.key, "upstream.endpoint");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = load(&[("TCSAS_GATEWAY__CACHE__TTL", "5")]).unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }
}
