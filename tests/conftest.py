"""Shared fixtures. Real data (DeiT-Tiny weights, ImageNet sample) comes from VITPRUNE_DATA_DIR."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.postgres import drop_database, new_database, throwaway_postgres

DATA_ENV = "VITPRUNE_DATA_DIR"


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory with `deit_tiny_patch16_224/`, `imagenet-sample/` and `imagenet_wnids.txt`."""
    root = _data_dir()
    if root is None:
        pytest.skip(f"real data not configured: set {DATA_ENV} to the shared data directory")
    if not (root / "deit_tiny_patch16_224" / "model.safetensors").is_file():
        pytest.skip(f"{DATA_ENV}={root} has no deit_tiny_patch16_224/model.safetensors")
    return root


@pytest.fixture(scope="session")
def deit_tiny_weights(data_dir: Path) -> Path:
    return data_dir / "deit_tiny_patch16_224" / "model.safetensors"


@pytest.fixture(scope="session")
def imagenet_dir(data_dir: Path) -> Path:
    return data_dir / "imagenet-sample"


@pytest.fixture(scope="session")
def class_map(data_dir: Path) -> Path:
    return data_dir / "imagenet_wnids.txt"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Weights of a small real ViT and folders of images (tests/search/tiny.py), written once per session."""
    from tests.search.tiny import tiny_job

    root = tmp_path_factory.mktemp("tiny")
    tiny_job(root)
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's tests (use with `pytestmark = pytest.mark.usefixtures("one_thread")`):
    slow real-model work runs beside nothing else on a 2-core machine, and runs the same everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _service_home(tmp_path_factory) -> None:
    """Service commands started by tests (e.g. worker subprocesses) keep their data out of the checkout."""
    os.environ.setdefault("VITPRUNE_HOME", str(tmp_path_factory.mktemp("vitprune-home")))


# -- PostgreSQL: one throw-away server per test session, fresh databases per test ---------------------------

URL_ENV = "VITPRUNE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL with rights to create databases.

    `$VITPRUNE_TEST_POSTGRES_URL` points at an existing server; otherwise a throw-away local cluster is started.
    """
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def make_postgres_db(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Factory for databases that belong to this test alone; each call creates one, all are dropped afterwards."""
    created: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        url = new_database(postgres_url, name)
        created.append(name)
        return url

    yield make
    for name in created:
        drop_database(postgres_url, name)


@pytest.fixture
def postgres_db_url(make_postgres_db: Callable[[], str]) -> str:
    """URL of an empty database created for this test alone."""
    return make_postgres_db()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
