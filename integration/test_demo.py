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
        assert urls, text
        name, public, admin = urls[0]

        write = httpx.post(f"{public}/entries", content="hello demo", headers={"content-type": "text/plain"})
        assert write.status_code == 201, write.text
        assert write.json()["served_by"] == write.headers["litegate-served-by"]
        entries = httpx.get(f"{public}/entries").json()["entries"]
        assert [e["text"] for e in entries] == ["hello demo"]
        assert "hello demo" in httpx.get(f"{public}/").text
        assert httpx.get(f"{admin}/status").json()["node"] == name
        assert any(Path(tmp_path).glob("litegate-demo-*"))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    assert not any(Path(tmp_path).glob("litegate-demo-*")), "the demo left its files behind"
