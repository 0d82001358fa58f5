import pytest

from harness import INTEGRATION, Procs


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    p = Procs(tmp_path_factory.mktemp("module"))
    yield p
    p.stop_all()


@pytest.fixture(scope="module")
def upstream(module_procs) -> str:
    """The engine-test upstream (fixtures/upstream.py) under uvicorn."""
    _, url = module_procs.uvicorn("upstream", "upstream:app", INTEGRATION / "fixtures", env={"APP_NODE": "up-1"})
    return url
