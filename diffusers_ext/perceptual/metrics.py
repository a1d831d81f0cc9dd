"""The registry of full-reference metrics and the one entry point that computes them.

Like pyiqa / torchmetrics, each metric states whether lower is better and its range
(:data:`METRICS`). Network models are built once per process and device/dtype
(:func:`get_model`, an ``lru_cache``).

Public API::

    METRICS: dict[str, MetricInfo]            # psnr, ssim, lpips_alex, lpips_vgg, dists
    DEFAULT_METRICS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists")
    get_model(name, device="cpu", dtype=torch.float32) -> LPIPS | DISTS     # cached, frozen
    full_reference_metrics(images, refs, metrics=DEFAULT_METRICS, device=None, dtype=torch.float32,
                           batch_size=8) -> dict[str, np.ndarray]           # float64 [N] per metric
    lpips_maps(images, refs, net="alex", device=None, dtype=torch.float32) -> list[np.ndarray]  # float32 HxW
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..image_io import ImageInputError, ImageLike, to_batch_tensor
from .classic import SSIM_WIN_SIZE, psnr, ssim
from .networks import DISTS, LPIPS, MIN_SIZE

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "MetricInfo",
    "full_reference_metrics",
    "get_model",
    "lpips_maps",
]

Images = Union[ImageLike, Sequence[ImageLike]]
Device = Optional[Union[str, torch.device]]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric's number means."""

    name: str
    lower_better: bool
    value_range: tuple[float, float]
    description: str
    network: bool  # needs a model (min side MIN_SIZE) rather than a formula


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("psnr", False, (0.0, float("inf")), "peak signal-to-noise ratio in dB (data range 1); inf when identical", False),
        MetricInfo("ssim", False, (-1.0, 1.0), "structural similarity, skimage's 7x7 uniform window, mean over RGB", False),
        MetricInfo("lpips_alex", True, (0.0, float("inf")), "LPIPS v0.1 on AlexNet features (Zhang et al. 2018); about 0..1", True),
        MetricInfo("lpips_vgg", True, (0.0, float("inf")), "LPIPS v0.1 on VGG16 features; about 0..1", True),
        MetricInfo("dists", True, (0.0, 1.0), "DISTS structure + texture similarity on VGG16 (Ding et al. 2020)", True),
    )
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m]
    names = tuple(dict.fromkeys(metrics))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown or no metrics {unknown or list(metrics)}; choose from {', '.join(METRICS)}")
    return names


@functools.lru_cache(maxsize=None)
def _cached_model(name: str, device: str, dtype: torch.dtype) -> nn.Module:
    if name == "lpips_alex":
        model: nn.Module = LPIPS("alex")
    elif name == "lpips_vgg":
        model = LPIPS("vgg")
    elif name == "dists":
        model = DISTS()
    else:
        raise ValueError(f"{name!r} is not a network metric; network metrics: "
                         f"{', '.join(m for m, info in METRICS.items() if info.network)}")
    return model.to(device=device, dtype=dtype)


def get_model(name: str, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The frozen model of network metric ``name`` on ``device`` / ``dtype``, built once per process.
    Shared: do not modify it (build ``LPIPS(...)`` / ``DISTS()`` yourself for a private copy)."""
    return _cached_model(name, str(torch.device(device)), dtype)


def _pairs(images: Images, refs: Images, device: Device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    xs = to_batch_tensor(images, device=device)
    ys = to_batch_tensor(refs, device=device)
    if len(xs) != len(ys):
        raise ImageInputError(f"{len(xs)} images but {len(ys)} references; pass one reference per image")
    for i, (x, y) in enumerate(zip(xs, ys)):
        if x.shape != y.shape:
            raise ImageInputError(
                f"images[{i}] is {x.shape[-1]}x{x.shape[-2]} px but its reference is {y.shape[-1]}x{y.shape[-2]} px "
                "(width x height); resize the reference to the image's size first"
            )
        if x.device != y.device:
            y = y.to(x.device)
    return list(zip(xs, ys))


def _batches(pairs: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Concatenate runs of consecutive same-size pairs into batches of at most ``batch_size``."""
    out: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    for x, y in pairs:
        if out and len(out[-1][0]) < batch_size and out[-1][0][0].shape == x.shape:
            out[-1][0].append(x)
            out[-1][1].append(y)
        else:
            out.append(([x], [y]))
    return [(torch.cat(xs), torch.cat(ys)) for xs, ys in out]


def _check_sizes(pairs: list[tuple[torch.Tensor, torch.Tensor]], names: tuple[str, ...]) -> None:
    need = max((MIN_SIZE if METRICS[m].network else SSIM_WIN_SIZE if m == "ssim" else 1) for m in names)
    for i, (x, _) in enumerate(pairs):
        if min(x.shape[-2:]) < need:
            raise ImageInputError(f"images[{i}] is {x.shape[-1]}x{x.shape[-2]} px; the metrics {', '.join(names)} "
                                  f"need at least {need} px per side; upscale or pad it first")


@torch.inference_mode()
def full_reference_metrics(
    images: Images,
    refs: Images,
    metrics: Sequence[str] = DEFAULT_METRICS,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Each metric for each ``(image, reference)`` pair, as float64 ``[N]`` arrays keyed by metric name.

    Args:
        images, refs: anything :func:`diffusers_ext.image_io.to_batch_tensor` accepts (paths, PIL,
            numpy ``HxWxC``, torch ``3xHxW`` / ``Bx3xHxW`` in [0, 1], or lists); one reference per
            image, of the same size (sizes may differ between pairs).
        metrics: names from :data:`METRICS` (or one comma-separated string).
        device: where to compute; ``None`` keeps torch inputs where they are, others on the CPU.
        dtype: the networks' dtype (``torch.bfloat16`` works; PSNR/SSIM always use float64).
        batch_size: consecutive same-size pairs are computed together, this many at a time.

    Lower is better for ``lpips_*`` and ``dists``, higher for ``psnr`` and ``ssim``
    (``METRICS[name].lower_better``).
    """
    names = _check_metrics(metrics)
    pairs = _pairs(images, refs, device)
    _check_sizes(pairs, names)
    results: dict[str, list[np.ndarray]] = {m: [] for m in names}
    formulas: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"psnr": psnr, "ssim": ssim}
    for x, y in _batches(pairs, max(1, int(batch_size))):
        for name in names:
            if name in formulas:
                value = formulas[name](x, y)
            else:
                model = get_model(name, x.device, dtype)
                value = model(x.to(dtype), y.to(dtype))
            results[name].append(value.detach().to(torch.float64).cpu().numpy())
    return {m: np.concatenate(v) for m, v in results.items()}


@torch.inference_mode()
def lpips_maps(
    images: Images,
    refs: Images,
    net: str = "alex",
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> list[np.ndarray]:
    """The spatial LPIPS map of each pair, a float32 ``H x W`` array at the image's size (lower is
    more similar; its mean is close to the scalar LPIPS)."""
    if net not in ("alex", "vgg"):
        raise ValueError(f"lpips_maps: unknown net {net!r}; choose 'alex' or 'vgg'")
    pairs = _pairs(images, refs, device)
    _check_sizes(pairs, (f"lpips_{net}",))
    model = get_model(f"lpips_{net}", pairs[0][0].device, dtype)
    assert isinstance(model, LPIPS)
    return [model.spatial_map(x.to(dtype), y.to(dtype))[0, 0].to(torch.float32).cpu().numpy() for x, y in pairs]
