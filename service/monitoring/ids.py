"""Self-describing, signed prediction ids: any replica can verify one without a lookup.

A `p3` id names one row of one request: `p3.<request>.<row>`, both parts base64url.

- `<request>`: version (4 bytes), issue time (ms since epoch, 8), a random nonce (12), then
  the model name; shared by every row of the request.
- `<row>`: the row's index in the request (4), class index (2), score (float32, 4) and a
  tag (8): 18 bytes, exactly 24 characters.

The tag is a Wegman-Carter MAC: `(k * m + pad) mod p` with p = 2^61 - 1, where m packs the
class index and the score bits, k is a secret multiplier derived from the key, and `pad` is
a one-time value that SHAKE256 keyed with a second derived key draws for (request, row).
Changing the request part or the row index gives an unknown pad; changing the class or the
score of a seen id needs k; either way a forgery is right with probability about 2^-61 per
try. One SHAKE call draws the pads of 64 rows, so a batch costs one hash call per 64 rows
plus a multiply-add per row instead of a keyed hash per row (docs/benchmarks.md).

`p3` is the one format (the tag leaves room for a later one). Only the canonical text of an
id verifies, so one prediction has one id string (the feedback store keys labels by it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

import numpy as np

PREFIX = "p3"
P61 = (1 << 61) - 1  # the prime field of the p3 tag
PAD_BLOCK_ROWS = 64  # rows whose pads one SHAKE call draws
NONCE_BYTES = 12  # per request; a repeat within one millisecond would reuse pads
MAX_CLASS_INDEX = 0xFFFF
# version, issued_at (ms since epoch), nonce: 24 bytes, a multiple of 3, so
# base64(common + name) == base64(common) + base64(name).
_COMMON = struct.Struct(">IQ12s")
_BLOCK = struct.Struct(">I")
# row index, class index, score, tag: 18 bytes, a multiple of 3, so the rows of a batch are
# encoded in one base64 call and cut every 24 characters.
_ROW = struct.Struct(">IHfQ")
_ROW_HEAD = struct.Struct(">IHf")
_ROW_BITS = struct.Struct(">IHIQ")  # the same bytes, the score read as its bit pattern
_ROW_DTYPE = np.dtype([("row", ">u4"), ("class_index", ">u2"), ("score", ">f4"), ("tag", ">u8")])
_ROW_CHARS = _ROW.size * 4 // 3
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


def _unb64(text: str) -> bytes | None:
    """Strict base64url: None unless `text` is exactly what `_b64` writes for its bytes."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return None
    return raw if _b64(raw) == text else None


class PredictionIds:
    """Issues and verifies prediction ids signed with one key (shared by every replica)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("prediction id key must not be empty")
        # BLAKE2b takes keys of up to 64 bytes; a longer one is hashed down first.
        self._key = key if len(key) <= 64 else hashlib.blake2b(key).digest()

        def derive(purpose: bytes) -> bytes:
            return hashlib.blake2b(purpose, key=self._key, person=b"verdict-ids").digest()

        # SHAKE256 after a secret prefix is a PRF (no length extension); copying the state
        # that has absorbed the prefix skips it for every block.
        self._pads = hashlib.shake_256(derive(b"p3 pad"))
        self._k = 1 + int.from_bytes(derive(b"p3 multiplier")) % (P61 - 1)

    def _pad_bytes(self, block: int, common: bytes, rows: int) -> bytes:
        """8 pad bytes per row for `rows` rows of block `block` of a request."""
        h = self._pads.copy()
        h.update(_BLOCK.pack(block) + common)
        return h.digest(8 * rows)

    def issue_many(
        self,
        model: str,
        version: int,
        class_indices: list[int] | np.ndarray,
        scores: list[float] | np.ndarray,
        issued_at: float,
    ) -> list[str]:
        """One id per row; the rows share one nonce, one pad draw per 64 rows, and one
        base64 pass."""
        n = len(class_indices)
        common = _COMMON.pack(version, int(issued_at * 1000), os.urandom(NONCE_BYTES))
        common += model.encode("utf-8")
        head = f"{PREFIX}.{_b64(common)}."
        k = self._k
        if n <= SMALL_BATCH:  # struct beats numpy's setup cost for a few rows
            pads = self._pad_bytes(0, common, n)
            cis = class_indices.tolist() if isinstance(class_indices, np.ndarray) else class_indices
            scs = scores.tolist() if isinstance(scores, np.ndarray) else scores
            pack = _ROW_HEAD.pack
            ids = []
            for i in range(n):
                ci = int(cis[i])
                if not 0 <= ci <= MAX_CLASS_INDEX:
                    raise ValueError(f"class index {ci} is out of range for a prediction id")
                row = pack(i, ci, scs[i])  # the score rounded to float32, as the id holds it
                m = ci << 32 | int.from_bytes(row[6:])
                tag = (k * m + int.from_bytes(pads[8 * i : 8 * i + 8])) % P61
                ids.append(head + _b64(row + tag.to_bytes(8)))
            return ids
        cis_array = np.asarray(class_indices)
        lowest, highest = np.minimum.reduce(cis_array), np.maximum.reduce(cis_array)
        if lowest < 0 or highest > MAX_CLASS_INDEX:  # numpy would wrap them silently
            raise ValueError(f"class indices {lowest}..{highest} are out of range for ids")
        rows = np.empty(n, dtype=_ROW_DTYPE)
        rows["row"] = np.arange(n, dtype=np.uint32)
        rows["class_index"] = cis_array
        rows["score"] = scores
        # the message per row: class index << 32 | the score's float32 bits
        messages = rows["class_index"].astype(np.uint64) << np.uint64(32)
        messages |= rows["score"].astype(np.float32).view(np.uint32)
        raw_pads = b"".join(
            [
                self._pad_bytes(b, common, min(PAD_BLOCK_ROWS, n - b * PAD_BLOCK_ROWS))
                for b in range((n + PAD_BLOCK_ROWS - 1) // PAD_BLOCK_ROWS)
            ]
        )
        pads = np.frombuffer(raw_pads, dtype=">u8").tolist()
        rows["tag"] = [(k * a + p) % P61 for a, p in zip(messages.tolist(), pads, strict=True)]
        text = base64.urlsafe_b64encode(rows.tobytes()).decode("ascii")
        c = _ROW_CHARS
        return [head + text[i : i + c] for i in range(0, n * c, c)]

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
        if parts[0] != PREFIX:
            return None
        return self._parse_p3(parts[1], parts[2])

    def _parse_p3(self, request: str, row_text: str) -> PredictionRef | None:
        common = _unb64(request)
        raw = _unb64(row_text)
        if common is None or raw is None or len(common) <= _COMMON.size or len(raw) != _ROW.size:
            return None
        row, class_index, bits, tag = _ROW_BITS.unpack(raw)
        block, offset = divmod(row, PAD_BLOCK_ROWS)
        pad = int.from_bytes(self._pad_bytes(block, common, offset + 1)[8 * offset :])
        expected = (self._k * (class_index << 32 | bits) + pad) % P61
        if not hmac.compare_digest(tag.to_bytes(8), expected.to_bytes(8)):
            return None
        version, ms, _nonce = _COMMON.unpack_from(common)
        try:
            model = common[_COMMON.size :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        score = _ROW.unpack(raw)[2]
        return PredictionRef(model, version, class_index, float(score), ms / 1000.0)
