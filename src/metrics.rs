//! Prometheus metrics: counters, real histograms and gauges, one registry per gateway.
//!
//! `prometheus-client` rather than the global-recorder `metrics` facade: each
//! `App` owns its registry, so several gateways in one process (the tests)
//! never mix their counts.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::Action;

/// Latency buckets in seconds: 100 µs (cache hits) to 10 s (deadlines).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// What the resolver did for one request (`tcsas_gateway_cache_events_total{event}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheEvent {
    /// Served fresh from the cache.
    hit,
    /// Led an upstream call.
    miss,
    /// Served past freshness.
    stale,
    /// Shared another request's upstream call.
    coalesced,
    /// A cached URL dropped because upstream said `PackageAlreadyExpired`.
    evicted,
    /// "No online version" served from the cache.
    negative_hit,
}

impl CacheEvent {
    /// Every event, in declaration order.
    const ALL: [CacheEvent; 6] = [
        CacheEvent::hit,
        CacheEvent::miss,
        CacheEvent::stale,
        CacheEvent::coalesced,
        CacheEvent::evicted,
        CacheEvent::negative_hit,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    front: &'static str,
    action: &'static str,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: CacheEvent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    action: &'static str,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontLabels {
    front: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_calls: Family<UpstreamLabels, Counter>,
    request_duration: Family<FrontLabels, Histogram>,
    upstream_duration: Family<ActionLabels, Histogram>,
    cache_entries: Gauge,
    rate_budget_waiting: Family<ActionLabels, Gauge>,
    redis_degraded: Gauge,
    /// Handles for the labels every cache hit uses, looked up once: the hit
    /// path then costs two atomic adds and a histogram observation.
    ok_requests: [[Counter; Action::ALL.len()]; FRONTS.len()],
    durations: [Histogram; FRONTS.len()],
    events: [Counter; CacheEvent::ALL.len()],
    /// Encoding takes the registry whole; scrapes are rare, so a lock is fine.
    encode_lock: Mutex<()>,
}

/// The fronts requests are counted under.
const FRONTS: [&str; 2] = ["tc", "rest"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let cache_events = Family::<EventLabels, Counter>::default();
        let upstream_calls = Family::<UpstreamLabels, Counter>::default();
        let request_duration = Family::<FrontLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_duration = Family::<ActionLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let cache_entries = Gauge::default();
        let rate_budget_waiting = Family::<ActionLabels, Gauge>::default();
        let redis_degraded = Gauge::default();
        registry.register(
            "tcsas_gateway_requests",
            "Client requests by front, action and outcome (ok or the error code)",
            requests.clone(),
        );
        registry.register(
            "tcsas_gateway_cache_events",
            "What the cache did: hit, miss, stale, coalesced, evicted, negative_hit",
            cache_events.clone(),
        );
        registry.register(
            "tcsas_gateway_upstream_calls",
            "Upstream calls by action and result (ok, transport, or the Tencent Cloud error code)",
            upstream_calls.clone(),
        );
        registry.register(
            "tcsas_gateway_request_duration_seconds",
            "Time to answer a client request",
            request_duration.clone(),
        );
        registry.register(
            "tcsas_gateway_upstream_duration_seconds",
            "Time of one upstream call",
            upstream_duration.clone(),
        );
        registry.register(
            "tcsas_gateway_cache_entries",
            "Entries in the URL cache",
            cache_entries.clone(),
        );
        registry.register(
            "tcsas_gateway_redis_degraded",
            "1 while fleet mode cannot reach Redis (serving from this replica with its fallback budget)",
            redis_degraded.clone(),
        );
        registry.register(
            "tcsas_gateway_rate_budget_waiting",
            "Requests waiting for an upstream rate slot",
            rate_budget_waiting.clone(),
        );
        let ok_requests = FRONTS.map(|front| {
            Action::ALL.map(|action| {
                requests
                    .get_or_create(&RequestLabels {
                        front,
                        action: action.tc_name(),
                        outcome: "ok".to_owned(),
                    })
                    .clone()
            })
        });
        let durations = FRONTS.map(|front| {
            request_duration
                .get_or_create(&FrontLabels { front })
                .clone()
        });
        let events =
            CacheEvent::ALL.map(|event| cache_events.get_or_create(&EventLabels { event }).clone());
        Metrics {
            ok_requests,
            durations,
            events,
            registry,
            requests,
            upstream_calls,
            request_duration,
            upstream_duration,
            cache_entries,
            rate_budget_waiting,
            redis_degraded,
            encode_lock: Mutex::new(()),
        }
    }

    /// One answered client request.
    pub fn request(
        &self,
        front: &'static str,
        action: Option<Action>,
        outcome: &str,
        took: Duration,
    ) {
        let front_index = FRONTS.iter().position(|f| *f == front);
        if let (Some(f), Some(action), "ok") = (front_index, action, outcome) {
            self.ok_requests[f][action.index()].inc();
            self.durations[f].observe(took.as_secs_f64());
            return;
        }
        self.requests
            .get_or_create(&RequestLabels {
                front,
                action: action.map_or("none", Action::tc_name),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.request_duration
            .get_or_create(&FrontLabels { front })
            .observe(took.as_secs_f64());
    }

    /// One cache event.
    pub fn cache_event(&self, event: CacheEvent) {
        self.events[event as usize].inc();
    }

    /// One upstream call and how it ended.
    pub fn upstream_call(&self, action: Action, result: &str, took: Duration) {
        self.upstream_calls
            .get_or_create(&UpstreamLabels {
                action: action.tc_name(),
                result: result.to_owned(),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&ActionLabels {
                action: action.tc_name(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with the gauges set to the values given.
    pub fn encode(
        &self,
        cache_entries: u64,
        waiting: impl IntoIterator<Item = (Action, usize)>,
        redis_degraded: bool,
    ) -> String {
        let _guard = self.encode_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.redis_degraded.set(i64::from(redis_degraded));
        self.cache_entries
            .set(i64::try_from(cache_entries).unwrap_or(i64::MAX));
        for (action, count) in waiting {
            self.rate_budget_waiting
                .get_or_create(&ActionLabels {
                    action: action.tc_name(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
