"""podman for the compose stack test: its settings, images, API socket and clean-up."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
WORK = ROOT / "var" / "compose-test"
PROJECT = "verdictstack"
# docker-compose labels what it creates with its project; containers the tests start carry it too.
PROJECT_LABEL = f"com.docker.compose.project={PROJECT}"
BASE_IMAGE = "localhost/debian-base:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class StandIn:
    """How the tests build an image: `{tag}` in image or build_args is the public image's tag."""

    image: str
    containerfile: Path
    context: Path
    build_args: dict[str, str] = field(default_factory=dict)

    def name(self, tag: str = "") -> str:
        return self.image.format(tag=tag)


class StackError(RuntimeError):
    """The stack could not be built, started or driven."""


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


def label_filters(labels: list[str]) -> list[str]:
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


def remove_leftovers() -> list[str]:
    """Remove every container, volume and network of the test project, whatever state it is in."""
    removed: list[str] = []
    ids = podman("ps", "-a", "-q", *label_filters([PROJECT_LABEL]), check=False).stdout.split()
    if ids:
        podman("rm", "-f", "-v", "-t", "5", *ids, check=False, timeout=120)
        removed += [f"container {i}" for i in ids]
    volumes = podman(
        "volume", "ls", "-q", *label_filters([PROJECT_LABEL]), check=False
    ).stdout.split()
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
