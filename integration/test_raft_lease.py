"""Raft mode with `[lease]`, through the real binary, with the test making
the Consul calls LiteFS makes (the same calls, in the same order; see
docs/litefs.md). What it checks does not depend on a database, so it runs
without FUSE: test_litefs_lease.py runs the real LiteFS.

- the primary is the node whose "LiteFS" holds the lease, and only that;
- the app on the primary gets the lease hold (session, lock index) next to
  the term with every write, and a client cannot forge either header."""

from __future__ import annotations

import httpx

from harness import free_port, header_values, start_raft_cluster, wait_for_port, wait_until

TOKEN = "lease-token-for-tests-0123456789"
KEY = "litefs/primary"


def consul(port: int, method: str, path: str, body: str = "") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", content=body,
                         headers={"X-Consul-Token": TOKEN}, timeout=5)


def create_session(port: int) -> str:
    r = consul(port, "PUT", "/v1/session/create",
               '{"Behavior":"delete","LockDelay":"500ms","Name":"litefs","NodeChecks":[],"TTL":"30s"}')
    assert r.status_code == 200, r.text
    return r.json()["ID"]


def raft_leader(nodes):
    """The node every node names as Raft leader (not the primary: with
    `[lease]` there is none until a LiteFS takes the lease)."""
    found = {}

    def agreed() -> bool:
        names = {n.status()["raft"]["leader"] for n in nodes}
        found["name"] = names.pop() if len(names) == 1 else None
        return found["name"] is not None

    wait_until(agreed, timeout=15, what="one Raft leader named by every node")
    return next(n for n in nodes if n.name == found["name"])


def test_only_the_lease_holder_is_primary_and_its_app_gets_the_hold(procs, upstream):
    lease_ports = {f"node-{i}": free_port() for i in (1, 2, 3)}
    nodes = start_raft_cluster(
        procs, [upstream] * 3,
        extra=f'[lease]\ntoken = "{TOKEN}"\nkey = "{KEY}"\ntakeover_timeout = "1h"\n',
        node_env=lambda name: {"LITEGATE_LEASE_LISTEN": f"127.0.0.1:{lease_ports[name]}"},
    )
    for n in nodes:
        wait_for_port(lease_ports[n.name], n.proc)
    leader = raft_leader(nodes)
    follower = next(n for n in nodes if n is not leader)

    # The Raft leader whose LiteFS has not taken the lease is not the
    # primary, and its gauge says so (it said 1 while Raft alone led).
    assert leader.metric("litegate_is_primary") == 0
    assert all(n.metric("litegate_is_primary") == 0 for n in nodes)

    port = lease_ports[leader.name]
    session = create_session(port)
    r = consul(port, "PUT", f"/v1/kv/{KEY}?acquire={session}", '{"hostname":"x"}')
    assert (r.status_code, r.text) == (200, "true")
    wait_until(lambda: leader.metric("litegate_is_primary") == 1, timeout=10, what="the holder's gauge")
    assert [n.metric("litegate_is_primary") for n in nodes].count(1) == 1

    term = str(leader.status()["term"])
    forged = {"Litegate-Lease-Session": "forged", "Litegate-Lease-Index": "999"}
    for via in (leader, follower):
        r = httpx.post(f"{via.url}/echo", content=b"w", headers=forged, timeout=10)
        assert r.status_code == 200, r.text
        echo = r.json()
        assert header_values(echo, "litegate-role") == ["primary"]
        assert header_values(echo, "litegate-term") == [term]
        assert header_values(echo, "litegate-lease-session") == [session]
        assert header_values(echo, "litegate-lease-index") == ["1"]

    # A read on a replica carries no hold, forged or not.
    r = httpx.get(f"{follower.url}/echo", headers=forged, timeout=10)
    assert r.status_code == 200
    assert header_values(r.json(), "litegate-lease-session") == []
    assert header_values(r.json(), "litegate-lease-index") == []
