"""Latent-diffusion SR policies (diffusers components), with LoRA on the UNet attention projections.

* :class:`OneStepSDPolicy`: one-step SR in the style of OSEDiff. Bicubic-upsample the LR image,
  VAE-encode it, one UNet step at ``t`` (999), predict x0, VAE-decode. Components from any diffusers
  Stable Diffusion folder or Hub id. Optional LoRA on the VAE encoder.
* :class:`UpscaleSDPolicy`: diffusers' ``StableDiffusionUpscalePipeline`` (x4 upscaler: the UNet
  sees the noisy latent concatenated with the noised LR image). ReFL: sample without gradients to a
  random late step, one step with gradients, predict x0, decode.

Adapters are written as a diffusers LoRA folder: ``pytorch_lora_weights.safetensors`` (keys
``unet.*``, with ``lora_adapter_metadata`` so alpha != rank reloads right) that
``pipe.load_lora_weights(folder_or_hub_id)`` loads, plus ``vae_encoder_lora.safetensors`` when the
VAE encoder has an adapter (loaded by :class:`~diffusers_ext.pipelines.pipeline_onestep_sr.OneStepSRPipeline`).

Scheduler trap (DESIGN.md §4): ``set_timesteps(1)`` then ``step(eps, 999, z)`` raises IndexError in
this diffusers version, so x0 is computed from ``alphas_cumprod`` directly (:func:`predict_x0`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import LORA_WEIGHT_NAME, SRPolicy, lora_config_dict, lora_config_from_dict, resolve_lora_file

VAE_LORA_WEIGHT_NAME = "vae_encoder_lora.safetensors"
UNET_ATTN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
VAE_ENCODER_TARGETS = r".*(conv1|conv2|conv_in|conv_out|conv_shortcut)$"


def predict_x0(model_output: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor,
               timestep: int | torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """x0 from one UNet output at ``timestep``: epsilon, v or sample prediction."""
    a = alphas_cumprod.to(sample.device, torch.float32)[timestep]
    a = a.reshape(-1, *([1] * (sample.ndim - 1))) if a.ndim else a
    sa, s1a = a.sqrt().to(sample.dtype), (1 - a).sqrt().to(sample.dtype)
    if prediction_type == "epsilon":
        return (sample - s1a * model_output) / sa
    if prediction_type == "v_prediction":
        return sa * sample - s1a * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}: use 'epsilon', 'v_prediction' or 'sample'")


def encode_prompt(tokenizer, text_encoder, prompt: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[1, L, D]`` text embeddings of ``prompt`` (the fixed prompt of a policy)."""
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return text_encoder(ids)[0].detach()


def _load_prompt_embeds(path: str, prompt: str, cross_dim: int, subfolder_kwargs: dict) -> torch.Tensor:
    """Encode ``prompt`` with the folder's text encoder; zeros when the folder has none."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **subfolder_kwargs)
        te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **subfolder_kwargs)
    except (OSError, ValueError) as exc:  # no text encoder in this folder / repo
        import warnings

        warnings.warn(f"{path}: no usable tokenizer/text_encoder ({exc.__class__.__name__}); "
                      f"using zero prompt embeddings")
        return torch.zeros(1, 77, cross_dim)
    emb = encode_prompt(tok, te, prompt)
    del te
    return emb


def _is_hub_id(s: str) -> bool:
    from ..hub import is_hub_id

    return is_hub_id(s)


class _LatentSRPolicy(SRPolicy):
    """What both latent-diffusion policies share: VAE, UNet, prompt embeddings, UNet/VAE LoRA."""

    lr_multiple = 1

    def __init__(self, vae: nn.Module, unet: nn.Module, prompt_embeds: Optional[torch.Tensor] = None,
                 base_model: Optional[str] = None) -> None:
        super().__init__()
        self.vae, self.unet = vae, unet
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        if prompt_embeds is None:
            prompt_embeds = torch.zeros(1, 77, unet.config.cross_attention_dim)
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=False)
        self.base_model = base_model
        self.unet_lora_config = None
        self.vae_lora_config = None

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def _embeds(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.prompt_embeds.to(dtype).expand(batch, -1, -1)

    # ------------------------------------------------------------------ LoRA
    def lora_modules(self) -> dict[str, nn.Module]:
        mods = {"unet": self.unet}
        if self.vae_lora_config is not None:
            mods["vae"] = self.vae.encoder
        return mods

    def add_lora(self, rank: int = 8, alpha: Optional[float] = None, dropout: float = 0.0,
                 target_modules: Optional[Iterable[str] | str] = None, vae_encoder: bool = False,
                 vae_rank: Optional[int] = None, vae_alpha: Optional[float] = None, **kwargs) -> "_LatentSRPolicy":
        from peft import LoraConfig, inject_adapter_in_model

        if self.unet_lora_config is not None:
            raise RuntimeError("this policy already has a LoRA adapter")
        targets = UNET_ATTN_TARGETS if target_modules is None else target_modules
        cfg = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                         init_lora_weights="gaussian", target_modules=targets)
        self.unet.add_adapter(cfg)
        self.unet_lora_config = cfg
        if vae_encoder:
            vr = vae_rank or rank
            vcfg = LoraConfig(r=vr, lora_alpha=vae_alpha if vae_alpha is not None else (alpha or vr),
                              lora_dropout=dropout, init_lora_weights="gaussian", target_modules=VAE_ENCODER_TARGETS)
            inject_adapter_in_model(vcfg, self.vae.encoder)
            self.vae_lora_config = vcfg
        self.freeze_base()
        return self

    def save_lora(self, folder: str | os.PathLike) -> Path:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self.unet_lora_config is None:
            raise RuntimeError("no LoRA adapter to save: call add_lora() first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        unet_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        unet_sd = {k: v.detach().cpu().contiguous() for k, v in unet_sd.items()}
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=unet_sd, weight_name=LORA_WEIGHT_NAME, safe_serialization=True,
            unet_lora_adapter_metadata=lora_config_dict(self.unet_lora_config))
        if self.vae_lora_config is not None:
            vsd = {f"vae.encoder.{k}": v.detach().cpu().contiguous()
                   for k, v in get_peft_model_state_dict(self.vae.encoder).items()}
            save_file(vsd, str(folder / VAE_LORA_WEIGHT_NAME), metadata={
                "format": "pt", "lora_adapter_metadata": json.dumps(lora_config_dict(self.vae_lora_config))})
        return folder / LORA_WEIGHT_NAME

    def load_lora(self, folder_or_hub_id: str | os.PathLike) -> "_LatentSRPolicy":
        """Load an adapter folder / Hub repo written by :meth:`save_lora` (rank, alpha from metadata)."""
        path = resolve_lora_file(folder_or_hub_id)
        self.unet.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="unet",
                                    adapter_name="default")
        self.unet_lora_config = self.unet.peft_config["default"]
        load_vae_encoder_lora(self.vae, folder_or_hub_id)
        if hasattr(self.vae.encoder, "peft_config"):
            self.vae_lora_config = self.vae.encoder.peft_config.get("default")
        return self

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.vae.enable_gradient_checkpointing()

    # ------------------------------------------------------------------ VAE
    def vae_encode(self, x01: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(x01 * 2 - 1).latent_dist
        return dist.mode() * self.scaling_factor

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(z / self.scaling_factor).sample + 1) / 2).clamp(0, 1)

    def card_info(self) -> dict[str, Any]:
        base = self.base_model
        return {"base_model": base if base and _is_hub_id(base) else None, "name": base or self.kind}


def load_vae_encoder_lora(vae: nn.Module, folder_or_hub_id: str | os.PathLike) -> bool:
    """Inject and load ``vae_encoder_lora.safetensors`` when the adapter has one; False otherwise."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        path = resolve_lora_file(folder_or_hub_id, VAE_LORA_WEIGHT_NAME)
    except Exception as exc:  # noqa: BLE001 - the VAE part is optional
        if exc.__class__.__name__ in ("FileNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
            return False
        raise
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "lora_adapter_metadata" not in meta:
        raise ValueError(f"{path} has no 'lora_adapter_metadata' (rank/alpha); re-save the adapter")
    inject_adapter_in_model(lora_config_from_dict(json.loads(meta["lora_adapter_metadata"])), vae.encoder)
    sd = {k[len("vae.encoder."):]: v for k, v in load_file(str(path)).items()}
    set_peft_model_state_dict(vae.encoder, sd)
    return True


def onestep_sr(vae: nn.Module, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str,
               lr: torch.Tensor, prompt_embeds: torch.Tensor, scale: int, timestep: int = 999,
               return_latents: bool = False):
    """The OSEDiff-style one-step SR forward, shared by the policy and the inference pipeline.

    ``lr``: ``Bx3xhxw`` in [0,1] -> ``Bx3x(scale*h)x(scale*w)`` in [0,1] (and the x0 latents)."""
    sf = float(vae.config.scaling_factor)
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    z = vae.encode(up * 2 - 1).latent_dist.mode() * sf
    t = torch.full((z.shape[0],), timestep, device=z.device, dtype=torch.long)
    out = unet(z, t, encoder_hidden_states=prompt_embeds.to(z.dtype)).sample
    z0 = predict_x0(out, z, alphas_cumprod, timestep, prediction_type)
    img = ((vae.decode(z0 / sf).sample + 1) / 2).clamp(0, 1)
    return (img, z0) if return_latents else img


class OneStepSDPolicy(_LatentSRPolicy):
    """One-step diffusion SR (OSEDiff style) on Stable Diffusion components."""

    kind = "onestep"

    def __init__(self, vae: nn.Module, unet: nn.Module, scheduler: Any, prompt_embeds: Optional[torch.Tensor] = None,
                 scale: int = 4, timestep: int = 999, base_model: Optional[str] = None) -> None:
        super().__init__(vae, unet, prompt_embeds, base_model)
        self.scale = int(scale)
        self.timestep = int(timestep)
        self.prediction_type = scheduler.config.prediction_type
        n = scheduler.config.num_train_timesteps
        if not 0 <= self.timestep < n:
            raise ValueError(f"timestep must be in 0..{n - 1}, got {timestep}")
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.detach().clone().float(), persistent=False)
        self.lr_multiple = 1  # the bicubic upsample lands on scale*h; the VAE needs scale*h % vae_scale == 0
        self.scheduler_config = dict(scheduler.config)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", scale: int = 4, timestep: int = 999,
                        revision: Optional[str] = None, variant: Optional[str] = None,
                        torch_dtype: torch.dtype = torch.float32) -> "OneStepSDPolicy":
        """Components from a diffusers Stable Diffusion folder or Hub id (``vae``, ``unet``,
        ``scheduler``; ``tokenizer``/``text_encoder`` for the fixed prompt, zeros without them)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        kw = {"revision": revision}
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", torch_dtype=torch_dtype, variant=variant, **kw)
        unet = UNet2DConditionModel.from_pretrained(path_or_id, subfolder="unet", torch_dtype=torch_dtype,
                                                    variant=variant, **kw)
        sched = DDPMScheduler.from_pretrained(path_or_id, subfolder="scheduler", **kw)
        emb = _load_prompt_embeds(path_or_id, prompt, unet.config.cross_attention_dim, kw)
        return cls(vae, unet, sched, emb.to(torch_dtype), scale=scale, timestep=timestep, base_model=str(path_or_id))

    def forward(self, lr: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        if (lr.shape[-1] * self.scale) % self.vae_scale or (lr.shape[-2] * self.scale) % self.vae_scale:
            raise ValueError(f"LR size {tuple(lr.shape[-2:])} x{self.scale} is not a multiple of the VAE "
                             f"stride {self.vae_scale}: crop the HR images to a multiple of {self.vae_scale * self.scale}")
        img, z0 = onestep_sr(self.vae, self.unet, self.alphas_cumprod, self.prediction_type, lr,
                             self._embeds(lr.shape[0], lr.dtype), self.scale, self.timestep, return_latents=True)
        return {"images": img, "latents": z0}

    def encode_target(self, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae_encode(hr)


class UpscaleSDPolicy(_LatentSRPolicy):
    """``StableDiffusionUpscalePipeline`` (x4 upscaler) as a multi-step ReFL policy.

    ``num_inference_steps`` DDIM steps; ReFL runs steps ``0..k-1`` without gradients, step ``k`` with
    gradients, where ``k`` is drawn in ``[refl_min_step, num_inference_steps - 1]`` (a late step)."""

    kind = "upscale"

    def __init__(self, vae: nn.Module, unet: nn.Module, scheduler: Any, low_res_scheduler: Any,
                 prompt_embeds: Optional[torch.Tensor] = None, noise_level: int = 20, num_inference_steps: int = 20,
                 refl_min_step: Optional[int] = None, base_model: Optional[str] = None) -> None:
        super().__init__(vae, unet, prompt_embeds, base_model)
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.low_res_scheduler = low_res_scheduler
        self.noise_level = int(noise_level)
        self.num_inference_steps = int(num_inference_steps)
        self.refl_min_step = (self.num_inference_steps * 3 // 4) if refl_min_step is None else int(refl_min_step)
        if not 0 <= self.refl_min_step < self.num_inference_steps:
            raise ValueError(f"refl_min_step must be in 0..{self.num_inference_steps - 1}, got {refl_min_step}")
        self.scale = self.vae_scale
        self.prediction_type = self.scheduler.config.prediction_type
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.detach().clone().float(),
                             persistent=False)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", revision: Optional[str] = None,
                        torch_dtype: torch.dtype = torch.float32, **kwargs) -> "UpscaleSDPolicy":
        """Components of a ``StableDiffusionUpscalePipeline`` folder or Hub id."""
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

        kw = {"revision": revision}
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", torch_dtype=torch_dtype, **kw)
        unet = UNet2DConditionModel.from_pretrained(path_or_id, subfolder="unet", torch_dtype=torch_dtype, **kw)
        sched = DDIMScheduler.from_pretrained(path_or_id, subfolder="scheduler", **kw)
        low = DDPMScheduler.from_pretrained(path_or_id, subfolder="low_res_scheduler", **kw)
        emb = _load_prompt_embeds(path_or_id, prompt, unet.config.cross_attention_dim, kw)
        return cls(vae, unet, sched, low, emb.to(torch_dtype), base_model=str(path_or_id), **kwargs)

    def _unet(self, latents: torch.Tensor, t: torch.Tensor, image: torch.Tensor, noise_level: torch.Tensor,
              emb: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([self.scheduler.scale_model_input(latents, t), image], dim=1)
        return self.unet(inp, t, encoder_hidden_states=emb, class_labels=noise_level).sample

    def forward(self, lr: torch.Tensor, generator: Optional[torch.Generator] = None,
                refl_step: Optional[int] = None) -> dict[str, Any]:
        b, dev, dt = lr.shape[0], lr.device, lr.dtype
        emb = self._embeds(b, dt)

        def randn(shape):
            return torch.randn(shape, generator=generator, device="cpu" if generator is None else generator.device,
                               dtype=torch.float32).to(dev, dt)

        image = lr * 2 - 1
        noise_level = torch.full((b,), self.noise_level, device=dev, dtype=torch.long)
        image = self.low_res_scheduler.add_noise(image, randn(image.shape), noise_level)
        if refl_step is None:
            if generator is not None:
                refl_step = int(torch.randint(self.refl_min_step, self.num_inference_steps, (1,),
                                              generator=generator, device=generator.device).item())
            else:
                refl_step = int(torch.randint(self.refl_min_step, self.num_inference_steps, (1,)).item())
        self.scheduler.set_timesteps(self.num_inference_steps, device=dev)
        timesteps = self.scheduler.timesteps
        latents = randn((b, self.unet.config.out_channels, *lr.shape[-2:])) * self.scheduler.init_noise_sigma
        with torch.no_grad():
            for t in timesteps[:refl_step]:
                out = self._unet(latents, t, image, noise_level, emb)
                latents = self.scheduler.step(out, t, latents).prev_sample
        t = timesteps[refl_step]
        out = self._unet(latents.detach(), t, image, noise_level, emb)
        z0 = predict_x0(out, latents.detach(), self.alphas_cumprod, int(t), self.prediction_type)
        return {"images": self.vae_decode(z0), "latents": z0}

    def encode_target(self, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae_encode(hr)
