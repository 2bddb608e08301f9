"""Choosing the store (VERDICT_FEEDBACK_URL, the deprecated VERDICT_FEEDBACK_DB) and the
`verdict-store` command: migrate ahead of a deployment, copy a SQLite store to PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.monitoring.decisions import PromotionRecord, RolesRecord, ShadowDecision
from service.monitoring.keys import load_prediction_key
from service.monitoring.postgres import PostgresStore
from service.monitoring.postgres_schema import MIGRATIONS
from service.monitoring.records import CaptureRecord, LabelRecord
from service.monitoring.sqlite_file import MIGRATIONS as SQLITE_MIGRATIONS
from service.monitoring.store import FeedbackStore
from service.monitoring.stores import open_store, sqlite_folder, sqlite_target
from service.settings import Settings
from tests.pgserver import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def store_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
    return subprocess.run(
        [sys.executable, "-m", "service.store_cli", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("sqlite:///var/feedback.sqlite3", "var/feedback.sqlite3"),
        ("sqlite:////data/feedback.sqlite3", "/data/feedback.sqlite3"),
        ("sqlite:////data/f.db?mode=ro", "file:/data/f.db?mode=ro"),
    ],
)
def test_a_sqlite_url_names_a_file(url: str, target: str) -> None:
    assert sqlite_target(url) == target
    assert isinstance(open_store(url), FeedbackStore)


def test_the_store_setting_and_its_deprecated_form(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [k for k in os.environ if k.startswith("VERDICT_")]:
        monkeypatch.delenv(name)
    assert Settings().store_url == "sqlite:///var/feedback.sqlite3"
    monkeypatch.setenv("VERDICT_FEEDBACK_DB", "/data/f.db")
    assert Settings().store_url == "sqlite:////data/f.db"
    monkeypatch.setenv("VERDICT_FEEDBACK_DB", "file:/data/f.db?mode=ro")
    assert sqlite_target(Settings().store_url) == "file:/data/f.db?mode=ro"
    monkeypatch.setenv("VERDICT_FEEDBACK_URL", "postgresql://u:pw@db:5432/verdict")
    with pytest.raises(ValidationError, match="not both"):
        Settings()
    monkeypatch.delenv("VERDICT_FEEDBACK_DB")
    settings = Settings()
    assert settings.store_url == "postgresql://u:pw@db:5432/verdict"
    assert "pw" not in repr(settings)  # a secret, like the keys
    monkeypatch.setenv("VERDICT_FEEDBACK_URL", "mysql://db/verdict")
    with pytest.raises(ValidationError, match="must start with one of"):
        Settings()


def test_the_server_refuses_a_wrong_store_url_and_warns_about_the_old_setting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import service.http.processes as processes
    from service.__main__ import main

    monkeypatch.setattr(processes, "serve_one", lambda settings: None)
    monkeypatch.setenv("VERDICT_FEEDBACK_URL", "redis://cache:6379")
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "VERDICT_FEEDBACK_URL" in err and "must start with one of" in err
    monkeypatch.delenv("VERDICT_FEEDBACK_URL")
    monkeypatch.setenv("VERDICT_FEEDBACK_DB", "var/old.sqlite3")
    main(["--port", "0"])
    assert "VERDICT_FEEDBACK_DB is deprecated (use VERDICT_FEEDBACK_URL" in capsys.readouterr().err


def test_a_generated_key_lives_beside_the_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store/feedback.sqlite3"
    settings = Settings(feedback_url=url)
    key = load_prediction_key(settings)
    assert (sqlite_folder(url) / "prediction-id.key").read_bytes() == key
    assert load_prediction_key(settings) == key


def test_replicas_on_one_database_share_the_generated_key(pg: PostgresServer) -> None:
    first = load_prediction_key(Settings(feedback_url=pg.url))
    assert load_prediction_key(Settings(feedback_url=pg.url)) == first
    configured = Settings(feedback_url=pg.url, prediction_id_key="mine")
    assert load_prediction_key(configured) == b"mine"


def test_migrate_ahead_of_a_deployment(pg: PostgresServer) -> None:
    done = store_cli("migrate", env={"VERDICT_FEEDBACK_URL": pg.url})
    assert done.returncode == 0, done.stderr
    n = len(MIGRATIONS)
    assert f"schema version {n}" in done.stdout and "verdict-test" not in done.stdout
    assert pg.sql("SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, n + 1)
    ]
    again = store_cli("--url", pg.url, "version")
    assert again.stdout.strip() == f"store {n}, this release {n}"
    down = store_cli("--url", pg.url.replace(str(pg.port), "1"), "migrate")
    assert down.returncode == 1 and "unavailable" in down.stderr


def test_copy_moves_a_sqlite_store_to_postgres(pg: PostgresServer, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/feedback.sqlite3"
    sqlite = FeedbackStore(sqlite_target(source))
    rows = [
        LabelRecord(f"p{i}", "bc", 1, i % 2, i % 3 % 2, 0.5, 10.0 + i, 20.0, 30.0 + i)
        for i in range(12)
    ]
    sqlite.record(rows)
    sqlite.record([LabelRecord("p1", "bc", 1, 1, 1 - rows[1].actual, 0.5, 11.0, 21.0, 40.0)])
    captures = [CaptureRecord(f"p{i}", "bc", 1, 30.0 + i, f'{{"x": {i}}}') for i in range(5)]
    sqlite.capture(captures, max_rows=100)
    decisions = [ShadowDecision(f"p{i}", "bc", 2, 1 - i % 2, 0.25, 31.0 + i) for i in range(7)]
    sqlite.record_shadow_decisions(decisions)
    for outcome in ("refused", "promoted"):
        sqlite.record_promotion(PromotionRecord("bc", 1, 2, 50.0, outcome, "admin", '{"n": 7}'))
    sqlite.keep_roles(RolesRecord("bc", 2, 1, 0.1, changed_at=50.0), None)
    sqlite.close()
    key = load_prediction_key(Settings(feedback_url=source))

    done = store_cli("copy", "--from", source, env={"VERDICT_FEEDBACK_URL": pg.url})
    assert done.returncode == 0, done.stderr
    assert "12 labels read, 12 added" in done.stdout and "key copied" in done.stdout
    assert "5 captures read, 5 added; 7 shadow decisions read, 7 added" in done.stdout
    assert "2 promotions read, 2 added; 1 roles read, 1 added" in done.stdout
    target = PostgresStore(pg.url)
    sqlite = FeedbackStore(sqlite_target(source))
    assert target.cell_counts("bc", 100.0) == sqlite.cell_counts("bc", 100.0)
    assert target.conflicts("p1") == sqlite.conflicts("p1")
    assert target.labelled_examples("bc") == sqlite.labelled_examples("bc")
    assert len(target.labelled_examples("bc")) == 5
    ids = [f"p{i}" for i in range(12)]
    assert sorted(target.shadow_decisions_of(ids), key=str) == sorted(decisions, key=str)
    assert target.paired_cells("bc", 1, 2) == sqlite.paired_cells("bc", 1, 2)
    # The same decisions, each with its own id on each side.
    strip = [replace(r, id=None) for r in target.promotions("bc")]
    assert strip == [replace(r, id=None) for r in sqlite.promotions("bc")]
    assert target.stored_roles() == sqlite.stored_roles() != []
    assert target.prediction_key() == key  # ids issued before the move still verify
    assert target.record([rows[3]]) == ["duplicate"]
    target.close()
    sqlite.close()

    again = store_cli("copy", "--from", source, env={"VERDICT_FEEDBACK_URL": pg.url})
    assert "12 labels read, 0 added" in again.stdout, again.stderr
    assert "0 of 1 audited conflicts added" in again.stdout
    assert "5 captures read, 0 added; 7 shadow decisions read, 0 added" in again.stdout
    assert "2 promotions read, 0 added; 1 roles read, 0 added" in again.stdout
    assert pg.sql("SELECT COUNT(*) FROM promotions") == [(2,)]
    assert pg.sql("SELECT COUNT(*) FROM captures") == [(5,)]
    wrong = store_cli("copy", "--from", pg.url, env={"VERDICT_FEEDBACK_URL": source})
    assert wrong.returncode == 2 and "sqlite:///" in wrong.stderr


def test_copy_from_a_store_before_the_captures_table(pg: PostgresServer, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(SQLITE_MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute(
        "INSERT INTO labels VALUES ('p0', 'bc', 1, 0, 1, 0.5, 1.0, 2.0, 3.0)",
    )
    db.commit()
    db.close()
    done = store_cli("copy", "--from", f"sqlite:///{path}", env={"VERDICT_FEEDBACK_URL": pg.url})
    assert done.returncode == 0, done.stderr
    assert "1 labels read, 1 added" in done.stdout
    assert "0 captures read, 0 added; 0 shadow decisions read, 0 added" in done.stdout
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (1,)  # untouched


def test_the_stored_roles_are_listed_and_cleared(pg: PostgresServer) -> None:
    store = PostgresStore(pg.url)
    store.keep_roles(RolesRecord("bc", 2, 1, 0.25, changed_at=0.0), None)
    store.close()
    listed = store_cli("--url", pg.url, "roles")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == (
        "bc: primary 2, shadow 1, sample_rate 0.25 (revision 1, changed 1970-01-01T00:00:00+00:00)"
    )
    cleared = store_cli("--url", pg.url, "roles", "--clear", "bc")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout, cleared.stderr
    assert pg.sql("SELECT COUNT(*) FROM roles") == [(0,)]
    again = store_cli("--url", pg.url, "roles", "--clear", "bc")
    assert "nothing changed" in again.stdout
    assert store_cli("--url", pg.url, "roles").stdout == ""


def test_the_stored_roles_of_a_sqlite_store_are_read_as_it_is(tmp_path: Path) -> None:
    """`verdict-store roles` and `version` neither create a store at a mistyped path (refused,
    exit 2) nor migrate one that the services of an older release may still use (`roles`
    refuses it, exit 2; `version` says where it is)."""
    missing = tmp_path / "typo" / "feedback.sqlite3"
    for args in (("roles",), ("roles", "--clear", "bc"), ("version",)):
        refused = store_cli("--url", f"sqlite:///{missing}", *args)
        assert refused.returncode == 2 and "no SQLite store" in refused.stderr, refused.stderr
    assert not (tmp_path / "typo").exists()

    old = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old)
    db.executescript(
        SQLITE_MIGRATIONS[0] + ";" + SQLITE_MIGRATIONS[1] + "; PRAGMA user_version = 2;"
    )
    db.close()
    for args in (("roles",), ("roles", "--clear", "bc")):
        refused = store_cli("--url", f"sqlite:///{old}", *args)
        assert refused.returncode == 2 and "schema version 2" in refused.stderr, refused.stderr
    version = store_cli("--url", f"sqlite:///{old}", "version")
    assert version.returncode == 0 and version.stdout.startswith("store 2, this release ")
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone() == (2,)  # untouched

    current = tmp_path / "feedback.sqlite3"
    FeedbackStore(str(current)).keep_roles(RolesRecord("bc", 2, 1, 0.25, changed_at=0.0), None)
    listed = store_cli("--url", f"sqlite:///{current}", "roles")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("bc: primary 2, shadow 1, sample_rate 0.25 (revision 1,")
    cleared = store_cli("--url", f"sqlite:///{current}", "roles", "--clear", "bc")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout, cleared.stderr
    assert store_cli("--url", f"sqlite:///{current}", "roles").stdout == ""
