"""The model repository: finds models/<name>/<version>/, checks, loads, warms up and swaps."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.batching import Batcher
from service.codecs import ORT_TO_DTYPE, InputSpec
from service.errors import (
    BadRequestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    VersionNotFoundError,
    scrub_paths,
)
from service.metrics import Metrics, VersionMetrics
from service.runtime import CPU, ModelSession, RuntimeOptions, create_session
from service.settings import Settings, VersionPolicy

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
WARMUP_ROWS = (1, 8)
# Batch sizes and runs per size timed after warm-up to predict what a run costs.
COST_ROWS = (1, 16)
COST_RUNS = 7
PROBABILITY_TOLERANCE = 1e-3

Fingerprint = tuple[tuple[int, int, int, int], ...]
Listener = Callable[["ModelVersion"], None]


@dataclass(eq=False)
class ModelVersion:
    """One loaded, checked and warmed-up model version that can take traffic."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    spec: InputSpec
    classes: list[str]
    task: str
    threshold: float | None
    positive_index: int | None
    output_name: str
    session: ModelSession
    batcher: Batcher
    metrics: VersionMetrics
    fingerprint: tuple[int, int, int, int]
    loaded_at: float = field(default_factory=time.time)
    issued: int = 0  # rows predicted by this process on this version
    active: int = 0
    retiring: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    @property
    def binary(self) -> bool:
        return self.task == "binary"


@dataclass(slots=True)
class _Checked:
    """What the loading thread hands back: a session that passed every check."""

    manifest: dict[str, Any]
    spec: InputSpec
    classes: list[str]
    task: str
    threshold: float | None
    positive_index: int | None
    session: ModelSession
    fingerprint: tuple[int, int, int, int]
    cost: tuple[float, float]  # seconds per run: fixed, per row (see Batcher.calibrate)


def _file_fingerprint(folder: Path, model_file: str = "model.onnx") -> tuple[int, int, int, int]:
    out: list[int] = []
    for name in (MANIFEST, model_file):
        try:
            st = (folder / name).stat()
            out += [st.st_mtime_ns, st.st_size]
        except OSError:
            out += [0, 0]
    return (out[0], out[1], out[2], out[3])


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a version folder; raises ModelLoadError when absent or not an object.

    Messages name the folder relative to the repository (`name/version`), never the full path.
    """
    where = f"{folder.parent.name}/{folder.name}"
    try:
        doc = orjson.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise ModelLoadError(f"{where}: no {MANIFEST}") from None
    except OSError as exc:
        raise ModelLoadError(f"{where}: {MANIFEST} is unreadable: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ModelLoadError(f"{where}: {MANIFEST} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{where}: {MANIFEST} is not a JSON object")
    return doc


def check_manifest(manifest: dict[str, Any], name: str, version: int) -> list[str]:
    """Problems with a manifest on its own (before looking at the graph)."""
    problems: list[str] = []
    if manifest.get("name") != name:
        problems.append(f"manifest name {manifest.get('name')!r} is not the folder name {name!r}")
    if manifest.get("version") != version:
        problems.append(f"manifest version {manifest.get('version')!r} is not the folder {version}")
    model_file = manifest.get("model_file", "model.onnx")
    if not isinstance(model_file, str) or "/" in model_file or model_file.startswith("."):
        problems.append("model_file must be a file name inside the version folder")
    elif not model_file.endswith(".onnx"):
        problems.append(f"model_file must be an ONNX file (*.onnx); got {model_file!r}")
    if not isinstance(manifest.get("sha256"), str):
        problems.append("sha256 is missing")
    inp = manifest.get("input")
    out = manifest.get("output")
    if not isinstance(inp, dict) or not isinstance(out, dict):
        return [*problems, "input and output must be objects"]
    shape = inp.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or shape[0] != -1
        or not all(isinstance(d, int) and d > 0 for d in shape[1:])
    ):
        problems.append(f"input.shape must be [-1, d1, ...] with positive dims; got {shape!r}")
    if inp.get("dtype") != "float32":
        problems.append(f"input.dtype must be float32; got {inp.get('dtype')!r}")
    if not isinstance(inp.get("name"), str):
        problems.append("input.name is missing")
    features = inp.get("feature_names")
    if features is not None:
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            problems.append("input.feature_names must be a list of names or null")
        elif isinstance(shape, list) and len(shape) == 2 and len(features) != shape[1]:
            problems.append(
                f"input.feature_names has {len(features)} names but the input has {shape[1]}"
            )
        elif len(set(features)) != len(features):
            problems.append("input.feature_names has duplicates")
    classes = out.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        problems.append("output.classes must be at least two distinct labels")
        classes = None
    oshape = out.get("shape")
    if not isinstance(oshape, list) or len(oshape) != 2 or oshape[0] != -1:
        problems.append(f"output.shape must be [-1, C]; got {oshape!r}")
    elif classes is not None and oshape[1] != len(classes):
        problems.append(f"output.shape has {oshape[1]} classes but output.classes {len(classes)}")
    if out.get("dtype") != "float32":
        problems.append(f"output.dtype must be float32; got {out.get('dtype')!r}")
    if not isinstance(out.get("name"), str):
        problems.append("output.name is missing")
    task = manifest.get("task")
    threshold = (manifest.get("decision") or {}).get("threshold")
    if task == "binary":
        if classes is not None and len(classes) != 2:
            problems.append("a binary model needs exactly two classes")
        if classes is not None and out.get("positive_class") not in classes:
            problems.append("output.positive_class must be one of output.classes")
        if (
            not isinstance(threshold, int | float)
            or isinstance(threshold, bool)
            or not 0 <= threshold <= 1
        ):
            problems.append(f"decision.threshold must be in [0, 1]; got {threshold!r}")
    elif task != "multiclass":
        problems.append(f"task must be binary or multiclass; got {task!r}")
    return problems


def check_graph(manifest: dict[str, Any], session: ModelSession) -> list[str]:
    """Problems between the manifest and the graph ONNX Runtime loaded."""
    problems: list[str] = []
    inp, out = manifest["input"], manifest["output"]
    graph_inputs = session.graph_inputs()
    names = [i[0] for i in graph_inputs]
    if names != [inp["name"]]:
        problems.append(f"graph inputs are {names}; the manifest says [{inp['name']!r}]")
    else:
        _, gtype, gshape = graph_inputs[0]
        problems += _compare("input", inp, gtype, gshape)
    graph_outputs = {o[0]: o for o in session.graph_outputs()}
    if out["name"] not in graph_outputs:
        problems.append(f"graph outputs are {sorted(graph_outputs)}; no {out['name']!r}")
    else:
        _, gtype, gshape = graph_outputs[out["name"]]
        problems += _compare("output", out, gtype, gshape)
    return problems


def _compare(what: str, spec: dict[str, Any], gtype: str, gshape: list[Any]) -> list[str]:
    problems = []
    dtype = ORT_TO_DTYPE.get(gtype, gtype)
    if dtype != spec["dtype"]:
        problems.append(f"graph {what} dtype is {dtype}; the manifest says {spec['dtype']}")
    shape = spec["shape"]
    if len(gshape) != len(shape):
        problems.append(f"graph {what} has rank {len(gshape)}; the manifest shape is {shape}")
        return problems
    if isinstance(gshape[0], int) and gshape[0] > 0:
        problems.append(f"graph {what} has a fixed batch axis {gshape[0]}; it must be dynamic")
    for i, (g, m) in enumerate(zip(gshape[1:], shape[1:], strict=True), start=1):
        if isinstance(g, int) and g > 0 and g != m:
            problems.append(f"graph {what} axis {i} is {g}; the manifest says {m}")
    return problems


def _warm_up(session: ModelSession, spec: InputSpec, n_classes: int) -> list[str]:
    for rows in WARMUP_ROWS:
        x = np.zeros((rows, *spec.dims), dtype=np.float32)
        try:
            y = session.run(x)
        except Exception as exc:
            return [f"warm-up run on {rows} rows failed: {scrub_paths(str(exc))}"]
        if y.shape != (rows, n_classes):
            expected = [rows, n_classes]
            return [f"warm-up on {rows} rows gave shape {list(y.shape)}; expected {expected}"]
        if not np.isfinite(y).all() or not np.allclose(
            y.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE
        ):
            return ["warm-up output is not a probability distribution (softmax missing?)"]
    return []


def _measure_cost(session: ModelSession, spec: InputSpec) -> tuple[float, float]:
    """Seconds one run takes, as fixed + per row: medians of a few timed runs at two sizes."""
    medians = []
    for rows in COST_ROWS:
        x = np.zeros((rows, *spec.dims), dtype=np.float32)
        times = []
        for _ in range(COST_RUNS):
            start = time.perf_counter()
            session.run(x)
            times.append(time.perf_counter() - start)
        medians.append(sorted(times)[len(times) // 2])
    (r1, t1), (r2, t2) = zip(COST_ROWS, medians, strict=True)
    per_row = max(t2 - t1, 0.0) / (r2 - r1)
    return max(t1 - per_row * r1, 0.0), per_row


def load_version(folder: Path, name: str, version: int, options: RuntimeOptions) -> _Checked:
    """Read, check and warm up one version folder (blocking; call from a worker thread)."""
    manifest = read_manifest(folder)
    problems = check_manifest(manifest, name, version)
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems))
    model_file = manifest.get("model_file", "model.onnx")
    fingerprint = _file_fingerprint(folder, model_file)
    try:
        raw = (folder / model_file).read_bytes()
    except OSError as exc:
        reason = f"{name} v{version} refused: cannot read {model_file}: {exc.strerror}"
        raise ModelLoadError(reason) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest["sha256"].lower():
        raise ModelLoadError(
            f"{name} v{version} refused: sha256 of {model_file} is {digest}, "
            f"the manifest says {manifest['sha256']}"
        )
    try:
        session, providers = create_session(raw, options)
    except Exception as exc:
        raise ModelLoadError(
            f"{name} v{version} refused: onnxruntime cannot load {model_file}: "
            + scrub_paths(str(exc))
        ) from None
    inp, out = manifest["input"], manifest["output"]
    ms = ModelSession(session, providers, inp["name"], out["name"])
    problems = check_graph(manifest, ms)
    features = inp.get("feature_names")
    spec = InputSpec(
        inp["name"], tuple(inp["shape"][1:]), tuple(features) if features is not None else None
    )
    classes = list(out["classes"])
    if not problems:
        problems = _warm_up(ms, spec, len(classes))
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems))
    task = manifest["task"]
    threshold = float(manifest["decision"]["threshold"]) if task == "binary" else None
    positive = classes.index(out["positive_class"]) if task == "binary" else None
    try:
        cost = _measure_cost(ms, spec)
    except Exception as exc:
        raise ModelLoadError(
            f"{name} v{version} refused: timing runs failed: {scrub_paths(str(exc))}"
        ) from None
    return _Checked(manifest, spec, classes, task, threshold, positive, ms, fingerprint, cost)


@dataclass(slots=True)
class _VersionState:
    state: str
    reason: str = ""


class Repository:
    """Every served model version; swaps versions atomically and drains retired ones."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.root = Path(settings.model_repository)
        self.settings = settings
        self.metrics = metrics
        self.policy: VersionPolicy = settings.policy
        self.options = RuntimeOptions(
            tuple(settings.providers),
            settings.intra_op_threads,
            settings.inter_op_threads,
            settings.graph_optimization_level,
        )
        self._served: dict[str, dict[int, ModelVersion]] = {}
        self._latest: dict[str, ModelVersion] = {}
        self._expected: set[str] = set()
        self._states: dict[tuple[str, int], _VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, Fingerprint] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._manifests: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}
        self.started = False
        self._on_load: list[Listener] = []
        self._on_unload: list[Listener] = []

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
        found: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not NAME_RE.match(model_dir.name):
                continue
            versions = [
                int(v.name)
                for v in model_dir.iterdir()
                if v.is_dir() and v.name.isascii() and v.name.isdigit() and int(v.name) > 0
            ]
            if versions:
                found[model_dir.name] = sorted(versions)
        return found

    def _fingerprint(self, name: str) -> Fingerprint:
        folder = self.root / name
        if not folder.is_dir():
            return ()
        out = []
        for v in sorted(folder.iterdir()):
            if v.is_dir() and v.name.isascii() and v.name.isdigit():
                out.append(_file_fingerprint(v))
        return tuple(out)

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
            found = self.scan().get(name)
            if not found:
                raise ModelNotFoundError(f"no model {name!r} in the model repository")
            self._seen[name] = self._fingerprint(name)
            wanted = self.policy.select(found)
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
                if old is not None and old.fingerprint == _file_fingerprint(
                    folder, old.manifest.get("model_file", "model.onnx")
                ):
                    new[v] = old
                    continue
                try:
                    checked = await asyncio.to_thread(load_version, folder, name, v, self.options)
                except ModelLoadError as exc:
                    log.error("%s", exc.message)
                    reasons.append(exc.message)
                    self._states[(name, v)] = _VersionState("UNAVAILABLE", exc.message)
                    if old is not None:
                        new[v] = old
                    continue
                new[v] = self._activate(name, v, folder, checked)
                self._states[(name, v)] = _VersionState("READY")
                log.info("loaded %s v%d on %s", name, v, ",".join(checked.session.providers))
            if reasons:
                # A refused version never replaces what serves: keep every served version.
                for v, mv in current.items():
                    new.setdefault(v, mv)
            if not new:
                why = " | ".join(reasons)
                raise ModelLoadError(f"no version of {name!r} could be loaded: {why}")
            # The switch: one assignment each, so a request sees either the old or the new map.
            self._served[name] = new
            self._latest[name] = new[max(new)]
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

    def _activate(self, name: str, version: int, folder: Path, c: _Checked) -> ModelVersion:
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
            inline_budget_s=s.inline_max_us / 1e6 if c.session.providers == [CPU] else 0.0,
        )
        batcher.calibrate(*c.cost)
        batcher.start()
        self.metrics.set_model_config(name, version, c.session.providers, c.manifest)
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

    # -- lookup ----------------------------------------------------------------------------
    def resolve(self, name: str | None, version: int | str | None = None) -> ModelVersion:
        """The version a request runs on (latest unless given)."""
        if name is None:
            if len(self._latest) == 1:
                return next(iter(self._latest.values()))
            if not self._latest:
                raise ModelNotReadyError("no model is loaded")
            raise BadRequestError(f"`model` is required: this server serves {sorted(self._latest)}")
        if name not in self._latest:
            if name in self._expected:
                raise ModelNotReadyError(f"model {name!r} is not loaded yet")
            raise ModelNotFoundError(f"unknown model {name!r}; served: {sorted(self._latest)}")
        if version is None or version == "":
            return self._latest[name]
        number = _version_number(version)
        mv = self._served[name].get(number) if number is not None else None
        if mv is None:
            raise VersionNotFoundError(
                f"model {name!r} has no served version {version!r}; "
                f"served: {sorted(self._served[name])}"
            )
        return mv

    def acquire(self, name: str | None, version: int | str | None = None) -> ModelVersion:
        """Resolve and pin a version so that it is not closed under the request."""
        mv = self.resolve(name, version)
        mv.active += 1
        return mv

    def release(self, mv: ModelVersion) -> None:
        """Unpin a version taken with acquire."""
        mv.active -= 1
        if mv.active == 0 and mv.retiring:
            mv.idle.set()

    def served(self) -> dict[str, dict[int, ModelVersion]]:
        """Model name -> version -> loaded version."""
        return self._served

    def versions(self, name: str) -> list[int]:
        """Served versions of a model."""
        return sorted(self._served.get(name, {}))

    def predictions_issued(self, model: str, version: int) -> tuple[float, float] | None:
        """(rows this process predicted on a served version, since when), or None."""
        mv = self._served.get(model, {}).get(version)
        return None if mv is None else (float(mv.issued), mv.loaded_at)

    @property
    def ready(self) -> bool:
        """True once loading finished and every configured model serves a version."""
        return self.started and all(name in self._latest for name in self._expected)

    def not_ready(self) -> list[str]:
        """Configured models that serve no version."""
        return sorted(n for n in self._expected if n not in self._latest)

    def manifest(self, model: str, version: int) -> dict[str, Any] | None:
        """A version's manifest: from memory when loaded, else from disk; None when unknown."""
        mv = self._served.get(model, {}).get(version)
        if mv is not None:
            return mv.manifest
        if not NAME_RE.match(model) or not isinstance(version, int) or version < 1:
            return None
        path = self.root / model / str(version) / MANIFEST
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._manifests.get((model, version))
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            doc = read_manifest(path.parent)
        except ModelLoadError:
            return None
        self._manifests[(model, version)] = (mtime, doc)
        return doc

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


def _version_number(version: int | str) -> int | None:
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version
    if isinstance(version, str) and version.isascii() and version.isdigit():
        return int(version)
    if isinstance(version, float) and math.isfinite(version) and version.is_integer():
        return int(version)
    return None
