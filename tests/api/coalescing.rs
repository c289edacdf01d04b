//! Coalescing: concurrent requests for one cold key share one upstream call.

use std::time::Duration;

use tcsas_gateway::simulated_upstream::KeyBehaviour;

use crate::helpers::*;

fn slow() -> KeyBehaviour {
    KeyBehaviour {
        latency: Duration::from_millis(500),
        ..KeyBehaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_exactly_one_upstream_call() {
    let app = spawn_app().await;
    app.sim.set_key(PLATFORM, "mp-cold", slow());
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let request = if i % 2 == 0 {
                app.tc(MNP_ACTION, tc_body(PLATFORM, "mp-cold"))
            } else {
                app.http
                    .get(app.url(&TestApp::rest_path("mini-programs", PLATFORM, "mp-cold")))
            };
            tokio::spawn(async move { into_answer(request.send().await.expect("sent")).await })
        })
        .collect();
    let mut urls = Vec::new();
    for r in requests {
        let answer = r.await.unwrap();
        assert_eq!(answer.status, 200);
        urls.push(answer.url().expect("a URL").to_owned());
    }
    assert_eq!(urls.len(), 200);
    assert!(
        urls.iter().all(|u| u == &urls[0]),
        "every waiter gets the one answer"
    );
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-cold"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_neither_cancel_nor_repeat_the_shared_call() {
    let app = spawn_app().await;
    app.sim.set_key(PLATFORM, "mp-hangup", slow());
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let mut request = app.tc(MNP_ACTION, tc_body(PLATFORM, "mp-hangup"));
            let hangs_up = i % 2 == 0;
            if hangs_up {
                // Includes the request that leads the shared call.
                request = request.timeout(Duration::from_millis(100));
            }
            tokio::spawn(async move { (hangs_up, request.send().await) })
        })
        .collect();
    let mut answered = 0;
    for r in requests {
        let (hangs_up, result) = r.await.unwrap();
        if hangs_up {
            assert!(result.is_err(), "a client that hung up got an answer");
        } else {
            let answer = into_answer(result.expect("answered")).await;
            assert!(answer.url().is_some(), "{:?}", answer.body);
            answered += 1;
        }
    }
    assert_eq!(answered, 100);
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-hangup"), 1);
    assert_eq!(app.tc_get("mp-hangup").await.x_cache(), "HIT");
    assert_eq!(app.sim.calls_for(PLATFORM, "mp-hangup"), 1);
}
