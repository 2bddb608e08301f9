"""TensorBoard event logs of a fit: losses, accuracies and learning rate per epoch, the graph."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config
from .fit import TrainedModel, as_input

# Tag per value that fit.fit hands to its on_epoch hook (after each epoch; the learning rate
# is the one the next epoch uses, so a schedule shows as it steps).
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "lr": "learning_rate",
}


class TensorBoardLog:
    """A SummaryWriter under `<log_dir>/<name>/<UTC timestamp>`; use `on_epoch` as fit's hook."""

    def __init__(self, log_dir: Path, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        self.path = Path(log_dir) / name / stamp
        self.writer = SummaryWriter(log_dir=str(self.path))

    def on_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """Write one scalar per known value at step `epoch`."""
        for key, value in values.items():
            self.writer.add_scalar(TAGS.get(key, key), value, epoch)

    def add_graph(self, net: nn.Module, example: torch.Tensor) -> None:
        """Trace the network once on an example batch and store the graph."""
        net.eval()
        with torch.no_grad():
            self.writer.add_graph(net, example)

    def add_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def finish(self, cfg: Config, model: TrainedModel, x_rows: np.ndarray) -> None:
        """After the fit: the graph (on a few scaled rows), the hyperparameters, then close."""
        example = as_input(model.scaler.transform(x_rows), model.image_shape)
        self.add_graph(model.net, example)
        self.add_text("config", "```\n" + json.dumps(describe(cfg), indent=2) + "\n```")
        self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_log(cfg: Config) -> TensorBoardLog | None:
    """The run's TensorBoard log when the config enables it, else None."""
    if not cfg.tensorboard.enabled:
        return None
    return TensorBoardLog(cfg.tensorboard.log_dir, cfg.name)


def describe(cfg: Config) -> dict[str, Any]:
    """The hyperparameters worth showing next to the curves (TensorBoard text tab)."""
    return {
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json", exclude={"progress", "threads"}),
    }
