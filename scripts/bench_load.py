"""Load benchmark driver: see scripts/bench-load.sh. Standard library only.

Targets (cache hits on 1000 warm keys, ~200-byte JSON answers), driven with
wrk pinned to core 0 while the server is pinned to core 1, alternated in
rounds so that every ratio compares figures taken in the same run:
  tc       the gateway's Tencent-Cloud-compatible front (POST /)
  rest     the gateway's REST front
  baseline a bare hyper 1 server answering a fixed body (benches/baseline.rs)
  nginx    nginx proxy_cache in front of the gateway, every key a cache hit
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target/release/tcsas-gateway")
# The static musl build the container image ships, when it was built.
STATIC_GATEWAY = os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/tcsas-gateway")
BASELINE = os.path.join(ROOT, "target/release/examples/baseline")
DURATION = int(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
GROWTH = os.environ.get("GROWTH", "1") != "0"
MEMORY_ONLY = os.environ.get("MEMORY_ONLY", "0") == "1"
KEYS = 1000
PLATFORM = "T04257DS9431720WTAG"
DEMO_ID = "AKIDsimulatedDEMOKEY0000000000000000"
DEMO_KEY = "simulated-demo-secret-key-0000000"
WORK = tempfile.mkdtemp(prefix="tcsas-bench-")
PROCS = []

SIM_PORT, GW_PORT, GW_ADMIN, BASE_PORT, NGINX_PORT = 18180, 18181, 18182, 18183, 18184


def spawn(cmd, cores, env=None, log="proc"):
    out = open(os.path.join(WORK, log + ".log"), "w")
    p = subprocess.Popen(["taskset", "-c", cores] + cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    PROCS.append(p)
    return p


def wait_http(url, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.002)
    raise SystemExit(f"{url} never answered 200")


def rss_kib(pid):
    total = 0
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def cpu_ticks(pid):
    """User + system CPU ticks of `pid` and its children (nginx workers)."""
    total = 0
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except Exception:
        return []


def gateway_env(extra=None, threads="1"):
    env = dict(os.environ)
    env.update({
        "TOKIO_WORKER_THREADS": threads,
        "TENCENTCLOUD_SECRET_ID": DEMO_ID,
        "TENCENTCLOUD_SECRET_KEY": DEMO_KEY,
        "TCSAS_GATEWAY__CREDENTIALS__PROVIDER": "env",
        "TCSAS_GATEWAY__SERVER__LISTEN": f"127.0.0.1:{GW_PORT}",
        "TCSAS_GATEWAY__ADMIN__LISTEN": f"127.0.0.1:{GW_ADMIN}",
        "TCSAS_GATEWAY__UPSTREAM__ENDPOINT": f"http://127.0.0.1:{SIM_PORT}",
        "TCSAS_GATEWAY__UPSTREAM__RATE_LIMIT_PER_SEC": "10000",
        "TCSAS_GATEWAY__UPSTREAM__MAX_WAITING": "100000",
        "TCSAS_GATEWAY__CACHE__TTL_SECS": "3600",
        "TCSAS_GATEWAY__CACHE__EXPIRY_MARGIN_SECS": "0",
        "TCSAS_GATEWAY__CACHE__MAX_ENTRIES": "2000000",
        "TCSAS_GATEWAY__LOG__LEVEL": "warn",
    })
    env.update(extra or {})
    return env


def start_simulator(latency_ms=0, port=SIM_PORT):
    """The demo process is the simulator: its own gateway is unused."""
    env = dict(os.environ)
    env.update({
        "TCSAS_GATEWAY__SERVER__LISTEN": "127.0.0.1:0",
        "TCSAS_GATEWAY__ADMIN__LISTEN": "127.0.0.1:0",
        "TCSAS_GATEWAY__LOG__LEVEL": "warn",
    })
    p = spawn([GATEWAY, "demo", "--simulator-rate-limit", "1000000", "--simulator-latency-ms", str(latency_ms)], "0", env, f"sim-{port}")
    # The demo prints the simulator's address; wait for it.
    log = os.path.join(WORK, f"sim-{port}.log")
    end = time.time() + 30
    while time.time() < end:
        text = open(log).read()
        m = re.search(r"simulated TCSAS upstream on http://127\.0\.0\.1:(\d+)", text)
        if m:
            return p, int(m.group(1))
        time.sleep(0.01)
    raise SystemExit("the simulator did not start")


def write_lua():
    rest = os.path.join(WORK, "rest.lua")
    tc = os.path.join(WORK, "tc.lua")
    with open(rest, "w") as f:
        f.write(f"""
local i = 0
request = function()
  i = (i % {KEYS}) + 1
  return wrk.format("GET", "/v1/platforms/{PLATFORM}/mini-programs/mp-bench-" .. i .. "/offline-package-url")
end
""")
    with open(tc, "w") as f:
        f.write(f"""
local i = 0
wrk.method = "POST"
wrk.headers["X-TC-Action"] = "DescribeMNPOfflinePackageURL"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = (i % {KEYS}) + 1
  return wrk.format(nil, "/", nil, '{{"MNPId":"mp-bench-' .. i .. '","PlatformId":"{PLATFORM}"}}')
end
""")
    return rest, tc


def wrk(url, script, connections=CONNECTIONS, duration=DURATION, cores="0", threads=1, extra=None, server=None):
    """One wrk run; with `server` (a pid), also the server's CPU time per request."""
    cmd = ["taskset", "-c", cores, "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", script]
    cmd += extra or []
    cmd.append(url)
    ticks = cpu_ticks(server) if server else 0
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    ticks = cpu_ticks(server) - ticks if server else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        lat[pct] = value / 1000 if unit == "us" else value if unit == "ms" else value * 1000
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    hz = os.sysconf("SC_CLK_TCK")
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "cpu_us": ticks * 1e6 / hz / requests if requests and server else 0.0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else ""}


def warm(base, prefix="mp-bench-", count=KEYS, start=1):
    script = os.path.join(WORK, f"warm-{prefix}{count}.lua")
    with open(script, "w") as f:
        f.write(f"""
local i = {start - 1}
request = function()
  i = i + 1
  if i > {start - 1 + count} then i = {start} end
  return wrk.format("GET", "/v1/platforms/{PLATFORM}/mini-programs/{prefix}" .. i .. "/offline-package-url")
end
""")
    # The connections walk the keys in order, each key fetched once, then hits.
    seconds = max(2, count // 2000 + 2)
    subprocess.run(["wrk", "-t", "1", "-c", "16", "-d", f"{seconds}s", "-s", script, base], capture_output=True)


def entries(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as r:
        text = r.read().decode()
    m = re.search(r"^tcsas_gateway_cache_entries (\d+)", text, re.M)
    return int(m.group(1)) if m else -1


def nginx_conf():
    conf = os.path.join(WORK, "nginx.conf")
    os.makedirs(os.path.join(WORK, "nginx-cache"), exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
worker_processes 1;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log warn;
user root;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  proxy_cache_path {WORK}/nginx-cache levels=1:2 keys_zone=tcsas:32m max_size=1g inactive=60m use_temp_path=off;
  server {{
    listen 127.0.0.1:{NGINX_PORT};
    location / {{
      proxy_pass http://127.0.0.1:{GW_PORT};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache tcsas;
      proxy_cache_key $uri;
      proxy_cache_valid 200 60m;
      proxy_ignore_headers Cache-Control Expires;
      add_header X-Nginx-Cache $upstream_cache_status;
    }}
  }}
}}
""")
    return conf


def stop(p):
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    except Exception:
        p.kill()


def main():
    rest_lua, tc_lua = write_lua()
    sim, sim_port = start_simulator()
    global SIM_PORT
    SIM_PORT = sim_port
    if MEMORY_ONLY:
        memory_growth(f"http://127.0.0.1:{GW_PORT}")
        stop(sim)
        return

    # Start-up time and idle memory: first of the static build, if any, then
    # of the measured gateway (which stays up for the load runs).
    static = None
    if os.path.exists(STATIC_GATEWAY):
        t0 = time.perf_counter()
        p = spawn([STATIC_GATEWAY], "1", gateway_env(), "gateway-static")
        wait_http(f"http://127.0.0.1:{GW_ADMIN}/readyz")
        static_ready_ms = (time.perf_counter() - t0) * 1000
        time.sleep(0.5)
        static = (static_ready_ms, rss_kib(p.pid))
        stop(p)
    t0 = time.perf_counter()
    gw = spawn([GATEWAY], "1", gateway_env(), "gateway")
    wait_http(f"http://127.0.0.1:{GW_ADMIN}/readyz")
    ready_ms = (time.perf_counter() - t0) * 1000
    time.sleep(0.5)
    idle_rss = rss_kib(gw.pid)

    base = spawn([BASELINE, f"127.0.0.1:{BASE_PORT}"], "1", None, "baseline")
    wait_http(f"http://127.0.0.1:{BASE_PORT}/")
    time.sleep(0.3)
    baseline_idle_rss = rss_kib(base.pid)
    ng = spawn(["nginx", "-c", nginx_conf(), "-p", WORK], "1", None, "nginx")
    time.sleep(0.5)
    nginx_idle_rss = rss_kib(ng.pid)

    warm(f"http://127.0.0.1:{GW_PORT}")
    warm(f"http://127.0.0.1:{NGINX_PORT}")
    assert entries(GW_ADMIN) >= KEYS, "keys not warm"

    targets = {
        "tc": (f"http://127.0.0.1:{GW_PORT}", tc_lua, gw.pid),
        "rest": (f"http://127.0.0.1:{GW_PORT}", rest_lua, gw.pid),
        "baseline": (f"http://127.0.0.1:{BASE_PORT}", rest_lua, base.pid),
        "nginx": (f"http://127.0.0.1:{NGINX_PORT}", rest_lua, ng.pid),
    }
    runs = {name: [] for name in targets}
    for r in range(ROUNDS):
        for name, (url, script, pid) in targets.items():
            result = wrk(url, script, server=pid)
            runs[name].append(result)
            print(f"round {r + 1} {name:8} {result['rps']:>10.0f} req/s  p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms"
                  f"  server CPU {result['cpu_us']:.2f} µs/req"
                  + (f"  non-2xx {result['non2xx']}" if result["non2xx"] else ""), flush=True)
    loaded_rss = rss_kib(gw.pid)

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    summary = {name: {k: median([x[k] for x in rs]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")} for name, rs in runs.items()}
    bare = summary["baseline"]
    proxy = summary["nginx"]
    print()
    print(f"| target | req/s (median of {ROUNDS}) | p50 ms | p99 ms | × bare hyper | × nginx | server CPU µs/req | bare hyper's CPU ÷ this |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['rps']:.0f} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['rps'] / bare['rps']:.2f} | {s['rps'] / proxy['rps']:.2f}"
              f" | {s['cpu_us']:.2f} | {bare['cpu_us'] / s['cpu_us']:.2f} |")

    # p99 at half of the REST front's peak.
    half = max(1, int(summary["rest"]["rps"] / 2))
    half_run = wrk_rate(f"http://127.0.0.1:{GW_PORT}", rest_lua, half)
    print()
    print(f"gateway start to ready: {ready_ms:.1f} ms")
    print(f"idle RSS: gateway {idle_rss / 1024:.1f} MB, bare hyper {baseline_idle_rss / 1024:.1f} MB, nginx (all processes) {nginx_idle_rss / 1024:.1f} MB")
    if static:
        print(f"static musl build (the container image's): start to ready {static[0]:.1f} ms, idle RSS {static[1] / 1024:.1f} MB")
    print(f"gateway RSS after load (1000 keys): {loaded_rss / 1024:.1f} MB")
    if half_run:
        print(f"REST p99 at half of peak ({half} req/s): {half_run['p99_ms']:.3f} ms")
    size = os.path.getsize(GATEWAY)
    print(f"release binary: {size / 1024 / 1024:.1f} MB (stripped by the release profile)")

    stop(ng)
    stop(base)

    if GROWTH:
        growth(gw, rest_lua)
    stop(gw)
    stop(sim)


def wrk_rate(url, script, rate):
    """A fixed-rate run needs wrk2; with plain wrk, approximate by fewer connections."""
    connections = 4
    result = wrk(url, script, connections=connections)
    # Scale connections until the rate is at least half of peak.
    while result["rps"] < rate and connections < CONNECTIONS:
        connections *= 2
        result = wrk(url, script, connections=connections)
    result["connections"] = connections
    return result


def memory_growth(url):
    """RSS as entries grow (ENTRIES, default 10k and 100k)."""
    steps = [int(x) for x in os.environ.get("ENTRIES", "10000,100000").split(",")]
    gw = spawn([GATEWAY], "1", gateway_env(), "gateway-growth")
    wait_http(f"http://127.0.0.1:{GW_ADMIN}/readyz")
    print(f"entries {0:>7}: RSS {rss_kib(gw.pid) / 1024:.1f} MB")
    loaded = 0
    for target in steps:
        warm(url, prefix="mp-growth-", count=target - loaded, start=loaded + 1)
        loaded = target
        time.sleep(1)
        print(f"entries {entries(GW_ADMIN):>7}: RSS {rss_kib(gw.pid) / 1024:.1f} MB", flush=True)
    stop(gw)


def growth(gw, rest_lua):
    print()
    print("## How cost grows")
    url = f"http://127.0.0.1:{GW_PORT}"
    for c in (16, 64, 256):
        r = wrk(url, rest_lua, connections=c)
        print(f"connections {c:>3}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms")
    # Two server cores (two worker threads, wrk then shares core 0).
    stop(gw)
    gw2 = spawn([GATEWAY], "0,1", gateway_env(threads="2"), "gateway-2cores")
    wait_http(f"http://127.0.0.1:{GW_ADMIN}/readyz")
    warm(url)
    r = wrk(url, rest_lua)
    print(f"2 server cores (wrk sharing core 0): {r['rps']:.0f} req/s, p99 {r['p99_ms']:.3f} ms")
    stop(gw2)
    memory_growth(url)
    # The miss path: one key revalidated by every request, upstream at 100 ms.
    sim2, port2 = start_simulator(latency_ms=100, port=SIM_PORT + 100)
    gw4 = spawn([GATEWAY], "1", gateway_env({"TCSAS_GATEWAY__UPSTREAM__ENDPOINT": f"http://127.0.0.1:{port2}"}), "gateway-miss")
    wait_http(f"http://127.0.0.1:{GW_ADMIN}/readyz")
    one_key = os.path.join(WORK, "one.lua")
    with open(one_key, "w") as f:
        f.write(f'wrk.headers["Cache-Control"] = "no-cache"\nrequest = function() return wrk.format("GET", "/v1/platforms/{PLATFORM}/mini-programs/mp-hot/offline-package-url") end\n')
    r = wrk(url, one_key, connections=256)
    with urllib.request.urlopen(f"http://127.0.0.1:{GW_ADMIN}/metrics") as resp:
        text = resp.read().decode()
    calls = sum(float(v) for v in re.findall(r'^tcsas_gateway_upstream_calls_total\{[^}]*result="ok"\} ([\d.]+)', text, re.M))
    print(f"miss path, one key, upstream 100 ms, 256 connections all revalidating: {r['rps']:.0f} coalesced req/s over {calls:.0f} upstream calls in {DURATION} s")
    stop(gw4)
    stop(sim2)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(WORK, ignore_errors=True)
