//! Resolves a `PackageKey` to a URL: cache first, one shared upstream call on a miss,
//! stale answers while refreshing or while upstream is failing.

pub mod packed_url;
pub mod url_expiry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
// The sync cache rather than `moka::future`: its `get` is a plain call, where
// the future cache's is a 700-byte future that every request's future
// carries and copies; housekeeping runs inline on a `try_lock`, so a hit
// never waits for it (BENCHMARKS.md).
use moka::sync::Cache;
use moka::Expiry;

use crate::domain::{Action, PackageKey, Region, RequestId};
use crate::error::{ApiError, GatewayError, CODE_NOT_EXIST, CODE_PACKAGE_EXPIRED};
use crate::fleet::{unix_now_ms, AnySlot, Claim, Fleet, Invalidation, SharedAnswer};
use crate::metrics::{CacheEvent, Metrics};
use crate::settings::{CacheSettings, Settings};
use crate::upstream::rate_budget::{WaiterGuard, HOLD_AFTER_ANSWER};
use crate::upstream::{unix_now_secs, FetchedUrl, UpstreamClient};
use packed_url::{KeyIds, PackedUrl, UrlShapes};

/// First retry back-off ceiling; doubles with each attempt (full jitter).
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Largest retry back-off ceiling.
const RETRY_CAP: Duration = Duration::from_secs(2);

/// A package URL ready to be served, with the windows in which it may be.
///
/// Held inline in the cache entry, with no allocation of its own: 96 bytes,
/// so that moka's entry around it stays in a 128-byte allocation (memory
/// per entry: BENCHMARKS.md). A clone is a copy and one reference count.
#[derive(Clone, Debug)]
pub struct CachedUrl {
    /// The URL, packed against its key's ids.
    url: PackedUrl,
    /// When upstream answered it (for `Age`), in nanoseconds after `epoch()`:
    /// 8 bytes where an `Instant` takes 16.
    fetched_ns: i64,
    /// Length of the URL's JSON string content, so that an answer is written
    /// into one exact allocation.
    json_len: u32,
    // The windows, in milliseconds after the fetch (12 bytes where three
    // `Instant`s take 48; a window is capped at 49 days).
    fresh_ms: u32,
    stale_ms: u32,
    stale_if_error_ms: u32,
}

/// The instant cached answers' times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl CachedUrl {
    /// A URL fetched at `fetched_at` and servable for the given times after it.
    fn new(
        (url, json_len): (PackedUrl, usize),
        fetched_at: Instant,
        fresh: Duration,
        stale: Duration,
        stale_if_error: Duration,
    ) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let origin = epoch();
        let fetched_ns = if fetched_at >= origin {
            ns(fetched_at - origin)
        } else {
            // Fetched by another replica before this process started.
            -ns(origin - fetched_at)
        };
        CachedUrl {
            url,
            fetched_ns,
            json_len: u32::try_from(json_len).unwrap_or(u32::MAX),
            fresh_ms: ms(fresh),
            stale_ms: ms(stale),
            stale_if_error_ms: ms(stale_if_error),
        }
    }

    fn after_fetch(&self, ms: u32) -> Instant {
        self.fetched_at() + Duration::from_millis(u64::from(ms))
    }

    /// When upstream answered it.
    pub fn fetched_at(&self) -> Instant {
        let origin = epoch();
        let since = Duration::from_nanos(self.fetched_ns.unsigned_abs());
        if self.fetched_ns >= 0 {
            origin + since
        } else {
            origin.checked_sub(since).unwrap_or(origin)
        }
    }

    /// Served as a hit until then.
    pub fn fresh_until(&self) -> Instant {
        self.after_fetch(self.fresh_ms)
    }

    /// Served stale, while one background refresh runs, until then.
    pub fn stale_until(&self) -> Instant {
        self.after_fetch(self.stale_ms)
    }

    /// Served stale while upstream fails, until then. Never past the URL's
    /// own end minus the margin.
    pub fn stale_if_error_until(&self) -> Instant {
        self.after_fetch(self.stale_if_error_ms)
    }

    /// Seconds left before it stops being fresh (for `max-age`).
    pub fn fresh_secs_left(&self, now: Instant) -> u64 {
        self.fresh_until().saturating_duration_since(now).as_secs()
    }

    /// Seconds since upstream answered it (for `Age`).
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.fetched_at()).as_secs()
    }
}

/// The JSON string content of `url` (escaped, without the quotes).
fn json_content(url: &str) -> Vec<u8> {
    let mut quoted = Vec::with_capacity(url.len() + 2);
    crate::front::push_json_string(&mut quoted, url);
    quoted.pop();
    quoted.remove(0);
    quoted
}

/// How long answers live: the policy half of the cache settings.
#[derive(Clone, Copy, Debug)]
struct Lifetimes {
    ttl: Duration,
    stale: Duration,
    stale_if_error: Duration,
    negative_ttl: Duration,
    expiry_margin: Duration,
}

impl From<&CacheSettings> for Lifetimes {
    fn from(cache: &CacheSettings) -> Self {
        let secs = Duration::from_secs;
        Lifetimes {
            ttl: secs(cache.ttl_secs),
            stale: secs(cache.stale_secs),
            stale_if_error: secs(cache.stale_if_error_secs),
            negative_ttl: secs(cache.negative_ttl_secs),
            expiry_margin: secs(cache.expiry_margin_secs),
        }
    }
}

impl Lifetimes {
    /// The windows of a URL fetched at `now` (Unix `now_unix`), each capped
    /// by the URL's own end minus the margin.
    fn windows(
        &self,
        url: &str,
        packed: (PackedUrl, usize),
        now: Instant,
        now_unix: i64,
    ) -> CachedUrl {
        let left =
            url_expiry::time_left(url_expiry::url_end_unix(url), now_unix, self.expiry_margin);
        let cap = |d: Duration| left.map_or(d, |left| d.min(left));
        CachedUrl::new(
            packed,
            now,
            cap(self.ttl),
            cap(self.ttl + self.stale),
            cap(self.ttl + self.stale.max(self.stale_if_error)),
        )
    }
}

/// What the cache holds for a key: a URL, or upstream's "no online version".
/// A cheap clone (what moka hands out on a hit).
#[derive(Clone, Debug)]
enum CachedAnswer {
    Url(CachedUrl),
    NotExist(Arc<NotExist>),
}

/// A remembered `FailedOperation.MNPOnlineVersionNotExist`.
#[derive(Debug)]
struct NotExist {
    api: ApiError,
    until: Instant,
}

/// Where an answer came from (`X-Cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served fresh from the cache.
    Hit,
    /// Fetched from upstream (or failed before a usable cached answer existed).
    Miss,
    /// Served from the cache past its freshness.
    Stale,
}

impl CacheStatus {
    /// The `X-Cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// A URL served to one request.
#[derive(Clone, Debug)]
pub struct Served {
    /// The URL and its timing.
    url: CachedUrl,
    /// The key it was fetched for (the URL is packed against its ids).
    key: PackageKey,
    /// Upstream's `RequestId` when this request was answered by an upstream call.
    pub upstream_request_id: Option<String>,
    /// Found in the fleet's shared cache (Redis), not fetched upstream.
    pub shared_hit: bool,
}

impl Served {
    fn new(url: CachedUrl, key: &PackageKey) -> Self {
        Served {
            url,
            key: key.clone(),
            shared_hit: false,
            upstream_request_id: None,
        }
    }

    /// The URL's timing.
    pub fn url(&self) -> &CachedUrl {
        &self.url
    }

    /// Length of the URL as a JSON string literal.
    pub fn url_json_len(&self) -> usize {
        self.url.json_len as usize + 2
    }

    /// Appends the URL as a JSON string literal (quoted, escaped), byte for
    /// byte as it was when cached.
    pub fn write_url_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        self.url.url.write_json(key_ids(&self.key), out);
        out.push(b'"');
    }
}

fn key_ids(key: &PackageKey) -> KeyIds<'_> {
    KeyIds {
        platform_id: key.platform_id.as_str(),
        mnp_id: key.mnp_id.as_str(),
    }
}

/// The answer to one lookup, with its cache status.
#[derive(Debug)]
pub struct Resolution {
    /// The URL, or the error to answer with.
    pub outcome: Result<Served, GatewayError>,
    /// `X-Cache`.
    pub cache: CacheStatus,
    /// Whether this request shared another request's upstream call.
    pub coalesced: bool,
    /// Time the upstream call(s) behind this answer took.
    pub upstream_ms: Option<u64>,
}

impl Resolution {
    fn cached(outcome: Result<Served, GatewayError>, cache: CacheStatus) -> Self {
        Resolution {
            outcome,
            cache,
            coalesced: false,
            upstream_ms: None,
        }
    }
}

/// One lookup, as the front parsed it.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// What to look up.
    pub key: PackageKey,
    /// The client's `X-TC-Region`, if any.
    pub region: Option<Region>,
    /// `Cache-Control: no-cache`: skip the cache and ask upstream.
    pub revalidate: bool,
    /// When the client's request arrived: freshness is judged at this instant.
    pub received: Instant,
    /// When the client's request must be answered.
    pub deadline: tokio::time::Instant,
    /// The request id, sent upstream as `X-TC-TraceId`.
    pub request_id: RequestId,
}

type FetchResult = Result<Served, GatewayError>;

/// One upstream call in flight, shared by every request for its key.
#[derive(Clone)]
struct InflightFetch {
    result: Shared<BoxFuture<'static, FetchResult>>,
    /// Set once the call holds a rate slot: a waiter whose deadline passes
    /// before then was refused by the budget, not by a slow upstream.
    has_slot: Arc<AtomicBool>,
    /// Requests waiting on this call (bounded by `upstream.max_waiting`).
    waiters: Arc<AtomicUsize>,
    /// Milliseconds spent in upstream calls so far.
    upstream_ms: Arc<AtomicU64>,
}

/// What a shared call reports while it runs.
struct FetchProgress {
    has_slot: Arc<AtomicBool>,
    upstream_ms: Arc<AtomicU64>,
}

/// How a shared call gets its rate slots and how hard it tries.
struct FetchPlan {
    /// A slot already taken (background refreshes take one before starting).
    slot: Option<AnySlot>,
    /// Background refresh: take a slot only if one is free at once.
    background: bool,
    /// Attempts after the first.
    retries: u32,
}

// The entry layout is part of the memory budget (CachedUrl's doc comment):
// fail the build rather than let it grow unnoticed.
const _: () = assert!(std::mem::size_of::<CachedAnswer>() <= 96);

/// Per-entry expiry: each answer lives until its last servable instant.
struct AnswerExpiry;

impl AnswerExpiry {
    fn until(value: &CachedAnswer) -> Instant {
        match value {
            CachedAnswer::Url(u) => u.stale_if_error_until(),
            CachedAnswer::NotExist(n) => n.until,
        }
    }
}

impl Expiry<PackageKey, CachedAnswer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &PackageKey,
        value: &CachedAnswer,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(Self::until(value).saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &PackageKey,
        value: &CachedAnswer,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced entry takes the new answer's lifetime, not the old one's.
        Some(Self::until(value).saturating_duration_since(updated_at))
    }
}

/// Hashes cache keys on every lookup. foldhash rather than SipHash: it is
/// several times cheaper on the hit path, and its per-process random seed
/// still keeps clients from choosing colliding ids.
type KeyHasher = foldhash::fast::RandomState;

/// The cache, the in-flight upstream calls, and the policy that connects them.
pub struct Resolver {
    cache: Cache<PackageKey, CachedAnswer, KeyHasher>,
    /// The shapes cached URLs share.
    shapes: UrlShapes,
    /// Keys whose last refresh failed, for `upstream.error_backoff_secs`.
    failing: Cache<PackageKey, ()>,
    inflight: Mutex<HashMap<PackageKey, InflightFetch>>,
    upstream: Arc<UpstreamClient>,
    /// Swapped whole on config reload; read once per upstream answer.
    lifetimes: RwLock<Lifetimes>,
    call_reserve: Duration,
    request_timeout: Duration,
    max_retries: AtomicU32,
    max_waiting: usize,
    metrics: Arc<Metrics>,
    fleet: Option<Arc<Fleet>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver with an empty cache sized by `settings`.
    pub fn new(
        settings: &Settings,
        upstream: Arc<UpstreamClient>,
        metrics: Arc<Metrics>,
        fleet: Option<Arc<Fleet>>,
    ) -> Self {
        let request_timeout = settings.server.request_timeout();
        // A slot taken with almost no time left would spend budget on a
        // call that cannot finish: stop waiting for one a quarter of the
        // request's time before its deadline (at most one upstream timeout).
        let call_reserve = (request_timeout / 4).min(upstream.timeout());
        let cache = &settings.cache;
        let secs = Duration::from_secs;
        Resolver {
            cache: Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(AnswerExpiry)
                .build_with_hasher(KeyHasher::default()),
            failing: Cache::builder()
                // Only keys whose refresh just failed: a small bound suffices.
                .max_capacity(cache.max_entries.min(10_000))
                .time_to_live(secs(settings.upstream.error_backoff_secs))
                .build(),
            shapes: UrlShapes::default(),
            inflight: Mutex::new(HashMap::new()),
            upstream,
            lifetimes: RwLock::new(Lifetimes::from(cache)),
            call_reserve,
            request_timeout,
            max_retries: AtomicU32::new(settings.upstream.max_retries),
            max_waiting: settings.upstream.max_waiting,
            metrics,
            fleet,
        }
    }

    /// Applies reloadable settings: cache lifetimes (for answers fetched from
    /// now on), retries and the rate limit.
    pub fn reload(&self, settings: &Settings) {
        *self.lifetimes.write().unwrap_or_else(|p| p.into_inner()) =
            Lifetimes::from(&settings.cache);
        self.max_retries
            .store(settings.upstream.max_retries, Ordering::Relaxed);
        for action in Action::ALL {
            self.upstream
                .budget(action)
                .set_rate(settings.upstream.rate_limit_per_sec);
        }
        if let Some(fleet) = &self.fleet {
            fleet.set_rate(settings.upstream.rate_limit_per_sec);
        }
    }

    /// The upstream client (for its rate budgets).
    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// Answers one lookup: fresh from the cache; stale while one background
    /// refresh runs; else from the shared upstream call, falling back to a
    /// stale URL when upstream fails.
    pub async fn resolve(self: &Arc<Self>, lookup: Lookup) -> Resolution {
        let now = lookup.received;
        let mut fallback = None;
        match self.cache.get(&lookup.key) {
            Some(CachedAnswer::NotExist(n)) if !lookup.revalidate && now < n.until => {
                let api = ApiError {
                    request_id: None,
                    ..n.api.clone()
                };
                self.metrics.cache_event(CacheEvent::negative_hit);
                return Resolution::cached(Err(GatewayError::Upstream(api)), CacheStatus::Hit);
            }
            Some(CachedAnswer::Url(url)) => {
                if !lookup.revalidate && now < url.fresh_until() {
                    self.metrics.cache_event(CacheEvent::hit);
                    return Resolution::cached(Ok(Served::new(url, &lookup.key)), CacheStatus::Hit);
                }
                if !lookup.revalidate && now < url.stale_until() {
                    self.refresh_in_background(&lookup);
                    return self.stale(url, &lookup.key);
                }
                if now < url.stale_if_error_until() {
                    if self.failing.contains_key(&lookup.key) {
                        // Upstream failed for this key moments ago: not again yet.
                        return self.stale(url, &lookup.key);
                    }
                    fallback = Some(url);
                }
            }
            _ => {}
        }
        // Boxed: the miss path's state is large, and a hit should not carry
        // (and copy) it in every request's future.
        Box::pin(self.resolve_miss(lookup, fallback)).await
    }

    /// The miss path of `resolve`: join or start the shared upstream call,
    /// falling back to `fallback` (a stale URL) when upstream fails.
    async fn resolve_miss(
        self: &Arc<Self>,
        lookup: Lookup,
        fallback: Option<CachedUrl>,
    ) -> Resolution {
        let deadline = lookup.deadline;
        let key = lookup.key.clone();
        let waited_since = tokio::time::Instant::now();
        // With a stale URL to fall back on, one failure is enough: no retries.
        let retries = if fallback.is_some() {
            0
        } else {
            self.max_retries.load(Ordering::Relaxed)
        };
        let (fetch, coalesced, _waiter) = match self.join_or_start(
            lookup,
            FetchPlan {
                slot: None,
                background: false,
                retries,
            },
        ) {
            Ok(joined) => joined,
            Err(e) => {
                return match fallback {
                    Some(url) => self.stale(url, &key),
                    None => Resolution::cached(Err(e), CacheStatus::Miss),
                }
            }
        };
        self.metrics.cache_event(if coalesced {
            CacheEvent::coalesced
        } else {
            CacheEvent::miss
        });
        let outcome = match tokio::time::timeout_at(deadline, fetch.result).await {
            Ok(result) => result,
            // The shared call goes on for the others and fills the cache.
            Err(_) if !fetch.has_slot.load(Ordering::Acquire) => {
                Err(GatewayError::RateBudgetExhausted {
                    retry_after: HOLD_AFTER_ANSWER,
                })
            }
            Err(_) => Err(GatewayError::UpstreamTimeout {
                timeout_ms: waited_since.elapsed().as_millis() as u64,
            }),
        };
        let upstream_ms = Some(fetch.upstream_ms.load(Ordering::Acquire)).filter(|ms| *ms > 0);
        match (outcome, fallback) {
            (Err(e), Some(url))
                if e.allows_stale() && Instant::now() < url.stale_if_error_until() =>
            {
                tracing::debug!(error = %e, "upstream failed; serving the stale URL");
                Resolution {
                    upstream_ms,
                    ..self.stale(url, &key)
                }
            }
            (outcome, _) => Resolution {
                cache: match &outcome {
                    Ok(served) if served.shared_hit => CacheStatus::Hit,
                    _ => CacheStatus::Miss,
                },
                outcome: outcome.map(|s| Served {
                    // Only the request that led the call passes upstream's RequestId on.
                    upstream_request_id: s.upstream_request_id.filter(|_| !coalesced),
                    ..s
                }),
                coalesced,
                upstream_ms,
            },
        }
    }

    /// `url` packed against `key`'s ids, with the length of its JSON form.
    fn pack(&self, url: &str, key: &PackageKey) -> (PackedUrl, usize) {
        let json = json_content(url);
        (self.shapes.pack(&json, key_ids(key)), json.len())
    }

    fn stale(&self, url: CachedUrl, key: &PackageKey) -> Resolution {
        self.metrics.cache_event(CacheEvent::stale);
        Resolution::cached(Ok(Served::new(url, key)), CacheStatus::Stale)
    }

    /// Drops the cached answer for `key`, in every replica in fleet mode;
    /// true if this replica had one.
    pub async fn evict(&self, key: &PackageKey) -> bool {
        if let Some(fleet) = &self.fleet {
            fleet.evict(key).await;
        }
        self.cache.remove(key).is_some()
    }

    /// Drops every cached answer (everywhere in fleet mode); returns how many
    /// this replica had.
    pub async fn purge_all(&self) -> u64 {
        if let Some(fleet) = &self.fleet {
            fleet.purge_all().await;
        }
        self.purge_local()
    }

    fn purge_local(&self) -> u64 {
        self.cache.run_pending_tasks();
        let count = self.cache.entry_count();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
        count
    }

    /// Applies an invalidation another replica published.
    pub fn apply(&self, invalidation: Invalidation) {
        match invalidation {
            Invalidation::Key(key) => self.cache.invalidate(&key),
            Invalidation::All => {
                self.purge_local();
            }
        }
    }

    /// The fleet, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Number of cached answers (approximate until pending tasks run).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Starts one background refresh for a stale key, if none runs, the key
    /// is not backing off, and a rate slot is free right now.
    fn refresh_in_background(self: &Arc<Self>, lookup: &Lookup) {
        if self.failing.contains_key(&lookup.key) {
            return;
        }
        // In fleet mode the slot is tried (once) inside the refresh.
        let slot = match &self.fleet {
            Some(_) => None,
            None => match self.upstream.budget(lookup.key.action).try_acquire() {
                Some(slot) => Some(AnySlot::Local(slot)),
                None => return,
            },
        };
        let refresh = Lookup {
            // Its own deadline: the refresh does not die with the request.
            deadline: tokio::time::Instant::now() + self.request_timeout,
            revalidate: true,
            ..lookup.clone()
        };
        // Joining an in-flight call drops the slot unused: it was never sent.
        let _ = self.join_or_start(
            refresh,
            FetchPlan {
                slot,
                background: true,
                retries: 0,
            },
        );
    }

    /// Joins the call in flight for this key, or starts one on its own task.
    fn join_or_start(
        self: &Arc<Self>,
        lookup: Lookup,
        plan: FetchPlan,
    ) -> Result<(InflightFetch, bool, Option<WaiterGuard>), GatewayError> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fetch) = inflight.get(&lookup.key) {
            let waiter = WaiterGuard::enter(&fetch.waiters, self.max_waiting).ok_or(
                GatewayError::RateBudgetExhausted {
                    retry_after: HOLD_AFTER_ANSWER,
                },
            )?;
            return Ok((fetch.clone(), true, Some(waiter)));
        }
        let key = lookup.key.clone();
        let resolver = Arc::clone(self);
        let has_slot = Arc::new(AtomicBool::new(plan.slot.is_some()));
        let upstream_ms = Arc::new(AtomicU64::new(0));
        let progress = FetchProgress {
            has_slot: Arc::clone(&has_slot),
            upstream_ms: Arc::clone(&upstream_ms),
        };
        // Spawned so a client hanging up cannot cancel the shared upstream call.
        let task = tokio::spawn(async move {
            let key = lookup.key.clone();
            let result = resolver.fetch_and_store(lookup, plan, &progress).await;
            resolver
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            result
        });
        let result = async move {
            task.await.unwrap_or_else(|e| {
                Err(GatewayError::Internal(format!(
                    "upstream call task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        let fetch = InflightFetch {
            result,
            has_slot,
            waiters: Arc::new(AtomicUsize::new(0)),
            upstream_ms,
        };
        // The leader is always let in: the call it starts is what others wait on.
        let waiter = WaiterGuard::enter(&fetch.waiters, usize::MAX);
        inflight.insert(key, fetch.clone());
        Ok((fetch, false, waiter))
    }

    /// The body of a shared upstream call: fetch (with retries), then cache or evict.
    async fn fetch_and_store(
        &self,
        lookup: Lookup,
        mut plan: FetchPlan,
        progress: &FetchProgress,
    ) -> FetchResult {
        if !lookup.revalidate {
            // A call that finished between this request's cache miss and its
            // joining may have just filled the cache: no second upstream call.
            if let Some(CachedAnswer::Url(url)) = self.cache.get(&lookup.key) {
                if Instant::now() < url.fresh_until() {
                    return Ok(Served::new(url, &lookup.key));
                }
            }
        }
        if !self.upstream.has_credentials() {
            // Checked before taking a slot: no budget is spent on a call that cannot be signed.
            return Err(GatewayError::NotReady(
                "no valid credentials loaded".to_owned(),
            ));
        }
        let region = lookup
            .region
            .as_ref()
            .unwrap_or_else(|| self.upstream.default_region());
        let slot_deadline = lookup.deadline - self.call_reserve;
        // Fleet mode: another replica may have the answer, or be fetching it.
        let mut _lease = None;
        if let Some(fleet) = &self.fleet {
            if !lookup.revalidate {
                if let Some(shared) = fleet.get_answer(&lookup.key).await {
                    if let Some(served) = self.adopt(&lookup.key, shared).await {
                        return Ok(served);
                    }
                }
            }
            match fleet
                .claim(&lookup.key, slot_deadline, lookup.revalidate)
                .await?
            {
                Claim::Answered(shared) => {
                    if let Some(served) = self.adopt(&lookup.key, shared).await {
                        return Ok(served);
                    }
                }
                Claim::Fetch(lease) => _lease = lease,
            }
        }
        let mut attempt = 0;
        let result = loop {
            let slot = match plan.slot.take() {
                Some(slot) => slot,
                None if plan.background => self.try_slot(lookup.key.action).await.ok_or(
                    GatewayError::RateBudgetExhausted {
                        retry_after: HOLD_AFTER_ANSWER,
                    },
                )?,
                None => self.wait_slot(lookup.key.action, slot_deadline).await?,
            };
            progress.has_slot.store(true, Ordering::Release);
            let sent_at = Instant::now();
            let result = self
                .upstream
                .call(
                    &lookup.key,
                    region,
                    lookup.request_id.as_str(),
                    lookup.deadline,
                    slot,
                )
                .await;
            let took_ms = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            progress
                .upstream_ms
                .fetch_add(took_ms.max(1), Ordering::AcqRel);
            match result {
                Err(e) if e.is_retryable() && attempt < plan.retries => {
                    let ceiling = RETRY_CAP.min(RETRY_BASE * 2u32.saturating_pow(attempt));
                    let pause = ceiling.mul_f64(fastrand::f64());
                    if tokio::time::Instant::now() + pause >= slot_deadline {
                        break Err(e);
                    }
                    tracing::debug!(key = %lookup.key, attempt, error = %e, ?pause, "retrying upstream");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        self.store(&lookup.key, result).await
    }

    /// A slot only if one is free right now.
    async fn try_slot(&self, action: Action) -> Option<AnySlot> {
        match &self.fleet {
            Some(fleet) => {
                fleet
                    .try_acquire_slot(action, self.upstream.timeout())
                    .await
            }
            None => self
                .upstream
                .budget(action)
                .try_acquire()
                .map(AnySlot::Local),
        }
    }

    /// A slot, waiting until `deadline`.
    async fn wait_slot(
        &self,
        action: Action,
        deadline: tokio::time::Instant,
    ) -> Result<AnySlot, GatewayError> {
        match &self.fleet {
            Some(fleet) => {
                fleet
                    .acquire_slot(action, deadline, self.upstream.timeout())
                    .await
            }
            None => self
                .upstream
                .budget(action)
                .acquire_until(deadline)
                .await
                .map(AnySlot::Local),
        }
    }

    /// Takes an answer another replica stored into this replica's cache.
    async fn adopt(&self, key: &PackageKey, shared: SharedAnswer) -> Option<Served> {
        let now = Instant::now();
        let now_ms = unix_now_ms();
        let at = |ms: u64| now + Duration::from_millis(ms.saturating_sub(now_ms));
        let fresh_until = at(shared.fresh_until_ms);
        if fresh_until <= now {
            return None;
        }
        let fetched_at = now
            .checked_sub(Duration::from_millis(
                now_ms.saturating_sub(shared.fetched_ms),
            ))
            .unwrap_or(now);
        let since_fetch = |until: Instant| until.saturating_duration_since(fetched_at);
        let cached = CachedUrl::new(
            self.pack(&shared.url, key),
            fetched_at,
            since_fetch(fresh_until),
            since_fetch(at(shared.stale_until_ms)),
            since_fetch(at(shared.stale_if_error_until_ms)),
        );
        self.cache
            .insert(key.clone(), CachedAnswer::Url(cached.clone()));
        Some(Served {
            shared_hit: true,
            ..Served::new(cached, key)
        })
    }

    /// Caches, evicts or remembers the failure, and passes the result on.
    async fn store(
        &self,
        key: &PackageKey,
        result: Result<FetchedUrl, GatewayError>,
    ) -> FetchResult {
        match result {
            Ok(FetchedUrl { url, request_id }) => {
                self.failing.invalidate(key);
                let lifetimes = *self.lifetimes.read().unwrap_or_else(|p| p.into_inner());
                let packed = self.pack(&url, key);
                let cached = lifetimes.windows(&url, packed, Instant::now(), unix_now_secs());
                if cached.fresh_until() > cached.fetched_at() {
                    self.cache
                        .insert(key.clone(), CachedAnswer::Url(cached.clone()));
                    if let Some(fleet) = &self.fleet {
                        fleet.put_answer(key, &Fleet::share(&cached, url)).await;
                    }
                } else {
                    // Straight from upstream but already inside the margin:
                    // answered once, never cached.
                    self.cache.invalidate(key);
                }
                Ok(Served {
                    upstream_request_id: request_id,
                    ..Served::new(cached, key)
                })
            }
            Err(GatewayError::Upstream(api)) if api.code == CODE_PACKAGE_EXPIRED => {
                if self.evict(key).await {
                    self.metrics.cache_event(CacheEvent::evicted);
                }
                Err(GatewayError::Upstream(api))
            }
            Err(GatewayError::Upstream(api)) if api.code == CODE_NOT_EXIST => {
                let negative_ttl = self
                    .lifetimes
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .negative_ttl;
                if !negative_ttl.is_zero() {
                    let entry = CachedAnswer::NotExist(Arc::new(NotExist {
                        api: api.clone(),
                        until: Instant::now() + negative_ttl,
                    }));
                    self.cache.insert(key.clone(), entry);
                }
                Err(GatewayError::Upstream(api))
            }
            Err(e) => {
                if e.allows_stale() {
                    // A good entry is never replaced by an error; the key backs off.
                    self.failing.insert(key.clone(), ());
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_fetched_at(fetched_at: Instant) -> CachedUrl {
        let ids = KeyIds {
            platform_id: "P1",
            mnp_id: "m1",
        };
        let json = b"https://example.com/P1/m1/v1.zip";
        let packed = UrlShapes::default().pack(json, ids);
        let minute = Duration::from_secs(60);
        CachedUrl::new(
            (packed, json.len()),
            fetched_at,
            minute,
            2 * minute,
            3 * minute,
        )
    }

    #[test]
    fn a_fetch_time_is_kept_exactly_before_and_after_the_epoch() {
        let origin = epoch();
        let later = origin + Duration::from_nanos(1_234_567_891);
        let url = url_fetched_at(later);
        assert_eq!(url.fetched_at(), later);
        assert_eq!(url.fresh_until(), later + Duration::from_secs(60));
        assert_eq!(url.stale_if_error_until(), later + Duration::from_secs(180));
        // Another replica's answer, fetched before this process started.
        if let Some(earlier) = origin.checked_sub(Duration::from_millis(1_500)) {
            assert_eq!(url_fetched_at(earlier).fetched_at(), earlier);
            assert_eq!(url_fetched_at(earlier).age_secs(origin), 1);
        }
    }
}
