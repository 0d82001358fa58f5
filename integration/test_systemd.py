"""systemd's notification protocol (examples/systemd/litegate.service,
Type=notify): READY=1 once the listeners are bound, RELOADING=1 then
READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM — received on a
NOTIFY_SOCKET the test binds, as systemd would."""

import shutil
import signal
import socket
import tempfile
from pathlib import Path

import pytest

from harness import start_with_config


@pytest.fixture
def notify_socket():
    # A short directory: a socket path must fit in sockaddr_un (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="lg-sd-", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify"))
    sock.settimeout(15)
    yield sock, str(directory / "notify")
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def messages(sock) -> list[str]:
    return sock.recv(4096).decode().strip().split("\n")


def test_ready_reloading_and_stopping_are_notified(procs, upstream, notify_socket):
    sock, path = notify_socket
    node = start_with_config(procs, f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n',
                             env={"NOTIFY_SOCKET": path})
    assert messages(sock) == ["READY=1"]
    node.proc.signal(signal.SIGHUP)
    reloading = messages(sock)
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC="), reloading
    assert messages(sock) == ["READY=1"]
    node.proc.signal(signal.SIGTERM)
    assert messages(sock) == ["STOPPING=1"]
    assert node.proc.wait(timeout=30) == 0
