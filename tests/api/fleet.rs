//! Fleet mode: three real gateway processes, one real redis-server, the
//! simulator counting what reaches upstream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tcsas_gateway::simulated_upstream::{
    KeyBehaviour, SimAnswer, SimulatedUpstream, SimulatorConfig,
};

use crate::helpers::*;
use crate::process::{gateway_command, GatewayProcess};

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server on a free loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// `extra` replaces the plain port: e.g. TLS options.
    fn start_with(extra: &[String]) -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            extra: extra.to_vec(),
        };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from)
            .to_vec();
        if self.extra.is_empty() {
            args.extend(["--port".to_owned(), port]);
        } else {
            args.extend([
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                port,
            ]);
            args.extend(self.extra.iter().cloned());
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs Debian's redis-server)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !self.is_up() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_up(&self) -> bool {
        if self.extra.is_empty() {
            self.pings()
        } else {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        }
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Fleet {
    sim: SimulatedUpstream,
    /// The single redis-server, when the fleet uses one (not a cluster).
    redis: Option<RedisServer>,
    gateways: Vec<(GatewayProcess, String)>,
    http: reqwest::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (gateway, _) in &mut self.gateways {
            let _ = gateway.child.kill();
        }
    }
}

async fn start_fleet(extra_env: &[(&str, &str)]) -> Fleet {
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .unwrap();
    let redis = RedisServer::start();
    let gateways = (0..3)
        .map(|_| {
            let mut command = gateway_command(&sim.endpoint());
            command.env("TCSAS_GATEWAY__REDIS__URL", redis.url());
            for (k, v) in extra_env {
                command.env(k, v);
            }
            GatewayProcess::start(command)
        })
        .collect();
    Fleet {
        sim,
        redis: Some(redis),
        gateways,
        http: reqwest::Client::new(),
    }
}

impl Fleet {
    fn url(&self, replica: usize, mnp: &str) -> String {
        format!(
            "http://{}/v1/platforms/{PLATFORM}/mini-programs/{mnp}/offline-package-url",
            self.gateways[replica].1
        )
    }

    async fn get(&self, replica: usize, mnp: &str) -> Answer {
        into_answer(
            self.http
                .get(self.url(replica, mnp))
                .send()
                .await
                .expect("answered"),
        )
        .await
    }

    async fn get_owned(&self, replica: usize, mnp: String) -> Answer {
        self.get(replica, &mnp).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_together_never_exceed_the_limit_in_any_second() {
    let fleet = start_fleet(&[("TCSAS_GATEWAY__SERVER__REQUEST_TIMEOUT_MS", "4000")]).await;
    let answers =
        futures_join_all((0..600).map(|i| fleet.get_owned(i % 3, format!("mp-fleet-rate-{i}"))))
            .await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(
        ok + limited,
        600,
        "every request gets a URL or RequestLimitExceeded"
    );
    assert!(ok >= 40, "only {ok} succeeded");
    let peak = fleet.sim.max_calls_in_any_second(MNP_ACTION);
    assert!(
        peak <= 20,
        "upstream saw {peak} calls in one second from the fleet"
    );
    assert!(fleet.sim.calls().iter().all(|c| c.outcome == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cold_key_asked_across_the_fleet_makes_exactly_one_upstream_call() {
    let fleet = start_fleet(&[]).await;
    fleet.sim.set_key(
        PLATFORM,
        "mp-fleet-cold",
        KeyBehaviour {
            latency: Duration::from_millis(500),
            ..KeyBehaviour::default()
        },
    );
    let answers = futures_join_all((0..300).map(|i| fleet.get(i % 3, "mp-fleet-cold"))).await;
    let first = answers[0].url().expect("a URL").to_owned();
    for answer in &answers {
        assert_eq!(answer.url(), Some(first.as_str()), "{:?}", answer.body);
    }
    assert_eq!(fleet.sim.calls_for(PLATFORM, "mp-fleet-cold"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_fetched_by_one_replica_is_served_by_the_others_from_redis() {
    let fleet = start_fleet(&[]).await;
    let a = fleet.get(0, "mp-fleet-shared").await;
    let b = fleet.get(1, "mp-fleet-shared").await;
    let c = fleet.get(2, "mp-fleet-shared").await;
    assert!(a.url().is_some());
    assert_eq!(a.x_cache(), "MISS");
    assert_eq!(b.url(), a.url());
    assert_eq!(b.x_cache(), "HIT", "served from the shared cache");
    assert_eq!(c.url(), a.url());
    assert_eq!(fleet.sim.calls_for(PLATFORM, "mp-fleet-shared"), 1);
    // And from their own cache afterwards.
    assert_eq!(fleet.get(1, "mp-fleet-shared").await.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_already_expired_seen_by_one_replica_reaches_all_within_a_second() {
    let fleet = start_fleet(&[]).await;
    let old = fleet
        .get(0, "mp-fleet-expired")
        .await
        .url()
        .unwrap()
        .to_owned();
    assert_eq!(
        fleet.get(1, "mp-fleet-expired").await.url(),
        Some(old.as_str())
    );
    assert_eq!(
        fleet.get(2, "mp-fleet-expired").await.url(),
        Some(old.as_str())
    );
    fleet.sim.set_key(
        PLATFORM,
        "mp-fleet-expired",
        KeyBehaviour {
            answer: SimAnswer::Expired,
            ..KeyBehaviour::default()
        },
    );
    let revalidated = into_answer(
        fleet
            .http
            .get(fleet.url(0, "mp-fleet-expired"))
            .header("Cache-Control", "no-cache")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(revalidated.status, 410);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in [1, 2] {
        let answer = fleet.get(replica, "mp-fleet-expired").await;
        assert_ne!(
            answer.url(),
            Some(old.as_str()),
            "replica {replica} served the expired URL"
        );
        assert_eq!(answer.status, 410);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leaseholder_dies_mid_fetch_another_replica_takes_over() {
    let mut fleet = start_fleet(&[]).await;
    fleet.sim.set_key(
        PLATFORM,
        "mp-fleet-orphan",
        KeyBehaviour {
            latency: Duration::from_millis(2_000),
            ..KeyBehaviour::default()
        },
    );
    let leader_url = fleet.url(0, "mp-fleet-orphan");
    let leader = tokio::spawn(reqwest::Client::new().get(leader_url).send());
    while fleet.sim.calls_for(PLATFORM, "mp-fleet-orphan") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let waiters: Vec<_> = (0..20)
        .map(|i| {
            let request = fleet.http.get(fleet.url(1 + i % 2, "mp-fleet-orphan"));
            tokio::spawn(async move { into_answer(request.send().await.expect("answered")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = fleet.gateways[0].0.child.kill();
    assert!(
        leader.await.unwrap().is_err(),
        "the killed replica answered"
    );
    for waiter in waiters {
        let answer = waiter.await.unwrap();
        assert!(answer.url().is_some(), "{:?}", answer.body);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        fleet.sim.calls_for(PLATFORM, "mp-fleet-orphan"),
        2,
        "exactly one take-over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_load_is_not_an_outage_and_its_return_is_used() {
    let mut fleet = start_fleet(&[("TCSAS_GATEWAY__REDIS__FALLBACK_RATE_PER_SEC", "5")]).await;
    for i in 0..9 {
        assert_eq!(
            fleet
                .get(i % 3, &format!("mp-fleet-warm-{}", i / 3))
                .await
                .status,
            200
        );
    }
    fleet.redis.as_mut().expect("one redis-server").kill();
    let calls_before = fleet.sim.total_calls();
    let outage_started = Instant::now();
    let until = outage_started + Duration::from_secs(4);
    let mut n = 0;
    while Instant::now() < until {
        // Cached keys keep answering from each replica's own cache...
        for replica in 0..3 {
            let answer = fleet
                .get(replica, &format!("mp-fleet-warm-{}", n % 3))
                .await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
        }
        // ...and new keys are fetched within each replica's fallback share.
        let burst = futures_join_all(
            (0..6).map(|i| fleet.get_owned(i % 3, format!("mp-fleet-outage-{n}-{i}"))),
        )
        .await;
        assert!(burst.iter().all(|a| matches!(a.status, 200 | 429)));
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outage_calls: Vec<_> = fleet.sim.calls()[calls_before..]
        .iter()
        .map(|c| c.arrived)
        .collect();
    let mut peak = 0;
    for (i, t) in outage_calls.iter().enumerate() {
        peak = peak.max(
            outage_calls[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count(),
        );
    }
    assert!(
        peak <= 15,
        "{peak} upstream calls in one second: over 3 × the fallback share"
    );
    assert!(peak > 0, "nothing was fetched during the outage");
    let ready = fleet
        .http
        .get(format!("http://{}/readyz", fleet.gateways[0].0.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("degraded"));
    for (gateway, _) in &mut fleet.gateways {
        assert!(
            gateway.child.try_wait().unwrap().is_none(),
            "a gateway exited"
        );
    }

    fleet.redis.as_mut().expect("one redis-server").restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = fleet.get(0, "mp-fleet-after").await;
    let b = fleet.get(1, "mp-fleet-after").await;
    assert_eq!(b.url(), a.url());
    assert_eq!(
        fleet.sim.calls_for(PLATFORM, "mp-fleet-after"),
        1,
        "replica B did not use Redis again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_signed_by_a_private_ca_is_shared() {
    let dir = std::env::temp_dir().join(format!("tcsas-gw-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A private CA, and a server certificate it signed for 127.0.0.1.
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=tcsas-test-ca",
        "-keyout",
        &file("ca.key"),
        "-out",
        &file("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &file("key.pem"),
        "-out",
        &file("server.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &file("server.csr"),
        "-CA",
        &file("ca.pem"),
        "-CAkey",
        &file("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &file("ext.cnf"),
        "-out",
        &file("cert.pem"),
    ]);
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let redis = RedisServer::start_with(&[
        "--tls-cert-file".into(),
        path(&cert),
        "--tls-key-file".into(),
        path(&key),
        "--tls-ca-cert-file".into(),
        path(&ca),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .unwrap();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let gateways: Vec<_> = (0..2)
        .map(|_| {
            let mut command = gateway_command(&sim.endpoint());
            command
                .env("TCSAS_GATEWAY__REDIS__URL", &url)
                .env("TCSAS_GATEWAY__REDIS__CA_FILE", path(&ca));
            GatewayProcess::start(command)
        })
        .collect();
    let fleet = Fleet {
        sim,
        redis: Some(redis),
        gateways,
        http: reqwest::Client::new(),
    };
    let a = fleet.get(0, "mp-fleet-tls").await;
    let b = fleet.get(1, "mp-fleet-tls").await;
    assert!(a.url().is_some());
    assert_eq!(b.url(), a.url());
    assert_eq!(
        b.x_cache(),
        "HIT",
        "the second replica read the answer over TLS"
    );
    assert_eq!(fleet.sim.calls_for(PLATFORM, "mp-fleet-tls"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_replicas_are_woken_when_the_answer_is_stored_not_at_their_next_poll() {
    let fleet = start_fleet(&[]).await;
    fleet.sim.set_key(
        PLATFORM,
        "mp-fleet-notify",
        KeyBehaviour {
            latency: Duration::from_millis(600),
            ..KeyBehaviour::default()
        },
    );
    let started = Instant::now();
    let leader = {
        let request = fleet.http.get(fleet.url(0, "mp-fleet-notify"));
        tokio::spawn(async move {
            let answer = into_answer(request.send().await.expect("answered")).await;
            (started.elapsed(), answer)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let request = fleet.http.get(fleet.url(1, "mp-fleet-notify"));
            tokio::spawn(async move {
                let answer = into_answer(request.send().await.expect("answered")).await;
                (started.elapsed(), answer)
            })
        })
        .collect();
    let (leader_done, leader_answer) = leader.await.unwrap();
    for waiter in waiters {
        let (done, answer) = waiter.await.unwrap();
        assert_eq!(answer.url(), leader_answer.url());
        // The fallback poll (every 250 ms) would land ~200 ms after the leader.
        assert!(
            done < leader_done + Duration::from_millis(150),
            "woken {:?} after the leader",
            done.saturating_sub(leader_done)
        );
    }
    assert_eq!(fleet.sim.calls_for(PLATFORM, "mp-fleet-notify"), 1);
}

/// Three redis-server nodes formed into a Redis Cluster, killed on drop.
struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("tcsas-gw-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                let port = port.to_string();
                Command::new("redis-server")
                    .args([
                        "--port",
                        &port,
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                    ])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server runs")
            })
            .collect();
        let cluster = RedisCluster { nodes, ports };
        std::thread::sleep(Duration::from_millis(300));
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        let until = Instant::now() + Duration::from_secs(20);
        while !cluster.ports.iter().all(|p| cluster_ok(*p)) {
            assert!(Instant::now() < until, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn seeds(&self) -> String {
        self.ports
            .iter()
            .take(2)
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        .unwrap_or(false)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_is_shared_and_a_purge_reaches_every_replica() {
    let cluster = RedisCluster::start();
    let sim = SimulatedUpstream::start(SimulatorConfig::default())
        .await
        .unwrap();
    let gateways: Vec<_> = (0..2)
        .map(|_| {
            let mut command = gateway_command(&sim.endpoint());
            command
                .env("TCSAS_GATEWAY__REDIS__URL", cluster.seeds())
                .env("TCSAS_GATEWAY__REDIS__CLUSTER", "true");
            GatewayProcess::start(command)
        })
        .collect();
    let fleet = Fleet {
        sim,
        redis: None,
        gateways,
        http: reqwest::Client::new(),
    };
    let ready = fleet
        .http
        .get(format!("http://{}/readyz", fleet.gateways[1].0.admin))
        .send()
        .await
        .unwrap();
    assert!(ready.text().await.unwrap().contains(r#""redis":"ok""#));
    let a = fleet.get(0, "mp-fleet-cluster").await;
    let b = fleet.get(1, "mp-fleet-cluster").await;
    assert!(a.url().is_some());
    assert_eq!(b.url(), a.url());
    assert_eq!(b.x_cache(), "HIT", "served from the cluster");
    assert_eq!(fleet.sim.calls_for(PLATFORM, "mp-fleet-cluster"), 1);

    let purge = fleet
        .http
        .delete(format!("http://{}/admin/cache", fleet.gateways[0].0.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = fleet.get(1, "mp-fleet-cluster").await;
    assert_eq!(
        after.x_cache(),
        "MISS",
        "the purge reached the other replica and the cluster"
    );
    assert_eq!(fleet.sim.calls_for(PLATFORM, "mp-fleet-cluster"), 2);
}
