"""The roles of every model (primary, shadow, sample rate) shared by every process of a
deployment: the workers of one server and the replicas of a fleet read them from the feedback
store they share, so an admin change made on one process reaches all of them
(docs/lifecycle.md, "Roles").

A change is written to the store (compare-and-set on the revision of the stored roles the
change was decided on, so two processes changing one model at once cannot both win) and applied
at once by the process that made it.
Every process reads the stored roles every `ROLES_CHECK_S` seconds, on the store's threads,
and applies a change with the repository's hot swap: within about `ROLES_CHECK_S` plus the
swap, every process serves the new roles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from service.errors import (
    ConflictError,
    ModelLoadError,
    ModelNotFoundError,
    StoreUnavailableError,
    VersionNotFoundError,
)
from service.models.repository import Repository
from service.models.roles import Roles, roles_from
from service.monitoring.decisions import RolesRecord
from service.monitoring.stores import LabelStore

Run = Callable[..., Awaitable[Any]]

# How often each process reads the stored roles (one small query); the bound on how long a
# role change made elsewhere takes to reach this process, the swap aside.
ROLES_CHECK_S = 0.5
# A store that cannot answer is logged at most this often by the check.
WARN_EVERY_S = 60.0

log = logging.getLogger(__name__)


class SharedRoles:
    """This process's view of the roles kept in the store, and the one way to change them."""

    def __init__(
        self,
        repository: Repository,
        store: LabelStore,
        run: Run,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.store = store
        self.run = run
        self.clock = clock
        self._applied: dict[str, Roles] = {}  # model -> stored roles this process applied
        # One reading or change at a time in this process: a read that started before this
        # process's own change must not be applied after it.
        self._lock = asyncio.Lock()
        self._warned_at = -WARN_EVERY_S
        self._bad: set[tuple[str, int]] = set()  # stored rows already logged as unusable

    async def sync(self) -> dict[str, int]:
        """Read the stored roles and apply every change; returns the revision read of every
        model with stored roles (a model without is absent). StoreUnavailableError when the
        store cannot answer (the roles in force stay).

        A change decided on the roles in force right after this call (no await in between:
        the check in `follow` may apply a later revision at any await) rests on the revision
        returned: pass it to `change`."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> dict[str, int]:
        records: list[RolesRecord] = await self.run(self.store.stored_roles)
        stored: dict[str, Roles] = {}
        revisions: dict[str, int] = {}
        for r in records:
            revisions[r.model] = r.revision
            try:
                stored[r.model] = roles_from(
                    {"primary": r.primary, "shadow": r.shadow, "sample_rate": r.sample_rate}
                )
            except ValueError as exc:
                # Written by something else than this service: keep what is in force.
                if (r.model, r.revision) not in self._bad:
                    self._bad.add((r.model, r.revision))
                    log.error("model %s: stored roles ignored: %s", r.model, exc)
                if r.model in self._applied:
                    stored[r.model] = self._applied[r.model]
        for name in sorted(set(self._applied) | set(stored)):
            roles = stored.get(name)
            if self._applied.get(name) == roles:
                continue
            log.info(
                "model %s: roles in the store changed to %s",
                name,
                roles if roles is not None else "none (its roles file or VERDICT_SHADOWS apply)",
            )
            if roles is None:
                self._applied.pop(name, None)
            else:
                self._applied[name] = roles
            try:
                await self.repository.use_stored_roles(name, roles)
            except (ModelLoadError, ModelNotFoundError) as exc:
                log.error("model %s: the stored roles were not applied: %s", name, exc.message)
        return revisions

    async def follow(self) -> None:
        """Check the stored roles every ROLES_CHECK_S seconds, for ever."""
        while True:
            await asyncio.sleep(ROLES_CHECK_S)
            try:
                await self.sync()
            except StoreUnavailableError as exc:
                if self._may_warn():
                    log.warning(
                        "the stored roles cannot be read (the roles in force stay): %s",
                        exc.message,
                    )
            except Exception:  # keep following: one bad pass must not stop the others
                if self._may_warn():
                    log.exception("checking the stored roles failed")

    def _may_warn(self) -> bool:
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S:
            return False
        self._warned_at = now
        return True

    async def check(self, model: str, roles: Roles) -> None:
        """Refuse roles of a model that is not served (ModelNotFoundError), or that name a
        version it does not have on disk (VersionNotFoundError); asks nothing of the store."""
        if model not in self.repository.served():
            raise ModelNotFoundError(f"model {model!r} is not loaded")
        found = (await asyncio.to_thread(self.repository.scan)).get(model, [])
        for what, v in (("primary", roles.primary), ("shadow", roles.shadow)):
            if v is not None and v not in found:
                raise VersionNotFoundError(
                    f"model {model!r} has no version {v} to make {what}; on disk: {found}"
                )

    async def change(self, model: str, roles: Roles, expected_revision: int | None) -> list[int]:
        """Keep new roles for a model in the store, for every process, and apply them here;
        returns the versions served here.

        `expected_revision` is the revision of the stored roles the change was decided on (as
        `sync` returned it; None: none were stored). ConflictError (409) when the stored roles
        are no longer at it: another process changed them since (they apply here then;
        nothing else changed). The revision this process read last is not used, since the
        check in `follow` keeps it current while a caller awaits between its decision and
        this call."""
        async with self._lock:
            await self.check(model, roles)
            record = RolesRecord(
                model, roles.primary, roles.shadow, roles.sample_rate, changed_at=self.clock()
            )
            revision = await self.run(self.store.keep_roles, record, expected_revision)
            if revision is None:
                await self._sync()
                if self._applied.get(model) != roles:
                    raise ConflictError(
                        f"the roles of {model!r} were changed by another process meanwhile "
                        f"(now {self.repository.roles(model).record()}); nothing changed: "
                        "check them and try again",
                        "roles_changed",
                    )
                return self.repository.versions(model)  # the same change, made elsewhere
            self._applied[model] = roles
            return await self.repository.use_stored_roles(model, roles)
