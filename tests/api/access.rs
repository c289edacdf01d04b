//! Access control: address ranges and tokens, refused before anything reaches upstream.

use std::time::{Duration, Instant};

use crate::helpers::*;

fn token_file(name: &str, token: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tcsas-gw-access-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, token).unwrap();
    file.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_outside_allow_cidrs_is_refused_and_reaches_no_upstream() {
    let app = spawn_app_with(|s| s.server.allow_cidrs = vec!["10.0.0.0/8".into()]).await;
    let rest = app.rest_get("mp-outside").await;
    assert_eq!(rest.status, 403);
    assert_eq!(rest.error_code(), Some("AuthFailure.UnauthorizedOperation"));
    let tc = app.tc_get("mp-outside").await;
    assert_eq!(tc.status, 200);
    assert_eq!(tc.error_code(), Some("AuthFailure.UnauthorizedOperation"));
    let probe = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(probe.status(), 200, "probes answer everyone");
    assert_eq!(app.sim.total_calls(), 0);
}

#[tokio::test]
async fn loopback_inside_allow_cidrs_is_served() {
    let app =
        spawn_app_with(|s| s.server.allow_cidrs = vec!["127.0.0.0/8".into(), "::1".into()]).await;
    assert_eq!(app.rest_get("mp-inside").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_a_client_is_refused_and_the_file_is_reread() {
    let file = token_file("front", "first-token\n");
    let path = file.clone();
    let app = spawn_app_with(move |s| s.server.auth_token_file = Some(path)).await;
    let url = app.url(&TestApp::rest_path("mini-programs", PLATFORM, "mp-token"));
    let get = |headers: Vec<(&'static str, &'static str)>| {
        let mut request = app.http.get(&url);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        async move { into_answer(request.send().await.unwrap()).await }
    };
    let none = get(vec![]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), "Bearer");
    assert_eq!(
        get(vec![("Authorization", "Bearer wrong")]).await.status,
        401
    );
    assert_eq!(
        app.sim.total_calls(),
        0,
        "a refused client reached upstream"
    );
    assert_eq!(
        get(vec![("Authorization", "Bearer first-token")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(vec![("X-Gateway-Token", "first-token")]).await.status,
        200
    );
    let tc = into_answer(
        app.tc(MNP_ACTION, tc_body(PLATFORM, "mp-token"))
            .header("Authorization", "TC3-HMAC-SHA256 Credential=AKIDx/y")
            .header("X-Gateway-Token", "first-token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        tc.url().is_some(),
        "SDK clients pass the token in X-Gateway-Token"
    );

    std::fs::write(&file, "second-token").unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while get(vec![("Authorization", "Bearer second-token")])
        .await
        .status
        != 200
    {
        assert!(Instant::now() < until, "the new token was never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(vec![("Authorization", "Bearer first-token")])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn admin_routes_need_their_own_token_but_probes_do_not() {
    let file = token_file("admin", "admin-token");
    let app = spawn_app_with(move |s| s.admin.auth_token_file = Some(file)).await;
    let admin = |path: &str| format!("http://{}{}", app.admin, path);
    assert_eq!(
        app.http
            .get(admin("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app.http
            .delete(admin("/admin/cache"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let with_token = app
        .http
        .get(admin("/metrics"))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    assert_eq!(
        app.http
            .get(admin("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The front listener needs no token: the admin token is the admin's alone.
    assert_eq!(app.rest_get("mp-admin-token").await.status, 200);
}
