"""`verdict-store`: the feedback store's schema and contents, ahead of or beside the service.

    verdict-store migrate            apply the schema migrations (before a rolling deployment)
    verdict-store version            the schema version of the store and of this release
    verdict-store copy --from sqlite:///var/feedback.sqlite3
                                     copy a SQLite store's labels, audited conflicts and
                                     generated prediction-id key into the PostgreSQL store

The store is VERDICT_FEEDBACK_URL (or `--url`), as the service reads it.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from service.errors import StoreUnavailableError
from service.settings import Settings

CONFIG_ERROR = 2  # exit code: the settings or arguments are wrong
STORE_ERROR = 1  # exit code: the store could not do it
COPY_CHUNK = 5000  # labels per transaction when copying


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
    from service.monitoring.store import MIGRATIONS

    return len(MIGRATIONS)


def _copy(source: str, target: str) -> str:
    from service.monitoring.keys import KEY_FILE
    from service.monitoring.postgres import PostgresStore, copy_rows
    from service.monitoring.stores import is_postgres, sqlite_folder, sqlite_target

    if not source.startswith("sqlite:///") or not is_postgres(target):
        _refuse("copy goes from a sqlite:/// URL to a postgresql:// one")
    path = sqlite_target(source).removeprefix("file:").partition("?")[0]
    if not Path(path).is_file():
        _refuse(f"no SQLite store at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    store = PostgresStore(target)
    added = audited = seen = 0
    try:
        labels = db.execute(
            "SELECT prediction_id, model, version, predicted, actual, score, issued_at,"
            " observed_at, received_at FROM labels ORDER BY prediction_id"
        )
        while chunk := labels.fetchmany(COPY_CHUNK):
            seen += len(chunk)
            added += copy_rows(store, chunk, [])[0]
        conflicts = db.execute(
            "SELECT prediction_id, model, version, kept_actual, sent_actual, observed_at,"
            " received_at FROM conflicts ORDER BY id"
        ).fetchall()
        audited = copy_rows(store, [], conflicts)[1]
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
    return (
        f"{seen} labels read, {added} added ({seen - added} were there already); "
        f"{audited} of {len(conflicts)} audited conflicts added; {key}"
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
            else:
                print(f"store {store.schema_version()}, this release {_latest(url)}")
        finally:
            store.close()
    except StoreUnavailableError as exc:
        print(f"verdict-store: {exc.message}", file=sys.stderr)
        sys.exit(STORE_ERROR)


if __name__ == "__main__":
    main()
