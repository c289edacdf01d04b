//! The real binary: configuration errors, secrets kept out of logs and answers, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tcsas_gateway::simulated_upstream::{
    KeyBehaviour, SimAnswer, SimulatedUpstream, SimulatorConfig,
};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_tcsas-gateway");
const SESSION_TOKEN: &str = "session-token-that-must-stay-secret";

pub(crate) fn gateway_command(endpoint: &str) -> Command {
    let sim = SimulatorConfig::default();
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("TENCENTCLOUD_SECRET_ID", &sim.secret_id)
        .env("TENCENTCLOUD_SECRET_KEY", &sim.secret_key)
        .env("TENCENTCLOUD_SESSION_TOKEN", SESSION_TOKEN)
        .env("TCSAS_GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("TCSAS_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0")
        .env("TCSAS_GATEWAY__UPSTREAM__ENDPOINT", endpoint)
        .env("TCSAS_GATEWAY__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A gateway process whose stderr lines arrive on a channel.
pub(crate) struct GatewayProcess {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub(crate) admin: String,
}

impl GatewayProcess {
    pub(crate) fn start(mut command: Command) -> (GatewayProcess, String) {
        let mut child = command.spawn().expect("gateway starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = GatewayProcess {
            child,
            lines,
            seen: Vec::new(),
            admin: String::new(),
        };
        let front = loop {
            let line = process
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the gateway logs where it listens");
            process.seen.push(line.clone());
            let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(front) = parsed["front"].as_str() {
                process.admin = parsed["admin"].as_str().unwrap_or_default().to_owned();
                break front.to_owned();
            }
        };
        (process, front)
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends SIGTERM and returns the exit status and every stderr line.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let status = self.child.wait().expect("gateway exits");
        self.seen.extend(self.lines.try_iter());
        (status, self.seen)
    }
}

#[tokio::test]
async fn secrets_appear_in_no_log_line_and_no_answer() {
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .unwrap();
    sim.set_key(
        PLATFORM,
        "mp-missing",
        KeyBehaviour {
            answer: SimAnswer::NotExist,
            ..KeyBehaviour::default()
        },
    );
    let mut command = gateway_command(&sim.endpoint());
    // Everything every crate can log.
    command.env("RUST_LOG", "trace");
    let (process, front) = GatewayProcess::start(command);
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for (action, body) in [
        (MNP_ACTION, tc_body(PLATFORM, "mp-secret")),
        (MNP_ACTION, tc_body(PLATFORM, "mp-secret")),
        (MNP_ACTION, tc_body(PLATFORM, "mp-missing")),
        (MNP_ACTION, tc_body(PLATFORM, "bad id")),
        ("Nope", tc_body(PLATFORM, "m")),
    ] {
        let response = http
            .post(format!("http://{front}/"))
            .header("X-TC-Action", action)
            .header("X-Request-Id", "secret-test-1")
            .body(body)
            .send()
            .await
            .unwrap();
        bodies.push(format!(
            "{:?} {}",
            response.headers().clone(),
            response.text().await.unwrap()
        ));
    }
    assert!(bodies[0].contains("myqcloud.com"), "{}", bodies[0]);
    let calls = sim.calls();
    assert_eq!(calls.len(), 2, "one fetch and one not-exist");
    assert_eq!(
        calls[0].token.as_deref(),
        Some(SESSION_TOKEN),
        "temporary credentials send X-TC-Token"
    );
    let check = Command::new(BIN)
        .arg("check-config")
        .env_clear()
        .env("TENCENTCLOUD_SECRET_ID", "AKIDx")
        .env(
            "TENCENTCLOUD_SECRET_KEY",
            SimulatorConfig::default().secret_key,
        )
        .env("TENCENTCLOUD_SESSION_TOKEN", SESSION_TOKEN)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check_text = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check_text.contains("rate_limit_per_sec = 20"),
        "{check_text}"
    );

    let (status, lines) = process.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    let secret_key = SimulatorConfig::default().secret_key;
    let request_lines: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect();
    assert_eq!(request_lines.len(), 5, "one line per request");
    assert!(request_lines
        .iter()
        .all(|v| v["request_id"] == "secret-test-1"));
    for text in lines
        .iter()
        .chain(&bodies)
        .chain(std::iter::once(&check_text))
    {
        assert!(!text.contains(&secret_key), "secret key leaked: {text}");
        assert!(
            !text.contains(SESSION_TOKEN),
            "session token leaked: {text}"
        );
    }
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_the_key() {
    let cases = [
        (
            "TCSAS_GATEWAY__UPSTREAM__RATE_LIMIT_PER_SEC",
            "0",
            "upstream.rate_limit_per_sec",
        ),
        (
            "TCSAS_GATEWAY__UPSTREAM__ENDPOINT",
            "not a url",
            "upstream.endpoint",
        ),
        ("TCSAS_GATEWAY__SERVER__LISTEN", "nowhere", "server.listen"),
        ("TCSAS_GATEWAY__CACHE__TTL", "5", "ttl"),
    ];
    for (key, value, named) in cases {
        let output = gateway_command("http://127.0.0.1:9")
            .env(key, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{key}: {stderr}");
        assert!(stderr.contains(named), "{key}: {stderr}");
    }
}

#[test]
fn missing_credentials_stop_start_up_naming_the_variable() {
    let output = gateway_command("http://127.0.0.1:9")
        .env_remove("TENCENTCLOUD_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TENCENTCLOUD_SECRET_KEY"), "{stderr}");
}

#[test]
fn an_unknown_key_in_the_config_file_is_named() {
    let dir = std::env::temp_dir().join(format!("tcsas-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[cache]\nttl_seconds = 5\n").unwrap();
    let output = gateway_command("http://127.0.0.1:9")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ttl_seconds"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .unwrap();
    sim.set_latency(Duration::from_millis(1_500));
    let mut command = gateway_command(&sim.endpoint());
    command.env("TCSAS_GATEWAY__UPSTREAM__RATE_LIMIT_PER_SEC", "100");
    let (process, front) = GatewayProcess::start(command);
    let http = reqwest::Client::new();
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let request = http.get(format!(
                "http://{front}/v1/platforms/{PLATFORM}/mini-programs/mp-drain-{i}/offline-package-url"
            ));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // Every request has reached the simulator: all 50 are in flight.
    while sim.total_calls() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = tokio::task::spawn_blocking(move || process.terminate());
    for request in requests {
        let response = request.await.unwrap().expect("answered, not cut off");
        assert_eq!(response.status(), 200);
    }
    let (status, _) = exit.await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        reqwest::get(format!("http://{front}/healthz"))
            .await
            .is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_ttl_without_dropping_a_request_and_a_broken_file_keeps_the_old() {
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tcsas-gw-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "[cache]\nttl_secs = 60\n").unwrap();
    let mut command = gateway_command(&sim.endpoint());
    command.arg("--config").arg(&file);
    let (mut process, front) = GatewayProcess::start(command);
    let url = |mnp: &str| {
        format!("http://{front}/v1/platforms/{PLATFORM}/mini-programs/{mnp}/offline-package-url")
    };
    let x_cache = |r: &reqwest::Response| r.headers()["x-cache"].to_str().unwrap().to_owned();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (std::sync::Arc::clone(&stop), url("mp-hup-background"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(
                    http.get(&url)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0),
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        })
    };
    let http = reqwest::Client::new();
    assert_eq!(
        x_cache(&http.get(url("mp-hup-a")).send().await.unwrap()),
        "MISS"
    );

    std::fs::write(&file, "[cache\nttl_secs = ").unwrap();
    process.signal("HUP");
    process.wait_for_line("config reload rejected");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        x_cache(&http.get(url("mp-hup-a")).send().await.unwrap()),
        "HIT",
        "the old TTL stays"
    );

    std::fs::write(&file, "[cache]\nttl_secs = 1\n").unwrap();
    process.signal("HUP");
    let line = process.wait_for_line("config reloaded");
    assert!(line.contains("ttl_secs"), "{line}");
    assert_eq!(
        x_cache(&http.get(url("mp-hup-b")).send().await.unwrap()),
        "MISS"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        x_cache(&http.get(url("mp-hup-b")).send().await.unwrap()),
        "STALE",
        "the new 1 s TTL applies"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    assert!(statuses.len() > 50);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (status, _) = process.terminate();
    assert_eq!(status.code(), Some(0));
}
