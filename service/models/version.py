"""A served model version: what the repository loaded, checked and warmed up, and what a
request runs on; and the names a model may have."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.models.batching import Batcher
from service.models.codecs import InputSpec
from service.models.conformance import Conformance
from service.models.loading import Fingerprint
from service.models.runtime import ModelSession
from service.monitoring.request_metrics import VersionMetrics

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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
    fingerprint: Fingerprint
    conformance: Conformance
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
