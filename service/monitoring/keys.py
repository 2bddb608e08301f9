"""The prediction-id signing key: from settings, or generated once and kept on disk (0600)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from service.settings import Settings

KEY_FILE = "prediction-id.key"


def key_path(settings: Settings) -> Path:
    """Where a generated key lives: next to the feedback database."""
    return Path(settings.feedback_db).resolve().parent / KEY_FILE


def load_prediction_key(settings: Settings) -> bytes:
    """The configured key, or the persisted one (created atomically on first start)."""
    if settings.prediction_id_key is not None:
        value = settings.prediction_id_key.get_secret_value()
        if value:
            return value.encode("utf-8")
    path = key_path(settings)
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
