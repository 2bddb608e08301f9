"""Who may ask: API keys for inference and feedback, the admin key for the model repository.

A transport finds the key a caller presents (HTTP: `Authorization: Bearer`, `X-API-Key`) and
asks here; every configured key is compared, in constant time, whichever matches.
"""

from __future__ import annotations

import hmac
from enum import Enum

from service.errors import AdminDisabledError, UnauthorizedError


class Need(Enum):
    """What a route needs of its caller."""

    NOTHING = "nothing"
    API_KEY = "api_key"  # one of the API keys, when any is set
    ADMIN_KEY = "admin_key"  # the admin key; without one set, the route is disabled
    METRICS_KEY = "metrics_key"  # an API key, when metrics_require_key is set


def _matches(presented: str, keys: list[str]) -> bool:
    given = presented.encode("utf-8")
    ok = False
    for key in keys:  # every key is compared, so timing says nothing about which matched
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    return ok


class Access:
    """The keys of one server, and the check every transport makes."""

    def __init__(self, api_keys: list[str], admin_key: str | None, metrics_need_key: bool) -> None:
        self.api_keys = api_keys
        self.admin_key = admin_key
        self.metrics_need_key = metrics_need_key

    def needs_key(self, need: Need) -> bool:
        """Whether a caller must present a key for `need` (the admin routes always do: without
        an admin key set they are disabled)."""
        if need is Need.NOTHING:
            return False
        if need is Need.ADMIN_KEY:
            return True
        if need is Need.METRICS_KEY and not self.metrics_need_key:
            return False
        return bool(self.api_keys)

    def check(self, need: Need, presented: str | None) -> None:
        """Raise UnauthorizedError (or AdminDisabledError) unless `presented` satisfies `need`."""
        if need is Need.NOTHING:
            return
        if need is Need.ADMIN_KEY:
            if self.admin_key is None:
                raise AdminDisabledError(
                    "the repository extension is disabled (no admin key is set)"
                )
            if presented is None or not _matches(presented, [self.admin_key]):
                raise UnauthorizedError(
                    "the admin key is required (Authorization: Bearer <admin key>)"
                )
            return
        if need is Need.METRICS_KEY and not self.metrics_need_key:
            return
        if not self.api_keys:
            return
        if presented is None or not _matches(presented, self.api_keys):
            raise UnauthorizedError("a valid API key is required (Authorization: Bearer <key>)")
