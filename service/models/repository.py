"""The model repository: finds models/<name>/<version>/, loads each version, swaps and drains.

The lifecycle of served versions: discovery, the version policy, loading off the event loop
(`models.loading`), the atomic switch, retiring a replaced version once its last request is
done, and polling; lookup by name and version is `models.lookup`, what a served version
holds is `models.version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import (
    ModelLoadError,
    ModelNotFoundError,
)
from service.models.batching import INLINE_BUDGET_S, Batcher
from service.models.conformance import UNCHECKED, Conformance
from service.models.loading import (
    Fingerprint,
    LoadedVersion,
    checked_files,
    file_fingerprint,
    load_version,
    model_fingerprint,
    scan_folder,
)
from service.models.lookup import VersionLookup
from service.models.manifest import ManifestCache
from service.models.roles import NONE, Roles, read_roles, roles_fingerprint
from service.models.runtime import CPU, RuntimeOptions
from service.models.version import NAME_RE, ModelVersion
from service.monitoring.lifecycle_metrics import MULTICLASS_OUTCOMES
from service.monitoring.metrics import Metrics
from service.monitoring.quality_metrics import BINARY_OUTCOMES
from service.settings import Settings, VersionPolicy

log = logging.getLogger(__name__)

Listener = Callable[[ModelVersion], object]


@dataclass(slots=True)
class _VersionState:
    state: str
    reason: str = ""


class Repository(VersionLookup):
    """Every served model version; swaps versions atomically and drains retired ones."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.root = Path(settings.model_repository)
        self.settings = settings
        self.metrics = metrics
        self.policy: VersionPolicy = settings.policy
        self.options = RuntimeOptions(tuple(settings.providers), settings.intra_op_threads)
        self._served: dict[str, dict[int, ModelVersion]] = {}
        self._latest: dict[str, ModelVersion] = {}
        self._expected: set[str] = set()
        self._states: dict[tuple[str, int], _VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, tuple[Fingerprint, ...]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._manifests = ManifestCache()
        self.started = False
        self._on_load: list[Listener] = []
        self._on_unload: list[Listener] = []
        # Roles (primary, shadow): those kept in the feedback store for the whole deployment
        # (`use_stored_roles`), else the model's roles file, else VERDICT_SHADOWS.
        self._configured: dict[str, Roles] = settings.shadow_roles()
        self._stored: dict[str, Roles] = {}
        self._roles: dict[str, Roles] = {}
        self._shadow: dict[str, tuple[ModelVersion, float]] = {}

    def add_listener(
        self, on_load: Listener | None = None, on_unload: Listener | None = None
    ) -> None:
        """Call `on_load(version)` before a version takes traffic, `on_unload(version)` after
        a retired version finished its last request (e.g. drift register / unregister)."""
        if on_load is not None:
            self._on_load.append(on_load)
        if on_unload is not None:
            self._on_unload.append(on_unload)

    def _notify(self, listeners: list[Listener], mv: ModelVersion) -> None:
        for listener in listeners:
            try:
                listener(mv)
            except Exception:
                log.exception("repository listener failed for %s v%d", mv.name, mv.version)

    # -- discovery -------------------------------------------------------------------------
    def scan(self) -> dict[str, list[int]]:
        """Model names and version numbers found on disk."""
        return scan_folder(self.root, NAME_RE)

    def _fingerprint(self, name: str) -> tuple[Fingerprint, ...]:
        folder = self.root / name
        return (*model_fingerprint(folder), roles_fingerprint(folder))

    def _read_roles(self, name: str) -> Roles:
        """The model's roles kept in the store, else its roles file, else its VERDICT_SHADOWS
        entry; a broken file keeps the roles in force (logged)."""
        stored = self._stored.get(name)
        if stored is not None:
            with contextlib.suppress(ValueError):
                if read_roles(self.root / name) not in (None, stored):
                    log.warning(
                        "model %s: its roles.json is not applied: the roles an admin call kept "
                        "in the feedback store take precedence (`verdict-store roles --clear %s` "
                        "hands the model back to the file)",
                        name,
                        name,
                    )
            return stored
        try:
            roles = read_roles(self.root / name)
        except ValueError as exc:
            log.error("model %s: %s; its roles stay as they were", name, exc)
            return self._roles.get(name, self._configured.get(name, NONE))
        return roles if roles is not None else self._configured.get(name, NONE)

    # -- loading ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every model on disk (the configured set); readiness follows."""
        found = self.scan()
        self._expected = set(found)
        for name in found:
            try:
                await self.load_model(name)
            except ModelLoadError as exc:
                log.error("model %s not served: %s", name, exc.message)
        self.started = True

    async def load_model(self, name: str) -> list[int]:
        """(Re)load a model's versions per the version policy; returns the versions served.

        Versions that fail a check are refused with a logged reason; a version that already
        serves keeps serving when its new files are refused.
        """
        if not NAME_RE.match(name):
            raise ModelNotFoundError(f"unknown model {name!r}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            # The folder is read off the event loop (every process reloads on each role
            # change, under traffic); its fingerprint is taken before the files are read, so a
            # change made while they load is reloaded by the next poll.
            found = (await asyncio.to_thread(self.scan)).get(name)
            if not found:
                raise ModelNotFoundError(f"no model {name!r} in the model repository")
            self._seen[name] = await asyncio.to_thread(self._fingerprint, name)
            roles = await asyncio.to_thread(self._read_roles, name)
            # The primary and the shadow are loaded whatever the version policy says.
            pinned = {v for v in (roles.primary, roles.shadow) if v is not None and v in found}
            wanted = sorted(set(self.policy.select(found)) | pinned)
            current = self._served.get(name, {})
            new: dict[int, ModelVersion] = {}
            reasons: list[str] = []
            for v in found:
                if v not in wanted:
                    self._states[(name, v)] = _VersionState("UNAVAILABLE", "not in version policy")
            candidates = list(wanted)
            if self.policy.kind == "latest":
                # Older versions stand by in case a wanted one is refused.
                candidates += [v for v in reversed(found) if v not in wanted]
            for v in candidates:
                if v not in wanted and len(new) >= len(wanted):
                    break
                folder = self.root / name / str(v)
                old = current.get(v)
                if old is not None and old.fingerprint == await asyncio.to_thread(
                    file_fingerprint, folder, *checked_files(old.manifest)
                ):
                    new[v] = old
                    continue
                try:
                    checked = await asyncio.to_thread(load_version, folder, name, v, self.options)
                except ModelLoadError as exc:
                    self._refused(name, v, exc, still_serving=bool(current))
                    reasons.append(exc.message)
                    self._states[(name, v)] = _VersionState("UNAVAILABLE", exc.message)
                    if old is not None:
                        new[v] = old
                    continue
                new[v] = self._activate(name, v, folder, checked)
                self._states[(name, v)] = _VersionState("READY")
                log.info("loaded %s v%d on %s", name, v, ",".join(checked.session.providers))
                if checked.conformance.status == UNCHECKED:
                    log.warning("%s v%d serves %s", name, v, checked.conformance.describe())
            if reasons:
                # A refused version never replaces what serves: keep every served version.
                for v, mv in current.items():
                    new.setdefault(v, mv)
            if not new:
                why = " | ".join(reasons)
                raise ModelLoadError(f"no version of {name!r} could be loaded: {why}")
            # The switch: one assignment each, so a request sees either the old or the new map.
            self._served[name] = new
            self._switch_roles(name, new, roles)
            self._expected.add(name)
            for v, mv in current.items():
                if new.get(v) is not mv:
                    if v not in new:
                        self._states[(name, v)] = _VersionState("UNAVAILABLE", "unloaded")
                    self._retire(mv)
            if reasons:
                why = " | ".join(reasons)
                raise ModelLoadError(f"{why} (still serving versions {sorted(new)})")
            return sorted(new)

    def _switch_roles(self, name: str, new: dict[int, ModelVersion], roles: Roles) -> None:
        """Point requests without a version at the primary, and the sampler at the shadow:
        one assignment each (the hot swap of a promotion)."""
        others = [v for v in new if v != roles.shadow] or list(new)
        primary = new[roles.primary] if roles.primary in new else new[max(others)]
        if roles.primary is not None and roles.primary not in new:
            log.error(
                "model %s: primary version %d is not served; version %d answers instead",
                name,
                roles.primary,
                primary.version,
            )
        shadow = new.get(roles.shadow) if roles.shadow is not None else None
        if roles.shadow is not None and shadow is None:
            log.error(
                "model %s: shadow version %d is not served; nothing is shadowed", name, roles.shadow
            )
        self._roles[name] = roles
        self._latest[name] = primary
        if shadow is not None and shadow is not primary:
            self._shadow[name] = (shadow, roles.sample_rate)
        else:
            self._shadow.pop(name, None)
            shadow = None
        self.metrics.set_roles(
            name,
            primary.version,
            None if shadow is None else shadow.version,
            BINARY_OUTCOMES if primary.binary else MULTICLASS_OUTCOMES,
        )

    async def use_stored_roles(self, name: str, roles: Roles | None) -> list[int]:
        """Apply the roles the store keeps for a model (None: it keeps none, so its roles file
        or VERDICT_SHADOWS apply): a served model switches at once, with the hot swap of a
        reload; one not served yet gets them when it loads. Returns the versions served."""
        if roles is None:
            self._stored.pop(name, None)
        else:
            self._stored[name] = roles
        if name not in self._served:
            return []
        return await self.load_model(name)

    def roles(self, name: str) -> Roles:
        """The roles in force for a served model: the primary that answers requests without a
        version, and the shadow (None when nothing is shadowed)."""
        mv = self.resolve(name)
        roles = self._roles.get(name, NONE)
        shadow = self._shadow.get(name)
        return Roles(mv.version, shadow[0].version if shadow else None, roles.sample_rate)

    def pinned_primary(self, name: str) -> int | None:
        """The primary a model's roles name (None: the latest non-shadow version answers)."""
        return self._roles.get(name, NONE).primary

    def shadow_of(self, mv: ModelVersion) -> tuple[ModelVersion, float] | None:
        """(shadow version, sample rate) when `mv` is its model's primary and has a shadow."""
        entry = self._shadow.get(mv.name)
        if entry is None or self._latest.get(mv.name) is not mv:
            return None
        return entry

    def has_shadow(self, name: str) -> bool:
        """Whether a model has a shadow now."""
        return name in self._shadow

    def _refused(self, name: str, version: int, exc: ModelLoadError, still_serving: bool) -> None:
        """A refused version: the log line, and the metrics that make it visible."""
        keeps = "; what served before keeps serving" if still_serving else ""
        log.error("%s%s", exc.message, keeps)
        self.metrics.model_refusals.labels(name, str(version), exc.check).inc()
        measured = exc.measured
        if isinstance(measured, Conformance) and measured.max_abs_diff is not None:
            self.metrics.set_conformance(name, version, measured.provider, measured.max_abs_diff)

    def _activate(self, name: str, version: int, folder: Path, c: LoadedVersion) -> ModelVersion:
        vm = self.metrics.version_metrics(name, version, c.classes)
        s = self.settings
        batcher = Batcher(
            c.session.run,
            name=f"{name}-{version}",
            max_batch_rows=s.max_batch_rows,
            max_queue_delay_ms=s.max_queue_delay_ms,
            max_queue_rows=s.max_queue_rows,
            enabled=s.batching_for(name),
            metrics=vm,
            # Only a CPU run can be cheap enough for the event loop (a GPU run waits on the
            # device); see Batcher.
            inline_budget_s=INLINE_BUDGET_S if c.session.providers == [CPU] else 0.0,
        )
        batcher.calibrate(*c.cost)
        batcher.start()
        self.metrics.set_model_config(name, version, c.session.providers, c.manifest)
        if c.conformance.max_abs_diff is not None:
            self.metrics.set_conformance(
                name, version, c.conformance.provider, c.conformance.max_abs_diff
            )
        mv = ModelVersion(
            name=name,
            version=version,
            path=folder,
            manifest=c.manifest,
            spec=c.spec,
            classes=c.classes,
            task=c.task,
            threshold=c.threshold,
            positive_index=c.positive_index,
            output_name=c.manifest["output"]["name"],
            session=c.session,
            batcher=batcher,
            metrics=vm,
            fingerprint=c.fingerprint,
            conformance=c.conformance,
        )
        self._notify(self._on_load, mv)
        return mv

    def _retire(self, mv: ModelVersion) -> None:
        mv.retiring = True
        if mv.active == 0:
            mv.idle.set()
        task = asyncio.get_running_loop().create_task(self._drain(mv))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain(self, mv: ModelVersion) -> None:
        await mv.idle.wait()
        await mv.batcher.close()
        current = self._served.get(mv.name, {}).get(mv.version)
        keep = set()
        if current is not None:
            keep.add(
                self.metrics.model_info_labels(
                    current.name, current.version, current.providers, current.manifest
                )
            )
        self.metrics.clear_model_version(mv.name, mv.version, mv.providers, keep)
        self.metrics.forget(mv.metrics)  # its last updates reach the series first
        self._notify(self._on_unload, mv)
        log.info("retired %s v%d", mv.name, mv.version)

    async def unload_model(self, name: str) -> None:
        """Stop serving a model; requests in flight finish first."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            served = self._served.pop(name, None)
            self._latest.pop(name, None)
            self._shadow.pop(name, None)
            self.metrics.clear_roles(name)
            self._expected.discard(name)
            if served is None:
                raise ModelNotFoundError(f"model {name!r} is not loaded")
            for v, mv in served.items():
                self._states[(name, v)] = _VersionState("UNAVAILABLE", "unloaded")
                self._retire(mv)

    async def close(self) -> None:
        """Unload everything (shutdown)."""
        for name in list(self._served):
            await self.unload_model(name)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def poll_forever(self, interval_s: float) -> None:
        """Reload models whose folders changed; load new ones; unload removed ones."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """One pass of the poller."""
        found = await asyncio.to_thread(self.scan)
        for name in found:
            fp = await asyncio.to_thread(self._fingerprint, name)
            if self._seen.get(name) == fp:
                continue
            try:
                await self.load_model(name)
            except (ModelLoadError, ModelNotFoundError) as exc:
                log.error("poll: model %s not (re)loaded: %s", name, exc.message)
        for name in list(self._served):
            if name not in found:
                self._seen.pop(name, None)
                await self.unload_model(name)

    def index(self) -> list[dict[str, Any]]:
        """Every model version on disk or served, with its state (repository extension)."""
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for name, versions in self.scan().items():
            for v in versions:
                st = self._states.get((name, v), _VersionState("UNAVAILABLE", "not loaded"))
                rows[(name, v)] = {"name": name, "version": str(v), "state": st.state}
                if st.reason:
                    rows[(name, v)]["reason"] = st.reason
        for name, versions_ in self._served.items():
            for v in versions_:
                rows[(name, v)] = {"name": name, "version": str(v), "state": "READY"}
        return [rows[k] for k in sorted(rows)]
