"""Request ids: what a client may send as X-Request-ID, and new ones (see service.hotpath)."""

from __future__ import annotations

import itertools
import os
import random
import re

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is kept only when it is short and plain, so it cannot forge log lines.
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(random.SystemRandom().getrandbits(31))


def _new_prefix() -> None:
    global _PREFIX
    _PREFIX = os.urandom(4).hex()


os.register_at_fork(after_in_child=_new_prefix)  # a forked child must not repeat the parent's


def new_request_id() -> str:
    """16 hex characters: a random prefix per process, then a counter (no system call per
    request; unique within the process, and across processes unless 32 random bits collide).
    A forked or spawned worker draws its own prefix."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"
