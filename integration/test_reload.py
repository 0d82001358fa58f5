"""SIGHUP (issue 13): the config file is read again and what can change
live does (routing paths, timeouts, the public certificate); a config that
does not load changes nothing; the signal never ends the process. Before
this, SIGHUP killed litegate silently."""

import re
import signal
import socket
import ssl

import httpx
import pytest
import trustme

from harness import start_dev, start_static_cluster, start_with_config, wait_until

LOCAL_ECHO = '[routing]\nlocal_paths = ["/echo"]\n'


def served_by(node, method="POST") -> str:
    r = httpx.request(method, f"{node.url}/echo", content=b"x", timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["litegate-served-by"]


def hangup(node) -> None:
    node.proc.signal(signal.SIGHUP)


def test_sighup_does_not_end_litegate_dev(procs, upstream):
    # Regression: with no handler, SIGHUP's default action ended the process.
    node = start_dev(procs, upstream)
    hangup(node)
    wait_until(lambda: "nothing to reload" in node.proc.output() or "no config file" in node.proc.output(),
               what="the SIGHUP is logged")
    assert node.proc.popen.poll() is None, node.proc.output()
    assert httpx.get(f"{node.url}/echo", timeout=10).status_code == 200


def test_sighup_moves_a_local_path_to_the_primary(procs, upstream):
    primary, replica = start_static_cluster(procs, [upstream, upstream], extra=LOCAL_ECHO)
    assert served_by(replica) == "node-2"
    replica.config_path.write_text(replica.config_path.read_text().replace(LOCAL_ECHO, ""))
    hangup(replica)
    wait_until(lambda: "config reloaded" in replica.proc.output(), what="the reload is logged")
    assert "routing.local_paths" in replica.proc.output()
    assert served_by(replica) == "node-1"
    # And back: a path that was forwarded is served here again.
    replica.config_path.write_text(replica.config_path.read_text() + LOCAL_ECHO)
    hangup(replica)
    wait_until(lambda: replica.proc.output().count("config reloaded") == 2, what="the second reload")
    assert served_by(replica) == "node-2"
    assert replica.proc.popen.poll() is None


def test_a_bad_config_is_kept_out_and_the_process_lives(procs, upstream):
    primary, replica = start_static_cluster(procs, [upstream, upstream], extra=LOCAL_ECHO)
    good = replica.config_path.read_text()
    # Valid TOML, a bad value, and a path change that must not be taken.
    replica.config_path.write_text(good.replace(LOCAL_ECHO, '[routing]\nprimary_wait = "5 parsecs"\n'))
    hangup(replica)
    wait_until(lambda: "config reload refused" in replica.proc.output(), what="the refusal is logged")
    assert "routing.primary_wait" in replica.proc.output()
    assert replica.proc.popen.poll() is None
    assert served_by(replica) == "node-2", "the old local_paths stay"
    # A file that is not TOML at all is refused the same way.
    replica.config_path.write_text("[routing\n")
    hangup(replica)
    wait_until(lambda: replica.proc.output().count("config reload refused") == 2, what="the second refusal")
    assert replica.proc.popen.poll() is None
    assert served_by(replica) == "node-2"


def test_a_key_that_needs_a_restart_is_named_and_left(procs, upstream):
    primary, replica = start_static_cluster(procs, [upstream, upstream])
    text = replica.config_path.read_text()
    assert text.count("[upstream]\n") == 1
    replica.config_path.write_text(text.replace("[upstream]\n", '[upstream]\ntimeout = "7s"\n'))
    hangup(replica)
    wait_until(lambda: "only after a restart" in replica.proc.output(), what="the restart warning")
    assert "upstream.timeout" in replica.proc.output()
    assert replica.proc.popen.poll() is None
    assert served_by(replica) == "node-1"


def served_certificate(port: int, ca_file) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def der(leaf) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def test_a_rotated_certificate_is_served_to_new_connections(procs, upstream, tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = tmp_path / "public.crt", tmp_path / "public.key"

    def install(leaf):
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))

    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    install(first)
    node = start_with_config(
        procs, f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n'
               f'[public]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    assert served_certificate(node.public_port, ca_file) == der(first)
    install(second)
    hangup(node)
    wait_until(lambda: "config reloaded" in node.proc.output(), what="the reload is logged")
    assert served_certificate(node.public_port, ca_file) == der(second)
    # A key that does not match is refused; the second pair stays in use.
    key.write_bytes(ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    hangup(node)
    wait_until(lambda: "config reload refused" in node.proc.output(), what="the refusal is logged")
    assert served_certificate(node.public_port, ca_file) == der(second)
    assert node.proc.popen.poll() is None


def open_and_use(port: int) -> socket.socket:
    """A keep-alive connection that has served one request and is now idle."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200"), received[:100]
    head, body = received.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length, head
    # The whole body, so nothing is left to read but the server's close.
    while len(body) < int(length.group(1)):
        body += sock.recv(65536)
    return sock


def test_a_shorter_idle_timeout_applies_to_new_connections(procs, upstream, tmp_path):
    config = f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n[public]\nidle_timeout = "1h"\n'
    node = start_with_config(procs, config)
    before = open_and_use(node.public_port)
    path = procs.log_dir / "node-a.toml"
    path.write_text(config.replace('idle_timeout = "1h"', 'idle_timeout = "1s"'))
    hangup(node)
    wait_until(lambda: "config reloaded" in node.proc.output(), what="the reload is logged")
    assert "public.idle_timeout" in node.proc.output()
    after = open_and_use(node.public_port)
    after.settimeout(15)
    # The server closes the new idle connection (recv returns EOF)...
    while (chunk := after.recv(65536)) != b"":
        pass
    # ...while the one accepted before the reload keeps its hour.
    before.setblocking(False)
    with pytest.raises(BlockingIOError):
        before.recv(1)
    before.close()
    after.close()


def log_lines(node, containing: str) -> list[str]:
    """Every line of the node's whole log (not only its tail) with `containing`."""
    return [line for line in node.proc.log_path.read_text(errors="replace").splitlines() if containing in line]


def refused_lines(node) -> int:
    """Sends a TRACE, which litegate refuses itself, and counts its debug
    line for that ("refused a client request") in the log so far."""
    assert httpx.request("TRACE", f"{node.url}/", timeout=10).status_code == 405
    return len(log_lines(node, "refused a client request"))


def test_sighup_applies_a_changed_log_level_and_refuses_a_bad_one(procs, upstream, monkeypatch):
    monkeypatch.delenv("LITEGATE_LOG", raising=False)
    monkeypatch.delenv("LITEGATE_LOG_LEVEL", raising=False)
    config = f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n[log]\nlevel = "info"\n'
    node = start_with_config(procs, config)
    path = procs.log_dir / "node-a.toml"
    assert refused_lines(node) == 0, "no debug line at info"
    path.write_text(config.replace('level = "info"', 'level = "debug"'))
    hangup(node)
    wait_until(lambda: log_lines(node, "config reloaded"), what="the reload is logged")
    assert "log.level" in log_lines(node, "config reloaded")[0]
    assert refused_lines(node) == 1, "a debug line after the reload"
    # A level that is not one is refused, naming the key; debug stays.
    path.write_text(config.replace('level = "info"', 'level = "loud"'))
    hangup(node)
    wait_until(lambda: log_lines(node, "config reload refused"), what="the refusal is logged")
    assert "log.level" in log_lines(node, "config reload refused")[0]
    assert refused_lines(node) == 2, "the running level (debug) stays"
    assert node.proc.popen.poll() is None


def test_litegate_log_wins_over_log_level(procs, upstream, monkeypatch):
    monkeypatch.setenv("LITEGATE_LOG", "info")
    config = f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\n[log]\nlevel = "debug"\n'
    node = start_with_config(procs, config)
    assert refused_lines(node) == 0, "LITEGATE_LOG=info, not log.level = debug"
    path = procs.log_dir / "node-a.toml"
    path.write_text(config.replace('level = "debug"', 'level = "trace"'))
    hangup(node)
    wait_until(lambda: log_lines(node, "config reloaded"), what="the reload is logged")
    assert log_lines(node, "LITEGATE_LOG is set and decides the log filter")
    assert refused_lines(node) == 0
