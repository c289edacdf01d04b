//! Resolves a `PackageKey` to a URL: cache first, one shared upstream call on a miss.

pub mod url_expiry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use moka::future::Cache;
use moka::Expiry;

use crate::domain::{PackageKey, Region};
use crate::error::{ApiError, GatewayError, CODE_NOT_EXIST, CODE_PACKAGE_EXPIRED};
use crate::settings::Settings;
use crate::upstream::rate_budget::HOLD_AFTER_ANSWER;
use crate::upstream::{unix_now_secs, FetchedUrl, UpstreamClient};

/// A package URL ready to be served.
#[derive(Debug)]
pub struct CachedUrl {
    /// The URL.
    pub url: String,
    /// The URL as a JSON string literal (quoted and escaped), rendered once.
    pub url_json: Bytes,
    /// When upstream answered it (for `Age`).
    pub fetched_at: Instant,
    /// Until when it may be served.
    pub fresh_until: Instant,
}

impl CachedUrl {
    fn new(url: String, fetched_at: Instant, fresh_for: Duration) -> Self {
        let url_json = Bytes::from(serde_json::to_vec(&url).unwrap_or_default());
        CachedUrl {
            url,
            url_json,
            fetched_at,
            fresh_until: fetched_at + fresh_for,
        }
    }

    /// Seconds left before it must not be served any more (for `max-age`).
    pub fn fresh_secs_left(&self, now: Instant) -> u64 {
        self.fresh_until.saturating_duration_since(now).as_secs()
    }

    /// Seconds since upstream answered it (for `Age`).
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.fetched_at).as_secs()
    }
}

/// What the cache holds for a key: a URL, or upstream's "no online version".
#[derive(Debug)]
enum CachedAnswer {
    Url(Arc<CachedUrl>),
    NotExist { api: ApiError, until: Instant },
}

impl CachedAnswer {
    fn servable_until(&self) -> Instant {
        match self {
            CachedAnswer::Url(u) => u.fresh_until,
            CachedAnswer::NotExist { until, .. } => *until,
        }
    }
}

/// Where an answer came from (`X-Cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Fetched from upstream (or failed before a cached answer existed).
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
    pub url: Arc<CachedUrl>,
    /// Upstream's `RequestId` when this request was answered by an upstream call.
    pub upstream_request_id: Option<String>,
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
    /// When the client's request must be answered.
    pub deadline: tokio::time::Instant,
    /// The request id, sent upstream as `X-TC-TraceId`.
    pub request_id: Arc<str>,
}

type FetchResult = Result<Served, GatewayError>;
type SharedFetch = Shared<BoxFuture<'static, FetchResult>>;

/// One upstream call in flight, shared by every request for its key.
#[derive(Clone)]
struct InflightFetch {
    result: SharedFetch,
    /// Set once the call holds a rate slot: a waiter whose deadline passes
    /// before then was refused by the budget, not by a slow upstream.
    has_slot: Arc<AtomicBool>,
}

/// Per-entry expiry: each answer carries its own servable-until instant.
struct AnswerExpiry;

impl Expiry<PackageKey, Arc<CachedAnswer>> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &PackageKey,
        value: &Arc<CachedAnswer>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.servable_until().saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &PackageKey,
        value: &Arc<CachedAnswer>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced entry takes the new answer's lifetime, not the old one's.
        Some(value.servable_until().saturating_duration_since(updated_at))
    }
}

/// The cache, the in-flight upstream calls, and the policy that connects them.
pub struct Resolver {
    cache: Cache<PackageKey, Arc<CachedAnswer>>,
    inflight: Mutex<HashMap<PackageKey, InflightFetch>>,
    upstream: Arc<UpstreamClient>,
    ttl: Duration,
    negative_ttl: Duration,
    expiry_margin: Duration,
    call_reserve: Duration,
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
    pub fn new(settings: &Settings, upstream: Arc<UpstreamClient>) -> Self {
        // A slot taken with almost no time left would spend budget on a
        // call that cannot finish: stop waiting for one a quarter of the
        // request's time before its deadline (at most one upstream timeout).
        let call_reserve = (settings.server.request_timeout() / 4).min(upstream.timeout());
        let settings = &settings.cache;
        Resolver {
            cache: Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(AnswerExpiry)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            upstream,
            ttl: Duration::from_secs(settings.ttl_secs),
            negative_ttl: Duration::from_secs(settings.negative_ttl_secs),
            expiry_margin: Duration::from_secs(settings.expiry_margin_secs),
            call_reserve,
        }
    }

    /// The upstream client (for its rate budgets).
    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// Answers one lookup: a servable cached answer, else the (shared) upstream call.
    pub async fn resolve(self: &Arc<Self>, lookup: Lookup) -> Resolution {
        if !lookup.revalidate {
            if let Some(hit) = self.cached(&lookup.key).await {
                return Resolution {
                    outcome: hit,
                    cache: CacheStatus::Hit,
                    coalesced: false,
                };
            }
        }
        let deadline = lookup.deadline;
        let waited_since = tokio::time::Instant::now();
        let (fetch, coalesced) = self.join_or_start(lookup);
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
        let outcome = outcome.map(|served| Served {
            // Only the request that led the call passes upstream's RequestId on.
            upstream_request_id: served.upstream_request_id.filter(|_| !coalesced),
            url: served.url,
        });
        Resolution {
            outcome,
            cache: CacheStatus::Miss,
            coalesced,
        }
    }

    /// Drops the cached answer for `key`; true if there was one.
    pub async fn evict(&self, key: &PackageKey) -> bool {
        self.cache.remove(key).await.is_some()
    }

    /// Drops every cached answer; returns how many there were.
    pub async fn purge_all(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        let count = self.cache.entry_count();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
        count
    }

    /// Number of cached answers (approximate until pending tasks run).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// A cached answer that may still be served, as the outcome to answer with.
    async fn cached(&self, key: &PackageKey) -> Option<FetchResult> {
        let entry = self.cache.get(key).await?;
        // moka's expiry is the first guard; this makes "never past its end" exact.
        if entry.servable_until() <= Instant::now() {
            return None;
        }
        Some(match &*entry {
            CachedAnswer::Url(url) => Ok(Served {
                url: Arc::clone(url),
                upstream_request_id: None,
            }),
            CachedAnswer::NotExist { api, .. } => Err(GatewayError::Upstream(ApiError {
                request_id: None,
                ..api.clone()
            })),
        })
    }

    /// Joins the call in flight for this key, or starts one on its own task.
    fn join_or_start(self: &Arc<Self>, lookup: Lookup) -> (InflightFetch, bool) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fetch) = inflight.get(&lookup.key) {
            return (fetch.clone(), true);
        }
        let key = lookup.key.clone();
        let resolver = Arc::clone(self);
        let has_slot = Arc::new(AtomicBool::new(false));
        let slot_flag = Arc::clone(&has_slot);
        // Spawned so a client hanging up cannot cancel the shared upstream call.
        let task = tokio::spawn(async move {
            let key = lookup.key.clone();
            let result = resolver.fetch_and_store(lookup, &slot_flag).await;
            resolver
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            result
        });
        let fetch = async move {
            task.await.unwrap_or_else(|e| {
                Err(GatewayError::Internal(format!(
                    "upstream call task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        let fetch = InflightFetch {
            result: fetch,
            has_slot,
        };
        inflight.insert(key, fetch.clone());
        (fetch, false)
    }

    /// The body of a shared upstream call: fetch, then cache or evict.
    async fn fetch_and_store(&self, lookup: Lookup, has_slot: &AtomicBool) -> FetchResult {
        if !lookup.revalidate {
            // A call that finished between this request's cache miss and its
            // joining may have just filled the cache: no second upstream call.
            if let Some(hit) = self.cached(&lookup.key).await {
                return hit;
            }
        }
        let region = lookup
            .region
            .as_ref()
            .unwrap_or_else(|| self.upstream.default_region());
        let slot = self
            .upstream
            .budget(lookup.key.action)
            .acquire_until(lookup.deadline - self.call_reserve)
            .await?;
        has_slot.store(true, Ordering::Release);
        let result = self
            .upstream
            .call(
                &lookup.key,
                region,
                &lookup.request_id,
                lookup.deadline,
                slot,
            )
            .await;
        match result {
            Ok(FetchedUrl { url, request_id }) => {
                let fresh_for = url_expiry::servable_for(
                    url_expiry::url_end_unix(&url),
                    unix_now_secs(),
                    self.ttl,
                    self.expiry_margin,
                );
                let cached = Arc::new(CachedUrl::new(url, Instant::now(), fresh_for));
                if fresh_for.is_zero() {
                    // Straight from upstream but already inside the margin:
                    // answered once, never cached.
                    self.cache.invalidate(&lookup.key).await;
                } else {
                    self.cache
                        .insert(
                            lookup.key.clone(),
                            Arc::new(CachedAnswer::Url(Arc::clone(&cached))),
                        )
                        .await;
                }
                Ok(Served {
                    url: cached,
                    upstream_request_id: request_id,
                })
            }
            Err(GatewayError::Upstream(api)) if api.code == CODE_PACKAGE_EXPIRED => {
                self.cache.invalidate(&lookup.key).await;
                Err(GatewayError::Upstream(api))
            }
            Err(GatewayError::Upstream(api)) if api.code == CODE_NOT_EXIST => {
                if !self.negative_ttl.is_zero() {
                    let entry = CachedAnswer::NotExist {
                        api: api.clone(),
                        until: Instant::now() + self.negative_ttl,
                    };
                    self.cache.insert(lookup.key.clone(), Arc::new(entry)).await;
                }
                Err(GatewayError::Upstream(api))
            }
            Err(other) => Err(other),
        }
    }
}
