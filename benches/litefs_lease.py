"""LiteFS's lease held by a real Consul agent, against the same lease held by
litegate's Raft, side by side in one run (docs/performance.md, "LiteFS:
Consul's lease against litegate's").

    benches/litefs-lease [--trials 3] [--litegate-lease 2s/1s ...]   # sets up, then runs this
    .venv/bin/python benches/litefs_lease.py [--trials 3] [--litegate-lease 2s/1s ...]

(`.venv` with integration/requirements.txt installed; litegate from
target/release, or LITEGATE_BIN.)

Both setups run three nodes on loopback, each with the real LiteFS binary
(LITEFS_BIN, by default ../shared/litefs/litefs next to the repository) on
a FUSE mount, the FastAPI notes app writing to SQLite on it, and litegate;
every write goes through a litegate:

- **consul 10s/1s**: one real Consul 1.8.7 agent (`consul agent -dev` on loopback,
  CONSUL_BIN, else fetched by benches/fetch-consul.sh into target/consul);
  LiteFS's Consul lease with TTL 10 s (Consul refuses less) and LiteFS's
  default lock-delay of 1 s, as the 19.1 s figure was measured; litegate in
  `primary.mode = "litefs"`, following LiteFS's primary.
- **litegate TTL/LOCK-DELAY**: LiteFS's Consul lease pointed at its own
  node's litegate (`[lease]`), litegate in raft mode; by default TTL 1 s and
  lock-delay 500 ms as docs/litefs.md recommends; `--litegate-lease 2s/500ms`
  (repeatable) runs other values, each as a setup of its own.

Each trial starts a fresh cluster and measures, in this order:
- **handoff**: one writer posts a note through each node in turn, one at a
  time, 20 ms apart, from 1 s (plus a random pause of up to half the TTL)
  before a graceful handoff until 1 s after the target's LiteFS is primary: the longest time between two successful
  writes, and how many failed. Consul: LiteFS's own handoff (`POST
  /promote` on the target's LiteFS). litegate: `litegate handoff --to`.
- **crash**: after a random pause of up to half the TTL (LiteFS renews every
  TTL/2, so the kill lands anywhere in that cycle), SIGKILL of the primary
  node's litegate, LiteFS and app at once, then the same writer through the
  survivors: the time from the kill to the first successful write, and
  when each phase of the failover ended (a new Raft leader, the dead
  primary's lock gone, a survivor's LiteFS primary).

Needs root, /dev/fuse and fusermount3, like integration/test_litefs_lease.py;
run it with the integration venv (httpx, uvicorn, FastAPI). Every wait is
bounded; processes, FUSE mounts and the temporary directory are removed at
the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))

import httpx  # noqa: E402

from harness import Procs, free_port, litegate_bin, wait_for_port, wait_until  # noqa: E402
from litefs_nodes import (  # noqa: E402
    LiteNode,
    mounted,
    skip_reason,
    start_litefs_mode_cluster,
    start_raft_lease_cluster,
    unmount,
)

TOKEN = "lease-token-for-the-bench-0123456789"
CONSUL = "consul 10s/1s"
CONSUL_TTL = "10s"
CONSUL_LOCK_DELAY = "1s"
WRITE_PAUSE = 0.02
# Longer than litegate's hold (routing.primary_wait), so a held write is
# answered by litegate, not abandoned by the client.
PRIMARY_WAIT = "30s"
REQUEST_TIMEOUT = 40.0
CRASH_BOUND = 90.0
HANDOFF_BOUND = 40.0

GOAL_CRASH_S = 3.0
GOAL_GAP_S = 1.0
CONSUL_REFERENCE_S = 19.1


@dataclass
class Trial:
    crash_s: float | None = None
    gap_s: float | None = None
    writes: int = 0
    failed: list = field(default_factory=list)
    # Seconds from the kill to each phase's end, as PhaseWatcher saw them.
    phases: dict = field(default_factory=dict)


class PhaseWatcher:
    """Polls the survivors every 50 ms after the kill and notes when each
    phase of the failover ended (a poll's resolution, ±50 ms): a new Raft
    leader (litegate setup), the dead primary's lock gone (its session
    expired), a survivor's LiteFS primary."""

    POLL = 0.05

    def __init__(self, survivors, killed_at: float, lock_gone):
        self.survivors = survivors
        self.killed_at = killed_at
        self.lock_gone = lock_gone
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _note(self, phase: str, happened: bool) -> None:
        if happened and phase not in self.seen:
            self.seen[phase] = time.monotonic() - self.killed_at

    def _run(self) -> None:
        deadline = self.killed_at + CRASH_BOUND
        while not self._stop.is_set() and time.monotonic() < deadline:
            if "raft leader" not in self.seen and self.survivors[0].gate is not None:
                self._note("raft leader", raft_leader(self.survivors) is not None)
            self._note("lock gone", self.lock_gone())
            self._note("LiteFS primary", any(n.is_primary() for n in self.survivors))
            time.sleep(self.POLL)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=10)
        return dict(self.seen)


def raft_leader(survivors) -> str | None:
    """A survivor's litegate that leads, by the survivors' own status; None
    in the Consul setup (litegate has no Raft in litefs mode)."""
    names = {n.name for n in survivors}
    for n in survivors:
        try:
            raft = n.gate.status().get("raft") or {}
        except (httpx.HTTPError, ValueError):
            continue
        if raft.get("leader") in names:
            return raft["leader"]
    return None


class Writer:
    """Posts notes one at a time, through `targets` in turn, until stopped;
    records when each answer came and whether it was a success."""

    def __init__(self, targets):
        self.targets = list(targets)
        self.results: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Writer":
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
            while not self._stop.is_set() and i < 100_000:
                node = self.targets[i % len(self.targets)]
                try:
                    r = client.post(f"{node.gate.url}/notes", json={"text": f"bench-{i}"})
                    outcome = (r.status_code == 201, f"{node.name}: {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    outcome = (False, f"{node.name}: {e!r}")
                self.results.append((time.monotonic(), *outcome))
                i += 1
                time.sleep(WRITE_PAUSE)

    def first_success_after(self, t0: float) -> float | None:
        return next((t for t, ok, _ in self.results if ok and t >= t0), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT + 5)
        if self._thread.is_alive():
            raise RuntimeError("the writer did not stop within its request timeout")


def longest_gap(results, start: float) -> float:
    """The longest time between two successive successful writes from
    `start` (a moment a write had just succeeded) to the last one."""
    times = [start] + [t for t, ok, _ in results if ok and t >= start]
    return max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else float("inf")


def the_primary(nodes) -> LiteNode:
    found: list[LiteNode] = []

    def one():
        found[:] = [n for n in nodes if n.is_primary()]
        return len(found) == 1

    wait_until(one, timeout=HANDOFF_BOUND, what="exactly one LiteFS primary")
    return found[0]


def measure_handoff(setup: str, nodes, trial: Trial, renew_every: float) -> None:
    """`setup` is CONSUL or a litegate setup's name."""
    old = the_primary(nodes)
    target = next(n for n in nodes if n is not old)
    writer = Writer(nodes).start()
    try:
        wait_until(lambda: writer.first_success_after(0) is not None, timeout=HANDOFF_BOUND,
                   what="a first write before the handoff")
        # Anywhere in LiteFS's renew cycle: with litegate's lease the old
        # primary steps down at its next renew.
        time.sleep(1 + random.uniform(0, renew_every))
        start = max(t for t, ok, _ in writer.results if ok)
        if setup == CONSUL:
            r = httpx.post(f"{target.api}/promote", timeout=HANDOFF_BOUND)
            if r.status_code != 200:
                raise RuntimeError(f"LiteFS POST /promote on {target.name}: {r.status_code} {r.text}")
        else:
            out = subprocess.run(
                [str(litegate_bin()), "handoff", "--to", target.name, "--admin", old.gate.admin],
                capture_output=True, text=True, timeout=HANDOFF_BOUND)
            if out.returncode != 0:
                raise RuntimeError(f"litegate handoff: {out.stdout}{out.stderr}")
        wait_until(lambda: target.is_primary() and not old.is_primary(), timeout=HANDOFF_BOUND,
                   what=f"{target.name}'s LiteFS primary after the handoff")
        moved = time.monotonic()
        wait_until(lambda: writer.first_success_after(moved) is not None, timeout=HANDOFF_BOUND,
                   what="a write after the handoff")
        time.sleep(1)
    finally:
        writer.stop()
    trial.gap_s = longest_gap(writer.results, start)
    trial.writes = len(writer.results)
    trial.failed = [detail for _, ok, detail in writer.results if not ok]


def seconds(text: str) -> float:
    """A Go duration as LiteFS's config takes it: "10s", "500ms"."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    raise ValueError(f"{text!r}: give a duration like 3s or 500ms")


def measure_crash(nodes, trial: Trial, lock_gone, renew_every: float) -> None:
    time.sleep(random.uniform(0, renew_every))
    victim = the_primary(nodes)
    survivors = [n for n in nodes if n is not victim]
    killed_at = time.monotonic()
    victim.kill()
    watcher = PhaseWatcher(survivors, killed_at, lambda: lock_gone(survivors))
    writer = Writer(survivors).start()
    try:
        wait_until(lambda: writer.first_success_after(killed_at) is not None, timeout=CRASH_BOUND,
                   what="a successful write after SIGKILL of the primary node")
    finally:
        writer.stop()
        trial.phases = watcher.stop()
    trial.crash_s = writer.first_success_after(killed_at) - killed_at
    trial.phases["first write"] = trial.crash_s


def litegate_lock_gone(survivors) -> bool:
    """litegate's state machine shows no holder of LiteFS's key."""
    for n in survivors:
        try:
            lease = n.gate.status().get("lease") or {}
        except (httpx.HTTPError, ValueError):
            continue
        if (lease.get("holder") or {}).get("session") is None and raft_leader(survivors):
            return True
    return False


def consul_lock_gone(consul: "ConsulAgent", key: str):
    def gone(_survivors) -> bool:
        try:
            r = httpx.get(f"http://127.0.0.1:{consul.http_port}/v1/kv/{key}", timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 404 or (r.status_code == 200 and not r.json()[0].get("Session"))
    return gone


class ConsulAgent:
    """`consul agent -dev` on loopback ports of its own, in memory."""

    def __init__(self, procs: Procs, binary: Path):
        self.http_port = free_port()
        ports = {"dns": -1, "grpc": -1, "serf_lan": free_port(), "serf_wan": free_port(),
                 "server": free_port()}
        hcl = "ports { " + " ".join(f"{k} = {v}" for k, v in ports.items()) + " }"
        self.proc = procs.start("consul", [
            str(binary), "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1",
            f"-http-port={self.http_port}", f"-hcl={hcl}", "-hcl=disable_update_check = true",
            "-log-level=info"])
        wait_for_port(self.http_port, self.proc, timeout=30)
        wait_until(self._has_leader, timeout=30, what="the Consul agent electing itself")

    def _has_leader(self) -> bool:
        try:
            return bool(httpx.get(f"http://127.0.0.1:{self.http_port}/v1/status/leader", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return False


def consul_binary() -> Path:
    if os.environ.get("CONSUL_BIN"):
        return Path(os.environ["CONSUL_BIN"])
    out = subprocess.run([str(ROOT / "benches" / "fetch-consul.sh"), str(ROOT / "target" / "consul")],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"benches/fetch-consul.sh failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def run_trial(setup: str, index: int, args, tmp: Path, consul: ConsulAgent | None,
              started: list[Procs]) -> Trial:
    log_dir = tmp / f"{setup.replace(' ', '-').replace('/', '-')}-{index + 1}"
    log_dir.mkdir()
    procs = Procs(log_dir)
    started.append(procs)
    nodes = [LiteNode(procs, f"node-{i}", i) for i in (1, 2, 3)]
    trial = Trial()
    try:
        if setup == CONSUL:
            # A key of its own per trial: the last trial's cluster ID would
            # keep this trial's fresh LiteFS nodes from ever becoming primary.
            key = f"litefs-bench-{index}/primary"
            ttl = CONSUL_TTL
            start_litefs_mode_cluster(procs, nodes, f"http://127.0.0.1:{consul.http_port}", key, ttl,
                                      CONSUL_LOCK_DELAY, primary_wait=PRIMARY_WAIT)
            lock_gone = consul_lock_gone(consul, key)
        else:
            ttl, lock_delay = args.leases[setup]
            start_raft_lease_cluster(procs, nodes, TOKEN, "litefs/primary", ttl, lock_delay,
                                     primary_wait=PRIMARY_WAIT)
            lock_gone = litegate_lock_gone
        measure_handoff(setup, nodes, trial, seconds(ttl) / 2)
        measure_crash(nodes, trial, lock_gone, seconds(ttl) / 2)
    finally:
        # LiteFS and its mount first (a mount left behind would outlive the
        # run); one node's failure to stop does not keep the others running.
        with signals_deferred():
            for n in nodes:
                try:
                    n.stop()
                except Exception as e:  # noqa: BLE001
                    print(f"stopping {n.name}: {e}", file=sys.stderr)
            procs.stop_all()
    return trial


def stats(values) -> tuple[str, str, str]:
    values = [v for v in values if v is not None]
    if not values:
        return ("-", "-", "-")
    return tuple(f"{v:.2f} s" for v in (statistics.median(values), min(values), max(values)))


def table(results: dict[str, list[Trial]], args) -> str:
    setups = list(results)
    head = "| | " + " | ".join(f"{s}: median | min | max" for s in setups) + " | goal |"
    rule = "| --- | " + " | ".join("---: | ---: | ---:" for _ in setups) + " | --- |"
    crash = "| SIGKILL of the primary node → first successful write | " + " | ".join(
        " | ".join(stats(t.crash_s for t in results[s])) for s in setups) + \
        f" | median ≤ {GOAL_CRASH_S:.0f} s (Consul measured: {CONSUL_REFERENCE_S} s) |"
    gap = "| graceful handoff: longest write gap | " + " | ".join(
        " | ".join(stats(t.gap_s for t in results[s])) for s in setups) + f" | ≤ {GOAL_GAP_S:.0f} s |"
    failed = "| graceful handoff: failed writes (of all sent) | " + " | ".join(
        f"{sum(len(t.failed) for t in results[s])} of {sum(t.writes for t in results[s])} | | "
        for s in setups) + " 0 |"
    lines = [head, rule, crash, gap, failed, ""]
    for s in setups:
        per = ", ".join(f"{t.crash_s:.2f}" for t in results[s] if t.crash_s is not None)
        gaps = ", ".join(f"{t.gap_s:.2f}" for t in results[s] if t.gap_s is not None)
        lines.append(f"{s}: crash failover per trial (s): {per}; handoff gap per trial (s): {gaps}")
    lines.append("")
    lines.append("Where the crash failover went (median seconds after the kill at which each phase ended, "
                 "polled every 50 ms):")
    for s in setups:
        order = ["raft leader", "lock gone", "LiteFS primary", "first write"]
        parts = []
        for phase in order:
            seen = [t.phases[phase] for t in results[s] if phase in t.phases]
            if seen:
                parts.append(f"{phase} {statistics.median(seen):.2f}")
        lines.append(f"  {s}: " + ", ".join(parts))
    lines.append(f"consul: TTL {CONSUL_TTL}, lock-delay {CONSUL_LOCK_DELAY} (LiteFS's default); "
                 f"{args.trials} trials per setup; load average before the run: {args.load}")
    return "\n".join(lines)


_cleanup = {"depth": 0, "interrupted": False}


def interrupted(_signum, _frame) -> None:
    """Ctrl-C and SIGTERM end the run through every cleanup; one that comes
    during a cleanup is taken once the cleanup is done, so it cannot leave
    processes or mounts behind."""
    if _cleanup["depth"]:
        _cleanup["interrupted"] = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred():
    _cleanup["depth"] += 1
    try:
        yield
    finally:
        _cleanup["depth"] -= 1
        if not _cleanup["depth"] and _cleanup["interrupted"]:
            _cleanup["interrupted"] = False
            raise KeyboardInterrupt


def sweep(tmp: Path, started: list[Procs]) -> None:
    """Whatever a trial's own cleanup missed: processes, then any mount
    under `tmp`."""
    for procs in started:
        procs.stop_all()
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if len(line.split()) > 1]
    for point in points:
        if point.startswith(f"{tmp}/") and mounted(Path(point)):
            try:
                unmount(Path(point))
            except RuntimeError as e:
                print(e, file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="trials per setup, each on a fresh cluster")
    parser.add_argument("--litegate-lease", action="append", metavar="TTL/LOCK-DELAY",
                        help="LiteFS's TTL and lock-delay with litegate's lease (default 1s/500ms); repeat for more "
                             "setups")
    parser.add_argument("--no-consul", action="store_true", help="run the litegate setups only")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    reason = skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    litegate_bin()
    args.load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    args.leases = {}
    for spec in args.litegate_lease or ["1s/500ms"]:
        ttl, _, lock_delay = spec.partition("/")
        try:
            seconds(ttl), seconds(lock_delay)
        except ValueError as e:
            parser.error(f"--litegate-lease {spec}: {e}")
        args.leases[f"litegate {ttl}/{lock_delay}"] = (ttl, lock_delay)
    setups = ([] if args.no_consul else [CONSUL]) + list(args.leases)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    tmp = Path(tempfile.mkdtemp(prefix="litefs-lease-bench-"))
    procs = Procs(tmp)
    started = [procs]
    results: dict[str, list[Trial]] = {s: [] for s in setups}
    error: BaseException | None = None
    try:
        consul = ConsulAgent(procs, consul_binary()) if CONSUL in setups else None
        for i in range(args.trials):
            for s in setups:
                print(f"trial {i + 1}/{args.trials}: {s} ...", file=sys.stderr, flush=True)
                trial = run_trial(s, i, args, tmp, consul, started)
                print(f"  crash failover {trial.crash_s:.2f} s, handoff gap {trial.gap_s:.2f} s, "
                      f"{len(trial.failed)} of {trial.writes} writes failed"
                      + (f" (first: {trial.failed[0]})" if trial.failed else ""), file=sys.stderr, flush=True)
                results[s].append(trial)
    except BaseException as e:
        error = e
        raise
    finally:
        with signals_deferred():
            sweep(tmp, started)
            if error is not None and not isinstance(error, KeyboardInterrupt) and not args.keep_logs:
                for log in sorted(tmp.rglob("*.log")):
                    print(f"--- {log.relative_to(tmp)} (last lines)\n{log.read_text(errors='replace')[-1500:]}",
                          file=sys.stderr)
            if args.keep_logs:
                print(f"logs kept in {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
