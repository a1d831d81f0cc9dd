"""training/finetune_encoder.py: the encoder learns the teacher's whole-image order while the maps stay
the initial model's, the NT penalty is the one-step attack gain, and a crashed run resumes exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from test_whole_image import _build
from training import finetune_encoder
from training.data.build_fgr import build as build_fgr
from training.data.sr_pool import ClassicalSR
from training.whole_image import VersionSets, order_figures


def test_nt_penalty_is_the_first_order_rise_along_the_gradient_sign():
    """For a small step, each stage's rise along sign(grad S_mean) is eps * <grad S_k, sign(grad S_mean)>
    (for the mean itself: eps * ||grad S_mean||_1); NT averages the positive rises."""
    model = make_tiny_model().double()
    x = torch.rand(3, 3, 48, 48, dtype=torch.float64)
    eps = 1e-5
    nt = float(finetune_encoder.nt_penalty(model, x, eps).detach())
    xg = x.clone().requires_grad_(True)
    s = finetune_encoder.all_stage_outputs(model, xg)[0]
    (g,) = torch.autograd.grad(s.mean(1).sum(), xg, retain_graph=True)
    rises = torch.stack([eps * (torch.autograd.grad(s[:, k].sum(), xg, retain_graph=True)[0] * g.sign()).flatten(1).sum(1)
                         for k in range(s.shape[1])], 1)
    assert nt == pytest.approx(float(rises.clamp_min(0).mean()), rel=0.03)  # measured: 0.9 % (ReLU kinks)
    assert float(rises.mean(1).min()) > 0  # the mean score rises for every image: the step is an attack


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    vers = _build(root / "versions", {"train": 6, "val": 3})
    fgr = build_fgr(root / "fgr", {"train": 6, "val": 4}, hr_size=64, seed=3, feature="ssim", pixel_scale=0.1,
                    feature_scale=0.3, pool=[(ClassicalSR("bicubic"), 1.0)], progress=False)
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    torch.manual_seed(1)
    model = FinPercepRM(decoder_channels=8, head_hidden=16, min_size=32, native_size=64).eval()
    model.encoder.load_pretrained()
    model.save_pretrained(root / "init")
    return root, vers, fgr


def _argv(root, vers, fgr, out, steps, *extra):
    return ["--init", str(root / "init"), "--versions", str(vers), "--fgr", str(fgr), "--output_dir", str(out),
            "--teacher", "lpips_vgg", "--val_teacher", "lpips_vgg", "--steps", str(steps), "--batch_versions", "2",
            "--batch_triplets", "2", "--validation_steps", "1000", "--fgr_val_items", "4", "--val_sets", "3",
            "--learning_rate", "3e-3", "--encoder_lr", "3e-4", *extra]


def _agree(model, sets):
    with torch.no_grad():
        s = [model(torch.from_numpy(sets.images(i)).permute(0, 3, 1, 2).float() / 255).raw_score.numpy()
             for i in range(len(sets))]
    return order_figures(np.stack(s), np.stack([sets.distances(i) for i in range(len(sets))]))["pair_agree"]


def test_keep_maps_loss_is_zero_at_the_reference_and_pulls_the_maps_back():
    ref, model = make_tiny_model(seed=0), make_tiny_model(seed=1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        target = ref.decode_all_logits(ref.encode(x))
    assert float(finetune_encoder.keep_maps_loss(target, target)) == pytest.approx(0.0, abs=1e-6)

    def gap():
        with torch.no_grad():
            return float(sum((torch.sigmoid(a) - torch.sigmoid(b)).abs().mean()
                             for a, b in zip(model.decode_all_logits(model.encode(x)), target)))

    start = gap()
    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    for _ in range(30):
        loss = finetune_encoder.keep_maps_loss(model.decode_all_logits(model.encode(x)), target)
        assert float(loss.detach()) > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() < 0.5 * start


def test_the_encoder_learns_the_teacher_order(data, tmp_path):
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    root, vers, fgr = data
    finetune_encoder.main(_argv(root, vers, fgr, tmp_path / "a", 40))
    init = FinPercepRM.from_pretrained(root / "init")
    tuned = FinPercepRM.from_pretrained(tmp_path / "a" / "model")
    assert tuned.calibrated
    card = (tmp_path / "a" / "model" / "README.md").read_text()
    assert "finetune_encoder" in card and "s5/pair_agree" in card
    sets = VersionSets(vers, "train", {"lpips_vgg": 1.0})
    before, after = _agree(init, sets), _agree(tuned, sets)
    assert after > before + 0.1  # measured: 0.63 -> 0.79-0.84 (float order of the threads)
    assert any(not torch.equal(a, b) for a, b in zip(init.encoder.parameters(), tuned.encoder.parameters()))


def test_a_crashed_run_resumes_to_the_same_model(data, tmp_path, monkeypatch):
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    root, vers, fgr = data
    finetune_encoder.main(_argv(root, vers, fgr, tmp_path / "whole", 6, "--checkpointing_steps", "3"))
    step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_at_5(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        finetune_encoder.main(_argv(root, vers, fgr, tmp_path / "crash", 6, "--checkpointing_steps", "3"))
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    assert not (tmp_path / "crash" / "model").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        finetune_encoder.main(_argv(root, vers, fgr, tmp_path / "crash", 6, "--checkpointing_steps", "3"))
    with pytest.raises(ValueError, match="--steps 6"):
        finetune_encoder.main(_argv(root, vers, fgr, tmp_path / "crash", 8, "--resume"))
    finetune_encoder.main(_argv(root, vers, fgr, tmp_path / "crash", 6, "--checkpointing_steps", "3", "--resume"))
    a = FinPercepRM.from_pretrained(tmp_path / "whole" / "model").state_dict()
    b = FinPercepRM.from_pretrained(tmp_path / "crash" / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
