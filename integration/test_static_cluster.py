"""Three nodes with a static primary, each in front of its own instance of
the real FastAPI app (the instances share one SQLite file, standing in for
replication). Writes through any node must land on the primary's app."""

import asyncio
import json
import re
import signal
import subprocess
import threading

import httpx
import pytest
import websockets

from harness import (INTEGRATION, cluster_auth, free_port, leader_of, litegate_bin, restart, start_static_cluster,
                     wait_until, write_secret)

FASTAPI = INTEGRATION / "apps" / "fastapi_app"

# What the litegate CLI sends with admin actions (a browser page cannot).
ADMIN = {"litegate-admin": "1"}


def start_apps(procs, tmp_path, n=3):
    db = tmp_path / "notes.sqlite3"
    return [
        procs.uvicorn(f"app-{i}", "main:app", FASTAPI, env={"APP_DB": str(db), "APP_NODE": f"app-{i}"})[1]
        for i in range(1, n + 1)
    ]


@pytest.fixture
def cluster(procs, tmp_path):
    return start_static_cluster(procs, start_apps(procs, tmp_path), extra='[routing]\nprimary_paths = ["/ws/*"]\n')


def test_writes_through_replicas_land_on_the_primary(cluster):
    primary, replica, _ = cluster
    with httpx.Client(base_url=replica.url, timeout=20) as client:
        created = client.post("/notes", json={"text": "via replica"})
        assert created.status_code == 201, created.text
        note = created.json()
        assert note["served_by"] == "app-1" and note["term"] == "1"
        assert created.headers["litegate-served-by"] == "node-1"
        assert "litegate-txid" not in created.headers

        put = client.put(f"/notes/{note['id']}", json={"text": "edited via replica"})
        assert put.status_code == 200 and put.json()["served_by"] == "app-1"
        # A read is served by the replica's own app.
        read = client.get(f"/notes/{note['id']}")
        assert read.headers["litegate-served-by"] == "node-2"
        assert read.json()["text"] == "edited via replica"
        assert client.delete(f"/notes/{note['id']}").status_code == 204
        assert client.get(f"/notes/{note['id']}").status_code == 404

        form = client.post("/notes/form", data={"text": "a form"}, follow_redirects=False)
        assert form.status_code == 303 and form.headers["litegate-served-by"] == "node-1"
    def writes_2xx(node, route: str, origin: str) -> float:
        pattern = (r'^litegate_http_requests_total\{class="write",route="%s",origin="%s",code="2\d\d",'
                   r'reason="none"\} (\S+)$' % (route, origin))
        return sum(float(v) for v in re.findall(pattern, node.metrics(), re.M))

    forwarded = writes_2xx(replica, "forwarded", "client")
    assert forwarded >= 3
    assert replica.metric("litegate_forward_duration_seconds_count") >= 3
    # The primary counts them as received from a peer, not as its own clients'.
    assert writes_2xx(primary, "local", "peer") == forwarded


def test_forwarded_write_keeps_host_and_forwarded_chain(procs, upstream):
    primary, replica = start_static_cluster(procs, [upstream, upstream])
    echo = httpx.post(
        f"{replica.url}/echo", headers={"Host": "shop.example", "X-Forwarded-For": "198.51.100.4"}, content=b"x"
    ).json()
    headers = {}
    for k, v in echo["headers"]:
        headers.setdefault(k, []).append(v)
    assert headers["host"] == ["shop.example"]
    assert headers["x-forwarded-for"] == ["198.51.100.4, 127.0.0.1"]
    assert headers["litegate-role"] == ["primary"] and headers["litegate-term"] == ["1"]
    assert "litegate-cluster-auth" not in headers and "litegate-forwarded-by" not in headers


def test_websocket_on_a_primary_path_reaches_the_primary(cluster):
    _, replica, _ = cluster

    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{replica.public_port}/ws/echo", open_timeout=10) as ws:
            await ws.send("hi")
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    assert asyncio.run(talk()) == {"echo": "hi", "node": "app-1"}


def test_fly_replay_and_redirect_answers_are_exact(procs, tmp_path):
    apps = start_apps(procs, tmp_path, n=2)
    primary, replica = start_static_cluster(procs, apps, extra='[routing]\non_replica = "fly-replay"\n')
    r = httpx.post(f"{replica.url}/notes?x=1", json={"text": "t"})
    assert r.status_code == 409
    assert r.headers["fly-replay"] == "instance=node-1"
    assert r.content == b""
    # Reads are still served locally.
    assert httpx.get(f"{replica.url}/notes").status_code == 200

    procs.stop_all()
    apps = start_apps(procs, tmp_path, n=2)
    primary, replica = start_static_cluster(procs, apps, extra='[routing]\non_replica = "redirect"\n')
    r = httpx.post(f"{replica.url}/notes/form?next=%2Fhome&a=b", data={"text": "t"})
    assert r.status_code == 307
    assert r.headers["location"] == f"{primary.url}/notes/form?next=%2Fhome&a=b"
    assert r.content == b""


def test_promote_moves_writes_and_stale_nodes_are_fenced(cluster, tmp_path):
    node1, node2, node3 = cluster
    # node-3 sleeps through the promote: it will still believe in term 1.
    node3.proc.signal(signal.SIGSTOP)
    try:
        out = subprocess.run([str(litegate_bin()), "promote", "--admin", node2.admin],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "node-2 is the primary at term 2" in out.stdout
        assert node2.status()["role"] == "primary"
        wait_until(lambda: node1.status()["primary"] == "node-2", what="node-1 learns of the promote")
        assert node1.status()["role"] == "replica" and node1.status()["term"] == 2

        # A peer that still believes node-1 is primary at term 1 is refused
        # by node-1 before its app sees anything.
        secret = (tmp_path / "cluster.secret").read_text().strip()
        stale = httpx.post(
            f"http://127.0.0.1:{node1.cluster_port}/notes",
            headers={**cluster_auth(secret, "POST", "/notes"), "litegate-term": "1", "litegate-primary": "node-1"},
            json={"text": "stale"},
        )
        assert stale.status_code == 421
        assert stale.headers["litegate-error"] == "not-primary"
        assert stale.headers["litegate-term"] == "2" and stale.headers["litegate-primary"] == "node-2"
    finally:
        node3.proc.signal(signal.SIGCONT)

    # Whatever node-3 learns first (a poll or a 421), its writes land on node-2.
    for i in range(5):
        r = httpx.post(f"{node3.url}/notes", json={"text": f"after promote {i}"}, timeout=20)
        assert r.status_code == 201, r.text
        assert r.json()["served_by"] == "app-2" and r.json()["term"] == "2"
    r = httpx.post(f"{node1.url}/notes", json={"text": "via the old primary"})
    assert r.json()["served_by"] == "app-2"
    notes = httpx.get(f"{node1.url}/notes").json()
    assert not [n for n in notes if n["text"] == "stale"], "a fenced write reached an app"


def test_a_cross_site_promote_is_refused(cluster):
    """A web page can reach a loopback admin listener too: without a token,
    an admin action needs `Litegate-Admin: 1` and nothing that marks it
    cross-site."""
    _, node2, _ = cluster
    # What a page's form or fetch() can send: no custom header.
    form = httpx.post(f"{node2.admin}/promote", headers={"Origin": "https://evil.example",
                                                          "Sec-Fetch-Site": "cross-site"})
    plain = httpx.post(f"{node2.admin}/promote")
    # Even with the header, a request marked cross-site.
    marked = httpx.post(f"{node2.admin}/promote", headers={**ADMIN, "Origin": "https://evil.example"})
    for r in (form, plain, marked):
        assert r.status_code == 403, r.text
    assert "Litegate-Admin: 1" in plain.text
    assert node2.status()["role"] == "replica" and node2.status()["term"] == 1
    # The CLI's request is taken.
    out = subprocess.run([str(litegate_bin()), "promote", "--admin", node2.admin],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_promote_survives_restart(cluster, procs):
    node1, node2, _ = cluster
    assert httpx.post(f"{node2.admin}/promote", headers=ADMIN).status_code == 200
    node2.proc.stop()
    restart(procs, node2)
    assert node2.status()["term"] == 2
    # It takes writes again once a majority confirmed nothing newer exists.
    wait_until(lambda: node2.status()["role"] == "primary", what="node-2 confirms epoch 2")
    assert node2.status()["static"]["confirmed"] is True


def promote(node, timeout=30):
    return subprocess.run([str(litegate_bin()), "promote", "--admin", node.admin], capture_output=True, text=True,
                          timeout=timeout)


def wait_confirmed_primary(node):
    wait_until(lambda: node.status()["role"] == "primary", timeout=15, what=f"{node.name} confirmed as primary")


def test_concurrent_promotes_leave_at_most_one_primary_per_epoch(cluster):
    node1, node2, node3 = cluster
    wait_confirmed_primary(node1)
    seen_primaries = {}  # term -> names seen as primary at it

    def sample():
        for n in cluster:
            s = n.status()
            if s["role"] == "primary":
                seen_primaries.setdefault(s["term"], set()).add(s["node"])

    for node1_asleep in (True, False, False):
        # Both promotes are in flight at once. With node-1 asleep, each
        # waits a second for node-1's answer, so both read the same epoch
        # from the other before either can write a new one.
        if node1_asleep:
            node1.proc.signal(signal.SIGSTOP)
        try:
            runs = [subprocess.Popen([str(litegate_bin()), "promote", "--admin", n.admin], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for n in (node2, node3)]
            outputs = [r.communicate(timeout=30) for r in runs]
        finally:
            node1.proc.signal(signal.SIGCONT)
        won = {}
        for run, (out, err) in zip(runs, outputs):
            if run.returncode == 0:
                name, term = out.split(" is the primary at term ")
                won.setdefault(int(term.split()[0]), []).append(name)
            else:
                assert "not promoted" in err, err
        for term, names in won.items():
            assert len(names) == 1, f"two promotes won term {term}: {names}"
        if not node1_asleep:
            # node-1 promises the first proposal it hears: one of them wins.
            assert won, f"neither promote won: {outputs}"
        sample()
        leader = leader_of(cluster)
        sample()
        # Writes through every node land on exactly one app: the primary's.
        served = set()
        for n in cluster:
            r = httpx.post(f"{n.url}/notes", json={"text": f"via {n.name}"}, timeout=20)
            assert r.status_code == 201, r.text
            served.add((r.json()["served_by"], r.json()["term"]))
        assert served == {(f"app-{leader.name[-1]}", str(leader.status()["term"]))}
    for term, names in seen_primaries.items():
        assert len(names) == 1, f"two primaries at term {term}: {names}"


def test_restarted_stale_primary_never_serves_a_local_write(procs, tmp_path):
    apps = start_apps(procs, tmp_path)
    node1, node2, node3 = start_static_cluster(procs, apps, extra='[routing]\nprimary_wait = "20s"\n')
    wait_confirmed_primary(node1)
    node1.proc.stop()
    out = promote(node2)
    assert out.returncode == 0, out.stderr
    assert "node-2 is the primary at term 2" in out.stdout

    # node-1 comes back believing it is primary at epoch 1, and at first
    # none of its peers can answer it.
    for n in (node2, node3):
        n.proc.signal(signal.SIGSTOP)
    result = {}
    try:
        restart(procs, node1)
        status = node1.status()
        assert (status["role"], status["term"], status["primary"]) == ("unknown", 1, None)
        assert status["static"]["confirmed"] is False
        assert httpx.get(f"{node1.admin}/primary").status_code == 503

        def write():
            result["r"] = httpx.post(f"{node1.url}/notes", json={"text": "via the stale primary"}, timeout=40)

        t = threading.Thread(target=write)
        t.start()
        wait_until(lambda: node1.metric("litegate_open_connections") >= 1, what="the write reached node-1")
        assert node1.status()["role"] == "unknown"
    finally:
        for n in (node2, node3):
            n.proc.signal(signal.SIGCONT)
    t.join(timeout=40)
    r = result["r"]
    assert r.status_code == 201, r.text
    assert (r.json()["served_by"], r.json()["term"]) == ("app-2", "2")
    wait_until(lambda: node1.status()["primary"] == "node-2", what="node-1 learns of epoch 2")
    assert node1.status()["role"] == "replica"
    assert node1.metric('litegate_http_requests_total{class="write",route="local"') == 0
    notes = httpx.get(f"{node2.url}/notes").json()
    assert [n["served_by"] for n in notes] == ["app-2"]


def test_restarted_primary_alone_holds_writes_then_503(procs, tmp_path):
    apps = start_apps(procs, tmp_path)
    node1, node2, node3 = start_static_cluster(procs, apps, extra='[routing]\nprimary_wait = "1s"\n')
    wait_confirmed_primary(node1)
    for n in (node1, node2, node3):
        n.proc.stop()
    restart(procs, node1)
    r = httpx.post(f"{node1.url}/notes", json={"text": "alone"}, timeout=20)
    assert r.status_code == 503, r.text
    assert r.headers["litegate-error"] == "no-primary"
    assert r.headers["litegate-served-by"] == "node-1"
    status = node1.status()
    assert (status["role"], status["primary"], status["static"]["confirmed"]) == ("unknown", None, False)
    out = subprocess.run([str(litegate_bin()), "status", "--admin", node1.admin], capture_output=True, text=True,
                         timeout=20)
    assert "UNCONFIRMED" in out.stdout
    # Reads are still served, and the app never saw the write.
    notes = httpx.get(f"{node1.url}/notes", timeout=20).json()
    assert notes == []
    assert node1.metric('litegate_http_requests_total{class="write",route="local"') == 0


def test_promote_without_a_majority_changes_nothing(procs, tmp_path):
    apps = start_apps(procs, tmp_path, n=2)
    node1, node2 = start_static_cluster(procs, apps, extra='[routing]\nprimary_wait = "1s"\n')
    wait_confirmed_primary(node1)
    node1.proc.stop()
    out = promote(node2)
    assert out.returncode == 1
    assert "not promoted" in out.stderr and "1 of the 2 votes it needs" in out.stderr, out.stderr
    status = node2.status()
    assert (status["role"], status["term"], status["primary"]) == ("replica", 1, "node-1")


def test_dead_primary_holds_writes_then_503(procs, tmp_path):
    apps = start_apps(procs, tmp_path, n=2)
    primary, replica = start_static_cluster(procs, apps, extra='[routing]\nprimary_wait = "1s"\n')
    primary.proc.stop()
    r = httpx.post(f"{replica.url}/notes", json={"text": "nobody home"}, timeout=20)
    assert r.status_code == 503
    assert r.headers["litegate-error"] == "no-primary"
    assert r.headers["retry-after"] == "1"
    assert r.headers["litegate-served-by"] == "node-2"
    assert replica.metric('litegate_http_requests_total{class="write",route="rejected",origin="client",'
                          'code="503",reason="no-primary"}') == 1
    assert replica.metric('litegate_errors_total{reason="no-primary"}') == 1
    # Reads do not need the primary.
    assert httpx.get(f"{replica.url}/notes").status_code == 200


def test_write_held_while_the_primary_restarts_succeeds(procs, tmp_path):
    apps = start_apps(procs, tmp_path, n=2)
    primary, replica = start_static_cluster(procs, apps, extra='[routing]\nprimary_wait = "20s"\n')
    primary.proc.stop()
    result = {}

    def write():
        result["r"] = httpx.post(f"{replica.url}/notes", json={"text": "held"}, timeout=30)

    t = threading.Thread(target=write)
    t.start()
    # The write is in flight (being held) before the primary comes back.
    wait_until(lambda: replica.metric("litegate_forward_retries_total") >= 1, what="the write is being retried")
    restart(procs, primary)
    t.join(timeout=30)
    assert result["r"].status_code == 201, result["r"].text
    assert result["r"].json()["served_by"] == "app-1"
    notes = [n for n in httpx.get(f"{replica.url}/notes").json() if n["text"] == "held"]
    assert len(notes) == 1, "a held write must be applied exactly once"


def test_unauthenticated_cluster_requests_never_reach_an_app(cluster, tmp_path):
    node1 = cluster[0]
    url = f"http://127.0.0.1:{node1.cluster_port}/notes"
    secret = (tmp_path / "cluster.secret").read_text().strip()
    wrong = cluster_auth("wrong-secret-0123456789", "POST", "/notes")
    # The secret itself as a bearer value, as litegate sent it before
    # requests were signed: refused.
    bearer = {"litegate-cluster-secret": secret, "litegate-cluster-auth": secret}
    # Signed for another path.
    elsewhere = cluster_auth(secret, "POST", "/other")
    for headers in ({}, wrong, bearer, elsewhere):
        r = httpx.post(url, headers={**headers, "litegate-term": "1", "litegate-primary": "node-1"},
                       json={"text": "intruder"})
        assert r.status_code == 401
        assert r.headers["litegate-error"] == "unauthorized"
    assert httpx.get(f"http://127.0.0.1:{node1.cluster_port}/_litegate/epoch").status_code == 401
    assert not [n for n in httpx.get(f"{node1.url}/notes").json() if n["text"] == "intruder"]


def test_a_replayed_cluster_request_is_refused(cluster, tmp_path):
    node1 = cluster[0]
    secret = (tmp_path / "cluster.secret").read_text().strip()
    url = f"http://127.0.0.1:{node1.cluster_port}/_litegate/epoch"
    captured = cluster_auth(secret, "GET", "/_litegate/epoch")
    first = httpx.get(url, headers=captured)
    assert first.status_code == 200, first.text
    replayed = httpx.get(url, headers=captured)
    assert replayed.status_code == 401
    assert replayed.headers["litegate-error"] == "unauthorized"
    assert "replayed request" in node1.proc.output()


def test_status_shows_epoch_primary_and_peers(cluster):
    node1, node2, node3 = cluster
    wait_until(lambda: all(p["reachable"] for p in node2.status()["peers"]), what="peers polled")
    s = node2.status()
    assert (s["mode"], s["role"], s["term"], s["primary"]) == ("static", "replica", 1, "node-1")
    assert [p["name"] for p in s["peers"]] == ["node-1", "node-2", "node-3"]
    assert s["static"] == {"confirmed": True, "conflict": None, "promised": None, "majority": 2}
    # The named primary takes writes once a majority answered it.
    wait_confirmed_primary(node1)
    assert httpx.get(f"{node1.admin}/primary").status_code == 200
    assert httpx.get(f"{node2.admin}/primary").status_code == 503
    assert httpx.get(f"{node2.admin}/replica").status_code == 200
    out = subprocess.run([str(litegate_bin()), "status", "--admin", node2.admin], capture_output=True, text=True,
                         timeout=20)
    assert "replica" in out.stdout and "node-1" in out.stdout and "term 1" in out.stdout
    assert "epoch     confirmed" in out.stdout
    node3.proc.stop()
    wait_until(lambda: not [p for p in node2.status()["peers"] if p["name"] == "node-3"][0]["reachable"],
               what="node-3 seen unreachable")


def test_insecure_cluster_listener_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[node]\nid = 1\nname = "a"\n[primary]\nmode = "static"\nstatic = "a"\n'
        f'[cluster]\nlisten = "0.0.0.0:{free_port()}"\ndata_dir = "{tmp_path}"\n'
        'peers = [{ id = 1, name = "a", cluster = "10.1.1.1:7070", public_url = "http://10.1.1.1:8080" }]\n'
    )
    out = subprocess.run([str(litegate_bin()), "check", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 1
    assert "`cluster.listen`" in out.stderr and "secret_file" in out.stderr and "insecure" in out.stderr


def test_plaintext_cluster_traffic_off_loopback_is_refused_at_start(tmp_path):
    secret = write_secret(tmp_path)
    base = ('[node]\nid = 1\nname = "a"\n[primary]\nmode = "static"\nstatic = "a"\n'
            f'[cluster]\nlisten = "0.0.0.0:{free_port()}"\ndata_dir = "{tmp_path}"\nsecret_file = "{secret}"\n'
            'peers = [{ id = 1, name = "a", cluster = "10.1.1.1:7070", public_url = "http://10.1.1.1:8080" }]\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(base)
    env = {"LITEGATE_PUBLIC_LISTEN": f"127.0.0.1:{free_port()}", "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(litegate_bin()), "run", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=20, env=env)
    assert out.returncode == 1
    assert "`cluster.allow_plaintext`" in out.stderr and "not encrypted" in out.stderr and "tls_cert" in out.stderr
    # Allowed on purpose: it starts, and says so loudly.
    allowed = base.replace("secret_file =", "allow_plaintext = true\nsecret_file =")
    cfg.write_text(allowed)
    out = subprocess.run([str(litegate_bin()), "check", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=20, env=env)
    assert out.returncode == 0, out.stderr
