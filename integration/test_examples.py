"""Every deployment example in the repository is checked here, since none
can be run on the machine the tests run on (no container engine, no
Kubernetes, no Fly.io): compose files against the Compose Specification's
JSON schema (vendored in schema/, see its README), litegate configs with
`litegate check`, YAML and TOML files by parsing them, and the settings the
docs promise (restart policies, grace periods, healthchecks, FUSE)."""

import configparser
import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness import INTEGRATION, ROOT, litegate_bin

COMPOSE_FILES = [ROOT / "compose" / "docker-compose.yml", ROOT / "compose" / "litefs" / "docker-compose.yml"]
# public.shutdown_grace's default plus the most a leader's handoff drain waits.
SHUTDOWN_AND_HANDOFF_S = 30 + 10


def check(config: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(litegate_bin()), "check", "--config", str(config)], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin", **env})


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match.group(1))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_file_matches_the_compose_schema(path):
    schema = json.loads((INTEGRATION / "schema" / "compose_spec.json").read_text())
    document = yaml.safe_load(path.read_text())
    # The schema names draft 2019-09 (with a trailing "#" jsonschema does
    # not look up): that draft, explicitly.
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    # The schema really is applied: a misspelt key is caught.
    broken = {**document, "services": {**document["services"], "x": {"image": "a", "restrat": "always"}}}
    assert list(validator.iter_errors(broken))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_litegate_services_restart_and_stop_gracefully(path):
    services = yaml.safe_load(path.read_text())["services"]
    litegates = {name: s for name, s in services.items() if "litegate" in name or "litefs" in name}
    assert len(litegates) == 3
    for name, service in litegates.items():
        assert service["restart"] == "unless-stopped", name
        assert seconds(service["stop_grace_period"]) > SHUTDOWN_AND_HANDOFF_S, name
        assert "litegate" in service["healthcheck"]["test"], name
        # Metrics are reachable from the host, on loopback only.
        assert any(str(p).startswith("127.0.0.1:") and str(p).endswith(":9191") for p in service["ports"]), name


def test_compose_bootstrap_is_not_wired_to_one_node():
    document = yaml.safe_load(COMPOSE_FILES[0].read_text())
    for name in ("litegate-1", "litegate-2", "litegate-3"):
        service = document["services"][name]
        assert "--bootstrap" not in service.get("command", []), name
        script = service["entrypoint"][-1]
        assert '"$BOOTSTRAP_NODE" = "$LITEGATE_NODE_NAME"' in script.replace("$$", "$"), name


def test_the_litefs_variant_has_fuse():
    services = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]
    for name, service in services.items():
        assert "/dev/fuse" in service["devices"] and "SYS_ADMIN" in service["cap_add"], name
    litefs = yaml.safe_load((ROOT / "compose" / "litefs" / "litefs.yml").read_text())
    assert litefs["lease"]["type"] == "static" and litefs["fuse"]["dir"] == "/litefs"
    assert "proxy" not in litefs, "litegate takes the place of LiteFS's proxy"


@pytest.mark.parametrize("node", [1, 2, 3])
def test_compose_litegate_configs_pass_check(node):
    for config, upstream in ((ROOT / "compose" / "litegate.toml", f"http://app-{node}:8000"),
                             (ROOT / "compose" / "litefs" / "litegate.toml", "http://127.0.0.1:8000")):
        env = {"LITEGATE_NODE_ID": str(node), "LITEGATE_NODE_NAME": f"node-{node}",
               "LITEGATE_UPSTREAM_URL": upstream}
        out = check(config, env)
        assert out.returncode == 0, f"{config}: {out.stderr}"


def test_fly_example_parses_and_its_litegate_config_needs_no_peers():
    fly = tomllib.loads((ROOT / "examples" / "fly" / "fly.toml").read_text())
    assert fly["http_service"]["internal_port"] == 8080
    litefs = yaml.safe_load((ROOT / "examples" / "fly" / "litefs.yml").read_text())
    assert litefs["lease"]["hostname"] == "${HOSTNAME}"
    config = ROOT / "examples" / "fly" / "litegate.toml"
    assert "peers" not in config.read_text() and "[node]" not in config.read_text()
    out = check(config, {"FLY_MACHINE_ID": "3d8d9930b23e89"})
    assert out.returncode == 0, out.stderr
    assert 'on_replica = "fly-replay"' in out.stdout


def test_kubernetes_example_parses_and_its_config_passes_check(tmp_path):
    documents = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes" / "statefulset.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents if d["kind"] != "Service"}
    headless = [d for d in documents if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and headless[0]["spec"]["publishNotReadyAddresses"] is True
    assert kinds["StatefulSet"]["spec"]["serviceName"] == headless[0]["metadata"]["name"]
    config = tmp_path / "litegate.toml"
    config.write_text(kinds["ConfigMap"]["data"]["litegate.toml"])
    for ordinal in range(3):
        out = check(config, {"LITEGATE_NODE_ID": str(ordinal + 1), "LITEGATE_NODE_NAME": f"app-{ordinal}"})
        assert out.returncode == 0, out.stderr


def test_systemd_unit_reloads_with_sighup_and_outwaits_the_grace():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((ROOT / "examples" / "systemd" / "litegate.service").read_text())
    service = unit["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert seconds(service["TimeoutStopSec"]) > SHUTDOWN_AND_HANDOFF_S
    assert service["User"] == "litegate"


def test_dockerfile_runs_unprivileged_with_a_healthcheck_and_a_small_context():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM debian:bookworm-slim" in dockerfile
    assert re.search(r"^USER 10001$", dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"litegate\", \"status\"", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for heavy in ("target/", ".git/", ".venv/"):
        assert heavy in ignored
    # Every path the Dockerfile copies is in the build context.
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), item


def test_no_example_is_named_like_flyctls_own_file():
    # flyctl reads fly.toml from the working directory: an example litegate
    # config of that name would be taken for the app's.
    assert not (ROOT / "proxy-config" / "fly.toml").exists()
