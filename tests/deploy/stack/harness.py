"""The compose stack under test: the stand-in images, the generated compose file, the driver.

No registry is reachable on the test machines, so every public image of docker-compose.yml is
replaced by one built here on a Debian 12 base made with debootstrap (scripts/container-engine.sh
imports it into podman as BASE_IMAGE). The compose file the tests run is generated from
docker-compose.yml: only the images, the published host ports (free ports on 127.0.0.1) and the
length of the Locust run change, and the services in LEFT_OUT go. docker-compose (1.29, Debian's)
drives podman through podman's Docker-compatible API socket (tests/deploy/stack/engine.py).

    python -m tests.deploy.stack.harness build   # the images (layers cached between runs)
    python -m tests.deploy.stack.harness down    # remove whatever a run left behind
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port
from tests.deploy.stack.engine import (
    BASE_IMAGE,
    PROJECT,
    PROJECT_LABEL,
    ROOT,
    WORK,
    StackError,
    StandIn,
    build,
    built_ids,
    engine_env,
    image_exists,
    image_size_bytes,
    label_filters,
    podman,
    prune_stale,
    remove_leftovers,
)

HERE = Path(__file__).resolve().parent
COMPOSE = ROOT / "docker-compose.yml"
PREFIX = "localhost/verdict-stack"
PYTHON_IMAGE = f"{PREFIX}/python:3.11-slim-bookworm"
LOCUST_RUN_TIME = "30s"

# Python for the images whose public base is python:3.11-slim-bookworm: Debian 12's Python 3.11.
PYTHON = StandIn(PYTHON_IMAGE, HERE / "Containerfile.python", HERE, {"BASE_IMAGE": BASE_IMAGE})
# Every image docker-compose.yml names, keyed by its repository (the name without the tag).
STAND_INS: dict[str, StandIn] = {
    "verdict": StandIn(
        f"{PREFIX}/verdict:{{tag}}", ROOT / "deploy" / "Dockerfile", ROOT,
        {"PYTHON_IMAGE": PYTHON_IMAGE},
    ),
    "prom/prometheus": StandIn(
        f"{PREFIX}/prometheus:debian-bookworm", HERE / "Containerfile.prometheus", HERE,
        {"BASE_IMAGE": BASE_IMAGE},
    ),
    "postgres": StandIn(
        f"{PREFIX}/postgres:{{tag}}", HERE / "Containerfile.postgres", HERE,
        {"BASE_IMAGE": BASE_IMAGE},
    ),
    "locustio/locust": StandIn(
        f"{PREFIX}/locust:{{tag}}", HERE / "Containerfile.locust", HERE,
        {"PYTHON_IMAGE": PYTHON_IMAGE, "LOCUST_VERSION": "{tag}"},
    ),
}  # fmt: skip
# The GPU image on the same path: its CUDA base cannot be pulled, so the Debian base stands in.
GPU = StandIn(f"{PREFIX}/verdict:0.1.0-gpu", ROOT / "deploy" / "Dockerfile.gpu", ROOT,
              {"CUDA_IMAGE": BASE_IMAGE})  # fmt: skip
# Services of docker-compose.yml that the test run leaves out, and why.
LEFT_OUT = {
    "grafana": "no Debian or PyPI package ships Grafana; its provisioning is tested statically",
    "train": "the training image (torch) is no part of the serving stack",
}


def split_image(image: str) -> tuple[str, str]:
    """`repo/name:tag` -> (`repo/name`, `tag`); the tag is `latest` when absent."""
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return image, "latest"
    return repository, tag


def stand_in_for(image: str) -> StandIn:
    repository, _ = split_image(image)
    if repository not in STAND_INS:
        raise StackError(
            f"docker-compose.yml names {image}, which has no stand-in: add one to STAND_INS"
        )
    return STAND_INS[repository]


def compose_images() -> dict[str, str]:
    """Service -> image for every service of docker-compose.yml that the test run keeps."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: s["image"] for name, s in services.items() if name not in LEFT_OUT}


def images_to_build() -> list[tuple[StandIn, str]]:
    """(stand-in, public tag) in build order: the Python base first, each image once."""
    seen: dict[str, tuple[StandIn, str]] = {}
    for image in compose_images().values():
        stand_in = stand_in_for(image)
        tag = split_image(image)[1]
        seen.setdefault(stand_in.name(tag), (stand_in, tag))
    return [(PYTHON, ""), *seen.values()]


def _publish(spec: str, host_port: int) -> str:
    """`8000:8000` -> `127.0.0.1:<host_port>:8000`: the same container port, a free host port."""
    container_port = str(spec).rsplit(":", 1)[-1]
    return f"127.0.0.1:{host_port}:{container_port}"


def _absolute(volume: str) -> str:
    source, sep, rest = volume.partition(":")
    if source.startswith("./"):
        return str((ROOT / source).resolve()) + sep + rest
    return volume


def stack_config(locust_run_time: str = LOCUST_RUN_TIME) -> dict[str, Any]:
    """docker-compose.yml as the test runs it (see the module docstring for what changes)."""
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Any] = doc["services"]
    for name in LEFT_OUT:
        services.pop(name, None)
    used_volumes: set[str] = set()
    for name, service in services.items():
        service["image"] = stand_in_for(service["image"]).name(split_image(service["image"])[1])
        service.pop("build", None)
        if "ports" in service:
            service["ports"] = [_publish(p, free_port()) for p in service["ports"]]
        service["volumes"] = [_absolute(v) for v in service.get("volumes", [])]
        used_volumes.update(v.split(":")[0] for v in service["volumes"])
        if name == "locust":
            command = service["command"]
            command[command.index("--run-time") + 1] = locust_run_time
    doc["volumes"] = {k: v for k, v in (doc.get("volumes") or {}).items() if k in used_volumes}
    return doc


def host_port(config: dict[str, Any], service: str, container_port: int) -> int:
    """The 127.0.0.1 port that publishes a service's container port in a stack_config()."""
    for spec in config["services"][service].get("ports", []):
        _, host, inside = spec.rsplit(":", 2)
        if int(inside) == container_port:
            return int(host)
    raise StackError(f"{service} publishes no port {container_port}")


# -------------------------------------------------------------------------------------- stack


class HealthTicker(threading.Thread):
    """Runs every health check of the project's containers at its own interval.

    podman schedules HEALTHCHECKs with systemd timers; without systemd nothing runs them, so
    this thread does what the timer would: `podman healthcheck run` (the image's or the compose
    file's check, as the container was created with it) every interval after the start.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="health-ticker")
        self._stop_event = threading.Event()
        self._due: dict[str, float] = {}

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            # A container the engine is restarting fails a call; the next tick sees it again.
            with suppress(StackError, subprocess.SubprocessError, ValueError):
                self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        for cid, interval_s in self._checked_containers():
            due = self._due.setdefault(cid, now + interval_s)
            if now >= due:
                podman("healthcheck", "run", cid, timeout=60, check=False)
                self._due[cid] = time.monotonic() + interval_s

    def _checked_containers(self) -> list[tuple[str, float]]:
        ids = podman("ps", "-q", "--no-trunc", *label_filters([PROJECT_LABEL])).stdout.split()
        if not ids:
            self._due.clear()
            return []
        found = []
        for info in json.loads(podman("inspect", *ids).stdout):
            check = info["Config"].get("Healthcheck") or {}
            if check.get("Test") and check["Test"][0] != "NONE":
                found.append((info["Id"], (check.get("Interval") or 30_000_000_000) / 1e9))
        self._due = {cid: t for cid, t in self._due.items() if cid in {c for c, _ in found}}
        return found


class Stack:
    """docker-compose on the generated file, against podman's API socket."""

    def __init__(self, docker_host: str, locust_run_time: str = LOCUST_RUN_TIME) -> None:
        self.config = stack_config(locust_run_time)
        self.file = WORK / "docker-compose.stack.yml"
        self.file.write_text(
            "# Generated by tests/deploy/stack/harness.py from docker-compose.yml; do not edit.\n"
            + yaml.safe_dump(self.config, sort_keys=False)
        )
        self.env = {**engine_env(), "DOCKER_HOST": docker_host, "COMPOSE_HTTP_TIMEOUT": "180"}
        self.ticker = HealthTicker()

    def url(self, service: str, container_port: int) -> str:
        return f"http://127.0.0.1:{host_port(self.config, service, container_port)}"

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "--ansi", "never", "-p", PROJECT, "-f", str(self.file), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and done.returncode != 0:
            raise StackError(
                f"docker-compose {' '.join(args)}: exit {done.returncode}\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def container(self, service: str) -> dict[str, Any]:
        """`podman inspect` of the service's one container."""
        labels = [f"{PROJECT_LABEL}", f"com.docker.compose.service={service}"]
        ids = podman("ps", "-a", "-q", "--no-trunc", *label_filters(labels)).stdout.split()
        oneoffs = [i for i in ids if not self._is_oneoff(i)]
        if len(oneoffs) != 1:
            raise StackError(f"{service}: expected one container, found {len(oneoffs)}")
        info: dict[str, Any] = json.loads(podman("inspect", oneoffs[0]).stdout)[0]
        return info

    @staticmethod
    def _is_oneoff(cid: str) -> bool:
        out = podman("inspect", cid, "--format",
                     '{{index .Config.Labels "com.docker.compose.oneoff"}}').stdout  # fmt: skip
        return out.strip() == "True"

    def health(self, service: str) -> str:
        state = self.container(service)["State"]
        return str((state.get("Health") or state.get("Healthcheck") or {}).get("Status", ""))

    def wait_healthy(self, service: str, limit_s: float = 120) -> float:
        """Seconds until the service's container reports healthy by its own health check."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            if self.health(service) == "healthy":
                return time.monotonic() - started
            time.sleep(0.5)
        raise StackError(
            f"{service} not healthy after {limit_s:.0f} s (status {self.health(service)!r})\n"
            + self.logs(service)
        )

    def wait_http(self, url: str, limit_s: float = 60) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise StackError(f"{url} did not answer 200 within {limit_s:.0f} s")

    def logs(self, service: str = "") -> str:
        done = self.compose("logs", "--no-color", "--tail", "80", *([service] if service else []),
                            check=False, timeout=60)  # fmt: skip
        return done.stdout[-8000:] + done.stderr[-2000:]

    def up(self) -> None:
        # Before `up`: it waits for the services others depend on to be healthy (postgres),
        # and nothing else runs their health checks.
        if not self.ticker.is_alive():
            self.ticker.start()
        self.compose("up", "-d", timeout=600)

    def down(self) -> None:
        if self.ticker.is_alive():
            self.ticker.stop()
        self.compose("down", "-v", "--remove-orphans", "--timeout", "40", check=False, timeout=300)
        remove_leftovers()


# ---------------------------------------------------------------------------------------- CLI


def _build_all(gpu: bool) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    if not image_exists(BASE_IMAGE):
        print(f"stack: {BASE_IMAGE} is missing: run scripts/container-engine.sh", file=sys.stderr)
        return 2
    plan = images_to_build() + ([(GPU, "")] if gpu else [])
    total = 0.0
    keep: set[str] = set()
    for stand_in, tag in plan:
        name = stand_in.name(tag)
        log = WORK / f"build-{re.sub(r'[^A-Za-z0-9.]+', '_', name)}.log"
        took = build(stand_in, tag, log)
        total += took
        keep |= built_ids(log.read_text())
        size = image_size_bytes(name) / 1e6
        print(f"stack: built {name} in {took:.0f} s ({size:.0f} MB; log {log.relative_to(ROOT)})")
    print(f"stack: images built in {total:.0f} s")
    # Only a run that built every image knows the whole cache.
    if gpu and (removed := prune_stale(keep)):
        print(f"stack: removed {removed} untagged images of earlier builds")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build every image the stack test runs (cached layers)")
    b.add_argument("--no-gpu", action="store_true", help="skip deploy/Dockerfile.gpu")
    d = sub.add_parser("down", help="remove the containers, volumes and networks of a test run")
    d.add_argument(
        "--expect-clean",
        action="store_true",
        help="exit 1 when there was anything to remove (the tests' own clean-up failed)",
    )
    sub.add_parser("config", help="print the compose file the tests run")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            return _build_all(gpu=not args.no_gpu)
        if args.command == "down":
            removed = remove_leftovers()
            out = sys.stderr if args.expect_clean else sys.stdout
            for line in removed:
                print(f"stack: removed {line}", file=out)
            if removed and args.expect_clean:
                print("stack: the test run left these behind", file=sys.stderr)
                return 1
            return 0
        print(yaml.safe_dump(stack_config(), sort_keys=False), end="")
        return 0
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
