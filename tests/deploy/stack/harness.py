"""The compose stack under test: stand-in images built here, the compose file, the engine.

No registry is reachable on the test machines, so every public image of docker-compose.yml is
replaced by one built here on a Debian 12 base made with debootstrap (scripts/container-engine.sh
imports it into podman as BASE_IMAGE). The compose file the tests run is generated from
docker-compose.yml: only the images, the published host ports (free ports on 127.0.0.1) and the
length of the Locust run change, and the services in LEFT_OUT go. docker-compose (1.29, Debian's)
drives podman through podman's Docker-compatible API socket.

    python -m tests.deploy.stack.harness build   # the images (layers cached between runs)
    python -m tests.deploy.stack.harness down    # remove whatever a run left behind
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
COMPOSE = ROOT / "docker-compose.yml"
WORK = ROOT / "var" / "compose-test"
PROJECT = "verdictstack"
# docker-compose labels what it creates with its project; containers the tests start carry it too.
PROJECT_LABEL = f"com.docker.compose.project={PROJECT}"
BASE_IMAGE = "localhost/debian-base:bookworm"
PREFIX = "localhost/verdict-stack"
PYTHON_IMAGE = f"{PREFIX}/python:3.11-slim-bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
LOCUST_RUN_TIME = "30s"


@dataclass(frozen=True)
class StandIn:
    """How the tests build an image: `{tag}` in image or build_args is the public image's tag."""

    image: str
    containerfile: Path
    context: Path
    build_args: dict[str, str] = field(default_factory=dict)

    def name(self, tag: str = "") -> str:
        return self.image.format(tag=tag)


# Python for the images whose public base is python:3.11-slim-bookworm: Debian 12's Python 3.11.
PYTHON = StandIn(PYTHON_IMAGE, HERE / "Containerfile.python", HERE, {"BASE_IMAGE": BASE_IMAGE})
# Every image docker-compose.yml names, keyed by its repository (the name without the tag).
# Issue 17 adds PostgreSQL: a Containerfile.postgres (Debian's `postgresql`) and one entry here.
STAND_INS: dict[str, StandIn] = {
    "verdict": StandIn(
        f"{PREFIX}/verdict:{{tag}}", ROOT / "deploy" / "Dockerfile", ROOT,
        {"PYTHON_IMAGE": PYTHON_IMAGE},
    ),
    "prom/prometheus": StandIn(
        f"{PREFIX}/prometheus:debian-bookworm", HERE / "Containerfile.prometheus", HERE,
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


class StackError(RuntimeError):
    """The stack could not be built, started or driven."""


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


# ------------------------------------------------------------------------------------- engine


def containers_conf() -> Path:
    """podman's settings for the test run (CONTAINERS_CONF), written to var/compose-test/.

    runc, since crun refuses the hybrid cgroups of these machines; explicit ulimits within the
    caller's hard limits (podman's defaults are above them and runc's setrlimit is refused);
    cgroupfs and a file event log, as there is no systemd; netavark, whose aardvark-dns lets
    the containers find each other by service name.
    """
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    if nofile < 0:  # RLIM_INFINITY
        nofile = 65536
    if nproc < 0:
        nproc = 32768
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "containers.conf"
    path.write_text(
        "# Written by tests/deploy/stack/harness.py for the compose test run.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )
    return path


def engine_env() -> dict[str, str]:
    """The environment of every podman and docker-compose call: no VERDICT_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
    env["CONTAINERS_CONF"] = str(containers_conf())
    return env


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=engine_env()
    )
    if check and done.returncode != 0:
        raise StackError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done


def _filters(labels: list[str]) -> list[str]:
    return [arg for label in labels for arg in ("--filter", f"label={label}")]


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def build(stand_in: StandIn, tag: str = "", log: Path | None = None) -> float:
    """Build one image with podman (layers cached); returns the seconds it took."""
    name = stand_in.name(tag)
    args = ["build", "--format", "docker", "--network", "host", "-f", str(stand_in.containerfile),
            "-t", name]  # fmt: skip
    # The bridge's MTU is above the host link's here; builds use the host's network.
    for key, value in stand_in.build_args.items():
        args += ["--build-arg", f"{key}={value.format(tag=tag)}"]
    if HOST_CA.is_file():
        # pip inside the build trusts the host's CA bundle (TLS may be intercepted); the mounts
        # exist only while RUN steps execute and never reach the image.
        pip_conf = WORK / "pip.conf"
        pip_conf.write_text("[global]\ncert = /run/host-ca.crt\n")
        args += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    args.append(str(stand_in.context))
    started = time.monotonic()
    done = podman(*args, timeout=1800, check=False)
    took = time.monotonic() - started
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise StackError(f"building {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return took


def built_ids(log_text: str) -> set[str]:
    """Ids (short or full) of the images a build produced or took from its cache."""
    return set(re.findall(r"^--> (?:Using cache )?([0-9a-f]{11,64})$", log_text, re.M))


def prune_stale(keep: set[str]) -> int:
    """Remove untagged images of earlier stack builds; returns how many.

    Each changed build leaves its former stage images behind (hundreds of MB each). Only
    untagged images on BASE_IMAGE go, and none that this run built or took from the cache:
    those are the layer cache of the next run.
    """
    base = podman("image", "inspect", BASE_IMAGE, "--format", "{{index .RootFS.Layers 0}}")
    ids = podman("images", "-q", "--no-trunc", "--filter", "dangling=true").stdout.split()
    removed = 0
    for image_id in ids:
        bare = image_id.removeprefix("sha256:")
        if any(bare.startswith(k) for k in keep):
            continue
        info = json.loads(podman("image", "inspect", image_id, check=False).stdout or "[]")
        if not info or info[0]["RootFS"]["Layers"][:1] != [base.stdout.strip()]:
            continue
        if podman("rmi", image_id, check=False).returncode == 0:
            removed += 1
    return removed


def image_size_bytes(image: str) -> int:
    return int(podman("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())


@contextmanager
def api_service() -> Iterator[str]:
    """`podman system service` on a socket of its own, for docker-compose; stopped at the end."""
    # A short path: socket paths are limited to 108 bytes, checkouts may lie deep.
    sock_dir = Path(tempfile.mkdtemp(prefix="verdict-stack.", dir="/tmp"))
    url = f"unix://{sock_dir}/podman.sock"
    log = (WORK / "podman-service.log").open("w")
    # A session of its own: a Ctrl-C meant for the run must not take the socket away before
    # docker-compose has taken the stack down; the run stops the service itself.
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        env=engine_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _api_answers(sock_dir / "podman.sock"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"podman system service did not start: see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _api_answers(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


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
        ids = podman("ps", "-q", "--no-trunc", *_filters([PROJECT_LABEL])).stdout.split()
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
        ids = podman("ps", "-a", "-q", "--no-trunc", *_filters(labels)).stdout.split()
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
        self.compose("up", "-d", timeout=600)
        if not self.ticker.is_alive():
            self.ticker.start()

    def down(self) -> None:
        self.ticker.stop()
        self.compose("down", "-v", "--remove-orphans", "--timeout", "40", check=False, timeout=300)
        remove_leftovers()


def remove_leftovers() -> list[str]:
    """Remove every container, volume and network of the test project, whatever state it is in."""
    removed: list[str] = []
    ids = podman("ps", "-a", "-q", *_filters([PROJECT_LABEL]), check=False).stdout.split()
    if ids:
        podman("rm", "-f", "-v", "-t", "5", *ids, check=False, timeout=120)
        removed += [f"container {i}" for i in ids]
    volumes = podman("volume", "ls", "-q", *_filters([PROJECT_LABEL]), check=False).stdout.split()
    for name in volumes:
        podman("volume", "rm", "-f", name, check=False)
        removed.append(f"volume {name}")
    networks = podman("network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
    for name in networks:
        if name.startswith(f"{PROJECT}_"):
            podman("network", "rm", "-f", name, check=False)
            removed.append(f"network {name}")
    return removed


def anonymous_volumes() -> set[str]:
    """Unlabelled volumes that no container uses: what `down` leaves of a VOLUME not mounted."""
    names = podman("volume", "ls", "-q", check=False).stdout.split()
    if not names:
        return set()
    infos = json.loads(podman("volume", "inspect", *names, check=False).stdout or "[]")
    return {v["Name"] for v in infos if v.get("Anonymous") and not v.get("MountCount")}


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
