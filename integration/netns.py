"""Network namespaces for tests that cut the network between nodes: the
`ip` wrapper, a probe for whether namespaces can be made here, and a
switched network (`HubNet`) whose ports a test unplugs.

Processes go into a namespace with harness.nsenter (network only), test
code with harness.run_in_netns."""

from __future__ import annotations

import os
import random
import shutil
import subprocess


def ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def netns_unusable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"no `{tool}` ({'iproute2' if tool == 'ip' else 'util-linux'})"
    probe = f"lgt-probe-{os.getpid()}-{random.randrange(1 << 30):x}"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError) as e:
        return f"`ip netns add` failed: {e}"
    try:
        ip("netns", "del", probe)
    except RuntimeError:
        pass
    return None


class HubNet:
    """A switch: a hub namespace holding a bridge, and one namespace per
    node plugged into it by a veth pair, each node at 10.X.Y.N/24 (X and Y
    random per run, so concurrent runs and the host's own networks never
    meet). The hub itself is at 10.X.Y.254, for clients.

    `unplug(i)` takes node i's port off the bridge, with both links left
    up: packets are silently dropped both ways, as behind a failed switch
    port, so connections hang rather than fail. `plug(i)` puts it back."""

    def __init__(self, n: int):
        tag = f"{os.getpid() % 100000}{random.randrange(1 << 16):04x}"
        rng = random.Random()
        self.subnet = f"10.{rng.randrange(64, 255)}.{rng.randrange(0, 256)}"
        self.hub = f"lgh-{tag}"
        self.names = [f"lgn-{tag}-{i + 1}" for i in range(n)]
        self.created: list[str] = []
        self.unplugged: set[int] = set()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        ip("netns", "add", self.hub)
        self.created.append(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{self.hub_address}/24", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", self.hub, "link", "add", self._port(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.hub, "link", "set", self._port(i), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    @property
    def hub_address(self) -> str:
        return f"{self.subnet}.254"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    @staticmethod
    def _port(i: int) -> str:
        return f"port{i + 1}"

    def unplug(self, i: int) -> None:
        ip("-n", self.hub, "link", "set", self._port(i), "nomaster")
        self.unplugged.add(i)

    def plug(self, i: int) -> None:
        ip("-n", self.hub, "link", "set", self._port(i), "master", "br0")
        self.unplugged.discard(i)

    def close(self) -> None:
        """Deletes every namespace it made (their links go with them); the
        processes in them must have been stopped first."""
        for ns in reversed(self.created):
            try:
                ip("netns", "del", ns)
            except RuntimeError:
                pass
        self.created.clear()
