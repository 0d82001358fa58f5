"""litegate side by side with nginx and HAProxy (run it with benches/compare).

Every proxy gets one worker (litegate: TOKIO_WORKER_THREADS=1; nginx:
worker_processes 1; HAProxy: nbthread 1), pinned to core 1; the load tools
and the upstream share core 0. Access logs are off everywhere; nginx and
HAProxy keep connections to the upstream alive, as litegate does. Each
measurement is repeated in alternation (A B C D A B C D) so drift shows.
The scaling row runs each proxy again with two workers on cores 1 and 2
(load and upstream on the others); a machine with fewer than 4 cores runs
them on cores 0 and 1, shared with the load, and says so.

Measures, for direct / litegate / nginx / HAProxy:
- peak requests/s for GET at 1, 32 and 256 connections (wrk), and each
  proxy's user and kernel CPU time per request at 32 and 256 connections
  (from /proc, around the same rounds: at saturation it is what sets the
  peak);
- latency p50/p99/p99.9 at a fixed rate below saturation (bench-load rate,
  corrected for coordinated omission), for every request and for those
  outside the run's stall windows (spans when at least 3/4 of the
  connections were each over 1 ms late at once), with the windows' count
  and length per round: on a shared machine a few windows set p99.9;
- whether the machine pauses busy vCPUs: a busy loop's gaps over 2 ms on
  one core alone and on every core at once (bench-load spin);
- the forwarded write (litegate replica -> litegate primary -> app) against
  nginx doing the same two hops, and a local read for scale;
- resident memory idle and with 1,000 and 10,000 idle keep-alive clients;
- two workers against one (peak GET at 256 connections);
- HTTP/2 clients (h2load, h2c prior knowledge, 32 connections x 10 streams);
- TLS clients (wrk over https, 32 keep-alive connections, ECDSA P-256).
Every row prints litegate's ratio to nginx and to HAProxy, and the goal.

Writes target/bench/compare.{txt,csv,json} and target/bench/latency.png.
"""

import argparse
import csv
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
OUT = ROOT / "target" / "bench"
LITEGATE = RELEASE / "litegate"
UPSTREAM = RELEASE / "examples" / "bench-upstream"
LOAD = RELEASE / "examples" / "bench-load"
PROXY_CORE, LOAD_CORE = "1", "0"
CPUS = os.cpu_count() or 1
# Two workers need two cores of their own; on a 2-core machine they share
# both with the load tools and the upstream, which understates the scaling.
if CPUS >= 4:
    SCALE_CORES, SCALE_LOAD_CORES, SCALE_SHARED = "1,2", ",".join(["0", *map(str, range(3, CPUS))]), False
else:
    SCALE_CORES, SCALE_LOAD_CORES, SCALE_SHARED = "0,1", "0,1", True
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
# HAProxy reserves about two descriptors per connection (client and server).
MAXCONN = max(1000, NOFILE // 2 - 20)
TARGETS = ["direct", "litegate", "nginx", "haproxy"]
PROXIES = ["litegate", "nginx", "haproxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Procs:
    def __init__(self):
        self.all: list[subprocess.Popen] = []

    def start(self, args, core, env=None, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["taskset", "-c", core, *map(str, args)], env={**os.environ, **(env or {})},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)
        self.all.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.all):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.all:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds of a process and its children (nginx's
    workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            kernel += int(fields[12])
            pids.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except FileNotFoundError:
            pass
    return user / tick, kernel / tick


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (nginx's workers)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids.extend(int(c) for c in children)
        except FileNotFoundError:
            pass
    return total


def nginx_conf(tmp: Path, name: str, port: int, upstream: int, workers: int = 1, h2c: int | None = None,
               tls: tuple[int, Path, Path] | None = None) -> Path:
    d = tmp / name
    d.mkdir()
    conf = d / "nginx.conf"
    extra = ""
    if h2c:
        extra += f"    listen 127.0.0.1:{h2c} http2;\n"
    if tls:
        extra += (f"    listen 127.0.0.1:{tls[0]} ssl;\n    ssl_certificate {tls[1]};\n"
                  f"    ssl_certificate_key {tls[2]};\n")
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {NOFILE};
events {{ worker_connections {NOFILE - 100}; multi_accept on; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 1024; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=8192;
{extra}    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    return conf


def haproxy_conf(tmp: Path, port: int, upstream: int, threads: int = 1, h2c: int | None = None,
                 tls: tuple[int, Path] | None = None, name: str = "haproxy") -> Path:
    conf = tmp / f"{name}.cfg"
    binds = f"  bind 127.0.0.1:{port}\n"
    if h2c:
        binds += f"  bind 127.0.0.1:{h2c} proto h2\n"
    if tls:
        binds += f"  bind 127.0.0.1:{tls[0]} ssl crt {tls[1]} alpn http/1.1\n"
    conf.write_text(f"""
global
  nbthread {threads}
  maxconn {MAXCONN}
defaults
  mode http
  timeout connect 2s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
{binds}  maxconn {MAXCONN}
  default_backend app
backend app
  server app 127.0.0.1:{upstream} maxconn 10000
""")
    return conf


def wrk(port: int, conns: int, seconds: float, scheme: str = "http", cores: str = LOAD_CORE, threads: int = 1) -> float:
    out = subprocess.run(
        ["taskset", "-c", cores, "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s",
         f"{scheme}://127.0.0.1:{port}/bench"],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"    wrk reported errors on :{port}:\n{out}", file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def h2load(port: int, conns: int, streams: int, seconds: float) -> float:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "h2load", "-t1", f"-c{conns}", f"-m{streams}", "-D", str(max(1, round(seconds))),
         f"http://127.0.0.1:{port}/bench"],
        capture_output=True, text=True, check=True,
    ).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or int(m.group(2)) or int(m.group(3)):
        print(f"    h2load reported failures on :{port}:\n{out}", file=sys.stderr)
    return float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))


def self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    """An ECDSA P-256 certificate for 127.0.0.1 and its key; the third file
    is both in one, which HAProxy wants."""
    cert, key, both = tmp / "cert.pem", tmp / "key.pem", tmp / "both.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    both.write_text(cert.read_text() + key.read_text())
    return cert, key, both


def alternate(targets: dict, rounds: int, measure) -> dict:
    """Each target measured `rounds` times, in alternation, after a warm-up."""
    for port in targets.values():
        measure(port, 2)
    per = {t: [] for t in targets}
    for _ in range(rounds):
        for t, port in targets.items():
            per[t].append(measure(port, None))
    return per


def load_rate(port: int, rate: float, conns: int, seconds: float, method: str = "GET") -> dict:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, LOAD, "rate", "--target", f"127.0.0.1:{port}", "--rate", str(rate),
         "--conns", str(conns), "--seconds", str(seconds), "--method", method],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def spin_start(core: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", core, LOAD, "spin", "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def spin(core: str, seconds: float) -> dict:
    out = spin_start(core, seconds).communicate()[0]
    return json.loads(out.strip().splitlines()[-1])


def hold(port: int, conns: int) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen(["taskset", "-c", LOAD_CORE, LOAD, "hold", "--target", f"127.0.0.1:{port}", "--conns",
                          str(conns)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.match(r"ready (\d+) failed (\d+)", line)
    if not m or int(m.group(2)) > 0:
        print(f"    hold on :{port}: {line.strip()}", file=sys.stderr)
    return p, int(m.group(1)) if m else 0


def release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5, help="length of each measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating repeats of each measurement")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="litegate-compare-"))
    procs = Procs()
    results: dict = {"peak": {}, "cpu": {}, "latency": {}, "forward": {}, "memory": {}, "scaling": {}, "h2": {},
                     "tls": {}, "rounds": {}}
    try:
        up = free_port()
        procs.start([UPSTREAM, "--listen", f"127.0.0.1:{up}", "--threads", "1"], LOAD_CORE)
        wait_port(up)
        ports = {"direct": up, "litegate": free_port(), "nginx": free_port(), "haproxy": free_port()}
        pids = {}
        pids["litegate"] = procs.start(
            [LITEGATE, "dev", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{ports['litegate']}",
             "--admin", f"127.0.0.1:{free_port()}"], PROXY_CORE,
            env={"TOKIO_WORKER_THREADS": "1", "LITEGATE_LOG": "warn"}).pid
        # HTTP/2 (h2c prior knowledge) and TLS: litegate serves h2c on its
        # one port; nginx and HAProxy get a port for each.
        h2c = {"litegate": ports["litegate"], "nginx": free_port(), "haproxy": free_port()}
        cert, key, both = self_signed(tmp)
        tls = {t: free_port() for t in PROXIES}
        tls_cfg = tmp / "litegate-tls.toml"
        tls_cfg.write_text(f'[primary]\nmode = "dev"\n[public]\nlisten = "127.0.0.1:{tls["litegate"]}"\n'
                           f'tls_cert = "{cert}"\ntls_key = "{key}"\n[upstream]\nurl = "http://127.0.0.1:{up}"\n'
                           f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n')
        procs.start([LITEGATE, "run", "--config", tls_cfg], PROXY_CORE,
                    env={"TOKIO_WORKER_THREADS": "1", "LITEGATE_LOG": "warn"})
        pids["nginx"] = procs.start(["nginx", "-c", nginx_conf(tmp, "nginx", ports["nginx"], up, h2c=h2c["nginx"],
                                                               tls=(tls["nginx"], cert, key))], PROXY_CORE).pid
        pids["haproxy"] = procs.start(["haproxy", "-db", "-f", haproxy_conf(tmp, ports["haproxy"], up, h2c=h2c["haproxy"],
                                                                           tls=(tls["haproxy"], both))],
                                      PROXY_CORE).pid
        for t in PROXIES:
            wait_port(tls[t])
            wait_port(h2c[t])
        for t in TARGETS:
            wait_port(ports[t])
        time.sleep(1)
        for t in ("litegate", "nginx", "haproxy"):
            results["memory"].setdefault(t, {})["idle"] = rss_kib(pids[t])

        print(f"peak GET requests/s (wrk -t1, {args.seconds}s each, {args.rounds} alternating rounds)")
        for conns in (1, 32, 256):
            for t in TARGETS:
                wrk(ports[t], conns, 2)  # warm-up: fills the pools to the upstream
            per = {t: [] for t in TARGETS}
            # CPU seconds (user, kernel) and requests, summed over the rounds.
            spent = {t: [0.0, 0.0, 0.0] for t in PROXIES}
            for _ in range(args.rounds):
                for t in TARGETS:
                    before = cpu_seconds(pids[t]) if t in PROXIES else None
                    rate = wrk(ports[t], conns, args.seconds)
                    per[t].append(rate)
                    if before is not None:
                        after = cpu_seconds(pids[t])
                        spent[t][0] += after[0] - before[0]
                        spent[t][1] += after[1] - before[1]
                        spent[t][2] += rate * max(1, round(args.seconds))
            for t in TARGETS:
                results["peak"].setdefault(t, {})[conns] = sum(per[t]) / len(per[t])
                results["rounds"][f"peak{conns}/{t}"] = per[t]
            for t in PROXIES:
                user, kernel, requests = spent[t]
                results["cpu"].setdefault(t, {})[conns] = {"user_us": 1e6 * user / requests,
                                                           "kernel_us": 1e6 * kernel / requests}
            print(f"  {conns:>3} conns: " + "  ".join(f"{t} {results['peak'][t][conns]:,.0f}" for t in TARGETS))

        proxied_peak = min(results["peak"][t][32] for t in ("litegate", "nginx", "haproxy"))
        # A quarter of the slowest proxy's closed-loop peak: evenly spaced
        # arrivals cost a proxy more than wrk's back-to-back ones, and half
        # of the peak already saturated litegate.
        rate = round(proxied_peak * 0.25, -2)
        results["fixed_rate"] = rate
        print(f"latency at a fixed {rate:,.0f} req/s over 32 connections (a quarter of the slowest proxy's peak)")
        per = {t: [] for t in TARGETS}
        # CPU seconds (user + kernel) each proxy spent over its rounds here:
        # below saturation too, CPU per request is what a pause's backlog
        # drains at.
        busy = {t: 0.0 for t in PROXIES}
        for _ in range(args.rounds):
            for t in TARGETS:
                before = cpu_seconds(pids[t]) if t in PROXIES else (0, 0)
                per[t].append(load_rate(ports[t], rate, 32, args.seconds * 2))
                if t in PROXIES:
                    busy[t] += sum(cpu_seconds(pids[t])) - sum(before)
        for t in PROXIES:
            results["cpu"][t]["fixed_rate_us"] = 1e6 * busy[t] / sum(r["requests"] for r in per[t])
        keys = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "outside_p50_us", "outside_p99_us", "outside_p999_us")
        for t in TARGETS:
            runs = per[t]
            results["latency"][t] = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
            results["latency"][t]["errors"] = sum(r["errors"] for r in runs)
            results["latency"][t]["stall_windows"] = sum(r["stall_windows"] for r in runs) / len(runs)
            results["rounds"][f"latency/{t}"] = [{k: r[k] for k in ("p99_us", "p999_us", "stall_windows", "stall_us",
                                                                    "outside_p99_us", "outside_p999_us")} for r in runs]
            lat = results["latency"][t]
            print(f"  {t:<9} p50 {lat['p50_us']:>6.0f} µs  p99 {lat['p99_us']:>6.0f} µs  p99.9 {lat['p999_us']:>6.0f} µs"
                  f" | outside stall windows: p99 {lat['outside_p99_us']:>5.0f} µs  p99.9 {lat['outside_p999_us']:>5.0f} µs"
                  " | windows per round: " + ", ".join(f"{r['stall_windows']} ({r['stall_us'] / 1000:.0f} ms)" for r in runs))

        # The stall windows come from the machine when its host pauses a
        # vCPU that is busy while the other is: measured here with nothing
        # else running, one core spinning and then both.
        spin_s = max(2.0, args.seconds)
        alone = spin(PROXY_CORE, spin_s)
        both = [p.communicate()[0] for p in [spin_start(core, spin_s) for core in (LOAD_CORE, PROXY_CORE)]]
        both = [json.loads(out.strip().splitlines()[-1]) for out in both]
        results["vcpu_pauses"] = {"alone": alone, "both": both}
        print(f"busy loop, gaps over 2 ms in {spin_s:g} s: core {PROXY_CORE} alone {alone['gaps_over_2ms']}"
              f" (longest {alone['longest_gap_us'] / 1000:.1f} ms); both cores at once: "
              + ", ".join(f"core {c} {b['gaps_over_2ms']} (longest {b['longest_gap_us'] / 1000:.1f} ms)"
                          for c, b in zip((LOAD_CORE, PROXY_CORE), both)))

        # Forwarded writes: two hops, litegate and nginx.
        secret = tmp / "secret"
        secret.write_text("bench-secret-0123456789abcdef\n")
        lg = {n: (free_port(), free_port(), free_port()) for n in ("n1", "n2")}
        peers = ", ".join(f'{{ id = {i + 1}, name = "{n}", cluster = "127.0.0.1:{c}", public_url = "http://127.0.0.1:{p}" }}'
                          for i, (n, (p, a, c)) in enumerate(lg.items()))
        for i, (n, (p, a, c)) in enumerate(lg.items()):
            cfg = tmp / f"{n}.toml"
            cfg.write_text(f'[node]\nid = {i + 1}\nname = "{n}"\n[public]\nlisten = "127.0.0.1:{p}"\n'
                           f'[upstream]\nurl = "http://127.0.0.1:{up}"\n[primary]\nmode = "static"\nstatic = "n1"\n'
                           f'[admin]\nlisten = "127.0.0.1:{a}"\n[cluster]\nlisten = "127.0.0.1:{c}"\n'
                           f'data_dir = "{tmp / (n + "-data")}"\nsecret_file = "{secret}"\npeers = [{peers}]\n')
            procs.start([LITEGATE, "run", "--config", cfg], PROXY_CORE, env={"TOKIO_WORKER_THREADS": "1", "LITEGATE_LOG": "warn"})
            wait_port(p)
        ng_primary, ng_replica = free_port(), free_port()
        procs.start(["nginx", "-c", nginx_conf(tmp, "nginx-primary", ng_primary, up)], PROXY_CORE)
        procs.start(["nginx", "-c", nginx_conf(tmp, "nginx-replica", ng_replica, ng_primary)], PROXY_CORE)
        wait_port(ng_primary)
        wait_port(ng_replica)
        fwd_targets = {
            "litegate read (local)": (ports["litegate"], "GET"),
            "litegate write (forwarded)": (lg["n2"][0], "POST"),
            "nginx write (two hops)": (ng_replica, "POST"),
        }
        fwd_rate = 1000
        print(f"forwarded write vs local read, {fwd_rate} req/s over 4 connections")
        per = {k: [] for k in fwd_targets}
        for _ in range(args.rounds):
            for k, (port, method) in fwd_targets.items():
                per[k].append(load_rate(port, fwd_rate, 4, args.seconds * 2, method))
        for k, runs in per.items():
            results["forward"][k] = {m: sum(r[m] for r in runs) / len(runs) for m in ("p50_us", "p99_us")}
            print(f"  {k:<27} p50 {results['forward'][k]['p50_us']:>6.0f} µs  p99 {results['forward'][k]['p99_us']:>6.0f} µs")

        print("resident memory with idle keep-alive clients")
        for conns in (1000, 10000):
            for t in ("litegate", "nginx", "haproxy"):
                # HAProxy cannot accept more than its maxconn under this
                # machine's descriptor limit; it holds what it can.
                want = min(conns, MAXCONN - 10) if t == "haproxy" else conns
                h, held = hold(ports[t], want)
                time.sleep(1)
                results["memory"][t][conns] = rss_kib(pids[t])
                results["memory"][t][f"held{conns}"] = held
                release(h)
                time.sleep(1)
        for t in ("litegate", "nginx", "haproxy"):
            m = results["memory"][t]
            print(f"  {t:<9} idle {m['idle'] / 1024:6.1f} MiB  {m['held1000']} conns {m[1000] / 1024:6.1f} MiB"
                  f"  {m['held10000']} conns {m[10000] / 1024:6.1f} MiB")

        print(f"HTTP/2 clients: h2load, 32 connections x 10 streams, {args.seconds}s each")
        per = {t: [] for t in PROXIES}
        for t in PROXIES:
            h2load(h2c[t], 32, 10, 2)
        for _ in range(args.rounds):
            for t in PROXIES:
                per[t].append(h2load(h2c[t], 32, 10, args.seconds))
        for t in PROXIES:
            results["h2"][t] = sum(per[t]) / len(per[t])
            results["rounds"][f"h2/{t}"] = per[t]
        print("  " + "  ".join(f"{t} {results['h2'][t]:,.0f}" for t in PROXIES))

        print(f"TLS clients: wrk over https, 32 keep-alive connections, {args.seconds}s each")
        per = {t: [] for t in PROXIES}
        for t in PROXIES:
            wrk(tls[t], 32, 2, scheme="https")
        for _ in range(args.rounds):
            for t in PROXIES:
                per[t].append(wrk(tls[t], 32, args.seconds, scheme="https"))
        for t in PROXIES:
            results["tls"][t] = sum(per[t]) / len(per[t])
            results["rounds"][f"tls/{t}"] = per[t]
        print("  " + "  ".join(f"{t} {results['tls'][t]:,.0f}" for t in PROXIES))

        # Two workers against one, each measured here on the same cores and
        # with the same load, so only the worker count differs.
        print(f"two workers against one: peak GET, 256 connections, proxies on cores {SCALE_CORES}"
              + (" (shared with the load: this machine has fewer than 4 cores)" if SCALE_SHARED else ""))
        up2 = free_port()
        procs.start([UPSTREAM, "--listen", f"127.0.0.1:{up2}", "--threads", "2"], SCALE_LOAD_CORES)
        wait_port(up2)
        scale_ports = {}
        for workers in (1, 2):
            p = free_port()
            procs.start([LITEGATE, "dev", "--upstream", f"http://127.0.0.1:{up2}", "--listen", f"127.0.0.1:{p}",
                         "--admin", f"127.0.0.1:{free_port()}"], SCALE_CORES,
                        env={"TOKIO_WORKER_THREADS": str(workers), "LITEGATE_LOG": "warn"})
            scale_ports[("litegate", workers)] = p
            p = free_port()
            procs.start(["nginx", "-c", nginx_conf(tmp, f"nginx-{workers}w", p, up2, workers=workers)], SCALE_CORES)
            scale_ports[("nginx", workers)] = p
            p = free_port()
            procs.start(["haproxy", "-db", "-f", haproxy_conf(tmp, p, up2, threads=workers, name=f"haproxy-{workers}w")],
                        SCALE_CORES)
            scale_ports[("haproxy", workers)] = p
        for p in scale_ports.values():
            wait_port(p)
        per = {k: [] for k in scale_ports}
        for p in scale_ports.values():
            wrk(p, 256, 2, cores=SCALE_LOAD_CORES, threads=2)
        for _ in range(args.rounds):
            for k, p in scale_ports.items():
                per[k].append(wrk(p, 256, args.seconds, cores=SCALE_LOAD_CORES, threads=2))
        for t in PROXIES:
            one, two = (sum(per[(t, w)]) / len(per[(t, w)]) for w in (1, 2))
            results["scaling"][t] = {"one": one, "two": two, "ratio": two / one if one else 0.0,
                                     "shared_cores": SCALE_SHARED}
            results["rounds"][f"scaling/{t}"] = {str(w): per[(t, w)] for w in (1, 2)}
            print(f"  {t:<9} 1 worker {one:>9,.0f}  2 workers {two:>9,.0f}  x{two / one if one else 0:.2f}")
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, args)


def report(r: dict, args) -> None:
    rows = []

    def row(metric, unit, values: dict, better="higher", goal=None):
        """One metric; `goal` is (bound on litegate / nginx, bound on
        litegate / HAProxy), either None where the issue sets none."""
        lg = values.get("litegate")
        ratios = {}
        for other in ("nginx", "haproxy"):
            base = values.get(other)
            ratios[other] = lg / base if lg is not None and base else None
        met = ""
        if goal is not None:
            checks = []
            for bound, other in zip(goal, ("nginx", "haproxy")):
                if bound is None or ratios[other] is None:
                    continue
                checks.append(ratios[other] >= bound if better == "higher" else ratios[other] <= bound)
            met = "yes" if checks and all(checks) else "no"
        sign = ">=" if better == "higher" else "<="
        goal_text = ", ".join(f"{sign} {b:g}x {o}" for b, o in zip(goal or (), ("nginx", "HAProxy")) if b is not None)
        rows.append({"metric": metric, "unit": unit, "better": better,
                     **{t: round(values[t], 3 if unit == "x" else 1) if t in values else "" for t in TARGETS},
                     "litegate_div_nginx": round(ratios["nginx"], 3) if ratios["nginx"] is not None else "",
                     "litegate_div_haproxy": round(ratios["haproxy"], 3) if ratios["haproxy"] is not None else "",
                     "goal": goal_text, "met": met})

    for c in (1, 32, 256):
        row(f"peak GET, {c} conns", "req/s", {t: r["peak"][t][c] for t in TARGETS}, goal=(1.1, 1.0))
    for c in (32, 256):
        for k, label in (("user_us", "user"), ("kernel_us", "kernel")):
            row(f"{label} CPU per GET, {c} conns", "µs", {t: r["cpu"][t][c][k] for t in PROXIES}, "lower")
    for k, label, goal in (("p50_us", "p50", None), ("p99_us", "p99", (1.0, None)), ("p999_us", "p99.9", (1.0, None)),
                           ("outside_p99_us", "p99 outside stall windows", (1.0, None)),
                           ("outside_p999_us", "p99.9 outside stall windows", (1.0, None))):
        row(f"GET {label} at {r['fixed_rate']:,.0f} req/s", "µs", {t: r["latency"][t][k] for t in TARGETS}, "lower",
            goal)
    row(f"CPU per GET at {r['fixed_rate']:,.0f} req/s (user + kernel)", "µs",
        {t: r["cpu"][t]["fixed_rate_us"] for t in PROXIES}, "lower")
    row("stall windows per round at that rate", "count", {t: r["latency"][t]["stall_windows"] for t in TARGETS}, "lower")
    fwd = r["forward"]
    for k, label, goal in (("p50_us", "p50", (1.0, None)), ("p99_us", "p99", None)):
        row(f"forwarded write {label} (nginx: two hops)", "µs",
            {"litegate": fwd["litegate write (forwarded)"][k], "nginx": fwd["nginx write (two hops)"][k]}, "lower", goal)
        row(f"local read {label}, same rate (for scale)", "µs", {"litegate": fwd["litegate read (local)"][k]}, "lower")
    for k in ("idle", 1000, 10000):
        label = "idle" if k == "idle" else f"{k:,} idle clients"
        row(f"RSS {label}", "MiB", {t: r["memory"][t][k] / 1024 for t in PROXIES}, "lower",
            (1.0, None) if k == 10000 else None)
        if k != "idle":
            short = {t: r["memory"][t][f"held{k}"] for t in PROXIES if r["memory"][t][f"held{k}"] != k}
            if short:
                print(f"note: RSS with {k:,} clients was measured with fewer held: {short}")
    row("HTTP/2 GET, 32 conns x 10 streams", "req/s", r["h2"], goal=(1.1, 1.0))
    row("TLS GET, 32 conns", "req/s", r["tls"], goal=(1.1, 1.0))
    scale = r["scaling"]
    row("two workers / one, peak GET 256 conns", "x", {t: scale[t]["ratio"] for t in PROXIES})
    rows[-1]["goal"], rows[-1]["met"] = ">= 1.8", "yes" if scale["litegate"]["ratio"] >= 1.8 else "no"
    if scale["litegate"]["shared_cores"]:
        print("note: the two-worker row ran on cores shared with the load tools (fewer than 4 cores)")

    with open(OUT / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (OUT / "compare.json").write_text(json.dumps(r, indent=2, default=str))

    def num(v, unit):
        if v == "":
            return ""
        return f"{v:,.2f}" if unit == "x" else f"{v:,.1f}"

    lines = [f"{'metric':<58} {'direct':>10} {'litegate':>10} {'nginx':>10} {'HAProxy':>10} {'÷nginx':>7} "
             f"{'÷HAProxy':>8}  goal (litegate)             met"]
    for x in rows:
        ratios = [f"{x[k]:.2f}" if x[k] != "" else "" for k in ("litegate_div_nginx", "litegate_div_haproxy")]
        lines.append(f"{x['metric'] + ' (' + x['unit'] + ')':<58} " + " ".join(f"{num(x[t], x['unit']):>10}" for t in TARGETS)
                     + f" {ratios[0]:>7} {ratios[1]:>8}  {x['goal']:<27} {x['met']}")
    pauses = r["vcpu_pauses"]
    lines.append(f"busy loop, gaps over 2 ms: core {PROXY_CORE} alone {pauses['alone']['gaps_over_2ms']}; both cores at once: "
                 + ", ".join(f"core {c} {b['gaps_over_2ms']}" for c, b in zip((LOAD_CORE, PROXY_CORE), pauses["both"]))
                 + " (the machine pausing busy vCPUs, a cause of the stall windows)")
    table = "\n".join(lines)
    (OUT / "compare.txt").write_text(table + "\n")
    print("\n" + table)

    try:
        import matplotlib
    except ImportError:
        print(f"\nwrote {OUT}/compare.txt, compare.csv, compare.json (no matplotlib: no chart)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["p50", "p90", "p99", "p99.9"]
    keys = ["p50_us", "p90_us", "p99_us", "p999_us"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.2
    for i, t in enumerate(TARGETS):
        ax.bar([j + i * width for j in range(len(keys))], [r["latency"][t][k] for k in keys], width, label=t)
    ax.set_xticks([j + 1.5 * width for j in range(len(keys))], labels)
    ax.set_yscale("log")
    ax.set_ylabel("latency, µs (log scale)")
    ax.set_title(f"GET latency at {r['fixed_rate']:,.0f} req/s, 32 connections, one core per proxy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "latency.png", dpi=110)
    print(f"\nwrote {OUT}/compare.txt, compare.csv, compare.json, latency.png")


if __name__ == "__main__":
    main()
