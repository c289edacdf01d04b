//! TKE OIDC: temporary credentials from STS `AssumeRoleWithWebIdentity`.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use super::{CredentialError, Credentials};
use crate::settings::{Secret, SettingsError};
use crate::upstream::unix_now_secs;

/// Role ARN to assume.
pub const ENV_ROLE_ARN: &str = "TKE_ROLE_ARN";
/// The projected service-account token file.
pub const ENV_TOKEN_FILE: &str = "TKE_WEB_IDENTITY_TOKEN_FILE";
/// The OIDC identity provider id.
pub const ENV_PROVIDER_ID: &str = "TKE_PROVIDER_ID";
/// The region for the STS call.
pub const ENV_REGION: &str = "TKE_REGION";

/// What `AssumeRoleWithWebIdentity` needs.
#[derive(Clone, Debug)]
pub struct WebIdentity {
    sts_endpoint: String,
    role_arn: String,
    token_file: PathBuf,
    provider_id: String,
    region: String,
}

#[derive(Deserialize)]
struct StsEnvelope {
    #[serde(rename = "Response")]
    response: StsResponse,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsResponse {
    credentials: Option<StsCredentials>,
    expired_time: Option<u64>,
    error: Option<StsError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    token: String,
    tmp_secret_id: String,
    tmp_secret_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsError {
    code: String,
    message: String,
}

impl WebIdentity {
    /// Reads the `TKE_*` variables; the error names the first missing one.
    pub fn from_env(
        sts_endpoint: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let required = |name: &str| {
            env(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SettingsError {
                    key: name.to_owned(),
                    problem: "is not set (needed by credentials.provider = tke_oidc)".to_owned(),
                })
        };
        Ok(WebIdentity {
            sts_endpoint: sts_endpoint.to_owned(),
            role_arn: required(ENV_ROLE_ARN)?,
            token_file: PathBuf::from(required(ENV_TOKEN_FILE)?),
            provider_id: required(ENV_PROVIDER_ID)?,
            region: required(ENV_REGION)?,
        })
    }

    /// Exchanges the projected token, re-read on every call, for credentials.
    pub async fn fetch(&self, http: &reqwest::Client) -> Result<Credentials, CredentialError> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
            CredentialError::Missing(format!("cannot read {}: {e}", self.token_file.display()))
        })?;
        let now = unix_now_secs();
        let body = json!({
            "ProviderId": self.provider_id,
            "WebIdentityToken": token.trim(),
            "RoleArn": self.role_arn,
            "RoleSessionName": format!("tcsas-gateway-{now}"),
            "DurationSeconds": 7200,
        });
        let response = http
            .post(&self.sts_endpoint)
            .header("Content-Type", "application/json")
            // The official SDKs send this unsigned call with `Authorization: SKIP`.
            .header("Authorization", "SKIP")
            .header("X-TC-Action", "AssumeRoleWithWebIdentity")
            .header("X-TC-Version", "2018-08-13")
            .header("X-TC-Region", &self.region)
            .header("X-TC-Timestamp", now.to_string())
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| CredentialError::Unreachable(format!("STS: {}", e.without_url())))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CredentialError::Unreachable(format!("STS: {}", e.without_url())))?;
        if !status.is_success() {
            return Err(CredentialError::Unreachable(format!(
                "STS answered HTTP {}",
                status.as_u16()
            )));
        }
        let envelope: StsEnvelope = serde_json::from_str(&text).map_err(|e| {
            CredentialError::Invalid(format!("STS answer is not the envelope: {e}"))
        })?;
        let response = envelope.response;
        if let Some(error) = response.error {
            return Err(CredentialError::Invalid(format!(
                "STS: {}: {}",
                error.code, error.message
            )));
        }
        match (response.credentials, response.expired_time) {
            (Some(c), Some(expired_time)) => Ok(Credentials {
                secret_id: c.tmp_secret_id,
                secret_key: Secret::new(c.tmp_secret_key),
                token: Some(Secret::new(c.token)),
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(expired_time)),
            }),
            _ => Err(CredentialError::Invalid(
                "STS answer has no Credentials".to_owned(),
            )),
        }
    }
}
