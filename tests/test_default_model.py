"""The bundled default reward model: it loads with no download, every stage works, its score is
calibrated (clean photos near 0.9 at the default tiling, garbage below a blurred photo), and it does
its job on real photos: it finds local defects pasted into a test-split photo and scores the damaged
image lower. v6 (score heads refitted on whole-image versions ordered by LPIPS, reading multilevel
texture statistics) fixed v5's x4plus blind spot: its upscale of the astronaut scores below the clean
photo (v6: 0.68 < 0.87; v5: 0.88 > 0.85)."""
from __future__ import annotations

import numpy as np
import pytest

from diffusers_ext import FinPercepRewardPipeline
from diffusers_ext.hub import DEFAULT_MODEL_DIR
from training.probe_defects import paste_and_score

EXAMPLES = DEFAULT_MODEL_DIR.parent.parent / "examples"


@pytest.fixture(scope="module")
def pipe():
    p = FinPercepRewardPipeline.from_pretrained()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def clean(example_clean) -> np.ndarray:
    return example_clean


def test_bundled_model_is_small_safetensors_with_all_stages(pipe):
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors", "README.md"}
    assert files["diffusion_pytorch_model.safetensors"] <= 30 * 2**20
    rm = pipe.reward_model
    assert rm.config.backbone == "efficientnet_lite0" and rm.num_stages == 5 and rm.stage == 5


@pytest.mark.parametrize("kind", ["blur", "jpeg"])
def test_finds_a_pasted_defect_and_scores_it_lower(pipe, clean, kind):
    pdm_clean, pdm, scores, inside = paste_and_score(pipe, clean, kind)
    assert pdm[inside].mean() > 2.0 * pdm[~inside].mean(), (kind, pdm[inside].mean(), pdm[~inside].mean())
    assert pdm[inside].mean() > pdm_clean[inside].mean() + 0.1
    assert scores[1] < scores[0], (kind, scores)


def test_the_locally_damaged_example_scores_below_its_clean_source(pipe):
    """examples/chelsea_local_painterly.png, the cat with one painterly-smoothed patch
    (training/make_examples.py), against its clean source (bundled v6: 0.952 < 0.960; v6 run C: 0.93 > 0.92,
    then a strict xfail; v5: 0.68 < 0.73; v4: 0.82 < 0.84)."""
    from training.data.photos import photo_pool
    from training.make_examples import painterly_source

    cat = painterly_source({p.id: p for p in photo_pool("test")})
    cat = (np.clip(cat, 0, 1) * 255).round().astype(np.uint8)  # as the example was saved, before the patch
    s = pipe([cat, str(EXAMPLES / "chelsea_local_painterly.png")], output_overlays=False).scores
    assert s[1] < s[0], s


def test_the_x4plus_upscale_example_scores_below_its_clean_source(pipe, clean):
    s = pipe([clean, str(EXAMPLES / "astronaut_realesrgan_x4.png")], output_overlays=False).scores
    assert s[1] < s[0], s


def test_score_is_calibrated_and_garbage_scores_below_a_blurred_photo(pipe, clean):
    """At the default tiling a clean test photo reads as clean (about 0.9), its Gaussian-blurred copy
    far lower, and all three images that are no photograph (noise, flat grey, 1-px stripes) lower
    still and flagged almost everywhere by the map (bundled v5: 0.85, 0.23, <= 3e-5; maps 0.97-0.99)."""
    import cv2

    rm = pipe.reward_model
    assert rm.calibrated and len(rm.config.score_calibration) == rm.num_stages + 1
    rng = np.random.default_rng(0)
    stripes = np.zeros_like(clean)
    stripes[:, ::2] = 1.0
    images = [clean, cv2.GaussianBlur(clean, (0, 0), 2.0), rng.random(clean.shape).astype(np.float32),
              np.full_like(clean, 0.5), stripes]
    out = pipe(images, output_overlays=False)
    s = out.scores
    assert ((0 < s) & (s < 1)).all()
    assert s[0] > 0.8 and s[1] < 0.5, s
    assert (s[2:] < s[1]).all(), s
    maps = out.pdms.reshape(len(images), -1).mean(1)
    assert (maps[2:] > 0.8).all() and maps[0] < 0.15, maps


def test_every_stage_loads_and_stage_zero_has_no_map(clean):
    for k in range(6):
        p = FinPercepRewardPipeline.from_pretrained(stage=k)
        p.set_progress_bar_config(disable=True)
        out = p(clean, output_overlays=False)
        assert out.stage == k and np.isfinite(out.scores).all()
        assert (out.pdms.max() == 0.0) == (k == 0)


@pytest.fixture(scope="module")
def tiled_and_full(pipe, clean):
    return (pipe(clean, output_overlays=False),  # the default: 192 px tiles, 32 px overlap
            pipe(clean, tile_size=0, output_overlays=False))


def test_tiled_map_matches_untiled_on_the_real_model(tiled_and_full):
    """Measured on the bundled v5 model: mean |tiled - untiled| 0.004 (the map's own mean is
    0.043), 99th percentile 0.045 (v4: 0.006, 0.096); well below the map effects the other tests rely on (a pasted
    blur or JPEG patch raises the map by 0.44-0.53 inside it)."""
    tiled, full = tiled_and_full
    diff = np.abs(full.pdms - tiled.pdms)
    assert diff.mean() < 0.025 and np.quantile(diff, 0.99) < 0.2


def test_tiled_score_matches_untiled_on_the_real_model_closer_than_the_effects_we_test(pipe, tiled_and_full):
    """Tiles (the default, the model's 192 px training framing) and one pass over the whole 384 px
    astronaut must agree much more closely than the x4plus-vs-clean gap the best-of-N template relies
    on, in both framings. Measured: the bundled v6 (F5) 0.871 tiled / 0.829 whole, x4plus 0.679 / 0.652
    (F4 0.875 / 0.837, 0.675 / 0.631; v6 run C 0.869 / 0.860; v5 0.85 / 0.44, then a strict xfail)."""
    tiled, full = tiled_and_full
    x4 = str(EXAMPLES / "astronaut_realesrgan_x4.png")
    x4_tiled = float(pipe(x4, output_overlays=False).scores[0])
    x4_full = float(pipe(x4, tile_size=0, output_overlays=False).scores[0])
    gap = min(float(tiled.scores[0]) - x4_tiled, float(full.scores[0]) - x4_full)
    assert gap > 0.1, (tiled.scores, full.scores, x4_tiled, x4_full)
    assert abs(float(full.scores[0] - tiled.scores[0])) < min(0.05, 0.25 * gap)
