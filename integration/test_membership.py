"""Runtime membership in raft mode: `litegate member add | remove |
replace` through the real binary, under a steady write load (the Writer of
test_raft_cluster), with zero failed writes."""

import shutil
import signal
import subprocess
import time

import httpx

from harness import (
    ClusterNode,
    cluster_config,
    free_port,
    leader_of,
    litegate_bin,
    restart,
    start_raft_cluster,
    wait_for_port,
    wait_until,
    write_secret,
)
from test_raft_cluster import ADMIN, Writer, all_writes, start_apps, write


def spec_of(node: ClusterNode, node_id: int) -> dict:
    return {"id": node_id, "name": node.name, "cluster_port": node.cluster_port,
            "public_port": node.public_port, "admin_port": node.admin_port}


def start_new_node(procs, existing: list[dict], node_id: int, name: str, upstream: str, extra: str = "",
                   env: dict | None = None) -> ClusterNode:
    """A node that is in no cluster yet: its own id and name, peers listing
    the existing members and itself, no --bootstrap. `extra` goes into its
    config, `env` into its environment."""
    me = {"id": node_id, "name": name, "upstream": upstream, "public_port": free_port(),
          "admin_port": free_port(), "cluster_port": free_port()}
    # The same secret the harness gave the cluster.
    secret_file = write_secret(procs.log_dir)
    path = procs.log_dir / f"{name}.toml"
    path.write_text(cluster_config([*existing, me], me, procs.log_dir / f"{name}-data", secret_file, extra=extra,
                                   mode="raft"))
    env = {"LITEGATE_PUBLIC_LISTEN": f"127.0.0.1:{me['public_port']}",
           "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{me['admin_port']}", **(env or {})}
    proc = procs.litegate(name, ["run", "--config", str(path)], env=env)
    node = ClusterNode(proc, me["public_port"], me["admin_port"], name, me["cluster_port"], path, env)
    node.witness = False
    wait_for_port(node.public_port, proc)
    wait_for_port(node.cluster_port, proc)
    return node


def member(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([str(litegate_bin()), "member", *args], capture_output=True, text=True, timeout=timeout)


def new_node_args(node: ClusterNode, node_id: int) -> list[str]:
    return ["--id", str(node_id), "--name", node.name, "--cluster", f"127.0.0.1:{node.cluster_port}",
            "--public-url", node.url]


def members(node: ClusterNode) -> dict[str, str]:
    doc = httpx.get(f"{node.admin}/members", timeout=5).json()
    return {m["name"]: m["role"] for m in doc["members"]}


def test_a_fourth_node_joins_as_a_voter_under_load_and_forwards_writes(procs):
    apps = start_apps(procs, 4)
    cluster = start_raft_cluster(procs, apps[:3])
    leader_of(cluster, 30)
    # The regression: a fourth node started with a 4-peer config used to
    # sit outside the cluster forever; it now waits to be added.
    node4 = start_new_node(procs, [spec_of(n, i + 1) for i, n in enumerate(cluster)], 4, "node-4", apps[3])
    assert "node-4" not in members(cluster[0])
    assert node4.status()["role"] != "primary"

    follower = next(n for n in cluster if n.status()["role"] == "replica")
    with Writer(cluster, "add", pause=0.005) as writer:
        writer.wait_for(30)
        out = member(["add", *new_node_args(node4, 4), "--admin", follower.admin])
        assert out.returncode == 0, out.stderr
        assert "node-4 (node 4) is a voter" in out.stdout
        n = len(writer.results)
        writer.wait_for(n + 30)

    assert members(cluster[0]) == {"node-1": "voter", "node-2": "voter", "node-3": "voter", "node-4": "voter"}
    wait_until(lambda: node4.status()["primary"] is not None, 15, "node-4 to know the primary")
    # node-4 routes: its write reaches the primary's app.
    r = write(node4, "through-node-4")
    assert r.status_code == 201, r.text
    failed = [r for r in writer.results if r[1] != 201]
    assert failed == [], failed
    landed = sorted(e["id"] for e in all_writes(apps))
    assert landed == sorted([r[0] for r in writer.results] + ["through-node-4"])

    # node-4 can lead: hand leadership to it.
    leader = leader_of(cluster + [node4])
    if leader is not node4:
        r = httpx.post(f"{leader.admin}/handoff", params={"to": "node-4"}, timeout=30, headers=ADMIN)
        assert r.status_code == 200, r.text
    assert leader_of(cluster + [node4], 30) is node4
    r = write(cluster[0], "while-node-4-leads")
    assert r.status_code == 201, r.text


def test_removing_a_follower_then_the_leader_fails_no_write(procs):
    apps = start_apps(procs, 4)
    cluster = start_raft_cluster(procs, apps)
    leader = leader_of(cluster, 30)
    follower = next(n for n in cluster if n is not leader)
    stay = [n for n in cluster if n is not leader and n is not follower]

    with Writer(stay, "rm", pause=0.005) as writer:
        writer.wait_for(30)
        out = member(["remove", follower.name, "--admin", stay[0].admin])
        assert out.returncode == 0, out.stderr
        assert f"{follower.name} (node" in out.stdout
        n = len(writer.results)
        writer.wait_for(n + 30)
        # The leader removes itself: it hands off first.
        out = member(["remove", leader.name, "--admin", leader.admin])
        assert out.returncode == 0, out.stderr
        n = len(writer.results)
        writer.wait_for(n + 30)

    assert members(stay[0]) == {n.name: "voter" for n in stay}
    new_leader = leader_of(stay, 30)
    assert new_leader in stay
    failed = [r for r in writer.results if r[1] != 201]
    assert failed == [], failed
    landed = sorted(e["id"] for e in all_writes(apps))
    assert landed == sorted(r[0] for r in writer.results)


def test_a_node_whose_data_dir_was_wiped_is_replaced_by_a_fresh_one(procs):
    apps = start_apps(procs, 4)
    cluster = start_raft_cluster(procs, apps[:3])
    leader_of(cluster, 30)
    node3 = cluster[2]
    node3.proc.stop()
    shutil.rmtree(procs.log_dir / "node-3-data")
    rest = cluster[:2]

    fresh = start_new_node(procs, [spec_of(n, i + 1) for i, n in enumerate(rest)], 4, "node-3b", apps[3])
    with Writer(rest, "rep", pause=0.005) as writer:
        writer.wait_for(30)
        out = member(["replace", "node-3", *new_node_args(fresh, 4), "--admin", rest[0].admin])
        assert out.returncode == 0, out.stderr
        assert "replaced node-3 by node-3b" in out.stdout
        n = len(writer.results)
        writer.wait_for(n + 30)

    assert members(rest[0]) == {"node-1": "voter", "node-2": "voter", "node-3b": "voter"}
    wait_until(lambda: fresh.status()["primary"] is not None, 15, "the fresh node to know the primary")
    r = write(fresh, "through-the-fresh-node")
    assert r.status_code == 201, r.text
    failed = [r for r in writer.results if r[1] != 201]
    assert failed == [], failed
    # The cluster stays healthy without node-3: every live node agrees.
    assert leader_of(rest + [fresh], 30) in rest + [fresh]


def test_a_voter_restarted_on_a_wiped_data_dir_does_not_rejoin_and_gets_no_vote(procs):
    """Issue 13 item 2: a voter that lost its data dir used to rejoin
    silently under its old id, with no vote and no log — free to vote twice
    in one term. Now it is refused: it says why and how to replace it, the
    cluster goes on without it, and its vote does not count."""
    apps = start_apps(procs, 4)
    cluster = start_raft_cluster(procs, apps[:3])
    leader = leader_of(cluster, 30)
    # Every node has polled every other one, so each knows the others'
    # data dir incarnations (the polls report them).
    wait_until(lambda: all(p["reachable"] for n in cluster for p in n.status()["peers"]
                           if p["name"] != n.name), 15, "every node to have polled every peer")
    wiped, other = [n for n in cluster if n is not leader]

    wiped.proc.stop()
    shutil.rmtree(procs.log_dir / f"{wiped.name}-data")
    restart(procs, wiped)

    def refusal() -> str:
        return wiped.status()["raft"]["not_serving"] or ""
    wait_until(lambda: "litegate member replace" in refusal(), 30, "the wiped node to say it must be replaced")
    assert "data dir" in refusal(), refusal()
    r = write(wiped, "through-the-wiped-node", timeout=30)
    assert r.status_code == 503 and r.headers["litegate-error"] == "no-primary", r.text
    assert "litegate member replace" in r.text, r.text
    assert wiped.status()["role"] != "primary"

    # The other two go on taking writes.
    for i, node in enumerate([leader, other, leader]):
        r = write(node, f"without-the-wiped-node-{i}")
        assert r.status_code == 201, r.text

    # Its vote does not count: with the leader gone, the remaining healthy
    # voter must not be elected by the wiped one (1 of 3 votes is no
    # majority). Killed, so it hands nothing off. Elections run every
    # 150-300 ms; watch for 5 s.
    leader.proc.signal(signal.SIGKILL)
    leader.proc.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for node in (other, wiped):
            assert node.status()["role"] != "primary", f"{node.name} was elected with the wiped node's vote"
        time.sleep(0.2)

    # The old leader back: a majority again, and the wiped node is
    # replaced by a fresh one with a new id while it still runs.
    restart(procs, leader)
    rest = [leader, other]
    leader_of(rest, 30)
    fresh = start_new_node(procs, [spec_of(n, i + 1) for i, n in enumerate(cluster)], 4, f"{wiped.name}b", apps[3])
    out = member(["replace", wiped.name, *new_node_args(fresh, 4), "--admin", other.admin])
    assert out.returncode == 0, out.stderr
    assert f"replaced {wiped.name} by {fresh.name}" in out.stdout
    expected = {n.name: "voter" for n in rest} | {fresh.name: "voter"}
    assert members(other) == expected
    wait_until(lambda: fresh.status()["primary"] is not None, 15, "the fresh node to know the primary")
    r = write(fresh, "through-the-fresh-node")
    assert r.status_code == 201, r.text
    assert wiped.status()["role"] != "primary"


def test_bad_membership_changes_are_refused_with_the_reason(procs):
    apps = start_apps(procs, 3)
    cluster = start_raft_cluster(procs, apps)
    leader_of(cluster, 30)
    follower = next(n for n in cluster if n.status()["role"] == "replica")

    taken = {"id": 9, "name": "node-2", "cluster": "127.0.0.1:1", "public_url": "http://127.0.0.1:2"}
    r = httpx.post(f"{follower.admin}/members", json=taken, timeout=30, headers=ADMIN)
    assert r.status_code == 409, r.text
    assert "node-2" in r.text

    r = httpx.post(f"{follower.admin}/members", json={"id": 9, "name": "x"}, timeout=30, headers=ADMIN)
    assert r.status_code == 400, r.text
    assert "cluster" in r.text

    r = httpx.delete(f"{follower.admin}/members/nobody", timeout=30, headers=ADMIN)
    assert r.status_code == 400, r.text
    assert "not a member" in r.text

    out = member(["replace", "node-3", "--id", "3", "--name", "node-3", "--cluster", "127.0.0.1:1",
                  "--public-url", "http://127.0.0.1:2", "--admin", follower.admin])
    assert out.returncode == 1
    assert "new node.id" in out.stderr

    # Nothing changed.
    assert members(cluster[0]) == {"node-1": "voter", "node-2": "voter", "node-3": "voter"}
