"""Nodes running the REAL LiteFS binary: its FUSE mount, the FastAPI notes
app on that mount, and (set by the caller) the node's litegate. Shared by
integration/test_litefs_lease.py and benches/litefs_lease.py.

LiteFS runs with `lease.type: "consul"`; the caller picks what answers at
the Consul URL (litegate's `[lease]` listener or a real Consul agent). It
needs root, /dev/fuse, fusermount3 and the binary (LITEFS_BIN, by default
../shared/litefs/litefs next to the repository): `skip_reason()` names
what is missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness import INTEGRATION, ROOT, free_port, start_litefs_cluster, start_raft_cluster, wait_for_port, wait_until

APP_DIR = INTEGRATION / "apps" / "fastapi_app"


def litefs_bin() -> Path:
    return Path(os.environ.get("LITEFS_BIN", ROOT.parent / "shared" / "litefs" / "litefs"))


def skip_reason() -> str | None:
    if not litefs_bin().exists():
        return f"the LiteFS binary is missing at {litefs_bin()} (set LITEFS_BIN)"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing: LiteFS needs FUSE"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing: install the fuse3 package (scripts/test does)"
    if os.geteuid() != 0:
        return "LiteFS's FUSE mount needs root"
    return None


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

    def start_litefs(self, consul_url: str, key: str, ttl: str, lock_delay: str) -> None:
        """`consul_url` is LiteFS's `lease.consul.url` (its password is the
        token LiteFS sends)."""
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
            f'    url: "{consul_url}"\n'
            f'    key: "{key}"\n'
            f'    ttl: "{ttl}"\n'
            f'    lock-delay: "{lock_delay}"\n'
        )
        self.litefs = self.procs.start(f"litefs-{self.name}", [str(litefs_bin()), "mount", "-config", str(config)])
        wait_for_port(self.http_port, self.litefs, timeout=20)

    def start_app(self) -> None:
        proc = self.procs.start(
            f"app-{self.name}",
            [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(APP_DIR), "--host", "127.0.0.1",
             "--port", str(self.app_port), "--log-level", "warning"],
            env={"APP_DB": str(self.db), "APP_NODE": f"app-{self.name}"},
        )
        wait_for_port(self.app_port, proc, timeout=20)
        self.app = proc

    def info(self) -> dict | None:
        try:
            return httpx.get(f"{self.api}/info", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def is_primary(self) -> bool:
        info = self.info()
        return bool(info and info.get("isPrimary"))

    def kill(self) -> None:
        """SIGKILL of the node's litegate, LiteFS and app, then its mount
        is detached."""
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


def primaries(nodes) -> list[str]:
    return [n.name for n in nodes if n.is_primary()]


def post_note(node, text: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{node.gate.url}/notes", json={"text": text}, timeout=timeout)


def notes_on(node) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{node.app_port}/notes", timeout=10).json()


def start_apps_once_replicated(nodes) -> None:
    """Waits for exactly one LiteFS primary, starts its app (which creates
    the database), then the others' once the database reached every mount."""
    wait_until(lambda: sum(n.is_primary() for n in nodes) == 1, timeout=30, what="one LiteFS primary")
    primary = next(n for n in nodes if n.is_primary())
    primary.start_app()
    wait_until(lambda: all(n.db.exists() for n in nodes), timeout=30, what="the database on every mount")
    for n in nodes:
        if n is not primary:
            n.start_app()


def start_raft_lease_cluster(procs, nodes, token: str, key: str, ttl: str, lock_delay: str,
                             primary_wait: str = "20s") -> None:
    """litegate in raft mode with `[lease]` on every node, then each node's
    LiteFS with its Consul lease pointed at its own litegate, then the apps.
    Sets each node's `gate`; the caller stops the nodes."""
    by_name = {n.name: n for n in nodes}

    def node_env(name):
        n = by_name[name]
        return {"LITEGATE_LEASE_LISTEN": f"127.0.0.1:{n.lease_port}",
                "LITEGATE_LITEFS_MOUNT": str(n.mount),
                "LITEGATE_LITEFS_API": n.api}

    extra = (f'[lease]\ntoken = "{token}"\nkey = "{key}"\n\n'
             f'[routing]\nprimary_wait = "{primary_wait}"\n')
    gates = start_raft_cluster(procs, [f"http://127.0.0.1:{n.app_port}" for n in nodes], extra=extra,
                               node_env=node_env)
    for n, g in zip(nodes, gates):
        n.gate = g
        wait_for_port(n.lease_port, g.proc)
    for n in nodes:
        n.start_litefs(f"http://litefs:{token}@127.0.0.1:{n.lease_port}", key, ttl, lock_delay)
    start_apps_once_replicated(nodes)


def start_litefs_mode_cluster(procs, nodes, consul_url: str, key: str, ttl: str, lock_delay: str,
                              primary_wait: str = "20s") -> None:
    """LiteFS with its Consul lease at `consul_url` (a real Consul agent) on
    every node, the apps, then litegate in `primary.mode = "litefs"`
    following each node's LiteFS. Sets each node's `gate`."""
    for n in nodes:
        n.start_litefs(consul_url, key, ttl, lock_delay)
    start_apps_once_replicated(nodes)
    view = _LiteFSView(nodes)
    gates = start_litefs_cluster(procs, view, [f"http://127.0.0.1:{n.app_port}" for n in nodes],
                                 extra=f'[routing]\nprimary_wait = "{primary_wait}"\n')
    for n, g in zip(nodes, gates):
        n.gate = g


class _LiteFSView:
    """What harness.start_litefs_cluster reads of a LiteFS deployment (the
    stand-in's interface), for real LiteFS nodes."""

    db = "db.sqlite3"

    def __init__(self, nodes):
        self.mounts = {n.name: n.mount for n in nodes}
        self._apis = {n.name: n.api for n in nodes}

    def api(self, name: str) -> str:
        return self._apis[name]
