"""A LiteFS primary cut off by a network partition stops being primary
before another node becomes one, and no acknowledged write is lost.

Three real-LiteFS nodes (litefs_nodes.py), each in a network namespace of
its own plugged into a switch (netns.HubNet: a bridge in a hub namespace).
The Raft cluster, LiteFS's replication and the writes all go over that
switch; each node's LiteFS API, app and lease listener stay on its
namespace's loopback. Clients live in the hub, so they reach exactly the
nodes the switch connects them to.

The test unplugs the primary's port for PARTITION_HOLD seconds. Packets are
then dropped silently both ways, so connections hang, as on a real network.
Meanwhile one poller per node, inside that node's namespace, samples its
LiteFS's `GET /info` `isPrimary` every 30 ms, stamped with CLOCK_MONOTONIC
(which every process on this machine shares, namespaces included).
Writers in the hub write through every node they can reach (the majority,
once the primary is cut off), and each app appends every note it commits
to a write log outside the FUSE mount (APP_WRITE_LOG), which survives the
database the old primary replaces when it rejoins.

What happens (docs/litefs.md "LiteFS without Consul"): the cut-off LiteFS
steps down about a TTL after its last renew and the majority elects a Raft
leader, but the majority's LiteFS replicas only look at the lease once
their replication stream from the old primary breaks, which behind a
silent partition is at the heal (or after minutes of TCP keepalive). So
without the relay the successor usually takes over after the heal. With
litegate's stream relay (lease.relay_listen, LiteFS's advertise-url on
every node) the relay drops those streams when the old session expires,
so the test holds the partition until a majority LiteFS is primary and a
write through the majority is acknowledged, and checks that both happened
before the heal. The test says which in its summary line (pytest -s) and,
in both runs, checks that:

- two LiteFS never said isPrimary at overlapping times, and the cut-off
  one's last `true` came before its successor's first;
- the cut-off LiteFS stepped down, the majority elected a Raft leader, and
  a LiteFS became primary again afterwards, with writes acknowledged by it
  (so the test cannot pass without a change of primary);
- every acknowledged write is in every node's database after healing;
- no app committed any write twice, and the cut-off primary's app
  committed nothing after its LiteFS stepped down.

Needs what test_litefs_lease.py needs, plus root with `ip` (iproute2) and
`nsenter` (util-linux) to make network namespaces; skips saying which is
missing."""

from __future__ import annotations

import collections
import json
import threading
import time

import httpx
import pytest

from harness import enter_netns, wait_until
from litefs_nodes import LiteNode, lease_cluster_in_namespaces, primaries, raft_leader, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

POLL_INTERVAL = 0.03
WRITERS = 3
# Above the longest litegate answer: routing.primary_wait (20 s), and
# upstream.timeout + 5 s for a write admitted by the cut-off primary.
CLIENT_TIMEOUT = 40.0
UPSTREAM_TIMEOUT = "3s"
# How long the primary stays cut off (without the relay).
PARTITION_HOLD = 8.0


@pytest.fixture(params=[False, True], ids=["advertise-litefs", "advertise-relay"])
def partitioned_cluster(procs, request):
    with lease_cluster_in_namespaces(procs, relay=request.param, upstream_timeout=UPSTREAM_TIMEOUT) as cluster:
        yield cluster


class PrimaryPoller:
    """Samples one node's LiteFS `isPrimary` from inside its namespace:
    (sent, answered, isPrimary or None when it did not answer)."""

    def __init__(self, node: LiteNode, stop: threading.Event):
        self.node = node
        self.stop = stop
        self.samples: list[tuple[float, float, bool | None]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        enter_netns(self.node.netns)
        with httpx.Client(timeout=1.0) as client:
            # Bounded by the test's stop, or about 10 minutes.
            for _ in range(20000):
                if self.stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    primary = bool(client.get(f"{self.node.api}/info").json().get("isPrimary"))
                except (httpx.HTTPError, ValueError):
                    primary = None
                self.samples.append((sent, time.monotonic(), primary))
                time.sleep(POLL_INTERVAL)

    def primary_runs(self) -> list[tuple[float, float]]:
        """The spans this LiteFS said it was primary: from the sending of
        the first `true` of a run to the answer of its last. Only a `false`
        ends a run; a sample with no answer could have been either."""
        runs, start, end = [], None, None
        for sent, answered, primary in self.samples:
            if primary:
                start = sent if start is None else start
                end = answered
            elif primary is False and start is not None:
                runs.append((start, end))
                start = None
        if start is not None:
            runs.append((start, end))
        return runs


class Writers:
    """Threads in the hub namespace, each writing notes with unique texts
    through the nodes in `targets`, in turn. `pause()` lets the writes in
    flight finish and sends no more until `resume()`."""

    def __init__(self, hub: str, nodes: list[LiteNode], stop: threading.Event):
        self.hub = hub
        self.targets = list(nodes)
        self.stop = stop
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.going = threading.Event()
        self.going.set()
        self.in_flight = 0
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(WRITERS)]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        enter_netns(self.hub)
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            for i in range(3000):
                while not self.going.wait(0.1):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                with self.lock:
                    if not self.going.is_set():
                        continue
                    self.in_flight += 1
                    via = self.targets[(i + k) % len(self.targets)]
                text = f"w{k}-{i}"
                sent = time.monotonic()
                try:
                    r = client.post(f"http://{via.host}:{via.gate.public_port}/notes", json={"text": text})
                    outcome = r.status_code
                    served_by = r.json().get("served_by") if r.status_code == 201 else None
                except (httpx.HTTPError, ValueError) as e:
                    outcome, served_by = repr(e), None
                with self.lock:
                    self.in_flight -= 1
                    self.results.append({"text": text, "via": via.name, "sent": sent, "done": time.monotonic(),
                                         "outcome": outcome, "served_by": served_by})
                time.sleep(0.03)

    def acknowledged(self, after: float = 0.0) -> list[dict]:
        with self.lock:
            return [r for r in self.results if r["outcome"] == 201 and r["sent"] >= after]

    def pause(self) -> None:
        with self.lock:
            self.going.clear()
        wait_until(lambda: self.in_flight == 0, timeout=CLIENT_TIMEOUT + 5, what="the writes in flight answered")

    def resume(self, targets: list[LiteNode]) -> None:
        with self.lock:
            self.targets = list(targets)
            self.going.set()


def replicated(nodes: list[LiteNode]) -> bool:
    """Every mount at the same LiteFS position (TXID and checksum)."""
    positions = set()
    for n in nodes:
        try:
            positions.add((n.mount / "db.sqlite3-pos").read_text().strip())
        except OSError:
            return False
    return len(positions) == 1


def app_writes(nodes: list[LiteNode]) -> list[dict]:
    entries = []
    for n in nodes:
        if n.write_log.exists():
            entries += [json.loads(line) for line in n.write_log.read_text().splitlines() if line.strip()]
    return entries


def first(samples, after: float, primary: bool):
    """The first sample sent after `after` that said `primary`, or None."""
    return next((x for x in samples if x[0] > after and x[2] is primary), None)


def test_a_partitioned_primary_steps_down_before_another_node_becomes_primary(partitioned_cluster):
    net, nodes = partitioned_cluster
    relay = nodes[0].relay_port is not None
    [old_name] = primaries(nodes)
    assert raft_leader(nodes) == old_name, "LiteFS's primary is litegate's Raft leader"
    old = next(n for n in nodes if n.name == old_name)
    majority = [n for n in nodes if n is not old]
    majority_names = {n.name for n in majority}

    stop = threading.Event()
    pollers = {n.name: PrimaryPoller(n, stop) for n in nodes}
    writers = Writers(net.hub, nodes, stop)
    try:
        wait_until(lambda: len(writers.acknowledged()) >= 15, timeout=30, what="15 writes acknowledged")
        # LiteFS replicates asynchronously: a write its primary committed an
        # instant before the cut, not yet streamed to a replica, is lost in
        # any LiteFS failover, with or without litegate. So the cut comes
        # once the replicas have caught up; the writes sent after it
        # (forwarded to the cut-off primary, held, re-routed) are the ones
        # this test is about.
        writers.pause()
        wait_until(lambda: replicated(nodes), timeout=15, what="every mount at the primary's position")
        cut_at = time.monotonic()
        net.unplug(old.index - 1)
        writers.resume(majority)

        wait_until(lambda: first(pollers[old.name].samples, cut_at, False) is not None, timeout=20,
                   what=f"{old.name}'s LiteFS no longer primary")
        wait_until(lambda: raft_leader(majority) in majority_names, timeout=20,
                   what="a Raft leader elected in the majority")
        old_down = first(pollers[old.name].samples, cut_at, False)

        def successor_sampled():
            candidates = [x for n in nodes if (x := first(pollers[n.name].samples, old_down[0], True))]
            return min(candidates, key=lambda x: x[0]) if candidates else None

        if relay:
            # The relay drops the majority's streams to the cut-off primary
            # once the new leader expires its session, so a majority LiteFS
            # takes over with the partition still in place.
            wait_until(lambda: successor_sampled() is not None, timeout=30,
                       what="a majority LiteFS primary during the partition")
            wait_until(lambda: writers.acknowledged(after=successor_sampled()[1]), timeout=30,
                       what="a write acknowledged through the majority during the partition")
        else:
            # Hold the partition past the TTL the new leader waits before it
            # expires the old primary's session, and the lock delay after it.
            time.sleep(max(0.0, cut_at + PARTITION_HOLD - time.monotonic()))
        net.plug(old.index - 1)
        healed_at = time.monotonic()

        wait_until(lambda: successor_sampled() is not None, timeout=45, what="a LiteFS primary again")
        successor_first_true = successor_sampled()
        [successor] = [n for n in nodes if successor_first_true in pollers[n.name].samples]
        wait_until(lambda: len(writers.acknowledged(after=successor_first_true[1])) >= 15, timeout=30,
                   what=f"15 writes acknowledged once {successor.name} was primary")
        writers.pause()
        acknowledged = {r["text"] for r in writers.acknowledged()}

        def settled() -> bool:
            try:
                return all(acknowledged <= {x["text"] for x in n.notes()} for n in nodes)
            except (OSError, httpx.HTTPError, ValueError):
                return False

        wait_until(settled, timeout=45, what="every acknowledged write on every node")
        # A second more of sampling, for a second primary that came late.
        time.sleep(1)
    finally:
        stop.set()
        for t in [*writers.threads, *(p.thread for p in pollers.values())]:
            t.join(timeout=CLIENT_TIMEOUT + 5)
    assert not any(t.is_alive() for t in writers.threads), "a writer still running"

    # Never two primaries: no two nodes' primary spans overlap.
    spans = sorted((start, end, name) for name, p in pollers.items() for start, end in p.primary_runs())
    for (s1, e1, n1), (s2, e2, n2) in zip(spans, spans[1:]):
        assert n1 == n2 or e1 < s2, f"{n1} primary over {s1:.3f}-{e1:.3f} and {n2} over {s2:.3f}-{e2:.3f}"
    # The cut-off primary stepped down before anyone took over.
    old_last_true = max(x for x in pollers[old.name].samples if x[2] and x[0] < old_down[0])
    assert old_last_true[1] < successor_first_true[0], (
        f"{old.name} said isPrimary until {old_last_true[1]:.3f}, {successor.name} from {successor_first_true[0]:.3f}")
    assert primaries(nodes) == [successor.name], "one LiteFS primary at the end, the one that took over"

    # Writes went on once the new primary had the lease, and reached it.
    after_failover = writers.acknowledged(after=successor_first_true[1])
    assert len(after_failover) >= 15
    assert {r["served_by"] for r in after_failover} == {f"app-{successor.name}"}

    # No acknowledged write lost: in every node's database, each once.
    for n in nodes:
        texts = collections.Counter(x["text"] for x in n.notes())
        missing = acknowledged - set(texts)
        assert not missing, f"{len(missing)} acknowledged writes missing on {n.name}: {sorted(missing)[:10]}"
        twice = [t for t, c in texts.items() if c > 1]
        assert not twice, f"applied twice on {n.name}: {twice[:10]}"

    # The apps' own logs: no write committed twice anywhere (including
    # writes the old primary committed and then lost in the rejoin), and
    # none by the cut-off primary's app after its LiteFS stepped down.
    log = app_writes(nodes)
    twice = [t for t, c in collections.Counter(e["text"] for e in log).items() if c > 1]
    assert not twice, f"committed twice: {twice[:10]}"
    assert acknowledged <= {e["text"] for e in log}
    primary_again = successor_first_true[0] if successor is old else float("inf")
    late = [e for e in log if e["node"] == f"app-{old.name}" and old_down[1] < e["t"] < primary_again]
    assert not late, f"{old.name}'s app committed writes after its LiteFS stepped down: {late[:5]}"

    if relay:
        assert successor is not old and successor_first_true[0] < healed_at, (
            f"{successor.name} became primary {successor_first_true[0] - healed_at:.2f} s after the heal")
        during_partition = [r for r in after_failover if r["done"] < healed_at]
        assert during_partition, "no write acknowledged through the majority during the partition"

    outcomes = collections.Counter(str(r["outcome"]) for r in writers.results)
    during = "during" if successor_first_true[0] < healed_at else "after"
    first_write = min(r["done"] for r in writers.acknowledged(after=cut_at))
    # Figures for the report (pytest -s), not assertions.
    print(f"\n{'relay' if relay else 'no relay'}, partition held {healed_at - cut_at:.1f} s: {old.name}'s LiteFS "
          f"last said primary {old_last_true[1] - cut_at:.2f} s after the cut; {successor.name} primary "
          f"{successor_first_true[0] - cut_at:.2f} s after it ({during} the partition); first write acknowledged "
          f"{first_write - cut_at:.2f} s after it; outcomes {dict(outcomes)}")
