"""Prediction ids: round trip, uniqueness, tamper detection, ids of earlier releases."""

import base64
import hashlib
import hmac
import struct

import numpy as np
import pytest

from service.monitoring.ids import PAD_BLOCK_ROWS, PredictionIds, _b64

KEY = b"k" * 32


def test_round_trip_and_unique() -> None:
    ids = PredictionIds(KEY)
    issued = ids.issue_many("breast-cancer", 3, [1, 0, 1], [0.9, 0.1, 0.5], 1_700_000_000.123)
    assert len(set(issued)) == 3
    assert all(i.startswith("p3.") for i in issued)
    ref = ids.parse(issued[0])
    assert ref is not None
    assert (ref.model, ref.version, ref.class_index) == ("breast-cancer", 3, 1)
    assert abs(ref.score - 0.9) < 1e-6
    assert abs(ref.issued_at - 1_700_000_000.123) < 1e-3


@pytest.mark.parametrize("rows", [1, 8, 9, 64, 65, 200])
def test_every_row_of_a_batch_verifies_with_its_own_class_and_score(rows: int) -> None:
    """Both issuing paths (struct for a few rows, numpy above) and several pad blocks."""
    ids = PredictionIds(KEY)
    rng = np.random.default_rng(rows)
    classes = rng.integers(0, 10, rows)
    scores = rng.random(rows).astype(np.float32)
    for as_lists in (False, True):
        cis = classes.tolist() if as_lists else classes
        scs = scores.tolist() if as_lists else scores
        issued = ids.issue_many("digits", 2, cis, scs, 1_700_000_000.0)
        assert len(issued) == rows and len(set(issued)) == rows
        for i, pid in enumerate(issued):
            ref = ids.parse(pid)
            assert ref is not None, (rows, i)
            assert (ref.model, ref.version, ref.class_index) == ("digits", 2, int(classes[i]))
            assert ref.score == float(scores[i])  # float32 exactly


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


def test_tampered_or_foreign_ids_are_rejected() -> None:
    ids = PredictionIds(KEY)
    good = ids.issue("digits", 1, 7, 0.99, 1.0)
    prefix, request, row = good.split(".")
    assert ids.parse(good) is not None
    # every character of both parts matters: version, time, nonce, name, row index,
    # class, score and the tag itself
    for at in range(len(request)):
        assert ids.parse(f"{prefix}.{_flip(request, at)}.{row}") is None, at
    for at in range(len(row)):
        assert ids.parse(f"{prefix}.{request}.{_flip(row, at)}") is None, at
    assert PredictionIds(b"other-key").parse(good) is None
    for bad in ["", "p1", "p3", "p3..", "x.y.z", "p3.!!!.???", "p3." + "A" * 300 + ".B"]:
        assert ids.parse(bad) is None


def test_a_row_part_does_not_verify_under_another_request_or_row() -> None:
    ids = PredictionIds(KEY)
    a = ids.issue_many("bc", 1, [1] * PAD_BLOCK_ROWS * 2, [0.5] * PAD_BLOCK_ROWS * 2, 5.0)
    b = ids.issue_many("bc", 1, [1] * 3, [0.5] * 3, 5.0)
    request_a, request_b = a[0].split(".")[1], b[0].split(".")[1]
    rows_a = [pid.split(".")[2] for pid in a]
    # the same class and score, another request (its own nonce): an unknown pad
    assert ids.parse(f"p3.{request_b}.{rows_a[0]}") is None
    # another row of the same request, its index rewritten: the tag no longer fits
    for i in (1, PAD_BLOCK_ROWS, PAD_BLOCK_ROWS + 1):
        raw = bytearray(base64.urlsafe_b64decode(rows_a[i]))  # 24 characters, no padding
        raw[0:4] = (0).to_bytes(4)
        assert ids.parse(f"p3.{request_a}.{_b64(bytes(raw))}") is None


def test_only_the_canonical_text_verifies() -> None:
    """One prediction, one string: labels are keyed by the id text, so a variant spelling of
    the same bytes must not count as another prediction."""
    ids = PredictionIds(KEY)
    good = ids.issue("breast-cancer", 1, 1, 0.9, 1.0)
    prefix, request, row = good.split(".")
    variants = [
        f"{prefix}.{request}=.{row}",
        f"{prefix}.{request}.{row}==",
        f"{prefix}.{request[:5]}!{request[5:]}.{row}",  # non-alphabet characters
        f"{prefix}.{request}.{row[:3]}\n{row[3:]}",
    ]
    # the last character of the request part carries padding bits when the name's length
    # is not a multiple of 3; another value of those bits decodes to the same bytes
    last = request[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    low = alphabet.index(last) & ~0b1111
    for bits in range(16):
        other = alphabet[low | bits]
        if other != last:
            variants.append(f"{prefix}.{request[:-1]}{other}.{row}")
    for variant in variants:
        assert ids.parse(variant) is None, variant


def test_ids_of_other_formats_do_not_verify() -> None:
    """One format: ids signed the ways of unreleased builds (p1: HMAC-SHA256, p2: keyed
    BLAKE2b per row) are refused even with the right key."""
    p2_payload = struct.pack(">IHfQ9s", 4, 1, 0.75, 5_000, b"n" * 9) + b"breast-cancer"
    p2_mac = hashlib.blake2b(p2_payload, key=KEY, digest_size=12).digest()
    p1_payload = struct.pack(">IHfQ8s", 2, 1, 0.25, 5_000, b"n" * 8) + b"bc"
    p1_mac = hmac.new(KEY, p1_payload, hashlib.sha256).digest()[:12]
    ids = PredictionIds(KEY)
    assert ids.parse(f"p2.{_b64(p2_payload)}.{_b64(p2_mac)}") is None
    assert ids.parse(f"p1.{_b64(p1_payload)}.{_b64(p1_mac)}") is None
    good = ids.issue("bc", 2, 1, 0.25, 5.0)
    assert ids.parse(good) is not None
    assert ids.parse("p4" + good[2:]) is None


def test_the_few_row_and_many_row_paths_write_the_same_ids(monkeypatch) -> None:
    """struct for up to 8 rows, numpy above: the same data and nonce give the same text (the
    pads of a block are one SHAKE stream, so the first rows' pads do not depend on n)."""
    import service.monitoring.ids as ids_module

    monkeypatch.setattr(ids_module.os, "urandom", lambda n: bytes(range(n)))
    ids = PredictionIds(KEY)
    classes = [3, 0, 65535, 1, 2, 0, 1, 9, 4]
    scores = [0.5, float("nan"), -0.0, 1.0, float("inf"), 1e-40, 0.25, 0.75, 0.1]
    few = ids.issue_many("digits", 2, classes[:8], scores[:8], 1_700_000_000.0)
    many = ids.issue_many("digits", 2, np.array(classes), np.array(scores), 1_700_000_000.0)
    assert many[:8] == few
    assert all(ids.parse(pid) is not None for pid in many)


@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("bad", [-1, 65536, 70000])
def test_a_class_index_an_id_cannot_hold_is_refused(rows: int, bad: int) -> None:
    ids = PredictionIds(KEY)
    classes = np.zeros(rows, dtype=np.int64)
    classes[-1] = bad
    with pytest.raises(ValueError):
        ids.issue_many("m", 1, classes, np.zeros(rows, np.float32), 1.0)
    with pytest.raises(ValueError):
        ids.issue_many("m", 1, classes.tolist(), [0.0] * rows, 1.0)
