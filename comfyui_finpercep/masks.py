"""Perceptual Degradation Map -> inpainting mask ("fix where bad"). Pure torch, no ComfyUI.

    mask = feather(dilate(pdm >= threshold, dilate_px), feather_px)

* threshold: PDM values at or above it count as defective (the map is in [0, 1], higher = worse).
* min_area: connected defective regions smaller than this many pixels are dropped (specks).
* dilate: grows the regions by ``dilate_px`` (a disk), so the inpainting reaches past the defect.
* feather: a soft ramp of ``feather_px`` *outside* the grown region (the region itself stays 1), so
  the re-generated pixels blend into the untouched ones without eating into the defect.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _disk(radius: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius + 0.5).float()


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``[B, H, W]`` {0, 1} masks by a disk of ``radius`` px."""
    if radius <= 0:
        return mask
    x = mask[:, None].float()
    if radius <= 2:
        k = _disk(radius, mask.device)[None, None]
        y = F.conv2d(F.pad(x, (radius,) * 4), k) > 0.5
        return y[:, 0].to(mask.dtype)
    # Large radii: repeated small disks (cheaper than one big kernel; close to a disk).
    steps, rest = divmod(radius, 2)
    y = x
    for _ in range(steps):
        y = (F.conv2d(F.pad(y, (2,) * 4), _disk(2, mask.device)[None, None]) > 0.5).float()
    if rest:
        y = (F.conv2d(F.pad(y, (1,) * 4), _disk(1, mask.device)[None, None]) > 0.5).float()
    return y[:, 0].to(mask.dtype)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft edge of ``radius`` px outside ``[B, H, W]`` masks; pixels inside stay exactly 1."""
    if radius <= 0:
        return mask
    hard = mask[:, None].float()
    # Grow by the radius, then blur: the blur's half-way point sits ~radius/2 outside the region and
    # fades to 0 about `radius` px out; max() keeps the region itself at 1.
    grown = dilate(mask, max(1, radius // 2))[:, None].float()
    soft = _gaussian_blur(grown, max(radius / 3.0, 0.5))
    return torch.maximum(hard, soft).clamp(0, 1)[:, 0]


def remove_small(mask: torch.Tensor, min_area: int) -> torch.Tensor:
    """Drop connected regions (8-connectivity) smaller than ``min_area`` px from ``[B, H, W]`` masks."""
    if min_area <= 1:
        return mask
    import numpy as np

    from diffusers_ext.pdm import label_components

    out = mask.clone()
    for b in range(mask.shape[0]):
        m = (mask[b] > 0.5).cpu().numpy()
        labels, n = label_components(m)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        small = sizes < min_area
        small[0] = False
        keep = ~small[labels]
        out[b] = torch.from_numpy((m & keep).astype(np.float32)).to(mask.device, mask.dtype)
    return out


def pdm_to_mask(pdm: torch.Tensor, threshold: float = 0.5, dilate_px: int = 8, feather_px: int = 8,
                min_area: int = 0, invert: bool = False) -> torch.Tensor:
    """``[B, H, W]`` (or ``[H, W]``) PDM in [0, 1] -> inpainting mask ``[B, H, W]`` float32 in [0, 1]
    (1 = re-generate). ``invert`` gives the complement (keep-mask)."""
    if pdm.ndim == 2:
        pdm = pdm[None]
    if pdm.ndim != 3:
        raise ValueError(f"pdm must be [B, H, W] or [H, W], got shape {tuple(pdm.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    hard = (pdm.float() >= threshold).float()
    hard = remove_small(hard, int(min_area))
    hard = dilate(hard, int(dilate_px))
    out = feather(hard, int(feather_px))
    return 1.0 - out if invert else out
