"""Self-describing, HMAC-signed prediction ids: any replica can verify one without a lookup."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

PREFIX = "p1"
MAC_BYTES = 12
NONCE_BYTES = 8
# version, class index, score, issued_at (ms since epoch), nonce; the model name follows.
_HEAD = struct.Struct(">IHfQ8s")
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class PredictionRef:
    """What a prediction id says about the prediction it names."""

    model: str
    version: int
    class_index: int
    score: float
    issued_at: float  # seconds since the epoch


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PredictionIds:
    """Issues and verifies prediction ids signed with one key (shared by every replica)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("prediction id key must not be empty")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def _sign(self, payload: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(payload)
        return mac.digest()[:MAC_BYTES]

    def issue_many(
        self,
        model: str,
        version: int,
        class_indices: list[int],
        scores: list[float],
        issued_at: float,
    ) -> list[str]:
        """One id per row; a single random draw covers the whole batch."""
        n = len(class_indices)
        nonces = os.urandom(NONCE_BYTES * n)
        name = model.encode("utf-8")
        ms = int(issued_at * 1000)
        pack = _HEAD.pack
        ids = []
        for i in range(n):
            payload = (
                pack(
                    version,
                    class_indices[i],
                    scores[i],
                    ms,
                    nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES],
                )
                + name
            )
            ids.append(f"{PREFIX}.{_b64(payload)}.{_b64(self._sign(payload))}")
        return ids

    def issue(
        self, model: str, version: int, class_index: int, score: float, issued_at: float
    ) -> str:
        """One id for one prediction."""
        return self.issue_many(model, version, [class_index], [score], issued_at)[0]

    def parse(self, prediction_id: str) -> PredictionRef | None:
        """The prediction an id names, or None when it is malformed or not signed by our key."""
        if not isinstance(prediction_id, str) or len(prediction_id) > MAX_ID_CHARS:
            return None
        parts = prediction_id.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        try:
            payload = _unb64(parts[1])
            mac = _unb64(parts[2])
        except (ValueError, TypeError):
            return None
        if len(payload) <= _HEAD.size or not hmac.compare_digest(mac, self._sign(payload)):
            return None
        version, class_index, score, ms, _nonce = _HEAD.unpack_from(payload)
        try:
            model = payload[_HEAD.size :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return PredictionRef(model, version, class_index, float(score), ms / 1000.0)
