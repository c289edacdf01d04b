//! Rate limit: never more than the limit per action in any one-second window of arrivals.

use std::time::{Duration, Instant};

use tcsas_gateway::simulated_upstream::KeyBehaviour;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_keys_never_exceed_the_limit_in_any_second_and_all_finish_in_time() {
    let deadline = Duration::from_millis(3_000);
    let app = spawn_app_with(|s| s.server.request_timeout_ms = deadline.as_millis() as u64).await;
    for i in 0..400 {
        // Answers spread over 0-280 ms, so slots free at different times.
        app.sim.set_key(
            PLATFORM,
            &format!("mp-rate-{i}"),
            KeyBehaviour {
                latency: Duration::from_millis((i % 8) * 40),
                ..KeyBehaviour::default()
            },
        );
    }
    let requests: Vec<_> = (0..400)
        .map(|i| {
            let request = if i % 2 == 0 {
                app.tc(MNP_ACTION, tc_body(PLATFORM, &format!("mp-rate-{i}")))
            } else {
                app.http.get(app.url(&TestApp::rest_path(
                    "mini-programs",
                    PLATFORM,
                    &format!("mp-rate-{i}"),
                )))
            };
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = into_answer(request.send().await.expect("answered")).await;
                (started.elapsed(), answer)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for r in requests {
        let (took, answer) = r.await.unwrap();
        // The deadline runs from when the gateway reads the request; the slack
        // covers 400 connections being opened at once on a 2-core machine.
        assert!(
            took < deadline + Duration::from_millis(1_500),
            "took {took:?}: {:?}",
            answer.body
        );
        match answer.error_code() {
            None => {
                assert!(answer.url().is_some());
                ok += 1;
            }
            Some("RequestLimitExceeded") => {
                if answer.status == 429 {
                    assert_eq!(answer.header("retry-after"), "1");
                } else {
                    assert_eq!(answer.status, 200);
                }
                limited += 1;
            }
            Some(other) => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert_eq!(ok + limited, 400);
    assert!(ok >= 40, "only {ok} succeeded");
    assert!(limited > 0, "the budget was never exhausted");
    let peak = app.sim.max_calls_in_any_second(MNP_ACTION);
    assert!(peak <= 20, "simulator saw {peak} calls in one second");
    assert!(
        app.sim.calls().iter().all(|c| c.outcome == "ok"),
        "upstream answered RequestLimitExceeded"
    );
}

#[tokio::test]
async fn each_action_has_its_own_budget() {
    let app = spawn_app_with(|s| s.upstream.rate_limit_per_sec = 2).await;
    let mut answers = Vec::new();
    for (action, mnp) in [
        (MNP_ACTION, "a1"),
        (MNP_ACTION, "a2"),
        (MNG_ACTION, "g1"),
        (MNG_ACTION, "g2"),
    ] {
        answers
            .push(into_answer(app.tc(action, tc_body(PLATFORM, mnp)).send().await.unwrap()).await);
    }
    assert!(answers.iter().all(|a| a.url().is_some()), "{answers:?}");
    assert_eq!(app.sim.total_calls(), 4);
}
