"""GT-free fidelity (``--fidelity lr``, training/ccl/fidelity.py) and per-term normalization
(``--term_norm``, training/ccl/term_norm.py): the LR-consistency term, its kernels against independent
references (PIL's antialiased bicubic, OpenCV's area resize), gradients into the LoRA of every policy
kind, a training run that provably never reads HR, and the running scales across a SIGKILL + resume."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model
from tiny_sd import save_tiny_sd

from training import ccl_lora
from training.ccl.data import SRPairSampler
from training.ccl.fidelity import LRKernel, degrade_to_lr, fidelity_loss, lr_consistency, parse_kernel
from training.ccl.term_norm import TermScales, batch_stats, normalized_loss

from test_ccl_train import KILL_AFTER, assets, base_args  # noqa: F401  (the tiny reward model fixture)


def smooth_lr(n: int = 2, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Band-limited LR images: a bicubic upscale of 4x4 noise (the bicubic round trip is ~exact on them)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(side, side), mode="bicubic",
                         align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("spec", ["area", "bicubic", "gaussian:0.5"])
def test_bicubic_upscale_of_lr_is_consistent_and_a_perturbation_is_not(scale, spec):
    lr = smooth_lr()
    sr = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    noise = torch.randn(sr.shape, generator=torch.Generator().manual_seed(1))
    vals = [float(lr_consistency(sr + a * noise, lr, parse_kernel(spec))) for a in (0.0, 0.01, 0.03, 0.1)]
    assert vals[0] < 3e-3, vals  # ~0: the SR output is consistent with its LR input
    assert vals == sorted(vals) and vals[-1] > 5 * vals[0], vals  # grows with the perturbation


def test_kernels_match_independent_references():
    """bicubic = PIL's antialiased bicubic resize, area = OpenCV's INTER_AREA (x2 and x4)."""
    import cv2
    from PIL import Image
    from skimage import data

    u8 = data.astronaut()[:256, :256]
    t = torch.from_numpy(u8.astype(np.float32) / 255).permute(2, 0, 1)[None]
    for s in (2, 4):
        size = (256 // s, 256 // s)
        pil = np.asarray(Image.fromarray(u8).resize(size, Image.BICUBIC)).astype(np.float32) / 255
        got = degrade_to_lr(t, size, LRKernel("bicubic"))[0].permute(1, 2, 0).numpy()
        assert np.abs(got - pil).mean() < 2e-3  # PIL rounds to 8 bits
        area = cv2.resize(u8.astype(np.float32) / 255, size, interpolation=cv2.INTER_AREA)
        got = degrade_to_lr(t, size, LRKernel("area"))[0].permute(1, 2, 0).numpy()
        assert np.abs(got - area).max() < 1e-5
    # a Gaussian blurs: the blurred-then-sampled image of a sharp photo is further from its area mean
    far = [float((degrade_to_lr(t, (64, 64), parse_kernel(f"gaussian:{s}")) - F.adaptive_avg_pool2d(t, (64, 64)))
                 .abs().mean()) for s in (1.0, 3.0)]
    assert far[0] < far[1]


def test_kernel_specs_and_errors(capsys):
    assert parse_kernel("auto", "clean") == LRKernel("area")  # the known kernel of --degradation clean
    assert parse_kernel("auto", "mix") == LRKernel("bicubic") == parse_kernel("auto", "realesrgan")
    assert parse_kernel("gaussian:1.6") == LRKernel("gaussian", 1.6) and str(parse_kernel("gaussian:1.6")) == "gaussian:1.6"
    for bad in ("lanczos", "gaussian:", "gaussian:-1", "gaussian:nan"):
        with pytest.raises(ValueError, match="gaussian:SIGMA"):
            parse_kernel(bad)
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--fidelity", "lr", "--lr_consistency_kernel", "box"])
    assert "not a kernel" in capsys.readouterr().err
    with pytest.raises(ValueError, match="upscaling policy"):
        lr_consistency(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16), LRKernel("area"))
    with pytest.raises(ValueError, match="HR image"):
        fidelity_loss("l1", {"images": torch.rand(1, 3, 8, 8)}, None, hr=None)


@pytest.mark.parametrize("kind", ["feedforward", "onestep"])
def test_gradients_flow_into_the_lora(kind, tmp_path):
    from diffusers_ext.policies import FeedForwardSRPolicy, OneStepSDPolicy

    if kind == "feedforward":
        policy = FeedForwardSRPolicy.from_pretrained("realesr-animevideov3-x4").add_lora(4, 4)
        lr = smooth_lr(1, 16)
    else:
        policy = OneStepSDPolicy.from_pretrained(str(save_tiny_sd(tmp_path / "sd", "onestep"))).add_lora(4, 4)
        lr = smooth_lr(1, 8)
    for b in policy.lora_parameters():  # away from the zero init of lora_B, so every factor gets a gradient
        torch.nn.init.normal_(b, std=1e-2)
    out = policy(lr, generator=torch.Generator().manual_seed(0))
    fidelity_loss("lr", out, policy, lr=lr, kernel=parse_kernel("bicubic")).backward()
    grads = [p.grad for p in policy.lora_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    frozen = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_term_scales_abs_and_std_and_the_normalized_loss():
    sc = TermScales("abs", momentum=0.5)
    assert sc.scale("x") == 1.0  # never observed
    sc.observe("x", batch_stats(torch.tensor([2.0, -2.0])))
    assert sc.scale("x") == pytest.approx(2.0)  # bias-corrected: the first batch alone
    sc.observe("x", batch_stats(torch.tensor([4.0])))
    assert sc.scale("x") == pytest.approx((0.5 * 0.5 * 2 + 0.5 * 4) / (1 - 0.25))
    st = TermScales("std", momentum=0.0)
    st.observe("x", batch_stats(torch.tensor([1.0, 3.0])))
    assert st.scale("x") == pytest.approx(1.0)
    st.observe("x", batch_stats(torch.tensor([5.0])))
    assert st.scale("x") == pytest.approx(0.5)  # one value, no spread: a tenth of its magnitude
    st.observe("y", batch_stats(torch.tensor([0.0])))
    assert st.scale("y") == TermScales("std").floor
    assert TermScales("off").scale("x") == 1.0
    # normalized: a term ten times larger with its weight unchanged weighs the same
    from diffusers_ext.rewards import RewardConfig

    cfg = RewardConfig(lambda_global=1.0, lambda_pdm=1.0)
    score, pen = torch.tensor([0.5, 0.7], requires_grad=True), torch.tensor([0.2, 0.4], requires_grad=True)
    losses = []
    for k in (1.0, 10.0):
        s = TermScales("abs")
        fid = (k * pen).mean()
        loss = normalized_loss(score, pen, 2, cfg, fid, 1.0, s, lambda t: t, "neg", 1.0)
        losses.append(loss)
        assert set(s.terms) == {"score@rm2", "pdm_penalty@rm2", "fidelity"}
    assert float(losses[0].detach()) == pytest.approx(float(losses[1].detach()))
    # relu: the hinge is each term's shortfall from a clean photo (score 0.9, no penalty) in its own units
    s = TermScales("abs")
    loss = normalized_loss(score, pen, 2, cfg, None, 1.0, s, lambda t: t, "relu", 1.0)
    expect = ((0.9 - score) / 0.6 + pen / 0.3).mean()
    assert float(loss.detach()) == pytest.approx(float(expect.detach()))
    with pytest.raises(ValueError, match="--term_norm"):
        TermScales("l2")


def _garbage_hr(monkeypatch, seed: int, calls: list) -> None:
    """Training batches keep their LR and get HR images of pure noise (different per ``seed``)."""
    real = SRPairSampler.batch

    def batch(self, *a, **k):
        lr, hr = real(self, *a, **k)
        calls.append(1)
        return lr, torch.rand(hr.shape, generator=torch.Generator().manual_seed(seed))

    monkeypatch.setattr(SRPairSampler, "batch", batch)


def _log(out) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fidelity", ["lr", "l1"])
def test_fidelity_lr_trains_without_ever_reading_hr(fidelity, assets, tmp_path, monkeypatch):  # noqa: F811
    """Two 2-step runs whose training HR is different garbage: with --fidelity lr every logged loss
    and reward is identical (HR never reaches the loss); with l1 (the control) it is not."""
    logs = []
    for seed in (1, 2):
        calls: list = []
        with monkeypatch.context() as m:
            _garbage_hr(m, seed, calls)
            out = tmp_path / f"{fidelity}{seed}"
            ccl_lora.main(base_args(assets, out, steps=2, extra=[
                "--fidelity", fidelity, "--term_norm", "abs", "--no_brisque", "--validation_steps", "0"]))
        assert len(calls) == 2  # the patched sampler made every training batch
        logs.append(_log(out))
    assert all(r["fidelity"] > 0 and r["scale/fidelity"] > 0 for r in logs[0])
    same = logs[0] == logs[1]
    assert same if fidelity == "lr" else not same


def test_term_norm_scales_resume_exactly_after_sigkill(assets, tmp_path):  # noqa: F811
    extra = ["--fidelity", "lr", "--lr_consistency_kernel", "gaussian:1.2", "--term_norm", "abs",
             "--term_norm_momentum", "0.5", "--no_brisque"]
    ref_out, out = tmp_path / "ref", tmp_path / "crash"
    ccl_lora.main(base_args(assets, ref_out, steps=5, extra=extra))
    proc = subprocess.run([sys.executable, str(KILL_AFTER), "3", *base_args(assets, out, steps=5, extra=extra)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "checkpoint-2" / ccl_lora.TRAINER_STATE).read_text())
    assert state["term_norm"]["mode"] == "abs" and state["term_norm"]["terms"]["fidelity"]["t"] == 2
    ccl_lora.main(base_args(assets, out, steps=5, extra=[*extra, "--resume_from_checkpoint", "latest"]))
    ref_log, log = _log(ref_out), _log(out)
    assert log == ref_log  # scales, losses and rewards step for step
    keys = {k for k in ref_log[-1] if k.startswith("scale/")}
    assert {"scale/fidelity", "scale/score@rm0", "scale/score@rm2", "scale/pdm_penalty@rm2"} <= keys
    assert all(math.isfinite(ref_log[-1][k]) for k in keys)
    # resuming with other normalization flags is refused, naming the fix
    with pytest.raises(ValueError, match="flags the run was started with"):
        ccl_lora.main(base_args(assets, tmp_path / "crash", steps=6, extra=[
            "--fidelity", "lr", "--term_norm", "std", "--no_brisque", "--resume_from_checkpoint", "latest"]))
