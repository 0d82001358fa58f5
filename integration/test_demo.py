"""`litegate demo`: the README's first command."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from harness import litegate_bin


def test_demo_serves_reads_and_writes_and_cleans_up(tmp_path):
    proc = subprocess.Popen(
        [str(litegate_bin()), "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    try:
        banner = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        urls = re.findall(r"(node-\d+)\s+(http://127\.0\.0\.1:\d+)\s+\(admin (http://127\.0\.0\.1:\d+)\)\s+pid (\d+)", text)
        assert [u[0] for u in urls] == ["node-1", "node-2", "node-3"], text
        leader = re.search(r"elected (node-\d) as the primary", text).group(1)
        nodes = {name: (url, admin, int(pid)) for name, url, admin, pid in urls}
        replica_name = next(n for n in nodes if n != leader)
        replica, replica_admin, _ = nodes[replica_name]

        # A write through a replica is served by the primary's app.
        write = httpx.post(f"{replica}/entries", content="hello demo", headers={"content-type": "text/plain"})
        assert write.status_code == 201, write.text
        assert write.json()["served_by"] == leader == write.headers["litegate-served-by"]
        read = httpx.get(f"{replica}/entries")
        assert read.json()["served_by"] == replica_name
        assert [e["text"] for e in read.json()["entries"]] == ["hello demo"]
        assert "hello demo" in httpx.get(f"{replica}/").text
        status = httpx.get(f"{replica_admin}/status").json()
        assert (status["node"], status["role"], status["primary"]) == (replica_name, "replica", leader)
        assert any(Path(tmp_path).glob("litegate-demo-*"))

        # The banner's failover recipe: kill -9 the primary; a write through
        # a survivor lands on the new primary; the demo restarts the node.
        os.kill(nodes[leader][2], signal.SIGKILL)
        after = httpx.post(f"{replica}/entries", content="after failover", headers={"content-type": "text/plain"},
                           timeout=15)
        assert after.status_code == 201, after.text
        assert after.headers["litegate-served-by"] != leader
        line = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "Restarting it" not in line:
            line = proc.stdout.readline()
        assert f"{leader} exited" in line and "Restarting it" in line
        leader_url = nodes[leader][0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{nodes[leader][1]}/status", timeout=2).json()["role"] == "replica":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert httpx.get(f"{nodes[leader][1]}/status", timeout=2).json()["role"] == "replica"
        rejoined = httpx.get(f"{leader_url}/entries", timeout=5)
        assert [e["text"] for e in rejoined.json()["entries"]] == ["hello demo", "after failover"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    assert not any(Path(tmp_path).glob("litegate-demo-*")), "the demo left its files behind"
