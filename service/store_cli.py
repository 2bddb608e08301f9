"""`verdict-store`: the feedback store's schema and contents, ahead of or beside the service.

    verdict-store migrate            apply the schema migrations (before a rolling deployment)
    verdict-store version            the schema version of the store and of this release (the
                                     store is read as it is: never migrated, never created)
    verdict-store roles [--clear MODEL]
                                     the roles admin calls kept for every process (primary,
                                     shadow, sample rate, revision); --clear hands a model back
                                     to its roles.json or VERDICT_SHADOWS (the store is read as
                                     it is: never migrated, never created)
    verdict-store copy --from sqlite:///var/feedback.sqlite3
                                     copy a SQLite store's labels, audited conflicts,
                                     captures, shadow decisions, promotions, roles and
                                     generated prediction-id key into the PostgreSQL store

The store is VERDICT_FEEDBACK_URL (or `--url`), as the service reads it.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from service.errors import StoreUnavailableError
from service.settings import Settings

if TYPE_CHECKING:
    from service.monitoring.postgres import PostgresStore
    from service.monitoring.stores import LabelStore

CONFIG_ERROR = 2  # exit code: the settings or arguments are wrong
STORE_ERROR = 1  # exit code: the store could not do it
COPY_CHUNK = 5000  # rows per transaction when copying
ROLES_SCHEMA = 3  # the schema migration that made the roles table, in both stores


def _refuse(message: str) -> NoReturn:
    print(f"verdict-store: {message}", file=sys.stderr)
    sys.exit(CONFIG_ERROR)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="verdict-store", description="Manage the feedback store (VERDICT_FEEDBACK_URL)."
    )
    parser.add_argument("--url", help="the store (default: VERDICT_FEEDBACK_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the schema migrations")
    commands.add_parser("version", help="print the store's schema version and this release's")
    roles = commands.add_parser("roles", help="print (or clear) the roles kept in the store")
    roles.add_argument(
        "--clear", metavar="MODEL", help="forget MODEL's stored roles (roles.json applies again)"
    )
    copy = commands.add_parser("copy", help="copy a SQLite store into the PostgreSQL store")
    copy.add_argument("--from", dest="source", required=True, help="sqlite:///path of the source")
    return parser.parse_args(argv)


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    try:
        return Settings().store_url
    except ValidationError as exc:
        _refuse(exc.errors()[0]["msg"])


def _latest(url: str) -> int:
    from service.monitoring.stores import is_postgres

    if is_postgres(url):
        from service.monitoring.postgres_schema import MIGRATIONS as PG_MIGRATIONS

        return len(PG_MIGRATIONS)
    from service.monitoring.sqlite_file import MIGRATIONS

    return len(MIGRATIONS)


# Source order per table: a re-run walks the rows the same way.
COPY_ORDER = {
    "labels": "prediction_id",
    "conflicts": "id",
    "captures": "prediction_id",
    "shadow_decisions": "prediction_id, version",
    "promotions": "id",
    "roles": "model",
}


def _copy_table(db: sqlite3.Connection, store: PostgresStore, table: str) -> tuple[int, int]:
    """Copy one table in chunks; (rows read, rows added). A store from before the migration
    that made the table has none to copy."""
    from service.monitoring.postgres_copy import COPIED_TABLES, copy_rows

    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    if not exists:
        return 0, 0
    rows = db.execute(f"SELECT {COPIED_TABLES[table][0]} FROM {table} ORDER BY {COPY_ORDER[table]}")
    read = added = 0
    while chunk := rows.fetchmany(COPY_CHUNK):
        read += len(chunk)
        added += copy_rows(store, table, chunk)
    return read, added


def _copy(source: str, target: str) -> str:
    from service.monitoring.keys import KEY_FILE
    from service.monitoring.postgres import PostgresStore
    from service.monitoring.stores import (
        is_postgres,
        missing_sqlite_file,
        sqlite_folder,
        sqlite_path,
    )

    if not source.startswith("sqlite:///") or not is_postgres(target):
        _refuse("copy goes from a sqlite:/// URL to a postgresql:// one")
    if (missing := missing_sqlite_file(source)) is not None:
        _refuse(f"no SQLite store at {missing}")
    db = sqlite3.connect(f"file:{sqlite_path(source)}?mode=ro", uri=True)
    store = PostgresStore(target)
    try:
        store.migrate()
        counts = {table: _copy_table(db, store, table) for table in COPY_ORDER}
        key_file = sqlite_folder(source) / KEY_FILE
        key = "no generated key beside the SQLite file"
        if key_file.is_file():
            kept = store.import_key(key_file.read_text().strip())
            key = "its generated prediction-id key " + (
                "copied" if kept else "not copied: the database already has one"
            )
    finally:
        db.close()
        store.close()
    seen, added = counts["labels"]
    read, audited = counts["conflicts"]
    parts = [
        f"{seen} labels read, {added} added ({seen - added} were there already)",
        f"{audited} of {read} audited conflicts added",
        *(
            f"{counts[table][0]} {table.replace('_', ' ')} read, {counts[table][1]} added"
            for table in ("captures", "shadow_decisions", "promotions", "roles")
        ),
        key,
    ]
    return "; ".join(parts)


def _as_it_is(url: str, store: LabelStore) -> None:
    """Read the store as it is from here on: never migrated (the services of an older release
    may still use it), never created (a mistyped SQLite path is refused)."""
    from service.monitoring.stores import missing_sqlite_file

    if (missing := missing_sqlite_file(url)) is not None:
        _refuse(f"no SQLite store at {missing}")
    store.use_as_is()


def _roles(url: str, store: LabelStore, clear: str | None) -> None:
    """List or clear the stored roles of a store as it is."""
    from service.monitoring.stores import describe

    _as_it_is(url, store)
    version = store.schema_version()
    if version < ROLES_SCHEMA:
        _refuse(
            f"{describe(url)} is at schema version {version}, before the roles table (version "
            f"{ROLES_SCHEMA}): it keeps no roles; `verdict-store migrate` adds it"
        )
    if clear is not None:
        done = store.clear_roles(clear)
        print(
            f"verdict-store: the stored roles of {clear!r} "
            + (
                "cleared: its roles.json or VERDICT_SHADOWS apply within a second"
                if done
                else "were not there: nothing changed"
            )
        )
        return
    for r in store.stored_roles():
        when = datetime.fromtimestamp(r.changed_at, UTC).isoformat(timespec="seconds")
        print(
            f"{r.model}: primary {r.primary}, shadow {r.shadow}, sample_rate {r.sample_rate:g}"
            f" (revision {r.revision}, changed {when})"
        )


def main(argv: list[str] | None = None) -> None:
    """Run one command; exit 1 when the store fails, 2 when the arguments are wrong."""
    args = _parse(argv)
    url = _url(args)
    from service.monitoring.stores import describe, open_store

    try:
        if args.command == "copy":
            print(f"verdict-store: {_copy(args.source, url)}")
            return
        store = open_store(url)
        try:
            if args.command == "migrate":
                version = store.migrate()
                print(f"verdict-store: {describe(url)} is at schema version {version}")
            elif args.command == "roles":
                _roles(url, store, args.clear)
            else:
                _as_it_is(url, store)
                print(f"store {store.schema_version()}, this release {_latest(url)}")
        finally:
            store.close()
    except StoreUnavailableError as exc:
        print(f"verdict-store: {exc.message}", file=sys.stderr)
        sys.exit(STORE_ERROR)


if __name__ == "__main__":
    main()
