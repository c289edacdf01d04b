//! The credentials profile file: INI, section `[default]`, `secret_id` / `secret_key`.

use std::path::{Path, PathBuf};

use super::{CredentialError, CredentialStore, Credentials};

/// Environment variable naming the profile file.
pub const ENV_CREDENTIALS_FILE: &str = "TENCENTCLOUD_CREDENTIALS_FILE";

/// `TENCENTCLOUD_CREDENTIALS_FILE`, else `~/.tencentcloud/credentials`.
pub fn path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env(ENV_CREDENTIALS_FILE)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".tencentcloud/credentials")))
}

/// Reads and parses the profile file.
pub fn read(path: &Path) -> Result<Credentials, CredentialError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CredentialError::Missing(format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
        .map_err(|problem| CredentialError::Invalid(format!("{}: {problem}", path.display())))
}

/// Parses profile text; the error says which key is missing (never a value).
pub fn parse(text: &str) -> Result<Credentials, String> {
    let ini = ini::Ini::load_from_str(text).map_err(|e| format!("not an INI file: {e}"))?;
    let section = ini
        .section(Some("default"))
        .ok_or_else(|| "has no [default] section".to_owned())?;
    let get = |key: &str| {
        section
            .get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("[default] has no {key}"))
    };
    Ok(Credentials::new(get("secret_id")?, get("secret_key")?))
}

/// Swaps in the credentials whenever the file changes (watched by path).
pub async fn watch(path: &Path, store: &CredentialStore) {
    crate::watched_file::watch(path, |_| match read(path) {
        Ok(credentials) => {
            if store.current().is_none_or(|c| *c != credentials) {
                tracing::info!(secret_id = %credentials.secret_id, "profile file changed: credentials rotated");
                store.replace(credentials);
            }
        }
        Err(e) => tracing::warn!(error = %e, "profile file changed but is unusable; keeping the current credentials"),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_section_is_read() {
        let c = parse("[default]\nsecret_id = AKID1\nsecret_key = k1\n\n[other]\nsecret_id = x\n")
            .unwrap();
        assert_eq!(c.secret_id, "AKID1");
        assert_eq!(c.secret_key.expose(), "k1");
    }

    #[test]
    fn a_missing_key_is_named_without_values() {
        let e = parse("[default]\nsecret_id = AKID1\n").unwrap_err();
        assert!(e.contains("secret_key"));
        assert!(parse("secret_id = a\n").is_err());
    }

    #[test]
    fn the_path_comes_from_the_variable_or_home() {
        let p = path(|k| (k == ENV_CREDENTIALS_FILE).then(|| "/etc/c".to_owned()));
        assert_eq!(p, Some(PathBuf::from("/etc/c")));
        let p = path(|k| (k == "HOME").then(|| "/home/u".to_owned()));
        assert_eq!(p, Some(PathBuf::from("/home/u/.tencentcloud/credentials")));
    }
}
