//! The `tcsas-gateway` binary: `run` (default), `demo` and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use tcsas_gateway::credentials::{CredentialProvider, CredentialStore, Credentials};
use tcsas_gateway::front::AppState;
use tcsas_gateway::settings::Settings;
use tcsas_gateway::simulated_upstream::{SimulatedUpstream, SimulatorConfig};
use tcsas_gateway::telemetry::{self, LogControl};
use tcsas_gateway::App;

/// jemalloc, chosen by measurement (BENCHMARKS.md): cached entries are small,
/// long-lived and filled while upstream calls churn short-lived buffers, and
/// jemalloc's size classes leave far less of that churn behind than glibc's
/// heap does (≈ 570 → 490 bytes of RSS per cached entry).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Caching, coalescing, rate-limited signing gateway for Tencent Cloud TCSAS
/// offline-package URLs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// A TOML settings file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Run the gateway with a built-in simulated TCSAS upstream and print curl lines.
    Demo(DemoArgs),
    /// Validate the settings and credentials and print the effective settings.
    CheckConfig,
}

/// Knobs of the built-in simulator (the load benchmark turns them).
#[derive(clap::Args, Debug, Default)]
struct DemoArgs {
    /// Calls per action the simulator accepts in any one-second window.
    #[arg(long, default_value_t = 20)]
    simulator_rate_limit: usize,
    /// Delay the simulator adds to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    simulator_latency_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => return fail(&e),
    };
    let credentials = if let Some(Command::Demo(args)) = cli.command.as_ref() {
        let sim = SimulatorConfig {
            rate_limit_per_sec: args.simulator_rate_limit,
            ..SimulatorConfig::default()
        };
        let latency = std::time::Duration::from_millis(args.simulator_latency_ms);
        Startup::Demo(
            Credentials::new(&sim.secret_id, &sim.secret_key),
            sim,
            latency,
        )
    } else {
        match CredentialProvider::from_settings(&settings.credentials, |name| {
            std::env::var(name).ok()
        }) {
            Ok(provider) => Startup::Provider(provider),
            Err(e) => return fail(&e),
        }
    };
    let log_control = if matches!(cli.command, Some(Command::CheckConfig)) {
        None
    } else {
        telemetry::init(&settings.log)
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        return runtime.block_on(check_config(settings, credentials));
    }
    let reload = Reload {
        file: cli.config,
        log: log_control,
    };
    match runtime.block_on(serve(settings, credentials, reload)) {
        Ok(code) => code,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// Where the gateway's credentials come from at start-up.
enum Startup {
    /// `demo`: the simulator's credentials, its configuration and latency.
    Demo(Credentials, SimulatorConfig, std::time::Duration),
    /// The configured provider.
    Provider(CredentialProvider),
}

/// One line on stderr and exit code 2.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tcsas-gateway: {e}");
    ExitCode::from(2)
}

async fn check_config(settings: Settings, credentials: Startup) -> ExitCode {
    let credentials = match credentials {
        Startup::Demo(c, _, _) => c,
        Startup::Provider(mut provider) => match provider.load().await {
            Ok(c) => c,
            Err(e) => return fail(&e),
        },
    };
    print!("{}", settings.to_toml());
    println!(
        "# credentials: secret_id = {:?}, secret_key = {}, session token {}",
        credentials.secret_id,
        credentials.secret_key,
        if credentials.token.is_some() {
            "set"
        } else {
            "not set"
        }
    );
    ExitCode::SUCCESS
}

/// What a SIGHUP needs: the file to re-read and the log filter to change.
struct Reload {
    file: Option<PathBuf>,
    log: Option<LogControl>,
}

async fn serve(
    mut settings: Settings,
    credentials: Startup,
    reload: Reload,
) -> anyhow::Result<ExitCode> {
    let mut simulator = None;
    let mut refresher = None;
    let store = match credentials {
        Startup::Demo(credentials, config, latency) => {
            let sim = SimulatedUpstream::start(config)
                .await
                .context("cannot start the simulated upstream")?;
            sim.set_latency(latency);
            settings.upstream.endpoint = sim.endpoint();
            simulator = Some(sim);
            Arc::new(CredentialStore::with(credentials))
        }
        Startup::Provider(provider) => match provider.start().await {
            Ok((store, task)) => {
                refresher = Some(task);
                store
            }
            Err(e) => return Ok(fail(&e)),
        },
    };
    let effective = settings.clone();
    let app = match App::build(settings, store).await {
        Ok(app) => app,
        Err(e) => return Ok(fail(&e)),
    };
    let front = app.local_addr();
    let admin = app.admin_addr();
    tracing::info!(%front, %admin, "tcsas-gateway listening");
    if let Some(sim) = &simulator {
        print_demo_help(front, &sim.endpoint());
    }
    let reloader = tokio::spawn(reload_on_sighup(app.state(), reload, effective));
    tcsas_gateway::run(app, shutdown_signal()).await;
    reloader.abort();
    if let Some(refresher) = refresher {
        refresher.abort();
    }
    drop(simulator);
    Ok(ExitCode::SUCCESS)
}

fn print_demo_help(front: std::net::SocketAddr, upstream: &str) {
    println!(
        r#"
tcsas-gateway demo: gateway on http://{front}, simulated TCSAS upstream on {upstream}

REST shape (run twice: the second answer is X-Cache: HIT):
  curl -i http://{front}/v1/platforms/T04257DS9431720WTAG/mini-programs/mpjl3td541qppx9k/offline-package-url

Tencent-Cloud-compatible shape (unsigned; the gateway signs):
  curl -i http://{front}/ -H 'X-TC-Action: DescribeMNPOfflinePackageURL' -H 'Content-Type: application/json' -d '{{"MNPId":"mpjl3td541qppx9k","PlatformId":"T04257DS9431720WTAG"}}'

Mini game:
  curl -i http://{front}/v1/platforms/T04257DS9431720WTAG/mini-games/mg_game-01/offline-package-url

Force a revalidation upstream:
  curl -i -H 'Cache-Control: no-cache' http://{front}/v1/platforms/T04257DS9431720WTAG/mini-programs/mpjl3td541qppx9k/offline-package-url

Bad input never reaches upstream:
  curl -i http://{front}/v1/platforms/bad%20id/mini-programs/x/offline-package-url

Probes: curl http://{front}/readyz    Stop: Ctrl-C
"#
    );
}

/// On every SIGHUP, re-reads the config file and applies what can change
/// safely; a bad file is rejected with one log line and the old settings stay.
async fn reload_on_sighup(state: Arc<AppState>, reload: Reload, mut effective: Settings) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: config reload disabled");
            return;
        };
        while hangups.recv().await.is_some() {
            let outcome = tcsas_gateway::reload::reload(
                &state,
                reload.log.as_ref(),
                reload.file.as_deref(),
                &effective,
            );
            match outcome {
                Ok(new) => {
                    effective = new;
                    let settings = serde_json::to_string(&effective).unwrap_or_default();
                    tracing::info!(%settings, reloaded = tcsas_gateway::reload::RELOADABLE, "config reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "config reload rejected; keeping the current settings")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (state, reload, &mut effective);
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
