"""One-step diffusion super-resolution (OSEDiff style) with FinPercep ReFL LoRA adapters.

    from diffusers_ext import OneStepSRPipeline
    pipe = OneStepSRPipeline.from_pretrained("path/or/hub-id-of-a-stable-diffusion-model")
    pipe.load_lora_weights("you/finpercep-onestep-lora")      # folder or Hub id (training/ccl_lora.py)
    sr = pipe("low_res.png").images[0]                        # PIL image, 4x larger

The forward is the training policy's (:func:`diffusers_ext.policies.onestep_sr`): bicubic x``scale``,
VAE encode, one UNet step at ``timestep`` (999), x0 prediction, VAE decode. All components are
diffusers / transformers classes, so any Stable Diffusion folder or Hub id loads directly; a VAE
encoder adapter (``vae_encoder_lora.safetensors``) is loaded too when the adapter folder has one.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..image_io import to_batch_tensor
from ..policies.diffusion import encode_prompt, load_vae_encoder_lora, onestep_sr


class OneStepSRPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Components: ``vae`` (AutoencoderKL), ``unet`` (UNet2DConditionModel), ``scheduler`` (its
    ``alphas_cumprod`` and ``prediction_type``), optional ``tokenizer`` / ``text_encoder`` (without
    them the prompt embedding is zeros)."""

    model_cpu_offload_seq = "text_encoder->vae->unet->vae"
    _optional_components = ["tokenizer", "text_encoder"]

    def __init__(self, vae, unet, scheduler, tokenizer=None, text_encoder=None) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: Optional[str] = None, **kwargs):
        """diffusers' UNet (and text-encoder) LoRA loading, plus our VAE-encoder adapter file if any."""
        super().load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, **kwargs)
        if isinstance(pretrained_model_name_or_path_or_dict, (str, os.PathLike)):
            load_vae_encoder_lora(self.vae, pretrained_model_name_or_path_or_dict)

    def _prompt_embeds(self, prompt: str, batch: int, device, dtype) -> torch.Tensor:
        if self.tokenizer is None or self.text_encoder is None:
            emb = torch.zeros(1, 77, self.unet.config.cross_attention_dim)
        else:
            emb = encode_prompt(self.tokenizer, self.text_encoder, prompt, device=self.text_encoder.device)
        return emb.to(device, dtype).expand(batch, -1, -1)

    @torch.no_grad()
    def __call__(self, image: Union[Any, Sequence[Any]], prompt: str = "", scale: int = 4, timestep: int = 999,
                 output_type: str = "pil", return_dict: bool = True):
        """Upscale ``image`` (a path, PIL, numpy HxWx3 or torch Bx3xHxW in [0,1], or a list) by ``scale``.

        Each image is padded (reflect) so that ``scale*side`` is a multiple of the VAE stride and the
        output is cropped back to exactly ``scale*H x scale*W``. ``output_type``: ``"pil"``, ``"np"``
        (float32 HxWx3 in [0,1]) or ``"pt"`` (1x3xHxW tensors)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        device, dtype = self._execution_device, self.unet.dtype
        emb = self._prompt_embeds(prompt, 1, device, dtype)
        alphas = self.scheduler.alphas_cumprod
        pred = self.scheduler.config.prediction_type
        n = self.scheduler.config.num_train_timesteps
        if not 0 <= timestep < n:
            raise ValueError(f"timestep must be in 0..{n - 1}, got {timestep}")
        outs = []
        for x in to_batch_tensor(image, device=device, dtype=dtype):
            h, w = x.shape[-2:]
            m = max(1, self.vae_scale // np.gcd(self.vae_scale, scale))
            ph, pw = (-h) % m, (-w) % m
            if ph or pw:
                x = F.pad(x, [0, pw, 0, ph], mode="reflect" if ph < h and pw < w else "replicate")
            y = onestep_sr(self.vae, self.unet, alphas, pred, x, emb, scale, timestep)[..., : h * scale, : w * scale]
            outs.append(y.float().cpu())
        if output_type == "pt":
            images = outs
        else:
            arrays = [o[0].permute(1, 2, 0).numpy() for o in outs]
            images = arrays if output_type == "np" else [
                PIL.Image.fromarray((a * 255).round().clip(0, 255).astype(np.uint8)) for a in arrays]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
