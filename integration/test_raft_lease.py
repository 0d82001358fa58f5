"""Raft mode with `[lease]`, through the real binary, with the test making
the Consul calls LiteFS makes (the same calls, in the same order; see
docs/litefs.md). What it checks does not depend on a database, so it runs
without FUSE: test_litefs_lease.py runs the real LiteFS.

- the primary is the node whose "LiteFS" holds the lease, and only that;
- the app on the primary gets the lease hold (session, lock index) next to
  the term with every write, and a client cannot forge either header."""

from __future__ import annotations

import base64
import signal

import httpx

from harness import LiteFS, free_port, header_values, restart, start_raft_cluster, wait_for_port, wait_until
from test_membership import member, new_node_args, spec_of, start_new_node
from test_raft_cluster import ADMIN

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


LEASE_CONFIG = f'[lease]\ntoken = "{TOKEN}"\nkey = "{KEY}"\ntakeover_timeout = "1h"\n'


def lease_cluster(procs, upstream, env=None, config: str = ""):
    """Three litegates in raft mode with `[lease]`; `env(name)` adds to a
    node's environment. Returns the nodes and each one's lease port."""
    lease_ports = {f"node-{i}": free_port() for i in (1, 2, 3)}
    nodes = start_raft_cluster(
        procs, [upstream] * 3,
        extra=f"{LEASE_CONFIG}\n{config}",
        node_env=lambda name: {"LITEGATE_LEASE_LISTEN": f"127.0.0.1:{lease_ports[name]}",
                               **(env(name) if env else {})},
    )
    for n in nodes:
        wait_for_port(lease_ports[n.name], n.proc)
    return nodes, lease_ports


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
    nodes, lease_ports = lease_cluster(procs, upstream)
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


def test_lease_state_survives_snapshot_install_and_a_full_restart(procs, upstream):
    """Snapshots every 2 entries: a follower down while the lease changed
    gets the sessions and keys from the snapshot, and a restart of every
    node keeps them (the holder is still the holder, its session valid)."""
    nodes, lease_ports = lease_cluster(procs, upstream, env=lambda name: {"LITEGATE_CLUSTER_SNAPSHOT_ENTRIES": "2"})
    leader = raft_leader(nodes)
    lagging = next(n for n in nodes if n is not leader)
    lagging.proc.signal(signal.SIGKILL)
    lagging.proc.wait(10)

    port = lease_ports[leader.name]
    session = create_session(port)
    assert consul(port, "PUT", f"/v1/kv/{KEY}?acquire={session}", '{"hostname":"x"}').text == "true"
    # Purging follows snapshots in the background: put until it has.
    for i in range(40):
        assert consul(port, "PUT", f"/v1/kv/{KEY}/extra-{i}", f"v{i}").text == "true"
        purged = leader.status()["raft"]["purged_index"]
        if i >= 5 and purged is not None and purged > 2:
            break
    assert purged is not None and purged > 2, leader.status()["raft"]
    last = i

    restart(procs, lagging)
    wait_until(lambda: (lagging.status()["raft"]["snapshot_index"] or -1) >= purged, 20,
               "the restarted follower to install the snapshot")
    holder = lagging.status()["lease"]["holder"]
    assert (holder["session"], holder["node"]) == (session, leader.name), holder
    r = consul(lease_ports[lagging.name], "GET", f"/v1/kv/{KEY}/extra-{last}")
    assert r.status_code == 200 and base64.b64decode(r.json()[0]["Value"]) == f"v{last}".encode(), r.text

    for n in nodes:
        n.proc.signal(signal.SIGTERM)
        n.proc.wait(30)
    for n in nodes:
        restart(procs, n)
    for n in nodes:
        wait_for_port(lease_ports[n.name], n.proc)
    holder_seen = {}

    def every_node_names_the_holder() -> bool:
        holders = [n.status()["lease"]["holder"] for n in nodes]
        holder_seen["last"] = holders
        return all(h is not None and h["session"] == session for h in holders)

    wait_until(every_node_names_the_holder, 20, "the lease holder on every restarted node")
    # The session outlived the restarts: renewed from its holder's node it
    # is alive (200) while that node leads, and answered 404 once another
    # node leads (so the holder's LiteFS steps down), never "unknown".
    new_leader = raft_leader(nodes)
    holder_node = holder_seen["last"][0]["node"]
    r = consul(lease_ports[holder_node], "PUT", f"/v1/session/renew/{session}")
    expected = 200 if new_leader.name == holder_node else 404
    assert r.status_code == expected, (r.status_code, r.text, new_leader.name, holder_node)
    if expected == 200:
        assert r.json()[0]["ID"] == session


def test_a_renew_the_quorum_cannot_confirm_is_answered_404(procs, upstream):
    """A holder cut off from the quorum must step down at once: LiteFS does
    on a 404 renew, but keeps its lease through a 500 for up to another
    TTL + 1 s, long enough to overlap the primary a new leader elects."""
    nodes, lease_ports = lease_cluster(procs, upstream)
    leader = raft_leader(nodes)
    port = lease_ports[leader.name]
    session = create_session(port)
    assert consul(port, "PUT", f"/v1/kv/{KEY}?acquire={session}", '{"hostname":"x"}').text == "true"
    assert consul(port, "PUT", f"/v1/session/renew/{session}").status_code == 200

    followers = [n for n in nodes if n is not leader]
    for n in followers:
        n.proc.signal(signal.SIGSTOP)
    try:
        r = consul(port, "PUT", f"/v1/session/renew/{session}")
        assert r.status_code == 404, (r.status_code, r.text)
        assert "cannot confirm" in r.text, r.text
    finally:
        for n in followers:
            n.proc.signal(signal.SIGCONT)
    # Once the quorum answers again, the renew is confirmed again if this
    # node still leads; if a follower campaigned on waking, it is the
    # deposed holder's 404.
    now_leading = raft_leader(nodes)
    r = consul(port, "PUT", f"/v1/session/renew/{session}")
    if now_leading is leader:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 404 and "only renewed from" in r.text, r.text


def test_the_holder_takes_writes_only_once_its_litefs_says_it_is_primary(procs, upstream):
    """The state machine can name this node's LiteFS as holder while that
    LiteFS is not primary (just after its acquire, or after it gave the
    lease up and its release failed): writes then wait instead of reaching
    an app whose database is read-only. Uses the LiteFS stand-in
    (fixtures/litefs_standin.py): the real LiteFS cannot be put in that
    state on demand."""
    names = ["node-1", "node-2", "node-3"]
    standin = LiteFS(procs, names)
    nodes, lease_ports = lease_cluster(
        procs, upstream, config='[routing]\nprimary_wait = "1s"\n',
        env=lambda name: {"LITEGATE_LITEFS_MOUNT": str(standin.mounts[name]),
                          "LITEGATE_LITEFS_API": standin.api(name)})
    leader = raft_leader(nodes)
    other = next(n for n in nodes if n is not leader)
    standin.post("primary", node=other.name)

    port = lease_ports[leader.name]
    session = create_session(port)
    assert consul(port, "PUT", f"/v1/kv/{KEY}?acquire={session}", '{"hostname":"x"}').text == "true"
    wait_until(lambda: leader.status()["lease"]["holder"] is not None, 10, "the holder applied")
    r = httpx.post(f"{leader.url}/echo", content=b"w", timeout=10)
    assert (r.status_code, r.headers.get("litegate-error")) == (503, "no-primary"), (r.status_code, r.text)
    assert leader.metric("litegate_is_primary") == 0

    standin.post("primary", node=leader.name)
    wait_until(lambda: leader.metric("litegate_is_primary") == 1, 10, "LiteFS and the lease agreeing")
    r = httpx.post(f"{leader.url}/echo", content=b"w", timeout=10)
    assert r.status_code == 200, r.text
    assert header_values(r.json(), "litegate-lease-session") == [session]


def test_a_node_added_at_runtime_can_lead_and_hold_the_lease(procs, upstream):
    """Membership changes work with `[lease]`, and the lease, its
    forwarding and the primary's name follow the Raft membership, not
    `cluster.peers`: node-4 is in no other node's config. Before, `member
    add` was refused (409: "need primary.mode = raft"); with that fixed
    alone, a lease call to node-1 while node-4 led was answered 500 ("not
    in cluster.peers"), and with node-4 holding the lease the others named
    no primary, so their writes could not be forwarded."""
    nodes, lease_ports = lease_cluster(procs, upstream)
    leader = raft_leader(nodes)
    lease_ports["node-4"] = free_port()
    node4 = start_new_node(procs, [spec_of(n, i + 1) for i, n in enumerate(nodes)], 4, "node-4", upstream,
                           extra=LEASE_CONFIG,
                           env={"LITEGATE_LEASE_LISTEN": f"127.0.0.1:{lease_ports['node-4']}"})
    wait_for_port(lease_ports["node-4"], node4.proc)
    out = member(["add", *new_node_args(node4, 4), "--admin", leader.admin])
    assert out.returncode == 0, out.stderr
    # A node that has just started does not campaign (its start-up quiet
    # period), so a handoff to it before then elects someone else.
    wait_until(lambda: not node4.status()["raft"]["startup_quiet_ms_left"], timeout=30,
               what="node-4's start-up quiet period to end")
    r = httpx.post(f"{leader.admin}/handoff", params={"to": "node-4"}, timeout=30, headers=ADMIN)
    assert r.status_code == 200, r.text
    everyone = [*nodes, node4]
    wait_until(lambda: all(n.status()["raft"]["leader"] == "node-4" for n in everyone), timeout=15,
               what="every node to name node-4 the Raft leader")

    # node-1 forwards its LiteFS's calls to the leader it knows only from
    # the Raft membership.
    node1 = next(n for n in nodes if n.name == "node-1")
    r = consul(lease_ports["node-1"], "PUT", "/v1/session/create",
               '{"Behavior":"delete","LockDelay":"500ms","Name":"litefs","NodeChecks":[],"TTL":"30s"}')
    assert r.status_code == 200, r.text

    # node-4's LiteFS takes the lease: every node names node-4 the primary,
    # and a write through node-1 reaches node-4's app with the hold.
    session = create_session(lease_ports["node-4"])
    r = consul(lease_ports["node-4"], "PUT", f"/v1/kv/{KEY}?acquire={session}", '{"hostname":"x"}')
    assert (r.status_code, r.text) == (200, "true")
    wait_until(lambda: all(n.status()["primary"] == "node-4" for n in everyone), timeout=15,
               what="every node to name node-4 the primary")
    r = httpx.post(f"{node1.url}/echo", content=b"w", timeout=10)
    assert r.status_code == 200, r.text
    assert header_values(r.json(), "litegate-lease-session") == [session]
