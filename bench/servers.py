"""Start, time, measure (peak RSS) and reliably stop the servers under test."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.005


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerError(RuntimeError):
    """A server did not start, did not become ready, or answered a probe badly."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """Send one request to 127.0.0.1:`port`; return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A server process group started by the benchmark."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    cpus: str
    workers: int
    startup_s: float = float("nan")
    grpc_port: int = 0  # verdict's gRPC port (0: none)
    _stopped: bool = field(default=False, repr=False)

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server process and all its descendants (uvicorn workers)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces or parentheses; ppid follows the last ')'.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found: list[int] = []
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server's processes have used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    def peak_rss(self) -> list[dict[str, str | int | float]]:
        """VmHWM (peak resident set, MB = 10^6 bytes) of each of the server's processes."""
        found: list[dict[str, str | int | float]] = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        mb = int(line.split()[1]) * 1024 / 1e6
                        found.append({"pid": pid, "command": command.decode()[:120], "mb": mb})
        return found

    def peak_rss_mb(self) -> float:
        """VmHWM summed over the server's processes (supervisor and workers), in MB."""
        return sum(float(p["mb"]) for p in self.peak_rss())

    def stop(self) -> None:
        """Terminate the whole process group; kill it if it does not exit in time."""
        if self._stopped:
            return
        self._stopped = True
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                # Workers may outlive the parent for a moment; make sure the group is gone.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue


def start_server(
    name: str,
    command: list[str],
    ready_path: str,
    port: int,
    cpus: str,
    workers: int,
    env: dict[str, str],
    cwd: Path,
    log_dir: Path,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Server:
    """Spawn `command` pinned to `cpus` and wait until `ready_path` answers 200.

    The startup time runs from just before the spawn to the first 200.
    """
    log_path = log_dir / f"{name}-{port}.log"
    log = log_path.open("wb")
    start = time.perf_counter()
    process = subprocess.Popen(
        ["taskset", "-c", cpus, *command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    server = Server(name, port, process, log_path, cpus, workers)
    deadline = start + ready_timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise ServerError(
                    f"{name} exited with code {process.returncode} before it was ready:\n"
                    f"{server.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_request(port, "GET", ready_path, timeout_s=1.0)
                if status == 200:
                    server.startup_s = time.perf_counter() - start
                    return server
            if time.perf_counter() > deadline:
                raise ServerError(
                    f"{name} was not ready on {ready_path} after {ready_timeout_s:.0f} s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)
    except BaseException:
        server.stop()
        raise
