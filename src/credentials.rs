//! Tencent Cloud credentials: where they come from and where the signer reads them.

use std::sync::{Arc, RwLock};

use crate::settings::{Secret, SettingsError};

/// Environment variable with the SecretId (the official SDKs' name).
pub const ENV_SECRET_ID: &str = "TENCENTCLOUD_SECRET_ID";
/// Environment variable with the SecretKey.
pub const ENV_SECRET_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
/// Environment variable with the optional session token of temporary credentials.
pub const ENV_SESSION_TOKEN: &str = "TENCENTCLOUD_SESSION_TOKEN";

/// One set of Tencent Cloud credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The SecretId (not secret: it appears in every `Authorization` header).
    pub secret_id: String,
    /// The SecretKey.
    pub secret_key: Secret,
    /// The session token of temporary credentials (`X-TC-Token`).
    pub token: Option<Secret>,
}

impl Credentials {
    /// Reads `TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY` and the optional
    /// `TENCENTCLOUD_SESSION_TOKEN`; the error names the missing variable.
    pub fn from_env(
        mut get: impl FnMut(&str) -> Option<String>,
    ) -> Result<Credentials, SettingsError> {
        let mut required = |name: &str| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| SettingsError {
                    key: name.to_owned(),
                    problem: "is not set (credentials are required)".to_owned(),
                })
        };
        let secret_id = required(ENV_SECRET_ID)?;
        let secret_key = Secret::new(required(ENV_SECRET_KEY)?);
        let token = get(ENV_SESSION_TOKEN)
            .filter(|v| !v.trim().is_empty())
            .map(Secret::new);
        Ok(Credentials {
            secret_id: secret_id.trim().to_owned(),
            secret_key,
            token,
        })
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

    /// The credentials to sign the next request with, if any are held.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the credentials (rotation).
    pub fn replace(&self, credentials: Credentials) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(credentials));
    }
}
