"""Real LiteFS nodes for tests: each node's LiteFS 0.5.14 (lease type
consul, pointed at its own litegate's lease listener), the FastAPI notes
app on its FUSE mount, and litegate in raft mode with [lease]; optionally
each node in a network namespace of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness import (
    INTEGRATION,
    ROOT,
    free_port,
    nsenter,
    run_in_netns,
    start_litefs_cluster,
    start_raft_cluster,
    wait_for_port_in,
    wait_until,
)
from netns import HubNet, netns_unusable

APP_DIR = INTEGRATION / "apps" / "fastapi_app"
TOKEN = "lease-token-for-tests-0123456789"
KEY = "litefs/primary"
TTL = "2s"
LOCK_DELAY = "500ms"


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
    """One node: its LiteFS, its app and its litegate. With `netns`, all
    three run in that network namespace (network only: the FUSE mount is
    shared), reached by the other nodes at `host`; the LiteFS API, the app
    and the lease listener are on the namespace's own loopback."""

    def __init__(self, procs, name: str, index: int, netns: str | None = None, host: str = "127.0.0.1",
                 http_port: int | None = None, relay_port: int | None = None):
        self.procs = procs
        self.name = name
        self.index = index
        self.netns = netns
        self.host = host
        base = procs.log_dir / f"lfs-{name}"
        self.mount = base / "mnt"
        self.data = base / "data"
        self.mount.mkdir(parents=True)
        self.data.mkdir(parents=True)
        self.write_log = base / "app-writes.jsonl"
        self.http_port = http_port or free_port()
        # With the relay (lease.relay_listen), LiteFS advertises its own
        # litegate's relay: the same loopback URL on every node.
        self.relay_port = relay_port
        self.lease_port = free_port()
        self.app_port = free_port()
        self.litefs = None
        self.app = None
        self.gate = None  # the harness's ClusterNode

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def advertise_url(self) -> str:
        if self.relay_port:
            return f"http://127.0.0.1:{self.relay_port}"
        return f"http://{self.host}:{self.http_port}"

    @property
    def db(self) -> Path:
        return self.mount / "db.sqlite3"

    def start_litefs(self, consul_url: str | None = None, key: str = KEY, ttl: str = TTL,
                     lock_delay: str = LOCK_DELAY) -> None:
        """`consul_url` is LiteFS's `lease.consul.url` (its password is the
        token LiteFS sends): by default this node's litegate."""
        consul_url = consul_url or f"http://litefs:{TOKEN}@127.0.0.1:{self.lease_port}"
        config = self.procs.log_dir / f"litefs-{self.name}.yml"
        config.write_text(
            f'fuse:\n  dir: "{self.mount}"\n'
            f'data:\n  dir: "{self.data}"\n'
            # In a namespace the others reach the API at `host`.
            f'http:\n  addr: "{"" if self.netns else "127.0.0.1"}:{self.http_port}"\n'
            "lease:\n"
            '  type: "consul"\n'
            f'  hostname: "{self.name}"\n'
            f'  advertise-url: "{self.advertise_url}"\n'
            "  candidate: true\n"
            "  consul:\n"
            f'    url: "{consul_url}"\n'
            f'    key: "{key}"\n'
            f'    ttl: "{ttl}"\n'
            f'    lock-delay: "{lock_delay}"\n'
        )
        self.litefs = self.procs.start(f"litefs-{self.name}",
                                       [*nsenter(self.netns), str(litefs_bin()), "mount", "-config", str(config)])
        wait_for_port_in(self.netns, self.http_port, self.litefs, timeout=20)

    def start_app(self) -> None:
        self.app = self._uvicorn()

    def _uvicorn(self):
        proc = self.procs.start(
            f"app-{self.name}",
            [*nsenter(self.netns), sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(APP_DIR),
             "--host", "127.0.0.1", "--port", str(self.app_port), "--log-level", "warning"],
            env={"APP_DB": str(self.db), "APP_NODE": f"app-{self.name}", "APP_WRITE_LOG": str(self.write_log)},
        )
        wait_for_port_in(self.netns, self.app_port, proc, timeout=20)
        return proc

    def info(self, timeout: float = 2) -> dict | None:
        """LiteFS's GET /info, or None when it does not answer."""
        try:
            return run_in_netns(self.netns, lambda: httpx.get(f"{self.api}/info", timeout=timeout).json())
        except (OSError, httpx.HTTPError, ValueError):
            return None

    def notes(self) -> list[dict]:
        """Every note in this node's copy of the database, from its app."""
        return run_in_netns(self.netns,
                            lambda: httpx.get(f"http://127.0.0.1:{self.app_port}/notes", timeout=10).json())

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


def start_raft_lease_cluster(procs, nodes: list[LiteNode], token: str = TOKEN, key: str = KEY, ttl: str = TTL,
                             lock_delay: str = LOCK_DELAY, primary_wait: str = "20s",
                             upstream_timeout: str | None = None, **raft_cluster) -> None:
    """litegate in raft mode with `[lease]` on every node, then each node's
    LiteFS with its Consul lease pointed at its own litegate, then the apps.
    Sets each node's `gate`; the caller stops the nodes. `raft_cluster` goes
    to start_raft_cluster."""
    by_name = {n.name: n for n in nodes}

    def node_env(name):
        n = by_name[name]
        return {"LITEGATE_LEASE_LISTEN": f"127.0.0.1:{n.lease_port}",
                "LITEGATE_LITEFS_MOUNT": str(n.mount),
                "LITEGATE_LITEFS_API": n.api,
                **({"LITEGATE_UPSTREAM_TIMEOUT": upstream_timeout} if upstream_timeout else {})}

    relay = ""
    if nodes[0].relay_port:
        # One relay port and one LiteFS port for all: each node's LiteFS
        # reaches its own litegate's relay at the same URL.
        assert len({(n.relay_port, n.http_port) for n in nodes}) == 1, "the relay needs one port pair on every node"
        relay = f'relay_listen = "127.0.0.1:{nodes[0].relay_port}"\nlitefs_port = {nodes[0].http_port}\n'
    extra = (f'[lease]\ntoken = "{token}"\nkey = "{key}"\n{relay}\n'
             f'[routing]\nprimary_wait = "{primary_wait}"\n')
    gates = start_raft_cluster(procs, [f"http://127.0.0.1:{n.app_port}" for n in nodes], extra=extra,
                               node_env=node_env, **raft_cluster)
    for n, g in zip(nodes, gates):
        n.gate = g
        wait_for_port_in(n.netns, n.lease_port, g.proc)
    for n in nodes:
        n.start_litefs(f"http://litefs:{token}@127.0.0.1:{n.lease_port}", key, ttl, lock_delay)
    start_apps_once_replicated(nodes)


def start_litefs_mode_cluster(procs, nodes: list[LiteNode], consul_url: str, key: str, ttl: str,
                              lock_delay: str, primary_wait: str = "20s") -> None:
    """LiteFS with its Consul lease at `consul_url` (a real Consul agent) on
    every node, the apps, then litegate in `primary.mode = "litefs"`
    following each node's LiteFS. Sets each node's `gate`."""
    for n in nodes:
        n.start_litefs(consul_url, key, ttl, lock_delay)
    start_apps_once_replicated(nodes)
    gates = start_litefs_cluster(procs, _LiteFSView(nodes), [f"http://127.0.0.1:{n.app_port}" for n in nodes],
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


@contextlib.contextmanager
def running_lease_cluster(procs, nodes: list[LiteNode], **options):
    """start_raft_lease_cluster; yields the nodes, and stops them all (apps,
    LiteFS and mounts, litegates) however it ends."""
    try:
        start_raft_lease_cluster(procs, nodes, **options)
        yield nodes
    finally:
        # LiteFS and its mount go before the rest; bounded waits throughout.
        for n in nodes:
            n.stop()
        for n in nodes:
            if n.gate is not None:
                n.gate.proc.stop()


# The namespaces' addresses are not loopback, and litegate refuses plaintext
# cluster traffic off loopback unless told the network is private: this one
# exists only inside the test's namespaces.
ALLOW_PLAINTEXT = "allow_plaintext = true\n"


@contextlib.contextmanager
def lease_cluster_in_namespaces(procs, relay: bool, upstream_timeout: str | None = None):
    """running_lease_cluster with each node in a network namespace of its
    own on one switch (netns.HubNet); yields (net, nodes). Without `relay`
    each LiteFS advertises its own API; with it (lease.relay_listen) every
    LiteFS advertises its litegate's relay at one loopback URL, and listens
    on one port (each namespace has its own loopback and addresses).
    Skips the test where namespaces cannot be made."""
    why = netns_unusable()
    if why is not None:
        pytest.skip(f"network namespaces cannot be made here: {why}")
    net = HubNet(3)
    ports = {"http_port": free_port(), "relay_port": free_port()} if relay else {}
    try:
        nodes = [LiteNode(procs, f"node-{i + 1}", i + 1, netns=net.names[i], host=net.address(i), **ports)
                 for i in range(3)]
        with running_lease_cluster(procs, nodes, upstream_timeout=upstream_timeout,
                                   netns={n.name: n.netns for n in nodes}, cluster_lines=ALLOW_PLAINTEXT):
            yield net, nodes
    finally:
        net.close()


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
    return run_in_netns(node.netns, lambda: httpx.post(f"{node.gate.url}/notes", json={"text": text},
                                                       timeout=timeout), timeout + 5)


def notes_on(node) -> list[dict]:
    return node.notes()
