"""Requests that used to slip past write routing or reach an app they should
not: upgrade headers on writes, h2c upgrades, other spellings of a
primary-only path, CONNECT and TRACE; and config that used to pass `check`
and then panic. Exotic requests are written on raw sockets, so no client
library tidies them up first."""

import http.client
import json
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from harness import INTEGRATION, free_port, litegate_bin, start_dev, start_static_cluster, wait_for_port, wait_until

FIXTURES = INTEGRATION / "fixtures"


def recorder(procs, name: str) -> str:
    """The recording app (fixtures/recorder.py) under uvicorn."""
    return procs.uvicorn(name, "recorder:app", FIXTURES, env={"APP_NODE": name})[1]


def seen(app_url: str) -> list[dict]:
    """Every request the app recorded, asked of the app directly."""
    return httpx.get(f"{app_url}/__seen", timeout=10).json()


def raw_request(port: int, head: str, body: bytes = b"") -> http.client.HTTPResponse:
    """Sends `head` (CRLF-terminated lines, no blank line) and `body` as
    they are; returns the response, its body read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        resp.body = resp.read() if resp.status != 101 else b""
        return resp
    finally:
        sock.close()


def header(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name]


@pytest.fixture
def two_nodes(procs):
    """A static primary (node-1, app-1) and a replica (node-2, app-2), each
    in front of its own recording app."""
    apps = [recorder(procs, "app-1"), recorder(procs, "app-2")]
    nodes = start_static_cluster(procs, apps, extra='[routing]\nprimary_paths = ["/oauth/*"]\n')
    return nodes, apps


WRITES_WITH_UPGRADE_HEADERS = [
    ("POST /notes HTTP/1.1", "Upgrade: foo"),
    ("POST /notes HTTP/1.1", "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13"),
    ("DELETE /notes/1 HTTP/1.1", "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13"),
    ("PUT /notes/1 HTTP/1.1", "Upgrade: foo"),
    ("POST /notes HTTP/1.0", "Upgrade: websocket"),
]


@pytest.mark.parametrize("line,upgrade", WRITES_WITH_UPGRADE_HEADERS, ids=lambda v: v.split(" ")[0])
def test_a_write_with_upgrade_headers_still_reaches_the_primary(two_nodes, line, upgrade):
    (_, replica), (app_1, app_2) = two_nodes
    resp = raw_request(
        replica.public_port,
        f"{line}\r\nHost: shop.example\r\nConnection: Upgrade\r\n{upgrade}\r\nContent-Length: 2\r\n",
        b"hi",
    )
    assert resp.getheader("litegate-served-by") == "node-1", f"{line} with {upgrade!r}: {resp.status} {resp.body}"
    assert resp.status == 200, resp.body
    record = json.loads(resp.body)
    assert record["node"] == "app-1"
    assert record["body"] == "hi"
    # The upgrade was not carried on: the app saw a plain request.
    assert header(record, "upgrade") == []
    assert all("upgrade" not in v.lower() for v in header(record, "connection"))
    assert [r for r in seen(app_2) if r["path"].startswith("/notes")] == []


def test_a_get_with_an_unlisted_upgrade_is_a_plain_read(two_nodes):
    (_, replica), (_, app_2) = two_nodes
    resp = raw_request(replica.public_port, "GET /page HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n")
    assert resp.status == 200
    record = json.loads(resp.body)
    assert record["node"] == "app-2" and header(record, "upgrade") == []


@pytest.mark.parametrize("connection", ["Upgrade", "Upgrade, HTTP2-Settings"])
def test_an_h2c_upgrade_never_reaches_the_app(procs, connection):
    port = free_port()
    app = procs.start(
        "hypercorn", [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "recorder:app"],
        cwd=FIXTURES,
    )
    wait_for_port(port, app)
    node = start_dev(procs, f"http://127.0.0.1:{port}")
    resp = raw_request(
        node.public_port,
        f"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    )
    assert resp.status == 200, f"the app answered {resp.status} {resp.reason}"
    record = json.loads(resp.body)
    assert record["http_version"] == "1.1"
    assert header(record, "upgrade") == [] and header(record, "http2-settings") == []
    assert [r["http_version"] for r in seen(f"http://127.0.0.1:{port}") if r["path"] == "/h2c"] == ["1.1"]


class SwitchingApp:
    """An app that answers every request with `101` to h2c, asked or not.
    Counts the requests it got, and the connections the proxy then closed."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests = 0
        self.closed_after_101 = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                             b"not http at all")
                while conn.recv(4096):
                    pass
                self.closed_after_101 += 1
            except OSError:
                return

    def close(self):
        self.server.close()


@pytest.fixture
def switching_app():
    app = SwitchingApp()
    yield app
    app.close()


@pytest.mark.parametrize("asked", ["", "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"],
                         ids=["not-asked", "asked-for-websocket"])
def test_an_unasked_101_from_the_app_becomes_a_502(procs, switching_app, asked):
    node = start_dev(procs, f"http://127.0.0.1:{switching_app.port}")
    resp = raw_request(node.public_port, f"GET /x HTTP/1.1\r\nHost: x\r\n{asked}")
    assert resp.status == 502, f"got {resp.status} {resp.reason}"
    assert resp.getheader("litegate-error") == "upstream"
    assert b"switched protocols" in resp.body
    assert switching_app.requests == 1
    # The app's connection is not kept for another request.
    wait_until(lambda: switching_app.closed_after_101 == 1, 10, "litegate closing the app's connection")


SPELLINGS = ["/%6fauth/callback", "/oauth%2Fcallback", "//oauth/callback", "/static/../oauth/callback"]


@pytest.mark.parametrize("path", SPELLINGS)
def test_other_spellings_of_a_primary_path_reach_the_primary(two_nodes, path):
    (_, replica), (_, app_2) = two_nodes
    resp = raw_request(replica.public_port, f"GET {path}?code=1 HTTP/1.1\r\nHost: x\r\n")
    assert resp.status == 200
    record = json.loads(resp.body)
    assert record["node"] == "app-1", f"{path} was served by {record['node']}"
    # The app gets the path as the client sent it.
    assert record["raw_path"] == path
    assert seen(app_2) == []


@pytest.mark.parametrize("path", ["/%zz", "/oauth%4", "/a%00b", "/%FF"])
def test_a_path_that_cannot_be_matched_safely_is_refused(two_nodes, path):
    (primary, replica), apps = two_nodes
    for node in (primary, replica):
        resp = raw_request(node.public_port, f"GET {path} HTTP/1.1\r\nHost: x\r\n")
        assert resp.status == 400, f"{path} through {node.name}: {resp.status}"
        assert resp.getheader("litegate-error") == "bad-request"
    assert [seen(app) for app in apps] == [[], []]


def test_connect_and_trace_are_answered_405_and_never_sent(procs):
    app = recorder(procs, "app-1")
    node = start_dev(procs, app)
    connect = raw_request(node.public_port, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n")
    trace = raw_request(node.public_port, "TRACE /account HTTP/1.1\r\nHost: x\r\nCookie: sessionid=s3cret\r\n")
    for resp in (connect, trace):
        assert resp.status == 405, f"{resp.status} {resp.reason}"
        assert resp.getheader("litegate-error") == "method-not-allowed"
        assert b"s3cret" not in resp.body
    assert seen(app) == []
    # Over HTTP/2 too.
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        assert client.request("TRACE", f"{node.url}/account", headers={"cookie": "sessionid=s3cret"}).status_code == 405
    assert seen(app) == []


def check(tmp_path, text: str):
    path = tmp_path / "litegate.toml"
    path.write_text(text)
    return subprocess.run([str(litegate_bin()), "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("key,line,says", [
    ("routing.primary_wait", 'primary_wait = "100000000years"', "at most"),
    ("upstream.max_concurrency", "max_concurrency = 3000000000000000000", "at most"),
    ("upstream.pool_idle_timeout", 'pool_idle_timeout = "100000000years"', "at most"),
    ("routing.upgrade_protocols", 'upgrade_protocols = ["websocket", "h2c"]', '"h2c" cannot be allowed'),
])
def test_config_that_would_panic_or_tunnel_is_refused_by_check(tmp_path, key, line, says):
    section = key.split(".")[0]
    out = check(tmp_path, f'[primary]\nmode = "dev"\n[{section}]\n{line}\n')
    assert out.returncode == 1, out.stdout
    assert f"`{key}`" in out.stderr and says in out.stderr, out.stderr
