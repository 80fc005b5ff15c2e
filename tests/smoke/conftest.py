"""The real tiny local model for smoke tests: skipped (with the reason) when it is not
installed, except under `.ci/run`, which installs it and sets
CREWGRAPH_REQUIRE_LOCAL_MODEL=1 so a broken install fails instead of skipping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.local_model import (
    LocalModelInstall,
    LocalModelSettings,
    RunningModel,
    find_install,
    install_root,
    start,
    stop,
)
from tests.support.services import free_port

REPO = Path(__file__).resolve().parents[2]


def _root() -> Path:
    data_dir = Path(os.environ.get("CREWGRAPH_DATA_DIR") or REPO / ".crewgraph")
    return install_root(data_dir, LocalModelSettings())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip at collection, before any server or database fixture is set up."""
    if find_install(_root()) is not None or os.environ.get("CREWGRAPH_REQUIRE_LOCAL_MODEL"):
        return
    skip = pytest.mark.skip(
        reason=f"the real local model is not installed in {_root()}: run `make local-model`"
    )
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def local_model_install() -> LocalModelInstall:
    install = find_install(_root())
    if install is None:
        pytest.fail(f"the real local model is not installed in {_root()}: run `make local-model`")
    return install


@pytest.fixture(scope="session")
def local_model(local_model_install: LocalModelInstall) -> Iterator[RunningModel]:
    """The model's server: found running (e.g. under `make run`) or started for the session
    on a free port, and then stopped."""
    running = start(local_model_install, LocalModelSettings(port=free_port()))
    yield running
    if running.started:
        stop(local_model_install)
