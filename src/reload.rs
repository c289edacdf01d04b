//! Config reload (SIGHUP): re-reads the file and applies what can change safely.

use std::path::Path;

use crate::front::AppState;
use crate::settings::Settings;
use crate::telemetry::LogControl;

/// Keys a reload applies: cache lifetimes (to answers fetched from now on),
/// the rate limit, retries and the log level. Token files are re-read on
/// their own whenever they change.
pub const RELOADABLE: &str = "cache.ttl_secs, cache.stale_secs, cache.stale_if_error_secs, \
cache.negative_ttl_secs, cache.expiry_margin_secs, upstream.rate_limit_per_sec, \
upstream.max_retries, log.level";

/// Re-reads the settings; on success applies the reloadable ones and returns
/// the new effective settings, else the error line (the old settings stay).
pub fn reload(
    state: &AppState,
    log: Option<&LogControl>,
    file: Option<&Path>,
    current: &Settings,
) -> Result<Settings, String> {
    let new = Settings::load(file).map_err(|e| e.to_string())?;
    if let Some(log) = log {
        log.set_level(&new.log.level)
            .map_err(|e| format!("invalid setting log.level: {e}"))?;
    }
    state.resolver.reload(&new);
    let mut effective = current.clone();
    effective.cache = new.cache.clone();
    effective.upstream.rate_limit_per_sec = new.upstream.rate_limit_per_sec;
    effective.upstream.max_retries = new.upstream.max_retries;
    effective.log.level = new.log.level.clone();
    let mut needs_restart = Vec::new();
    let mut compare = |key: &'static str, old: String, new: String| {
        if old != new {
            needs_restart.push(key);
        }
    };
    compare(
        "server",
        format!("{:?}", current.server),
        format!("{:?}", new.server),
    );
    compare(
        "admin",
        format!("{:?}", current.admin),
        format!("{:?}", new.admin),
    );
    compare(
        "credentials",
        format!("{:?}", current.credentials),
        format!("{:?}", new.credentials),
    );
    let mut other_upstream = new.upstream.clone();
    other_upstream.rate_limit_per_sec = current.upstream.rate_limit_per_sec;
    other_upstream.max_retries = current.upstream.max_retries;
    compare(
        "upstream",
        format!("{:?}", current.upstream),
        format!("{other_upstream:?}"),
    );
    compare(
        "log.format",
        format!("{:?}", current.log.format),
        format!("{:?}", new.log.format),
    );
    if !needs_restart.is_empty() {
        tracing::warn!(sections = ?needs_restart, "these settings changed but take effect only after a restart");
    }
    Ok(effective)
}
