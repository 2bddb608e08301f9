"""Self-describing, signed prediction ids: any replica can verify one without a lookup."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

import numpy as np

PREFIX = "p2"
LEGACY_PREFIX = "p1"  # HMAC-SHA256 over a 26-byte head; still verified, no longer issued
MAC_BYTES = 12  # a multiple of 3: each MAC is exactly 16 base64 characters
NONCE_BYTES = 9
# version, class index, score, issued_at (ms since epoch), nonce; the model name follows.
# 27 bytes, a multiple of 3, so base64(head + name) == base64(head) + base64(name) and the
# heads of a whole batch are encoded in one call.
_HEAD = struct.Struct(">IHfQ9s")
_HEAD_DTYPE = np.dtype(
    [("version", ">u4"), ("class_index", ">u2"), ("score", ">f4"), ("ms", ">u8"), ("nonce", "S9")]
)
_LEGACY_HEAD = struct.Struct(">IHfQ8s")
_HEAD_CHARS = _HEAD.size * 4 // 3
_MAC_CHARS = MAC_BYTES * 4 // 3
MAX_ID_CHARS = 256
SMALL_BATCH = 8


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
    """Issues and verifies prediction ids signed with one key (shared by every replica).

    `p2` ids carry a keyed BLAKE2b MAC (one C call per row); `p1` ids (HMAC-SHA256) issued
    by earlier releases still verify.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("prediction id key must not be empty")
        # BLAKE2b takes keys of up to 64 bytes; a longer one is hashed down first.
        self._key = key if len(key) <= 64 else hashlib.blake2b(key).digest()
        # The keyed state before any data: copying it skips the key block for every id.
        self._keyed = hashlib.blake2b(key=self._key, digest_size=MAC_BYTES)
        self._hmac = hmac.new(key, digestmod=hashlib.sha256)

    def _sign(self, payload: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(payload)
        return h.digest()

    def _sign_legacy(self, payload: bytes) -> bytes:
        mac = self._hmac.copy()
        mac.update(payload)
        return mac.digest()[:MAC_BYTES]

    def issue_many(
        self,
        model: str,
        version: int,
        class_indices: list[int] | np.ndarray,
        scores: list[float] | np.ndarray,
        issued_at: float,
    ) -> list[str]:
        """One id per row: the heads are packed and encoded for the whole batch at once."""
        n = len(class_indices)
        ms = int(issued_at * 1000)
        nonces = os.urandom(NONCE_BYTES * n)
        if n <= SMALL_BATCH:  # struct beats numpy's setup cost for a few rows
            pack = _HEAD.pack
            cis = class_indices.tolist() if isinstance(class_indices, np.ndarray) else class_indices
            scs = scores.tolist() if isinstance(scores, np.ndarray) else scores
            raw = b"".join(
                [
                    pack(
                        version, cis[i], scs[i], ms, nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
                    )
                    for i in range(n)
                ]
            )
        else:
            heads = np.empty(n, dtype=_HEAD_DTYPE)
            heads["version"] = version
            heads["class_index"] = class_indices
            heads["score"] = scores
            heads["ms"] = ms
            heads["nonce"] = np.frombuffer(nonces, dtype=f"S{NONCE_BYTES}")
            raw = heads.tobytes()
        name = model.encode("utf-8")
        size = _HEAD.size
        keyed = self._keyed
        macs = []
        for i in range(0, n * size, size):
            h = keyed.copy()
            h.update(raw[i : i + size])
            h.update(name)
            macs.append(h.digest())
        head_text = base64.urlsafe_b64encode(raw).decode("ascii")
        mac_text = base64.urlsafe_b64encode(b"".join(macs)).decode("ascii")
        tail = _b64(name)
        hc, mc = _HEAD_CHARS, _MAC_CHARS
        return [
            f"{PREFIX}.{head_text[i * hc : (i + 1) * hc]}{tail}.{mac_text[i * mc : (i + 1) * mc]}"
            for i in range(n)
        ]

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
        if len(parts) != 3:
            return None
        if parts[0] == PREFIX:
            head, sign = _HEAD, self._sign
        elif parts[0] == LEGACY_PREFIX:
            head, sign = _LEGACY_HEAD, self._sign_legacy
        else:
            return None
        try:
            payload = _unb64(parts[1])
            mac = _unb64(parts[2])
        except (ValueError, TypeError):
            return None
        if len(payload) <= head.size or not hmac.compare_digest(mac, sign(payload)):
            return None
        version, class_index, score, ms, _nonce = head.unpack_from(payload)
        try:
            model = payload[head.size :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return PredictionRef(model, version, class_index, float(score), ms / 1000.0)
