"""`verdict-serve` / `python -m service`: run the service under uvicorn."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from service.settings import Settings
from service.workers import serve_one, serve_workers

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="verdict-serve", description="Serve every model in the model repository."
    )
    parser.add_argument("--host", help="address to bind (VERDICT_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (VERDICT_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--model-repository", help="models folder (VERDICT_MODEL_REPOSITORY)")
    return parser.parse_args(argv)


def prepare_multiproc_dir(path: str) -> None:
    """Wipe and export the prometheus multiprocess folder before workers start."""
    folder = Path(path)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the settings, run uvicorn with the app factory."""
    args = _parse(argv)
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.model_repository:
        overrides["model_repository"] = args.model_repository
        os.environ["VERDICT_MODEL_REPOSITORY"] = args.model_repository
    settings = Settings(**overrides)  # type: ignore[arg-type]
    multiproc = settings.metrics_multiproc_dir or os.environ.get(MULTIPROC_ENV)
    if args.workers > 1 and not multiproc:
        multiproc = str(Path("var") / "prometheus-multiproc")
    if multiproc:
        # Must happen before prometheus_client is imported (it picks its value class then).
        prepare_multiproc_dir(multiproc)
        os.environ["VERDICT_METRICS_MULTIPROC_DIR"] = multiproc

    from service.logs import configure_logging

    config: dict[str, Any] = {
        "app": "service.app:create_app",
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        # uvicorn takes whole seconds; never None here, which would wait forever.
        "timeout_graceful_shutdown": math.ceil(settings.drain_seconds),
        "log_config": configure_logging(settings.log_json),
        "access_log": False,
        "server_header": False,
        # httptools, with the predict routes answered without ASGI (service.protocol).
        "http": "service.protocol:HTTP_PROTOCOL",
    }
    if args.workers > 1:
        sys.exit(serve_workers(config, args.workers, settings.drain_seconds))
    serve_one(config)


if __name__ == "__main__":
    main()
