"""Fixtures for the fleet tests: a throwaway PostgreSQL server, a tiny model repository, and
replicas of the real server that share the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_binary
from tests.fleet.fleet_support import Fleet, replica_env
from tests.pgserver import PostgresServer, pg, pg_server  # noqa: F401  (fixtures)


@pytest.fixture
def fleet(pg: PostgresServer, tmp_path: Path) -> Iterator[Fleet]:  # noqa: F811
    """Three replicas on one empty database, all in the rotation; stopped afterwards."""
    repo = tmp_path / "models"
    write_binary(repo)
    replicas = Fleet(replica_env(repo, pg))
    try:
        replicas.start(3)
        yield replicas
    finally:
        replicas.stop()
