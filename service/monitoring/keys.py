"""The prediction-id signing key: from settings, or generated once and kept by the feedback
store (a 0600 file beside the SQLite file, or a row of the shared PostgreSQL database)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from pathlib import Path

from service.errors import StoreUnavailableError
from service.monitoring.stores import LabelStore, is_postgres, sqlite_folder
from service.settings import Settings

log = logging.getLogger(__name__)
KEY_FILE = "prediction-id.key"
# How long a replica waits at start for the database that holds the generated key.
SHARED_KEY_WAIT_S = 30.0


def key_path(settings: Settings) -> Path:
    """Where a generated key lives with a SQLite store: next to the database file."""
    return sqlite_folder(settings.store_url) / KEY_FILE


def load_prediction_key(settings: Settings, store: LabelStore | None = None) -> bytes:
    """The configured key, or the generated one the store keeps (created on first start)."""
    if settings.prediction_id_key is not None:
        value = settings.prediction_id_key.get_secret_value()
        if value:
            return value.encode("utf-8")
    if is_postgres(settings.store_url):
        return _shared_key(settings, store)
    return _file_key(key_path(settings))


def _shared_key(settings: Settings, store: LabelStore | None) -> bytes:
    """The key every replica on the database shares. Predictions need it before the server
    listens, so a replica with no configured key waits for the database, then gives up."""
    from service.monitoring.postgres import PostgresStore

    shared = store if isinstance(store, PostgresStore) else PostgresStore(settings.store_url)
    deadline = time.monotonic() + SHARED_KEY_WAIT_S
    while True:
        try:
            return shared.prediction_key()
        except StoreUnavailableError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    "the prediction id key is kept in the feedback database, which cannot be "
                    f"reached ({exc.message}); set VERDICT_PREDICTION_ID_KEY or fix the database"
                ) from exc
            log.warning("waiting for the feedback database (prediction id key): %s", exc.message)
            time.sleep(1.0)
        finally:
            if shared is not store:
                shared.close()


def _file_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            # link() fails when another worker won the race; then everyone reads its key.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"the prediction id key file {path} is empty")
    return key.encode("utf-8")
