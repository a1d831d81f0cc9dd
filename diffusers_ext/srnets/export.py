"""Feed-forward upscalers as plain safetensors state dicts in the layout spandrel recognizes.

spandrel is the model loader of ComfyUI's core ``Load Upscale Model`` node (and of chaiNNer). A
file written here loads there with no custom node, and runs in ``Upscale Image (using Model)``
with the same output as our own module::

    net = merged_network(policy)           # LoRA folded into the convolutions: a plain nn.Module copy
    save_upscaler(net, "4x-animevideov3-finpercep.safetensors", metadata={"finpercep_srnet": ...})
    net = load_upscaler(path)              # back into our modules (no spandrel, no torchvision)

Layouts (the parameter names of BasicSR / Real-ESRGAN, which :mod:`.archs` keeps):

* :class:`~.archs.SRVGGNetCompact` with PReLU activations -> spandrel ``Compact``
  (``body.0.weight`` + ``body.1.weight``; ``num_conv`` from the body length, the scale from the
  last convolution's channels).
* :class:`~.archs.RRDBNet` -> spandrel ``ESRGAN`` (``conv_first``, ``body.<i>.rdb<j>.conv<k>``,
  ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``; x2 / x1 through the pixel-unshuffled
  input channels, growth channels 32 as spandrel builds them).

Not expressible, refused with the reason: waifu2x ``UpConv7`` (no spandrel architecture), the
realesr-animevideov3 x2 / x3 networks (the x4 net followed by a bicubic downscale), and Compact
nets with ReLU / LeakyReLU (spandrel only detects PReLU ones). Files are written mode 0644.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .archs import RRDBNet, SRVGGNetCompact, UpConv7

__all__ = ["UpscalerFormatError", "check_exportable", "export_policy", "load_upscaler", "merged_network",
           "save_upscaler", "spandrel_architecture", "upscaler_state_dict"]

#: the RRDB growth channels spandrel's ESRGAN builds (it does not read them from the file)
SPANDREL_RRDB_GROWTH = 32


class UpscalerFormatError(ValueError):
    """A network or a file that is not (or cannot be) in a spandrel-recognized layout."""


def merged_network(net_or_policy: nn.Module) -> nn.Module:
    """A float32 CPU copy of a network (or of a feed-forward policy's ``.net``) with every peft LoRA
    layer merged into its base convolution and removed, so the state dict has the plain names.
    The argument is left unchanged."""
    net = getattr(net_or_policy, "net", net_or_policy)
    net = copy.deepcopy(net).cpu().float().eval()
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: there can be no LoRA layers either
        return net
    for name, module in list(net.named_modules()):
        if not name or not isinstance(module, LoraLayer):
            continue
        if module.active_adapters:
            module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, module.get_base_layer())
    leftover = [k for k in net.state_dict() if "lora_" in k or ".base_layer." in k]
    if leftover:
        raise UpscalerFormatError(f"LoRA layers left after merging: {leftover[:4]}")
    return net


def check_exportable(net: nn.Module) -> str:
    """The spandrel architecture id (``"Compact"`` or ``"ESRGAN"``) ``net`` exports to (after merging,
    for a network with LoRA layers); raises :class:`UpscalerFormatError` saying why when it cannot."""
    if isinstance(net, SRVGGNetCompact):
        if net.scale != net.upscale:
            raise UpscalerFormatError(
                f"this SRVGGNetCompact is the x{net.upscale} network followed by a bicubic resize to x{net.scale} "
                f"(as the ncnn realesr-animevideov3-x2/x3 files are built), which spandrel's Compact cannot express; "
                f"fine-tune and export realesr-animevideov3-x4 instead")
        if not isinstance(net.body[1], nn.PReLU):
            raise UpscalerFormatError("spandrel detects Compact networks by their PReLU weights (body.1.weight); "
                                      "this one uses another activation")
        return "Compact"
    if isinstance(net, RRDBNet):
        if len(net.body) == 0:
            raise UpscalerFormatError("RRDBNet without RRDB blocks has no spandrel layout")
        conv = net.body[0].rdb1.conv1
        grow = (conv.get_base_layer() if hasattr(conv, "get_base_layer") else conv).out_channels  # LoRA-wrapped too
        if grow != SPANDREL_RRDB_GROWTH:
            raise UpscalerFormatError(f"RRDBNet with {grow} growth channels: spandrel's ESRGAN always builds "
                                      f"{SPANDREL_RRDB_GROWTH}")
        return "ESRGAN"
    if isinstance(net, UpConv7):
        raise UpscalerFormatError("waifu2x UpConv7 has no spandrel architecture (ComfyUI's Load Upscale Model "
                                  "cannot load it); fine-tune a Real-ESRGAN network (realesr-animevideov3-x4, "
                                  "realesrgan-x4plus) to get a ComfyUI upscaler")
    raise UpscalerFormatError(f"{type(net).__name__} is not a network with a spandrel layout here "
                              "(SRVGGNetCompact with PReLU, or RRDBNet)")


def upscaler_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The plain float32 state dict of a merged, exportable network (spandrel's key names)."""
    check_exportable(net)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in net.state_dict().items()}
    bad = [k for k in sd if "lora_" in k or "base_layer" in k]
    if bad:
        raise UpscalerFormatError(f"the network still has LoRA layers ({bad[:3]}): pass it through merged_network first")
    return sd


def spandrel_architecture(sd: Mapping[str, Any]) -> Optional[str]:
    """``"Compact"`` / ``"ESRGAN"`` when the keys match spandrel's detection of those, else ``None``."""
    if "body.0.weight" in sd and "body.1.weight" in sd:
        return "Compact"
    if all(k in sd for k in ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.weight")):
        return "ESRGAN"
    return None


def _public(path: Path) -> None:
    """Mode 0644 (safetensors writes 0600 through its temporary file)."""
    os.chmod(path, 0o644)


def save_upscaler(net: nn.Module, path: str | os.PathLike, metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``net`` (already merged) as a safetensors state dict spandrel loads; atomic, mode 0644.

    ``metadata`` (strings or JSON-able values) goes into the safetensors header next to
    ``finpercep_arch`` / ``finpercep_scale``."""
    from safetensors.torch import save_file

    arch = check_exportable(net)
    sd = upscaler_state_dict(net)
    meta = {"format": "pt", "finpercep_arch": type(net).__name__, "spandrel_architecture": arch,
            "finpercep_scale": str(int(net.scale))}
    for k, v in (metadata or {}).items():
        if v is not None:
            meta[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UpscalerFormatError(f"{path}: name the file *.safetensors (ComfyUI lists upscale models by extension)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(sd, str(tmp), metadata=meta)
    _public(tmp)
    os.replace(tmp, path)
    return path


def _seq_len(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = [int(m.group(1)) for k in sd for m in [pat.match(k)] if m]
    return max(idx) + 1 if idx else 0


def _build(sd: Mapping[str, torch.Tensor], name: str) -> nn.Module:
    arch = spandrel_architecture(sd)
    if arch == "Compact":
        n = _seq_len(sd, "body")
        first, last = sd["body.0.weight"], sd[f"body.{n - 1}.weight"]
        in_ch, feat = int(first.shape[1]), int(first.shape[0])
        scale = math.isqrt(int(last.shape[0]) // in_ch)
        if scale * scale * in_ch != last.shape[0]:
            raise UpscalerFormatError(f"{name}: last Compact conv has {last.shape[0]} channels, not {in_ch} x scale^2")
        return SRVGGNetCompact(num_in_ch=in_ch, num_out_ch=in_ch, num_feat=feat, num_conv=(n - 3) // 2, upscale=scale)
    if arch == "ESRGAN":
        in_ch = int(sd["conv_first.weight"].shape[1])
        out_ch = int(sd["conv_last.weight"].shape[0])
        unshuffle = {1: 4, 4: 2, 16: 1}.get(in_ch // max(out_ch, 1))
        if unshuffle is None or in_ch % out_ch:
            raise UpscalerFormatError(f"{name}: conv_first takes {in_ch} channels for {out_ch} out: not x4/x2/x1")
        return RRDBNet(num_in_ch=out_ch, num_out_ch=out_ch, scale=unshuffle, num_feat=int(sd["conv_first.weight"].shape[0]),
                       num_block=_seq_len(sd, "body"), num_grow_ch=int(sd["body.0.rdb1.conv1.weight"].shape[0]))
    raise UpscalerFormatError(
        f"{name}: not an upscaler state dict this package can run: expected Real-ESRGAN Compact keys "
        f"(body.0.weight, body.1.weight, ...) or RRDBNet keys (conv_first, body.0.rdb1.conv1, conv_body, conv_last); "
        f"found {sorted(sd)[:4]}")


def load_upscaler(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Our module (eval mode, ``.scale``) for a file of :func:`save_upscaler`, or any Real-ESRGAN
    Compact / RRDBNet safetensors state dict (``params_ema`` / ``params`` nesting is not used by
    safetensors files). Raises :class:`UpscalerFormatError` naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upscaler {path} does not exist")
    if path.suffix != ".safetensors":
        raise UpscalerFormatError(f"{path}: only .safetensors upscalers are read (no pickles)")
    try:
        sd = load_file(str(path))
    except Exception as e:  # truncated / not a safetensors file
        raise UpscalerFormatError(f"{path}: not a readable safetensors file ({e})") from None
    net = _build(sd, str(path))
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise UpscalerFormatError(f"{path}: keys do not fit the detected network: missing {missing[:4]}, "
                                  f"unexpected {unexpected[:4]}")
    return net.to(device).eval().requires_grad_(False)


def export_policy(policy: nn.Module, path: str | os.PathLike, metadata: Optional[Mapping[str, Any]] = None,
                  check: bool = True, atol: float = 1e-4) -> Path:
    """Merge a feed-forward policy's LoRA, save it with :func:`save_upscaler` and (``check``) read the
    file back and compare it with the policy on a fixed random input: an export that would not give
    the policy's images raises instead of being left behind."""
    net = merged_network(policy)
    meta = {"finpercep_srnet": getattr(policy, "net_name", None), **(metadata or {})}
    out = save_upscaler(net, path, meta)
    if check:
        src = getattr(policy, "net", policy)
        dev = next(src.parameters()).device
        x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        was = src.training
        src.eval()
        try:
            with torch.no_grad():
                ref = src(x.to(dev, next(src.parameters()).dtype)).float().cpu()
                got = load_upscaler(out)(x)
        finally:
            src.train(was)
        # relative to the output's magnitude: a diverged policy (outputs far outside [0, 1]) still
        # exports exactly, and float32 rounding grows with the values
        scale = max(1.0, float(ref.abs().max()))
        err = float((ref - got).abs().max())
        if not err <= atol * scale:
            out.unlink(missing_ok=True)
            raise UpscalerFormatError(f"the exported upscaler differs from the policy by {err:.3g} "
                                      f"(> {atol:g} x output scale {scale:.3g})")
    return out
