//! Caching: hits make no upstream call; entries live no longer than their URL allows.

use std::time::Duration;

use tcsas_gateway::simulated_upstream::{KeyBehaviour, SimAnswer};

use crate::helpers::*;

#[tokio::test]
async fn a_cached_key_makes_one_upstream_call_on_the_tc_shape() {
    let app = spawn_app().await;
    let first = app.tc_get("mp-cached-tc").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    let url = first.url().expect("a URL").to_owned();
    for _ in 0..20 {
        let again = app.tc_get("mp-cached-tc").await;
        assert_eq!(again.x_cache(), "HIT");
        assert_eq!(again.url(), Some(url.as_str()));
        assert_eq!(again.header("content-type"), "application/json");
    }
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-cached-tc"), 1);
}

#[tokio::test]
async fn a_cached_key_makes_one_upstream_call_on_the_rest_shape() {
    let app = spawn_app().await;
    let first = app.rest_get("mp-cached-rest").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    for _ in 0..20 {
        let again = app.rest_get("mp-cached-rest").await;
        assert_eq!(again.status, 200);
        assert_eq!(again.x_cache(), "HIT");
        assert_eq!(again.url(), first.url());
        assert!(again.header("cache-control").starts_with("max-age="));
        assert!(again.header("age").parse::<u64>().is_ok());
    }
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-cached-rest"), 1);
}

#[tokio::test]
async fn both_shapes_share_one_cache_entry() {
    let app = spawn_app().await;
    let rest = app.rest_get("mp-shared").await;
    let tc = app.tc_get("mp-shared").await;
    assert_eq!(tc.x_cache(), "HIT");
    assert_eq!(tc.url(), rest.url());
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-shared"), 1);
}

#[tokio::test]
async fn a_cache_hit_gets_its_own_request_id() {
    let app = spawn_app().await;
    let miss = app.tc_get("mp-request-ids").await;
    let hit_a = app.tc_get("mp-request-ids").await;
    let hit_b = app.tc_get("mp-request-ids").await;
    let id = |a: &Answer| {
        a.body["Response"]["RequestId"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(!id(&miss).is_empty());
    assert_ne!(id(&hit_a), id(&miss));
    assert_ne!(id(&hit_a), id(&hit_b));
    assert_eq!(id(&hit_a), hit_a.header("x-request-id"));
}

#[tokio::test]
async fn a_sane_client_request_id_is_kept_and_a_bad_one_replaced() {
    let app = spawn_app().await;
    let path = app.url(&crate::helpers::TestApp::rest_path(
        "mini-programs",
        PLATFORM,
        "mp-rid",
    ));
    let kept = app
        .http
        .get(&path)
        .header("X-Request-Id", "abc.DEF_1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc.DEF_1-2");
    let call = app.sim.calls().pop().expect("one upstream call");
    assert_eq!(
        call.trace_id.as_deref(),
        Some("abc.DEF_1-2"),
        "sent upstream as X-TC-TraceId"
    );
    let replaced = app
        .http
        .get(&path)
        .header("X-Request-Id", "has space")
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "has space");
    assert!(!replaced.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn an_entry_lives_until_its_url_end_minus_the_margin_not_the_ttl() {
    let app = spawn_app().await;
    app.sim.set_key(
        PLATFORM,
        "mp-short-url",
        KeyBehaviour {
            url_window_secs: Some(70),
            ..KeyBehaviour::default()
        },
    );
    assert_eq!(app.tc_get("mp-short-url").await.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(app.tc_get("mp-short-url").await.x_cache(), "HIT");
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-short-url"), 1);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // 70 s URL - 60 s margin = 10 s: refetched well before the 300 s TTL.
    assert_eq!(app.tc_get("mp-short-url").await.x_cache(), "MISS");
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-short-url"), 2);
}

#[tokio::test]
async fn no_cache_revalidates_upstream() {
    let app = spawn_app().await;
    let first = app.rest_get("mp-revalidate").await;
    let path = app.url(&crate::helpers::TestApp::rest_path(
        "mini-programs",
        PLATFORM,
        "mp-revalidate",
    ));
    let fresh = into_answer(
        app.http
            .get(&path)
            .header("Cache-Control", "no-cache")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(fresh.x_cache(), "MISS");
    assert_ne!(
        fresh.url(),
        first.url(),
        "the simulator serves a new version per call"
    );
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-revalidate"), 2);
    // The revalidated URL replaced the cached one.
    assert_eq!(app.rest_get("mp-revalidate").await.url(), fresh.url());
}

#[tokio::test]
async fn not_exist_is_remembered_for_the_negative_ttl() {
    let app = spawn_app().await;
    app.sim.set_key(
        PLATFORM,
        "mp-not-exist",
        KeyBehaviour {
            answer: SimAnswer::NotExist,
            ..KeyBehaviour::default()
        },
    );
    let first = app.tc_get("mp-not-exist").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.error_code(),
        Some("FailedOperation.MNPOnlineVersionNotExist")
    );
    let rest = app.rest_get("mp-not-exist").await;
    assert_eq!(rest.status, 404);
    assert_eq!(rest.x_cache(), "HIT");
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-not-exist"), 1);
}

#[tokio::test]
async fn upstream_failures_are_not_cached() {
    let app = spawn_app_with(|s| s.upstream.timeout_ms = 300).await;
    app.sim.set_key(
        PLATFORM,
        "mp-slow",
        KeyBehaviour {
            latency: Duration::from_millis(800),
            ..KeyBehaviour::default()
        },
    );
    let timed_out = app.rest_get("mp-slow").await;
    assert_eq!(timed_out.status, 504);
    assert_eq!(timed_out.error_code(), Some("ServiceUnavailable"));
    app.sim
        .set_key(PLATFORM, "mp-slow", KeyBehaviour::default());
    let ok = app.rest_get("mp-slow").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.x_cache(), "MISS");
    // Three timed-out attempts (two retries), then the one that succeeded.
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-slow"), 4);
}

#[tokio::test]
async fn the_client_region_is_honoured_and_its_credentials_ignored() {
    let app = spawn_app().await;
    let answer = into_answer(
        app.tc(MNP_ACTION, tc_body(PLATFORM, "mp-region"))
            .header("X-TC-Region", "ap-guangzhou")
            .header("Authorization", "TC3-HMAC-SHA256 Credential=AKIDclient/x")
            .header("X-TC-Token", "client-token")
            .header("X-TC-Timestamp", "1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(answer.url().is_some(), "{:?}", answer.body);
    let calls = app.sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].region.as_deref(), Some("ap-guangzhou"));
    assert_eq!(calls[0].token, None);
    assert_ne!(calls[0].timestamp, 1);
    assert_eq!(calls[0].secret_id, app.sim.config().secret_id);
    // A region-less request uses the configured default.
    app.tc_get("mp-region-default").await;
    let last = app.sim.calls().pop().unwrap();
    assert_eq!(last.region.as_deref(), Some("ap-singapore"));
}

#[tokio::test]
async fn mini_games_use_their_own_action() {
    let app = spawn_app().await;
    let path = crate::helpers::TestApp::rest_path("mini-games", PLATFORM, "mg_game-01");
    let answer = into_answer(app.http.get(app.url(&path)).send().await.unwrap()).await;
    assert_eq!(answer.status, 200);
    let tc = into_answer(
        app.tc(MNG_ACTION, tc_body(PLATFORM, "mg_game-01"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tc.x_cache(), "HIT");
    let calls = app.sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].action, MNG_ACTION);
}
