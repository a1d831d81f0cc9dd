"""PSNR and SSIM in torch, per image, for ``B x C x H x W`` tensors in [0, 1] (data range 1).

:func:`ssim` is scikit-image's ``structural_similarity(x, y, channel_axis=-1, data_range=1)`` with its
defaults (``gaussian_weights=False``: a 7x7 uniform window, ``K1=0.01``, ``K2=0.03``, sample
covariance ``N/(N-1)``), averaged over the ``H-6 x W-6`` positions where the window lies inside the
image (skimage filters with reflection, then crops those 3 border pixels: the same set of values)
and then over channels. Both are computed in float64 (on the input's device) and returned as
float64 ``[B]`` tensors; they are differentiable w.r.t. the inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SSIM_WIN_SIZE", "psnr", "ssim"]

SSIM_WIN_SIZE = 7


def _pair(x: torch.Tensor, y: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{who}: {name} must be a BxCxHxW tensor in [0, 1], got {shape}")
    if x.shape != y.shape:
        raise ValueError(f"{who}: the two inputs differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}; "
                         "resize one to the other's size first")
    return x.to(torch.float64), y.to(torch.float64)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / MSE)`` per image (``[B]``, dB, float64); ``inf`` for identical images."""
    x, y = _pair(x, y, "psnr")
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image (``[B]``, float64, in [-1, 1]; 1 for identical images), as skimage's
    ``structural_similarity(..., channel_axis, data_range=1)`` with a 7x7 uniform window."""
    x, y = _pair(x, y, "ssim")
    if min(x.shape[-2:]) < SSIM_WIN_SIZE:
        raise ValueError(f"ssim: {x.shape[-1]}x{x.shape[-2]} px is smaller than the {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} "
                         "window; use images of at least 7 px per side")
    b, c = x.shape[:2]
    x = x.reshape(b * c, 1, *x.shape[2:])
    y = y.reshape(b * c, 1, *y.shape[2:])
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    n = SSIM_WIN_SIZE ** 2
    cov_norm = n / (n - 1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WIN_SIZE, stride=1)

    ux, uy = mean(x), mean(y)
    uxx, uyy, uxy = mean(x * x), mean(y * y), mean(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(b, c).mean(dim=1)
