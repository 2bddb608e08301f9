"""Serving processes: one server, or several workers on one port under a supervisor.

A server process builds the app, runs its lifespan (store, models), listens, and on SIGTERM
or SIGINT stops listening, drains (`drain_seconds`) and exits 0. Kept out of
`service.__main__` so that spawned workers can import what they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from service.http.app import VerdictApp, create_app, lifespan
from service.http.server import HttpServer
from service.settings import Settings

log = logging.getLogger("service")

STARTUP_FAILURE = 3  # exit code: the server could not start (port taken, app error)
LISTEN_BACKLOG = 2048
GC_GEN0_THRESHOLD = 20_000  # net allocations of tracked objects between young collections
SUPERVISE_EVERY_S = 0.5
# A worker that dies this soon after it started is restarted only after a delay, doubled
# (up to the maximum) each time it happens again.
STARTUP_GRACE_S = 10.0
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2)
PROBE_TIMEOUT_S = 1.0


class StartupError(Exception):
    """The server could not start: nothing was served."""


def tune_gc() -> None:
    """Collect the youngest generation after GC_GEN0_THRESHOLD net allocations, not 700: a
    64-row request keeps a few hundred lists and dicts alive at once, and the default ran a
    collection several times per request (docs/benchmarks.md). Garbage is still freed at once
    by reference counting; only cycles wait a little longer."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main)
        return
    uvloop.run(main)


async def serve(
    settings: Settings,
    *,
    sock: socket.socket | None = None,
    load_first: bool = False,
    app: VerdictApp | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[HttpServer, asyncio.Server], None] | None = None,
) -> None:
    """Serve HTTP and gRPC until SIGTERM or SIGINT (or `stop`), then drain both. `sock`: a
    bound socket to listen on (else settings.host and settings.port; with `sock`, the gRPC
    port is shared with other workers); `load_first`: listen only once every model is
    loaded; `app`: the app to serve (else one built from `settings`); `ready`: called once
    listening (the gRPC port is then in `app.state.grpc_port`)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
    if app is None:
        try:
            app = create_app(settings)
        except Exception as exc:
            raise StartupError(f"the app cannot be built: {exc}") from exc
    # Imported here: a --workers supervisor serves nothing and need not load grpcio.
    from service.grpc.server import GrpcServer

    server = HttpServer(app.edge, settings.read_timeout_s)
    state = app.state
    grpc_server = GrpcServer.over(state.dataplane, state.metrics, state.tracing, settings)
    async with lifespan(app, load_first=load_first):
        try:
            if sock is None:
                listener = await loop.create_server(
                    server.connection, settings.host, settings.port, backlog=LISTEN_BACKLOG
                )
            else:
                listener = await loop.create_server(
                    server.connection, sock=sock, backlog=LISTEN_BACKLOG
                )
        except OSError as exc:
            raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
        try:
            state.grpc_port = await grpc_server.start(
                settings.host, settings.grpc_port, reuse_port=sock is not None
            )
        except OSError as exc:
            listener.close()
            raise StartupError(f"gRPC: {exc}") from exc
        where = listener.sockets[0].getsockname()
        log.info(
            "verdict %d serving on http://%s:%d and gRPC port %d",
            os.getpid(),
            where[0],
            where[1],
            state.grpc_port,
        )
        if ready is not None:
            ready(server, listener)
        await stop.wait()
        log.info("stopping: draining requests in flight (up to %g s)", settings.drain_seconds)
        listener.close()
        await asyncio.gather(
            server.drain(settings.drain_seconds), grpc_server.drain(settings.drain_seconds)
        )
    log.info("stopped")


def serve_one(settings: Settings) -> None:
    """One process: serve, exit 0 after a clean drain, 3 when it cannot start."""
    tune_gc()
    try:
        _run_loop(serve(settings))
    except StartupError as exc:
        print(f"verdict: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    except KeyboardInterrupt:
        pass


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _stop_with(supervisor: int) -> None:
    """Linux: have the kernel send this worker SIGTERM when its supervisor dies, however it
    dies (SIGKILL, OOM killer), so that no worker keeps serving the port on its own; the
    worker then drains and exits like after any SIGTERM. Elsewhere a no-op.

    The signal follows the thread that started the worker: the supervisor starts every
    worker from its main thread, which lives as long as it does."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    if os.getppid() != supervisor:  # it died before the request above was made
        os.kill(os.getpid(), signal.SIGTERM)


def _someone_listens(host: str, port: int) -> bool:
    """Whether a server already accepts connections on host:port (a wildcard host is
    probed on loopback)."""
    probe = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((probe, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def serve_worker(overrides: dict[str, Any], supervisor: int | None = None) -> None:
    """One worker: its own listening socket on the shared port (SO_REUSEPORT), so the kernel
    spreads new connections over the workers instead of the first one to wake taking most.
    It listens only once its models are loaded, so a restarted worker takes no traffic
    before it is ready while the others serve. `supervisor`: the pid whose death stops it."""
    import logging.config

    from service.logs import configure_logging

    if supervisor is not None:
        _stop_with(supervisor)
    settings = Settings(**overrides)
    logging.config.dictConfig(configure_logging(settings.log_json))
    tune_gc()
    try:
        # Bound, not listening: the server listens after loading the models.
        sock = _reuseport_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"verdict worker cannot listen: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    try:
        _run_loop(serve(settings, sock=sock, load_first=True))
    except StartupError as exc:
        print(f"verdict worker: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    except KeyboardInterrupt:
        pass


def serve_workers(settings: Settings, overrides: dict[str, Any], workers: int) -> int:
    """Run `workers` processes on one port; restart any that dies (with a growing delay when
    it keeps dying young); on SIGTERM or SIGINT, stop them all (each drains) and return 0.
    A worker that cannot start the first time (exit code 3: no socket, no app) stops
    everything; a restarted one is retried.

    One listening socket shared by every worker would let the worker that wakes first
    accept most long-lived connections (docs/serving.md); one socket per worker does not.
    """
    host = settings.host
    reserved: list[socket.socket] = []
    try:
        # Bound (not listening) here: reserves the ports (HTTP, gRPC), and resolves port 0
        # once for all.
        for wanted in (settings.port, settings.grpc_port):
            reserved.append(_reuseport_socket(host, wanted))
    except OSError as exc:
        print(f"verdict: cannot bind {host}:{wanted}: {exc}", file=sys.stderr)
        for sock in reserved:
            sock.close()
        return STARTUP_FAILURE
    port, grpc_port = (sock.getsockname()[1] for sock in reserved)
    for taken in (port, grpc_port):
        if _someone_listens(host, taken):
            # SO_REUSEPORT would let these workers join that server's and take a share of
            # its connections without either one knowing.
            print(
                f"verdict: cannot bind {host}:{taken}: another server already listens there",
                file=sys.stderr,
            )
            for sock in reserved:
                sock.close()
            return STARTUP_FAILURE
    overrides = dict(overrides, port=port, grpc_port=grpc_port)
    ctx = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)

    def start() -> Any:
        proc = ctx.Process(target=serve_worker, args=(overrides, os.getpid()), daemon=False)
        proc.start()
        return proc

    procs = [start() for _ in range(workers)]
    started = [time.monotonic()] * workers
    delay = [RESTART_DELAY_S] * workers
    restarted = [False] * workers  # a restart that fails to start is retried, not fatal
    code = 0
    try:
        while not stop.wait(SUPERVISE_EVERY_S):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                if proc.exitcode == STARTUP_FAILURE and not restarted[i]:
                    print("verdict: a worker failed to start; stopping", file=sys.stderr)
                    code = STARTUP_FAILURE
                    stop.set()
                    break
                print(
                    f"verdict: worker {proc.pid} exited ({proc.exitcode}); starting another",
                    file=sys.stderr,
                )
                if time.monotonic() - started[i] < STARTUP_GRACE_S:
                    # Died young: wait longer before each further restart (no crash loop).
                    if stop.wait(delay[i]):
                        break
                    delay[i] = min(delay[i] * 2, MAX_RESTART_DELAY_S)
                else:
                    delay[i] = RESTART_DELAY_S
                procs[i] = start()
                started[i] = time.monotonic()
                restarted[i] = True
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.drain_seconds + 5
        for proc in procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sock in reserved:
            sock.close()
    return code
