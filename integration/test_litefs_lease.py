"""LiteFS without Consul: the REAL LiteFS binary (lease type consul) talks to
its local litegate's lease listener; litegate's Raft holds the lease. Three
nodes, each with LiteFS on a FUSE mount, the FastAPI notes app writing to
SQLite on that mount, and litegate in raft mode with [lease].

Needs root, /dev/fuse, fusermount3 and the LiteFS binary (LITEFS_BIN, by
default ../shared/litefs/litefs next to the repository); skips with the
reason otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness import INTEGRATION, ROOT, free_port, start_raft_cluster, wait_for_port, wait_until

APP_DIR = INTEGRATION / "apps" / "fastapi_app"
TOKEN = "lease-token-for-tests-0123456789"
KEY = "litefs/primary"
TTL = "2s"
LOCK_DELAY = "500ms"


def litefs_bin() -> Path:
    return Path(os.environ.get("LITEFS_BIN", ROOT.parent / "shared" / "litefs" / "litefs"))


def _skip_reason() -> str | None:
    if not litefs_bin().exists():
        return f"the LiteFS binary is missing at {litefs_bin()} (set LITEFS_BIN)"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing: LiteFS needs FUSE"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing: install the fuse3 package (scripts/test does)"
    if os.geteuid() != 0:
        return "LiteFS's FUSE mount needs root"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def mounted(mount: Path) -> bool:
    """From /proc/mounts: a dead FUSE mount fails stat, so os.path.ismount
    would say it is gone."""
    target = str(mount)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def unmount(mount: Path) -> None:
    for _ in range(50):
        if not mounted(mount):
            return
        subprocess.run(["fusermount3", "-u", "-z", str(mount)], capture_output=True, timeout=10)
        time.sleep(0.1)
    raise RuntimeError(f"{mount} is still mounted after 50 tries of fusermount3 -u -z")


class LiteNode:
    """One node: its LiteFS, its app and its litegate."""

    def __init__(self, procs, name: str, index: int):
        self.procs = procs
        self.name = name
        self.index = index
        base = procs.log_dir / f"lfs-{name}"
        self.mount = base / "mnt"
        self.data = base / "data"
        self.mount.mkdir(parents=True)
        self.data.mkdir(parents=True)
        self.http_port = free_port()
        self.lease_port = free_port()
        self.app_port = free_port()
        self.litefs = None
        self.app = None
        self.gate = None  # the harness's ClusterNode

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def db(self) -> Path:
        return self.mount / "db.sqlite3"

    def start_litefs(self) -> None:
        config = self.procs.log_dir / f"litefs-{self.name}.yml"
        config.write_text(
            f'fuse:\n  dir: "{self.mount}"\n'
            f'data:\n  dir: "{self.data}"\n'
            f'http:\n  addr: "127.0.0.1:{self.http_port}"\n'
            "lease:\n"
            '  type: "consul"\n'
            f'  hostname: "{self.name}"\n'
            f'  advertise-url: "http://127.0.0.1:{self.http_port}"\n'
            "  candidate: true\n"
            "  consul:\n"
            f'    url: "http://litefs:{TOKEN}@127.0.0.1:{self.lease_port}"\n'
            f'    key: "{KEY}"\n'
            f'    ttl: "{TTL}"\n'
            f'    lock-delay: "{LOCK_DELAY}"\n'
        )
        self.litefs = self.procs.start(f"litefs-{self.name}", [str(litefs_bin()), "mount", "-config", str(config)])
        wait_for_port(self.http_port, self.litefs, timeout=20)

    def start_app(self) -> None:
        self.app = self._uvicorn()

    def _uvicorn(self):
        import sys

        proc = self.procs.start(
            f"app-{self.name}",
            [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(APP_DIR), "--host", "127.0.0.1",
             "--port", str(self.app_port), "--log-level", "warning"],
            env={"APP_DB": str(self.db), "APP_NODE": f"app-{self.name}"},
        )
        wait_for_port(self.app_port, proc, timeout=20)
        return proc

    def info(self) -> dict | None:
        try:
            return httpx.get(f"{self.api}/info", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def is_primary(self) -> bool:
        info = self.info()
        return bool(info and info.get("isPrimary"))

    def kill(self) -> None:
        for proc in (self.gate.proc if self.gate else None, self.litefs, self.app):
            if proc is not None and proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
        unmount(self.mount)

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()
        if self.litefs is not None:
            self.litefs.stop()
        unmount(self.mount)


@pytest.fixture
def lease_cluster(procs):
    names = ["node-1", "node-2", "node-3"]
    nodes = [LiteNode(procs, n, i + 1) for i, n in enumerate(names)]
    by_name = {n.name: n for n in nodes}

    def node_env(name):
        n = by_name[name]
        return {"LITEGATE_LEASE_LISTEN": f"127.0.0.1:{n.lease_port}",
                "LITEGATE_LITEFS_MOUNT": str(n.mount),
                "LITEGATE_LITEFS_API": n.api}

    extra = (f'[lease]\ntoken = "{TOKEN}"\nkey = "{KEY}"\n\n'
             '[routing]\nprimary_wait = "20s"\n')
    try:
        gates = start_raft_cluster(procs, [f"http://127.0.0.1:{n.app_port}" for n in nodes], extra=extra,
                                   node_env=node_env)
        for n, g in zip(nodes, gates):
            n.gate = g
            wait_for_port(n.lease_port, g.proc)
        for n in nodes:
            n.start_litefs()
        wait_until(lambda: sum(n.is_primary() for n in nodes) == 1, timeout=30, what="one LiteFS primary")
        primary = next(n for n in nodes if n.is_primary())
        primary.start_app()
        wait_until(lambda: all(n.db.exists() for n in nodes), timeout=30, what="the database on every mount")
        for n in nodes:
            if n is not primary:
                n.start_app()
        yield nodes
    finally:
        # LiteFS and its mount go before the rest; bounded waits throughout.
        for n in nodes:
            n.stop()


def primaries(nodes) -> list[str]:
    return [n.name for n in nodes if n.is_primary()]


def raft_leader(nodes) -> str | None:
    for n in nodes:
        if n.gate.proc.popen.poll() is None:
            try:
                leader = n.gate.status()["raft"]["leader"]
            except (httpx.HTTPError, KeyError, TypeError):
                continue
            if leader:
                return leader
    return None


def post_note(node, text: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{node.gate.url}/notes", json={"text": text}, timeout=timeout)


def notes_on(node) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{node.app_port}/notes", timeout=10).json()


def test_writes_through_any_node_land_on_the_litefs_primary_and_replicate(lease_cluster):
    nodes = lease_cluster
    [primary] = primaries(nodes)
    assert raft_leader(nodes) == primary, "LiteFS's primary is litegate's Raft leader"
    lease = next(n for n in nodes if n.name == primary).gate.status()["lease"]
    assert lease["holder"]["node"] == primary and lease["holder"]["session"]
    for i, n in enumerate(nodes):
        r = post_note(n, f"via-{n.name}-{i}")
        assert r.status_code == 201, (r.status_code, r.text)
        assert r.json()["served_by"] == f"app-{primary}"
        assert int(r.headers.get("litegate-served-by") == primary) == 1
    texts = {f"via-{n.name}-{i}" for i, n in enumerate(nodes)}
    wait_until(lambda: all(texts <= {x["text"] for x in notes_on(n)} for n in nodes), timeout=15,
               what="every write replicated to every node")


def test_sigkill_of_the_primary_node_hands_the_database_to_a_survivor(lease_cluster):
    nodes = lease_cluster
    [primary] = primaries(nodes)
    assert post_note(nodes[0], "before-kill").status_code == 201
    victim = next(n for n in nodes if n.name == primary)
    survivors = [n for n in nodes if n is not victim]
    wait_until(lambda: all("before-kill" in {x["text"] for x in notes_on(n)} for n in survivors), timeout=15,
               what="the write replicated before the kill")
    killed_at = time.monotonic()
    victim.kill()
    r = post_note(survivors[0], "after-kill", timeout=60)
    # A figure for the report (pytest -s), not an assertion.
    print(f"\nfirst write after SIGKILL of the primary node: {time.monotonic() - killed_at:.2f} s")
    assert r.status_code == 201, (r.status_code, r.text)
    new_primary = r.json()["served_by"].removeprefix("app-")
    assert new_primary in {n.name for n in survivors}
    assert primaries(survivors) == [new_primary]
    for n in survivors:
        wait_until(lambda n=n: {"before-kill", "after-kill"} <= {x["text"] for x in notes_on(n)}, timeout=15,
                   what=f"both writes on {n.name}")


def test_graceful_handoff_fails_no_write(lease_cluster):
    nodes = lease_cluster
    [primary] = primaries(nodes)
    old = next(n for n in nodes if n.name == primary)
    target = next(n for n in nodes if n is not old)
    results: list[tuple[str, int]] = []
    stop = threading.Event()

    def writer():
        i = 0
        with httpx.Client(timeout=40) as client:
            while not stop.is_set() and i < 5000:
                via = nodes[i % 3]
                ident = f"w-{i}"
                try:
                    r = client.post(f"{via.gate.url}/notes", json={"text": ident})
                    results.append((ident, r.status_code))
                except httpx.HTTPError as e:
                    results.append((ident, repr(e)))
                i += 1
                time.sleep(0.02)

    session = old.gate.status()["lease"]["holder"]["session"]
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        out = subprocess.run(
            [str(old.gate.proc.popen.args[0]), "handoff", "--to", target.name, "--admin", old.gate.admin],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: primaries(nodes) == [target.name], timeout=20, what="LiteFS primary on the target")
        # LiteFS's own handoff moved the lease: the target's LiteFS took the
        # old holder's session over, rather than the old holder stepping down
        # at its next renew and the target acquiring with a new session.
        holder = target.gate.status()["lease"]["holder"]
        assert (holder["node"], holder["session"]) == (target.name, session), holder
        time.sleep(1)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    failed = [r for r in results if r[1] != 201]
    assert results and not failed, failed[:10]
    ok = {ident for ident, _ in results}
    wait_until(lambda: all(ok <= {x["text"] for x in notes_on(n)} for n in nodes), timeout=20,
               what="every acknowledged write on every node")
