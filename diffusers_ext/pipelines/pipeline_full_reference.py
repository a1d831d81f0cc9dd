"""Full-reference comparison as a pipeline: the Python twin of ``finpercep compare``.

    pipe = FullReferencePipeline().to("cuda")                 # or FullReferencePipeline(device="cpu")
    out = pipe(images, references, metrics=("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists"),
               output_lpips_maps=True)
    out.lpips_alex        # float64 [N], lower = more similar
    out.lpips_maps        # list of float32 H x W maps (LPIPS AlexNet), or None

Unlike :class:`~diffusers_ext.pipelines.pipeline_finpercep_reward.FinPercepRewardPipeline` it holds no
trainable components, so it is not a ``DiffusionPipeline`` (nothing to ``from_pretrained``): the
networks come from :mod:`diffusers_ext.perceptual` (published weights, cached once per process).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..perceptual import DEFAULT_METRICS, METRICS, full_reference_metrics, lpips_maps
from ..perceptual.metrics import Images

__all__ = ["FullReferenceOutput", "FullReferencePipeline"]


@dataclass
class FullReferenceOutput(BaseOutput):
    """One float64 ``[N]`` array per computed metric (``None`` for metrics not asked for) and, with
    ``output_lpips_maps=True``, the spatial LPIPS maps (float32 ``H x W`` each, at each image's size).
    ``METRICS[name].lower_better`` says the direction: lower for ``lpips_*``/``dists``, higher for
    ``psnr`` (dB, ``inf`` for identical images) and ``ssim``."""

    psnr: Optional[np.ndarray] = None
    ssim: Optional[np.ndarray] = None
    lpips_alex: Optional[np.ndarray] = None
    lpips_vgg: Optional[np.ndarray] = None
    dists: Optional[np.ndarray] = None
    lpips_maps: Optional[list[np.ndarray]] = None


class FullReferencePipeline:
    """PSNR, SSIM, LPIPS (AlexNet / VGG16) and DISTS of images against references."""

    def __init__(self, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype

    def to(self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None) -> "FullReferencePipeline":
        """Where (and in which dtype: float32, or bfloat16 for the networks) to compute; returns self."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    def __call__(
        self,
        images: Images,
        references: Images,
        metrics: Sequence[str] = DEFAULT_METRICS,
        output_lpips_maps: bool = False,
        lpips_map_net: str = "alex",
        batch_size: int = 8,
        return_dict: bool = True,
    ) -> Union[FullReferenceOutput, tuple]:
        """Compare each image with its reference (same size; one reference per image).

        Args:
            images, references: anything :func:`diffusers_ext.image_io.to_batch_tensor` accepts.
            metrics: names from :data:`diffusers_ext.perceptual.METRICS`.
            output_lpips_maps: also return the spatial LPIPS maps (network ``lpips_map_net``).
            return_dict: ``False`` gives the tuple of the non-``None`` fields, in field order.
        """
        values = full_reference_metrics(images, references, metrics=metrics, device=self.device,
                                        dtype=self.dtype, batch_size=batch_size)
        maps = (lpips_maps(images, references, net=lpips_map_net, device=self.device, dtype=self.dtype)
                if output_lpips_maps else None)
        out = FullReferenceOutput(**{m: values[m] for m in METRICS if m in values}, lpips_maps=maps)
        return out if return_dict else out.to_tuple()
