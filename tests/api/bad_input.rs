//! Bad input gets a clear error and never reaches upstream.

use crate::helpers::*;

#[tokio::test]
async fn each_bad_tc_request_is_answered_and_reaches_no_upstream() {
    let app = spawn_app().await;
    let long = "a".repeat(65);
    let cases: Vec<(&str, Option<&str>, String, &str)> = vec![
        (
            "no action",
            None,
            tc_body(PLATFORM, "m"),
            "MissingParameter",
        ),
        (
            "unknown action",
            Some("DescribeInstances"),
            tc_body(PLATFORM, "m"),
            "InvalidAction",
        ),
        (
            "malformed JSON",
            Some(MNP_ACTION),
            "{\"MNPId\":".into(),
            "InvalidParameter",
        ),
        (
            "not an object",
            Some(MNP_ACTION),
            "[1,2]".into(),
            "InvalidParameter",
        ),
        (
            "missing MNPId",
            Some(MNP_ACTION),
            format!(r#"{{"PlatformId":"{PLATFORM}"}}"#),
            "MissingParameter",
        ),
        (
            "missing PlatformId",
            Some(MNP_ACTION),
            r#"{"MNPId":"m"}"#.into(),
            "MissingParameter",
        ),
        (
            "empty id",
            Some(MNP_ACTION),
            tc_body(PLATFORM, ""),
            "MissingParameter",
        ),
        (
            "numeric id",
            Some(MNP_ACTION),
            format!(r#"{{"MNPId":7,"PlatformId":"{PLATFORM}"}}"#),
            "InvalidParameter",
        ),
        (
            "null id",
            Some(MNP_ACTION),
            format!(r#"{{"MNPId":null,"PlatformId":"{PLATFORM}"}}"#),
            "MissingParameter",
        ),
        (
            "id too long",
            Some(MNP_ACTION),
            tc_body(PLATFORM, &long),
            "InvalidParameter",
        ),
        (
            "id with a slash",
            Some(MNP_ACTION),
            tc_body(PLATFORM, "a/b"),
            "InvalidParameter",
        ),
        (
            "id with a space",
            Some(MNP_ACTION),
            tc_body("P 1", "m"),
            "InvalidParameter",
        ),
        (
            "unknown parameter",
            Some(MNP_ACTION),
            format!(r#"{{"MNPId":"m","PlatformId":"{PLATFORM}","Extra":1}}"#),
            "UnknownParameter",
        ),
        (
            "body over 64 KiB",
            Some(MNP_ACTION),
            format!(
                r#"{{"MNPId":"m","PlatformId":"{PLATFORM}","Pad":"{}"}}"#,
                "x".repeat(70_000)
            ),
            "RequestSizeLimitExceeded",
        ),
    ];
    for (case, action, body, code) in cases {
        let mut request = app
            .http
            .post(app.url("/"))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(action) = action {
            request = request.header("X-TC-Action", action);
        }
        let answer = into_answer(request.send().await.unwrap()).await;
        assert_eq!(answer.status, 200, "{case}: TC errors are HTTP 200");
        assert_eq!(answer.header("content-type"), "application/json", "{case}");
        assert_eq!(answer.error_code(), Some(code), "{case}: {:?}", answer.body);
        let message = answer.body["Response"]["Error"]["Message"]
            .as_str()
            .unwrap_or("");
        assert!(!message.is_empty(), "{case}: no message");
        assert!(
            answer.body["Response"]["RequestId"].as_str().is_some(),
            "{case}"
        );
    }
    let bad_region = into_answer(
        app.tc(MNP_ACTION, tc_body(PLATFORM, "m"))
            .header("X-TC-Region", "AP SINGAPORE")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bad_region.error_code(), Some("InvalidParameter"));
    let get_root = into_answer(app.http.get(app.url("/")).send().await.unwrap()).await;
    assert_eq!(get_root.error_code(), Some("UnsupportedProtocol"));
    assert_eq!(app.sim.total_calls(), 0, "bad input reached upstream");
}

#[tokio::test]
async fn each_bad_rest_request_is_answered_and_reaches_no_upstream() {
    let app = spawn_app().await;
    let long = "a".repeat(65);
    let cases = [
        (
            format!("/v1/platforms/{PLATFORM}/mini-programs/a%20b/offline-package-url"),
            400,
            "InvalidParameter",
        ),
        (
            format!("/v1/platforms/{PLATFORM}/mini-programs/{long}/offline-package-url"),
            400,
            "InvalidParameter",
        ),
        (
            "/v1/platforms/P.1/mini-programs/m/offline-package-url".to_owned(),
            400,
            "InvalidParameter",
        ),
        (
            format!("/v1/platforms/{PLATFORM}/mini-apps/m/offline-package-url"),
            404,
            "ResourceNotFound",
        ),
        (
            format!("/v1/platforms/{PLATFORM}/mini-programs/m"),
            404,
            "ResourceNotFound",
        ),
        ("/nope".to_owned(), 404, "ResourceNotFound"),
    ];
    for (path, status, code) in cases {
        let answer = into_answer(app.http.get(app.url(&path)).send().await.unwrap()).await;
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.error_code(), Some(code), "{path}");
        assert!(answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(!answer.x_cache().is_empty());
    }
    let post = app
        .http
        .post(app.url(&TestApp::rest_path("mini-programs", PLATFORM, "m")))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET");
    assert_eq!(app.sim.total_calls(), 0, "bad input reached upstream");
}
