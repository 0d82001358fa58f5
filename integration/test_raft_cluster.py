"""primary.mode = "raft": real litegate nodes elect the primary among
themselves on loopback. Each node fronts its own instance of the engine
upstream, whose /journal records every write it takes with the
`Litegate-Term` litegate stamped on it and the system-wide monotonic clock,
so the tests can order writes across nodes and check fencing."""

import signal
import subprocess
import threading
import time

import httpx
import pytest

from harness import (
    INTEGRATION,
    cluster_auth,
    TcpRelay,
    leader_of,
    litegate_bin,
    restart,
    start_raft_cluster,
    wait_for_port,
    wait_until,
)

FIXTURES = INTEGRATION / "fixtures"

# What the litegate CLI sends with admin actions (a browser page cannot).
ADMIN = {"litegate-admin": "1"}


def start_apps(procs, n):
    return [procs.uvicorn(f"app-{i}", "upstream:app", FIXTURES, env={"APP_NODE": f"app-{i}"})[1]
            for i in range(1, n + 1)]


def journal(app_url: str) -> list[dict]:
    return httpx.get(f"{app_url}/journal", timeout=10).json()


def all_writes(apps: list[str]) -> list[dict]:
    return sorted((e for app in apps for e in journal(app)), key=lambda e: e["at_ns"])


def write(node, ident: str, timeout: float = 15) -> httpx.Response:
    return httpx.post(f"{node.url}/journal", content=ident, timeout=timeout)


class Writer:
    """Writes a steady stream of uniquely numbered entries through the given
    nodes in turn, one at a time, recording every answer."""

    def __init__(self, nodes, prefix: str, pause: float = 0.005):
        self.nodes = nodes
        self.prefix = prefix
        self.pause = pause
        self.results: list[tuple[str, int | str, str]] = []
        # When each write was sent and answered (time.monotonic()), parallel
        # to results.
        self.sent_at: list[float] = []
        self.answered_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        with httpx.Client(timeout=20) as client:
            while not self._stop.is_set() and i < 20000:
                node = self.nodes[i % len(self.nodes)]
                ident = f"{self.prefix}-{i}"
                sent = time.monotonic()
                try:
                    r = client.post(f"{node.url}/journal", content=ident)
                    self.results.append((ident, r.status_code, r.headers.get("litegate-error", "")))
                except httpx.HTTPError as e:
                    self.results.append((ident, "error", repr(e)))
                self.sent_at.append(sent)
                self.answered_at.append(time.monotonic())
                i += 1
                time.sleep(self.pause)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the writer did not finish"

    def wait_for(self, n: int, timeout: float = 20):
        wait_until(lambda: len(self.results) >= n, timeout, f"{n} writes")


@pytest.fixture
def apps(procs):
    return start_apps(procs, 3)


@pytest.fixture
def cluster(procs, apps):
    return start_raft_cluster(procs, apps)


def app_of(node, apps):
    return apps[int(node.name.split("-")[1]) - 1]


def test_one_leader_takes_every_write(cluster, apps):
    leader = leader_of(cluster)
    status = leader.status()
    assert status["mode"] == "raft" and status["role"] == "primary"
    assert status["raft"]["state"] == "Leader" and status["raft"]["leader"] == leader.name
    replicas = [n for n in cluster if n is not leader]
    for n in replicas:
        s = n.status()
        assert s["role"] == "replica" and s["primary"] == leader.name and s["term"] == status["term"]
        assert httpx.get(f"{n.admin}/primary", timeout=5).status_code == 503
    assert httpx.get(f"{leader.admin}/primary", timeout=5).status_code == 200

    for i, node in enumerate(cluster):
        r = write(node, f"via-{node.name}")
        assert r.status_code == 201, r.text
        assert r.headers["litegate-served-by"] == leader.name
    landed = journal(app_of(leader, apps))
    assert [e["id"] for e in landed] == [f"via-{n.name}" for n in cluster]
    assert {(e["term"], e["role"]) for e in landed} == {(str(status["term"]), "primary")}
    for n in replicas:
        assert journal(app_of(n, apps)) == []

    metrics = leader.metrics()
    assert f"litegate_raft_term {status['term']}" in metrics
    assert "litegate_is_primary 1" in metrics
    assert leader.metric("litegate_raft_is_leader") == 1
    assert leader.metric("litegate_raft_last_quorum_ack_seconds") >= 0
    assert leader.metric("litegate_raft_committed_index") >= 1
    # No -1 sentinel: the age reads 0 where raft_is_leader says it does not apply.
    assert replicas[0].metric("litegate_raft_is_leader") == 0
    assert replicas[0].metric("litegate_raft_last_quorum_ack_seconds") == 0

    out = subprocess.run([str(litegate_bin()), "status", "--admin", leader.admin],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert "raft      Leader" in out.stdout and "matched" in out.stdout


def test_sigkill_of_the_leader_fails_over(cluster, apps):
    leader = leader_of(cluster)
    old_term = leader.status()["term"]
    leader.proc.signal(signal.SIGKILL)
    leader.proc.wait(10)
    survivors = [n for n in cluster if n is not leader]
    for n in survivors:
        r = write(n, f"after-kill-via-{n.name}")
        assert r.status_code == 201, r.text
    new_leader = leader_of(survivors)
    assert new_leader is not leader and new_leader.status()["term"] > old_term
    assert [e["id"] for e in journal(app_of(new_leader, apps))] == [f"after-kill-via-{n.name}" for n in survivors]


def test_a_hung_leader_takes_no_write_under_its_old_term(cluster, apps):
    leader = leader_of(cluster)
    old_term = leader.status()["term"]
    survivors = [n for n in cluster if n is not leader]
    # One stream through the survivors; one through the leader, which
    # stalls while the leader is stopped and must not land under the old
    # term when it resumes.
    with Writer(survivors, "s") as steady, Writer([leader], "l") as through_leader:
        steady.wait_for(20)
        through_leader.wait_for(5)
        leader.proc.signal(signal.SIGSTOP)
        try:
            new_leader = leader_of(survivors)
            for i in range(6):
                r = write(survivors[i % 2], f"during-stop-{i}")
                assert r.status_code == 201 and r.headers["litegate-served-by"] == new_leader.name, r.text
        finally:
            leader.proc.signal(signal.SIGCONT)
        # Writes that were on their way to the stopped leader complete now:
        # its lease has lapsed, so it refuses them (421) or forwards them.
        wait_until(lambda: leader.status()["role"] == "replica", 15, "the old leader to step down")
        n, m = len(steady.results), len(through_leader.results)
        steady.wait_for(n + 20)
        through_leader.wait_for(m + 10)
    assert new_leader.status()["term"] > old_term

    writes = all_writes(apps)
    first_new = next(e for e in writes if int(e["term"]) > old_term)
    late = [e for e in writes if int(e["term"]) == old_term and e["at_ns"] > first_new["at_ns"]]
    assert late == [], f"writes under the deposed term after the new term began ({first_new}): {late}"
    assert all(e["role"] == "primary" for e in writes)
    failed = [r for r in steady.results + through_leader.results if r[1] != 201]
    assert failed == [], failed
    landed = sorted(e["id"] for e in writes if not e["id"].startswith("during-stop-"))
    assert landed == sorted(r[0] for r in steady.results + through_leader.results)


def test_handoff_under_load_loses_and_fails_nothing(cluster, apps):
    leader = leader_of(cluster)
    with Writer(cluster, "h", pause=0.002) as writer:
        writer.wait_for(50)
        out = subprocess.run([str(litegate_bin()), "handoff", "--admin", leader.admin],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"{leader.name} handed leadership to" in out.stdout
        n = len(writer.results)
        writer.wait_for(n + 50)
    new_leader = leader_of(cluster)
    assert new_leader is not leader
    assert new_leader.name in out.stdout

    failed = [r for r in writer.results if r[1] != 201]
    assert failed == [], failed
    landed = [e["id"] for e in all_writes(apps)]
    sent = [r[0] for r in writer.results]
    assert sorted(landed) == sorted(sent), "every acknowledged write landed exactly once"
    assert {e["node"] for e in all_writes(apps)} == {"app-" + leader.name.split("-")[1],
                                                      "app-" + new_leader.name.split("-")[1]}

    # Handing off to a named node, and refusals that explain themselves.
    target = next(n for n in cluster if n is not new_leader)
    r = httpx.post(f"{new_leader.admin}/handoff", headers=ADMIN, params={"to": target.name}, timeout=30)
    assert r.status_code == 200, r.text
    assert leader_of(cluster) is target
    r = httpx.post(f"{new_leader.admin}/handoff", headers=ADMIN, timeout=30)
    assert r.status_code == 409 and f"the leader is {target.name}" in r.text
    r = httpx.post(f"{target.admin}/handoff", headers=ADMIN, params={"to": "nobody"}, timeout=30)
    assert r.status_code == 400 and "not an app node" in r.text


def test_sigterm_on_the_leader_hands_off_first(cluster, apps):
    leader = leader_of(cluster)
    leader.proc.signal(signal.SIGTERM)
    assert leader.proc.wait(20) == 0
    assert "leadership handed off" in leader.proc.output()
    survivors = [n for n in cluster if n is not leader]
    new_leader = leader_of(survivors, timeout=5)
    r = write(survivors[0], "after-sigterm")
    assert r.status_code == 201 and r.headers["litegate-served-by"] == new_leader.name


def test_restart_keeps_vote_and_log_and_identity_is_checked(procs, cluster, apps):
    leader = leader_of(cluster)
    assert write(cluster[1], "logged").status_code == 201
    one, two, three = cluster
    wait_until(lambda: two.status()["raft"]["last_log_index"] == leader.status()["raft"]["last_log_index"],
               10, "node-2 to hold the leader's log")
    for n in (one, three):
        n.proc.signal(signal.SIGKILL)
        n.proc.wait(10)
    before = two.status()["raft"]
    two.proc.signal(signal.SIGKILL)
    two.proc.wait(10)

    restart(procs, two)
    after = two.status()["raft"]
    # Alone it cannot be elected, so whatever it reports came from disk.
    assert after["term"] == before["term"]
    assert after["last_log_index"] == before["last_log_index"]
    assert after["last_log_index"] is not None
    assert after["state"] in ("Follower", "Candidate")
    two.proc.signal(signal.SIGKILL)
    two.proc.wait(10)

    # node-3's config pointed at node-1's data directory: refused.
    bad = two.config_path.parent / "node-3-wrong-dir.toml"
    text = three.config_path.read_text().replace("node-3-data", "node-1-data")
    bad.write_text(text)
    out = subprocess.run([str(litegate_bin()), "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=20, env={**three.env, "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    assert "belongs to node 1" in out.stderr and "node.id = 3" in out.stderr


def test_without_bootstrap_nobody_elects_itself(procs, apps):
    nodes = start_raft_cluster(procs, apps, bootstrap=False)
    time.sleep(1.5)  # several election timeouts
    for n in nodes:
        s = n.status()
        assert s["role"] == "unknown" and s["primary"] is None and s["raft"]["term"] == 0
    assert "has not joined a Raft cluster yet" in nodes[0].proc.output()
    for n in nodes:
        assert "has not joined a Raft cluster yet" in n.status()["raft"]["not_serving"]
    r = write(nodes[0], "held", timeout=15)
    assert r.status_code == 503 and r.headers["litegate-error"] == "no-primary"
    assert "has not joined a Raft cluster yet" in r.text and "--bootstrap" in r.text


def test_a_storage_error_ends_the_process(procs, cluster, apps):
    """An authenticated peer's malformed append (entries that leave a gap
    after the follower's log) is refused by the log store; the storage
    error stops Raft, and the process exits non-zero with one line saying
    what failed, instead of staying up with Raft shut down."""
    import json
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    lead = leader.status()["raft"]
    wait_until(lambda: follower.status()["raft"]["last_log_index"] == lead["last_log_index"], 10,
               "the follower to hold the leader's log")
    term, last = lead["term"], lead["last_log_index"]
    cluster_id = json.loads((procs.log_dir / f"{follower.name}-data" / "identity.json").read_text())["cluster_id"]
    secret = (procs.log_dir / "cluster.secret").read_text().strip()
    gap = {"vote": {"leader_id": {"term": term, "voted_for": lead["node_id"]}, "committed": True},
           "prev_log_id": {"leader_id": term, "index": last},
           "entries": [{"log_id": {"leader_id": term, "index": last + 5}, "payload": "Blank"}],
           "leader_commit": None}
    path = "/_litegate/raft/append"
    try:
        httpx.post(f"http://127.0.0.1:{follower.cluster_port}{path}", content=json.dumps(gap),
                   headers={**cluster_auth(secret, "POST", path), "litegate-cluster-id": cluster_id}, timeout=10)
    except httpx.HTTPError:
        pass  # the process may end before it answers
    assert follower.proc.wait(15) == 74
    out = follower.proc.output()
    assert "Raft stopped on a fatal error" in out and "refused to append log entry" in out, out
    # The data dir holds no gap: the node starts again and follows.
    restart(procs, follower)
    wait_until(lambda: follower.status()["raft"]["state"] == "Follower", 15, "the restarted node to follow")
    assert write(follower, "after-restart").status_code == 201


def test_a_copied_identity_is_refused_naming_both_addresses(procs, cluster, apps):
    """node-3 restarted with node-2's [node] section (and a fresh data dir)
    at node-3's address: the leader's messages for node 3 reach it, and it
    ends with a message naming both addresses; the real node-2 keeps
    working."""
    leader = leader_of(cluster)
    one, two, three = cluster
    three.proc.signal(signal.SIGKILL)
    three.proc.wait(10)
    text = three.config_path.read_text()
    copied = (text.replace('[node]\nid = 3\nname = "node-3"', '[node]\nid = 2\nname = "node-2"')
              .replace("node-3-data", "node-3-copy-data"))
    assert copied != text and 'id = 2\nname = "node-2"' in copied
    path = three.config_path.parent / "node-3-copied.toml"
    path.write_text(copied)
    copy = procs.litegate("node-3-copy", ["run", "--config", str(path)], env=three.env)
    assert copy.wait(20) == 78
    out = copy.output()
    assert "two processes claim node 2" in out, out
    assert f"127.0.0.1:{three.cluster_port}" in out and f"127.0.0.1:{two.cluster_port}" in out, out
    assert leader_of([one, two]) in (one, two)
    assert write(two, "real-node-2").status_code == 201


def test_a_lagging_follower_catches_up_by_snapshot_after_a_purge(procs, apps):
    """Snapshots every 2 entries, nothing kept after them: a follower that
    was down while the others moved leadership back and forth finds the
    log it missed purged, and is sent the snapshot."""
    small = lambda name: {"LITEGATE_CLUSTER_SNAPSHOT_ENTRIES": "2"}  # noqa: E731
    nodes = start_raft_cluster(procs, apps, node_env=small)
    leader = leader_of(nodes)
    lagging = next(n for n in nodes if n is not leader)
    wait_until(lambda: lagging.status()["raft"]["last_log_index"] == leader.status()["raft"]["last_log_index"],
               10, "the follower to catch up")
    missed_from = lagging.status()["raft"]["last_log_index"]
    lagging.proc.signal(signal.SIGKILL)
    lagging.proc.wait(10)
    live = [n for n in nodes if n is not lagging]
    # Each handoff elects a new leader, which appends an entry.
    for _ in range(6):
        current = leader_of(live)
        r = httpx.post(f"{current.admin}/handoff", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        if (current.status()["raft"]["purged_index"] or -1) > missed_from + 1:
            break
    current = leader_of(live)
    purged = current.status()["raft"]["purged_index"]
    assert purged is not None and purged > missed_from, current.status()["raft"]

    restart(procs, lagging)
    lead = current.status()["raft"]
    wait_until(lambda: lagging.status()["raft"]["last_log_index"] == current.status()["raft"]["last_log_index"],
               20, "the restarted follower to catch up")
    caught = lagging.status()["raft"]
    # The entries after missed_from up to the purge exist nowhere but in the
    # snapshot: the follower holds a snapshot at or past the purge.
    assert caught["snapshot_index"] is not None and caught["snapshot_index"] >= purged, (caught, lead)
    assert write(lagging, "after-snapshot").status_code == 201


def test_bootstrap_on_every_node_forms_one_cluster(procs, apps):
    nodes = start_raft_cluster(procs, apps, bootstrap="all")
    leader = leader_of(nodes)
    for n in nodes:
        r = write(n, f"via-{n.name}")
        assert r.status_code == 201, r.text
        assert r.headers["litegate-served-by"] == leader.name
        assert n.status()["raft"]["not_serving"] is None
    for n in nodes:
        assert "another cluster" not in n.proc.output()


def test_two_app_nodes_and_a_witness_fail_over(procs):
    apps = start_apps(procs, 2)
    nodes = start_raft_cluster(procs, apps, witnesses=1)
    app_nodes, witness = nodes[:2], nodes[2]
    w = witness.status()
    assert w["raft"]["witness"] is True and w["upstream"] is None
    leader = leader_of(nodes)
    assert leader is not witness
    leader.proc.signal(signal.SIGKILL)
    leader.proc.wait(10)
    survivor = next(n for n in app_nodes if n is not leader)
    r = write(survivor, "after-kill")
    assert r.status_code == 201, r.text
    assert r.headers["litegate-served-by"] == survivor.name
    assert leader_of([survivor, witness]) is survivor
    assert httpx.get(f"{witness.admin}/readyz", timeout=5).status_code == 200


def test_two_voters_without_a_witness_are_refused(tmp_path):
    config = tmp_path / "two.toml"
    config.write_text(
        '[node]\nid = 1\nname = "a"\n[primary]\nmode = "raft"\n[cluster]\nlisten = "127.0.0.1:7070"\n'
        f'data_dir = "{tmp_path}"\npeers = [\n'
        ' { id = 1, name = "a", cluster = "127.0.0.1:7070", public_url = "http://127.0.0.1:8080" },\n'
        ' { id = 2, name = "b", cluster = "127.0.0.1:7071", public_url = "http://127.0.0.1:8081" },\n]\n')
    out = subprocess.run([str(litegate_bin()), "check", "--config", str(config)],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "cluster.peers" in out.stderr and "static" in out.stderr and "witness" in out.stderr


def test_role_file_hooks_and_exec_if_primary(procs, apps, tmp_path):
    def hook_env(name):
        d = tmp_path / f"hooks-{name}"
        d.mkdir()
        line = "$LITEGATE_ROLE $LITEGATE_TERM $LITEGATE_PRIMARY"
        return {"LITEGATE_HOOKS_ROLE_FILE": f"{d}/role",
                "LITEGATE_HOOKS_ON_PROMOTE": f"echo promote {line} >> {d}/events",
                "LITEGATE_HOOKS_ON_DEMOTE": f"echo demote {line} >> {d}/events"}

    nodes = start_raft_cluster(procs, apps, node_env=hook_env)
    leader = leader_of(nodes)
    term = leader.status()["term"]

    def hook_dir(n):
        return tmp_path / f"hooks-{n.name}"

    wait_until(lambda: all((hook_dir(n) / "role").exists() for n in nodes), 10, "role files")
    wait_until(lambda: (hook_dir(leader) / "role").read_text() == "primary\n", 10, "the leader's role file")
    for n in nodes:
        if n is not leader:
            wait_until(lambda n=n: (hook_dir(n) / "role").read_text() == f"replica {leader.name}\n", 10,
                       f"{n.name}'s role file")
    wait_until(lambda: (hook_dir(leader) / "events").exists(), 10, "on_promote")
    assert f"promote primary {term} {leader.name}" in (hook_dir(leader) / "events").read_text()

    # exec --if-primary: runs on the leader, with its exit code; skipped
    # on a replica, which exits 0.
    marker = tmp_path / "ran"
    cmd = ["sh", "-c", f"echo ran >> {marker}; exit 3"]
    on_leader = subprocess.run([str(litegate_bin()), "exec", "--if-primary", "--admin", leader.admin, "--", *cmd],
                               capture_output=True, text=True, timeout=20)
    assert on_leader.returncode == 3 and marker.read_text() == "ran\n"
    replica = next(n for n in nodes if n is not leader)
    on_replica = subprocess.run([str(litegate_bin()), "exec", "--if-primary", "--admin", replica.admin, "--", *cmd],
                                capture_output=True, text=True, timeout=20)
    assert on_replica.returncode == 0 and "skipped" in on_replica.stdout and leader.name in on_replica.stdout
    assert marker.read_text() == "ran\n"

    r = httpx.post(f"{leader.admin}/handoff", headers=ADMIN, params={"to": replica.name}, timeout=30)
    assert r.status_code == 200, r.text
    wait_until(lambda: (hook_dir(leader) / "role").read_text() == f"replica {replica.name}\n", 10,
               "the old leader's role file")
    wait_until(lambda: "demote" in (hook_dir(leader) / "events").read_text(), 10, "on_demote")
    wait_until(lambda: (hook_dir(replica) / "events").exists(), 10, "on_promote on the new leader")
    promoted = (hook_dir(replica) / "events").read_text().split()
    assert promoted[:2] == ["promote", "primary"] and int(promoted[2]) > term and promoted[3] == replica.name
    demoted = (hook_dir(leader) / "events").read_text().splitlines()[-1].split()
    assert demoted[0] == "demote" and demoted[1] in ("replica", "unknown")


SLOW_ELECTIONS = 'heartbeat = "50ms"\nelection_timeout = ["1s", "2s"]\n'


def start_again(procs, node, label: str) -> None:
    node.proc = procs.litegate(f"{node.name}-{label}", ["run", "--config", str(node.config_path)], env=node.env)
    wait_for_port(node.public_port, node.proc)
    wait_for_port(node.cluster_port, node.proc)


def is_primary(node) -> bool:
    try:
        return httpx.get(f"{node.admin}/status", timeout=0.1).json()["role"] == "primary"
    except httpx.HTTPError:
        return False


def test_a_restarted_follower_does_not_help_elect_anyone_while_the_old_lease_runs(procs, apps):
    """The leader's write lease relies on its followers not voting for
    `election_timeout` max after a heartbeat. Each try: a challenger C cut
    off from the leader's heartbeats until it campaigns at every tick; the
    leader L frozen just after its last quorum acknowledgement; the other
    follower R killed and started again, so it forgot it acknowledged L.
    If R votes for C at once, C leads a new term and takes writes while L,
    woken inside its lease, still admits the writes queued for it."""
    cutoff = TcpRelay(None)
    nodes = start_raft_cluster(procs, apps, extra=SLOW_ELECTIONS, reached_at={"node-3": cutoff.port})
    challenger = nodes[2]
    cutoff.target = challenger.cluster_port
    leader_of(nodes, timeout=20)
    # Streams per node, so a stopped node holds up only its own, and
    # several writes are queued at the frozen leader.
    writers = [Writer([n], f"via-{n.name}-{k}", pause=0.002) for n in nodes for k in range(3)]
    for w in writers:
        w.__enter__()
    try_started_ns = []
    try:
        for attempt in range(6):
            leader = leader_of(nodes, timeout=20)
            if leader is challenger:
                r = httpx.post(f"{leader.admin}/handoff", headers=ADMIN, params={"to": nodes[0].name}, timeout=30)
                assert r.status_code == 200, r.text
                leader = leader_of(nodes, timeout=20)
            restarted = next(n for n in nodes if n is not leader and n is not challenger)
            time.sleep(0.3)
            cutoff.cut()
            # Past its lease (2 s) and election timeout (up to 2 s).
            time.sleep(4.3)
            leader.proc.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try_started_ns.append(time.monotonic_ns())
            restarted.proc.signal(signal.SIGKILL)
            restarted.proc.wait(10)
            start_again(procs, restarted, f"try{attempt}")
            # Wake the leader inside its 1 s write lease: as soon as the
            # challenger took over, if it can.
            while time.monotonic() - stopped_at < 0.85 and not is_primary(challenger):
                time.sleep(0.01)
            leader.proc.signal(signal.SIGCONT)
            cutoff.restore()
            time.sleep(1.0)
    finally:
        cutoff.close()
        for n in nodes:
            n.proc.signal(signal.SIGCONT)
        for w in writers:
            w.__exit__(None, None, None)

    writes = all_writes(apps)
    assert len(writes) > 100, "the write streams kept landing"
    interleaved, newest = [], 0
    for e in writes:
        term = int(e["term"])
        if term < newest:
            interleaved.append(e)
        newest = max(newest, term)
    # The apps stamp writes with the same system-wide monotonic clock.
    tries_hit = sorted({sum(1 for t in try_started_ns if t <= e["at_ns"]) for e in interleaved})
    assert interleaved == [], (
        f"in tries {tries_hit} of {len(try_started_ns)}, "
        f"{len(interleaved)} writes landed under a term older than one already written: "
        f"{[(e['id'], e['term'], e['node']) for e in interleaved[:10]]}")


def test_a_dead_app_on_the_leader_moves_leadership_and_fails_no_write(procs):
    """Regression (issue 13 item 5): with the leader's app stopped and its
    litegate alive, every write got 502 for as long as anyone waited. Now
    the leader hands off to a node whose app is up once its own app has been
    down for `primary.app_down_handoff`, and the writes meanwhile are held,
    not failed."""
    started = [procs.uvicorn(f"app-{i}", "upstream:app", FIXTURES, env={"APP_NODE": f"app-{i}"})
               for i in range(1, 4)]
    apps = [url for _, url in started]
    cluster = start_raft_cluster(procs, apps)
    leader = leader_of(cluster)
    dead_app = started[int(leader.name.split("-")[1]) - 1][0]
    with Writer(cluster, "a", pause=0.002) as writer:
        writer.wait_for(50)
        killed_at = time.monotonic()
        dead_app.signal(signal.SIGKILL)
        dead_app.wait(10)
        n = len(writer.results)
        writer.wait_for(n + 100, timeout=30)
    new_leader = leader_of(cluster)
    assert new_leader is not leader
    assert leader.proc.popen.poll() is None, "the old leader's litegate stays up"
    sent_after_kill = [(r, answered) for r, sent, answered
                       in zip(writer.results, writer.sent_at, writer.answered_at) if sent > killed_at]
    first_ok = next(answered for r, answered in sent_after_kill if r[1] == 201)
    print(f"app killed on {leader.name} -> first successful write after "
          f"{first_ok - killed_at:.2f}s (new leader {new_leader.name})")

    # A write already at the app when it was killed may have been taken:
    # it is answered `indeterminate`, never sent again (one per writer).
    failed = [r for r in writer.results if r[1] != 201]
    in_flight_at_kill = [r for r in failed if r[2] == "indeterminate"]
    assert len(in_flight_at_kill) <= 1, failed
    assert [r for r in failed if r not in in_flight_at_kill] == [], failed
    landed = [e["id"] for app in apps if app != apps[int(leader.name.split("-")[1]) - 1] for e in journal(app)]
    taken_after_kill = [r[0] for r, _ in sent_after_kill if r[1] == 201]
    assert taken_after_kill and set(taken_after_kill) <= set(landed), "writes sent after the kill landed on a live app"
    status = leader.status()
    me = next(p for p in status["raft"]["peers"] if p["name"] == leader.name)
    assert me["app_up"] is False, status


def test_member_list_shows_the_membership_from_the_raft_log(cluster):
    """`litegate member list` and `GET /members` read the membership the
    Raft log holds (seeded from cluster.peers by --bootstrap), with each
    member's name, address and public URL as the log records them."""
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    doc = httpx.get(f"{follower.admin}/members", timeout=10).json()
    members = {m["name"]: m for m in doc["members"]}
    assert set(members) == {n.name for n in cluster}
    for node in cluster:
        m = members[node.name]
        assert m["role"] == "voter" and m["cluster"] == f"127.0.0.1:{node.cluster_port}", m
        assert m["public_url"] == node.url, m
    assert doc["joint"] is False and doc["log_index"] is not None
    assert {m["name"] for m in follower.status()["raft"]["membership"]["members"]} == set(members)

    out = subprocess.run([str(litegate_bin()), "member", "list", "--admin", follower.admin],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for node in cluster:
        assert node.name in out.stdout and f"127.0.0.1:{node.cluster_port}" in out.stdout, out.stdout
    assert "voter" in out.stdout
