"""A real verdict server process whose feedback side is the tests' (for the kill -9 test).

Usage: python feedback_server.py PORT DB_PATH
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).parent)]

from feedback_support import KEY, Metrics, feedback_app, manifest_of  # noqa: E402

from service.dataplane.feedback import FeedbackService  # noqa: E402
from service.http.processes import _run_loop, serve  # noqa: E402
from service.monitoring.ids import PredictionIds  # noqa: E402
from service.monitoring.store import FeedbackStore  # noqa: E402


def main() -> None:
    port, db_path = int(sys.argv[1]), sys.argv[2]
    service = FeedbackService(
        FeedbackStore(db_path),
        PredictionIds(KEY),
        manifest_of,
        Metrics(CollectorRegistry()),
        versions_of=lambda model: [1] if model == "bc" else [],
    )
    app = feedback_app(service, Path(tempfile.mkdtemp(prefix="feedback-server-")))
    settings = app.state.settings.model_copy(
        update={"host": "127.0.0.1", "port": port, "grpc_port": 0}
    )
    _run_loop(serve(settings, app=app))


if __name__ == "__main__":
    main()
