"""`litegate check` and `litegate run` on good and bad configuration."""

import subprocess

from harness import ROOT, litegate_bin


def check(tmp_path, text: str, env: dict | None = None, command: str = "check"):
    path = tmp_path / "litegate.toml"
    path.write_text(text)
    return subprocess.run(
        [str(litegate_bin()), command, "--config", str(path)],
        capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_example_configs_are_valid(tmp_path):
    # fly-static.toml names its node by machine ID, which node.name defaults to.
    env = {"PATH": "/usr/bin:/bin", "FLY_MACHINE_ID": "3d8d9ee5c1e789"}
    examples = sorted((ROOT / "proxy-config").glob("*.toml"))
    assert len(examples) >= 3
    for example in examples:
        out = subprocess.run(
            [str(litegate_bin()), "check", "--config", str(example)], capture_output=True, text=True, timeout=20,
            env=env,
        )
        assert out.returncode == 0, f"{example.name}: {out.stderr}"


def test_effective_config_is_printed_with_defaults_and_env(tmp_path):
    out = check(tmp_path, '[primary]\nmode = "dev"\n', env={"LITEGATE_UPSTREAM_URL": "http://127.0.0.1:9000"})
    assert out.returncode == 0, out.stderr
    assert 'url = "http://127.0.0.1:9000"' in out.stdout
    assert 'timeout = "1m"' in out.stdout
    assert 'on_replica = "forward"' in out.stdout


def test_unknown_key_names_the_key(tmp_path):
    out = check(tmp_path, '[primary]\nmode = "dev"\n[upstream]\nurll = "http://x:1"\n')
    assert out.returncode == 1
    assert "`upstream.urll`" in out.stderr and "unknown key" in out.stderr and "`url`" in out.stderr


def test_bad_duration_names_the_key_and_the_fix(tmp_path):
    out = check(tmp_path, '[primary]\nmode = "dev"\n[routing]\nprimary_wait = "five"\n')
    assert out.returncode == 1
    assert "`routing.primary_wait`" in out.stderr and '"5s"' in out.stderr
    out = check(tmp_path, '[primary]\nmode = "dev"\n[upstream]\ntimeout = 5\n')
    assert out.returncode == 1
    assert "`upstream.timeout`" in out.stderr and "unit" in out.stderr


def test_bad_url_names_the_key(tmp_path):
    out = check(tmp_path, '[primary]\nmode = "dev"\n[upstream]\nurl = "localhost:8000"\n')
    assert out.returncode == 1
    assert "`upstream.url`" in out.stderr and "http://" in out.stderr


def test_bad_address_and_env_override_name_the_variable(tmp_path):
    out = check(tmp_path, '[primary]\nmode = "dev"\n', env={"LITEGATE_PUBLIC_LISTEN": "8080"})
    assert out.returncode == 1
    assert "`public.listen`" in out.stderr and "LITEGATE_PUBLIC_LISTEN" in out.stderr


def test_inconsistent_cluster_is_explained(tmp_path):
    out = check(
        tmp_path,
        '[primary]\nmode = "static"\nstatic = "app-1"\n[cluster]\nlisten = "0.0.0.0:7070"\n'
        'peers = [{ id = 1, name = "app-1", cluster = "10.0.0.1:7070", public_url = "http://10.0.0.1:8080" }]\n',
    )
    assert out.returncode == 1
    assert "`node.id`" in out.stderr


def test_run_refuses_a_bad_config(tmp_path):
    out = check(tmp_path, "[upstream\n", command="run")
    assert out.returncode == 1
    assert "not valid TOML" in out.stderr


def test_syntax_error_points_at_the_line(tmp_path):
    out = check(tmp_path, '[primary]\nmode = "dev"\n[upstream]\nurl = http://x\n')
    assert out.returncode == 1
    assert "line 4" in out.stderr
