//! Fleet mode: one Redis shared by every replica gives them one answer cache
//! (L2), one rate budget per action, one upstream call per cold key, and
//! invalidations that reach everyone. Redis trouble degrades a replica to
//! its own cache and a small local budget; it never stops it.

pub mod scripts;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::domain::{Action, MnpId, PackageKey, PlatformId};
use crate::error::GatewayError;
use crate::settings::{RedisSettings, SettingsError};
use crate::upstream::rate_budget::{RateBudget, RateSlot, WaiterGuard, HOLD_AFTER_ANSWER};

/// Every key and channel the gateway uses starts with this. The braces are a
/// Redis Cluster hash tag: all the gateway's keys share one slot, so its
/// scripts stay atomic on a cluster too (the data is small: see README).
const PREFIX: &str = "{tcsas-gateway}";
/// How long a replica's claim to fetch a key lasts unless renewed.
const LEASE: Duration = Duration::from_secs(3);
/// How often a waiting replica looks for the answer or a dead leaseholder
/// when no "filled" notification arrives (the notification is the fast path).
const POLL: Duration = Duration::from_millis(250);

/// An answer as stored in Redis: absolute wall-clock instants, so any replica
/// can rebuild its windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharedAnswer {
    /// The URL.
    pub url: String,
    /// Unix milliseconds when upstream answered it.
    pub fetched_ms: u64,
    /// Unix milliseconds until which it is fresh.
    pub fresh_until_ms: u64,
    /// Unix milliseconds until which it may be served stale while refreshing.
    pub stale_until_ms: u64,
    /// Unix milliseconds until which it may be served while upstream fails.
    pub stale_if_error_until_ms: u64,
}

/// A message on the invalidation channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// One key's answer is gone.
    Key(PackageKey),
    /// Every answer is gone (admin purge).
    All,
}

/// The shared state of the fleet, reached through Redis.
pub struct Fleet {
    /// Where to connect: one Redis, or a cluster's seed nodes.
    target: Target,
    /// For pub/sub: one node (cluster pub/sub reaches every node).
    client: redis::Client,
    /// `None` until the first connection succeeds; it then reconnects by itself.
    connection: RwLock<Option<Connection>>,
    timeout: Duration,
    degraded: AtomicBool,
    /// Each replica's own budget while Redis is unreachable.
    fallback: [RateBudget; Action::ALL.len()],
    waiting: [Arc<AtomicUsize>; Action::ALL.len()],
    max_waiting: usize,
    rate_limit_per_sec: AtomicUsize,
    /// Keys other replicas just stored, relayed from the subscription to
    /// the waiters in [`claim`](Self::claim).
    filled: tokio::sync::broadcast::Sender<String>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Where the fleet's Redis is.
// One per process, never moved around: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A live connection to one Redis or to a cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A global rate slot: busy in Redis until a second after the answer.
pub struct GlobalSlot {
    fleet: Arc<Fleet>,
    action: Action,
    token: String,
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        let fleet = Arc::clone(&self.fleet);
        let (action, token) = (self.action, std::mem::take(&mut self.token));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // If this never reaches Redis, the slot's own lease ends it.
            runtime.spawn(async move {
                let hold_ms = HOLD_AFTER_ANSWER.as_millis() as u64;
                let _: Result<i64, ()> = fleet
                    .run(scripts::release_slot(&slots_key(action), &token, hold_ms))
                    .await;
            });
        }
    }
}

/// Either kind of slot; held until the upstream answer, then dropped.
pub enum AnySlot {
    /// This replica's own budget.
    Local(RateSlot),
    /// The fleet's budget in Redis.
    Global(GlobalSlot),
}

/// This replica's claim to fetch one key; released (compare-and-delete) on drop.
pub struct Lease {
    fleet: Arc<Fleet>,
    key: String,
    token: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        let fleet = Arc::clone(&self.fleet);
        let (key, token) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _: Result<i64, ()> = fleet.run(scripts::release_lease(&key, &token)).await;
            });
        }
    }
}

/// How [`Fleet::claim`] ended.
pub enum Claim {
    /// This replica fetches.
    Fetch(Option<Lease>),
    /// Another replica fetched it meanwhile.
    Answered(SharedAnswer),
}

/// `action:platform:mnp`: a key in Redis names and invalidation messages.
fn key_text(key: &PackageKey) -> String {
    format!(
        "{}:{}:{}",
        key.action.tc_name(),
        key.platform_id,
        key.mnp_id
    )
}

fn answer_key(key: &PackageKey) -> String {
    format!("{PREFIX}:answer:{}", key_text(key))
}

fn lease_key(key: &PackageKey) -> String {
    format!("{PREFIX}:lease:{}", key_text(key))
}

fn slots_key(action: Action) -> String {
    format!("{PREFIX}:slots:{}", action.tc_name())
}

fn channel() -> String {
    format!("{PREFIX}:invalidate")
}

/// Where a replica announces that it stored an answer.
fn filled_channel() -> String {
    format!("{PREFIX}:filled")
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Fleet {
    /// Connects; if Redis is unreachable now the fleet starts degraded and
    /// [`watch_health`](Self::watch_health) keeps trying.
    pub async fn connect(
        settings: &RedisSettings,
        url: &str,
        rate_limit_per_sec: u32,
        max_waiting: usize,
    ) -> Result<Arc<Self>, SettingsError> {
        let bad = |key: &str, problem: String| SettingsError {
            key: key.to_owned(),
            problem,
        };
        // A private CA (managed Redis, self-run TLS) is trusted for rediss://.
        let root_cert = settings
            .ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path)
                    .map_err(|e| bad("redis.ca_file", format!("cannot read {path}: {e}")))
            })
            .transpose()?;
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: root_cert.clone(),
        };
        let single = |url: &str| match &root_cert {
            Some(_) => redis::Client::build_with_tls(url, certificates()),
            None => redis::Client::open(url),
        };
        let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = single(seeds[0]).map_err(|e| bad("redis.url", e.to_string()))?;
        let target = if settings.cluster {
            let timeout = Duration::from_millis(settings.timeout_ms);
            let mut builder = redis::cluster::ClusterClient::builder(seeds.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1);
            if root_cert.is_some() {
                builder = builder.certs(certificates());
            }
            let cluster = builder
                .build()
                .map_err(|e| bad("redis.url", e.to_string()))?;
            Target::Cluster(cluster)
        } else {
            Target::Single(client.clone())
        };
        let fallback = || RateBudget::new(settings.fallback_rate_per_sec, max_waiting);
        let fleet = Arc::new(Fleet {
            target,
            client,
            connection: RwLock::new(None),
            timeout: Duration::from_millis(settings.timeout_ms),
            degraded: AtomicBool::new(true),
            fallback: [fallback(), fallback()],
            waiting: [Arc::default(), Arc::default()],
            max_waiting,
            rate_limit_per_sec: AtomicUsize::new(rate_limit_per_sec as usize),
            filled: tokio::sync::broadcast::channel(1024).0,
        });
        fleet.try_connect().await;
        Ok(fleet)
    }

    async fn try_connect(&self) -> bool {
        let connecting = async {
            match &self.target {
                Target::Single(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Connection::Single)
                }
                Target::Cluster(cluster) => cluster
                    .get_async_connection()
                    .await
                    .map(Connection::Cluster),
            }
        };
        match tokio::time::timeout(self.timeout * 4, connecting).await {
            Ok(Ok(connection)) => {
                *self.connection.write().unwrap_or_else(|p| p.into_inner()) = Some(connection);
                self.degraded.store(false, Ordering::Relaxed);
                tracing::info!("connected to redis: fleet mode on");
                true
            }
            Ok(Err(e)) => {
                self.mark_degraded(&e.to_string());
                false
            }
            Err(_) => {
                self.mark_degraded("connect timed out");
                false
            }
        }
    }

    /// True while Redis is unreachable or too slow.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Changes the fleet-wide rate (config reload).
    pub fn set_rate(&self, per_sec: u32) {
        self.rate_limit_per_sec
            .store(per_sec as usize, Ordering::Relaxed);
    }

    /// Runs one command or script with the timeout; errors mark the fleet degraded.
    async fn run<T: redis::FromRedisValue>(&self, request: scripts::Request) -> Result<T, ()> {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(connection) = connection else {
            return Err(());
        };
        let running = async move {
            match connection {
                Connection::Single(mut c) => request.run::<T, _>(&mut c).await,
                Connection::Cluster(mut c) => request.run::<T, _>(&mut c).await,
            }
        };
        let result = tokio::time::timeout(self.timeout, running).await;
        match result {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis reachable again: fleet mode restored");
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                self.mark_degraded(&e.to_string());
                Err(())
            }
            Err(_) => {
                self.mark_degraded("timed out");
                Err(())
            }
        }
    }

    fn mark_degraded(&self, why: &str) {
        let was = self.degraded.swap(true, Ordering::Relaxed);
        let connected = self
            .connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !was || !connected {
            tracing::warn!(
                error = why,
                "redis unreachable: serving from this replica's cache with its fallback budget"
            );
        }
    }

    /// The shared answer for `key`, if Redis has one.
    pub async fn get_answer(&self, key: &PackageKey) -> Option<SharedAnswer> {
        let text: Option<String> = self.run(scripts::get(&answer_key(key))).await.ok()?;
        serde_json::from_str(&text?).ok()
    }

    async fn fresh_answer(&self, key: &PackageKey, newer_than_ms: u64) -> Option<SharedAnswer> {
        self.get_answer(key).await.filter(|answer| {
            answer.fresh_until_ms > unix_now_ms() && answer.fetched_ms >= newer_than_ms
        })
    }

    /// Stores an answer until it may no longer be served (`PX`).
    pub async fn put_answer(&self, key: &PackageKey, answer: &SharedAnswer) {
        let ttl_ms = answer.stale_if_error_until_ms.saturating_sub(unix_now_ms());
        if ttl_ms == 0 {
            return;
        }
        if let Ok(text) = serde_json::to_string(answer) {
            let stored: Result<(), ()> = self
                .run(scripts::set_px(&answer_key(key), &text, ttl_ms))
                .await;
            if stored.is_ok() {
                let _: Result<i64, ()> = self
                    .run(scripts::publish(&filled_channel(), &key_text(key)))
                    .await;
            }
        }
    }

    /// Drops `key` everywhere: from Redis, and from every replica's L1.
    pub async fn evict(&self, key: &PackageKey) {
        let _: Result<i64, ()> = self.run(scripts::del(&answer_key(key))).await;
        let _: Result<i64, ()> = self.run(scripts::publish(&channel(), &key_text(key))).await;
    }

    /// Drops every shared answer and tells every replica.
    pub async fn purge_all(&self) {
        // Braces are not special in Redis globs: the prefix matches as is.
        let pattern = format!("{PREFIX}:answer:*");
        let route = format!("{PREFIX}:purge");
        let _: Result<i64, ()> = self.run(scripts::delete_matching(&route, &pattern)).await;
        let _: Result<i64, ()> = self.run(scripts::publish(&channel(), "*")).await;
    }

    /// Claims the right to fetch `key`: the lease, or the answer another
    /// replica stored meanwhile; waits (polling) until `deadline` for either.
    /// A revalidation takes only answers fetched after it began. With Redis
    /// unreachable the replica fetches on its own.
    pub async fn claim(
        self: &Arc<Self>,
        key: &PackageKey,
        deadline: Instant,
        revalidate: bool,
    ) -> Result<Claim, GatewayError> {
        let newer_than_ms = if revalidate { unix_now_ms() } else { 0 };
        let lease_key = lease_key(key);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let started = Instant::now();
        let mut filled = self.filled.subscribe();
        let wanted = key_text(key);
        loop {
            let took: Result<Option<String>, ()> = self
                .run(scripts::set_nx_px(
                    &lease_key,
                    &token,
                    LEASE.as_millis() as u64,
                ))
                .await;
            match took {
                Err(()) => return Ok(Claim::Fetch(None)),
                Ok(Some(_)) => {
                    let lease = self.hold_lease(lease_key, token);
                    // The previous holder may have stored the answer just
                    // before releasing: look once more before fetching again.
                    return Ok(match self.fresh_answer(key, newer_than_ms).await {
                        Some(answer) => Claim::Answered(answer),
                        None => Claim::Fetch(Some(lease)),
                    });
                }
                Ok(None) => {}
            }
            if let Some(answer) = self.fresh_answer(key, newer_than_ms).await {
                return Ok(Claim::Answered(answer));
            }
            if Instant::now() >= deadline {
                return Err(GatewayError::UpstreamTimeout {
                    timeout_ms: started.elapsed().as_millis() as u64,
                });
            }
            // Woken by the holder's "filled" message, else by the poll.
            let wait = tokio::time::timeout_at(deadline.min(Instant::now() + POLL), async {
                loop {
                    match filled.recv().await {
                        Ok(k) if k == wanted => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            });
            let _ = wait.await;
        }
    }

    /// Keeps the lease alive while the fetch runs.
    fn hold_lease(self: &Arc<Self>, key: String, token: String) -> Lease {
        let fleet = Arc::clone(self);
        let (renew_key, renew_token) = (key.clone(), token.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                let _: Result<i64, ()> = fleet
                    .run(scripts::renew_lease(
                        &renew_key,
                        &renew_token,
                        LEASE.as_millis() as u64,
                    ))
                    .await;
            }
        });
        Lease {
            fleet: Arc::clone(self),
            key,
            token,
            renewer,
        }
    }

    /// A rate slot from the fleet's budget, waiting until `deadline`; this
    /// replica's fallback budget while Redis is unreachable.
    pub async fn acquire_slot(
        self: &Arc<Self>,
        action: Action,
        deadline: Instant,
        call_timeout: Duration,
    ) -> Result<AnySlot, GatewayError> {
        let exhausted = || GatewayError::RateBudgetExhausted {
            retry_after: HOLD_AFTER_ANSWER,
        };
        let _waiter = WaiterGuard::enter(&self.waiting[action.index()], self.max_waiting)
            .ok_or_else(exhausted)?;
        loop {
            match self.try_global_slot(action, call_timeout).await {
                Ok(Some(slot)) => return Ok(AnySlot::Global(slot)),
                Ok(None) => {}
                Err(()) => {
                    return self.fallback[action.index()]
                        .acquire_until(deadline)
                        .await
                        .map(AnySlot::Local)
                }
            }
            if Instant::now() + POLL >= deadline {
                return Err(exhausted());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A slot only if one is free right now (background refreshes).
    pub async fn try_acquire_slot(
        self: &Arc<Self>,
        action: Action,
        call_timeout: Duration,
    ) -> Option<AnySlot> {
        match self.try_global_slot(action, call_timeout).await {
            Ok(slot) => slot.map(AnySlot::Global),
            Err(()) => self.fallback[action.index()]
                .try_acquire()
                .map(AnySlot::Local),
        }
    }

    async fn try_global_slot(
        self: &Arc<Self>,
        action: Action,
        call_timeout: Duration,
    ) -> Result<Option<GlobalSlot>, ()> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        // Until released, a slot lasts the whole call and a second more: a
        // replica that dies mid-call cannot leak it.
        let lease_ms = (call_timeout + HOLD_AFTER_ANSWER * 2).as_millis() as u64;
        let limit = self.rate_limit_per_sec.load(Ordering::Relaxed);
        let granted: i64 = self
            .run(scripts::acquire_slot(
                &slots_key(action),
                limit,
                &token,
                lease_ms,
            ))
            .await?;
        Ok((granted == 1).then(|| GlobalSlot {
            fleet: Arc::clone(self),
            action,
            token,
        }))
    }

    /// Applies every invalidation published by any replica and wakes the
    /// waiters of keys another replica filled, reconnecting when the
    /// subscription drops, until the task is dropped.
    pub async fn follow_invalidations(self: Arc<Self>, apply: impl Fn(Invalidation) + Send + Sync) {
        let (invalidate, filled) = (channel(), filled_channel());
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&[&invalidate, &filled]).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Ok(text) = message.get_payload::<String>() else {
                                continue;
                            };
                            if message.get_channel_name() == filled {
                                let _ = self.filled.send(text);
                            } else if let Some(invalidation) = parse_invalidation(&text) {
                                apply(invalidation);
                            }
                        }
                    }
                }
                Err(e) => self.mark_degraded(&e.to_string()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Pings Redis every second (connecting first if it never was), so that
    /// recovery is noticed without traffic.
    pub async fn watch_health(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let connected = self
                .connection
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !connected {
                self.try_connect().await;
                continue;
            }
            let _: Result<String, ()> = self.run(scripts::ping()).await;
        }
    }

    /// The shared form of an answer fetched here (`url_text` is its URL).
    pub fn share(url: &crate::resolver::CachedUrl, url_text: String) -> SharedAnswer {
        let now = std::time::Instant::now();
        let now_ms = unix_now_ms();
        let at = |instant: std::time::Instant| {
            now_ms + instant.saturating_duration_since(now).as_millis() as u64
        };
        SharedAnswer {
            url: url_text,
            fetched_ms: now_ms
                .saturating_sub(now.saturating_duration_since(url.fetched_at()).as_millis() as u64),
            fresh_until_ms: at(url.fresh_until()),
            stale_until_ms: at(url.stale_until()),
            stale_if_error_until_ms: at(url.stale_if_error_until()),
        }
    }
}

fn parse_invalidation(text: &str) -> Option<Invalidation> {
    if text == "*" {
        return Some(Invalidation::All);
    }
    let mut parts = text.splitn(3, ':');
    let action = Action::from_tc_name(parts.next()?).ok()?;
    let platform_id = PlatformId::parse(parts.next()?).ok()?;
    let mnp_id = MnpId::parse(parts.next()?).ok()?;
    Some(Invalidation::Key(PackageKey {
        action,
        platform_id,
        mnp_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_parse() {
        assert_eq!(parse_invalidation("*"), Some(Invalidation::All));
        let Some(Invalidation::Key(key)) =
            parse_invalidation("DescribeMNPOfflinePackageURL:P1:m-1")
        else {
            panic!("not parsed");
        };
        assert_eq!(key.mnp_id.as_str(), "m-1");
        assert_eq!(parse_invalidation("Nope:P:m"), None);
        assert_eq!(
            parse_invalidation("DescribeMNPOfflinePackageURL:P 1:m"),
            None
        );
    }
}
