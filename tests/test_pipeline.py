"""FinPercepRewardPipeline: inputs, outputs, tiling, save/load, Hub round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_model
from fixture_models import defect_photo, make_detector_model
from diffusers_ext import FinPercepRewardPipeline
from diffusers_ext.image_io import ImageInputError
from diffusers_ext.tiling import owned_cells, ramp, tile_starts
from hub_fixtures import local_hub  # noqa: F401


@pytest.fixture
def pipe():
    return FinPercepRewardPipeline(reward_model=make_tiny_model())


def test_accepts_pil_numpy_torch_and_paths(pipe, photo, tmp_path):
    u8 = (photo * 255).round().astype(np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(u8).save(path)
    pil = Image.fromarray(u8)
    t = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    out = pipe([pil, u8, t, str(path)], tile_size=0)
    assert out.scores.dtype == np.float32 and out.scores.shape == (4,)
    assert out.pdms.shape == (4, 256, 256) and out.pdms.dtype == np.float32
    assert np.allclose(out.scores, out.scores[0], atol=1e-5)  # same pixels, same score
    assert len(out.overlays) == 4 and out.overlays[0].size == (256, 256)
    batch = pipe(torch.stack([t, t.flip(-1)]), tile_size=0, output_overlays=False)
    assert batch.pdms.shape == (2, 256, 256) and batch.overlays is None


def test_mixed_sizes_give_a_list_of_maps_at_each_size(pipe, photo):
    out = pipe([photo, photo[:100, :180], Image.fromarray((photo * 255).astype(np.uint8)).convert("L")], tile_size=0)
    assert [m.shape for m in out.pdms] == [(256, 256), (100, 180), (256, 256)]


def test_rgba_and_16bit_inputs(pipe, photo):
    rgba = np.concatenate([(photo * 255).astype(np.uint8), np.full((256, 256, 1), 255, np.uint8)], axis=2)
    u16 = (photo * 65535).astype(np.uint16)
    out = pipe([Image.fromarray(rgba, "RGBA"), u16], tile_size=0)
    assert abs(float(out.scores[0] - out.scores[1])) < 1e-3


def test_tiled_map_matches_untiled():
    """With a model whose map really has structure (tests/fixture_models.py: a planted noise patch
    that straddles the seams of the 128 px tiles maps to ~0.9, the photo around it to ~0.005), the
    tiled map must put every tile's piece back where it belongs and blend the seams. The tiny random
    model's map is constant to 4e-4, which any tiling bug leaves unchanged."""
    pipe = FinPercepRewardPipeline(reward_model=make_detector_model())
    img, mask, _ = defect_photo(256)
    full = pipe(img, tile_size=0, output_overlays=False)
    tiled = pipe(img, tile_size=128, tile_overlap=48, output_overlays=False)
    for out in (full, tiled):  # the map is not constant: the patch stands out in both
        assert out.pdms[0][mask > 0].mean() > 0.85 and out.pdms[0][mask == 0].mean() < 0.02
    diff = np.abs(full.pdms - tiled.pdms)
    assert diff.mean() < 1e-3 and diff.max() < 0.08  # measured: 8e-5 and 0.036 (tile borders, blended)
    assert abs(float(full.scores[0] - tiled.scores[0])) < 1e-3  # measured: 2e-5


def test_tiling_geometry():
    assert tile_starts(1000, 256, 64) == [0, 192, 384, 576, 744]
    assert tile_starts(200, 256, 64) == [0]
    w = ramp(128, 32, first=False, last=False)
    assert w[0] < 0.05 and w[64] == 1.0 and w[-1] < 0.05
    assert ramp(128, 32, first=True, last=True).min() == 1.0
    starts = tile_starts(1000, 256, 64)
    owned = [owned_cells(starts, i, 256, 32, 8) for i in range(len(starts))]
    centres = sorted(s + 32 * c + 16 for s, sl in zip(starts, owned) for c in range(sl.start, sl.stop))
    assert len(centres) == len(set(centres))  # no cell counted twice
    assert centres[0] == 16 and centres[-1] > 1000 - 32


def test_stage_zero_has_no_map(pipe, photo):
    out = pipe(photo, stage=0, tile_size=0)
    assert out.stage == 0 and float(out.pdms.max()) == 0.0


def test_bad_inputs_are_refused_clearly(pipe, tmp_path):
    with pytest.raises(ImageInputError, match="below the reward model.s minimum"):
        pipe(np.zeros((4, 4, 3), np.float32))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageInputError, match="bad.png"):
        pipe(str(bad))
    with pytest.raises(ValueError, match="tile_overlap"):
        pipe(np.zeros((64, 64, 3), np.float32), tile_size=64, tile_overlap=64)


def test_save_and_load_pipeline_and_model_folders(pipe, photo, tmp_path):
    ref = pipe(photo, tile_size=0).scores
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "model_index.json").is_file()
    p2 = FinPercepRewardPipeline.from_pretrained(tmp_path / "pipe")
    np.testing.assert_allclose(p2(photo, tile_size=0).scores, ref, rtol=1e-5)
    pipe.reward_model.save_pretrained(tmp_path / "rm")
    p3 = FinPercepRewardPipeline.from_pretrained(tmp_path / "rm", stage=2)
    assert p3.reward_model.stage == 2
    with pytest.raises(FileNotFoundError, match="neither"):
        FinPercepRewardPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="Hub id"):
        FinPercepRewardPipeline.from_pretrained(tmp_path / "missing" / "deeper")


def test_hub_round_trip_reproduces_outputs(pipe, photo, local_hub):
    ref = pipe(photo, tile_size=0)
    pipe.push_to_hub("finpercep/tiny-rm")
    loaded = FinPercepRewardPipeline.from_pretrained("finpercep/tiny-rm")
    out = loaded(photo, tile_size=0)
    np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-5)
    np.testing.assert_allclose(out.pdms, ref.pdms, atol=1e-6)
    pipe.reward_model.push_to_hub("finpercep/tiny-rm-model")
    m = FinPercepRewardPipeline.from_pretrained("finpercep/tiny-rm-model", stage=1)
    assert m.reward_model.stage == 1


def test_a_large_photo_goes_through_tiles(pipe):
    rng = np.random.default_rng(0)
    big = np.repeat(np.repeat(rng.random((96, 128, 3), dtype=np.float32), 16, 0), 16, 1)  # 1536 x 2048
    out = pipe(big, tile_size=512, tile_overlap=64, output_overlays=False)
    assert out.pdms.shape == (1, 1536, 2048) and np.isfinite(out.scores).all()
    assert 0.0 <= out.pdms.min() <= out.pdms.max() <= 1.0
