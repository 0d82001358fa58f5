"""litegate side by side with nginx and HAProxy (run it with benches/compare).

Every proxy gets one worker (litegate: TOKIO_WORKER_THREADS=1; nginx:
worker_processes 1; HAProxy: nbthread 1), pinned to core 1; the load tools
and the upstream share core 0. Access logs are off everywhere; nginx and
HAProxy keep connections to the upstream alive, as litegate does. Each
measurement is repeated in alternation (A B C D A B C D) so drift shows.

Measures, for direct / litegate / nginx / HAProxy:
- peak requests/s for GET at 1, 32 and 256 connections (wrk);
- latency p50/p99/p99.9 at a fixed rate below saturation (bench-load rate,
  corrected for coordinated omission);
- the forwarded write (litegate replica -> litegate primary -> app) against
  nginx doing the same two hops, and a local read for scale;
- resident memory idle and with 1,000 and 10,000 idle keep-alive clients.

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
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
# HAProxy reserves about two descriptors per connection (client and server).
MAXCONN = max(1000, NOFILE // 2 - 20)
TARGETS = ["direct", "litegate", "nginx", "haproxy"]


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


def nginx_conf(tmp: Path, name: str, port: int, upstream: int) -> Path:
    d = tmp / name
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
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
    location / {{
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


def haproxy_conf(tmp: Path, port: int, upstream: int) -> Path:
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
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
  bind 127.0.0.1:{port}
  maxconn {MAXCONN}
  default_backend app
backend app
  server app 127.0.0.1:{upstream} maxconn 10000
""")
    return conf


def wrk(port: int, conns: int, seconds: float) -> float:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", f"http://127.0.0.1:{port}/bench"],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"    wrk reported errors on :{port}:\n{out}", file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def load_rate(port: int, rate: float, conns: int, seconds: float, method: str = "GET") -> dict:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, LOAD, "rate", "--target", f"127.0.0.1:{port}", "--rate", str(rate),
         "--conns", str(conns), "--seconds", str(seconds), "--method", method],
        capture_output=True, text=True, check=True,
    ).stdout
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
    results: dict = {"peak": {}, "latency": {}, "forward": {}, "memory": {}, "rounds": {}}
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
        pids["nginx"] = procs.start(["nginx", "-c", nginx_conf(tmp, "nginx", ports["nginx"], up)], PROXY_CORE).pid
        pids["haproxy"] = procs.start(["haproxy", "-db", "-f", haproxy_conf(tmp, ports["haproxy"], up)],
                                      PROXY_CORE).pid
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
            for _ in range(args.rounds):
                for t in TARGETS:
                    per[t].append(wrk(ports[t], conns, args.seconds))
            for t in TARGETS:
                results["peak"].setdefault(t, {})[conns] = sum(per[t]) / len(per[t])
                results["rounds"][f"peak{conns}/{t}"] = per[t]
            print(f"  {conns:>3} conns: " + "  ".join(f"{t} {results['peak'][t][conns]:,.0f}" for t in TARGETS))

        proxied_peak = min(results["peak"][t][32] for t in ("litegate", "nginx", "haproxy"))
        # A quarter of the slowest proxy's closed-loop peak: evenly spaced
        # arrivals cost a proxy more than wrk's back-to-back ones, and half
        # of the peak already saturated litegate.
        rate = round(proxied_peak * 0.25, -2)
        results["fixed_rate"] = rate
        print(f"latency at a fixed {rate:,.0f} req/s over 32 connections (a quarter of the slowest proxy's peak)")
        per = {t: [] for t in TARGETS}
        for _ in range(args.rounds):
            for t in TARGETS:
                per[t].append(load_rate(ports[t], rate, 32, args.seconds * 2))
        for t in TARGETS:
            runs = per[t]
            results["latency"][t] = {k: sum(r[k] for r in runs) / len(runs) for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")}
            results["latency"][t]["errors"] = sum(r["errors"] for r in runs)
            results["rounds"][f"latency/{t}"] = [r["p99_us"] for r in runs]
            print(f"  {t:<9} p50 {results['latency'][t]['p50_us']:>7.0f} µs  p99 {results['latency'][t]['p99_us']:>7.0f} µs  p99.9 {results['latency'][t]['p999_us']:>7.0f} µs")

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
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, args)


def report(r: dict, args) -> None:
    rows = []

    def row(metric, unit, values: dict, better="higher"):
        base = values.get("nginx")
        for t, v in values.items():
            ratio = (v / base) if base else None
            rows.append({"metric": metric, "unit": unit, "target": t, "value": round(v, 1),
                         "ratio_to_nginx": round(ratio, 3) if ratio is not None else "", "better": better})

    for c in (1, 32, 256):
        row(f"peak GET, {c} conns", "req/s", {t: r["peak"][t][c] for t in TARGETS})
    for k, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
        row(f"GET latency {label} at {r['fixed_rate']:.0f} req/s", "µs", {t: r["latency"][t][k] for t in TARGETS}, "lower")
    for k, v in r["forward"].items():
        rows.append({"metric": f"{k} p50", "unit": "µs", "target": k.split()[0], "value": round(v["p50_us"], 1),
                     "ratio_to_nginx": "", "better": "lower"})
        rows.append({"metric": f"{k} p99", "unit": "µs", "target": k.split()[0], "value": round(v["p99_us"], 1),
                     "ratio_to_nginx": "", "better": "lower"})
    for k in ("idle", 1000, 10000):
        label = "idle" if k == "idle" else f"{k:,} idle clients"
        row(f"RSS {label}", "MiB", {t: r["memory"][t][k] / 1024 for t in ("litegate", "nginx", "haproxy")}, "lower")
        if k != "idle":
            short = {t: r["memory"][t][f"held{k}"] for t in ("litegate", "nginx", "haproxy") if r["memory"][t][f"held{k}"] != k}
            if short:
                print(f"note: RSS with {k:,} clients was measured with fewer held: {short}")

    with open(OUT / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (OUT / "compare.json").write_text(json.dumps(r, indent=2, default=str))

    lines = [f"{'metric':<44} {'target':<10} {'value':>12} {'x nginx':>8}"]
    for x in rows:
        ratio = f"{x['ratio_to_nginx']:.2f}" if x["ratio_to_nginx"] != "" else ""
        lines.append(f"{x['metric']:<44} {x['target']:<10} {x['value']:>12,.1f} {ratio:>8}")
    table = "\n".join(lines)
    (OUT / "compare.txt").write_text(table + "\n")
    print("\n" + table)

    import matplotlib
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
