"""FGR data building (determinism, resume), validation metrics, stage training with exact resume after a
SIGKILL, and pushing the trained model to the (local test) Hub."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from hub_fixtures import local_hub  # noqa: F401
from training.data.build_fgr import build, read_manifest
from training.data.fgr_dataset import FGRDataset, step_batches
from training.data.gt_maps import GTMapConfig, SSIMDistance, gt_map
from training.data.photos import photo_pool, split_of
from training.data.sr_pool import ArtifactSR, ClassicalSR
from training.metrics import auroc, evaluate_stage

ROOT = Path(__file__).resolve().parent.parent
FAST_POOL = [(ClassicalSR("bicubic"), 1.0), (ArtifactSR(ClassicalSR("lanczos")), 1.0)]
COUNTS = {"train": 6, "val": 2, "test": 3}


def _build(out: Path, counts=COUNTS) -> Path:
    return build(out, counts, hr_size=64, seed=3, feature="ssim", pixel_scale=0.1, feature_scale=0.3,
                 pool=FAST_POOL, progress=False)


@pytest.fixture(scope="module")
def fgr(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("fgr") / "ds")


def test_splits_are_by_photo_and_stable():
    photos = photo_pool()
    assert {p.split for p in photos} == {"train", "val", "test"}
    assert all(split_of(p.id) == p.split for p in photos)
    ids = [p.id for p in photos]
    assert len(ids) == len(set(ids))


def test_build_writes_triplets_and_manifest(fgr):
    meta = json.loads((fgr / "dataset.json").read_text())
    done = read_manifest(fgr)
    assert len(done) == sum(COUNTS.values())
    train_photos = set(meta["photos"]["train"])
    for rec in done.values():
        assert (rec["photo"] in train_photos) == (rec["split"] == "train")
    ds = FGRDataset(fgr, "train")
    item = ds[0]
    assert item["gt"].shape == (3, 64, 64) and item["mgt"].shape == (1, 64, 64)
    # I_syn is I_gt outside the mask and I_sr inside it, up to 8-bit rounding
    m = item["mask"]
    outside = (m < 0.01).expand_as(item["gt"])
    assert torch.allclose(item["syn"][outside], item["gt"][outside], atol=1 / 255 + 1e-6)
    assert float(item["mgt"][m == 0].max()) < 1e-4  # 16-bit rounding of a sub-1/255 mask edge
    crop = ds[(0, 123)]
    assert crop["gt"].shape == (3, 64, 64)


def test_build_resumes_to_identical_files(fgr, tmp_path):
    other = tmp_path / "ds"
    _build(other, {"train": 3})
    lines = (other / "manifest.jsonl").read_text().splitlines()
    (other / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # a crash mid-line
    _build(other, COUNTS)
    assert len(read_manifest(other)) == sum(COUNTS.values())
    for name in ("train/000002_syn.png", "test/000001_mgt.png", "val/000000_sr.png"):
        assert (other / name).read_bytes() == (fgr / name).read_bytes(), name
    with pytest.raises(ValueError, match="seed"):
        build(other, COUNTS, hr_size=64, seed=4, feature="ssim", pool=FAST_POOL, progress=False)


def test_gt_map_has_a_fixed_scale_not_min_max():
    rng = np.random.default_rng(0)
    gt = rng.random((32, 32, 3)).astype(np.float32)
    faint = np.clip(gt + 0.01, 0, 1)
    strong = np.clip(gt + 0.3, 0, 1)
    cfg = GTMapConfig(pixel_scale=0.1, feature_scale=0.3)
    f, s = gt_map(faint, gt, None, SSIMDistance(), cfg), gt_map(strong, gt, None, SSIMDistance(), cfg)
    assert f.max() < 0.2 and s.mean() > 0.5  # a faint difference stays faint


def test_auroc_known_values():
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.random(4000), rng.random(4000)) - 0.5) < 0.03


def test_step_batches_depend_only_on_the_step():
    a = step_batches(100, 4, seed=1)
    first = [next(a) for _ in range(5)]
    b = step_batches(100, 4, seed=1, start_step=3)
    assert next(b) == first[3]


def _argv(fgr: Path, out: Path, stage: int, steps: int, init: str | None = None, extra: list[str] = ()) -> list[str]:
    argv = ["--data", str(fgr), "--stage", str(stage), "--output_dir", str(out), "--max_steps", str(steps),
            "--batch_size", "2", "--crop", "48", "--checkpointing_steps", "2", "--validation_steps", "100",
            "--report_to", "none", "--backbone", "tiny", "--model_config",
            json.dumps({k: v for k, v in TINY_CONFIG.items() if k != "backbone"}), *extra]
    if init:
        argv += ["--init", init]
    return argv


def _train(fgr: Path, out: Path, stage: int, steps: int, init: str | None = None, extra: list[str] = ()) -> dict:
    from training import train_reward

    return train_reward.main(_argv(fgr, out, stage, steps, init, extra))


def test_stage_training_keeps_earlier_stages_and_resumes_exactly_after_a_sigkill(fgr, tmp_path):
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    _train(fgr, tmp_path / "s0", 0, 3)
    s0 = FinPercepRM.from_pretrained(tmp_path / "s0" / "model").eval()
    res = _train(fgr, tmp_path / "s1", 1, 4, init=str(tmp_path / "s0" / "model"))
    assert res["validation"] and 0.0 <= res["validation"][-1]["pdm_auroc"] <= 1.0
    s1 = FinPercepRM.from_pretrained(tmp_path / "s1" / "model").eval()
    assert s1.stage == 1
    x = torch.rand(1, 3, 48, 48)
    torch.testing.assert_close(s1(x, stage=0).score, s0(x, stage=0).score)  # stage 0 untouched
    assert not torch.allclose(s1(x, stage=1).score, s0(x, stage=1).score)  # stage 1 trained

    # exact resume: a real training process SIGKILLed in the middle of step 3 (checkpoint-2 written,
    # step 3 half done), then resumed to step 4, ends with the weights of the uninterrupted run
    argv = _argv(fgr, tmp_path / "r", 1, 4, init=str(tmp_path / "s0" / "model"),
                 extra=["--resume_from_checkpoint", "latest"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "reward_kill_after.py"), "3", *argv,
                           "--num_threads", str(torch.get_num_threads())],  # the threads of this process
                          env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()] == ["checkpoint-2"]
    assert not (tmp_path / "r" / "model").exists() and not (tmp_path / "r" / "result.json").exists()
    res = _train(fgr, tmp_path / "r", 1, 4, init=str(tmp_path / "s0" / "model"),
                 extra=["--resume_from_checkpoint", "latest"])
    assert res["steps"] == 4
    r = FinPercepRM.from_pretrained(tmp_path / "r" / "model").eval()
    for (n, a), (_, b) in zip(s1.state_dict().items(), r.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_stage0_dense_supervision_trains_decoder_but_stage0_stays_global(fgr, tmp_path):
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    _train(fgr, tmp_path / "plain", 0, 2)
    _train(fgr, tmp_path / "dense", 0, 2, extra=["--stage0_dense_weight", "1.0"])
    plain = FinPercepRM.from_pretrained(tmp_path / "plain" / "model").state_dict()
    dense = FinPercepRM.from_pretrained(tmp_path / "dense" / "model").state_dict()
    dec = [k for k in plain if k.startswith("decoder.")]
    assert dec and all(not torch.equal(plain[k], dense[k]) for k in dec if k.endswith("weight"))
    m = FinPercepRM.from_pretrained(tmp_path / "dense" / "model", stage=0)
    assert float(m(torch.rand(1, 3, 48, 48)).pdm.max()) == 0.0


def test_frozen_levels_and_statistics_leave_the_shallow_encoder_and_every_batchnorm_as_they_were(fgr, tmp_path):
    """--freeze_levels 2 --freeze_bn (the fast stage 0 of BENCHMARKS.md section 6): the stem and the first
    two levels keep their weights, every BatchNorm its statistics, while the deeper encoder trains. Without
    the flags all of them move (so the comparison can fail)."""
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    lite = ["--backbone", "efficientnet_lite0", "--no_pretrained_backbone", "--stage0_dense_weight", "1.0",
            "--model_config", json.dumps({"decoder_channels": 8, "head_hidden": 16, "min_size": 16}), "--seed", "3"]
    _train(fgr, tmp_path / "init", 0, 0, extra=lite)  # the common starting point: 0 steps
    init = FinPercepRM.from_pretrained(tmp_path / "init" / "model").state_dict()
    enc = FinPercepRM.from_pretrained(tmp_path / "init" / "model").encoder
    shallow = {f"encoder.{n}" for m in enc.level_modules(2) for n, _ in m.named_parameters(prefix=_name(enc, m))}
    for flags, frozen in (([], False), (["--freeze_levels", "2", "--freeze_bn"], True)):
        out = tmp_path / ("frozen" if frozen else "plain")
        _train(fgr, out, 0, 2, extra=[*lite, *flags])
        after = FinPercepRM.from_pretrained(out / "model").state_dict()
        moved = {k for k in init if not torch.equal(init[k], after[k])}
        stats = {k for k in init if k.startswith("encoder.") and k.endswith(("running_mean", "running_var"))}
        deep = {k for k in init if k.startswith("encoder._blocks.15.") and k.endswith("weight")}
        assert deep and deep <= moved, "the deeper encoder did not train"
        assert shallow and (not shallow & moved) == frozen, sorted(shallow & moved)[:3]
        assert (not stats & moved) == frozen, sorted(stats & moved)[:3]
    with pytest.raises(ValueError, match="levels 1..5"):
        _train(fgr, tmp_path / "bad", 0, 1, extra=[*lite, "--freeze_levels", "6"])


def _name(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """The dotted name of ``module`` inside ``root``."""
    return next(n for n, m in root.named_modules() if m is module)


def test_a_joint_run_trains_the_encoder_and_every_stage_up_to_its_own_and_nothing_else(fgr, tmp_path):
    from diffusers_ext.models.finpercep_rm import FinPercepRM
    from training.train_reward import build_model, model_card, param_groups, parse_args

    _train(fgr, tmp_path / "s0", 0, 2)
    _train(fgr, tmp_path / "s1", 1, 2, init=str(tmp_path / "s0" / "model"))
    s1 = str(tmp_path / "s1" / "model")
    _train(fgr, tmp_path / "joint", 1, 2, init=s1, extra=["--joint"])
    before = FinPercepRM.from_pretrained(s1).state_dict()
    after = FinPercepRM.from_pretrained(tmp_path / "joint" / "model").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for part in ("encoder.", "score_heads.0.", "score_heads.1.", "decoder.0."):
        assert any(k.startswith(part) for k in changed), f"the joint run left {part} untouched"
    assert not any(k.startswith(("decoder.1.", "score_heads.2.")) for k in changed), "it trained a later stage"
    # the encoder learns at --encoder_lr_scale times the learning rate, the heads at the learning rate
    args = parse_args(_argv(fgr, tmp_path / "x", 1, 1, init=s1, extra=["--joint", "--encoder_lr_scale", "0.25",
                                                                       "--learning_rate", "0.01"]))
    model = build_model(args)
    heads, enc = param_groups(model, args)
    assert enc["lr"] == pytest.approx(0.0025) and "lr" not in heads
    assert {id(p) for p in enc["params"]} == {id(p) for p in model.encoder.parameters()}
    # the model card says how the checkpoint was trained
    result = json.loads((tmp_path / "joint" / "result.json").read_text())
    for mode, words in (("all", "trained together last (`--joint`)"), ("maps", "moved by the map losses only"),
                        ("robust", "moved by the map losses and the robustness terms")):
        a = parse_args(_argv(fgr, tmp_path / "joint", 1, 2, init=s1, extra=["--joint", "--joint_encoder", mode]))
        assert words in str(model_card(a, "user/rm-joint", result))
    # by default a joint run fine-tunes trained heads at stage 0's rate, not a new head's 1e-3
    assert parse_args(_argv(fgr, tmp_path / "x", 1, 1, init=s1, extra=["--joint"])).learning_rate == pytest.approx(3e-4)
    assert parse_args(_argv(fgr, tmp_path / "x", 1, 1, init=s1)).learning_rate == pytest.approx(1e-3)
    with pytest.raises(SystemExit):
        parse_args(_argv(fgr, tmp_path / "x", 0, 1, extra=["--joint"]))  # stage 0 has nothing to join


@pytest.mark.parametrize("joint_encoder", ["all", "maps", "robust"])
def test_a_joint_run_can_keep_the_scores_gradient_out_of_the_encoder(fgr, tmp_path, joint_encoder):
    """``--joint_encoder maps``: the score terms reach the heads but not the encoder; the map terms
    still train it. ``all``: both do. ``robust``: the consistency term reaches the encoder, the
    ranking does not."""
    from training.data.fgr_dataset import collate
    from training.train_reward import build_model, joint_loss, parse_args, robustness_inputs

    _train(fgr, tmp_path / "s0", 0, 1)
    _train(fgr, tmp_path / "s1", 1, 1, init=str(tmp_path / "s0" / "model"))
    args = parse_args(_argv(fgr, tmp_path / "x", 1, 1, init=str(tmp_path / "s1" / "model"),
                            extra=["--joint", "--joint_encoder", joint_encoder, "--lambda_consistency", "0.1"]))
    model = build_model(args)
    model.encoder.eval()
    ds = FGRDataset(fgr, "train", crop=48)
    batch = collate([ds[i] for i in range(2)])
    batch.update(robustness_inputs(model, batch, args, step=0))
    terms = joint_loss(model, batch, args)
    enc = [p for p in model.encoder.parameters() if p.requires_grad]

    def grad_norm(term: str, params: list) -> float:
        grads = torch.autograd.grad(terms[term], params, retain_graph=True, allow_unused=True)
        return sum(float(g.abs().sum()) for g in grads if g is not None)

    heads = [p for p in model.score_heads.parameters() if p.requires_grad]
    assert float(terms["rank"].detach()) > 0 and grad_norm("rank", heads) > 0  # the score terms train the heads
    assert grad_norm("loss_s1", enc) > 0  # the maps always reach the encoder
    assert (grad_norm("rank", enc) > 0) == (joint_encoder == "all")
    assert float(terms["consistency"].detach()) > 0
    assert (grad_norm("consistency", enc) > 0) == (joint_encoder in ("all", "robust"))


def test_evaluate_stage_separates_a_model_that_knows_the_answer(fgr):
    """An oracle that reads M_gt must get AUROC 1 and a constant map 0.5: the metric measures."""
    ds = FGRDataset(fgr, "test")

    class Oracle(torch.nn.Module):
        def forward(self, x, stage=None):
            from types import SimpleNamespace

            n = x.shape[0] // 3
            target = torch.stack([ds[i]["mgt"] for i in range(n)])
            pdm = torch.cat([torch.zeros_like(target), target, target])
            score = -pdm.flatten(1).mean(1) + torch.tensor([0.0] * n + [0.0] * n + [-1.0] * n)
            return SimpleNamespace(score=score, pdm=pdm)

    figures = evaluate_stage(Oracle(), ds, stage=1, batch_size=len(ds))
    assert figures["pdm_auroc"] == 1.0 and figures["map_l1"] == 0.0


def test_push_to_hub_creates_the_repo_first_and_uploads_the_model_with_a_card(fgr, tmp_path, local_hub,
                                                                             monkeypatch):
    from huggingface_hub import ModelCard

    from diffusers_ext.models.finpercep_rm import FinPercepRM
    from training import train_reward

    _train(fgr, tmp_path / "s0", 0, 1)
    res = _train(fgr, tmp_path / "s1", 1, 2, init=str(tmp_path / "s0" / "model"),
                 extra=["--push_to_hub", "--hub_model_id", "user/rm-stage1"])
    assert "user/rm-stage1" in res["pushed"]
    assert local_hub.list_files("user/rm-stage1") == sorted(
        [".gitattributes", "README.md", "config.json", "diffusion_pytorch_model.safetensors"])
    routes = [r.route for r in local_hub.requests]
    assert routes.index("create_repo") < routes.index("commit")
    card = ModelCard(local_hub.read_file("user/rm-stage1", "README.md").decode())
    assert card.data.library_name == "diffusers" and "reward-model" in card.data.tags
    assert "stage=1" in card.text and "| pdm_auroc |" in card.text and "hf_" not in card.text
    pulled = FinPercepRM.from_pretrained("user/rm-stage1").eval()
    local = FinPercepRM.from_pretrained(tmp_path / "s1" / "model").eval()
    x = torch.rand(1, 3, 48, 48)
    torch.testing.assert_close(pulled(x).score, local(x).score)

    # a token the Hub refuses fails at create_repo, before the data, the model or any training step
    calls = []
    real_forward = train_reward.StageObjective.forward

    def counting_forward(self, batch):
        calls.append(1)
        return real_forward(self, batch)

    monkeypatch.setattr(train_reward.StageObjective, "forward", counting_forward)
    with pytest.raises(SystemExit, match=r"--push_to_hub: cannot create or open the Hub repo 'user/rm-bad'.*401.*"
                                         r"Nothing was trained.*--hub_token"):
        _train(fgr, tmp_path / "bad", 1, 2, init=str(tmp_path / "s0" / "model"),
               extra=["--push_to_hub", "--hub_model_id", "user/rm-bad", "--hub_token", "hf_wrong"])
    assert calls == [] and not (tmp_path / "bad" / "model").exists() and not local_hub.repo_exists("user/rm-bad")
