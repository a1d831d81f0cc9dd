"""The shipped independent judge of the CCL experiment (training/judge/): it loads with no download, it
is independent of the bundled reward model (another backbone, its own weights and data), it does a
judge's job on a photo never trained on (the clean photo above its blurred and JPEG-damaged copies, and
the damage found where it was pasted), and the experiment rebuilds it with its recipe only when the
shipped folder is missing."""
from __future__ import annotations

from pathlib import Path

import pytest

from diffusers_ext import FinPercepRewardPipeline
from training.ccl import experiment
from training.probe_defects import paste_and_score


@pytest.fixture(scope="module")
def judge():
    p = FinPercepRewardPipeline.from_pretrained(str(experiment.DEFAULT_JUDGE))
    p.set_progress_bar_config(disable=True)
    return p


def test_the_judge_is_shipped_small_and_independent_of_the_bundled_model(judge):
    import training

    # shipped inside the training package (runs/ is not kept: the judge was lost with it three times)
    assert experiment.DEFAULT_JUDGE == Path(training.__file__).parent / "judge"
    files = {p.name: p.stat().st_size for p in experiment.DEFAULT_JUDGE.iterdir()}
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors", "README.md"}
    assert files["diffusion_pytorch_model.safetensors"] <= 30 * 2**20
    rm = judge.reward_model
    bundled = FinPercepRewardPipeline.from_pretrained().reward_model
    assert rm.config.backbone == "efficientnet_lite1" != bundled.config.backbone
    assert rm.num_stages == bundled.num_stages and rm.stage == rm.num_stages
    # v5's recipe: the heads read the pooled deepest feature, not the teacher-fitted multilevel statistics
    assert rm.config.score_features == "top"


@pytest.mark.parametrize("kind", ["blur", "jpeg"])
def test_the_judge_finds_a_pasted_defect_and_scores_it_lower(judge, example_clean, kind):
    pdm_clean, pdm, scores, inside = paste_and_score(judge, example_clean, kind)
    assert pdm[inside].mean() > pdm_clean[inside].mean() + 0.05, (kind, pdm[inside].mean(), pdm_clean[inside].mean())
    assert scores[1] < scores[0], (kind, scores)


def test_the_judge_scores_a_blurred_photo_below_the_clean_one(judge, example_clean):
    import cv2

    blurred = cv2.GaussianBlur(example_clean, (0, 0), 2.0)
    s = judge([example_clean, blurred], output_overlays=False).scores
    assert s[0] > s[1] + 0.1, s


def test_the_experiment_rebuilds_the_judge_by_its_recipe_only_when_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiment.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    args = experiment.parse_args(["--out", str(tmp_path / "out")])
    experiment.ensure_judge(args)  # shipped: nothing to do
    assert calls == [] and args.judge_model == str(experiment.DEFAULT_JUDGE)
    missing = tmp_path / "judge"
    monkeypatch.setattr(experiment, "DEFAULT_JUDGE", missing)
    experiment.ensure_judge(experiment.parse_args(["--out", str(tmp_path / "out"), "--judge_model", str(missing)]))
    (cmd,) = calls
    assert cmd[1:3] == ["-m", "training.train_default"] and "--no-teacher_heads" in cmd
    assert cmd[cmd.index("--export") + 1] == str(missing)
    assert "--train_arg=--backbone=efficientnet_lite1" in cmd and cmd[cmd.index("--data_seed") + 1] == "1"
    calls.clear()
    experiment.ensure_judge(experiment.parse_args(["--out", str(tmp_path / "out"), "--judge_model", "same"]))
    assert calls == []  # the reward model judges itself: nothing to build

