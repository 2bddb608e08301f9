"""Helpers for the reliability tests: live-server settings, raw sockets, RSS."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.conftest import TEST_KEY

BIN_ROW = [0.1, -0.2, 0.3]


def live_env(repo: Path, **settings: Any) -> dict[str, str]:
    """VERDICT_* for a live server over `repo`, its store next to it, plus overrides."""
    env = {
        "VERDICT_MODEL_REPOSITORY": str(repo),
        "VERDICT_FEEDBACK_DB": str(repo.parent / "var" / "feedback.sqlite3"),
        "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
        "VERDICT_DRAIN_SECONDS": "2",
        "VERDICT_GRPC_PORT": "0",  # tests never take a fixed port
    }
    for name, value in settings.items():
        if name == "metrics_multiproc_dir":  # prometheus_client's own variable
            env["PROMETHEUS_MULTIPROC_DIR"] = str(value)
        else:
            env[f"VERDICT_{name.upper()}"] = str(value)
    return env


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Open a connection and send a request head (CRLF line endings added) and some body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = head.strip().splitlines()
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of a response head, without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case names) and JSON body of one response on a raw socket."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, json.loads(rest[:length]) if length else None


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def is_error_shape(doc: Any) -> bool:
    return isinstance(doc, dict) and set(doc) == {"error", "code"}


def spawn_server(env: dict[str, str], fsize_limit: int | None = None) -> Any:
    """A LiveServer; with `fsize_limit` its process may write no file past that many bytes
    (RLIMIT_FSIZE, set in the server's process before it starts: the disk is "full" for it;
    Python ignores SIGXFSZ, so its writes fail with EFBIG)."""
    import resource

    from tests.conftest import LiveServer

    if fsize_limit is None:
        return LiveServer(env)

    def limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, hard))

    return LiveServer(env, preexec_fn=limit)
