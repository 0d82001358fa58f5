"""Client request bodies through the real binary (issue 11, A.2 and A.4):
a body that stalls is cut off after `public.body_read_timeout` (`408
body-timeout`) and no app sees a complete request; a malformed body is the
client's fault (`400 bad-request`), not the app's; `upstream.timeout`
bounds the wait for the app's answer, not a steady upload; a GET's body
and HTTP/2 cookie fields reach the app; HTTP/1.0 keep-alive is honoured.

The app is fixtures/recorder.py, which records a request only once it has
read all of its body, and lists what it recorded at `/__seen`.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from harness import INTEGRATION, start_static_cluster, start_with_config, wait_until

BODY_READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def recorder(module_procs) -> str:
    _, url = module_procs.uvicorn("recorder", "recorder:app", INTEGRATION / "fixtures")
    return url


@pytest.fixture(scope="module")
def node(module_procs, recorder):
    return start_with_config(
        module_procs,
        f'[primary]\nmode = "dev"\n[public]\nbody_read_timeout = "{BODY_READ_TIMEOUT}s"\n'
        f'[upstream]\nurl = "{recorder}"\ntimeout = "1s"\n',
        name="bodies",
    )


def seen(app: str, path: str) -> list[dict]:
    return [r for r in httpx.get(f"{app}/__seen", timeout=5).json() if r["path"] == path]


def complete(app: str, path: str, length: int) -> list[dict]:
    """Requests to `path` the app read in full. (The recorder also records
    one whose connection was cut, with the part of the body it got.)"""
    return [r for r in seen(app, path) if len(r["body"]) >= length]


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.x response with a Content-Length (or up to EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    else:
        while chunk := sock.recv(65536):
            rest += chunk
    return status, headers, rest


def raw(node, request: bytes, *more: tuple[float, bytes], timeout: float = 10) -> tuple[int, dict, bytes]:
    """Sends `request`, then each (pause, bytes) of `more`, and reads the
    answer; the socket stays open (a stalling client) until it comes."""
    with socket.create_connection(("127.0.0.1", node.public_port), timeout=timeout) as sock:
        sock.sendall(request)
        for pause, data in more:
            time.sleep(pause)
            sock.sendall(data)
        return read_response(sock)


def test_a_stalled_small_body_is_answered_408_and_reaches_no_app(node, recorder):
    status, headers, _ = raw(
        node, b"POST /stalled-small HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    )
    assert status == 408
    assert headers["litegate-error"] == "body-timeout"
    assert headers.get("connection") == "close"
    assert seen(recorder, "/stalled-small") == []


def test_a_stalled_large_body_is_cut_at_the_app_too(node, recorder):
    # Over 64 KiB: streamed to the app as it comes, so the app already has
    # part of it when the client stops.
    head = b"POST /stalled-large HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"
    status, headers, _ = raw(node, head + b"y" * 200_000)
    assert status == 408
    assert headers["litegate-error"] == "body-timeout"
    time.sleep(0.5)
    assert complete(recorder, "/stalled-large", 1_000_000) == []


def test_a_malformed_chunked_body_is_the_clients_fault(node, recorder):
    head = b"POST /malformed HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, headers, _ = raw(node, head + b"5\r\nhello\r\nZZZZ\r\nnot a chunk\r\n0\r\n\r\n")
    assert status == 400
    assert headers["litegate-error"] == "bad-request"
    # The app got at most the valid first chunk, on a connection then cut.
    assert all(r["body"] in ("", "hello") for r in seen(recorder, "/malformed"))


def test_a_steady_upload_longer_than_upstream_timeout_succeeds(node, recorder):
    # upstream.timeout is 1 s; the upload takes about 2.4 s in pieces 0.3 s
    # apart, within body_read_timeout of each other.
    pieces = [(0.3, b"%x\r\n%s\r\n" % (1000, b"z" * 1000)) for _ in range(8)]
    head = b"POST /steady HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, body = raw(node, head, *pieces, (0.3, b"0\r\n\r\n"))
    assert status == 200, body
    assert len(json.loads(body)["body"]) == 8000


def test_a_get_with_a_chunked_body_reaches_the_app_whole(node, recorder):
    request = (b"GET /get-chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, _, body = raw(node, request)
    assert status == 200
    assert json.loads(body)["body"] == "hello world"


def test_http2_get_body_and_cookie_fields_reach_the_app(node, recorder):
    def pieces():
        yield b"over "
        yield b"h2"

    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        r = client.request("GET", f"{node.url}/h2-get", content=pieces(),
                           headers=[("cookie", "a=1"), ("cookie", "b=2; c=3")])
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200
    echo = r.json()
    assert [v for k, v in echo["headers"] if k == "cookie"] == ["a=1; b=2; c=3"]
    assert echo["body"] == "over h2"


def test_http10_keep_alive_is_honoured(node, recorder):
    with socket.create_connection(("127.0.0.1", node.public_port), timeout=10) as sock:
        for i in range(2):
            sock.sendall(b"GET /ten-%d HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n" % i)
            status, headers, body = read_response(sock)
            assert status == 200
            assert headers.get("connection", "").lower() == "keep-alive"
            assert json.loads(body)["path"] == f"/ten-{i}"
    # Without keep-alive an HTTP/1.0 connection still closes after one.
    with socket.create_connection(("127.0.0.1", node.public_port), timeout=10) as sock:
        sock.sendall(b"GET /ten-close HTTP/1.0\r\nHost: t\r\n\r\n")
        status, _, _ = read_response(sock)
        assert status == 200
        assert sock.recv(1) == b""


def test_a_stalled_forwarded_body_is_cut_on_both_nodes(procs):
    apps = []
    for i in (1, 2):
        _, url = procs.uvicorn(f"rec-{i}", "recorder:app", INTEGRATION / "fixtures", env={"APP_NODE": f"rec-{i}"})
        apps.append(url)
    nodes = start_static_cluster(procs, apps, extra=f'[public]\nbody_read_timeout = "{BODY_READ_TIMEOUT}s"\n')
    replica = nodes[1]
    wait_until(lambda: httpx.post(f"{replica.url}/warm", content=b"w", timeout=5).status_code == 200,
               what="the replica forwards writes")
    for path, length, sent in (("/fwd-small", 100, 10), ("/fwd-large", 1_000_000, 200_000)):
        head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (path.encode(), length)
        status, headers, _ = raw(replica, head + b"f" * sent)
        assert status == 408, path
        assert headers["litegate-error"] == "body-timeout"
    time.sleep(0.5)
    for app in apps:
        assert seen(app, "/fwd-small") == []
        assert complete(app, "/fwd-large", 1_000_000) == []
    # A steady forwarded upload still goes through.
    pieces = [(0.3, b"3e8\r\n" + b"s" * 1000 + b"\r\n") for _ in range(5)]
    head = b"POST /fwd-steady HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, body = raw(replica, head, *pieces, (0.3, b"0\r\n\r\n"))
    assert status == 200, body
    assert len(json.loads(body)["body"]) == 5000
