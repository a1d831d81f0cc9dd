"""Test helper: tiny diffusion SR components built from configs (no download, random weights).

    save_tiny_sd(folder, kind="onestep"|"upscale")   # a diffusers folder that from_pretrained loads
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def tiny_unet_config(in_channels: int = 4, cross_dim: int = 16, upscale: bool = False) -> dict[str, Any]:
    cfg = dict(sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
               block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=cross_dim,
               attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    if upscale:
        cfg.update(num_class_embeds=1001, class_embed_type=None)
    return cfg


def tiny_vae_config(levels: int = 2) -> dict[str, Any]:
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=tuple([8, 16, 16][:levels]),
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                sample_size=32)


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with a 20-token vocabulary (enough to encode short prompts)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["<|startoftext|>", "<|endoftext|>"] + [f"{c}</w>" for c in "abcdefghijklmnopqr"] + list("abcdefghijklmnopqr")
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))


def tiny_components(kind: str = "onestep", seed: int = 0, with_text: bool = True) -> dict[str, Any]:
    """Random tiny components of an ``onestep`` (SD-like) or ``upscale`` (x4 upscaler-like) model."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    comps: dict[str, Any] = {}
    if kind == "onestep":
        comps["unet"] = UNet2DConditionModel(**tiny_unet_config())
        comps["vae"] = AutoencoderKL(**tiny_vae_config(2))
        comps["scheduler"] = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False)
    elif kind == "upscale":
        comps["unet"] = UNet2DConditionModel(**tiny_unet_config(in_channels=7, upscale=True))
        comps["vae"] = AutoencoderKL(**{**tiny_vae_config(3), "scaling_factor": 0.08333})
        comps["scheduler"] = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction",
                                           beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
        comps["low_res_scheduler"] = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    else:
        raise ValueError(f"kind must be 'onestep' or 'upscale', got {kind!r}")
    if with_text:
        from transformers import CLIPTextConfig, CLIPTextModel

        comps["text_encoder"] = CLIPTextModel(CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=40,
            max_position_embeddings=77, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return comps


def save_tiny_sd(folder: str | Path, kind: str = "onestep", seed: int = 0) -> Path:
    """Write tiny components as a diffusers folder (``unet/``, ``vae/``, ``scheduler/``,
    ``text_encoder/``, ``tokenizer/``, ``model_index.json``)."""
    folder = Path(folder)
    comps = tiny_components(kind, seed)
    for name, comp in comps.items():
        if hasattr(comp, "save_pretrained"):
            comp.save_pretrained(folder / name)
        else:
            comp.save_config(folder / name)
    write_tiny_tokenizer(folder / "tokenizer")
    cls = "StableDiffusionPipeline" if kind == "onestep" else "StableDiffusionUpscalePipeline"
    index = {"_class_name": cls, "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", type(comps["scheduler"]).__name__],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    if kind == "upscale":
        index["low_res_scheduler"] = ["diffusers", "DDPMScheduler"]
        index["max_noise_level"] = 350
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
