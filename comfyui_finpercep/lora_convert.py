"""Convert FinPercep SR adapters (diffusers / PEFT LoRA) to the key format ComfyUI loads.

Our adapters are diffusers LoRA folders (DESIGN.md §3): ``pytorch_lora_weights.safetensors`` with
PEFT keys such as ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight``
(or diffusers' names ``...to_q.lora.down.weight`` / ``.lora.up.weight``, which the trainer's
``save_lora`` writes through ``convert_state_dict_to_diffusers``) and the PEFT ``LoraConfig`` in the
safetensors metadata (``lora_adapter_metadata``). ComfyUI's LoRA
loader maps kohya names (``lora_unet_<diffusers module, dots as underscores>``) and
``diffusion_model.*`` names on SD UNets, but silently skips PEFT ``unet.*.lora_A`` keys ("lora key
not loaded"). :func:`convert_peft_to_kohya` rewrites them as::

    lora_unet_<module>.lora_down.weight   <- <module>.lora_A.weight
    lora_unet_<module>.lora_up.weight     <- <module>.lora_B.weight
    lora_unet_<module>.alpha              =  scale * rank  (ComfyUI scales by alpha / rank)

with the scale PEFT itself uses: ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``),
``alpha_pattern`` honoured per module. An adapter saved without metadata gets scale 1 (alpha = r),
which is what diffusers does when it loads such a file.

Pure torch + safetensors: importable and testable outside ComfyUI.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
VAE_LORA_WEIGHT_NAME = "vae_encoder_lora.safetensors"  # optional VAE-encoder part (trainer's --lora_vae_encoder)
METADATA_KEY = "lora_adapter_metadata"
UNET_PREFIXES = ("unet.", "base_model.model.")
_OTHER_PREFIXES = ("text_encoder.", "text_encoder_2.", "vae.", "transformer.")
_PEFT_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up"
    r"|lora_magnitude_vector|alpha)(?:\.(?P<name>weight|bias|default))?$"
)
# diffusers' own names (convert_state_dict_to_diffusers, which the trainer's save_lora applies) -> PEFT's
_KIND = {"lora.down": "lora_A", "lora.up": "lora_B", "lora_linear_layer.down": "lora_A", "lora_linear_layer.up": "lora_B"}


class AdapterFormatError(ValueError):
    """The adapter file is not a LoRA this converter understands; the message says what to do."""


@dataclass
class ConversionReport:
    """What :func:`convert_peft_to_kohya` did."""

    modules: list[str] = field(default_factory=list)  # diffusers module names, in file order
    ranks: dict[str, int] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    alpha_source: str = "metadata"  # "metadata" | "alpha keys" | "none (scale 1, as diffusers)"
    ignored_prefixes: dict[str, int] = field(default_factory=dict)  # e.g. {"text_encoder.": 12}
    already_comfy: bool = False

    def summary(self) -> str:
        ranks = sorted(set(self.ranks.values()))
        scales = sorted({round(s, 6) for s in self.scales.values()})
        text = (f"{len(self.modules)} LoRA modules, rank {ranks[0] if len(ranks) == 1 else ranks}, "
                f"scale {scales[0] if len(scales) == 1 else scales} (alpha from {self.alpha_source})")
        if self.ignored_prefixes:
            text += "; not applied to the MODEL: " + ", ".join(f"{n} {p}* keys" for p, n in self.ignored_prefixes.items())
        return text


def read_adapter_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of an adapter file (safetensors only: pickles can run code)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterFormatError(
            f"{path.name}: only .safetensors adapters are loaded (pickled .bin/.pt files can run code); "
            "re-save it with save_lora_adapter(..., safe_serialization=True)"
        )
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, metadata


def adapter_config(metadata: Mapping[str, str] | None, prefix: str = "unet") -> Optional[dict[str, Any]]:
    """The PEFT ``LoraConfig`` dict stored by diffusers: un-prefixed (``save_lora_adapter``) or packed
    with ``unet.`` (``save_lora_weights(..., unet_lora_adapter_metadata=...)``). None when absent."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"the adapter's '{METADATA_KEY}' metadata is not valid JSON ({e})") from e
    packed = {k[len(prefix) + 1:]: v for k, v in cfg.items() if k.startswith(prefix + ".")}
    if packed:
        return packed
    if any(k.split(".")[0] in ("text_encoder", "text_encoder_2", "transformer") for k in cfg):
        return None
    return cfg


def _pattern_value(patterns: Mapping[str, Any] | None, module: str) -> Any:
    """PEFT's rule: a pattern key matches a module name when the name ends with it (at a dot boundary)
    or it matches as a regex over such a suffix."""
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module) or module == pattern:
            return value
    return None


def is_kohya_unet(state_dict: Mapping[str, Any]) -> bool:
    return bool(state_dict) and all(k.startswith(("lora_unet_", "diffusion_model.")) for k in state_dict)


def convert_peft_to_kohya(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: Optional[torch.dtype] = None,
    prefixes: tuple[str, ...] = UNET_PREFIXES,
    out_prefix: str = "lora_unet_",
    flatten: bool = True,
    metadata_prefix: str = "unet",
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """PEFT / diffusers UNet LoRA -> kohya ``lora_unet_*`` keys with per-module ``alpha``.

    Keys of other components (``text_encoder.*``, ``vae.*``) are left out and counted in the report.
    A file that already uses kohya / ``diffusion_model.*`` UNet keys is returned unchanged.
    ``prefixes`` / ``out_prefix`` / ``flatten`` select another component, e.g. the VAE encoder part
    (``vae.encoder.*`` -> ``<out_prefix><module with dots>``).
    """
    report = ConversionReport()
    if prefixes == UNET_PREFIXES and is_kohya_unet(state_dict):
        report.already_comfy = True
        report.alpha_source = "the file's alpha keys"
        for key, t in state_dict.items():
            for s in (".lora_down.weight", ".lora_A.weight"):
                if key.endswith(s):
                    module = key[: -len(s)]
                    report.modules.append(module)
                    report.ranks[module] = int(t.shape[0])
                    alpha = state_dict.get(f"{module}.alpha")
                    report.scales[module] = float(alpha) / int(t.shape[0]) if alpha is not None else 1.0
        return dict(state_dict), report
    cfg = adapter_config(metadata, metadata_prefix)
    if cfg is not None and cfg.get("use_dora"):
        raise AdapterFormatError("this adapter uses DoRA (use_dora=True), which the converter does not support; "
                                 "train it with use_dora=False or merge it into the base model")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        body = key
        for p in prefixes:
            if body.startswith(p):
                body = body[len(p):]
                break
        else:
            other = next((p for p in _OTHER_PREFIXES if key.startswith(p) and p not in prefixes), None)
            if other is not None:
                report.ignored_prefixes[other] = report.ignored_prefixes.get(other, 0) + 1
                continue
        m = _PEFT_KEY.match(body)
        if m is None:
            raise AdapterFormatError(
                f"key {key!r} is not a LoRA key (expected '<unet module>.lora_A.weight' / '.lora_B.weight' or "
                "'.lora.down.weight' / '.lora.up.weight'); "
                "save the adapter with diffusers' save_lora_weights or unet.save_lora_adapter"
            )
        kind = _KIND.get(m["kind"], m["kind"])
        if kind == "lora_magnitude_vector":
            raise AdapterFormatError(f"key {key!r} belongs to a DoRA adapter, which the converter does not support")
        if m["name"] == "bias":
            raise AdapterFormatError(f"key {key!r}: LoRA biases (lora_bias=True) are not supported by ComfyUI's loader")
        groups.setdefault(m["module"], {})[kind] = tensor
    if not groups:
        raise AdapterFormatError(
            f"the adapter has no LoRA keys for this part (expected '{prefixes[0]}<module>.lora_A.weight'); "
            + (f"it only holds {', '.join(report.ignored_prefixes)} keys" if report.ignored_prefixes else "it is empty")
        )
    has_alpha_keys = any("alpha" in g for g in groups.values())
    report.alpha_source = "metadata" if cfg is not None else ("alpha keys" if has_alpha_keys else "none (scale 1, as diffusers)")
    out: dict[str, torch.Tensor] = {}
    for module, g in groups.items():
        if "lora_A" not in g or "lora_B" not in g:
            missing = "lora_B" if "lora_A" in g else "lora_A"
            raise AdapterFormatError(f"module {module!r} has no {missing} weight: the adapter file is incomplete")
        down, up = g["lora_A"], g["lora_B"]
        rank = int(down.shape[0])
        if up.shape[1] != rank:
            raise AdapterFormatError(f"module {module!r}: lora_A has rank {rank} but lora_B expects {up.shape[1]}")
        if cfg is not None:
            alpha = _pattern_value(cfg.get("alpha_pattern"), module)
            alpha = float(cfg.get("lora_alpha", cfg.get("r", rank)) if alpha is None else alpha)
            scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        elif "alpha" in g:
            scale = float(g["alpha"]) / rank
        else:
            scale = 1.0
        name = out_prefix + (module.replace(".", "_") if flatten else module)
        out[f"{name}.lora_down.weight"] = down if dtype is None else down.to(dtype)
        out[f"{name}.lora_up.weight"] = up if dtype is None else up.to(dtype)
        out[f"{name}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
        report.modules.append(module)
        report.ranks[module] = rank
        report.scales[module] = scale
    return out, report


def find_adapter_file(path: str | Path) -> Path:
    """The weights file of an adapter given as a file or as a diffusers LoRA folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        preferred = path / LORA_WEIGHT_NAME
        if preferred.is_file():
            return preferred
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return candidates[0]
        raise AdapterFormatError(
            f"{path} has no {LORA_WEIGHT_NAME}" + (f" and several .safetensors files ({', '.join(c.name for c in candidates)}); pick one"
                                                  if candidates else "; it is not a diffusers LoRA folder")
        )
    raise FileNotFoundError(f"{path} does not exist")


def model_card_base_model(folder: str | Path) -> Optional[str]:
    """``base_model`` from the adapter's README.md front matter (a string or the first list item)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    lines = m.group(1).splitlines()
    for i, line in enumerate(lines):
        km = re.match(r"^base_model:\s*(.*)$", line)
        if km:
            value = km.group(1).strip().strip("'\"")
            if value:
                return value
            for nxt in lines[i + 1:]:
                im = re.match(r"^\s*-\s*(.+)$", nxt)
                if im:
                    return im.group(1).strip().strip("'\"")
                if nxt.strip():
                    break
    return None


def save_converted(state_dict: Mapping[str, torch.Tensor], path: str | Path, source: str = "",
                   base_model: Optional[str] = None) -> Path:
    """Write a converted (kohya-key) adapter that ComfyUI's stock LoraLoader loads."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "finpercep_converted_from": str(source)}
    if base_model:
        meta["base_model"] = base_model
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path
