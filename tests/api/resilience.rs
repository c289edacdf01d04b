//! Resilience: stale answers, failures, retries, throttling and bounded waiting.

use std::time::{Duration, Instant};

use tcsas_gateway::settings::Settings;
use tcsas_gateway::simulated_upstream::{Fault, KeyBehaviour, SimAnswer};

use crate::helpers::*;

/// Fresh for 1 s, stale-while-revalidate 2 s more, stale-if-error 30 s, back-off 2 s.
fn short_lived(s: &mut Settings) {
    s.cache.ttl_secs = 1;
    s.cache.stale_secs = 2;
    s.cache.stale_if_error_secs = 30;
    s.upstream.error_backoff_secs = 2;
    s.upstream.timeout_ms = 300;
}

fn behaviour(f: impl FnOnce(&mut KeyBehaviour)) -> KeyBehaviour {
    let mut b = KeyBehaviour::default();
    f(&mut b);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_while_exactly_one_refresh_runs() {
    let app = spawn_app_with(short_lived).await;
    let old = app.rest_get("mp-swr").await.url().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.sim.set_key(
        PLATFORM,
        "mp-swr",
        behaviour(|b| b.latency = Duration::from_millis(250)),
    );
    let started = Instant::now();
    let stale: Vec<Answer> = futures_join_all((0..20).map(|_| app.rest_get("mp-swr"))).await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "stale answers waited for the refresh"
    );
    for answer in &stale {
        assert_eq!(answer.x_cache(), "STALE");
        assert_eq!(answer.url(), Some(old.as_str()));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.sim.calls_for(PLATFORM, "mp-swr"),
        2,
        "exactly one refresh"
    );
    let refreshed = app.rest_get("mp-swr").await;
    assert_eq!(refreshed.x_cache(), "HIT");
    assert_ne!(refreshed.url(), Some(old.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_kept_on_each_failure_type_with_one_call_per_back_off() {
    let app = spawn_app_with(short_lived).await;
    let faults = [
        Fault::Hang,
        Fault::Http500,
        Fault::NotJson,
        Fault::ConnectionReset,
        Fault::RequestLimitExceeded,
        Fault::InternalError,
    ];
    let mut olds = Vec::new();
    for fault in faults {
        let mnp = format!("mp-sie-{fault:?}");
        olds.push(app.rest_get(&mnp).await.url().unwrap().to_owned());
        app.sim
            .set_key(PLATFORM, &mnp, behaviour(|b| b.fault = Some(fault)));
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // 4.5 s of traffic: through the stale window and into stale-if-error.
    let until = Instant::now() + Duration::from_millis(4_500);
    while Instant::now() < until {
        for (fault, old) in faults.iter().zip(&olds) {
            let answer = app.rest_get(&format!("mp-sie-{fault:?}")).await;
            assert_eq!(answer.status, 200, "{fault:?}: {:?}", answer.body);
            assert_eq!(answer.x_cache(), "STALE", "{fault:?}");
            assert_eq!(answer.url(), Some(old.as_str()), "{fault:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for fault in faults {
        let upstream_calls = app.sim.calls_for(PLATFORM, &format!("mp-sie-{fault:?}")) - 1;
        // One attempt per 2 s back-off over 4.5 s: at most 3, and at least one.
        assert!(
            (1..=3).contains(&upstream_calls),
            "{fault:?}: {upstream_calls} calls"
        );
    }
}

#[tokio::test]
async fn a_url_past_its_own_end_is_never_served_even_when_upstream_is_down() {
    let app = spawn_app_with(short_lived).await;
    // 62 s URL - 60 s margin: servable for 2 s, whatever the stale windows say.
    app.sim.set_key(
        PLATFORM,
        "mp-dying",
        behaviour(|b| b.url_window_secs = Some(62)),
    );
    let old = app.rest_get("mp-dying").await.url().unwrap().to_owned();
    app.sim.set_key(
        PLATFORM,
        "mp-dying",
        behaviour(|b| b.fault = Some(Fault::Http500)),
    );
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let answer = app.rest_get("mp-dying").await;
    assert_ne!(
        answer.url(),
        Some(old.as_str()),
        "an expired URL was served"
    );
    assert_eq!(answer.status, 502);
    let tc = app.tc_get("mp-dying").await;
    assert_eq!(tc.url(), None);
}

#[tokio::test]
async fn package_already_expired_during_a_refresh_evicts() {
    let app = spawn_app_with(short_lived).await;
    let old = app
        .rest_get("mp-refresh-expired")
        .await
        .url()
        .unwrap()
        .to_owned();
    app.sim.set_key(
        PLATFORM,
        "mp-refresh-expired",
        behaviour(|b| b.answer = SimAnswer::Expired),
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let stale = app.rest_get("mp-refresh-expired").await;
    assert_eq!(stale.x_cache(), "STALE");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = app.rest_get("mp-refresh-expired").await;
    assert_eq!(after.status, 410);
    assert_ne!(after.url(), Some(old.as_str()));
}

#[tokio::test]
async fn a_retry_succeeds_after_one_internal_error_with_a_fresh_timestamp() {
    let app = spawn_app().await;
    // The slow first answer puts the retry in a later second.
    app.sim.set_key(
        PLATFORM,
        "mp-retry",
        behaviour(|b| b.latency = Duration::from_millis(1_100)),
    );
    app.sim
        .fail_next(PLATFORM, "mp-retry", Fault::InternalError, 1);
    let answer = app.tc_get("mp-retry").await;
    assert!(answer.url().is_some(), "{:?}", answer.body);
    let calls: Vec<_> = app
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.mnp_id == "mp-retry")
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].outcome, "fault:InternalError");
    assert_eq!(calls[1].outcome, "ok");
    assert!(
        calls[1].timestamp > calls[0].timestamp,
        "the retry was not re-signed"
    );
    let auth = |c: &tcsas_gateway::simulated_upstream::SeenCall| {
        c.headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
    };
    assert_ne!(auth(&calls[0]), auth(&calls[1]));
}

#[tokio::test]
async fn retries_stop_at_max_retries() {
    let app = spawn_app_with(|s| s.upstream.max_retries = 2).await;
    app.sim.set_key(
        PLATFORM,
        "mp-always-500",
        behaviour(|b| b.fault = Some(Fault::Http500)),
    );
    let answer = app.rest_get("mp-always-500").await;
    assert_eq!(answer.status, 502);
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-always-500"), 3);
    app.sim.set_key(
        PLATFORM,
        "mp-auth",
        behaviour(|b| b.answer = SimAnswer::Expired),
    );
    app.rest_get("mp-auth").await;
    assert_eq!(
        app.sim.calls_for(PLATFORM, "mp-auth"),
        1,
        "non-retryable errors are not retried"
    );
}

/// Upstream calls made in `window` by 60 distinct cold keys asked at once.
async fn calls_under_constant_demand(fault: Fault) -> usize {
    let app = spawn_app_with(|s| {
        s.upstream.max_retries = 0;
        s.server.request_timeout_ms = 4_000;
    })
    .await;
    app.sim.set_fault(Some(fault));
    let answers =
        futures_join_all((0..60).map(|i| app.rest_get_owned(format!("mp-throttle-{i}")))).await;
    assert_eq!(answers.len(), 60);
    app.sim.total_calls()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_request_limit_exceeded_slows_the_gateway_down() {
    let (throttled, control) = tokio::join!(
        calls_under_constant_demand(Fault::RequestLimitExceeded),
        calls_under_constant_demand(Fault::InternalError),
    );
    // Control: slots free 1 s after each answer, every key gets its call
    // (waves at 0, 1, 2 s). Throttled: slots held 2 s, waves at 0 and 2 s.
    assert_eq!(control, 60);
    assert!(
        throttled <= 40,
        "{throttled} calls while upstream throttled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_max_waiting_on_one_key_is_refused_at_once_with_flat_memory() {
    let app = spawn_app_with(|s| s.upstream.max_waiting = 50).await;
    let mut rss_after_first = 0;
    for round in 0..4 {
        let key = format!("mp-flood-{round}");
        app.sim.set_key(
            PLATFORM,
            &key,
            behaviour(|b| b.latency = Duration::from_millis(1_500)),
        );
        let started = Instant::now();
        let answers = futures_join_all((0..300).map(|_| {
            let key = key.clone();
            let app = &app;
            async move {
                let a = app.rest_get_owned(key).await;
                (started.elapsed(), a)
            }
        }))
        .await;
        let refused: Vec<_> = answers.iter().filter(|(_, a)| a.status == 429).collect();
        let served = answers.iter().filter(|(_, a)| a.status == 200).count();
        assert_eq!(refused.len() + served, 300);
        // The request that leads the call plus 49 waiting on it.
        assert_eq!(served, 50, "round {round}");
        for (took, answer) in &refused {
            assert!(
                *took < Duration::from_millis(1_400),
                "a refusal waited {took:?}"
            );
            assert_eq!(answer.header("retry-after"), "1");
            assert_eq!(answer.error_code(), Some("RequestLimitExceeded"));
        }
        assert_eq!(app.sim.calls_for(PLATFORM, &key), 1);
        if round == 0 {
            rss_after_first = rss_kib();
        }
    }
    let growth = rss_kib().saturating_sub(rss_after_first);
    assert!(
        growth < 16 * 1024,
        "memory grew by {growth} KiB over the floods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_max_waiting_for_rate_slots_is_refused_at_once() {
    let app = spawn_app_with(|s| {
        s.upstream.max_waiting = 20;
        s.upstream.rate_limit_per_sec = 1;
    })
    .await;
    let started = Instant::now();
    let answers =
        futures_join_all((0..200).map(|i| app.rest_get_owned(format!("mp-queue-{i}")))).await;
    let refused_fast = answers.iter().filter(|a| a.status == 429).count();
    assert!(refused_fast >= 170, "only {refused_fast} refused");
    assert!(app.sim.total_calls() <= 21);
    assert!(started.elapsed() < Duration::from_secs(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_still_answers_each_client_within_its_deadline() {
    let deadline = Duration::from_millis(2_000);
    let app = spawn_app_with(|s| s.server.request_timeout_ms = deadline.as_millis() as u64).await;
    app.sim.set_fault(Some(Fault::Hang));
    let started = Instant::now();
    let answers =
        futures_join_all((0..40).map(|i| app.rest_get_owned(format!("mp-hung-{}", i % 25)))).await;
    for answer in &answers {
        assert!(matches!(answer.status, 504 | 429), "{:?}", answer.body);
    }
    assert!(
        started.elapsed() < deadline + Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
