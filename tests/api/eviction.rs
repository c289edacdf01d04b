//! Eviction: PackageAlreadyExpired drops the cached URL for good.

use tcsas_gateway::simulated_upstream::{KeyBehaviour, SimAnswer};

use crate::helpers::*;

#[tokio::test]
async fn package_already_expired_evicts_the_cached_url() {
    let app = spawn_app().await;
    let cached = app.tc_get("mp-expiring").await;
    let old_url = cached.url().expect("a URL").to_owned();
    app.sim.set_key(
        PLATFORM,
        "mp-expiring",
        KeyBehaviour {
            answer: SimAnswer::Expired,
            ..KeyBehaviour::default()
        },
    );
    let revalidated = into_answer(
        app.tc(MNP_ACTION, tc_body(PLATFORM, "mp-expiring"))
            .header("Cache-Control", "no-cache")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        revalidated.error_code(),
        Some("FailedOperation.PackageAlreadyExpired")
    );

    // Upstream still says expired: the client sees the error, never the old URL.
    let tc = app.tc_get("mp-expiring").await;
    assert_eq!(
        tc.error_code(),
        Some("FailedOperation.PackageAlreadyExpired")
    );
    let rest = app.rest_get("mp-expiring").await;
    assert_eq!(rest.status, 410);
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-expiring"), 4);

    // Upstream has a new package: the new URL is served.
    app.sim
        .set_key(PLATFORM, "mp-expiring", KeyBehaviour::default());
    let fresh = app.rest_get("mp-expiring").await;
    assert_eq!(fresh.x_cache(), "MISS");
    assert_ne!(fresh.url(), Some(old_url.as_str()));
}

#[tokio::test]
async fn admin_purge_drops_one_key_or_all() {
    let app = spawn_app().await;
    app.tc_get("mp-purge-a").await;
    app.tc_get("mp-purge-b").await;
    let admin = |path: &str| format!("http://{}{}", app.admin, path);
    let one = into_answer(
        app.http
            .delete(admin(&format!(
                "/admin/cache/{MNP_ACTION}/{PLATFORM}/mp-purge-a"
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one.body["purged"], 1);
    assert_eq!(app.tc_get("mp-purge-a").await.x_cache(), "MISS");
    assert_eq!(app.tc_get("mp-purge-b").await.x_cache(), "HIT");
    let all = into_answer(app.http.delete(admin("/admin/cache")).send().await.unwrap()).await;
    assert_eq!(all.body["purged"], 2);
    assert_eq!(app.tc_get("mp-purge-b").await.x_cache(), "MISS");
}
