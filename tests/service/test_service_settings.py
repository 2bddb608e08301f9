"""Settings from VERDICT_* variables, version policies, the persisted prediction-id key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from service.monitoring.keys import load_prediction_key
from service.settings import Settings, VersionPolicy


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERDICT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    monkeypatch.setenv("VERDICT_API_KEYS", "a, b")
    monkeypatch.setenv("VERDICT_MAX_BATCH_ROWS", "7")
    monkeypatch.setenv("VERDICT_UNBATCHED_MODELS", "x,y")
    monkeypatch.setenv("VERDICT_VERSION_POLICY", "latest:2")
    monkeypatch.setenv("VERDICT_CORS_ORIGINS", "https://a.example")
    s = Settings()
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [k.get_secret_value() for k in s.api_keys] == ["a", "b"]
    assert s.max_batch_rows == 7
    assert not s.batching_for("x")
    assert s.policy == VersionPolicy("latest", count=2)
    assert s.cors_origins == ["https://a.example"]


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.model_repository) == ("127.0.0.1", 8000, "models")
    assert s.providers == ["auto"]
    assert s.intra_op_threads == 1 and s.read_timeout_s == 10.0
    assert s.admin_api_key is None and s.api_keys == [] and s.cors_origins == []
    assert s.feedback_db == "var/feedback.sqlite3"
    assert s.policy == VersionPolicy("all")


def test_batching_off_per_model() -> None:
    s = Settings(unbatched_models="a,b")  # type: ignore[arg-type]
    assert not s.batching_for("a") and s.batching_for("c")


@pytest.mark.parametrize(
    ("text", "available", "selected"),
    [
        ("latest", [1, 3, 2], [3]),
        ("latest:2", [1, 3, 2], [2, 3]),
        ("all", [2, 1], [1, 2]),
        ("specific:1,3", [1, 2, 3], [1, 3]),
    ],
)
def test_version_policies(text: str, available: list[int], selected: list[int]) -> None:
    assert VersionPolicy.parse(text).select(available) == selected


@pytest.mark.parametrize("bad", ["newest", "latest:0", "specific", "all:2"])
def test_bad_version_policy_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Settings(version_policy=bad)


def test_generated_key_is_persisted_with_mode_0600(tmp_path: Path) -> None:
    s = Settings(feedback_db=str(tmp_path / "db" / "feedback.sqlite3"))
    first = load_prediction_key(s)
    path = tmp_path / "db" / "prediction-id.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_prediction_key(s) == first  # survives a restart
    assert len(first) == 64


def test_configured_key_wins(tmp_path: Path) -> None:
    s = Settings(feedback_db=str(tmp_path / "f.sqlite3"), prediction_id_key=SecretStr("secret"))
    assert load_prediction_key(s) == b"secret"
    assert not (tmp_path / "prediction-id.key").exists()


def test_main_prepares_multiprocess_metrics_and_runs_the_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    import service.http.processes as processes
    from service.__main__ import main

    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_1.db").write_bytes(b"stale")
    # setenv records the previous state, so what main() exports is undone afterwards.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(prom))
    monkeypatch.setenv("VERDICT_DRAIN_SECONDS", "2.5")
    seen: dict = {}

    def serve_workers(settings: Settings, overrides: dict, workers: int) -> int:
        seen.update(settings=settings, overrides=overrides, workers=workers)
        return 0

    monkeypatch.setattr(processes, "serve_workers", serve_workers)
    with pytest.raises(SystemExit) as exited:
        main(["--host", "127.0.0.2", "--port", "1234", "--workers", "2"])
    assert exited.value.code == 0
    settings = seen["settings"]
    assert (settings.host, settings.port, seen["workers"]) == ("127.0.0.2", 1234, 2)
    assert settings.drain_seconds == 2.5
    assert seen["overrides"] == {"host": "127.0.0.2", "port": 1234}
    assert list(prom.iterdir()) == []  # wiped before the workers start
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(prom)


def test_a_renamed_setting_stops_the_server_and_a_removed_one_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import service.http.processes as processes
    from service.__main__ import main

    monkeypatch.setattr(processes, "serve_one", lambda settings: None)
    monkeypatch.setenv("VERDICT_BODY_TIMEOUT_S", "30")
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0"])
    assert exited.value.code == 2
    assert "VERDICT_BODY_TIMEOUT_S was renamed VERDICT_READ_TIMEOUT_S" in capsys.readouterr().err
    monkeypatch.delenv("VERDICT_BODY_TIMEOUT_S")
    monkeypatch.setenv("VERDICT_INLINE_MAX_US", "0")
    main(["--port", "0"])
    assert "VERDICT_INLINE_MAX_US is no longer a setting" in capsys.readouterr().err


def test_a_server_process_collects_young_objects_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    import service.http.processes as processes

    seen: list[tuple[int, int, int]] = []

    def run_loop(main: Any) -> None:
        main.close()
        seen.append(gc.get_threshold())

    monkeypatch.setattr(processes, "_run_loop", run_loop)
    before = gc.get_threshold()
    try:
        processes.serve_one(Settings())
    finally:
        gc.set_threshold(*before)
    assert seen == [(processes.GC_GEN0_THRESHOLD, before[1], before[2])]
    assert before[0] < processes.GC_GEN0_THRESHOLD
