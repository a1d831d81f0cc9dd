"""The request layer (diffusers_ext.request): one parsing of options, one validation, one resolution,
used by the pipeline, the CLI, the nodes and the viewer; and the model holds no runtime state in its config."""
from __future__ import annotations

import json

import numpy as np
import pytest

from diffusers_ext.cli import main
from diffusers_ext.models.finpercep_rm import FinPercepRM
from diffusers_ext.pipelines.pipeline_finpercep_reward import FinPercepRewardPipeline
from diffusers_ext.request import (DEFAULT, RequestError, ScoreRequest, default_tiling, parse_option, resolve,
                                   score_record)
from diffusers_ext.tiling import Tiling

from conftest import make_tiny_model


@pytest.fixture
def pipe(tiny_model):
    return FinPercepRewardPipeline(reward_model=tiny_model.eval())


@pytest.fixture
def model_dir(tmp_path):
    make_tiny_model().save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


@pytest.mark.parametrize("value", [None, "", "default", " Default ", -1, "-1", "model default"])
def test_every_spelling_of_default_parses_to_none(value):
    assert parse_option(value, "tile_size") is None


def test_numbers_parse_and_bad_values_name_the_option():
    assert parse_option("512", "tile_size") == 512 and parse_option(0, "tile_size") == 0 and parse_option(3.0, "stage") == 3
    with pytest.raises(RequestError, match="tile_size 'abc' is not a number") as e:
        parse_option("abc", "tile_size")
    assert e.value.option == "tile_size"
    with pytest.raises(RequestError, match="not a whole number"):
        parse_option(2.5, "stage")


def test_resolve_fills_defaults_from_the_native_size_and_rounds_tiles(tiny_model):
    assert tiny_model.config.native_size == 128
    plan = resolve(tiny_model)
    assert plan.stage == tiny_model.stage == 4 and plan.tiling == Tiling(128, 21) == default_tiling(tiny_model)
    stride = tiny_model.encoder.max_stride
    plan = resolve(tiny_model, ScoreRequest.parse(1, 100, DEFAULT))
    assert plan.stage == 1 and plan.tiling.size == 100 // stride * stride and plan.tiling.overlap == plan.tiling.size // 6
    assert resolve(tiny_model, ScoreRequest(tile_size=0)).tiling == Tiling(0, 0)
    assert resolve(tiny_model, ScoreRequest(tile_size=0)).tiling.count(4000, 4000) == 1
    assert Tiling(128, 32).count(300, 200) == 3 * 2


@pytest.mark.parametrize("request_, option, words", [
    (ScoreRequest(stage=9), "stage", "stage must be in 0..4"),
    (ScoreRequest(tile_size=8), "tile_size", "below this model's smallest tile"),
    (ScoreRequest(tile_size=64, tile_overlap=64), "tile_overlap", "tile_overlap must be in [0, tile_size)"),
])
def test_invalid_requests_raise_one_error_naming_the_option(tiny_model, request_, option, words):
    with pytest.raises(RequestError) as e:
        resolve(tiny_model, request_)
    assert e.value.option == option and words in str(e.value)
    assert isinstance(e.value, ValueError)  # callers that catch ValueError keep working


def test_set_stage_is_runtime_state_and_the_saved_default_stays(tiny_model, tmp_path):
    tiny_model.set_stage(1)
    assert tiny_model.stage == 1 and tiny_model.config.stage == 4
    tiny_model.save_pretrained(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["stage"] == 4
    assert FinPercepRM.from_pretrained(tmp_path / "rm").stage == 4
    assert FinPercepRM.from_pretrained(tmp_path / "rm", stage=2).stage == 2
    tiny_model.set_default_stage(2)
    tiny_model.save_pretrained(tmp_path / "rm2")
    assert FinPercepRM.from_pretrained(tmp_path / "rm2").stage == 2


def test_older_configs_with_tile_options_load_without_warnings(tiny_model, tmp_path, caplog):
    tiny_model.save_pretrained(tmp_path / "rm")
    cfg_path = tmp_path / "rm" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["native_size"]
    cfg.update(tile_size=96, tile_overlap=16)  # the pre-request-layer keys
    cfg_path.write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        old = FinPercepRM.from_pretrained(tmp_path / "rm")
    assert old.config.native_size == 96 and "tile_size" not in old.config
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]


def test_the_pipeline_runs_tiles_through_the_models_forward(pipe, photo):
    """One forward call per batch, tiled or not: the offload hooks diffusers puts on forward apply."""
    calls = []
    handle = pipe.reward_model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs.get("tiling")),
                                                         with_kwargs=True)
    try:
        out = pipe([photo, photo], tile_size=64, tile_overlap=16, output_overlays=False)
    finally:
        handle.remove()
    assert len(calls) == 1 and calls[0].size == 64
    assert out.tiles == [Tiling(64, 16).count(*photo.shape[:2])] * 2 and out.tiles[0] > 1


def test_score_record_has_the_documented_fields(photo):
    pdm = np.zeros((30, 40), np.float32)
    pdm[:3] = 1.0
    rec = score_record("a.png", np.float32(0.8), 1.2, pdm, 3, 4, 2)
    assert rec["width"] == 40 and rec["height"] == 30 and rec["tiles"] == 2 and rec["stage"] == 3
    assert rec["frac_above"] == pytest.approx(0.1) and rec["pdm_max"] == 1.0
    assert all(isinstance(v, (int, float, str)) for v in rec.values())  # JSON-ready plain types


def test_cli_rejects_a_bad_option_once_naming_it(model_dir, photo, tmp_path, capsys):
    from PIL import Image

    a = tmp_path / "a.png"
    Image.fromarray((photo * 255).astype(np.uint8)).save(a)
    assert main(["score", str(a), "--model", str(model_dir), "--stage", "9"]) == 2
    err = capsys.readouterr().err
    assert "--stage" in err and "stage must be in 0..4" in err
    assert main(["score", str(a), "--model", str(model_dir), "--tile", "64", "--tile-overlap", "99"]) == 2
    assert "--tile-overlap" in capsys.readouterr().err
    assert main(["score", str(a), "--model", str(model_dir), "--stage", "2", "--tile", "64"]) == 0
    rec = json.loads(capsys.readouterr().out)
    ref = FinPercepRewardPipeline.from_pretrained(model_dir)(str(a), stage=2, tile_size=64, output_overlays=False)
    assert rec["stage"] == 2 and rec["tiles"] > 1 and rec["score"] == pytest.approx(float(ref.scores[0]))
