"""Ground-truth Perceptual Degradation Maps (PAPER.md §2 step 4):

    M_gt = Normalize(α · Diff_pixel + (1 - α) · Diff_feat)

Diff_pixel is the channel-mean absolute difference, lightly smoothed (a defect is a region, not a
pixel); Diff_feat is the cosine distance of a pluggable feature extractor's multi-scale features.
Normalize divides each term by a fixed, dataset-wide scale and clips to [0, 1] (OURS), never by a
per-image min-max, which would make a faint artifact look maximal. The map is then restricted to
the swapped region, where the difference really comes from the SR model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F


class FeatureDistance(Protocol):
    """Per-pixel perceptual distance between two images (float32 HxWx3 in [0,1]) -> HxW >= 0."""

    name: str

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()


def _cosine_map(fa: torch.Tensor, fb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    d = 1.0 - F.cosine_similarity(fa, fb, dim=1, eps=1e-6)[:, None]
    return F.interpolate(d, size=size, mode="bilinear", align_corners=False)


class EfficientNetFeatureDistance:
    """Cosine distance of ImageNet EfficientNet-Lite0 features at strides 2, 4 and 8 (offline default)."""

    name = "efficientnet_lite0"

    def __init__(self, levels: tuple[int, ...] = (0, 1, 2), device: str = "cpu") -> None:
        from diffusers_ext.backbones.efficientnet_lite import EfficientNetLite0Backbone

        self.net = EfficientNetLite0Backbone()
        self.net.load_pretrained()
        self.net.eval().to(device)
        self.levels, self.device = levels, device

    @torch.inference_mode()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        x = torch.cat([_to_tensor(a), _to_tensor(b)]).to(self.device)
        feats = self.net(x)
        size = a.shape[:2]
        maps = [_cosine_map(feats[i][:1], feats[i][1:], size) for i in self.levels]
        return torch.stack(maps).mean(0)[0, 0].cpu().numpy()


class DinoFeatureDistance:
    """Cosine distance of DINO patch features (PAPER.md uses DINOv3), via ``transformers``.

    Needs the weights (``repo_id``) from the Hub or a local folder; the offline default is
    :class:`EfficientNetFeatureDistance`."""

    name = "dino"

    def __init__(self, repo_id: str = "facebook/dinov3-vits16-pretrain-lvd1689m", device: str = "cpu") -> None:
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(repo_id).eval().to(device)
        self.patch = int(getattr(self.model.config, "patch_size", 16))
        self.device = device
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        hp, wp = -(-h // self.patch) * self.patch, -(-w // self.patch) * self.patch
        x = (torch.cat([_to_tensor(a), _to_tensor(b)]) - self.mean) / self.std
        x = F.interpolate(x, size=(hp, wp), mode="bilinear", align_corners=False).to(self.device)
        tokens = self.model(pixel_values=x).last_hidden_state
        n = (hp // self.patch) * (wp // self.patch)
        grid = tokens[:, -n:].transpose(1, 2).reshape(2, -1, hp // self.patch, wp // self.patch)
        return _cosine_map(grid[:1], grid[1:], (h, w))[0, 0].cpu().numpy()


class SSIMDistance:
    """Weight-free structural distance ``(1 - SSIM) / 2`` per pixel (gray, 7x7 Gaussian window)."""

    name = "ssim"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        x, y = _to_tensor(a).mean(1, keepdim=True), _to_tensor(b).mean(1, keepdim=True)
        g = torch.exp(-((torch.arange(7) - 3.0) ** 2) / (2 * 1.5**2))
        k = (g[:, None] * g[None]) / (g.sum() ** 2)
        blur = lambda t: F.conv2d(F.pad(t, [3] * 4, mode="reflect"), k[None, None])  # noqa: E731
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        return ((1 - ssim) / 2).clamp(0, 1)[0, 0].numpy()


FEATURE_DISTANCES = {"efficientnet_lite0": EfficientNetFeatureDistance, "dino": DinoFeatureDistance,
                     "ssim": SSIMDistance}


def pixel_difference(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Channel-mean |a - b|, smoothed by a Gaussian of ``sigma`` px (0 = none)."""
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    if sigma > 0:
        import cv2

        d = cv2.GaussianBlur(d, (0, 0), sigma)
    return d


@dataclass
class GTMapConfig:
    """α and the fixed normalization scales (a difference equal to the scale maps to 1.0)."""

    alpha: float = 0.5
    pixel_scale: float = 0.12
    feature_scale: float = 0.35
    pixel_sigma: float = 1.5


def gt_map(syn: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray], feat: FeatureDistance,
           cfg: GTMapConfig) -> np.ndarray:
    """``M_gt`` of ``syn`` against ``gt``: float32 HxW in [0, 1], zero outside ``mask`` (if given)."""
    pix = pixel_difference(syn, gt, cfg.pixel_sigma) / cfg.pixel_scale
    fd = feat(syn, gt) / cfg.feature_scale
    m = np.clip(cfg.alpha * pix + (1 - cfg.alpha) * fd, 0.0, 1.0)
    if mask is not None:
        m = m * mask
    return m.astype(np.float32)


def raw_differences(syn: np.ndarray, gt: np.ndarray, mask: np.ndarray, feat: FeatureDistance,
                    sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalized pixel and feature differences inside ``mask`` (for calibrating the scales)."""
    inside = mask > 0.5
    return pixel_difference(syn, gt, sigma)[inside], feat(syn, gt)[inside]
