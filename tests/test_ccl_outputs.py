"""What a training run of training/ccl_lora.py leaves for its user: the judge columns only with an
independent judge (and the model card saying so), a model card that names the curriculum stages the
run reached, every file mode 0644, the merged upscaler of a feed-forward run that spandrel (ComfyUI's
Load Upscale Model) reads, and a monitor plot with axis values, units, a legend and a minimum span."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from safetensors import safe_open

from training import ccl_lora
from training.ccl import monitor as ccl_monitor

SCHEDULE = {"stages": [{"rm_stage": 0, "steps": 5}, {"rm_stage": 2, "lambda_pdm": 0.5, "steps": 5}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short run (2 steps of a 10-step schedule: only stage 0 is reached), no --judge_model."""
    root = tmp_path_factory.mktemp("ccl_outputs")
    make_tiny_model(seed=0).save_pretrained(root / "rm")
    (root / "sched.json").write_text(json.dumps(SCHEDULE))
    out = root / "run"
    res = ccl_lora.main(["--reward_model", str(root / "rm"), "--ccl_config", str(root / "sched.json"),
                         "--max_train_steps", "2", "--photo_sources", "skimage", "--hr_size", "64",
                         "--train_batch_size", "1", "--validation_images", "2", "--validation_steps", "1",
                         "--checkpointing_steps", "1", "--learning_rate", "1e-2", "--refl_loss", "neg",
                         "--grad_scale", "1", "--report_to", "none", "--brisque", "off", "--output_dir", str(out)])
    return root, out, res


def test_without_an_independent_judge_the_columns_are_absent_and_the_card_says_so(run):
    root, out, res = run
    mon = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    assert mon and not any(k.startswith("judge") for m in mon for k in m), mon[0]
    card = (out / "lora" / "README.md").read_text()
    assert "No independent judge" in card and "judge_score" not in card.split("## Final metrics")[1].split("\n\n")[1]
    args = ccl_lora.parse_args(["--reward_model", str(root / "rm"), "--judge_model", str(root / "rm")])
    assert ccl_lora.independent_judge(args) is None  # the reward model itself is no judge
    args = ccl_lora.parse_args(["--reward_model", str(root / "rm"), "--judge_model", str(root / "other")])
    assert ccl_lora.independent_judge(args) == str(root / "other")
    assert ccl_lora.independent_judge(ccl_lora.parse_args([])) is None


def test_the_card_states_the_curriculum_stages_reached(run):
    _, out, res = run
    card = (out / "lora" / "README.md").read_text()
    assert "**The run reached 1 of 2 curriculum stages**" in card and "never trained" in card, card
    assert "| 1 | RM_2 | 0 | not reached |" in card and "| 0 | RM_0 | 2 | 1-2 |" in card
    assert res["stages_reached"] == [0]
    assert json.loads((out / "lora" / "ccl_stages_reached.json").read_text())[1]["steps"] == 0


def test_every_output_file_is_0644(run):
    _, out, _ = run
    lora = out / "lora"
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in lora.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(os.stat(lora).st_mode) == 0o755
    for name in ("monitor.png", "monitor.jsonl", "train_log.jsonl", "result.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o644, name
    ckpt = next((out / "checkpoints").glob("checkpoint-*/policy_lora.safetensors"))
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == 0o644


def test_feedforward_run_writes_the_merged_upscaler_for_comfyui(run):
    from diffusers_ext.policies import FeedForwardSRPolicy
    from diffusers_ext.srnets.export import load_upscaler, spandrel_architecture

    _, out, res = run
    file = out / "lora" / "realesr-animevideov3-x4-finpercep.safetensors"
    assert res["upscaler"] == str(file) and file.is_file()
    with safe_open(str(file), "pt") as f:
        assert spandrel_architecture(set(f.keys())) == "Compact"
        assert f.metadata()["finpercep_srnet"] == "realesr-animevideov3-x4"
    base = FeedForwardSRPolicy.from_pretrained("realesr-animevideov3-x4").eval()
    policy = FeedForwardSRPolicy.from_pretrained("realesr-animevideov3-x4").load_lora(out / "lora").eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got, untuned = policy(x)["images"], load_upscaler(file)(x).clamp(0, 1), base(x)["images"]
    # the merge equals the LoRA to float rounding (seen up to ~2e-6 here, depending on the run's
    # threads), while the LoRA itself moved the output by far more
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert (ref - untuned).abs().max() > 1e-3, float((ref - untuned).abs().max())
    card = (out / "lora" / "README.md").read_text()
    assert "models/upscale_models/" in card and file.name in card and "Load Upscale Model" in card


def test_monitor_plot_keeps_a_minimum_span_and_labels_its_axes(tmp_path):
    lo, hi = ccl_monitor.y_range("ssim", [0.7100, 0.7101])
    assert hi - lo >= 0.02  # a change of 0.0001 stays a sliver of the panel
    lo, hi = ccl_monitor.y_range("reward", [0.0, 3.0])
    assert lo < 0.0 and 3.0 < hi < 3.5  # a real change keeps its own range (plus a margin)
    assert [round(t, 6) for t in ccl_monitor.nice_ticks(0.0, 1.0, 4)] == [0.0, 0.5, 1.0]
    assert [round(t, 6) for t in ccl_monitor.nice_ticks(0.70, 0.72, 4)] == [0.7, 0.705, 0.71, 0.715, 0.72]
    assert "dB" in ccl_monitor.LABELS["psnr"] and "lower = better" in ccl_monitor.LABELS["brisque"]
    hist = [{"step": s, "ssim": 0.71 + 1e-5 * s, "psnr": 24.0} for s in range(0, 11, 2)]
    path = ccl_monitor.plot_curves(hist, tmp_path / "m.png", [{"step": 5}], train_history=[{"step": 1, "reward": 0.1}])
    from PIL import Image

    import numpy as np

    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # the ssim curve (the second panel: palette colour 1) lies in a thin horizontal band, not across the panel
    ys = np.nonzero((np.abs(img - np.array([214, 39, 40])).sum(-1) < 60))[0]
    assert len(ys) and ys.max() - ys.min() < 20


def test_the_perceptual_columns_are_zero_on_hr_and_grow_with_the_damage():
    from skimage import data

    from diffusers_ext.perceptual import LPIPS
    from diffusers_ext.rewards import RewardConfig

    hr = torch.from_numpy(data.astronaut()[:128, :128] / 255.0).permute(2, 0, 1)[None].float()
    blur = [torch.nn.functional.avg_pool2d(hr, k, 1, k // 2, count_include_pad=False) for k in (3, 5, 9)]
    faint = (hr + torch.randn(hr.shape, generator=torch.Generator().manual_seed(0)) / 255).clamp(0, 1)
    mon = ccl_monitor.Monitor(hr, hr, make_tiny_model(seed=0).eval(), RewardConfig(), 0, brisque="off", lpips_vgg=True)
    recs = [mon.image_metrics(sr, RewardConfig(), 0) for sr in (hr, faint, *blur)]
    assert "percep" not in recs[0]  # the home-made Lite2 distance is no longer computed
    for key in ("lpips_alex", "lpips_vgg", "dists"):
        values = [r[key] for r in recs]
        assert abs(values[0]) < 1e-6, key
        assert values[1] < values[2] < values[3] < values[4], (key, values)  # invisible noise < light < heavy blur
        assert "lower = better" in ccl_monitor.LABELS[key] and key in ccl_monitor.MIN_SPAN
    assert recs[4]["lpips_alex"] == pytest.approx(float(LPIPS("alex")(blur[2], hr)[0]), abs=1e-6)
    # LPIPS-VGG (another VGG16 pass) only when asked for or when the hack flag reads it (its default)
    assert "lpips_vgg" not in ccl_monitor.Monitor(hr, hr, make_tiny_model(seed=0), RewardConfig(), 0, brisque="off",
                                                  hack_rule=None).image_metrics(hr, RewardConfig(), 0)
    assert "lpips_vgg" in ccl_monitor.Monitor(hr, hr, make_tiny_model(seed=0), RewardConfig(), 0,
                                              brisque="off").image_metrics(hr, RewardConfig(), 0)
    # the monitor.jsonl of older runs (with percep) still plots, with its label
    assert "lower = better" in ccl_monitor.LABELS["percep"]
