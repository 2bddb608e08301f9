"""A real uvicorn process serving only the feedback routes (for the kill -9 test).

Usage: python feedback_server.py PORT DB_PATH
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).parent)]

from feedback_support import KEY, Metrics, manifest_of  # noqa: E402

from service.dataplane.feedback import FeedbackService  # noqa: E402
from service.monitoring.ids import PredictionIds  # noqa: E402
from service.http.routes.feedback import router  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.monitoring.store import FeedbackStore  # noqa: E402


def main() -> None:
    port, db_path = int(sys.argv[1]), sys.argv[2]
    app = FastAPI()
    app.state.settings = Settings(feedback_max_items=1000)
    app.state.api_keys = []
    app.include_router(router)
    app.state.feedback = FeedbackService(
        FeedbackStore(db_path),
        PredictionIds(KEY),
        manifest_of,
        Metrics(CollectorRegistry()),
        versions_of=lambda model: [1] if model == "bc" else [],
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
