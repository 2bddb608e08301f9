"""Prediction ids: round trip, uniqueness, tamper detection."""

from service.ids import PredictionIds


def test_round_trip_and_unique() -> None:
    ids = PredictionIds(b"k" * 32)
    issued = ids.issue_many("breast-cancer", 3, [1, 0, 1], [0.9, 0.1, 0.5], 1_700_000_000.123)
    assert len(set(issued)) == 3
    ref = ids.parse(issued[0])
    assert ref is not None
    assert (ref.model, ref.version, ref.class_index) == ("breast-cancer", 3, 1)
    assert abs(ref.score - 0.9) < 1e-6
    assert abs(ref.issued_at - 1_700_000_000.123) < 1e-3


def test_tampered_or_foreign_ids_are_rejected() -> None:
    ids = PredictionIds(b"k" * 32)
    good = ids.issue("digits", 1, 7, 0.99, 1.0)
    head, payload, mac = good.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    assert ids.parse(f"{head}.{flipped}.{mac}") is None
    assert PredictionIds(b"other-key").parse(good) is None
    for bad in ["", "p1", "p1..", "x.y.z", "p1.!!!.???", "p1." + "A" * 300 + ".B"]:
        assert ids.parse(bad) is None


def test_legacy_p1_ids_still_verify() -> None:
    import hashlib
    import hmac
    import struct

    from service.ids import _b64

    key = b"k" * 32
    payload = struct.pack(">IHfQ8s", 2, 1, 0.25, 5_000, b"n" * 8) + b"bc"
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:12]
    legacy = f"p1.{_b64(payload)}.{_b64(mac)}"
    ref = PredictionIds(key).parse(legacy)
    assert ref is not None and (ref.model, ref.version, ref.class_index) == ("bc", 2, 1)
    assert PredictionIds(b"other").parse(legacy) is None
    assert PredictionIds(key).parse(legacy.replace("p1.", "p2.", 1)) is None
