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

/// Sends `chunks` as one chunked TC request on a raw connection; returns the
/// status code and the body.
async fn chunked_tc_request(app: &TestApp, chunks: &[&[u8]]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: gw\r\nX-TC-Action: {MNP_ACTION}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        stream.flush().await.unwrap();
    }
    // The gateway may answer (and close) before the last chunk is read.
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_whether_declared_or_streamed() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    // Declared by Content-Length: refused before it is read.
    let declared = into_answer(
        app.tc(MNP_ACTION, format!("{:<2000}", tc_body(PLATFORM, "m")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The TC shape answers errors in the envelope, with HTTP 200.
    assert_eq!(
        declared.error_code(),
        Some("RequestSizeLimitExceeded"),
        "{declared:?}"
    );
    // Streamed in chunks with no length: refused once it passes the limit.
    let piece = [b' '; 600];
    let (status, body) = chunked_tc_request(&app, &[&piece, &piece, &piece]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""Code":"RequestSizeLimitExceeded""#),
        "{body}"
    );
    assert_eq!(
        app.sim.total_calls(),
        0,
        "an oversized body reached upstream"
    );
}

#[tokio::test]
async fn a_body_sent_in_pieces_is_read_whole() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    // 1000 bytes in three pieces of 400, 400 and 200, the object across the
    // first two: only the whole body parses, and it is under the limit.
    let object = format!("{}{}", " ".repeat(380), tc_body(PLATFORM, "mp-in-pieces"));
    let body = format!("{object:<1000}");
    let (a, rest) = body.as_bytes().split_at(400);
    let (b, c) = rest.split_at(400);
    let (status, answer) = chunked_tc_request(&app, &[a, b, c]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""Data":{"Data":"https://"#), "{answer}");
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-in-pieces"), 1);
}
