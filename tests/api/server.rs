//! The listener: slowloris guard, HTTP/2 prior knowledge, probes.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection; returns when it did.
async fn closed_after(stream: &mut TcpStream, started: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_by_the_header_timeout() {
    let app = spawn_app_with(|s| s.server.header_read_timeout_ms = 1_000).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    let took = tokio::select! {
        took = closed => took,
        _ = trickle => panic!("the whole trickle was accepted"),
    };
    assert!(took < Duration::from_millis(2_500), "closed after {took:?}");
}

#[tokio::test]
async fn an_idle_connection_without_a_request_is_closed() {
    let app = spawn_app_with(|s| s.server.header_read_timeout_ms = 1_000).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let took = tokio::time::timeout(
        Duration::from_secs(5),
        closed_after(&mut stream, Instant::now()),
    )
    .await
    .expect("the idle connection was kept open");
    assert!(took >= Duration::from_millis(900));
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let app = spawn_app().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(app.url(&TestApp::rest_path("mini-programs", PLATFORM, "mp-h2")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let answer = into_answer(response).await;
    assert_eq!(answer.status, 200);
    assert!(answer.url().is_some());
}

#[tokio::test]
async fn probes_answer_on_both_listeners() {
    let app = spawn_app().await;
    for base in [app.addr, app.admin] {
        for path in ["/healthz", "/readyz"] {
            let response = app
                .http
                .get(format!("http://{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{base}{path}");
        }
    }
    assert_eq!(app.sim.total_calls(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(|s| s.server.header_read_timeout_ms = 1_000).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = tokio::time::timeout(
        Duration::from_secs(5),
        closed_after(&mut stream, Instant::now()),
    )
    .await
    .expect("the idle keep-alive connection was kept open");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test]
async fn a_request_slower_than_the_header_timeout_is_still_answered() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_ms = 1_000;
        s.server.request_timeout_ms = 5_000;
    })
    .await;
    app.sim.set_latency(Duration::from_millis(1_800));
    let answer = app.rest_get("mp-slow-upstream").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(answer.url().is_some());
    assert_eq!(app.sim.total_calls(), 1);
}
