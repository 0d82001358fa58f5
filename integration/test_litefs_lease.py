"""LiteFS without Consul: the REAL LiteFS binary (lease type consul) talks to
its local litegate's lease listener; litegate's Raft holds the lease. Three
nodes, each with LiteFS on a FUSE mount, the FastAPI notes app writing to
SQLite on that mount, and litegate in raft mode with [lease]
(litefs_nodes.py).

Needs root, /dev/fuse, fusermount3 and the LiteFS binary (LITEFS_BIN, by
default ../shared/litefs/litefs next to the repository); skips with the
reason otherwise."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest

from harness import litegate_bin, nsenter, wait_until
from litefs_nodes import (
    LiteNode,
    lease_cluster_in_namespaces,
    notes_on,
    post_note,
    primaries,
    raft_leader,
    running_lease_cluster,
    skip_reason,
)

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(params=[False, True], ids=["advertise-litefs", "advertise-relay"])
def lease_cluster(procs, request):
    """Without the relay: three nodes on this host's loopback, each LiteFS
    advertising its own API. With it, every LiteFS advertises its
    litegate's relay at the same loopback URL, which needs a loopback per
    node: each node in a network namespace of its own."""
    if request.param:
        with lease_cluster_in_namespaces(procs, relay=True) as (_, nodes):
            yield nodes
    else:
        with running_lease_cluster(procs, [LiteNode(procs, f"node-{i + 1}", i + 1) for i in range(3)]) as nodes:
            yield nodes


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


STREAMS = "litegate_lease_relay_streams"
HOLDER_CHANGED = 'litegate_lease_relay_closed_total{reason="holder-changed"}'


def test_graceful_handoff_fails_no_write(lease_cluster, request):
    nodes = lease_cluster
    relay = request.node.callspec.params["lease_cluster"]
    [primary] = primaries(nodes)
    old = next(n for n in nodes if n.name == primary)
    target = next(n for n in nodes if n is not old)
    if relay:
        # Each replica's LiteFS streams from the holder through its relay.
        wait_until(lambda: all(n.gate.metric(STREAMS) >= 1 for n in nodes if n is not old), timeout=15,
                   what="a relayed stream on every replica")
    results: list[tuple[str, int]] = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set() and i < 5000:
            via = nodes[i % 3]
            ident = f"w-{i}"
            try:
                results.append((ident, post_note(via, ident, timeout=40).status_code))
            except (OSError, httpx.HTTPError) as e:
                results.append((ident, repr(e)))
            i += 1
            time.sleep(0.02)

    session = old.gate.status()["lease"]["holder"]["session"]
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        out = subprocess.run(
            [*nsenter(old.netns), str(litegate_bin()), "handoff", "--to", target.name, "--admin", old.gate.admin],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: primaries(nodes) == [target.name], timeout=20, what="LiteFS primary on the target")
        # LiteFS's own handoff moved the lease: the target's LiteFS took the
        # old holder's session over, rather than the old holder stepping down
        # at its next renew and the target acquiring with a new session.
        holder = target.gate.status()["lease"]["holder"]
        assert (holder["node"], holder["session"]) == (target.name, session), holder
        if relay:
            # The relays dropped their streams from the old holder, and the
            # old holder's LiteFS, a replica now, streams from the target.
            wait_until(lambda: all(n.gate.metric(HOLDER_CHANGED) >= 1 for n in nodes if n is not old), timeout=15,
                       what="the replicas' relays to close their streams from the old holder")
            wait_until(lambda: old.gate.metric(STREAMS) >= 1, timeout=15,
                       what="the old holder's LiteFS to stream from the target through its relay")
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
