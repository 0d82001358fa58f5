"""Work and allocations per proxied request, counted rather than timed, so the
figures hold on a loaded machine (docs/performance.md).

    python3 benches/per_request.py [--bin target/release/litegate] [--requests 2000]

Runs `litegate dev` (one worker thread) in front of bench-upstream twice:
- under valgrind's callgrind: counters are zeroed after a warm-up, then N
  keep-alive GETs on one connection are sent and the counters dumped, so the
  instruction count covers exactly those requests (Ir / request), and the
  dump is the profile (`callgrind_annotate`);
- under heaptrack, twice, with a warm-up plus N and a warm-up plus 2N
  requests: the difference in allocation calls, divided by N, is the
  allocations per request with start-up and warm-up cancelled out.
Needs valgrind and heaptrack (Debian packages of those names).
"""

import argparse
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import free_port, wait_port  # benches/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "target" / "release" / "examples" / "bench-upstream"
WARM_UP = 200


def get_n(conn: http.client.HTTPConnection, n: int) -> None:
    for _ in range(n):
        conn.request("GET", "/bench", headers={"Host": "bench.local"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET answered {resp.status}")


def start(wrapper: list[str], binary: str, up: int, port: int) -> subprocess.Popen:
    args = [*wrapper, binary, "dev", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{free_port()}"]
    env = {**os.environ, "TOKIO_WORKER_THREADS": "1", "LITEGATE_LOG": "warn"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def litegate_pid(p: subprocess.Popen, binary: str) -> int:
    """The litegate process itself, under a wrapper that may run it as a
    child (heaptrack): signalling the whole group would stop the wrapper's
    recorder before litegate's last allocations reach it."""
    real = os.path.realpath(binary)
    pids = [p.pid]
    while pids:
        pid = pids.pop()
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == real:
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return p.pid


def stop(p: subprocess.Popen, binary: str) -> str:
    os.kill(litegate_pid(p, binary), signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
    return err


def instructions(binary: str, up: int, n: int, tmp: Path) -> tuple[float, Path]:
    port = free_port()
    out = tmp / "callgrind.out"
    p = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"], binary, up, port)
    try:
        wait_port(port, 60)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        get_n(conn, WARM_UP)
        subprocess.run(["callgrind_control", "--zero", str(p.pid)], check=True, capture_output=True)
        get_n(conn, n)
        subprocess.run(["callgrind_control", "--dump=measured", str(p.pid)], check=True, capture_output=True)
        conn.close()
    finally:
        stop(p, binary)
    dumps = sorted(tmp.glob("callgrind.out.*"))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump for the measured requests")
    out = dumps[0]
    summary = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", summary, re.M)
    if not m:
        raise RuntimeError("no PROGRAM TOTALS in callgrind_annotate's output")
    return int(m.group(1).replace(",", "")) / n, out


def allocations(binary: str, up: int, n: int, tmp: Path) -> float:
    calls = []
    for k in (1, 2):
        port = free_port()
        prefix = tmp / f"heaptrack-{k}"
        p = start(["heaptrack", "-o", str(prefix)], binary, up, port)
        try:
            wait_port(port, 60)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            get_n(conn, WARM_UP + k * n)
            conn.close()
        finally:
            stop(p, binary)
        data = next(tmp.glob(f"heaptrack-{k}*"))
        printed = subprocess.run(["heaptrack_print", "-f", str(data), "--print-peaks=0", "--print-allocators=0",
                                  "--print-temporary=0", "--print-leaks=0"],
                                 capture_output=True, text=True, check=True).stdout
        m = re.search(r"calls to allocation functions: (\d+)", printed)
        if not m:
            raise RuntimeError("no allocation count in heaptrack_print's output")
        calls.append(int(m.group(1)))
    return (calls[1] - calls[0]) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "litegate"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25, help="functions of the profile to print")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="litegate-per-request-"))
    up = free_port()
    upstream = subprocess.Popen([UPSTREAM, "--listen", f"127.0.0.1:{up}", "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(up, 60)
        allocs = allocations(args.bin, up, args.requests, tmp)
        ir, profile = instructions(args.bin, up, args.requests, tmp)
    finally:
        os.killpg(upstream.pid, signal.SIGTERM)
        upstream.wait(timeout=10)
    print(f"binary: {args.bin}")
    print(f"allocations per proxied GET: {allocs:.1f}")
    print(f"instructions per proxied GET: {ir:,.0f}")
    print(f"profile: {profile} (callgrind_annotate {profile})")
    top = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", str(profile)], capture_output=True, text=True,
                         check=True).stdout
    lines = [line for line in top.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
    print(f"top {args.top} functions by own instructions:")
    for line in lines[1:args.top + 1]:
        print("  " + line.strip()[:160])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
