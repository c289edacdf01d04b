//! Metrics: exact counts after a known sequence of requests.

use std::time::Duration;

use tcsas_gateway::simulated_upstream::{KeyBehaviour, SimAnswer};

use crate::helpers::*;

fn slow() -> KeyBehaviour {
    KeyBehaviour {
        latency: Duration::from_millis(400),
        ..KeyBehaviour::default()
    }
}

/// The value of the sample line that starts with `series` (labels included).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hits_misses_coalesced_and_rejected_requests_exactly() {
    let app = spawn_app_with(|s| s.upstream.max_waiting = 5).await;
    app.sim.set_key(PLATFORM, "mp-m-b", slow());
    app.sim.set_key(PLATFORM, "mp-m-d", slow());
    app.sim.set_key(
        PLATFORM,
        "mp-m-c",
        KeyBehaviour {
            answer: SimAnswer::NotExist,
            ..KeyBehaviour::default()
        },
    );
    // a: 1 miss, then 3 hits.
    for _ in 0..4 {
        assert_eq!(app.rest_get("mp-m-a").await.status, 200);
    }
    // b: 5 at once on a slow key: 1 miss + 4 coalesced.
    let b = futures_join_all((0..5).map(|_| app.rest_get("mp-m-b"))).await;
    assert!(b.iter().all(|a| a.status == 200));
    // c: not-exist, then remembered.
    assert_eq!(app.rest_get("mp-m-c").await.status, 404);
    assert_eq!(app.rest_get("mp-m-c").await.status, 404);
    // d: 8 at once, at most 5 waiting: 1 miss + 4 coalesced + 3 refused.
    let d = futures_join_all((0..8).map(|_| app.rest_get("mp-m-d"))).await;
    assert_eq!(d.iter().filter(|a| a.status == 429).count(), 3);
    // Bad input.
    assert_eq!(app.rest_get("bad.id").await.status, 400);

    let text = app
        .http
        .get(format!("http://{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let event = |e: &str| {
        sample(
            &text,
            &format!("tcsas_gateway_cache_events_total{{event=\"{e}\"}}"),
        )
    };
    assert_eq!(event("hit"), 3.0);
    assert_eq!(event("miss"), 4.0);
    assert_eq!(event("coalesced"), 8.0);
    assert_eq!(event("negative_hit"), 1.0);
    let requests = |outcome: &str| {
        sample(
            &text,
            &format!("tcsas_gateway_requests_total{{front=\"rest\",action=\"{MNP_ACTION}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(requests("ok"), 14.0);
    assert_eq!(requests("RequestLimitExceeded"), 3.0);
    assert_eq!(requests("FailedOperation.MNPOnlineVersionNotExist"), 2.0);
    assert_eq!(requests("InvalidParameter"), 1.0);
    let upstream = |result: &str| {
        sample(
            &text,
            &format!(
                "tcsas_gateway_upstream_calls_total{{action=\"{MNP_ACTION}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(upstream("ok"), 3.0);
    assert_eq!(upstream("FailedOperation.MNPOnlineVersionNotExist"), 1.0);
    assert_eq!(
        sample(
            &text,
            "tcsas_gateway_request_duration_seconds_count{front=\"rest\"}"
        ),
        20.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("tcsas_gateway_upstream_duration_seconds_count{{action=\"{MNP_ACTION}\"}}")
        ),
        4.0
    );
    assert!(
        text.contains("tcsas_gateway_request_duration_seconds_bucket{le=\"0.001\",front=\"rest\"}")
            || text.contains(
                "tcsas_gateway_request_duration_seconds_bucket{front=\"rest\",le=\"0.001\"}"
            )
    );
    assert!(text.contains("# TYPE tcsas_gateway_request_duration_seconds histogram"));
    assert!(text.contains("tcsas_gateway_cache_entries "));
    assert!(text.contains(&format!(
        "tcsas_gateway_rate_budget_waiting{{action=\"{MNP_ACTION}\"}} 0"
    )));
    assert!(!text.contains(app.sim.config().secret_key.as_str()));
}
