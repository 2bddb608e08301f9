"""The obvious server: plain FastAPI + ONNX Runtime, one session.run per request, no batching."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class PredictRequest(BaseModel):
    """Rows of raw features, each flat (an image row is its pixels in order)."""

    model: str
    instances: list[list[float]]


class _Model:
    """One loaded model: its session, input name and shape, and class labels."""

    def __init__(self, folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        model_file = manifest.get("model_file", "model.onnx")
        self.session = ort.InferenceSession(
            str(folder / model_file), options, providers=["CPUExecutionProvider"]
        )
        self.input_name: str = manifest["input"]["name"]
        self.row_shape: list[int] = [int(d) for d in manifest["input"]["shape"][1:]]
        self.classes: list[str] = [str(c) for c in manifest["output"]["classes"]]


def load_models(repository: Path) -> dict[str, _Model]:
    """Load the highest version of every model under `repository`."""
    models: dict[str, _Model] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [v for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()]
        if versions:
            models[model_dir.name] = _Model(max(versions, key=lambda v: int(v.name)))
    return models


def create_app(repository: Path) -> FastAPI:
    """Build the app with every model in `repository` loaded."""
    app = FastAPI()
    models = load_models(repository)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        model = models.get(request.model)
        if model is None:
            raise HTTPException(status_code=404, detail=f"unknown model {request.model}")
        x = np.asarray(request.instances, dtype=np.float32).reshape([-1, *model.row_shape])
        probabilities = model.session.run(None, {model.input_name: x})[0]
        predictions = []
        for row in probabilities.tolist():
            index = int(np.argmax(row))
            predictions.append(
                {
                    "label": model.classes[index],
                    "index": index,
                    "probabilities": dict(zip(model.classes, row, strict=True)),
                }
            )
        return {"model": request.model, "predictions": predictions}

    return app


def main() -> None:
    """Serve the obvious app with uvicorn (one process, access log off)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    args = parser.parse_args()
    app = create_app(args.model_repository)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
