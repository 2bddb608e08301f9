"""`verdict-serve` / `python -m service`: serve every model in the model repository."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings, outdated

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_MULTIPROC_DIR = Path("var") / "prometheus-multiproc"
CONFIG_ERROR = 2  # exit code: a setting is wrong


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
    """Wipe and export the prometheus multiprocess folder before any worker starts (it must
    be set before prometheus_client is imported: it picks its value class then)."""
    folder = Path(path)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, check the environment, build the settings and serve."""
    args = _parse(argv)
    errors, warnings = outdated()
    for message in errors:
        print(f"verdict: {message}", file=sys.stderr)
    if errors:
        sys.exit(CONFIG_ERROR)
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.model_repository:
        overrides["model_repository"] = args.model_repository
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            where = "".join(f"VERDICT_{part}: ".upper() for part in error["loc"][:1])
            print(f"verdict: {where}{error['msg']}", file=sys.stderr)
        sys.exit(CONFIG_ERROR)
    multiproc = os.environ.get(MULTIPROC_ENV)
    if args.workers > 1 and not multiproc:
        multiproc = str(DEFAULT_MULTIPROC_DIR)
    if multiproc:
        prepare_multiproc_dir(multiproc)

    from service.http.processes import serve_one, serve_workers
    from service.logs import configure_logging

    logging.config.dictConfig(configure_logging(settings.log_json))
    for message in warnings:
        logging.getLogger("service").warning("%s", message)
    if args.workers > 1:
        sys.exit(serve_workers(settings, overrides, args.workers))
    serve_one(settings)


if __name__ == "__main__":
    main()
