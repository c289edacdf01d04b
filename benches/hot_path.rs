//! Micro-benchmarks of the hot path: signing, parsing a TC request, and a
//! whole cache-hit answer (request in, response bytes out) without the network.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use tcsas_gateway::credentials::{CredentialStore, Credentials};
use tcsas_gateway::front::{self, tc::parse_body, AppState};
use tcsas_gateway::settings::Settings;
use tcsas_gateway::simulated_upstream::{SimulatedUpstream, SimulatorConfig};
use tcsas_gateway::upstream::signer::{authorization, SigningInput};
use tcsas_gateway::App;

const BODY: &[u8] = br#"{"MNPId":"mpjl3td541qppx9k","PlatformId":"T04257DS9431720WTAG"}"#;

fn signing(c: &mut Criterion) {
    c.bench_function("tc3_sign_one_request", |b| {
        b.iter(|| {
            authorization(black_box(&SigningInput {
                secret_id: "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
                secret_key: "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
                service: "tcsas",
                host: "tcsas.intl.tencentcloudapi.com",
                content_type: "application/json",
                timestamp: 1_551_113_065,
                body: BODY,
            }))
        })
    });
}

fn parsing(c: &mut Criterion) {
    c.bench_function("parse_and_validate_tc_body", |b| {
        b.iter(|| parse_body(black_box(BODY)).is_ok())
    });
}

/// A gateway with one warm key, its state, and the runtime it lives on.
fn warm_gateway() -> (tokio::runtime::Runtime, Arc<AppState>, SimulatedUpstream) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (state, sim) = runtime.block_on(async {
        let sim = SimulatedUpstream::start(SimulatorConfig::default())
            .await
            .expect("sim");
        let env = [
            ("TCSAS_GATEWAY__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("TCSAS_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
            ("TCSAS_GATEWAY__UPSTREAM__ENDPOINT", sim.endpoint()),
            ("TCSAS_GATEWAY__LOG__LEVEL", "warn".to_owned()),
        ];
        let settings =
            Settings::load_with_env(None, env.map(|(k, v)| (k.to_owned(), v))).expect("settings");
        let store = Arc::new(CredentialStore::with(Credentials::new(
            &sim.config().secret_id,
            &sim.config().secret_key,
        )));
        let app = App::build(settings, store).await.expect("app");
        let state = app.state();
        let warm = front::handle(Arc::clone(&state), tc_request(), peer()).await;
        assert_eq!(warm.headers()["x-cache"], "MISS");
        (state, sim)
    });
    (runtime, state, sim)
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

fn tc_request() -> Request<Full<Bytes>> {
    Request::post("/")
        .header("X-TC-Action", "DescribeMNPOfflinePackageURL")
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("request")
}

fn rest_request() -> Request<Full<Bytes>> {
    Request::get(
        "/v1/platforms/T04257DS9431720WTAG/mini-programs/mpjl3td541qppx9k/offline-package-url",
    )
    .body(Full::new(Bytes::new()))
    .expect("request")
}

fn cache_hits(c: &mut Criterion) {
    let (runtime, state, _sim) = warm_gateway();
    let answer = |request: Request<Full<Bytes>>| {
        let state = Arc::clone(&state);
        runtime.block_on(async move {
            let response = front::handle(state, request, peer()).await;
            response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
        })
    };
    c.bench_function("cache_hit_tc_shape", |b| b.iter(|| answer(tc_request())));
    c.bench_function("cache_hit_rest_shape", |b| {
        b.iter(|| answer(rest_request()))
    });
}

criterion_group!(benches, signing, parsing, cache_hits);
criterion_main!(benches);
