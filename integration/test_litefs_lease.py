"""LiteFS without Consul: the REAL LiteFS binary (lease type consul) talks to
its local litegate's lease listener; litegate's Raft holds the lease. Three
nodes, each with LiteFS on a FUSE mount, the FastAPI notes app writing to
SQLite on that mount, and litegate in raft mode with [lease].

Needs root, /dev/fuse, fusermount3 and the LiteFS binary (LITEFS_BIN, by
default ../shared/litefs/litefs next to the repository); skips with the
reason otherwise."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest

from harness import wait_until
from litefs_real import LiteNode, notes_on, post_note, primaries, skip_reason, start_raft_lease_cluster

TOKEN = "lease-token-for-tests-0123456789"
KEY = "litefs/primary"
TTL = "2s"
LOCK_DELAY = "500ms"

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture
def lease_cluster(procs):
    nodes = [LiteNode(procs, f"node-{i}", i) for i in (1, 2, 3)]
    try:
        start_raft_lease_cluster(procs, nodes, TOKEN, KEY, TTL, LOCK_DELAY)
        yield nodes
    finally:
        # LiteFS and its mount go before the rest; bounded waits throughout.
        for n in nodes:
            n.stop()


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

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        out = subprocess.run(
            [str(old.gate.proc.popen.args[0]), "handoff", "--to", target.name, "--admin", old.gate.admin],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: primaries(nodes) == [target.name], timeout=20, what="LiteFS primary on the target")
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
