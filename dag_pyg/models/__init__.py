"""Backbones: every one exposes ``features(x)``, ``feat_dim`` and ``classifier``.

``forward(x) == classifier(features(x))``; ``features`` is the embedding that
goes into the Feature Bank and the DNA head.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any

from torch import nn

from dag_pyg.models.cnn13 import CNN13, cnn13
from dag_pyg.models.resnet import ResNet18, resnet18
from dag_pyg.models.small import MLP, SmallCNN, cnn, mlp

BACKBONES = {
    "cnn13": CNN13,
    "resnet18": ResNet18,
    "mlp": MLP,
    "cnn": SmallCNN,
}


def build_backbone(name: str, num_classes: int, in_channels: int = 3,
                   input_size: int = 32, **kwargs: Any) -> nn.Module:
    r"""Builds a backbone by name.

    Args:
        name (str): one of ``"cnn13"``, ``"resnet18"``, ``"mlp"``, ``"cnn"``.
        num_classes (int): number of classes.
        in_channels (int, optional): image channels. (default: ``3``)
        input_size (int, optional): image side. (default: ``32``)
        **kwargs: backbone options, e.g. ``width``/``weight_norm`` for
            ``cnn13``, ``hidden`` for ``mlp``.
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Unknown backbone '{name}'. Choose one of "
                         f"{list(BACKBONES)}.{hint}")
    cls = BACKBONES[name]
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "num_classes", "in_channels",
                                            "input_size")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"Backbone '{name}' got unknown option(s) {unknown}; "
                        f"valid options: {valid}.")
    return cls(num_classes, in_channels=in_channels, input_size=input_size,
               **kwargs)


__all__ = [
    "BACKBONES",
    "build_backbone",
    "CNN13",
    "ResNet18",
    "MLP",
    "SmallCNN",
    "cnn13",
    "resnet18",
    "mlp",
    "cnn",
]
