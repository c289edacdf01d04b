//! Tracing setup: text or JSON lines on stderr, filtered by `log.level` or
//! `RUST_LOG`, with a handle to change the level on config reload.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::settings::{LogFormat, LogSettings};

/// Changes the log filter of the running process.
#[derive(Debug)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` wins over `log.level`, on reload too.
    pinned_by_env: bool,
}

impl LogControl {
    /// Applies `log.level` (unless `RUST_LOG` pins the filter).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.pinned_by_env {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber; `RUST_LOG`, when set, wins over `log.level`.
/// `None` when a subscriber was already installed (tests embedding the app).
pub fn init(settings: &LogSettings) -> Option<LogControl> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned_by_env = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&settings.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let lines = match settings.format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .ok()
        .map(|()| LogControl {
            handle,
            pinned_by_env,
        })
}
