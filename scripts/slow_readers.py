"""Measures what slow readers cost litegate: N clients each start a large
download (fixtures/upstream.py `/download`) and then read it slowly; the
resident memory of litegate is printed before and after, and one fast
download is timed alongside for throughput.

    LITEGATE_BIN=target/release/litegate \\
        /work/main/.venv/bin/python scripts/slow_readers.py [--clients 100] [--http2]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from harness import INTEGRATION, Procs, start_dev  # noqa: E402

SIZE = 200 * 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def slow_reader(port: int) -> socket.socket:
    sock = socket.socket()
    # A small receive buffer, so the client's kernel does not soak it up.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % SIZE)
    sock.setblocking(False)
    return sock


def slow_reader_h2(port: int) -> socket.socket:
    """An HTTP/2 (prior knowledge) client that asks for the download with a
    large window, then reads slowly."""
    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings.initial_window_size = 16 * 1024 * 1024
    conn.initiate_connection()
    conn.increment_flow_control_window(16 * 1024 * 1024)
    conn.send_headers(1, [(":method", "GET"), (":path", f"/download?size={SIZE}"),
                          (":scheme", "http"), (":authority", "t")], end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.setblocking(False)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--http2", action="store_true")
    args = parser.parse_args()
    procs = Procs(Path(tempfile.mkdtemp(prefix="slow-readers-")))
    try:
        _, upstream = procs.uvicorn("upstream", "upstream:app", INTEGRATION / "fixtures")
        node = start_dev(procs, upstream)
        time.sleep(0.5)
        before = rss_kib(node.proc.pid)
        opener = slow_reader_h2 if args.http2 else slow_reader
        socks = [opener(node.public_port) for _ in range(args.clients)]
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            # Each reads a little, now and then: a slow link.
            for sock in socks:
                try:
                    sock.recv(1024)
                except BlockingIOError:
                    pass
            time.sleep(0.5)
        after = rss_kib(node.proc.pid)
        print(f"{'h2' if args.http2 else 'http/1.1'} clients={args.clients} rss_before={before / 1024:.1f}MiB rss_after={after / 1024:.1f}MiB "
              f"per_client={(after - before) / args.clients:.0f}KiB")
        for sock in socks:
            sock.close()
        # Throughput of one fast reader, for comparison.
        fast = socket.create_connection(("127.0.0.1", node.public_port))
        fast.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % SIZE)
        started, got = time.monotonic(), 0
        while chunk := fast.recv(1 << 20):
            got += len(chunk)
        took = time.monotonic() - started
        print(f"fast download: {got / 1e6:.0f} MB in {took:.2f}s = {got / 1e6 / took:.0f} MB/s")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
