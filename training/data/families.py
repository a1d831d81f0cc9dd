"""Defect families of the FGR data engine (reward model v3) and the held-out protocol.

Every defect the data engine can put into an image belongs to one *family*: an operator of
:mod:`.artifacts` / :mod:`.defects`, a real SR network of the pool, or a kind of garbage image.
Families are grouped by what they do to the image:

- ``adds``: adds high-frequency energy (noise, halos, patterns, fake texture),
- ``removes``: removes detail (blur, smoothing, resampling, compression, quantization),
- ``colour``: colour and tone changes,
- ``structure``: seams and geometric errors,
- ``sr_net``: the output of a real SR network on a degraded input,
- ``sr_net_extra``: the same for the opt-in networks of :data:`.sr_pool.EXTRA_NETWORKS` (SPAN,
  SRMD with drawn noise-level / kernel settings); a group of their own so that the ``sr_net``
  group's figures stay comparable with runs made before they existed,
- ``garbage``: images that are no photo at all (noise, flat, stripes, blocks).

:data:`PROTOCOL_HOLDOUT` is the fixed set of families the *protocol model* never sees in training
(three that add high frequencies, three that remove them, one colour, one structure family and one
real GAN SR network): ``python -m training.evaluate_generalization`` reports them apart, as the
honest estimate of how the shipped model (trained on every family) does on defects it has not seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import defects  # noqa: F401  (registers the v3 operators in ARTIFACTS)
from .artifacts import ARTIFACTS
from .sr_pool import EXTRA_NETWORKS


@dataclass(frozen=True)
class Family:
    name: str
    group: str  # adds | removes | colour | structure | sr_net | sr_net_extra | garbage


_GROUPS = {
    "adds": ("color_noise", "luma_grain", "impulse_noise", "periodic_pattern", "checkerboard", "oversharpen_halo",
             "hallucinated_texture"),
    "removes": ("blur_detail_loss", "motion_smear", "waxy_denoise", "downup_resample", "posterize_banding",
                "painterly_smooth", "blocking_ringing", "jaggies_aliasing"),
    "colour": ("color_shift", "tone_shift", "chroma_bleed"),
    "structure": ("tiling_seams", "local_warp"),
    "sr_net": ("realesrgan-x4plus", "realesr-animevideov3-x4", "realesrgan-x4plus-anime", "waifu2x-photo-x2"),
    "sr_net_extra": EXTRA_NETWORKS,
    "garbage": ("garbage",),
}
FAMILIES: dict[str, Family] = {n: Family(n, g) for g, names in _GROUPS.items() for n in names}
#: The groups whose families are real SR networks (run through :class:`.sr_pool.NetworkSR`).
SR_NET_GROUPS = ("sr_net", "sr_net_extra")
OPERATOR_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.group in ("adds", "removes", "colour", "structure"))
assert all(n in ARTIFACTS for n in OPERATOR_FAMILIES), "every operator family needs a registered operator"

PROTOCOL_HOLDOUT = ("color_noise", "checkerboard", "oversharpen_halo",          # adds
                    "motion_smear", "waxy_denoise", "posterize_banding",        # removes
                    "chroma_bleed", "tiling_seams",                             # colour, structure
                    "realesrgan-x4plus-anime")                                  # a real GAN SR network


def parse_families(text: str) -> tuple[str, ...]:
    """A ``--exclude_families`` value: comma-separated names, or ``protocol`` for :data:`PROTOCOL_HOLDOUT`."""
    names = [f.strip() for f in text.split(",") if f.strip()]
    return tuple(PROTOCOL_HOLDOUT) if names == ["protocol"] else tuple(names)


def group_of(name: str) -> str:
    return FAMILIES[name].group


def families_of(record: dict) -> set[str]:
    """The families an FGR manifest record contains (its SR network and every operator)."""
    out = set(record.get("families") or ())
    if not out:  # v1/v2 records: SR method and one optional artifact
        net = str(record.get("sr_method", "")).split("+")[0]
        if net in FAMILIES:
            out.add(net)
        if record.get("artifact"):
            out.add(record["artifact"])
    return out


# ------------------------------------------------------------------ garbage images
GARBAGE_KINDS = ("uniform_noise", "gaussian_noise", "flat", "stripes", "blocks", "gradient", "checker")


def garbage_image(h: int, w: int, rng: np.random.Generator, kind: Optional[str] = None) -> tuple[np.ndarray, str]:
    """A float32 ``HxWx3`` image that is no photograph, and its kind."""
    kind = kind or GARBAGE_KINDS[int(rng.integers(len(GARBAGE_KINDS)))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "uniform_noise":
        img = rng.random((h, w, 3), dtype=np.float32)
        if rng.random() < 0.5:
            img = img.mean(2, keepdims=True).repeat(3, 2)
    elif kind == "gaussian_noise":
        img = rng.uniform(0.2, 0.8, 3).astype(np.float32) + rng.uniform(0.05, 0.3) * rng.standard_normal((h, w, 3), dtype=np.float32)
    elif kind == "flat":
        img = np.broadcast_to(rng.random(3).astype(np.float32), (h, w, 3)).copy()
    elif kind == "stripes":
        period = int(rng.integers(2, 12))
        axis = xx if rng.random() < 0.5 else yy
        on = ((axis // max(1, period // 2)) % 2)[..., None]
        a, b = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
        img = a * on + b * (1 - on)
    elif kind == "blocks":
        bs = int(rng.integers(4, 33))
        grid = rng.random((h // bs + 1, w // bs + 1, 3)).astype(np.float32)
        img = grid[(yy // bs).astype(int), (xx // bs).astype(int)]
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(theta) + yy * np.sin(theta))
        t = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
        a, b = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
        img = a * (1 - t) + b * t
    elif kind == "checker":
        bs = int(rng.integers(1, 9))
        on = (((xx // bs) + (yy // bs)) % 2)[..., None]
        img = on * rng.random(3).astype(np.float32) + (1 - on) * rng.random(3).astype(np.float32)
    else:
        raise ValueError(f"unknown garbage kind {kind!r}; choose one of {GARBAGE_KINDS}")
    return np.clip(img, 0, 1).astype(np.float32), kind


def operator(name: str) -> Callable[[np.ndarray, np.random.Generator, float], np.ndarray]:
    if name not in ARTIFACTS:
        raise ValueError(f"unknown defect operator {name!r}; available: {sorted(ARTIFACTS)}")
    return ARTIFACTS[name]
