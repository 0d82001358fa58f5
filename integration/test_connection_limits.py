"""The connection layer under attack (issue 11, part A.1): connections that
never send a complete request head are closed, each listener has a
connection cap, and a flood of idle connections on the public port cannot
lock clients out or stop the node from reaching its app and admin listener.

The server-side timeouts are 1 s here; every wait below is bounded at
several times that, and asserts only that the server closed the connection
before it ran out."""

import socket
import ssl
import time
import uuid

import httpx
import pytest
import trustme

from harness import start_static_cluster, start_with_config, wait_until

TIMEOUT = "1s"
# Several times the timeout: only a connection the server never closes
# reaches it.
CLOSE_BOUND = 6.0

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def config(upstream: str, extra_public: str = "") -> str:
    return (
        f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n'
        f'[public]\nheader_read_timeout = "{TIMEOUT}"\nidle_timeout = "{TIMEOUT}"\n{extra_public}'
    )


def closed_by_server(sock: socket.socket, bound: float = CLOSE_BOUND) -> bool:
    """Reads (and discards) until the server closes the connection; False if
    it was still open after `bound` seconds."""
    deadline = time.monotonic() + bound
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except (socket.timeout, TimeoutError):
            return False
    return False


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest.fixture
def node(procs, upstream):
    return start_with_config(procs, config(upstream))


def test_a_connection_that_sends_nothing_is_closed(node):
    with connect(node.public_port) as sock:
        assert closed_by_server(sock)


def test_a_partial_http2_preface_is_closed(node):
    with connect(node.public_port) as sock:
        sock.sendall(H2_PREFACE[:10])
        assert closed_by_server(sock)


def test_an_http2_connection_with_no_streams_is_closed(node):
    with connect(node.public_port) as sock:
        sock.sendall(H2_PREFACE + EMPTY_SETTINGS)
        assert closed_by_server(sock)


def test_a_partial_http1_head_is_closed(node):
    with connect(node.public_port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        assert closed_by_server(sock)


def test_an_idle_keepalive_connection_is_closed_after_its_request(node):
    with connect(node.public_port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock)


def test_the_admin_listener_closes_silent_connections(node):
    with connect(node.admin_port) as sock:
        assert closed_by_server(sock)


def test_the_cluster_listener_closes_silent_connections(procs, upstream):
    (cluster_node,) = start_static_cluster(
        procs, [upstream], extra=f'[public]\nheader_read_timeout = "{TIMEOUT}"\nidle_timeout = "{TIMEOUT}"\n'
    )
    for data in (b"", H2_PREFACE[:10], H2_PREFACE + EMPTY_SETTINGS):
        with connect(cluster_node.cluster_port) as sock:
            sock.sendall(data)
            assert closed_by_server(sock), data


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def tls_node(procs, upstream, ca, tmp_path):
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "public.crt", tmp_path / "public.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return start_with_config(
        procs, config(upstream), env={"LITEGATE_PUBLIC_TLS_CERT": str(cert), "LITEGATE_PUBLIC_TLS_KEY": str(key)}
    )


def client_hello() -> bytes:
    """The bytes of a real ClientHello, made without a socket."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_connection_with_no_client_hello_is_closed(tls_node):
    with connect(tls_node.public_port) as sock:
        assert closed_by_server(sock)


def test_half_a_client_hello_is_closed(tls_node):
    hello = client_hello()
    with connect(tls_node.public_port) as sock:
        sock.sendall(hello[: len(hello) // 2])
        assert closed_by_server(sock)


def test_a_tls_handshake_followed_by_silence_is_closed(tls_node, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with connect(tls_node.public_port) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert closed_by_server(sock)


def test_an_http2_connection_over_tls_with_no_streams_is_closed(tls_node, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    with connect(tls_node.public_port) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            sock.sendall(H2_PREFACE + EMPTY_SETTINGS)
            assert closed_by_server(sock)


def test_an_idle_flood_under_a_low_nofile_locks_nobody_out(procs, upstream):
    node = start_with_config(procs, config(upstream), nofile=256)
    idle = []
    try:
        for _ in range(300):
            idle.append(connect(node.public_port))
        # While the flood is held, the admin listener answers.
        assert httpx.get(f"{node.admin}/healthz", timeout=5).status_code == 200

        # Clients are answered (once the idle connections are cut, if the cap
        # refused them), and writes reach the app.
        write_id = f"flood-{uuid.uuid4()}"
        answered = {}

        def write_answered() -> bool:
            try:
                r = httpx.post(f"{node.url}/journal", content=write_id, timeout=5)
            except httpx.HTTPError:
                return False
            answered["status"] = r.status_code
            return True

        wait_until(write_answered, timeout=15, what="a write answered during the flood")
        assert answered["status"] == 201
        journal = httpx.get(f"{upstream}/journal", timeout=5).json()
        assert [e["id"] for e in journal].count(write_id) == 1
        assert httpx.get(f"{node.url}/echo", timeout=5).status_code == 200
        assert httpx.get(f"{node.admin}/healthz", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()
    log = node.proc.output()
    assert log.count("Too many open files") <= 3, log


def test_the_connection_over_the_cap_is_closed_and_a_later_one_served(procs, upstream):
    # Long timeouts here: the ten held connections must stay open.
    node = start_with_config(
        procs,
        f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n[public]\nmax_connections = 10\n'
        'header_read_timeout = "30s"\nidle_timeout = "30s"\n',
    )
    held = []
    try:
        for _ in range(10):
            sock = connect(node.public_port)
            # A full exchange proves the server accepted (and holds) it.
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)

        with connect(node.public_port) as eleventh:
            try:
                eleventh.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            except (ConnectionResetError, BrokenPipeError):
                pass
            assert closed_by_server(eleventh)

        held.pop().close()

        def served() -> bool:
            try:
                return httpx.get(f"{node.url}/echo", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(served, timeout=10, what="a connection served once a slot is free")
    finally:
        for sock in held:
            sock.close()
    assert "connection cap reached" in node.proc.output()
