"""`litegate demo`: the README's first command."""

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
        urls = re.findall(r"(node-\d+)\s+(http://127\.0\.0\.1:\d+)\s+\(admin (http://127\.0\.0\.1:\d+)\)", text)
        assert [u[0] for u in urls] == ["node-1", "node-2", "node-3"], text
        _, replica, replica_admin = urls[1]

        # A write through a replica is served by the primary's app.
        write = httpx.post(f"{replica}/entries", content="hello demo", headers={"content-type": "text/plain"})
        assert write.status_code == 201, write.text
        assert write.json()["served_by"] == "node-1" == write.headers["litegate-served-by"]
        read = httpx.get(f"{replica}/entries")
        assert read.json()["served_by"] == "node-2"
        assert [e["text"] for e in read.json()["entries"]] == ["hello demo"]
        assert "hello demo" in httpx.get(f"{replica}/").text
        status = httpx.get(f"{replica_admin}/status").json()
        assert (status["node"], status["role"], status["primary"]) == ("node-2", "replica", "node-1")
        assert any(Path(tmp_path).glob("litegate-demo-*"))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    assert not any(Path(tmp_path).glob("litegate-demo-*")), "the demo left its files behind"
