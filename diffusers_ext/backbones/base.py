"""The one small interface every reward-model encoder implements."""
from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A multi-scale image encoder.

    Subclasses set ``channels`` and ``strides`` (one entry per feature level, shallow to deep,
    strides strictly increasing) and implement :meth:`features`. Inputs are RGB in ``[0, 1]``;
    each backbone normalizes with its own ``mean``/``std`` so callers never have to.
    """

    channels: list[int]
    strides: list[int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def _register_norm(self) -> None:
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: ``Bx3xHxW`` in ``[0, 1]`` -> feature maps ``f_1..f_N`` (shallow to deep)."""
        return self.features(self.normalize(x))

    @property
    def max_stride(self) -> int:
        return self.strides[-1]

    def level_modules(self, n: int) -> list[nn.Module]:
        """The modules that compute feature levels ``1..n`` (the stem included): what a trainer freezes
        to train only the deeper part of the encoder. ``n = 0``: none."""
        raise NotImplementedError(f"backbone {type(self).__name__} cannot name the modules of its first levels; "
                                  "train it without --freeze_levels")

    def load_pretrained(self) -> None:
        """Load the backbone's published weights (ImageNet, CLIP, ...). No-op if it has none."""
        raise NotImplementedError(f"backbone {type(self).__name__} has no pretrained weights")
