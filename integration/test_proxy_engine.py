"""The proxy engine in dev mode: the real litegate binary in front of a real
uvicorn upstream, over loopback sockets."""

import asyncio
import hashlib
import socket
import uuid

import httpx
import pytest
import websockets

from harness import free_port, header_values, start_dev, start_with_config


@pytest.fixture(scope="module")
def node(module_procs, upstream):
    return start_dev(module_procs, upstream, name="node-a")


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Sends exact bytes and reads until the server closes (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_read_and_write_reach_the_app_as_primary(node):
    r = httpx.get(f"{node.url}/echo?x=1")
    assert r.status_code == 200
    echo = r.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/echo", "x=1")
    assert header_values(echo, "litegate-role") == ["primary"]
    assert r.headers["litegate-served-by"] == "node-a"

    r = httpx.post(f"{node.url}/echo", content=b"hello")
    echo = r.json()
    assert echo["method"] == "POST" and echo["body_len"] == 5
    assert header_values(echo, "litegate-role") == ["primary"]


def test_host_reaches_the_app_byte_for_byte(node):
    host = b"ExAmple.COM:8443"
    resp = raw_request(node.public_port, b"GET /echo HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b'["host","ExAmple.COM:8443"]' in body
    assert b'["x-forwarded-host","ExAmple.COM:8443"]' in body


def test_forwarded_headers_appended_and_set(node):
    r = httpx.get(
        f"{node.url}/echo",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test"},
    )
    echo = r.json()
    assert header_values(echo, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    # The client is not a trusted proxy: its scheme and host claims are replaced.
    assert header_values(echo, "x-forwarded-proto") == ["http"]
    assert header_values(echo, "x-forwarded-host") == [f"127.0.0.1:{node.public_port}"]


def test_trusted_proxy_keeps_its_forwarded_headers(procs, upstream):
    node = start_with_config(
        procs,
        f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n',
        env={"LITEGATE_PUBLIC_TRUSTED_PROXIES": "127.0.0.0/8"},
    )
    echo = httpx.get(f"{node.url}/echo", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.test"}).json()
    assert header_values(echo, "x-forwarded-proto") == ["https"]
    assert header_values(echo, "x-forwarded-host") == ["app.test"]
    assert header_values(echo, "x-forwarded-for") == ["127.0.0.1"]


def test_hop_by_hop_headers_are_stripped(node):
    resp = raw_request(
        node.public_port,
        b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-End: kept\r\n\r\n",
    )
    body = resp.partition(b"\r\n\r\n")[2]
    for name in (b"x-hop", b"keep-alive", b"te", b"proxy-connection"):
        assert b'["' + name + b'"' not in body, name
    assert b'["x-end","kept"]' in body


def test_spoofed_litegate_headers_never_reach_the_app(node):
    r = httpx.post(
        f"{node.url}/echo",
        headers={"Litegate-Role": "replica", "Litegate-Term": "999", "Litegate-Txid": "00000000000000ff", "LITEGATE-X": "1"},
    )
    echo = r.json()
    litegate_headers = sorted((k, v) for k, v in echo["headers"] if k.startswith("litegate-"))
    assert litegate_headers == [("litegate-role", "primary"), ("litegate-term", "0")]


def test_every_set_cookie_is_its_own_header(node):
    r = httpx.get(f"{node.url}/cookies")
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("a=1") and cookies[1].startswith("b=2")


def test_h2c_prior_knowledge(node):
    with httpx.Client(http1=False, http2=True) as client:
        r = client.get(f"{node.url}/echo", headers={"x-probe": "h2"})
    assert r.http_version == "HTTP/2"
    echo = r.json()
    assert header_values(echo, "x-probe") == ["h2"]
    # HTTP/2's :authority becomes the app's Host.
    assert header_values(echo, "host") == [f"127.0.0.1:{node.public_port}"]
    assert echo["http_version"] == "1.1"


def test_200mb_upload_and_download_stream_in_bounded_memory(node):
    size = 200 * 1024 * 1024
    chunk = bytes(range(256)) * 256  # 64 KiB

    def body():
        for _ in range(size // len(chunk)):
            yield chunk

    expected = hashlib.sha256()
    for _ in range(size // len(chunk)):
        expected.update(chunk)
    r = httpx.post(f"{node.url}/upload", content=body(), timeout=120)
    assert r.status_code == 200
    assert r.json() == {"bytes": size, "sha256": expected.hexdigest()}

    got, digest = 0, hashlib.sha256()
    with httpx.stream("GET", f"{node.url}/download?size={size}", timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
        for data in r.iter_raw():
            got += len(data)
            digest.update(data)
    assert got == size
    assert digest.hexdigest() == expected.hexdigest()

    peak_mib = node.proc.rss_peak_kib() / 1024
    print(f"litegate peak RSS after 2 x 200 MB: {peak_mib:.1f} MiB")
    assert peak_mib < 64, f"litegate buffered bodies: peak RSS {peak_mib:.1f} MiB"


def test_sse_event_arrives_before_the_response_ends(node):
    key = uuid.uuid4().hex
    with httpx.Client(timeout=20) as client:
        with client.stream("GET", f"{node.url}/sse?id={key}") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            # The app is still holding the response open: this line can only
            # arrive if litegate passed the first event on as it came.
            assert next(lines) == "data: first"
            assert httpx.get(f"{node.url}/sse/release?id={key}").status_code == 200
            rest = [line for line in lines if line]
            assert rest == ["data: last"]


def test_websocket_echo_both_ways(node):
    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{node.public_port}/ws", open_timeout=10) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            await ws.send(b"\x00\x01binary")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01binary"
            for i in range(50):
                await ws.send(f"m{i}")
            assert [await asyncio.wait_for(ws.recv(), 10) for _ in range(50)] == [f"m{i}" for i in range(50)]

    asyncio.run(talk())
    assert node.metric('litegate_http_requests_total{class="websocket",route="local",origin="client",code="101",'
                       'reason="none"}') >= 1


def test_dead_upstream_is_502_upstream(procs):
    dead = f"http://127.0.0.1:{free_port()}"
    node = start_dev(procs, dead, name="node-dead")
    r = httpx.post(f"{node.url}/anything", content=b"x")
    assert r.status_code == 502
    assert r.headers["litegate-error"] == "upstream"
    assert r.headers["litegate-served-by"] == "node-dead"
    assert r.headers["content-type"].startswith("text/plain")
    assert httpx.get(f"{node.admin}/readyz").status_code == 503


def test_slow_upstream_is_504_timeout(procs, upstream):
    node = start_with_config(
        procs, f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\ntimeout = "300ms"\n'
    )
    r = httpx.get(f"{node.url}/slow?seconds=5", timeout=20)
    assert r.status_code == 504
    assert r.headers["litegate-error"] == "timeout"
    assert "300ms" in r.text
    # The same node still serves fast requests.
    assert httpx.get(f"{node.url}/echo").status_code == 200


def test_oversized_head_is_431(node):
    r = httpx.get(f"{node.url}/echo", headers={"x-big": "a" * 70_000})
    assert r.status_code == 431
    assert r.headers["litegate-error"] == "headers-too-large"


def test_missing_host_is_400(node):
    resp = raw_request(node.public_port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    head = resp.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 400"), head
    assert b"litegate-error: bad-request" in head


def test_routing_rules_classify_requests(procs, upstream):
    node = start_with_config(
        procs,
        f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n'
        '[routing]\nprimary_paths = ["/echo/oauth/*"]\nlocal_paths = ["/echo/static/*"]\n',
    )
    calls = [
        ("GET", "/echo/page", "read"),
        ("HEAD", "/echo/page", "read"),
        ("OPTIONS", "/echo/page", "read"),
        ("POST", "/echo/page", "write"),
        ("PUT", "/echo/page", "write"),
        ("PATCH", "/echo/page", "write"),
        ("DELETE", "/echo/page", "write"),
        ("GET", "/echo/oauth/callback", "write"),
        ("POST", "/echo/static/upload", "local"),
        ("GET", "/echo/static/site.css", "local"),
    ]
    expected: dict[str, int] = {}
    for method, path, cls in calls:
        r = httpx.request(method, f"{node.url}{path}")
        assert r.status_code == 200, (method, path, r.status_code)
        expected[cls] = expected.get(cls, 0) + 1
    for cls, count in expected.items():
        series = f'litegate_http_requests_total{{class="{cls}",route="local",origin="client",code="200",reason="none"}}'
        assert node.metric(series) == count, cls


def test_slow_request_head_is_cut_off(procs, upstream):
    node = start_with_config(
        procs, f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n[public]\nheader_read_timeout = "300ms"\n'
    )
    with socket.create_connection(("127.0.0.1", node.public_port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: slow\r\n")  # and never the blank line
        # litegate closes the connection (with or without a 408); the bound
        # on this read is only there so a failure cannot hang the suite.
        received = b""
        while True:
            data = s.recv(4096)
            if not data:
                break
            received += data
    assert b"x-forwarded" not in received.lower(), "the request reached the app"
    assert not received or received.startswith(b"HTTP/1.1 408"), received[:200]
    # A normal request on a new connection still works.
    assert httpx.get(f"{node.url}/echo").status_code == 200
