"""In-process check, run with the ComfyUI venv's python after make_test_assets.py:

    .comfyui/venv/bin/python tests/comfyui/check_sr_equivalence.py --comfyui .comfyui/ComfyUI --base BASE

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
import sys
from pathlib import Path


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--base", required=True)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(Path(a.comfyui).resolve()))
    sys.path.append(str(repo))
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

    def rel(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))

    out = {
        "model_type": model_type,
        "n_adapter_modules": len(report.modules),
        "n_file_modules": len({k.rsplit(".lora_", 1)[0] for k in converted if ".lora_" in k}),
        "alpha_source": report.alpha_source,
        "scales": sorted(set(round(s, 6) for s in report.scales.values())),
        "base_model": base_model,
        "lora_key_not_loaded": [m for m in logs.messages if "lora key not loaded" in m.lower()],
        "rel_err_base": rel(z0_base, ref_base),
        "rel_err_lora": rel(z0_lora, ref_lora),
        "rel_err_half": rel(z0_half, ref_half),
        "rel_change_lora": rel(z0_lora, z0_base),
        "rel_base_unchanged": rel(z0_base_again, z0_base),
        "finite": bool(torch.isfinite(z0_lora).all()),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
