"""The data plane: what a request means (inference, metadata, feedback, access, lifecycle),
for every transport alike. It raises `service.errors.VerdictError`s and never sees HTTP or gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from service.dataplane.access import Access
from service.dataplane.feedback import FeedbackService
from service.dataplane.inference import Inference
from service.dataplane.lifecycle import Lifecycle
from service.dataplane.metadata import Metadata


@dataclass(slots=True)
class DataPlane:
    """Every part of the data plane of one server."""

    inference: Inference
    metadata: Metadata
    feedback: FeedbackService
    access: Access
    lifecycle: Lifecycle


__all__ = ["Access", "DataPlane", "FeedbackService", "Inference", "Lifecycle", "Metadata"]
