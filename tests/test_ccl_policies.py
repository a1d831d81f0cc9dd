"""SR policies (feed-forward, one-step SD, multi-step upscaler): LoRA only, gradients, reward rises,
adapter save/reload with alpha != rank, and the one-step inference pipeline."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model
from safetensors import safe_open

from diffusers_ext.policies import (LORA_WEIGHT_NAME, FeedForwardSRPolicy, OneStepSDPolicy, UpscaleSDPolicy,
                                    predict_x0)
from diffusers_ext.rewards import RewardConfig, compute_reward
from tiny_sd import save_tiny_sd

FF_NET = "realesr-animevideov3-x4"


@pytest.fixture(scope="module")
def sd_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    return {"onestep": save_tiny_sd(root / "onestep", "onestep"), "upscale": save_tiny_sd(root / "upscale", "upscale")}


def make_policy(kind, sd_dirs, rank=4, alpha=8.0):
    if kind == "feedforward":
        return FeedForwardSRPolicy.from_pretrained(FF_NET).add_lora(rank, alpha)
    if kind == "onestep":
        return OneStepSDPolicy.from_pretrained(str(sd_dirs["onestep"]), prompt="abc").add_lora(rank, alpha)
    return UpscaleSDPolicy.from_pretrained(str(sd_dirs["upscale"]), num_inference_steps=4,
                                           refl_min_step=2).add_lora(rank, alpha)


def lr_batch(kind, n=2):
    torch.manual_seed(3)
    side = 16 if kind == "feedforward" else 8
    return torch.rand(n, 3, side, side)


def run(policy, lr):
    return policy(lr, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["feedforward", "onestep", "upscale"])
def test_lora_only_gradients_and_reward_rises(kind, sd_dirs):
    policy = make_policy(kind, sd_dirs)
    rm = make_tiny_model(seed=1)
    rm.requires_grad_(False)
    lr = lr_batch(kind)
    lora = dict((n, p) for n, p in policy.named_parameters() if "lora_" in n)
    assert lora and all(p.requires_grad for p in lora.values())
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    assert frozen and not any(p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n)
    opt = torch.optim.Adam(list(lora.values()), lr=2e-2)
    cfg = RewardConfig(lambda_global=1.0, lambda_pdm=1.0)
    rewards = []
    for step in range(6):
        out = run(policy, lr)
        assert out["images"].shape == (2, 3, lr.shape[-2] * policy.scale, lr.shape[-1] * policy.scale)
        assert 0 <= out["images"].min() and out["images"].max() <= 1
        r = compute_reward(rm, out["images"], cfg, stage=4).reward
        rewards.append(r.mean().item())
        opt.zero_grad()
        (-r.mean()).backward()
        if step == 0:
            grads = [p.grad for p in lora.values()]
            assert all(g is not None for g in grads), "a LoRA parameter got no gradient"
            assert sum(g.abs().sum().item() for g in grads) > 0
        opt.step()
    with torch.no_grad():
        rewards.append(compute_reward(rm, run(policy, lr)["images"], cfg, stage=4).reward.mean().item())
    assert rewards[-1] > rewards[0] + 1e-4, rewards
    for n, p in policy.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"


def _perturb(policy):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.lora_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("kind", ["feedforward", "onestep"])
def test_lora_reload_with_alpha_not_rank(kind, sd_dirs, tmp_path):
    policy = make_policy(kind, sd_dirs, rank=4, alpha=16.0)
    _perturb(policy)
    policy.eval()
    lr = lr_batch(kind, 1)
    with torch.no_grad():
        ref = run(policy, lr)["images"]
    policy.save_lora(tmp_path / "lora")
    with safe_open(str(tmp_path / "lora" / LORA_WEIGHT_NAME), "pt") as f:
        meta = f.metadata()
    alpha_key = "lora_alpha" if kind == "feedforward" else "unet.lora_alpha"
    assert json.loads(meta["lora_adapter_metadata"])[alpha_key] == 16.0
    fresh = make_policy(kind, sd_dirs).__class__
    if kind == "feedforward":
        reloaded = FeedForwardSRPolicy.from_pretrained(FF_NET).load_lora(tmp_path / "lora").eval()
        wrong = FeedForwardSRPolicy.from_pretrained(FF_NET).add_lora(4, 4.0).eval()
    else:
        reloaded = fresh.from_pretrained(str(sd_dirs["onestep"]), prompt="abc").load_lora(tmp_path / "lora").eval()
        wrong = fresh.from_pretrained(str(sd_dirs["onestep"]), prompt="abc").add_lora(4, 4.0).eval()
    with torch.no_grad():
        got = run(reloaded, lr)["images"]
    assert torch.allclose(got, ref, atol=1e-6), "reloaded adapter gives other outputs"
    # Negative control: the same tensors with alpha = rank (what a metadata-less reload does) differ,
    # so the check above really depends on alpha having been restored.
    wrong.load_trainable_state_dict(policy.trainable_state_dict())
    with torch.no_grad():
        bad = run(wrong, lr)["images"]
    assert (bad - ref).abs().max() > 1e-4


def test_feedforward_lora_refuses_a_file_without_metadata(tmp_path):
    from safetensors.torch import load_file, save_file

    policy = FeedForwardSRPolicy.from_pretrained(FF_NET).add_lora(2, 4.0)
    path = policy.save_lora(tmp_path / "a")
    save_file(load_file(str(path)), str(path))  # drop the metadata
    with pytest.raises(ValueError, match="lora_adapter_metadata"):
        FeedForwardSRPolicy.from_pretrained(FF_NET).load_lora(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        FeedForwardSRPolicy.from_pretrained(FF_NET).load_lora(tmp_path)


def test_vae_encoder_lora_saved_and_reloaded(sd_dirs, tmp_path):
    p = OneStepSDPolicy.from_pretrained(str(sd_dirs["onestep"])).add_lora(4, 8.0, vae_encoder=True, vae_alpha=2.0)
    assert any(n.startswith("vae.encoder") for n, _ in p.named_parameters() if "lora_" in n)
    _perturb(p)
    p.eval()
    lr = lr_batch("onestep", 1)
    with torch.no_grad():
        ref = run(p, lr)["images"]
    p.save_lora(tmp_path / "l")
    assert (tmp_path / "l" / "vae_encoder_lora.safetensors").is_file()
    q = OneStepSDPolicy.from_pretrained(str(sd_dirs["onestep"])).load_lora(tmp_path / "l").eval()
    with torch.no_grad():
        assert torch.allclose(run(q, lr)["images"], ref, atol=1e-6)


def test_onestep_pipeline_matches_the_policy(sd_dirs, tmp_path):
    from diffusers_ext import OneStepSRPipeline

    p = OneStepSDPolicy.from_pretrained(str(sd_dirs["onestep"]), prompt="abc").add_lora(4, 8.0, vae_encoder=True)
    _perturb(p)
    p.eval()
    p.save_lora(tmp_path / "lora")
    lr = lr_batch("onestep", 1)
    with torch.no_grad():
        ref = run(p, lr)["images"]
    pipe = OneStepSRPipeline.from_pretrained(str(sd_dirs["onestep"]))
    base = pipe(lr, prompt="abc", output_type="pt").images[0]
    pipe.load_lora_weights(str(tmp_path / "lora"))
    out = pipe(lr, prompt="abc", output_type="pt").images[0]
    assert torch.allclose(out, ref, atol=1e-5)
    assert (base - ref).abs().max() > 1e-3  # the adapter changes the output
    pil = pipe(torch.rand(1, 3, 9, 7), prompt="abc").images[0]
    assert pil.size == (28, 36)  # any size: padded to the VAE stride, cropped back to 4x


def test_predict_x0_inverts_the_forward_process():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([999])
    xt = s.add_noise(x0, eps, t)
    assert torch.allclose(predict_x0(eps, xt, s.alphas_cumprod, 999, "epsilon"), x0, atol=1e-3)
    v = s.get_velocity(x0, eps, t)
    assert torch.allclose(predict_x0(v, xt, s.alphas_cumprod, 999, "v_prediction"), x0, atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0(eps, xt, s.alphas_cumprod, 999, "flow")


def test_upscale_adapter_loads_into_diffusers_upscale_pipeline(sd_dirs, tmp_path):
    from diffusers import StableDiffusionUpscalePipeline

    policy = make_policy("upscale", sd_dirs, rank=4, alpha=2.0)
    _perturb(policy)
    policy.save_lora(tmp_path / "lora")
    pipe = StableDiffusionUpscalePipeline.from_pretrained(str(sd_dirs["upscale"]))
    x = torch.randn(1, 7, 8, 8)
    emb = torch.randn(1, 77, 16)
    args = dict(encoder_hidden_states=emb, class_labels=torch.tensor([20]))
    with torch.no_grad():
        before = pipe.unet(x, 500, **args).sample
        pipe.load_lora_weights(str(tmp_path / "lora"))
        after = pipe.unet(x, 500, **args).sample
        ref = policy.unet(x, 500, **args).sample
    assert torch.allclose(after, ref, atol=1e-5) and (before - ref).abs().max() > 1e-4
