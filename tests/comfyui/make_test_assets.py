"""Tiny diffusion components for the ComfyUI node tests. Run with the ComfyUI venv's python:

    PYTHONPATH=.comfyui/ComfyUI .comfyui/venv/bin/python tests/comfyui/make_test_assets.py --comfyui .comfyui/ComfyUI --base BASE

Writes into the ComfyUI base directory BASE:

* ``models/checkpoints/finpercep_tiny_sd15.safetensors``: an SD1.5-format checkpoint that ComfyUI
  detects as SD15 (model_channels 320, context_dim 768) but with one UNet level and one block per
  level (~20 M parameters), a TAESD-architecture VAE and a CLIP-L text encoder, all random.
* ``models/loras/finpercep_tiny_sr/``: a FinPercep SR adapter in our contract's format (diffusers
  LoRA folder, PEFT ``unet.*`` keys, ``lora_adapter_metadata`` with lora_alpha != r, model card),
  made with peft on the tiny diffusers ``UNet2DConditionModel`` the checkpoint's UNet comes from.
* ``models/loras/finpercep_tiny_sr_sd2/``: the same adapter trained on a cross_attention_dim=1024
  UNet (a LoRA "for another base model").
* ``finpercep_ref/unet``: the diffusers UNet (reference for the equivalence check).

Idempotent: skips the work when ``finpercep_assets.json`` exists.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320,),
    down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
# ComfyUI's (ldm) description of the same UNet, for its diffusers <-> ldm key map.
TINY_LDM = {"num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
            "transformer_depth_output": [1, 1], "transformer_depth_middle": 1}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj", "conv_shortcut"]
LORA_RANK, LORA_ALPHA = 4, 8
BASE_MODEL_ID = "finpercep-test/tiny-sd15"


def _init(module) -> None:
    """Proper random init of modules built with ComfyUI's no-init ops."""
    import torch

    for m in module.modules():
        for cls in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, cls):
                cls.reset_parameters(m)
                break


def make_adapter(unet_kwargs: dict, out_dir: Path, seed: int, card_base: str) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs)
    cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, init_lora_weights="gaussian")
    unet.add_adapter(cfg)
    with torch.no_grad():  # gaussian init leaves lora_B at 0: give it a visible effect
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir), unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=cfg.to_dict(),
        safe_serialization=True,
    )
    (out_dir / "README.md").write_text(
        f"---\nbase_model: {card_base}\nlibrary_name: diffusers\ntags:\n- finpercep\n- super-resolution\n- lora\n---\n\n"
        "# Tiny FinPercep SR adapter (test asset, random weights)\n"
    )


def make_vae_encoder_lora(path: Path) -> None:
    """An SD-VAE encoder LoRA as the trainer's save_lora writes it ('vae.encoder.*' keys + metadata)."""
    import torch
    from diffusers.models.autoencoders.vae import Encoder
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    torch.manual_seed(6)
    enc = Encoder(in_channels=3, out_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
                  block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, double_z=True)
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=r".*(conv1|conv2|conv_in|conv_out|conv_shortcut)$")
    inject_adapter_in_model(cfg, enc)
    d = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}
    save_file({f"vae.encoder.{k}": v.detach().contiguous() for k, v in get_peft_model_state_dict(enc).items()}, str(path),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(d)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--base", required=True)
    a = ap.parse_args()
    base = Path(a.base)
    manifest = base / "finpercep_assets.json"
    if manifest.is_file():
        print(manifest.read_text())
        return
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.taesd.taesd
    import comfy.utils
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(2)
    ref = base / "finpercep_ref"
    # UNet: diffusers -> ldm keys with ComfyUI's own map.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    unet.save_pretrained(str(ref / "unet"))
    mapping = comfy.utils.unet_to_diffusers(TINY_LDM)
    sd = unet.state_dict()
    unmapped = [k for k in sd if k not in mapping]
    if unmapped:
        raise SystemExit(f"diffusers keys without an ldm name: {unmapped[:5]}")
    ckpt = {f"model.diffusion_model.{mapping[k]}": v.contiguous() for k, v in sd.items()}
    # VAE: TAESD architecture (ComfyUI detects it by its keys), random.
    torch.manual_seed(1)
    taesd = comfy.taesd.taesd.TAESD()
    _init(taesd)
    with torch.no_grad():  # decode to mid-grey plus structure instead of mostly clamped black
        taesd.taesd_decoder[-1].bias.fill_(0.5)
    ckpt.update({f"first_stage_model.{k}": v.contiguous() for k, v in taesd.state_dict().items()})
    # CLIP-L text encoder, random (ComfyUI's SD1 CLIP has a fixed CLIP-L architecture).
    torch.manual_seed(2)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, max_position_embeddings=77, vocab_size=49408,
                                        projection_dim=768)).to(torch.float16)
    ckpt.update({f"cond_stage_model.transformer.{k}": v.contiguous() for k, v in clip.state_dict().items()
                 if not k.endswith("position_ids")})
    ckpt_path = base / "models" / "checkpoints" / "finpercep_tiny_sd15.safetensors"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ckpt, str(ckpt_path))
    del clip, ckpt
    # Adapters.
    loras = base / "models" / "loras"
    make_adapter(TINY_UNET, loras / "finpercep_tiny_sr", 3, BASE_MODEL_ID)
    make_adapter({**TINY_UNET, "cross_attention_dim": 1024}, loras / "finpercep_tiny_sr_sd2", 4, "finpercep-test/tiny-sd2")
    make_adapter(TINY_UNET, loras / "finpercep_tiny_sr_vae", 3, BASE_MODEL_ID)
    make_vae_encoder_lora(loras / "finpercep_tiny_sr_vae" / "vae_encoder_lora.safetensors")
    info = {
        "checkpoint": ckpt_path.name,
        "adapter": "finpercep_tiny_sr/pytorch_lora_weights.safetensors",
        "adapter_other_base": "finpercep_tiny_sr_sd2/pytorch_lora_weights.safetensors",
        "adapter_with_vae": "finpercep_tiny_sr_vae/pytorch_lora_weights.safetensors",
        "adapter_dir": str(loras / "finpercep_tiny_sr"),
        "ref_unet": str(ref / "unet"),
        "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "lora_targets": LORA_TARGETS,
    }
    manifest.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
