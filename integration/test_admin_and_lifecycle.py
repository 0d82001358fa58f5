"""The admin listener, `litegate status`, and a graceful stop."""

import json
import signal
import subprocess
import threading

import httpx

from harness import free_port, litegate_bin, start_dev


def test_admin_endpoints(procs, upstream):
    node = start_dev(procs, upstream, name="admin-node")
    assert httpx.get(f"{node.admin}/healthz").status_code == 200
    ready = httpx.get(f"{node.admin}/readyz")
    assert ready.status_code == 200, ready.text
    assert httpx.get(f"{node.admin}/primary").status_code == 200
    assert httpx.get(f"{node.admin}/replica").status_code == 503
    assert httpx.get(f"{node.admin}/nope").status_code == 404

    status = httpx.get(f"{node.admin}/status").json()
    assert status["node"] == "admin-node"
    assert status["mode"] == "dev"
    assert status["role"] == "primary"
    assert status["primary"] == "admin-node"
    assert status["upstream"] == {"url": upstream, "up": True}

    httpx.get(f"{node.url}/echo")
    metrics = node.metrics()
    for name in (
        "litegate_http_requests_total",
        "litegate_http_request_duration_seconds_bucket",
        "litegate_open_connections",
        "litegate_upstream_up 1",
        "litegate_is_primary 1",
        'litegate_build_info{version="',
    ):
        assert name in metrics, name


def test_status_command(procs, upstream):
    node = start_dev(procs, upstream, name="status-node")
    out = subprocess.run(
        [str(litegate_bin()), "status", "--admin", node.admin], capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert "status-node" in out.stdout and "primary" in out.stdout and "(up)" in out.stdout
    out = subprocess.run(
        [str(litegate_bin()), "status", "--admin", node.admin, "--json"], capture_output=True, text=True, timeout=20
    )
    assert json.loads(out.stdout)["role"] == "primary"

    nobody = subprocess.run(
        [str(litegate_bin()), "status", "--admin", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=20,
    )
    assert nobody.returncode == 1
    assert "cannot reach" in nobody.stderr


def test_sigterm_lets_in_flight_requests_finish(procs, upstream):
    node = start_dev(procs, upstream, name="stopping-node")
    result = {}

    def slow_request():
        result["response"] = httpx.get(f"{node.url}/slow?seconds=1.5", timeout=20)

    t = threading.Thread(target=slow_request)
    t.start()
    # Wait (bounded) until litegate has the request in flight.
    for _ in range(200):
        if node.metric("litegate_open_connections") >= 1:
            break
        threading.Event().wait(0.02)
    node.proc.signal(signal.SIGTERM)
    t.join(timeout=20)
    assert result["response"].status_code == 200
    assert result["response"].text == "finally\n"
    assert node.proc.wait(timeout=20) == 0
