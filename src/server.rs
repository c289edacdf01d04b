//! Accept loop: connection limit, idle and header-read timeout, HTTP/1.1 and h2c on one port, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::front::GatewayResponse;

/// Limits applied to every connection of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection with no request in flight is closed after this long:
    /// a client must send its request headers within this time.
    pub header_read_timeout: Duration,
    /// How long in-flight requests get to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// Serves `handler` on `listener` until `shutdown` turns true, then drains.
pub async fn serve<H, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = GatewayResponse> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header_read_timeout: it arms and cancels a timer on every
    // request (its cost is measured in BENCHMARKS.md). `IdleGuard`
    // gives the same protection with one timer per connection.
    builder.http1().keep_alive(true).max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop_requested(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let idle = Arc::new(IdleGuard::new());
        let requests = Arc::clone(&idle);
        let service = service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            let in_flight = InFlight::start(&requests);
            async move {
                let response = handler(request, peer).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                },
                () = idle.expired(limits.header_read_timeout) => {
                    tracing::debug!(listener = name, %peer, "closing a connection that sent no request in time");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = name, "all connections drained"),
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(listener = name, grace_secs = limits.shutdown_grace.as_secs(), "shutdown grace elapsed; closing the remaining connections");
        }
    }
}

/// Closes connections that hold no request for too long: one that never
/// sends a byte, one that trickles its request head (slowloris), and an idle
/// keep-alive connection. Checked four times per timeout, so a connection
/// goes between 1 and 1.25 timeouts after its last request. It counts
/// requests instead of timing them: no timer and no clock read per request.
#[derive(Debug)]
struct IdleGuard {
    in_flight: AtomicUsize,
    /// Requests answered so far.
    answered: AtomicU64,
}

impl IdleGuard {
    fn new() -> Self {
        IdleGuard {
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
        }
    }

    /// Completes once no request has been in flight, and none answered, for
    /// `timeout` (checked every quarter of it: closes within 1.25 × `timeout`).
    async fn expired(&self, timeout: Duration) {
        const CHECKS: u32 = 4;
        let mut check = tokio::time::interval((timeout / CHECKS).max(Duration::from_millis(1)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = u64::MAX;
        let mut quiet_checks = 0;
        loop {
            check.tick().await;
            let answered = self.answered.load(Ordering::Acquire);
            if self.in_flight.load(Ordering::Acquire) > 0 || answered != seen {
                seen = answered;
                quiet_checks = 0;
                continue;
            }
            quiet_checks += 1;
            if quiet_checks >= CHECKS {
                return;
            }
        }
    }
}

/// One request in flight on a connection; dropped when it is answered (or
/// abandoned, e.g. an HTTP/2 stream the client reset).
struct InFlight(Arc<IdleGuard>);

impl InFlight {
    fn start(guard: &Arc<IdleGuard>) -> Self {
        guard.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(guard))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes once `shutdown` is true (or its sender is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
