"""LiteFS mode and read-your-writes, against the LiteFS stand-in
(fixtures/litefs_standin.py), which replicates each node's real SQLite file
after a chosen lag — so a read that does not wait really is stale."""

import json
import re
import time
from collections import Counter

import httpx
import pytest

from harness import INTEGRATION, LiteFS, start_litefs_cluster, wait_until

FASTAPI = INTEGRATION / "apps" / "fastapi_app"
FIXTURES = INTEGRATION / "fixtures"
NAMES = ["node-1", "node-2"]


def start(procs, lag_ms=None, extra="", mode="litefs", names=NAMES):
    litefs = LiteFS(procs, names, lag_ms=lag_ms)
    apps = [
        procs.uvicorn(f"app-{n}", "litefs_barrier:app", FIXTURES, env=litefs.app_env(n, "main:app", FASTAPI))[1]
        for n in names
    ]
    nodes = start_litefs_cluster(procs, litefs, apps, mode=mode, extra=extra)
    for node in nodes:
        wait_until(lambda: node.status()["primary"] == names[0], what=f"{node.name} follows LiteFS")
    return litefs, nodes


def txid_cookie(response: httpx.Response) -> str:
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith("__txid=")]
    assert len(cookies) == 1, response.headers
    match = re.fullmatch(r"__txid=([0-9a-f]{16}); Path=/; HttpOnly; SameSite=Lax; Max-Age=300", cookies[0])
    assert match, cookies[0]
    return match.group(1)


def waits(node) -> float:
    return node.metric("litegate_consistency_wait_seconds_count")


def test_a_read_after_a_write_waits_for_the_lagging_replica(procs):
    litefs, (primary, replica) = start(procs, lag_ms={"node-2": 300})
    with httpx.Client(base_url=replica.url, timeout=20) as client:
        created = client.post("/notes", json={"text": "fresh"})
        assert created.status_code == 201 and created.headers["litegate-served-by"] == "node-1"
        assert "litegate-txid" not in created.headers
        txid = txid_cookie(created)
        assert int(txid, 16) == litefs.state()["nodes"]["node-1"]["txid"]
        # The replica has not caught up yet: without waiting, this would 404.
        assert litefs.state()["nodes"]["node-2"]["txid"] < int(txid, 16)
        read = client.get(f"/notes/{created.json()['id']}")
        assert read.status_code == 200 and read.json()["text"] == "fresh"
        assert read.headers["litegate-served-by"] == "node-2"
    assert waits(replica) == 1
    assert replica.metric("litegate_consistency_wait_timeouts_total") == 0


def test_a_read_without_the_cookie_or_with_a_bad_one_does_not_wait(procs):
    _, (primary, replica) = start(procs, lag_ms={"node-2": 300}, extra='[routing]\nlocal_paths = ["/healthz"]\n')
    httpx.post(f"{replica.url}/notes", json={"text": "x"})
    for cookies in ({}, {"__txid": "not-a-txid"}, {"__txid": "ffff"}):
        r = httpx.get(f"{replica.url}/notes", cookies=cookies)
        assert r.status_code == 200 and r.headers["litegate-served-by"] == "node-2"
    assert waits(replica) == 0
    # local_paths never wait, even with a cookie far in the future.
    r = httpx.get(f"{replica.url}/healthz", cookies={"__txid": "7fffffffffffffff"})
    assert r.status_code == 200
    assert waits(replica) == 0


def test_timeout_falls_back_to_the_primary(procs):
    _, (primary, replica) = start(
        procs, lag_ms={"node-2": 5000},
        extra='[consistency]\nwait_timeout = "200ms"\non_timeout = "primary"\n',
    )
    with httpx.Client(base_url=replica.url, timeout=20) as client:
        created = client.post("/notes", json={"text": "fresh on the primary"})
        read = client.get(f"/notes/{created.json()['id']}")
    assert read.status_code == 200 and read.json()["text"] == "fresh on the primary"
    assert read.headers["litegate-served-by"] == "node-1"
    assert replica.metric("litegate_consistency_wait_timeouts_total") == 1


def test_timeout_can_be_an_error(procs):
    _, (primary, replica) = start(
        procs, lag_ms={"node-2": 5000}, extra='[consistency]\nwait_timeout = "200ms"\non_timeout = "error"\n'
    )
    with httpx.Client(base_url=replica.url, timeout=20) as client:
        client.post("/notes", json={"text": "x"})
        read = client.get("/notes")
    assert read.status_code == 504
    assert read.headers["litegate-error"] == "timeout"


def test_primary_change_event_reroutes_writes(procs):
    litefs, (node1, node2) = start(procs)
    litefs.post("primary", node="node-2")
    wait_until(lambda: node1.status()["primary"] == "node-2", what="node-1 follows the new lease")
    assert node2.status()["role"] == "primary"
    r = httpx.post(f"{node1.url}/notes", json={"text": "after the move"})
    assert r.status_code == 201 and r.json()["served_by"] == "app-2"
    assert r.headers["litegate-served-by"] == "node-2"


def test_api_down_falls_back_to_the_primary_file(procs):
    litefs, (node1, node2) = start(procs, extra='[routing]\nprimary_wait = "1s"\n')
    litefs.post("api", node="node-2", up="0")
    # .primary still names node-1: writes keep going there.
    r = httpx.post(f"{node2.url}/notes", json={"text": "via fallback"}, timeout=20)
    assert r.status_code == 201 and r.json()["served_by"] == "app-1"
    # The replica loses its primary while its API is down: .primary goes
    # away, which must not be mistaken for "this node is the primary".
    litefs.post("disconnect", node="node-2")
    wait_until(lambda: node2.status()["role"] == "unknown", what="node-2 sees no primary")
    r = httpx.post(f"{node2.url}/notes", json={"text": "nowhere to go"}, timeout=20)
    assert r.status_code == 503 and r.headers["litegate-error"] == "no-primary"
    notes = httpx.get(f"{node1.url}/notes").json()
    assert not [n for n in notes if n["text"] == "nowhere to go"]
    # node-2 reaches its primary again and its API comes back: the lease is
    # followed from LiteFS's events again.
    litefs.post("connect", node="node-2")
    litefs.post("api", node="node-2", up="1")
    wait_until(lambda: node2.status()["primary"] == "node-1", timeout=15, what="node-2 reconnects")


def test_read_your_writes_in_static_mode_too(procs):
    litefs, (primary, replica) = start(procs, lag_ms={"node-2": 300}, mode="static")
    created = httpx.post(f"{replica.url}/notes", json={"text": "static + litefs"})
    txid = txid_cookie(created)
    read = httpx.get(f"{replica.url}/notes/{created.json()['id']}", cookies={"__txid": txid})
    assert read.status_code == 200 and read.headers["litegate-served-by"] == "node-2"


def test_django_login_then_read_through_a_lagging_replica(procs):
    import subprocess
    import sys

    django_dir = INTEGRATION / "apps" / "django_app"
    names = ["node-1", "node-2"]
    litefs = LiteFS(procs, names, lag_ms={"node-2": 400})
    common = {"APP_SECRET_KEY": "the-same-secret-key-on-every-node-0123456789",
              "APP_ALLOWED_HOSTS": "127.0.0.1,localhost"}
    setup_env = {**common, "PATH": "/usr/bin:/bin", "APP_DB": str(litefs.mounts["node-1"] / litefs.db),
                 "DJANGO_SUPERUSER_USERNAME": "ada", "DJANGO_SUPERUSER_PASSWORD": "correct horse battery staple",
                 "DJANGO_SUPERUSER_EMAIL": "ada@example.com"}
    for command in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
        out = subprocess.run([sys.executable, "manage.py", *command], cwd=django_dir, env=setup_env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    # The replica has the schema and the user before the test starts.
    wait_until(lambda: litefs.state()["nodes"]["node-2"]["txid"] == litefs.state()["nodes"]["node-1"]["txid"] > 0,
               what="initial replication")
    apps = [
        procs.uvicorn(f"django-{n}", "litefs_barrier:app", FIXTURES,
                      env={**common, **litefs.app_env(n, "notesite.asgi:application", django_dir)})[1]
        for n in names
    ]
    primary, replica = start_litefs_cluster(procs, litefs, apps)
    wait_until(lambda: replica.status()["primary"] == "node-1", what="replica follows LiteFS")

    with httpx.Client(base_url=replica.url, timeout=30, follow_redirects=False) as client:
        page = client.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        login = client.post("/accounts/login/", data={"username": "ada", "password": "correct horse battery staple",
                                                      "next": "/", "csrfmiddlewaretoken": token})
        assert login.status_code == 302 and login.headers["litegate-served-by"] == "node-1"
        assert client.cookies.get("__txid")
        # The session row is on the primary; the replica gets it 400 ms
        # later. The read waits for it instead of sending ada to the login.
        home = client.get("/")
        assert home.status_code == 200, home.headers.get("location")
        assert "Signed in as ada" in home.text and "rendered by app-2" in home.text

        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', home.text).group(1)
        added = client.post("/", data={"text": "my own write", "csrfmiddlewaretoken": token})
        assert added.status_code == 302
        home = client.get("/")
        assert "my own write — written by app-1" in home.text
    assert replica.metric("litegate_consistency_wait_seconds_count") >= 2


def json_lines(node, skip: int = 0) -> list[dict]:
    lines = node.proc.log_path.read_text(errors="replace").splitlines()[skip:]
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_litefs_api_outage_is_warned_about_once_and_reads_and_writes_go_on(procs):
    """LiteFS's API down for a few seconds: litegate tries it again every
    second and falls back to `.primary`, but writes one warning for the
    burst (log_limit.rs), not one a second; the node keeps serving."""
    litefs, (node1, node2) = start(procs, extra='[log]\nformat = "json"\n')
    before = len(node2.proc.log_path.read_text(errors="replace").splitlines())
    litefs.post("api", node="node-2", up="0")
    wait_until(lambda: node2.metric("litegate_litefs_api_up") == 0, what="node-2 loses its API")
    served = 0
    with httpx.Client(base_url=node2.url, timeout=20) as client:
        # About three reconnect attempts (one a second), serving meanwhile.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert client.get("/notes").status_code == 200
            assert client.post("/notes", json={"text": f"during the outage {served}"}).status_code == 201
            served += 1
            time.sleep(0.2)
    litefs.post("api", node="node-2", up="1")
    wait_until(lambda: node2.metric("litegate_litefs_api_up") == 1, timeout=15, what="node-2 follows its API again")
    warnings = Counter(line["message"] for line in json_lines(node2, before) if line["level"] == "WARN")
    lost = [n for message, n in warnings.items() if message.startswith("lost the LiteFS API")]
    assert lost == [1], warnings
    assert all(n == 1 for n in warnings.values()), warnings
    assert served >= 3
