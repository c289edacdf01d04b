//! CVM instance role: temporary credentials from the instance metadata service.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{CredentialError, Credentials};
use crate::settings::{Secret, SettingsError};

/// The metadata service, at a configurable base URL.
#[derive(Clone, Debug)]
pub struct MetadataService {
    base: url::Url,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    tmp_secret_id: String,
    tmp_secret_key: String,
    token: String,
    expired_time: u64,
}

impl MetadataService {
    /// `base` is e.g. `http://metadata.tencentyun.com/latest/meta-data/`.
    pub fn new(base: &str) -> Result<Self, SettingsError> {
        let with_slash = if base.ends_with('/') {
            base.to_owned()
        } else {
            format!("{base}/")
        };
        let base = url::Url::parse(&with_slash).map_err(|e| SettingsError {
            key: "credentials.cvm_metadata_url".to_owned(),
            problem: e.to_string(),
        })?;
        Ok(MetadataService { base })
    }

    async fn get_text(
        &self,
        http: &reqwest::Client,
        path: &str,
    ) -> Result<String, CredentialError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| CredentialError::Invalid(format!("metadata path {path}: {e}")))?;
        let response = http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| {
                CredentialError::Unreachable(format!("metadata service: {}", e.without_url()))
            })?;
        if !response.status().is_success() {
            return Err(CredentialError::Missing(format!(
                "metadata service answered HTTP {} (no role bound to this instance?)",
                response.status().as_u16()
            )));
        }
        response.text().await.map_err(|e| {
            CredentialError::Unreachable(format!("metadata service: {}", e.without_url()))
        })
    }

    /// Asks for the role's name, then its current temporary credentials.
    pub async fn fetch(&self, http: &reqwest::Client) -> Result<Credentials, CredentialError> {
        let roles = self.get_text(http, "cam/security-credentials/").await?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| {
                CredentialError::Missing("no CAM role is bound to this instance".to_owned())
            })?;
        let body = self
            .get_text(http, &format!("cam/security-credentials/{role}"))
            .await?;
        let role_credentials: RoleCredentials = serde_json::from_str(&body).map_err(|e| {
            CredentialError::Invalid(format!(
                "metadata credentials are not the expected JSON: {e}"
            ))
        })?;
        Ok(Credentials {
            secret_id: role_credentials.tmp_secret_id,
            secret_key: Secret::new(role_credentials.tmp_secret_key),
            token: Some(Secret::new(role_credentials.token)),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(role_credentials.expired_time)),
        })
        .and_then(|c: Credentials| {
            if c.expires_at.is_some_and(|at| at <= SystemTime::now()) {
                Err(CredentialError::Invalid(
                    "metadata credentials have already expired".to_owned(),
                ))
            } else {
                Ok(c)
            }
        })
    }
}
