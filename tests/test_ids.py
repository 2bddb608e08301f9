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
