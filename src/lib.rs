//! tcsas-gateway: unsigned requests in, TC3-signed calls to Tencent Cloud TCSAS out —
//! cached, coalesced and kept under the rate limit.
//!
//! The path of one request, one module per arrow:
//!
//! 1. [`server`] accepts the connection (limits, timeouts, graceful shutdown).
//! 2. [`front`] routes it: the Tencent-Cloud-compatible `POST /` ([`front::tc`])
//!    or the REST shape ([`front::rest`]), and parses it into [`domain`] types.
//! 3. [`resolver`] answers from the moka cache, or joins / starts the one
//!    shared upstream call for that key.
//! 4. [`upstream`] waits for a slot in the action's [`upstream::rate_budget`],
//!    signs with [`upstream::signer`], calls Tencent Cloud and classifies the
//!    answer by its [`upstream::envelope`].
//! 5. The resolver caches the URL (or evicts it on `PackageAlreadyExpired`),
//!    and the front renders the answer in the client's shape.
//!
//! [`settings`] and [`credentials`] configure it; [`admin`] serves probes and
//! cache purges on a second listener; [`simulated_upstream`] stands in for
//! Tencent Cloud in `demo` and the tests.

pub mod access;
pub mod admin;
pub mod credentials;
pub mod domain;
pub mod error;
pub mod fleet;
pub mod front;
pub mod metrics;
pub mod reload;
pub mod resolver;
pub mod server;
pub mod settings;
pub mod simulated_upstream;
pub mod telemetry;
pub mod upstream;
pub mod watched_file;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use access::AccessPolicy;
use credentials::CredentialStore;
use front::AppState;
use metrics::Metrics;
use resolver::Resolver;
use server::ConnectionLimits;
use settings::{Settings, SettingsError};
use upstream::UpstreamClient;

/// A gateway with its listeners bound, ready to [`run`].
#[derive(Debug)]
pub struct App {
    front: TcpListener,
    admin: TcpListener,
    state: Arc<AppState>,
}

impl App {
    /// Binds both listeners (port 0 picks a free port) and builds the state.
    pub async fn build(
        settings: Settings,
        credentials: Arc<CredentialStore>,
    ) -> Result<App, SettingsError> {
        let bind = |key: &str, addr: SocketAddr, e: std::io::Error| SettingsError {
            key: key.to_owned(),
            problem: format!("cannot listen on {addr}: {e}"),
        };
        let front = TcpListener::bind(settings.server.listen)
            .await
            .map_err(|e| bind("server.listen", settings.server.listen, e))?;
        let admin = TcpListener::bind(settings.admin.listen)
            .await
            .map_err(|e| bind("admin.listen", settings.admin.listen, e))?;
        let metrics = Arc::new(Metrics::new());
        let upstream = Arc::new(UpstreamClient::new(
            &settings.upstream,
            Arc::clone(&credentials),
            Arc::clone(&metrics),
        )?);
        let fleet = match &settings.redis.url {
            Some(url) => Some(
                fleet::Fleet::connect(
                    &settings.redis,
                    url,
                    settings.upstream.rate_limit_per_sec,
                    settings.upstream.max_waiting,
                )
                .await?,
            ),
            None => None,
        };
        let resolver = Arc::new(Resolver::new(
            &settings,
            upstream,
            Arc::clone(&metrics),
            fleet,
        ));
        let access = AccessPolicy::new(
            "server.allow_cidrs",
            &settings.server.allow_cidrs,
            "server.auth_token_file",
            settings.server.auth_token_file.as_deref(),
        )?;
        let admin_access = AccessPolicy::new(
            "admin.allow_cidrs",
            &[],
            "admin.auth_token_file",
            settings.admin.auth_token_file.as_deref(),
        )?;
        let state = Arc::new(AppState {
            resolver,
            metrics,
            access,
            admin_access,
            settings: Arc::new(settings),
            credentials,
            accepting: AtomicBool::new(true),
        });
        Ok(App {
            front,
            admin,
            state,
        })
    }

    /// The front listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.front
            .local_addr()
            .unwrap_or_else(|_| self.state.settings.server.listen)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| self.state.settings.admin.listen)
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }
}

/// Serves until `shutdown` completes, then turns readiness off, stops
/// accepting and lets in-flight requests finish within the grace period.
pub async fn run(app: App, shutdown: impl Future<Output = ()>) {
    let App {
        front,
        admin,
        state,
    } = app;
    let server_settings = &state.settings.server;
    let limits = ConnectionLimits {
        max_connections: server_settings.max_connections,
        header_read_timeout: Duration::from_millis(server_settings.header_read_timeout_ms),
        shutdown_grace: Duration::from_secs(server_settings.shutdown_grace_secs),
    };
    let token_watchers: Vec<_> = [state.access.token_file(), state.admin_access.token_file()]
        .into_iter()
        .flatten()
        .map(|token| tokio::spawn(token.watch()))
        .collect();
    let mut background = token_watchers;
    if let Some(fleet) = state.resolver.fleet() {
        background.push(tokio::spawn(Arc::clone(fleet).watch_health()));
        let resolver = Arc::clone(&state.resolver);
        background
            .push(tokio::spawn(Arc::clone(fleet).follow_invalidations(
                move |invalidation| resolver.apply(invalidation),
            )));
    }
    let (stop, stopped) = watch::channel(false);
    let front_state = Arc::clone(&state);
    let front_task = tokio::spawn(server::serve(
        "front",
        front,
        limits,
        move |request, peer| front::handle(Arc::clone(&front_state), request, peer),
        stopped.clone(),
    ));
    let admin_state = Arc::clone(&state);
    let admin_task = tokio::spawn(server::serve(
        "admin",
        admin,
        limits,
        move |request, peer| admin::handle(Arc::clone(&admin_state), request, peer),
        stopped,
    ));
    shutdown.await;
    state.accepting.store(false, Ordering::Release);
    tracing::info!("shutting down: readiness off, draining in-flight requests");
    let _ = stop.send(true);
    let _ = tokio::join!(front_task, admin_task);
    for task in background {
        task.abort();
    }
}
