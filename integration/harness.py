"""Starting real processes for tests: litegate, uvicorn apps. Every process
is stopped at teardown, every wait is bounded, every port is picked free on
loopback."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
INTEGRATION = ROOT / "integration"


def litegate_bin() -> Path:
    path = Path(os.environ.get("LITEGATE_BIN", ROOT / "target" / "release" / "litegate"))
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: run `cargo build --release` (scripts/test does)")
    return path


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range
    (32768+ here), so a client connection made between picking it and the
    server binding it cannot take it; never the same one twice per run."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32768)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port in 20000-32767")


def wait_for_port(port: int, proc: "Proc | None" = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s" + (f":\n{proc.output()}" if proc else ""))


class Proc:
    """A child process whose output goes to a file, for reading on failure."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        self._log.close()

    def rss_peak_kib(self) -> int:
        """VmHWM: the most resident memory the process has ever used."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM in /proc status")


class Procs:
    """Everything a test started; stopped in reverse order at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def start(self, name: str, args: list[str], **kw) -> Proc:
        proc = Proc(name, args, self.log_dir, **kw)
        self.started.append(proc)
        return proc

    def uvicorn(self, name: str, app: str, app_dir: Path, env: dict | None = None) -> tuple[Proc, str]:
        port = free_port()
        proc = self.start(
            name,
            [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--ws", "websockets"],
            env=env,
        )
        wait_for_port(port, proc)
        return proc, f"http://127.0.0.1:{port}"

    def litegate(self, name: str, args: list[str], env: dict | None = None, prefix: list[str] | None = None) -> Proc:
        """`prefix` runs it under another command (e.g. nsenter)."""
        return self.start(name, [*(prefix or []), str(litegate_bin()), *args], env=env)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


class Node:
    """A running litegate with its public and admin base URLs."""

    def __init__(self, proc: Proc, public_port: int, admin_port: int):
        self.proc = proc
        self.public_port = public_port
        self.admin_port = admin_port
        self.url = f"http://127.0.0.1:{public_port}"
        self.admin = f"http://127.0.0.1:{admin_port}"

    def metrics(self) -> str:
        """/metrics from the admin listener (a cluster node's: on its
        namespace's loopback, where it has one)."""
        return run_in_netns(getattr(self, "netns", None),
                            lambda: httpx.get(f"{self.admin}/metrics", timeout=5).text)

    def metric(self, line_prefix: str) -> float:
        """The value of the first sample whose line starts with line_prefix."""
        for line in self.metrics().splitlines():
            if line.startswith(line_prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start_dev(procs: Procs, upstream: str, name: str = "node-a") -> Node:
    public, admin = free_port(), free_port()
    proc = procs.litegate(
        name,
        ["dev", "--upstream", upstream, "--listen", f"127.0.0.1:{public}", "--admin", f"127.0.0.1:{admin}",
         "--name", name],
    )
    wait_for_port(public, proc)
    wait_for_port(admin, proc)
    return Node(proc, public, admin)


def start_with_config(procs: Procs, toml_text: str, name: str = "node-a", env: dict | None = None,
                      nofile: int | None = None) -> Node:
    """Runs `litegate run` with toml_text; the listeners come from environment
    overrides, on free ports. With nofile, under that RLIMIT_NOFILE (soft and
    hard, so litegate cannot raise it)."""
    public, admin = free_port(), free_port()
    path = procs.log_dir / f"{name}.toml"
    path.write_text(toml_text)
    full_env = {"LITEGATE_PUBLIC_LISTEN": f"127.0.0.1:{public}", "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
                "LITEGATE_NODE_NAME": name, **(env or {})}
    args = ["run", "--config", str(path)]
    if nofile is None:
        proc = procs.litegate(name, args, env=full_env)
    else:
        proc = procs.start(name, ["prlimit", f"--nofile={nofile}:{nofile}", str(litegate_bin()), *args], env=full_env)
    wait_for_port(public, proc)
    wait_for_port(admin, proc)
    return Node(proc, public, admin)


def header_values(echo: dict, name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k == name]


class ClusterNode(Node):
    def __init__(self, proc: Proc, public_port: int, admin_port: int, name: str, cluster_port: int,
                 config_path: Path, env: dict):
        super().__init__(proc, public_port, admin_port)
        self.name = name
        self.cluster_port = cluster_port
        self.config_path = config_path
        self.env = env
        # The network namespace it runs in (None: this one) and the address
        # the other nodes reach it at.
        self.netns: str | None = None
        self.host = "127.0.0.1"

    def status(self) -> dict:
        """/status from the admin listener, on its namespace's loopback."""
        return run_in_netns(self.netns, lambda: httpx.get(f"{self.admin}/status", timeout=5).json())


def write_secret(directory: Path, name: str = "cluster.secret", secret: str = "s3cret-for-tests-0123456789abcdef") -> Path:
    path = directory / name
    path.write_text(secret + "\n")
    return path


def cluster_auth(secret: str, method: str, path: str) -> dict[str, str]:
    """The `Litegate-Cluster-Auth` header a node signs a cluster request
    with (src/cluster/auth.rs): HMAC-SHA256 of method, path and query,
    timestamp and a fresh nonce."""
    at = str(int(time.time()))
    nonce = secrets.token_hex(16)
    message = f"litegate-cluster-v1\n{method}\n{path}\n{at}\n{nonce}".encode()
    sig = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {"litegate-cluster-auth": f"v1 {at} {nonce} {sig}"}


def cluster_config(
    nodes: list[dict],
    me: dict,
    data_dir: Path,
    secret_file: Path | None,
    extra: str = "",
    tls: dict | None = None,
    mode: str = "static",
    cluster_lines: str = "",
) -> str:
    """A node spec's `host` (default 127.0.0.1) is the address its cluster
    listener binds and the others reach it and its public listener at;
    `cluster_lines` go into [cluster]."""
    def host(n: dict) -> str:
        return n.get("host", "127.0.0.1")

    def peer(n: dict) -> str:
        if n.get("witness"):
            return f'{{ id = {n["id"]}, name = "{n["name"]}", cluster = "{host(n)}:{n["cluster_port"]}", witness = true }}'
        return (f'{{ id = {n["id"]}, name = "{n["name"]}", cluster = "{host(n)}:{n.get("reached_at", n["cluster_port"])}", '
                f'public_url = "http://{host(n)}:{n["public_port"]}" }}')

    peers = ",\n  ".join(peer(n) for n in nodes)
    if mode == "raft":
        primary = '[primary]\nmode = "raft"\n\n'
    else:
        primary = f'[primary]\nmode = "static"\nstatic = "{nodes[0]["name"]}"\n\n'
    node_extra = "witness = true\n" if me.get("witness") else ""
    upstream = "" if me.get("witness") else f'[upstream]\nurl = "{me["upstream"]}"\n\n'
    secret_line = f'secret_file = "{secret_file}"\n' if secret_file else ""
    tls_lines = "".join(f'{k} = "{v}"\n' for k, v in (tls or {}).items())
    return (
        f'[node]\nid = {me["id"]}\nname = "{me["name"]}"\n{node_extra}\n'
        f'{upstream}'
        f'{primary}'
        f'[cluster]\nlisten = "{host(me)}:{me["cluster_port"]}"\ndata_dir = "{data_dir}"\n{secret_line}{tls_lines}'
        f'{cluster_lines}'
        f"peers = [\n  {peers},\n]\n\n{extra}"
    )


def start_static_cluster(
    procs: Procs,
    upstreams: list[str],
    extra: str = "",
    secret: bool = True,
    tls: dict | None = None,
) -> list[ClusterNode]:
    """One litegate per upstream, node-1 the initial primary. `extra` is
    appended to every config (e.g. a [routing] section)."""
    secret_file = write_secret(procs.log_dir) if secret else None
    specs = [
        {"id": i + 1, "name": f"node-{i + 1}", "upstream": up, "public_port": free_port(),
         "admin_port": free_port(), "cluster_port": free_port()}
        for i, up in enumerate(upstreams)
    ]
    nodes = []
    for spec in specs:
        data_dir = procs.log_dir / f"{spec['name']}-data"
        path = procs.log_dir / f"{spec['name']}.toml"
        path.write_text(cluster_config(specs, spec, data_dir, secret_file, extra, tls))
        env = {"LITEGATE_PUBLIC_LISTEN": f"127.0.0.1:{spec['public_port']}",
               "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{spec['admin_port']}"}
        proc = procs.litegate(spec["name"], ["run", "--config", str(path)], env=env)
        nodes.append(ClusterNode(proc, spec["public_port"], spec["admin_port"], spec["name"], spec["cluster_port"],
                                 path, env))
    for node in nodes:
        wait_for_port(node.public_port, node.proc)
        wait_for_port(node.cluster_port, node.proc)
    return nodes


def start_raft_cluster(
    procs: Procs,
    upstreams: list[str],
    witnesses: int = 0,
    extra: str = "",
    bootstrap: bool | str = True,
    node_env=None,
    edit_config=None,
    reached_at: dict[str, int] | None = None,
    netns: dict[str, str] | None = None,
    cluster_lines: str = "",
) -> list[ClusterNode]:
    """One litegate per upstream plus `witnesses` witness nodes (no app),
    all in primary.mode = "raft"; node-1 bootstraps the cluster
    (`bootstrap="all"`: every node is started with --bootstrap). Returns
    app nodes first, then witnesses. `node_env(name)` adds environment
    (e.g. LITEGATE_HOOKS_* overrides) per node; `edit_config(name, text)`
    returns the config text a node is started with (e.g. one node that
    cannot reach another). `reached_at` maps a node name to the port the
    others reach its cluster listener at (a proxy). `netns` maps a node
    name to the network namespace (under /run/netns) it runs in, entered
    with nsenter (network only, so it shares this mount namespace): its
    cluster listener then binds the namespace's own address
    (`netns_address(name)`), and its public listener every address, for
    the others to reach; the admin listener stays on the namespace's
    loopback. `cluster_lines` go into each node's [cluster]."""
    secret_file = write_secret(procs.log_dir)
    specs = [
        {"id": i + 1, "name": f"node-{i + 1}", "upstream": up, "public_port": free_port(),
         "admin_port": free_port(), "cluster_port": free_port()}
        for i, up in enumerate(upstreams)
    ]
    for spec in specs:
        if reached_at and spec["name"] in reached_at:
            spec["reached_at"] = reached_at[spec["name"]]
        if netns and spec["name"] in netns:
            spec["netns"] = netns[spec["name"]]
            spec["host"] = netns_address(spec["netns"])
    for w in range(witnesses):
        specs.append({"id": len(specs) + 1, "name": f"witness-{w + 1}", "witness": True, "upstream": None,
                      "public_port": free_port(), "admin_port": free_port(), "cluster_port": free_port()})
    nodes = []
    for spec in specs:
        data_dir = procs.log_dir / f"{spec['name']}-data"
        path = procs.log_dir / f"{spec['name']}.toml"
        text = cluster_config(specs, spec, data_dir, secret_file, extra, mode="raft", cluster_lines=cluster_lines)
        path.write_text(edit_config(spec["name"], text) if edit_config else text)
        public_host = "0.0.0.0" if "netns" in spec else "127.0.0.1"
        env = {"LITEGATE_PUBLIC_LISTEN": f"{public_host}:{spec['public_port']}",
               "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{spec['admin_port']}",
               **(node_env(spec["name"]) if node_env else {})}
        args = ["run", "--config", str(path)]
        if bootstrap == "all" or (bootstrap and spec["id"] == 1):
            args.append("--bootstrap")
        proc = procs.litegate(spec["name"], args, env=env, prefix=nsenter(spec.get("netns")))
        node = ClusterNode(proc, spec["public_port"], spec["admin_port"], spec["name"], spec["cluster_port"],
                           path, env)
        node.witness = bool(spec.get("witness"))
        node.netns = spec.get("netns")
        node.host = spec.get("host", "127.0.0.1")
        nodes.append(node)
    for node in nodes:
        wait_for_port_in(node.netns, node.admin_port if node.witness else node.public_port, node.proc)
        wait_for_port_in(node.netns, node.cluster_port, node.proc, host=node.host)
    return nodes


def leader_of(nodes: list[ClusterNode], timeout: float = 15.0) -> ClusterNode:
    """The app node every live node agrees is the primary, once they do."""
    found: list[ClusterNode] = []

    def agreed() -> bool:
        views = set()
        for n in nodes:
            if n.proc.popen.poll() is not None:
                continue
            try:
                views.add(n.status()["primary"])
            except httpx.HTTPError:
                return False
        if len(views) != 1 or None in views:
            return False
        name = views.pop()
        found[:] = [n for n in nodes if n.name == name]
        return bool(found) and found[0].status()["role"] == "primary"

    wait_until(agreed, timeout, "one primary agreed on by every live node")
    return found[0]


def restart(procs: Procs, node: ClusterNode) -> None:
    """Starts a stopped node again with the same config and data dir."""
    node.proc = procs.litegate(node.name + "-again", ["run", "--config", str(node.config_path)], env=node.env,
                               prefix=nsenter(node.netns))
    wait_for_port_in(node.netns, node.admin_port if getattr(node, "witness", False) else node.public_port, node.proc)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout}s")


class LiteFS:
    """The LiteFS stand-in (fixtures/litefs_standin.py) for a set of nodes."""

    def __init__(self, procs: Procs, names: list[str], db: str = "db.sqlite3", lag_ms: dict | None = None):
        self.db = db
        self.control_port = free_port()
        self.control = f"http://127.0.0.1:{self.control_port}"
        self.mounts = {n: procs.log_dir / f"litefs-{n}" for n in names}
        self.api_ports = {n: free_port() for n in names}
        args = [sys.executable, str(INTEGRATION / "fixtures" / "litefs_standin.py"), "--control",
                str(self.control_port), "--db", db, "--primary", names[0]]
        for n in names:
            args += ["--node", f"{n}={self.mounts[n]}:{self.api_ports[n]}"]
        for n, ms in (lag_ms or {}).items():
            args += ["--lag", f"{n}={ms}"]
        self.proc = procs.start("litefs-standin", args)
        wait_for_port(self.control_port, self.proc)

    def api(self, name: str) -> str:
        return f"http://127.0.0.1:{self.api_ports[name]}"

    def post(self, action: str, **params) -> None:
        r = httpx.post(f"{self.control}/{action}", params=params, timeout=10)
        r.raise_for_status()

    def state(self) -> dict:
        return httpx.get(f"{self.control}/state", timeout=10).json()

    def app_env(self, name: str, app: str, app_dir: Path) -> dict:
        """Env for an app under the commit barrier, on this node's mount."""
        return {"STANDIN_APP": app, "STANDIN_APP_DIR": str(app_dir), "STANDIN_CONTROL": self.control,
                "STANDIN_NODE": name, "APP_DB": str(self.mounts[name] / self.db), "APP_NODE": f"app-{name[-1]}"}


def start_litefs_cluster(
    procs: Procs,
    litefs: LiteFS,
    upstreams: list[str],
    mode: str = "litefs",
    extra: str = "",
) -> list[ClusterNode]:
    """One litegate per node of `litefs`, following it (mode "litefs"), or
    any other mode with read-your-writes from its mount."""
    names = list(litefs.mounts)
    secret_file = write_secret(procs.log_dir)
    specs = [
        {"id": i + 1, "name": n, "upstream": up, "public_port": free_port(), "admin_port": free_port(),
         "cluster_port": free_port()}
        for i, (n, up) in enumerate(zip(names, upstreams))
    ]
    nodes = []
    for spec in specs:
        name = spec["name"]
        text = cluster_config(specs, spec, procs.log_dir / f"{name}-data", secret_file,
                              extra + f'\n[litefs]\nmount = "{litefs.mounts[name]}"\napi = "{litefs.api(name)}"\n'
                                      f'db = "{litefs.db}"\n')
        text = text.replace('mode = "static"', f'mode = "{mode}"')
        path = procs.log_dir / f"{name}.toml"
        path.write_text(text)
        env = {"LITEGATE_PUBLIC_LISTEN": f"127.0.0.1:{spec['public_port']}",
               "LITEGATE_ADMIN_LISTEN": f"127.0.0.1:{spec['admin_port']}"}
        proc = procs.litegate(name, ["run", "--config", str(path)], env=env)
        nodes.append(ClusterNode(proc, spec["public_port"], spec["admin_port"], name, spec["cluster_port"], path, env))
    for node in nodes:
        wait_for_port(node.public_port, node.proc)
        wait_for_port(node.cluster_port, node.proc)
    return nodes


# --- TCP relays, for cutting links in tests ----------------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run_in_netns(netns: str | None, fn, timeout: float = 10.0):
    """fn() run with its sockets in network namespace `netns` (None: here).
    A socket belongs to the namespace of the thread that created it, and
    setns(CLONE_NEWNET) moves only the calling thread, so a short-lived
    thread joins the namespace, runs fn, and ends. fn's exception is
    raised here; a thread still running after `timeout` is an OSError."""
    if netns is None:
        return fn()
    result: dict = {}

    def run() -> None:
        try:
            enter_netns(netns)
            result["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if "error" in result:
        raise result["error"]
    if "value" in result:
        return result["value"]
    raise OSError(f"running in {netns} did not finish within {timeout}s")


def nsenter(netns: str | None) -> list[str]:
    """The command prefix that runs a program in network namespace `netns`
    (None: here) and nothing else: unlike `ip netns exec`, nsenter --net
    keeps this mount namespace, so a FUSE mount made inside is seen
    outside (by the app, by cleanup)."""
    return [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}"]


def netns_address(netns: str) -> str:
    """The IPv4 address of namespace `netns` on the test network (not
    loopback), as `ip -n NETNS -j addr` reports it."""
    out = subprocess.run(["ip", "-n", netns, "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=15)
    if out.returncode != 0:
        raise RuntimeError(f"ip -n {netns} addr: {out.stderr.strip()}")
    for link in json.loads(out.stdout):
        for a in link.get("addr_info", []):
            if not a["local"].startswith("127."):
                return a["local"]
    raise RuntimeError(f"namespace {netns} has no address but loopback")


def enter_netns(netns: str) -> None:
    """Moves the calling thread (only) into network namespace `netns`."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def connect_in_netns(netns: str | None, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to host:port inside `netns` (None: here)."""
    return run_in_netns(netns, lambda: socket.create_connection((host, port), timeout=timeout), timeout + 5)


def wait_for_port_in(netns: str | None, port: int, proc: Proc, timeout: float = 15.0,
                     host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        try:
            connect_in_netns(netns, port, timeout=0.5, host=host).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} in {netns or 'this namespace'} after {timeout}s:\n"
                       f"{proc.output()}")


class TcpRelay:
    """Relays connections to a loopback port of its own to
    127.0.0.1:target in `netns` (or here); while `target` is None it
    refuses them. `cut()` breaks every relayed connection and refuses new
    ones until `restore()`; `close()` ends it."""

    def __init__(self, target: int | None, netns: str | None = None, when_down: bytes | None = None):
        self.netns = netns
        self.target = target
        # What a client that connected while nothing listened behind the
        # relay gets instead of a closed connection (a direct client would
        # have been refused).
        self.when_down = when_down
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._cut or self._closed or self.target is None
            if refuse:
                inbound.close()
                continue
            try:
                outbound = connect_in_netns(self.netns, self.target)
                outbound.settimeout(None)
            except OSError:
                if self.when_down is None:
                    inbound.close()
                else:
                    threading.Thread(target=self._answer_down, args=(inbound,), daemon=True).start()
                continue
            with self._lock:
                if self._cut or self._closed:
                    inbound.close()
                    outbound.close()
                    continue
                self._open += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _answer_down(self, inbound: socket.socket) -> None:
        # Answer, then read until the client closes, so no unread request
        # byte turns the close into a reset that loses the answer.
        try:
            inbound.settimeout(5)
            inbound.sendall(self.when_down)
            while inbound.recv(65536):
                pass
        except OSError:
            pass
        inbound.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            for s in (src, dst):
                if s in self._open:
                    self._open.remove(s)
                    s.close()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.listener.close()
        self.cut()
