"""Metrics, alert rules, dashboard, logs and readiness (docs/design.md §6,
§8; docs/operations.md "Monitoring"), through the real binary."""

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from harness import (INTEGRATION, LiteFS, litegate_bin, start_dev, start_litefs_cluster, start_static_cluster,
                     start_with_config, wait_until)

REPO = INTEGRATION.parent
RULES = REPO / "deploy" / "prometheus" / "litegate-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "litegate-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "litegate.json"
FASTAPI = INTEGRATION / "apps" / "fastapi_app"
FIXTURES = INTEGRATION / "fixtures"

# Histograms appear with their first observation (an empty one has no
# buckets to show); the dashboard's quantiles of them are empty until then.
FIRST_OBSERVATION = {"litegate_consistency_wait_seconds"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: scripts/test installs it (Debian package `prometheus`)")
    return found


def referenced_metrics() -> set[str]:
    """Every metric name the alert rules and the dashboard query."""
    exprs = [RULES.read_text()]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = set()
    for text in exprs:
        for name in re.findall(r"\b((?:litegate|process)_[a-z_]+)\b", text):
            names.add(re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith("_bucket") else name)
    return names


def sample_names(text: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def check_metrics(text: str) -> None:
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_pass_promtool():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_metric_the_rules_and_dashboard_use_exists_at_start(procs, upstream):
    """Scraped before any request: every series the rules and the
    dashboard read is already there (at zero), so rate() sees the first
    increase and an alert on `== 0` can fire on a fresh node."""
    nodes = start_static_cluster(procs, [upstream, upstream])
    text = nodes[1].metrics()
    check_metrics(text)
    present = sample_names(text)
    histograms = set(re.findall(r"^# TYPE (\S+) histogram$", text, re.M))
    missing = sorted(
        name for name in referenced_metrics()
        if name not in present and name not in histograms and name not in FIRST_OBSERVATION
    )
    assert not missing, f"referenced by rules or dashboard but not exported at start: {missing}"
    for reason in ("no-primary", "upstream", "timeout", "indeterminate", "bad-request"):
        assert f'litegate_errors_total{{reason="{reason}"}} 0' in text, reason
    assert 'litegate_peer_up{peer="node-1"}' in text
    for name in ("litegate_request_bytes_total", "litegate_response_bytes_total", "litegate_requests_queued"):
        assert f"{name} 0" in text, name
    # No -1 sentinel anywhere.
    assert not [line for line in text.splitlines() if line.endswith(" -1")], text


def test_exact_status_reason_and_origin_labels(procs, upstream):
    """A forwarded write counts once per origin: `forwarded`/`client` on the
    sender, `local`/`peer` on the primary; litegate's own errors carry the
    exact code and their reason."""
    primary, replica = start_static_cluster(procs, [upstream, upstream])
    wait_until(lambda: replica.status()["primary"] == "node-1", what="replica knows the primary")
    assert httpx.post(f"{replica.url}/echo", content=b"x").status_code == 200
    sent = replica.metrics()
    got = primary.metrics()
    assert re.search(r'litegate_http_requests_total\{class="write",route="forwarded",origin="client",'
                     r'code="200",reason="none"\} 1', sent), sent
    assert re.search(r'litegate_http_requests_total\{class="write",route="local",origin="peer",'
                     r'code="200",reason="none"\} 1', got), got
    assert httpx.request("TRACE", f"{replica.url}/").status_code == 405
    text = replica.metrics()
    assert re.search(r'code="405",reason="method-not-allowed"\} 1', text), text
    assert 'litegate_errors_total{reason="method-not-allowed"} 1' in text
    check_metrics(text)


def test_byte_counters_count_client_bodies_exactly(procs, upstream):
    """litegate_request_bytes_total and litegate_response_bytes_total move
    by the body bytes clients sent and received: a small and a streamed
    (chunked) upload, a JSON answer and a download. A forwarded write's body
    counts on the node the client reached, not again on the primary."""
    primary, replica = start_static_cluster(procs, [upstream, upstream])
    wait_until(lambda: replica.status()["primary"] == "node-1", what="replica knows the primary")
    small, streamed, download = 1000, 300_000, 200_000

    def chunks():
        for _ in range(streamed // 50_000):
            yield b"s" * 50_000

    received = 0
    with httpx.Client(base_url=replica.url, timeout=30, headers={"accept-encoding": "identity"}) as client:
        for body, size in ((b"x" * small, small), (chunks(), streamed)):
            r = client.post("/upload", content=body)
            assert r.status_code == 200 and r.json()["bytes"] == size, r.text
            assert r.headers["litegate-served-by"] == "node-1"
            received += len(r.content)
        r = client.get("/download", params={"size": download})
        assert r.status_code == 200 and len(r.content) == download
        received += len(r.content)
    assert replica.metric("litegate_request_bytes_total ") == small + streamed
    assert replica.metric("litegate_response_bytes_total ") == received
    # The primary got the writes from a peer and answered a peer: no
    # client bytes there.
    assert primary.metric("litegate_request_bytes_total ") == 0
    assert primary.metric("litegate_response_bytes_total ") == 0


def test_requests_waiting_for_the_app_are_counted_as_queued(procs, upstream):
    """With upstream.max_concurrency = 1 and slow answers, the requests
    behind the first wait for a turn: litegate_requests_queued counts them,
    and is back to 0 once all are answered."""
    node = start_with_config(procs, f'[primary]\nmode = "dev"\n[upstream]\nurl = "{upstream}"\nmax_concurrency = 1\n')
    assert node.metric("litegate_requests_queued ") == 0
    statuses: list[int] = []

    def slow() -> None:
        statuses.append(httpx.get(f"{node.url}/slow", params={"seconds": "1.5"}, timeout=30).status_code)

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: node.metric("litegate_requests_queued ") >= 1, timeout=10, what="a request queued")
    finally:
        for t in threads:
            t.join(timeout=30)
    assert statuses == [200, 200, 200]
    assert node.metric("litegate_requests_queued ") == 0


def test_readiness_app_down_and_status_exit_code(procs):
    """/readyz follows the local app; `litegate status` exits 2 when the
    node answers that it is not ready, 0 when ready."""
    app, url = procs.uvicorn("obs-app", "upstream:app", FIXTURES, env={"APP_NODE": "obs"})
    node = start_dev(procs, url, name="obs-node")
    wait_until(lambda: httpx.get(f"{node.admin}/readyz").status_code == 200, what="ready")
    ok = subprocess.run([str(litegate_bin()), "status", "--admin", node.admin], capture_output=True, text=True,
                        timeout=20)
    assert ok.returncode == 0 and "ready:    yes" in ok.stdout, ok.stdout + ok.stderr
    app.stop()
    wait_until(lambda: httpx.get(f"{node.admin}/readyz").status_code == 503, timeout=15, what="not ready")
    assert "the app does not accept connections" in httpx.get(f"{node.admin}/readyz").text
    down = subprocess.run([str(litegate_bin()), "status", "--admin", node.admin], capture_output=True, text=True,
                          timeout=20)
    assert down.returncode == 2, down.stdout + down.stderr
    assert "obs-node" in down.stdout and "ready:    no" in down.stdout
    assert node.metric("litegate_upstream_up") == 0


def start_litefs(procs, lag_ms=None):
    names = ["node-1", "node-2"]
    litefs = LiteFS(procs, names, lag_ms=lag_ms)
    apps = [procs.uvicorn(f"app-{n}", "litefs_barrier:app", FIXTURES, env=litefs.app_env(n, "main:app", FASTAPI))[1]
            for n in names]
    nodes = start_litefs_cluster(procs, litefs, apps, extra='[routing]\nprimary_wait = "1s"\n')
    for node in nodes:
        wait_until(lambda: node.status()["primary"] == "node-1", what=f"{node.name} follows LiteFS")
    return litefs, nodes


def test_no_primary_keeps_reads_ready_but_not_writes(procs):
    litefs, (node1, node2) = start_litefs(procs)
    assert httpx.get(f"{node2.admin}/readyz/writes").status_code == 200
    litefs.post("disconnect", node="node-2")
    wait_until(lambda: node2.status()["primary"] is None, what="node-2 knows no primary")
    assert httpx.get(f"{node2.admin}/readyz").status_code == 200
    writes = httpx.get(f"{node2.admin}/readyz/writes")
    assert writes.status_code == 503 and "no primary is known" in writes.text
    assert node2.metric("litegate_primary_known") == 0
    reads = subprocess.run([str(litegate_bin()), "status", "--admin", node2.admin], capture_output=True, text=True,
                           timeout=20)
    assert reads.returncode == 0, reads.stdout + reads.stderr
    only_writes = subprocess.run([str(litegate_bin()), "status", "--writes", "--admin", node2.admin],
                                 capture_output=True, text=True, timeout=20)
    assert only_writes.returncode == 2 and "no primary is known" in only_writes.stdout


def test_the_same_primary_announced_again_is_not_a_change(procs):
    """LiteFS losing and finding the same primary again (as during an
    outage, every second) is no change of primary; a move is one."""
    litefs, (node1, node2) = start_litefs(procs)
    for _ in range(3):
        litefs.post("disconnect", node="node-2")
        wait_until(lambda: node2.status()["primary"] is None, what="node-2 loses its primary")
        litefs.post("connect", node="node-2")
        wait_until(lambda: node2.status()["primary"] == "node-1", what="node-2 finds it again")
    assert node2.metric("litegate_primary_changes_total") == 0
    litefs.post("primary", node="node-2")
    wait_until(lambda: node2.status()["role"] == "primary", what="node-2 takes the lease")
    assert node2.metric("litegate_primary_changes_total") == 1
    assert node2.metric("litegate_litefs_api_up") == 1


def test_max_lag_readiness(procs):
    """A replica that forwarded a write knows the position the primary
    reached; until its own LiteFS position gets there, it reports the lag,
    and /readyz?max_lag below it is 503."""
    litefs, (node1, node2) = start_litefs(procs, lag_ms={"node-2": 3000})
    assert httpx.get(f"{node2.admin}/readyz", params={"max_lag": "1s"}).status_code == 200
    r = httpx.post(f"{node2.url}/notes", json={"text": "lagging"}, timeout=20)
    assert r.status_code == 201
    wait_until(lambda: node2.metric("litegate_replication_lag_seconds") > 1.0, timeout=5, what="lag seen")
    lagging = httpx.get(f"{node2.admin}/readyz", params={"max_lag": "1s"})
    assert lagging.status_code == 503 and "over max_lag" in lagging.text
    assert httpx.get(f"{node2.admin}/readyz", params={"max_lag": "1m"}).status_code == 200
    wait_until(lambda: httpx.get(f"{node2.admin}/readyz", params={"max_lag": "1s"}).status_code == 200,
               timeout=15, what="caught up")
    assert httpx.get(f"{node2.admin}/readyz", params={"max_lag": "soon"}).status_code == 400


def test_json_logs_and_no_secret_in_debug_logs(procs, upstream, monkeypatch):
    """At debug level, through forwarded writes and refused cluster and
    admin requests, neither the cluster secret nor the admin token is
    ever written to the log; log.format = "json" gives one object a line."""
    monkeypatch.setenv("LITEGATE_LOG", "debug")
    monkeypatch.setenv("LITEGATE_LOG_FORMAT", "json")
    token = "admin-token-for-tests-9f8e7d6c5b4a"
    token_file = procs.log_dir / "admin.token"
    token_file.write_text(token + "\n")
    nodes = start_static_cluster(procs, [upstream, upstream], extra=f'[admin]\ntoken_file = "{token_file}"\n')
    secret = (procs.log_dir / "cluster.secret").read_text().strip()
    primary, replica = nodes
    wait_until(lambda: replica.status()["primary"] == "node-1", what="replica knows the primary")
    for i in range(3):
        assert httpx.post(f"{replica.url}/echo", content=f"w{i}".encode()).status_code == 200
    refused = httpx.post(f"http://127.0.0.1:{primary.cluster_port}/echo",
                         headers={"litegate-cluster-secret": "wrong-" + secret[:8]})
    assert refused.status_code == 401
    assert httpx.post(f"{replica.admin}/promote", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{replica.admin}/promote", headers={"authorization": f"Bearer {token}"}).status_code in (200, 409)
    for node in nodes:
        log = node.proc.log_path.read_text(errors="replace")
        assert secret not in log and token not in log, node.name
        lines = [line for line in log.splitlines() if line.strip()]
        assert lines and all(json.loads(line)["level"] for line in lines), log[-2000:]
        assert any(json.loads(line)["level"] == "DEBUG" for line in lines)
