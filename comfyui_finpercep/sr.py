"""One-step diffusion SR with ComfyUI objects (MODEL + VAE), as the trainer's one-step policy runs it.

OSEDiff-style (PAPER.md §4, "a one-step SD-based SR model"):

    x_up = bicubic(x_lr, upscale_by)                       pixels in [0, 1]
    z    = scale_factor * VAE.encode(x_up)                 (the latent's mode, deterministic)
    eps  = UNet(z, t, text)                                t = 999 by default
    z0   = (z - sqrt(1 - a_t) * eps) / sqrt(a_t)           DDPM x0-prediction (scheduler.step(...).pred_original_sample)
    x_sr = VAE.decode(z0 / scale_factor)

In ComfyUI's sigma parameterisation (``sigma_t = sqrt((1 - a_t) / a_t)``) the sampler state is
``x = z * sqrt(sigma^2 + 1)``; ``apply_model`` divides it by ``sqrt(sigma^2 + 1)`` (so the UNet sees
``z``) and returns exactly ``z0`` for eps- and v-prediction models; LoRA patches of the MODEL are applied by ComfyUI's model
management when the model is loaded. Imported only inside ComfyUI (comfy.* is imported lazily).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _input_error(node: str, name: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{node}: input '{name}': {problem}. Fix: {fix}.")


def context_from(positive: Any, batch: int, context_dim: int, node: str) -> torch.Tensor:
    """Cross-attention context ``[B, T, C]`` from a CONDITIONING (first entry), or zeros ``[B, 77, C]``."""
    if positive is None:
        return torch.zeros(batch, 77, context_dim)
    try:
        cond = positive[0][0]
    except (TypeError, IndexError, KeyError) as e:
        raise _input_error(node, "positive", "it is not a CONDITIONING", "connect a CLIP Text Encode output or leave it empty") from e
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[-1] != context_dim:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise _input_error(node, "positive", f"its embedding is {shape} but the model expects [*, *, {context_dim}]",
                           "encode the prompt with the CLIP of the same checkpoint as 'model'")
    return cond.expand(batch, -1, -1) if cond.shape[0] == 1 else cond[:batch]


def one_step_latent(model: Any, z: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
    """``z0`` from a scaled latent ``z`` (``[B, 4, h, w]``) in one UNet call at ``timestep``."""
    import comfy.model_management as mm

    ms = model.get_model_object("model_sampling")
    mm.load_models_gpu([model])
    device = model.load_device
    sigma = ms.sigma(torch.tensor([float(timestep)])).to(device).float().expand(z.shape[0])
    x = z.to(device).float() * (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()
    topts = dict(model.model_options.get("transformer_options", {}))
    with torch.no_grad():
        z0 = model.model.apply_model(x, sigma, c_crossattn=context.to(device), transformer_options=topts)
    return z0.float()


def one_step_sr(model: Any, vae: Any, image: torch.Tensor, upscale_by: float = 4.0, timestep: int = 999,
                positive: Any = None, node: str = "FinPercep One-step SR") -> torch.Tensor:
    """``[B, H, W, 3]`` in [0, 1] -> ``[B, round(H*s), round(W*s), 3]`` super-resolved."""
    import comfy.model_sampling
    import comfy.utils

    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, comfy.model_sampling.EPS) or not hasattr(ms, "sigmas"):
        raise _input_error(node, "model", f"{type(ms).__name__} sampling is not supported (flow-matching / continuous models)",
                           "connect an SD 1.x / 2.x UNet (eps or v prediction) with its SR adapter")
    unet_config = model.model.model_config.unet_config
    context_dim = unet_config.get("context_dim")
    if not context_dim:
        raise _input_error(node, "model", "it has no cross-attention (context_dim)", "connect an SD 1.x / 2.x text-conditioned UNet")
    b, h, w, _ = image.shape
    th, tw = int(round(h * upscale_by)), int(round(w * upscale_by))
    x = image[..., :3].movedim(-1, 1).float()
    if (th, tw) != (h, w):
        x = comfy.utils.common_upscale(x, tw, th, "bicubic", "disabled")
    x = x.clamp(0, 1)
    # Pad to what the VAE and the UNet's downsampling need, crop after decoding.
    ratio = int(getattr(vae, "downscale_ratio", 8)) if not callable(getattr(vae, "downscale_ratio", 8)) else 8
    levels = len(unet_config.get("channel_mult", [1]))
    m = ratio * (2 ** max(0, levels - 1))
    ph, pw = math.ceil(th / m) * m - th, math.ceil(tw / m) * m - tw
    if ph or pw:
        mode = "reflect" if ph < th and pw < tw else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    latent = vae.encode(x.movedim(1, -1))
    z = model.model.process_latent_in(latent)
    context = context_from(positive, b, int(context_dim), node)
    z0 = one_step_latent(model, z, timestep, context)
    out = vae.decode(model.model.process_latent_out(z0.cpu()))
    if out.ndim == 5:
        out = out.reshape(-1, *out.shape[-3:])
    return out[:, :th, :tw, :3].clamp(0, 1).float()


def apply_sr_adapter(model: Any, file: Any, strength: float = 1.0, node: str = "FinPercep Load SR Adapter",
                     input_name: str = "adapter"):
    """A clone of ComfyUI MODEL ``model`` with the SR adapter in ``file`` applied at ``strength``.

    The adapter's PEFT keys are converted to kohya names (:mod:`.lora_convert`); every layer must map
    to a weight of ``model`` with matching shapes, else the error names the input and says the adapter
    belongs to another base model. Returns ``(patched, report, converted_state_dict, base_model)``."""
    import comfy.lora

    from . import lora_convert as lc

    try:
        tensors, metadata = lc.read_adapter_file(file)
        converted, report = lc.convert_peft_to_kohya(tensors, metadata)
    except lc.AdapterFormatError as e:
        raise _input_error(node, input_name, str(e), "pick a FinPercep SR adapter (a diffusers LoRA folder)") from e
    base_model = lc.model_card_base_model(Path(file).parent) or metadata.get("base_model")
    trained_for = f" (its model card says base_model: {base_model})" if base_model else ""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight")
    layers = sorted({k[: -len(s)] for k in converted for s in suffixes if k.endswith(s)})
    missing = [n for n in layers if n not in key_map]
    if missing:
        raise _input_error(node, "model", f"{len(missing)} of {len(layers)} adapter layers do not exist in the connected model "
                           f"(e.g. {missing[0]}): the adapter was trained for another base model{trained_for}",
                           "connect the base checkpoint the adapter was trained on, or pick an adapter made for this model")
    sd = model.model.state_dict()
    for n in layers:
        w = sd.get(key_map[n])
        up = converted.get(f"{n}.lora_up.weight", converted.get(f"{n}.lora_B.weight"))
        down = converted.get(f"{n}.lora_down.weight", converted.get(f"{n}.lora_A.weight"))
        if w is None or up is None or down is None:
            continue
        if up.shape[0] != w.shape[0] or (w.ndim > 1 and down.shape[1] != w.shape[1]):
            raise _input_error(node, "model", f"layer {n} is {tuple(w.shape)} in the model but the adapter expects "
                               f"[{up.shape[0]}, {down.shape[1]}, ...]: the adapter was trained for another base model{trained_for}",
                               "connect the base checkpoint the adapter was trained on")
    patches = comfy.lora.load_lora(converted, key_map)
    if len(patches) != len(layers):
        raise RuntimeError(f"{node}: ComfyUI loaded {len(patches)} of {len(layers)} adapter layers; please report this bug")
    patched = model.clone()
    applied = patched.add_patches(patches, float(strength))
    if len(applied) != len(layers):
        raise _input_error(node, "model", f"only {len(applied)} of {len(layers)} adapter layers could be applied",
                           "connect the base checkpoint the adapter was trained on")
    return patched, report, converted, base_model


VAE_OUT_PREFIX = "finpercep_vae_encoder."


def apply_vae_encoder_lora(vae: Any, file: Any, strength: float = 1.0, node: str = "FinPercep Load SR Adapter"):
    """A copy of ComfyUI VAE ``vae`` with the adapter's VAE-encoder LoRA (``vae_encoder_lora.safetensors``,
    PEFT keys ``vae.encoder.<diffusers module>.lora_A.weight``) applied at ``strength``.

    The diffusers module names map to ComfyUI's (ldm) SD-VAE names with ComfyUI's own conversion
    table; a VAE without those layers (TAESD, another family) is refused. Returns ``(vae, report)``."""
    import copy

    import comfy.lora
    from comfy.diffusers_convert import convert_vae_state_dict

    from . import lora_convert as lc

    try:
        tensors, metadata = lc.read_adapter_file(file)
        converted, report = lc.convert_peft_to_kohya(tensors, metadata, prefixes=("vae.encoder.",), out_prefix=VAE_OUT_PREFIX,
                                                     flatten=False, metadata_prefix="vae")
    except lc.AdapterFormatError as e:
        raise _input_error(node, "adapter", f"its VAE-encoder part {Path(file).name}: {e}", "re-export the adapter with the trainer") from e
    fake = {f"encoder.{m}.weight": torch.zeros(1) for m in report.modules}
    ldm = list(convert_vae_state_dict(fake).keys())
    sd = vae.first_stage_model.state_dict()
    key_map = {f"{VAE_OUT_PREFIX}{m}": k for m, k in zip(report.modules, ldm)}
    missing = [m for m, k in zip(report.modules, ldm) if k not in sd]
    if missing:
        raise _input_error(node, "vae", f"the adapter adapts the VAE encoder, but {len(missing)} of its {len(ldm)} layers "
                           f"(e.g. encoder.{missing[0]}) do not exist in the connected VAE ({type(vae.first_stage_model).__name__})",
                           "connect the Stable Diffusion VAE the adapter was trained with (not TAESD or another family)")
    for m, k in zip(report.modules, ldm):
        w = sd[k]
        up, down = converted[f"{VAE_OUT_PREFIX}{m}.lora_up.weight"], converted[f"{VAE_OUT_PREFIX}{m}.lora_down.weight"]
        if up.shape[0] != w.shape[0] or down.shape[1] != w.shape[1]:
            raise _input_error(node, "vae", f"VAE layer encoder.{m} is {tuple(w.shape)} but the adapter expects "
                               f"[{up.shape[0]}, {down.shape[1]}, ...]", "connect the VAE the adapter was trained with")
    patches = comfy.lora.load_lora(converted, key_map, log_missing=False)
    if len(patches) != len(key_map):
        raise RuntimeError(f"{node}: ComfyUI loaded {len(patches)} of {len(key_map)} VAE adapter layers; please report this bug")
    new = copy.copy(vae)
    new.patcher = vae.patcher.clone()
    applied = new.patcher.add_patches(patches, float(strength))
    if len(applied) != len(key_map):
        raise _input_error(node, "vae", f"only {len(applied)} of {len(key_map)} VAE adapter layers could be applied",
                           "connect the VAE the adapter was trained with")
    return new, report
