"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster in a
temporary folder on a free 127.0.0.1 port, run as the `postgres` user when the tests run as
root (the server refuses root), stopped and removed afterwards. The fault tests stop, start
and restart it."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_until

PASSWORD = "verdict-test"


def bindir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them off PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One cluster: `url` for the service, `sql()` for the tests, `stop()`/`start()` for
    faults, `remove()` at the end."""

    def __init__(self) -> None:
        programs = bindir()
        if programs is None:
            raise RuntimeError(
                "PostgreSQL is not installed: run `make sysdeps` (Debian's postgresql)"
            )
        self.bin = programs
        self.root = Path(tempfile.mkdtemp(prefix="verdict-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://verdict:{PASSWORD}@127.0.0.1:{self.port}/verdict"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256",
            "--no-sync", "-E", "UTF8", "--locale", "C",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 60\n"
                "shared_buffers = 32MB\nfsync = on\nlog_min_messages = warning\n"
            )
        self.start()
        self.sql_admin("postgres", f"CREATE ROLE verdict LOGIN PASSWORD '{PASSWORD}'")
        self.sql_admin("postgres", "CREATE DATABASE verdict OWNER verdict")

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / program), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (ends sessions, like an orchestrator's stop) or `immediate`
        (a crash: no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def sql_admin(self, dbname: str, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); the rows it returns."""
        import psycopg

        with psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True
        ) as conn:
            cursor = conn.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    def reload(self, setting: str, expected: str, timeout_s: float = 30.0) -> None:
        """pg_reload_conf(), then wait until `setting` reads `expected` in a new session: the
        server has then reloaded its configuration and signalled every open session, which
        applies it before its next command (pg_reload_conf() only sends the signal)."""
        self.sql_admin("postgres", "SELECT pg_reload_conf()")
        wait_until(
            lambda: self.sql_admin("postgres", f"SHOW {setting}") == [(expected,)],
            timeout_s,
            f"{setting} = {expected} after a configuration reload",
        )

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """One statement on the `verdict` database, as the superuser."""
        return self.sql_admin("verdict", statement)

    def reset(self) -> None:
        """An empty `verdict` database again (between tests sharing the server)."""
        self.sql_admin(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = 'verdict' AND pid <> pg_backend_pid()",
        )
        self.sql_admin("postgres", "DROP DATABASE IF EXISTS verdict")
        self.sql_admin("postgres", "CREATE DATABASE verdict OWNER verdict")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log").read_text(errors="replace")
        return ""

    def remove(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server, removed afterwards."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for a test session (per conftest that imports it)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg(pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """The server, running, writable, with an empty `verdict` database."""
    if not pg_server.running():
        pg_server.start()
    pg_server.sql_admin("postgres", "ALTER SYSTEM RESET ALL")
    pg_server.reload("default_transaction_read_only", "off")
    pg_server.reset()
    yield pg_server
    if not pg_server.running():
        pg_server.start()
