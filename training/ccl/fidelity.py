"""Fidelity terms of the ReFL loss: against HR (``l1``, ``mse``, ``latent_mse``) or, with no HR at all,
LR consistency (``lr``).

LR consistency (``--fidelity lr``): the SR output ``y`` (the decoded image for the diffusion policies)
is degraded back to the LR size by a kernel ``D`` and compared with the LR input ``x`` by L1:
``mean |D(y) - x|``. Only the LR input is needed, so it works on real low-quality photos that have no
HR. It is differentiable, works for any batch size and any scale (``D`` maps to the LR input's exact
size, so x2 and x4 policies alike). The kernels (``--lr_consistency_kernel``):

* ``area``: the mean of each ``s x s`` block of the SR output (``s`` = the scale), i.e. OpenCV's
  ``INTER_AREA`` downscale: exactly how ``--degradation clean`` makes its LR inputs;
* ``bicubic``: antialiased bicubic downscale (the bicubic kernel stretched by the scale, as PIL's and
  MATLAB's ``imresize``): the typical kernel of the SR literature's "bicubic" degradation;
* ``gaussian:SIGMA``: a Gaussian blur of standard deviation SIGMA *HR* pixels (size ``2*ceil(3*SIGMA)+1``,
  reflect padding), then sampling at the LR pixel centres (bilinear, no further filtering): the
  classic ``(y * k_sigma) downarrow_s`` model; e.g. ``gaussian:1.6`` for x4 (0.8 for x2);
* ``auto`` (the default): the known kernel when the data pipeline has one, ``area`` for
  ``--degradation clean``, else ``bicubic``. The Real-ESRGAN second-order degradation (``realesrgan``,
  ``light``, ``mix``) draws random blurs, resizes, noise and JPEG per image and has no single kernel
  to invert, so a typical one stands in; the residual noise / JPEG then stays in the term as a floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

FIDELITY_KINDS = ("none", "l1", "mse", "latent_mse", "lr")
#: Fidelity kinds that compare with the HR image (``lr`` needs only the LR input).
NEEDS_HR = ("l1", "mse", "latent_mse")
KERNEL_HELP = "auto, area, bicubic or gaussian:SIGMA (SIGMA > 0 in HR pixels, e.g. gaussian:1.6)"


@dataclass(frozen=True)
class LRKernel:
    """A degradation ``SR -> LR``: ``kind`` in ``area`` / ``bicubic`` / ``gaussian`` (``sigma`` in HR px)."""

    kind: str
    sigma: float = 0.0

    def __str__(self) -> str:
        return f"gaussian:{self.sigma:g}" if self.kind == "gaussian" else self.kind


def parse_kernel(spec: str, degradation: Optional[str] = None) -> LRKernel:
    """The kernel of ``--lr_consistency_kernel spec``; ``auto`` resolves with ``degradation`` (the
    ``--degradation`` of the data: ``clean`` has a known kernel, ``area``). Raises ``ValueError``
    naming the accepted forms."""
    s = spec.strip().lower()
    if s == "auto":
        return LRKernel("area" if degradation == "clean" else "bicubic")
    if s in ("area", "bicubic"):
        return LRKernel(s)
    if s.startswith("gaussian:"):
        try:
            sigma = float(s.split(":", 1)[1])
        except ValueError:
            sigma = float("nan")
        if math.isfinite(sigma) and sigma > 0:
            return LRKernel("gaussian", sigma)
    raise ValueError(f"--lr_consistency_kernel {spec!r} is not a kernel: use {KERNEL_HELP}")


def gaussian_kernel1d(sigma: float, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normalized 1-D Gaussian of standard deviation ``sigma`` over ``2*ceil(3*sigma)+1`` taps."""
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def degrade_to_lr(sr: torch.Tensor, size: tuple[int, int], kernel: LRKernel) -> torch.Tensor:
    """``sr`` (``BxCxHxW``) degraded by ``kernel`` and resized to ``size`` = (h, w) of the LR input;
    differentiable."""
    if sr.dim() != 4:
        raise ValueError(f"the SR images must be BxCxHxW, got shape {tuple(sr.shape)}")
    h, w = int(size[0]), int(size[1])
    if sr.shape[-2] < h or sr.shape[-1] < w:
        raise ValueError(f"the SR output {tuple(sr.shape[-2:])} is smaller than the LR input {(h, w)}: "
                         "LR consistency needs an upscaling policy")
    if kernel.kind == "area":
        return F.adaptive_avg_pool2d(sr, (h, w))
    if kernel.kind == "bicubic":
        return F.interpolate(sr, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    if kernel.kind == "gaussian":
        k = gaussian_kernel1d(kernel.sigma, sr.device, sr.dtype)
        c, r = sr.shape[1], (len(k) - 1) // 2
        x = F.pad(sr, (r, r, r, r), mode="reflect" if min(sr.shape[-2:]) > r else "replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return F.interpolate(x, size=(h, w), mode="bilinear", antialias=False, align_corners=False)
    raise ValueError(f"unknown LR kernel {kernel.kind!r}: use {KERNEL_HELP}")


def lr_consistency(sr: torch.Tensor, lr: torch.Tensor, kernel: LRKernel) -> torch.Tensor:
    """``mean |D(sr) - lr|``: the L1 distance of the SR output degraded back to the LR size from the LR input."""
    if lr.dim() != 4 or sr.shape[:2] != lr.shape[:2]:
        raise ValueError(f"LR consistency: SR batch {tuple(sr.shape)} and LR batch {tuple(lr.shape)} must be "
                         "BxCxHxW with the same B and C")
    return F.l1_loss(degrade_to_lr(sr.float(), lr.shape[-2:], kernel), lr.float())


def fidelity_loss(kind: str, out: dict[str, Any], policy: Any, hr: Optional[torch.Tensor] = None,
                  lr: Optional[torch.Tensor] = None, kernel: Optional[LRKernel] = None) -> torch.Tensor:
    """The fidelity term ``kind`` of a policy output ``out`` (``images``, and ``latents`` for the
    diffusion policies): ``l1`` / ``mse`` of the images against ``hr``, ``latent_mse`` against the
    encoded ``hr``, ``lr``: :func:`lr_consistency` against the LR input ``lr`` (no HR)."""
    if kind == "lr":
        if lr is None or kernel is None:
            raise ValueError("--fidelity lr needs the LR input and a kernel")
        return lr_consistency(out["images"], lr, kernel)
    if hr is None:
        raise ValueError(f"--fidelity {kind} compares with the HR image, and none was given")
    if kind == "l1":
        return F.l1_loss(out["images"].float(), hr)
    if kind == "mse":
        return F.mse_loss(out["images"].float(), hr)
    if kind == "latent_mse":
        target = policy.encode_target(hr)
        return F.mse_loss(out["latents"].float(), target.float())
    raise ValueError(f"unknown fidelity {kind!r}: use one of {FIDELITY_KINDS[1:]}")
