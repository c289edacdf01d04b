//! Who may call a listener: client address ranges and an optional bearer
//! token, checked before a request is parsed or reaches upstream.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::settings::SettingsError;

/// The header that carries the token for clients whose `Authorization`
/// header is taken (the official SDKs put their TC3 signature there).
pub const TOKEN_HEADER: &str = "x-gateway-token";

/// A bearer token read from a file, re-read when the file changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// SHA-256 of the token: compared in constant time, never printed.
    digest: RwLock<[u8; 32]>,
}

impl TokenFile {
    /// Reads the token now; the error names `key`.
    pub fn load(key: &str, path: &str) -> Result<Arc<Self>, SettingsError> {
        let digest = read_digest(Path::new(path)).map_err(|problem| SettingsError {
            key: key.to_owned(),
            problem,
        })?;
        Ok(Arc::new(TokenFile {
            path: PathBuf::from(path),
            digest: RwLock::new(digest),
        }))
    }

    /// Re-reads the file whenever it changes; an unusable file keeps the old token.
    pub async fn watch(self: Arc<Self>) {
        crate::watched_file::watch(&self.path, |_| match read_digest(&self.path) {
            Ok(digest) => {
                *self.digest.write().unwrap_or_else(|p| p.into_inner()) = digest;
                tracing::info!(path = %self.path.display(), "auth token file changed: new token in use");
            }
            Err(problem) => {
                tracing::warn!(path = %self.path.display(), %problem, "auth token file unusable; keeping the current token")
            }
        })
        .await
    }

    fn matches(&self, presented: &str) -> bool {
        let presented = Sha256::digest(presented.as_bytes());
        let expected = *self.digest.read().unwrap_or_else(|p| p.into_inner());
        presented.as_slice().ct_eq(&expected).into()
    }
}

fn read_digest(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// The rules of one listener.
#[derive(Debug, Default)]
pub struct AccessPolicy {
    /// Empty: any address.
    allow: Vec<IpNet>,
    token: Option<Arc<TokenFile>>,
}

impl AccessPolicy {
    /// Parses the address ranges (`key` names them in errors) and loads the token file.
    pub fn new(
        cidrs_key: &str,
        cidrs: &[String],
        token_key: &str,
        token_file: Option<&str>,
    ) -> Result<Self, SettingsError> {
        let allow = cidrs
            .iter()
            .map(|c| parse_cidr(c))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| SettingsError {
                key: cidrs_key.to_owned(),
                problem: "each entry must be an address or a CIDR such as 10.0.0.0/8".to_owned(),
            })?;
        let token = token_file
            .map(|path| TokenFile::load(token_key, path))
            .transpose()?;
        Ok(AccessPolicy { allow, token })
    }

    /// The token file, for its watcher.
    pub fn token_file(&self) -> Option<Arc<TokenFile>> {
        self.token.clone()
    }

    /// Refuses a client outside the ranges (403) or without the token (401).
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), GatewayError> {
        let peer = peer.to_canonical();
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&peer)) {
            return Err(GatewayError::Forbidden(format!(
                "client address {peer} is not allowed"
            )));
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let header = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
        if [bearer, header]
            .into_iter()
            .flatten()
            .any(|t| token.matches(t.trim()))
        {
            Ok(())
        } else {
            Err(GatewayError::Unauthorized(
                "a valid token is required (Authorization: Bearer or X-Gateway-Token)".to_owned(),
            ))
        }
    }
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn ranges_accept_members_and_refuse_others() {
        let policy =
            AccessPolicy::new("k", &["10.0.0.0/8".into(), "127.0.0.1".into()], "t", None).unwrap();
        let ok = |ip: &str| policy.check(ip.parse().unwrap(), &request(&[])).is_ok();
        assert!(ok("10.1.2.3"));
        assert!(ok("127.0.0.1"));
        assert!(ok("::ffff:10.9.9.9"));
        assert!(!ok("192.168.1.1"));
        assert!(AccessPolicy::new("k", &["nope".into()], "t", None).is_err());
    }

    #[test]
    fn a_token_is_accepted_from_either_header_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("tcsas-gw-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let policy = AccessPolicy::new("k", &[], "t", file.to_str()).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(policy
            .check(ip, &request(&[("authorization", "Bearer s3cret")]))
            .is_ok());
        assert!(policy
            .check(ip, &request(&[("x-gateway-token", "s3cret")]))
            .is_ok());
        assert!(policy
            .check(ip, &request(&[("authorization", "Bearer wrong")]))
            .is_err());
        assert!(policy.check(ip, &request(&[])).is_err());
    }
}
