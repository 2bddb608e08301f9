"""The compose stack test's set-up, without an engine: the generated file, stand-ins, wiring."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.stack import engine, harness

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = ROOT / "tests" / "deploy" / "stack"


def _shipped() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(harness.COMPOSE.read_text())
    return doc


def test_generated_file_changes_only_images_ports_paths_and_the_locust_run_time() -> None:
    shipped = _shipped()
    generated = harness.stack_config(locust_run_time="7s")
    assert set(generated["services"]) == set(shipped["services"]) - set(harness.LEFT_OUT)
    assert {"grafana", "train"} <= set(harness.LEFT_OUT)
    used = {v.split(":")[0] for s in generated["services"].values() for v in s["volumes"]}
    assert set(generated["volumes"]) == set(shipped["volumes"]) & used
    for name, service in generated["services"].items():
        original = copy.deepcopy(shipped["services"][name])
        # Images: built here (localhost/), never pulled; nothing left for compose to build.
        assert service["image"].startswith("localhost/verdict-stack/"), service["image"]
        assert "build" not in service
        # Ports: the same container ports, published on 127.0.0.1 only.
        assert len(service.get("ports", [])) == len(original.get("ports", []))
        for mine, theirs in zip(service.get("ports", []), original.get("ports", []), strict=True):
            host, port, inside = mine.split(":")
            assert host == "127.0.0.1" and int(port) > 0
            assert inside == str(theirs).split(":")[-1]
        # Volumes: the same, bind sources made absolute.
        for mine, theirs in zip(service["volumes"], original.get("volumes", []), strict=True):
            source, rest = theirs.split(":", 1)
            if source.startswith("./"):
                assert mine == f"{(ROOT / source).resolve()}:{rest}"
            else:
                assert mine == theirs
        for key in ("image", "build", "ports", "volumes"):
            original.pop(key, None)
            service.pop(key, None)
        if name == "locust":
            at = original["command"].index("--run-time") + 1
            assert service["command"][at] == "7s"
            original["command"][at] = "7s"
        assert service == original, f"{name}: the test would run something else than shipped"
    assert "grafana-data" not in generated["volumes"]


def test_every_image_of_the_compose_file_has_a_stand_in_built_on_the_local_base() -> None:
    plan = harness.images_to_build()
    assert plan[0] == (harness.PYTHON, "")
    names = [stand_in.name(tag) for stand_in, tag in plan]
    assert len(names) == len(set(names))
    for stand_in, tag in plan:
        assert stand_in.containerfile.is_file(), stand_in.containerfile
        assert "{tag}" not in stand_in.name(tag)
        bases = set(stand_in.build_args.values()) & {engine.BASE_IMAGE, harness.PYTHON_IMAGE}
        assert bases, f"{stand_in.containerfile.name} is not built on the local base"
    # Locust is installed at the version of the public image's tag.
    locust = harness.compose_images()["locust"]
    assert harness.stand_in_for(locust).build_args["LOCUST_VERSION"].format(
        tag=harness.split_image(locust)[1]
    ) == harness.split_image(locust)[1]  # fmt: skip


def test_an_image_without_a_stand_in_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = _shipped()
    doc["services"]["cache"] = {"image": "redis:7"}
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(harness, "COMPOSE", compose)
    with pytest.raises(engine.StackError, match=r"redis:7.*no stand-in"):
        harness.stack_config()
    with pytest.raises(engine.StackError, match="no stand-in"):
        harness.images_to_build()


@pytest.mark.parametrize(
    ("name", "arg", "default"),
    [
        ("Dockerfile", "PYTHON_IMAGE", "python:3.11-slim-bookworm"),
        ("Dockerfile.gpu", "CUDA_IMAGE", "nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04"),
        ("Dockerfile.train", "PYTHON_IMAGE", "python:3.11-slim-bookworm"),
    ],
)
def test_dockerfiles_take_the_base_image_as_a_build_argument(
    name: str, arg: str, default: str
) -> None:
    text = (ROOT / "deploy" / name).read_text()
    assert re.search(rf"^ARG {arg}={re.escape(default)}$", text, re.M), f"{name}: ARG {arg}"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(base == f"${{{arg}}}" for base in froms), froms
    # Nothing about the test machine in what ships.
    assert "localhost/" not in text and "debian-base" not in text


@pytest.mark.parametrize("name", ["Containerfile.python", "Containerfile.prometheus",
                                  "Containerfile.locust"])  # fmt: skip
def test_stand_in_containerfiles_are_hadolint_clean(name: str) -> None:
    here = Path(sys.executable).parent / "hadolint"
    exe = str(here) if here.exists() else shutil.which("hadolint")
    assert exe, "hadolint is not installed (it is in the dev extra)"
    done = subprocess.run(
        [exe, "--no-color", str(STACK_DIR / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_make_compose_test_runs_the_script_and_ci_runs_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ncompose-test:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/compose-test.sh" in recipe
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make compose-test" in ci
    script = (ROOT / "scripts" / "compose-test.sh").read_text()
    assert "scripts/container-engine.sh" in script and "trap cleanup EXIT" in script
    assert "VERDICT_STACK=1" in script and "down --expect-clean" in script
    for name in ("compose-test.sh", "container-engine.sh"):
        done = subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], capture_output=True)
        assert done.returncode == 0, done.stderr


def test_plain_pytest_deselects_the_stack_tests_and_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "VERDICT_STACK"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", str(STACK_DIR)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert re.search(r"\d+ deselected", out), out[-2000:]
    assert "`make compose-test` runs them" in out
    assert "test_stack.py::" not in out
