"""A tiny convolutional encoder: for tests and for quick experiments (no pretrained weights)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone


class TinyConvBackbone(Backbone):
    """``len(widths)`` levels, each a stride-2 conv followed by a 3x3 conv, SiLU activations."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (8, 16, 24, 32)) -> None:
        super().__init__()
        self._register_norm()
        layers, c_in = [], 3
        for c in widths:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.SiLU(),
                    nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
                )
            )
            c_in = c
        self.levels = nn.ModuleList(layers)
        self.channels = list(widths)
        self.strides = [2 ** (i + 1) for i in range(len(widths))]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats

    def level_modules(self, n: int) -> list[nn.Module]:
        if not 0 <= n <= len(self.levels):
            raise ValueError(f"the encoder has levels 1..{len(self.levels)}, not {n}")
        return list(self.levels[:n])

    def load_pretrained(self) -> None:
        """The tiny backbone is trained from scratch: nothing to load."""
