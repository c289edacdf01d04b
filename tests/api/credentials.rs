//! Credential providers, each obtaining credentials from the simulator over HTTP.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tcsas_gateway::settings::{CredentialProviderKind, Settings};
use tcsas_gateway::simulated_upstream::SimulatedUpstream;

use crate::helpers::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcsas-gw-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes by rename, as deploy tools and Kubernetes do: a new inode each time.
fn replace_file(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn profile_text(id: &str, key: &str) -> String {
    format!("[default]\nsecret_id = {id}\nsecret_key = {key}\n")
}

/// Credentials from the simulator's CVM metadata endpoint.
fn use_cvm_role(s: &mut Settings, sim: &SimulatedUpstream) {
    s.credentials.provider = CredentialProviderKind::CvmRole;
    s.credentials.cvm_metadata_url = format!("{}/latest/meta-data/", sim.endpoint());
}

async fn rest_no_cache(app: &TestApp, mnp: &str) -> Answer {
    let url = app.url(&TestApp::rest_path("mini-programs", PLATFORM, mnp));
    into_answer(
        app.http
            .get(url)
            .header("Cache-Control", "no-cache")
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn the_env_provider_signs_with_the_environment_credentials_and_token() {
    let sim_id = tcsas_gateway::simulated_upstream::DEMO_SECRET_ID;
    let sim_key = tcsas_gateway::simulated_upstream::DEMO_SECRET_KEY;
    let app = spawn_app_with_provider(
        env(&[
            ("TENCENTCLOUD_SECRET_ID", sim_id),
            ("TENCENTCLOUD_SECRET_KEY", sim_key),
            ("TENCENTCLOUD_SESSION_TOKEN", "env-session-token"),
        ]),
        |s, _| s.credentials.provider = CredentialProviderKind::Env,
    )
    .await;
    assert_eq!(app.rest_get("mp-env").await.status, 200);
    let call = app.sim.calls().pop().unwrap();
    assert_eq!(call.secret_id, sim_id);
    assert_eq!(call.token.as_deref(), Some("env-session-token"));
    assert_eq!(call.outcome, "ok");
}

#[tokio::test]
async fn the_chain_finds_the_profile_file_when_the_environment_has_nothing() {
    let dir = temp_dir("profile");
    let file = dir.join("credentials");
    replace_file(&file, &profile_text("AKIDprofile0001", "profile-key-1"));
    let app = spawn_app_with_provider(
        env(&[("TENCENTCLOUD_CREDENTIALS_FILE", file.to_str().unwrap())]),
        |_, sim| sim.accept_credentials("AKIDprofile0001", "profile-key-1"),
    )
    .await;
    assert_eq!(app.rest_get("mp-profile").await.status, 200);
    let call = app.sim.calls().pop().unwrap();
    assert_eq!(call.secret_id, "AKIDprofile0001");
    assert_eq!(call.outcome, "ok");
}

#[tokio::test]
async fn the_cvm_role_provider_gets_temporary_credentials_from_the_metadata_service() {
    let app = spawn_app_with_provider(vec![], |s, sim| {
        use_cvm_role(s, sim);
    })
    .await;
    let answer = app.rest_get("mp-cvm").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let call = app.sim.calls().pop().unwrap();
    assert!(
        call.secret_id.starts_with("AKIDtmpCVM"),
        "{}",
        call.secret_id
    );
    assert!(call
        .token
        .as_deref()
        .is_some_and(|t| t.starts_with("tmp-token-CVM")));
    assert_eq!(app.sim.metadata_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tke_oidc_provider_exchanges_the_token_file_rereading_it_on_every_refresh() {
    let dir = temp_dir("oidc");
    let token_file = dir.join("token");
    replace_file(&token_file, "web-identity-token-1");
    let app = spawn_app_with_provider(
        env(&[
            (
                "TKE_ROLE_ARN",
                "qcs::cam::uin/100000000001:roleName/tcsas-gateway",
            ),
            ("TKE_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("TKE_PROVIDER_ID", "oidc-provider-1"),
            ("TKE_REGION", "ap-singapore"),
        ]),
        |s, sim| {
            s.credentials.provider = CredentialProviderKind::TkeOidc;
            s.credentials.sts_endpoint = sim.endpoint();
            s.credentials.refresh_before_expiry_secs = 2;
            sim.set_temporary_credential_lifetime(3);
        },
    )
    .await;
    let answer = app.rest_get("mp-oidc").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let call = app.sim.calls().pop().unwrap();
    assert!(
        call.secret_id.starts_with("AKIDtmpSTS"),
        "{}",
        call.secret_id
    );
    assert!(call.token.is_some());
    assert_eq!(app.sim.web_identity_tokens(), vec!["web-identity-token-1"]);
    replace_file(&token_file, "web-identity-token-2");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let tokens = app.sim.web_identity_tokens();
    assert_eq!(
        tokens.last().map(String::as_str),
        Some("web-identity-token-2"),
        "{tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_credentials_are_refreshed_before_expiry_with_no_failed_request() {
    let app = spawn_app_with_provider(vec![], |s, sim| {
        use_cvm_role(s, sim);
        s.credentials.refresh_before_expiry_secs = 2;
        // Credentials live 4 s; the simulator refuses them afterwards.
        sim.set_temporary_credential_lifetime(4);
    })
    .await;
    let until = Instant::now() + Duration::from_secs(8);
    let mut i = 0;
    while Instant::now() < until {
        let answer = rest_no_cache(&app, &format!("mp-expiring-creds-{}", i % 5)).await;
        assert_eq!(answer.status, 200, "request {i} failed: {:?}", answer.body);
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: HashSet<String> = app.sim.calls().into_iter().map(|c| c.secret_id).collect();
    assert!(ids.len() >= 3, "credentials were not refreshed: {ids:?}");
    assert!(app.sim.calls().iter().all(|c| c.outcome == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_profile_file_rotates_the_secret_id_within_5s_with_no_failed_request() {
    let dir = temp_dir("rotation");
    let file = dir.join("credentials");
    replace_file(&file, &profile_text("AKIDrotateOLD", "old-key"));
    let app = spawn_app_with_provider(
        env(&[("TENCENTCLOUD_CREDENTIALS_FILE", file.to_str().unwrap())]),
        |s, sim| {
            s.credentials.provider = CredentialProviderKind::Profile;
            s.upstream.rate_limit_per_sec = 15;
            sim.accept_credentials("AKIDrotateOLD", "old-key");
            sim.accept_credentials("AKIDrotateNEW", "new-key");
        },
    )
    .await;
    let app = std::sync::Arc::new(app);
    // 200 requests per second for 6 s: mostly cache hits, one in twenty revalidating upstream.
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let started = Instant::now();
    let mut rotated_at = None;
    let mut requests = Vec::new();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(6) {
        ticker.tick().await;
        if rotated_at.is_none() && started.elapsed() > Duration::from_secs(1) {
            replace_file(&file, &profile_text("AKIDrotateNEW", "new-key"));
            rotated_at = Some(Instant::now());
        }
        let app = std::sync::Arc::clone(&app);
        let revalidate = n % 20 == 0;
        let mnp = format!("mp-rotate-{}", n % 4);
        n += 1;
        requests.push(tokio::spawn(async move {
            if revalidate {
                rest_no_cache(&app, &mnp).await
            } else {
                app.rest_get(&mnp).await
            }
        }));
    }
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let rotated_at = rotated_at.unwrap();
    let first_new = app
        .sim
        .calls()
        .into_iter()
        .find(|c| c.secret_id == "AKIDrotateNEW")
        .expect("the new SecretId reached upstream");
    assert!(first_new.arrived.duration_since(rotated_at) < Duration::from_secs(5));
    assert!(app.sim.calls().iter().all(|c| c.outcome == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_no_valid_credentials_are_held() {
    let app = spawn_app_with_provider(vec![], |s, sim| {
        use_cvm_role(s, sim);
        sim.set_metadata_available(false);
    })
    .await;
    let readyz = format!("http://{}/readyz", app.admin);
    assert_eq!(app.http.get(&readyz).send().await.unwrap().status(), 503);
    let refused = app.rest_get("mp-not-ready").await;
    assert_eq!(refused.status, 503);
    assert_eq!(app.sim.total_calls(), 0);
    app.sim.set_metadata_available(true);
    let until = Instant::now() + Duration::from_secs(10);
    while app.http.get(&readyz).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < until, "never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.rest_get("mp-not-ready").await.status, 200);
}
