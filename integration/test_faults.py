"""Fault injection, Jepsen-style (issue 10): a 3-node raft cluster of real
litegate binaries, each in front of its own fixtures/write_app.py, takes a
steady stream of writes through random nodes while the test kills and
restarts nodes (SIGKILL), pauses them (SIGSTOP/SIGCONT, 0.2-3 s), hands
leadership off (`POST /handoff`) and partitions the network. Then it heals
everything, checks the cluster takes writes again, and checks the whole
history the apps recorded against the answers the clients got:

- every acknowledged (2xx) write was recorded by exactly one app;
- no write was recorded twice, on one app or across apps;
- no write was recorded under a term older than one whose first write was
  already recorded (the apps stamp CLOCK_MONOTONIC, which every process on
  this machine shares, network namespaces included);
- every term's writes came from one app, stamped `Litegate-Role: primary`;
- no write litegate answered as never sent (anything but 2xx and `502
  indeterminate`) was recorded by any app;
- a `502` answer to a write is always `Litegate-Error: indeterminate`.

A failed client request (connection cut, client timeout) may or may not
have been applied; it is only checked for being recorded at most once.

**Partitions.** Each node (its litegate and its app) runs in a network
namespace the test creates (`lgt-<random>-N`), joined to each other node
by a veth pair; node N's cluster listener is on 10.77.0.N, an address that
exists only inside these namespaces. A partition between two nodes
replaces the static neighbour (ARP) entries on both ends of their veth
with a MAC nobody has, so packets are silently dropped both ways — as on a
real network, connections hang rather than fail — and healing restores the
real MACs. (This kernel has no netfilter or tc qdiscs/classifiers, so
iptables/nft/netem are not options; the neighbour table needs nothing but
iproute2.) The test reaches each node's public, admin and app ports
through relays on root-namespace loopback that connect into the node's
namespace, so clients are never partitioned from the node they talk to;
while a node's litegate is down, its public relay answers `599` (what a
refused connection tells a direct client: nothing was sent).

Without network namespaces (not root, no `ip`, or
`LITEGATE_FAULT_NET=relay`), every node runs on loopback and the others
reach its cluster listener through a TCP relay the test can cut: a
partition then cuts one node's inbound cluster traffic (its own requests
to the others still flow), the one-way partition of test_raft_cluster.py.

`LITEGATE_FAULTS` sets the number of faults (default 20, about a minute),
`LITEGATE_FAULT_SEED` the seed (random by default; it is in the summary
line and in every failure message, so a run can be replayed). Run with
`pytest -s` for the one-line summary; `LITEGATE_LOG=litegate=debug` is
passed on to the nodes, whose logs are in the test's tmp dir.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sys
import threading
import time

import httpx

from harness import (
    INTEGRATION,
    Proc,
    Procs,
    TcpRelay,
    free_port,
    litegate_bin,
    wait_for_port_in,
    wait_until,
    write_secret,
)
from netns import ip, netns_unusable

WRITE_APP = INTEGRATION / "fixtures" / "write_app.py"
NODES = 3
WRITERS = 6
CLIENT_TIMEOUT = 25.0  # above the longest litegate answer: upstream.timeout (3 s) + 5 s, or primary_wait
CONFIG_EXTRA = '[routing]\nprimary_wait = "3s"\n'
# The test relay's answer to a client while the node's litegate is down: the
# write reached no litegate, so no app can have it.
NODE_DOWN_STATUS = 599
NODE_DOWN = (f"HTTP/1.1 {NODE_DOWN_STATUS} Node Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
             .encode())

# What the litegate CLI sends with admin actions (a browser page cannot).
ADMIN = {"litegate-admin": "1"}


# --- The network: namespaces, or relays as a fallback -----------------------


def netns_usable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.environ.get("LITEGATE_FAULT_NET") == "relay":
        return "LITEGATE_FAULT_NET=relay"
    return netns_unusable()


BOGUS_MAC = "02:00:00:00:00:00"


class NetnsNet:
    """One namespace per node, a veth pair per pair of nodes, static
    neighbour entries that a partition points at a MAC nobody has."""

    kind = "netns"

    def __init__(self, n: int):
        tag = f"{os.getpid() % 100000}{random.randrange(1 << 16):04x}"
        self.names = [f"lgt-{tag}-{i + 1}" for i in range(n)]
        self.created: list[str] = []
        # (i, j) -> (device in i's namespace, its MAC)
        self.ends: dict[tuple[int, int], tuple[str, str]] = {}
        self.cut_pairs: set[frozenset] = set()
        try:
            self._build(n)
        except BaseException:
            self.close()
            raise

    def _build(self, n: int) -> None:
        for i, ns in enumerate(self.names):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.addr(i)}/32", "dev", "lo")
        for i in range(n):
            for j in range(i + 1, n):
                a, b = f"to{j + 1}", f"to{i + 1}"
                ip("link", "add", a, "netns", self.names[i], "type", "veth", "peer", "name", b, "netns",
                   self.names[j])
                for k, dev in ((i, a), (j, b)):
                    ip("-n", self.names[k], "link", "set", dev, "up")
                    mac = json.loads(ip("-n", self.names[k], "-j", "link", "show", dev))[0]["address"]
                    self.ends[(k, j if k == i else i)] = (dev, mac)
                for k, other in ((i, j), (j, i)):
                    dev = self.ends[(k, other)][0]
                    ip("-n", self.names[k], "route", "add", f"{self.addr(other)}/32", "dev", dev, "src",
                       self.addr(k))
                self._set_neighbours(i, j, real=True)

    @staticmethod
    def addr(i: int) -> str:
        return f"10.77.0.{i + 1}"

    def cluster_host(self, i: int) -> str:
        return self.addr(i)

    def netns(self, i: int) -> str | None:
        return self.names[i]

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def peer_port(self, i: int, port: int) -> int:
        return port

    def _set_neighbours(self, i: int, j: int, real: bool) -> None:
        for k, other in ((i, j), (j, i)):
            dev = self.ends[(k, other)][0]
            mac = self.ends[(other, k)][1] if real else BOGUS_MAC
            ip("-n", self.names[k], "neigh", "replace", self.addr(other), "dev", dev, "lladdr", mac, "nud",
               "permanent")

    def partitions(self) -> list[str]:
        return ["isolate", "split"]

    def cut(self, i: int, j: int) -> None:
        self._set_neighbours(i, j, real=False)
        self.cut_pairs.add(frozenset((i, j)))

    def isolate(self, i: int, n: int) -> None:
        for j in range(n):
            if j != i:
                self.cut(i, j)

    def heal(self) -> None:
        for pair in list(self.cut_pairs):
            i, j = sorted(pair)
            self._set_neighbours(i, j, real=True)
            self.cut_pairs.discard(pair)

    def close(self) -> None:
        for ns in self.created:
            try:
                ip("netns", "del", ns)
            except RuntimeError:
                pass


class RelayNet:
    """All nodes on loopback; the others reach node N's cluster listener
    through a relay that a partition cuts (inbound only)."""

    kind = "relay"

    def __init__(self, n: int):
        self.relays: list[Relay | None] = [None] * n

    def cluster_host(self, i: int) -> str:
        return "127.0.0.1"

    def netns(self, i: int) -> str | None:
        return None

    def prefix(self, i: int) -> list[str]:
        return []

    def peer_port(self, i: int, port: int) -> int:
        if self.relays[i] is None:
            self.relays[i] = TcpRelay(port)
        return self.relays[i].port

    def partitions(self) -> list[str]:
        return ["isolate"]

    def cut(self, i: int, j: int) -> None:
        raise NotImplementedError("relays cannot cut one pair of nodes")

    def isolate(self, i: int, n: int) -> None:
        self.relays[i].cut()

    def heal(self) -> None:
        for r in self.relays:
            if r is not None:
                r.restore()

    def close(self) -> None:
        for r in self.relays:
            if r is not None:
                r.close()


# --- The cluster -------------------------------------------------------------


class FaultNode:
    def __init__(self, index: int, name: str, netns: str | None):
        self.index = index
        self.name = name
        self.app_name = f"app-{index + 1}"
        self.netns = netns
        self.proc: Proc | None = None
        self.app_proc: Proc | None = None
        self.restarts = 0
        self.relays: list[Relay] = []

    def relay(self, port: int, when_down: bytes | None = None) -> str:
        r = TcpRelay(port, netns=self.netns, when_down=when_down)
        self.relays.append(r)
        return f"http://127.0.0.1:{r.port}"


class Cluster:
    def __init__(self, procs: Procs, net, n: int):
        self.procs = procs
        self.net = net
        self.nodes = [FaultNode(i, f"node-{i + 1}", net.netns(i)) for i in range(n)]
        secret = write_secret(procs.log_dir)
        ports = [{"public": free_port(), "admin": free_port(), "cluster": free_port(), "app": free_port()}
                 for _ in range(n)]
        peers = ",\n  ".join(
            f'{{ id = {i + 1}, name = "node-{i + 1}", '
            f'cluster = "{net.cluster_host(i)}:{net.peer_port(i, p["cluster"])}", '
            f'public_url = "http://127.0.0.1:{p["public"]}" }}'
            for i, p in enumerate(ports))
        for node, p in zip(self.nodes, ports):
            node.ports = p
            node.config = procs.log_dir / f"{node.name}.toml"
            node.config.write_text(
                f'[node]\nid = {node.index + 1}\nname = "{node.name}"\n\n'
                f'[upstream]\nurl = "http://127.0.0.1:{p["app"]}"\ntimeout = "3s"\n\n'
                f'[primary]\nmode = "raft"\n\n'
                f'[cluster]\nlisten = "{net.cluster_host(node.index)}:{p["cluster"]}"\n'
                f'data_dir = "{procs.log_dir / (node.name + "-data")}"\nsecret_file = "{secret}"\n'
                # The namespaces' addresses are not loopback; the test net is private.
                'allow_plaintext = true\n'
                f"peers = [\n  {peers},\n]\n\n{CONFIG_EXTRA}")
            node.env = {"LITEGATE_PUBLIC_LISTEN": f"127.0.0.1:{p['public']}",
                        "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{p['admin']}"}
            node.app_proc = procs.start(
                node.app_name,
                [*net.prefix(node.index), sys.executable, str(WRITE_APP), "--port", str(p["app"]), "--node",
                 node.app_name])
        for node in self.nodes:
            wait_for_port_in(node.netns, node.ports["app"], node.app_proc)
            node.url = node.relay(node.ports["public"], NODE_DOWN)
            node.admin = node.relay(node.ports["admin"])
            node.app_url = node.relay(node.ports["app"])
        for node in self.nodes:
            self.start(node, bootstrap=node.index == 0)
        for node in self.nodes:
            self.wait_up(node)

    def start(self, node: FaultNode, bootstrap: bool = False) -> None:
        label = node.name if node.restarts == 0 else f"{node.name}-restart{node.restarts}"
        args = [*self.net.prefix(node.index), str(litegate_bin()), "run", "--config", str(node.config)]
        if bootstrap:
            args.append("--bootstrap")
        node.proc = self.procs.start(label, args, env=node.env)
        node.restarts += 1

    def wait_up(self, node: FaultNode) -> None:
        for port in (node.ports["public"], node.ports["admin"], node.ports["cluster"]):
            if port == node.ports["cluster"] and self.net.kind == "netns":
                # The cluster listener is on the namespace's 10.77.0.N, not
                # its loopback; the public one coming up means it bound.
                continue
            wait_for_port_in(node.netns, port, node.proc)

    def status(self, node: FaultNode) -> dict | None:
        try:
            return httpx.get(f"{node.admin}/status", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self) -> FaultNode | None:
        """The node that says it is primary (the newest term's, if two do)."""
        best = None
        for node in self.nodes:
            if node.proc.popen.poll() is not None:
                continue
            s = self.status(node)
            if s and s.get("role") == "primary" and (best is None or s["term"] > best[1]):
                best = (node, s["term"])
        return best[0] if best else None

    def agreed_leader(self) -> FaultNode | None:
        views = set()
        for node in self.nodes:
            s = self.status(node)
            if s is None:
                return None
            views.add(s.get("primary"))
        if len(views) != 1 or None in views:
            return None
        name = views.pop()
        node = next(n for n in self.nodes if n.name == name)
        s = self.status(node)
        return node if s and s.get("role") == "primary" else None

    def close_relays(self) -> None:
        for node in self.nodes:
            for r in node.relays:
                r.close()


# --- Load --------------------------------------------------------------------


class Writers:
    """WRITERS threads, each writing unique ids through random nodes, one at
    a time, recording every answer."""

    def __init__(self, cluster: Cluster, seed: int):
        self.cluster = cluster
        self.seed = seed
        self.results: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(WRITERS)]

    def _run(self, w: int) -> None:
        rng = random.Random(self.seed * 1000 + w)
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            for i in range(100_000):
                if self._stop.is_set():
                    return
                node = rng.choice(self.cluster.nodes)
                ident = f"w{w}-{i}"
                started = time.monotonic_ns()
                entry = {"id": ident, "via": node.name, "sent_ns": started}
                try:
                    r = client.post(f"{node.url}/w/ok", params={"id": ident}, content=b"x")
                    entry.update(status=r.status_code, error=r.headers.get("litegate-error", ""),
                                 served_by=r.headers.get("litegate-served-by", ""))
                except httpx.HTTPError as e:
                    entry.update(status="client-error", error=type(e).__name__, served_by="")
                entry["answered_ns"] = time.monotonic_ns()
                with self._lock:
                    self.results.append(entry)
                time.sleep(rng.uniform(0.002, 0.02))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT + 10)
        assert not any(t.is_alive() for t in self.threads), "a writer did not finish"


# --- Faults ------------------------------------------------------------------


class Draw:
    """The random choices of one fault."""

    def __init__(self, rng: random.Random, partitions: list[str]):
        self.kind = rng.choice(["kill", "pause", "handoff", "partition"])
        self.leader_coin = rng.random()
        self.pick = rng.randrange(1 << 16)
        self.other = rng.randrange(1 << 16)
        self.named_handoff = rng.random() < 0.5
        self.down_seconds = rng.uniform(0.2, 1.5)
        self.pause_seconds = rng.uniform(0.2, 3.0)
        self.partition_seconds = rng.uniform(0.5, 3.0)
        self.partition = partitions[rng.randrange(len(partitions))]
        self.gap_seconds = rng.uniform(0.1, 1.0)


class Nemesis:
    def __init__(self, cluster: Cluster, rng: random.Random):
        self.cluster = cluster
        self.rng = rng
        self.log: list[tuple[int, str]] = []  # (monotonic ns, what)
        self.kinds: collections.Counter = collections.Counter()

    def note(self, what: str) -> None:
        self.log.append((time.monotonic_ns(), what))

    def target(self, draw: "Draw") -> tuple[FaultNode, str]:
        """The leader or a follower, as the draw says."""
        leader = self.cluster.leader()
        if leader is not None and draw.leader_coin < 0.5:
            return leader, "leader"
        others = [n for n in self.cluster.nodes if n is not leader]
        return others[draw.pick % len(others)], "follower" if leader else "node"

    def apply(self) -> None:
        # Every random value is drawn up front, the same ones whatever the
        # cluster's state, so a seed replays the same schedule of faults.
        draw = Draw(self.rng, self.cluster.net.partitions())
        kind = draw.kind
        if kind == "kill":
            node, role = self.target(draw)
            self.note(f"SIGKILL {node.name} ({role})")
            node.proc.signal(signal.SIGKILL)
            node.proc.wait(10)
            time.sleep(draw.down_seconds)
            self.cluster.start(node)
            self.cluster.wait_up(node)
            self.note(f"restarted {node.name}")
        elif kind == "pause":
            node, role = self.target(draw)
            self.note(f"SIGSTOP {node.name} ({role}) for {draw.pause_seconds:.2f}s")
            node.proc.signal(signal.SIGSTOP)
            try:
                time.sleep(draw.pause_seconds)
            finally:
                node.proc.signal(signal.SIGCONT)
            self.note(f"SIGCONT {node.name}")
        elif kind == "handoff":
            leader = self.cluster.leader()
            if leader is None:
                self.note("handoff skipped: no leader")
                kind = "handoff-skipped"
            else:
                params = {}
                if draw.named_handoff:
                    others = [n for n in self.cluster.nodes if n is not leader]
                    params["to"] = others[draw.pick % len(others)].name
                try:
                    r = httpx.post(f"{leader.admin}/handoff", headers=ADMIN, params=params, timeout=20)
                    outcome = f"{r.status_code} {' '.join(r.text.split())[:80]}"
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                self.note(f"handoff from {leader.name} {params}: {outcome}")
        else:
            node, role = self.target(draw)
            seconds = draw.partition_seconds
            if draw.partition == "split":
                # Cut the target from one other node; the third still
                # reaches both.
                others = [n for n in self.cluster.nodes if n is not node]
                other = others[draw.other % len(others)]
                self.note(f"partition {node.name} ({role}) | {other.name} for {seconds:.2f}s")
                self.cluster.net.cut(node.index, other.index)
            else:
                self.note(f"partition: isolate {node.name} ({role}) for {seconds:.2f}s")
                self.cluster.net.isolate(node.index, len(self.cluster.nodes))
            try:
                time.sleep(seconds)
            finally:
                self.cluster.net.heal()
            self.note("healed")
            kind = f"partition-{draw.partition}"
        self.kinds[kind] += 1
        time.sleep(draw.gap_seconds)

    def heal_all(self) -> None:
        self.cluster.net.heal()
        for node in self.cluster.nodes:
            node.proc.signal(signal.SIGCONT)
            if node.proc.popen.poll() is not None:
                self.cluster.start(node)
                self.cluster.wait_up(node)
        self.note("healed everything")


# --- Checking the history ----------------------------------------------------


def answer_kind(r: dict) -> str:
    if r["status"] == "client-error":
        return f"client-error {r['error']}"
    if r["status"] == NODE_DOWN_STATUS:
        return "node down (test relay)"
    return f"{r['status']} {r['error']}".strip()


def check_history(results: list[dict], records: list[dict]) -> dict[str, list]:
    """Every violation of the write path's guarantees, by rule."""
    answers = {r["id"]: r for r in results}
    per_id: dict[str, list[dict]] = collections.defaultdict(list)
    for rec in records:
        per_id[rec["id"]].append(rec)
    v: dict[str, list] = collections.defaultdict(list)

    for ident, copies in per_id.items():
        if len(copies) > 1:
            v["applied twice"].append((ident, [(c["node"], c["term"], c["at_ns"]) for c in copies]))
        if ident not in answers:
            v["recorded, never sent by a client"].append((ident, copies))
    for r in results:
        copies = per_id.get(r["id"], [])
        ok = isinstance(r["status"], int) and 200 <= r["status"] < 300
        if ok and len(copies) != 1:
            v["acknowledged, not recorded exactly once"].append((r, len(copies)))
        if r["status"] == 502 and r["error"] != "indeterminate":
            v["502 other than indeterminate"].append(r)
        maybe_sent = ok or (r["status"], r["error"]) == (502, "indeterminate") or r["status"] == "client-error"
        if not maybe_sent and copies:
            v["answered as never sent, but recorded"].append((r, copies))

    ordered = sorted(records, key=lambda rec: rec["at_ns"])
    newest: tuple[int, dict] | None = None
    writers_of_term: dict[int, set[str]] = collections.defaultdict(set)
    for rec in ordered:
        if rec.get("role") != "primary" or rec.get("term") is None:
            v["recorded without Litegate-Role: primary and a term"].append(rec)
            continue
        term = int(rec["term"])
        writers_of_term[term].add(rec["node"])
        if newest is not None and term < newest[0]:
            v["applied under an older term after a newer term's first write"].append(
                {"late": rec, "newer_term_first_write": newest[1]})
        if newest is None or term > newest[0]:
            newest = (term, rec)
    for term, apps in sorted(writers_of_term.items()):
        if len(apps) > 1:
            v["more than one writing app in a term"].append((term, sorted(apps)))
    return v


def faults_around(log: list[tuple[int, str]], at_ns: int, start_ns: int) -> list[str]:
    """The faults within 5 s before `at_ns`, with times relative to the start."""
    return [f"t={(t - start_ns) / 1e9:.2f}s {what}" for t, what in log if at_ns - 5e9 <= t <= at_ns]


# --- The test ----------------------------------------------------------------


def test_writes_under_faults_keep_the_write_path_guarantees(tmp_path):
    faults = int(os.environ.get("LITEGATE_FAULTS", "20"))
    seed = int(os.environ.get("LITEGATE_FAULT_SEED") or random.randrange(1 << 32))
    why_not = netns_usable()
    procs = Procs(tmp_path)
    net = None
    cluster = None
    writers = None
    try:
        net = NetnsNet(NODES) if why_not is None else RelayNet(NODES)
        replay = (f"seed {seed} (replay: LITEGATE_FAULT_SEED={seed} LITEGATE_FAULTS={faults}), "
                  f"network {net.kind}{'' if why_not is None else f' ({why_not})'}, logs and history.json in {tmp_path}")
        cluster = Cluster(procs, net, NODES)
        wait_until(lambda: cluster.agreed_leader() is not None, 20, f"a first leader; {replay}")

        rng = random.Random(seed)
        nemesis = Nemesis(cluster, rng)
        writers = Writers(cluster, seed)
        start_ns = time.monotonic_ns()
        writers.start()
        wait_until(lambda: writers.count() >= 30, 20, f"writes flowing; {replay}")
        for _ in range(faults):
            nemesis.apply()
        nemesis.heal_all()

        # Settled: one leader every node agrees on, and writes through every
        # node succeed again.
        wait_until(lambda: cluster.agreed_leader() is not None, 30,
                   f"one leader after healing; {replay}; faults: {[w for _, w in nemesis.log]}")
        settled = {}
        for node in cluster.nodes:
            ident = f"settled-{node.name}"
            r = httpx.post(f"{node.url}/w/ok", params={"id": ident}, content=b"s", timeout=CLIENT_TIMEOUT)
            settled[ident] = r
        writers.stop()
        time.sleep(0.5)  # a write still on its way to an app lands
        records = [rec for node in cluster.nodes
                   for rec in httpx.get(f"{node.app_url}/records", timeout=10).json()]
    finally:
        if writers is not None:
            writers._stop.set()
        procs.stop_all()
        if cluster is not None:
            cluster.close_relays()
        if net is not None:
            net.close()

    results = writers.results + [
        {"id": ident, "via": ident.removeprefix("settled-"), "status": r.status_code,
         "error": r.headers.get("litegate-error", ""), "served_by": r.headers.get("litegate-served-by", ""),
         "sent_ns": 0, "answered_ns": 0}
        for ident, r in settled.items()]
    by_answer = collections.Counter(answer_kind(r) for r in results)
    (tmp_path / "history.json").write_text(json.dumps(
        {"seed": seed, "start_ns": start_ns, "faults": nemesis.log, "answers": results, "records": records}))
    summary = (f"faults: {sum(nemesis.kinds.values())} ({dict(sorted(nemesis.kinds.items()))}); "
               f"writes: {len(results)} ({dict(by_answer.most_common())}); records: {len(records)}; {replay}")
    print(f"\n{summary}")

    not_settled = {k: (r.status_code, r.headers.get("litegate-error")) for k, r in settled.items()
                   if r.status_code != 201}
    assert not_settled == {}, f"writes after healing failed: {not_settled}\n{summary}"
    assert any(isinstance(r["status"], int) and r["status"] == 201 for r in writers.results), summary

    violations = check_history(results, records)
    if violations:
        lines = [summary, "violations:"]
        for rule, cases in violations.items():
            lines.append(f"- {rule}: {len(cases)}")
            for case in cases[:5]:
                lines.append(f"    {case}")
                at = None
                if isinstance(case, dict) and "late" in case:
                    at = case["late"]["at_ns"]
                elif isinstance(case, dict) and "answered_ns" in case:
                    at = case["answered_ns"]
                if at:
                    lines.append(f"    faults just before: {faults_around(nemesis.log, at, start_ns)}")
        lines.append("fault timeline: " + "; ".join(
            f"t={(t - start_ns) / 1e9:.2f}s {w}" for t, w in nemesis.log))
        raise AssertionError("\n".join(lines))


def test_the_history_checker_flags_every_rule():
    """The checker itself, on a made-up history: a clean one passes, and
    each guarantee broken once is reported under its own rule."""

    def answer(ident, status, error=""):
        return {"id": ident, "via": "node-1", "status": status, "error": error, "served_by": "", "sent_ns": 0,
                "answered_ns": 0}

    def rec(ident, node, term, at_ns, role="primary"):
        return {"id": ident, "path": "/w/ok", "node": node, "term": str(term), "role": role, "at_ns": at_ns}

    clean_answers = [answer("a", 201), answer("b", 201), answer("c", 502, "indeterminate"),
                     answer("d", "client-error", "ReadError"), answer("e", 503, "no-primary")]
    clean_records = [rec("a", "app-1", 2, 10), rec("c", "app-1", 2, 11), rec("b", "app-2", 3, 20),
                     rec("d", "app-2", 3, 21)]
    assert dict(check_history(clean_answers, clean_records)) == {}

    broken_answers = [answer("lost", 201), answer("twice", 201), answer("refused", 503, "no-primary"),
                      answer("bad502", 502, "upstream"), answer("late", 201), answer("first-new", 201),
                      answer("other-app", 201), answer("unstamped", 201)]
    broken_records = [rec("twice", "app-1", 2, 10), rec("twice", "app-2", 3, 30), rec("refused", "app-1", 2, 11),
                      rec("first-new", "app-2", 3, 20), rec("late", "app-1", 2, 25),
                      rec("other-app", "app-3", 3, 26), rec("unstamped", "app-2", 3, 27, role="replica"),
                      rec("ghost", "app-2", 3, 28)]
    found = check_history(broken_answers, broken_records)
    assert {rule: len(cases) for rule, cases in found.items()} == {
        "applied twice": 1,
        "recorded, never sent by a client": 1,
        "acknowledged, not recorded exactly once": 2,  # lost, twice
        "502 other than indeterminate": 1,
        "answered as never sent, but recorded": 1,
        "applied under an older term after a newer term's first write": 1,
        "more than one writing app in a term": 1,  # term 3: app-2, app-3
        "recorded without Litegate-Role: primary and a term": 1,
    }
    assert found["applied under an older term after a newer term's first write"][0]["late"]["id"] == "late"
