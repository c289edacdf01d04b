//! Tencent Cloud's official Python SDK, pointed at the gateway, works unchanged.

use std::process::Command;

use tcsas_gateway::simulated_upstream::{KeyBehaviour, SimAnswer};

use crate::helpers::*;

/// The Python that has `tencentcloud-sdk-python-intl-en` (scripts/test.sh sets it up).
fn sdk_python() -> String {
    std::env::var("TCSAS_SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_reads_urls_and_errors_from_the_gateway() {
    let app = spawn_app().await;
    app.sim.set_key(
        PLATFORM,
        "mp-sdk-missing",
        KeyBehaviour {
            answer: SimAnswer::NotExist,
            ..KeyBehaviour::default()
        },
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/official_sdk_client.py"
    );
    let endpoint = app.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(sdk_python())
            .args([
                script,
                &endpoint,
                PLATFORM,
                "mp-sdk",
                "mp-sdk",
                "mp-sdk-missing",
                "bad id",
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK client failed (is tencentcloud-sdk-python-intl-en installed? scripts/test.sh installs it): {stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON line per call"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let url = lines[0]["url"].as_str().expect("the SDK parsed Data.Data");
    assert!(url.contains("q-sign-time="));
    assert_eq!(
        lines[1]["url"].as_str(),
        Some(url),
        "the second call is a cache hit"
    );
    assert_ne!(lines[0]["request_id"], lines[1]["request_id"]);
    assert_eq!(lines[2]["code"], "FailedOperation.MNPOnlineVersionNotExist");
    assert_eq!(lines[3]["code"], "InvalidParameter");
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-sdk"), 1);
    assert_eq!(app.sim.total_calls(), 2, "bad input reached upstream");
    assert!(
        app.sim
            .calls()
            .iter()
            .all(|c| c.secret_id == app.sim.config().secret_id),
        "the client's own credentials were forwarded"
    );
}
