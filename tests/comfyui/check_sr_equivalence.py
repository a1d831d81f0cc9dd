"""In-process check, run with the ComfyUI venv's python after make_test_assets.py:

    PYTHONPATH=.comfyui/ComfyUI:. .comfyui/venv/bin/python tests/comfyui/check_sr_equivalence.py --comfyui .comfyui/ComfyUI --base BASE

Loads the tiny SD15 checkpoint with ComfyUI's own loader, applies the FinPercep SR adapter with the
node's code (PEFT keys converted to kohya names), and compares ComfyUI's one-step x0 prediction
with the diffusers reference: the same UNet with the adapter loaded by diffusers/peft
(``load_lora_adapter``) and ``DDPMScheduler.step(...).pred_original_sample`` at t=999.
Prints one JSON object (the pytest test asserts on it).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, sample_size=256)
VAE_TARGETS = r".*(conv1|conv2|conv_in|conv_out|conv_shortcut)$"  # the trainer's VAE_ENCODER_TARGETS


def check_trainer_adapter_end_to_end(model, info: dict, base: Path) -> dict:
    """An adapter written by the trainer itself (OneStepSDPolicy.add_lora(vae_encoder=True) +
    save_lora: UNet part and VAE-encoder part) on the tiny UNet and an SD VAE. The ComfyUI path
    (Load SR Adapter's conversion + One-step SR) must give the trainer's own SR output (policy forward,
    i.e. diffusers_ext.policies.diffusion.onestep_sr), without and with the adapter."""
    import torch
    import comfy.sd
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from comfyui_finpercep.sr import apply_sr_adapter, apply_vae_encoder_lora, one_step_sr
    from diffusers_ext.policies import OneStepSDPolicy

    torch.manual_seed(7)
    vae = AutoencoderKL(**SD_VAE).eval()
    comfy_vae = comfy.sd.VAE(sd={k: v.clone() for k, v in vae.state_dict().items()})
    unet = UNet2DConditionModel.from_pretrained(info["ref_unet"]).eval()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, timestep_spacing="trailing")
    g = torch.Generator().manual_seed(2)
    lr = torch.rand(1, 16, 24, 3, generator=g)
    ctx = torch.randn(1, 77, 768, generator=g) * 0.5
    policy = OneStepSDPolicy(vae, unet, sched, prompt_embeds=ctx, scale=2, timestep=999).eval()
    with torch.no_grad():
        ref_base = policy(lr.movedim(-1, 1))["images"].movedim(1, -1)
    got_base = one_step_sr(model, comfy_vae, lr, 2.0, 999, [[ctx, {}]])
    policy.add_lora(rank=4, alpha=8, vae_encoder=True, vae_rank=4, vae_alpha=2)
    with torch.no_grad():
        for n, p in list(policy.unet.named_parameters()) + list(policy.vae.encoder.named_parameters()):
            if "lora_B" in n:
                p.normal_(0, 0.05)
    folder = base / "finpercep_ref" / "trainer_adapter"
    policy.save_lora(folder)
    with torch.no_grad():
        ref = policy(lr.movedim(-1, 1))["images"].movedim(1, -1)
    patched, report, _, _ = apply_sr_adapter(model, folder / "pytorch_lora_weights.safetensors", 1.0)
    vae_patched, vae_report = apply_vae_encoder_lora(comfy_vae, folder / "vae_encoder_lora.safetensors", 1.0)
    got = one_step_sr(patched, vae_patched, lr, 2.0, 999, [[ctx, {}]])
    d = lambda x, y: float((x.detach() - y.detach()).abs().max())  # noqa: E731
    return {"sr_shape": list(got.shape), "sr_base_max_abs_err": d(got_base, ref_base), "sr_max_abs_err": d(got, ref),
            "sr_adapter_change": d(ref, ref_base), "sr_ref_std": float(ref.std()),
            "trainer_unet_modules": len(report.modules), "trainer_vae_modules": len(vae_report.modules),
            "trainer_files": sorted(p.name for p in folder.iterdir())}


def check_vae_encoder_lora(base: Path) -> dict:
    """The adapter's optional VAE-encoder part, written like the trainer's save_lora
    (vae_encoder_lora.safetensors: 'vae.encoder.*' PEFT keys + lora_adapter_metadata), applied to a
    ComfyUI SD VAE vs peft on the diffusers AutoencoderKL: same latent (mode)."""
    import torch
    import comfy.sd
    from diffusers import AutoencoderKL
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    from comfyui_finpercep.sr import apply_vae_encoder_lora

    torch.manual_seed(5)
    vae = AutoencoderKL(**SD_VAE).eval()
    comfy_vae = comfy.sd.VAE(sd={k: v.clone() for k, v in vae.state_dict().items()})
    cfg = LoraConfig(r=4, lora_alpha=6, target_modules=VAE_TARGETS, init_lora_weights="gaussian")
    inject_adapter_in_model(cfg, vae.encoder)
    with torch.no_grad():
        for n, p in vae.encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    d = cfg.to_dict()
    d = {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}
    folder = base / "finpercep_ref" / "vae_lora"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "vae_encoder_lora.safetensors"
    save_file({f"vae.encoder.{k}": v.detach().contiguous() for k, v in get_peft_model_state_dict(vae.encoder).items()},
              str(file), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(d)})
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 64, 64, 3, generator=g)
    with torch.no_grad():
        ref = vae.encode(img.movedim(-1, 1) * 2 - 1).latent_dist.mode()
    patched, report = apply_vae_encoder_lora(comfy_vae, file, 1.0)
    got = patched.encode(img).float()
    base_again = comfy_vae.encode(img).float()
    with torch.no_grad():
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in vae.encoder.modules():
            if isinstance(m, BaseTunerLayer):
                m.enable_adapters(False)
        ref_base = vae.encode(img.movedim(-1, 1) * 2 - 1).latent_dist.mode()
    rel = lambda x, y: float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))  # noqa: E731
    got, base_again = got.detach(), base_again.detach()
    return {"vae_modules": len(report.modules), "vae_rel_err_lora": rel(got, ref), "vae_rel_err_base": rel(base_again, ref_base),
            "vae_rel_change": rel(got, base_again)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--base", required=True)
    a = ap.parse_args()
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.sd
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from comfyui_finpercep.sr import apply_sr_adapter, one_step_latent

    torch.set_num_threads(2)
    base = Path(a.base)
    info = json.loads((base / "finpercep_assets.json").read_text())
    logs = _Collect()
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.INFO)

    ckpt = base / "models" / "checkpoints" / info["checkpoint"]
    model = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=False, output_clip=False)[0]
    model_type = type(model.model.model_config).__name__
    adapter_file = base / "models" / "loras" / info["adapter"]
    patched, report, converted, base_model = apply_sr_adapter(model, adapter_file, 1.0)
    half, *_ = apply_sr_adapter(model, adapter_file, 0.5)
    not_loaded = [m for m in logs.messages if "lora key not loaded" in m.lower()]
    # Without the conversion, ComfyUI's own loader finds none of the PEFT 'unet.*' keys.
    import comfy.lora

    from comfyui_finpercep.lora_convert import read_adapter_file

    raw, _ = read_adapter_file(adapter_file)
    raw_loaded = len(comfy.lora.load_lora(raw, comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=False))

    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 768, generator=g) * 0.5
    t = 999
    z0_base = one_step_latent(model, z, t, ctx).cpu()
    z0_lora = one_step_latent(patched, z, t, ctx).cpu()
    z0_half = one_step_latent(half, z, t, ctx).cpu()
    z0_base_again = one_step_latent(model, z, t, ctx).cpu()  # patches must not leak into the base

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, timestep_spacing="trailing")
    sched.set_timesteps(timesteps=[t])
    unet = UNet2DConditionModel.from_pretrained(info["ref_unet"]).eval()

    def ref_x0() -> torch.Tensor:
        with torch.no_grad():
            eps = unet(z, t, encoder_hidden_states=ctx).sample
        return sched.step(eps, t, z).pred_original_sample

    ref_base = ref_x0()
    unet.load_lora_adapter(info["adapter_dir"], prefix="unet", weight_name="pytorch_lora_weights.safetensors",
                           adapter_name="sr")
    ref_lora = ref_x0()
    unet.set_adapters(["sr"], weights=[0.5])
    ref_half = ref_x0()

    vae_res = check_vae_encoder_lora(Path(a.base))
    sr_res = check_trainer_adapter_end_to_end(model, info, Path(a.base))

    def rel(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))

    out = {
        "model_type": model_type,
        "n_adapter_modules": len(report.modules),
        "n_file_modules": len({k.rsplit(".lora_", 1)[0] for k in converted if ".lora_" in k}),
        "alpha_source": report.alpha_source,
        "scales": sorted(set(round(s, 6) for s in report.scales.values())),
        "base_model": base_model,
        "lora_key_not_loaded": not_loaded,
        "raw_peft_keys_loaded": raw_loaded,
        "raw_attention_modules": len({k.rsplit(".lora_", 1)[0] for k in raw if re.search(r"\.to_(q|k|v|out)", k)}),
        "rel_err_base": rel(z0_base, ref_base),
        "rel_err_lora": rel(z0_lora, ref_lora),
        "rel_err_half": rel(z0_half, ref_half),
        "rel_change_lora": rel(z0_lora, z0_base),
        "rel_base_unchanged": rel(z0_base_again, z0_base),
        "finite": bool(torch.isfinite(z0_lora).all()),
        **vae_res,
        **sr_res,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
