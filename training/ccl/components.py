"""Full-size diffusion SR components built from configs (no download), random-initialised, for cost
measurements (benchmarks/bench_refl_step.py, benchmarks/gpu_refl_step.py): Stable Diffusion 2.1
base and the x4 upscaler. The tiny test components are in tests/tiny_sd.py.
"""
from __future__ import annotations

from typing import Any

import torch


def sd21_unet_config() -> dict[str, Any]:
    """The UNet config of Stable Diffusion 2.1 base (865 M parameters)."""
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def sd_vae_config() -> dict[str, Any]:
    """The VAE config of Stable Diffusion 1.x / 2.x (x8, 4 latent channels)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
                block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def sd_x4_upscaler_unet_config() -> dict[str, Any]:
    """The UNet config of ``StableDiffusionUpscalePipeline``'s x4 upscaler (about 473 M parameters)."""
    return dict(sample_size=128, in_channels=7, out_channels=4, layers_per_block=2,
                block_out_channels=(256, 512, 512, 1024), cross_attention_dim=1024, attention_head_dim=8,
                use_linear_projection=True, num_class_embeds=1000, only_cross_attention=(True, True, True, False),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def sd_x4_upscaler_vae_config() -> dict[str, Any]:
    """The VAE config of the x4 upscaler (x4, 4 latent channels)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
                block_out_channels=(128, 256, 512), scaling_factor=0.08333,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def full_size_policy(kind: str, lora_rank: int = 8, seed: int = 0):
    """A real-sized diffusion SR policy with random weights (no download), LoRA added: ``onestep``
    (Stable Diffusion 2.1 base UNet + SD VAE, OSEDiff style) or ``upscale`` (the x4 upscaler).
    For cost measurements only: the outputs are noise."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    from diffusers_ext.policies import OneStepSDPolicy, UpscaleSDPolicy

    torch.manual_seed(seed)
    if kind == "onestep":
        unet, vae = UNet2DConditionModel(**sd21_unet_config()), AutoencoderKL(**sd_vae_config())
        sched = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False)
        policy = OneStepSDPolicy(vae, unet, sched, torch.zeros(1, 77, 1024), scale=4)
    elif kind == "upscale":
        unet, vae = UNet2DConditionModel(**sd_x4_upscaler_unet_config()), AutoencoderKL(**sd_x4_upscaler_vae_config())
        sched = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
        low = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
        policy = UpscaleSDPolicy(vae, unet, sched, low, torch.zeros(1, 77, 1024))
    else:
        raise ValueError(f"kind must be 'onestep' or 'upscale', got {kind!r}")
    return policy.add_lora(lora_rank, lora_rank)
