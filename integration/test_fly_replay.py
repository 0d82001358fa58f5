"""Coming from LiteFS's proxy on Fly.io (issue 14 §5): `on_replica =
"fly-replay"` over LiteFS needs no node.id, peer list or secret (machine IDs
change on Fly), and LiteFS's method rule (`OPTIONS` is a write) and path
precedence (`passthrough` before `always-forward`) are options. Against the
LiteFS stand-in, through the real binary."""

import subprocess

import httpx

from harness import LiteFS, litegate_bin, start_with_config, wait_until

# Fly machine IDs, as `$FLY_MACHINE_ID` and LiteFS's `${HOSTNAME}` give them.
PRIMARY, REPLICA = "e784079b449483", "3d8d9930b23e89"


def minimal_config(litefs: LiteFS, name: str, upstream: str, routing: str = "") -> str:
    """The whole config a Fly app needs: no [node], no [cluster]."""
    return (f'[primary]\nmode = "litefs"\n\n[routing]\non_replica = "fly-replay"\n{routing}\n'
            f'[upstream]\nurl = "{upstream}"\n\n'
            f'[litefs]\nmount = "{litefs.mounts[name]}"\napi = "{litefs.api(name)}"\n')


def start_pair(procs, upstream, routing=""):
    litefs = LiteFS(procs, [PRIMARY, REPLICA])
    nodes = {
        name: start_with_config(procs, minimal_config(litefs, name, upstream, routing), name=name,
                                env={"FLY_MACHINE_ID": name})
        for name in (PRIMARY, REPLICA)
    }
    for node in nodes.values():
        wait_until(lambda: httpx.get(f"{node.admin}/status", timeout=5).json()["primary"] == PRIMARY,
                   what="litegate follows LiteFS")
    return litefs, nodes


def test_the_minimal_fly_config_passes_check(tmp_path):
    litefs_mount = tmp_path / "litefs"
    litefs_mount.mkdir()
    path = tmp_path / "litegate.toml"
    path.write_text(f'[primary]\nmode = "litefs"\n[routing]\non_replica = "fly-replay"\n'
                    f'[litefs]\nmount = "{litefs_mount}"\n')
    out = subprocess.run([str(litegate_bin()), "check", "--config", str(path)], capture_output=True, text=True,
                         timeout=30, env={"FLY_MACHINE_ID": REPLICA, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f'name = "{REPLICA}"' in out.stdout


def test_a_replica_replays_writes_to_the_primary_machine(procs, upstream):
    litefs, nodes = start_pair(procs, upstream)
    replica, primary = nodes[REPLICA], nodes[PRIMARY]
    r = httpx.post(f"{replica.url}/echo", content=b"x", timeout=10)
    assert r.status_code == 409 and r.headers["fly-replay"] == f"instance={PRIMARY}"
    assert r.content == b""
    # Reads stay on the replica; writes on the primary reach its app.
    r = httpx.get(f"{replica.url}/echo", timeout=10)
    assert r.status_code == 200 and r.headers["litegate-served-by"] == REPLICA
    r = httpx.post(f"{primary.url}/echo", content=b"x", timeout=10)
    assert r.status_code == 200 and r.headers["litegate-served-by"] == PRIMARY
    # No cluster listener was started: the log says nothing of one.
    assert "cluster listener up" not in replica.proc.output()
    # The lease moves: the new primary is replayed to.
    litefs.post("primary", node=REPLICA)
    wait_until(lambda: httpx.get(f"{primary.admin}/status", timeout=5).json()["primary"] == REPLICA,
               what="the old primary follows the move")
    r = httpx.post(f"{primary.url}/echo", content=b"x", timeout=10)
    assert r.status_code == 409 and r.headers["fly-replay"] == f"instance={REPLICA}"


def test_litefs_method_rule_and_passthrough_first(procs, upstream):
    routing = 'method_rule = "litefs"\npath_precedence = "local-first"\n' \
              'primary_paths = ["/echo*"]\nlocal_paths = ["/echo/local"]\n'
    _, nodes = start_pair(procs, upstream, routing)
    replica = nodes[REPLICA]
    # OPTIONS is a write under LiteFS's rule: replayed to the primary.
    r = httpx.options(f"{replica.url}/other", timeout=10)
    assert r.status_code == 409 and r.headers["fly-replay"] == f"instance={PRIMARY}"
    # passthrough (local_paths) is checked before always-forward (primary_paths).
    r = httpx.post(f"{replica.url}/echo/local", content=b"x", timeout=10)
    assert r.status_code == 200 and r.headers["litegate-served-by"] == REPLICA
    r = httpx.get(f"{replica.url}/echo/forwarded", timeout=10)
    assert r.status_code == 409


def test_default_rules_keep_options_local(procs, upstream):
    _, nodes = start_pair(procs, upstream, 'primary_paths = ["/echo*"]\nlocal_paths = ["/echo/local"]\n')
    replica = nodes[REPLICA]
    r = httpx.options(f"{replica.url}/other", timeout=10)
    assert r.headers["litegate-served-by"] == REPLICA
    r = httpx.post(f"{replica.url}/echo/local", content=b"x", timeout=10)
    assert r.status_code == 409
