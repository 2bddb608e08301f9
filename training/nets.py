"""Network definitions: an MLP for tabular rows, a small CNN for images, the export wrapper."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from .config import CNNConfig, MLPConfig


def _activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
    }[name]()


def _init_weights(module: nn.Module, init: str, activation: str) -> None:
    nonlinearity: Literal["leaky_relu", "relu"] = (
        "leaky_relu" if activation == "leaky_relu" else "relu"
    )
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Linear -> [norm] -> activation -> [dropout] per hidden layer, then a linear head."""

    def __init__(self, n_features: int, n_classes: int, cfg: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in cfg.hidden:
            layers.append(nn.Linear(width, h))
            if cfg.norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif cfg.norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(_activation(cfg.activation))
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)
        _init_weights(self, cfg.init, cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """Conv blocks (conv -> [batch norm] -> activation, pooled, dropout), then a dense head."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int, cfg: CNNConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        h, w = image_shape
        in_ch = 1
        for out_ch in cfg.channels:
            for _ in range(cfg.convs_per_block):
                blocks.append(
                    nn.Conv2d(
                        in_ch,
                        out_ch,
                        cfg.kernel_size,
                        padding=cfg.kernel_size // 2,
                        bias=not cfg.batch_norm,
                    )
                )
                if cfg.batch_norm:
                    blocks.append(nn.BatchNorm2d(out_ch))
                blocks.append(_activation(cfg.activation))
                in_ch = out_ch
            # Pool only while there is something left to pool.
            if cfg.pool != "none" and h >= 2 and w >= 2:
                blocks.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            if cfg.dropout > 0:
                blocks.append(nn.Dropout(cfg.dropout))
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        width = in_ch * h * w
        if cfg.head_hidden:
            head += [nn.Linear(width, cfg.head_hidden), _activation(cfg.activation)]
            if cfg.head_dropout > 0:
                head.append(nn.Dropout(cfg.head_dropout))
            width = cfg.head_hidden
        head.append(nn.Linear(width, n_classes))
        self.head = nn.Sequential(*head)
        _init_weights(self, cfg.init, cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_net(
    cfg: MLPConfig | CNNConfig,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int] | None,
) -> nn.Module:
    """The network for a config; CNNs need an image shape."""
    if isinstance(cfg, CNNConfig):
        if image_shape is None:
            raise ValueError("model.type cnn needs data.image_shape (height, width)")
        return CNN(image_shape, n_classes, cfg)
    return MLP(n_features, n_classes, cfg)


class Exported(nn.Module):
    """What goes into ONNX: raw input -> scaling -> network -> softmax probabilities."""

    def __init__(
        self,
        net: nn.Module,
        mean: np.ndarray,
        scale: np.ndarray,
        image_shape: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.net = net
        shape = (1, *image_shape) if image_shape is not None else (len(mean),)
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)).reshape(shape))
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)).reshape(shape))

    mean: torch.Tensor
    scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((x - self.mean) / self.scale), dim=-1)
