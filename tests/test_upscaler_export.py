"""Feed-forward policies exported as merged upscalers in spandrel's layout (ComfyUI's core Load Upscale
Model), read back by our loader (and by spandrel where it imports), and `finpercep upscale`.

The same files through spandrel's ModelLoader and ComfyUI's own upscale node, in ComfyUI's
environment: tests/test_comfyui_server.py::test_spandrel_loads_the_exported_upscaler_like_our_policy.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diffusers_ext.policies import FeedForwardSRPolicy
from diffusers_ext.srnets import RRDBNet, SRVGGNetCompact, UpConv7
from diffusers_ext.srnets.export import (UpscalerFormatError, check_exportable, export_policy, load_upscaler,
                                         merged_network, save_upscaler, spandrel_architecture)
from diffusers_ext import upscale_cli

ROOT = Path(__file__).resolve().parent.parent


def _policy(net, name="custom", seed=0) -> FeedForwardSRPolicy:
    """A policy with a LoRA whose B matrices are random (an adapter at init would change nothing)."""
    torch.manual_seed(seed)
    policy = FeedForwardSRPolicy(net, name=name).add_lora(rank=2, alpha=5.0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return policy.eval()


NETS = {
    "compact_x4": lambda: SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4),
    "compact_x2": lambda: SRVGGNetCompact(num_feat=8, num_conv=3, upscale=2),
    "rrdb_x4": lambda: RRDBNet(num_feat=8, num_block=2, num_grow_ch=32, scale=4),
    "rrdb_x2": lambda: RRDBNet(num_feat=8, num_block=1, num_grow_ch=32, scale=2),
}


@pytest.mark.parametrize("kind", sorted(NETS))
def test_merged_file_equals_the_policy(kind, tmp_path):
    import copy

    net0 = NETS[kind]()
    base = copy.deepcopy(net0).eval()
    policy = _policy(net0)
    path = export_policy(policy, tmp_path / f"{kind}.safetensors", {"note": "test"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(base.state_dict())  # the plain names: no lora_A/B, no base_layer
    assert spandrel_architecture(keys) == ("Compact" if kind.startswith("compact") else "ESRGAN")
    assert meta["spandrel_architecture"] == spandrel_architecture(keys) and meta["note"] == "test"
    assert meta["finpercep_scale"] == str(policy.scale)
    net = load_upscaler(path)
    assert type(net) is type(base)
    x = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = policy(x)["images"]
        got = net(x).clamp(0, 1)
        before = base(x).clamp(0, 1)
    assert got.shape == ref.shape == (2, 3, 12 * policy.scale, 20 * policy.scale)
    assert torch.allclose(got, ref, atol=2e-6), float((got - ref).abs().max())
    assert float((before - ref).abs().max()) > 1e-3, "the adapter changed nothing: the comparison says nothing"
    assert any("lora_" in n for n, _ in policy.named_parameters()), "merging must leave the policy alone"


def test_spandrel_model_loader_reads_the_files(tmp_path):
    """Where spandrel imports (it needs torchvision and einops: ComfyUI's venv has them, ours may not)."""
    spandrel = pytest.importorskip("spandrel", exc_type=ImportError)
    for kind in ("compact_x4", "rrdb_x4", "rrdb_x2"):
        policy = _policy(NETS[kind]())
        path = export_policy(policy, tmp_path / f"{kind}.safetensors")
        desc = spandrel.ModelLoader().load_from_file(str(path))
        assert desc.architecture.id == ("Compact" if kind.startswith("compact") else "ESRGAN")
        assert desc.scale == policy.scale
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            assert torch.allclose(desc.model.eval()(x).clamp(0, 1), policy(x)["images"], atol=2e-6)


def test_what_spandrel_cannot_express_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UpscalerFormatError, match="bicubic.*realesr-animevideov3-x4"):
        check_exportable(SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4, output_scale=2))
    with pytest.raises(UpscalerFormatError, match="PReLU"):
        check_exportable(SRVGGNetCompact(num_feat=8, num_conv=2, act_type="relu"))
    with pytest.raises(UpscalerFormatError, match="UpConv7.*Real-ESRGAN"):
        save_upscaler(UpConv7(), tmp_path / "w.safetensors")
    with pytest.raises(UpscalerFormatError, match="growth channels"):
        check_exportable(RRDBNet(num_feat=8, num_block=1, num_grow_ch=16))
    with pytest.raises(UpscalerFormatError, match="merged_network"):
        save_upscaler(_policy(NETS["compact_x4"]()).net, tmp_path / "unmerged.safetensors")
    assert not list(tmp_path.iterdir())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UpscalerFormatError, match="bad.safetensors.*not a readable"):
        load_upscaler(bad)
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UpscalerFormatError, match="other.safetensors.*Compact"):
        load_upscaler(tmp_path / "other.safetensors")


def test_tiled_upscale_matches_the_whole_image_inside_the_context():
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).eval()  # receptive field 4 px per side
    x = torch.rand(1, 3, 40, 50)
    with torch.no_grad():
        whole = upscale_cli.upscale_tensor(net, x, tile=0)
        tiled = upscale_cli.upscale_tensor(net, x, tile=16, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 80, 100)
    assert torch.allclose(tiled, whole, atol=1e-6)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "diffusers_ext.upscale_cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def test_cli_upscales_a_folder_with_an_exported_file(tmp_path):
    policy = _policy(NETS["compact_x2"]())
    model = export_policy(policy, tmp_path / "2x-test.safetensors")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 16, 4), dtype=np.uint8), "RGBA").save(src / "sub" / "b.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    proc = _cli(str(model), str(src), "--out", str(tmp_path / "out"), "--tile", "16", "--overlap", "8")
    assert proc.returncode == 1, proc.stderr  # one file could not be read; the others were written
    assert "broken.png" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["a.png", "b.png"]
    a = np.asarray(Image.open(tmp_path / "out" / "a.png"), np.float32) / 255
    assert a.shape == (48, 60, 3) and rows[0]["scale"] == 2
    x = torch.from_numpy(np.asarray(Image.open(src / "a.png"), np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = policy(x)["images"][0].permute(1, 2, 0).numpy()
    assert np.abs(a - ref).max() <= 0.5 / 255 + 1e-5
    assert Image.open(tmp_path / "out" / "b.png").size == (32, 40)


def test_cli_model_errors_and_export_of_a_pretrained_network(tmp_path):
    proc = _cli(str(tmp_path / "missing.safetensors"), "x.png", "--out", str(tmp_path))
    assert proc.returncode == 2 and "missing.safetensors" in proc.stderr and "realesr-animevideov3-x4" in proc.stderr
    proc = _cli("realesr-animevideov3-x4", "x.png")
    assert proc.returncode == 2 and "--out" in proc.stderr
    proc = _cli("waifu2x-photo-x2", "--save-model", str(tmp_path / "w.safetensors"))
    assert proc.returncode == 2 and "UpConv7" in proc.stderr
    target = tmp_path / "models" / "realesr-animevideov3-x4.safetensors"
    proc = _cli("realesr-animevideov3-x4", "--save-model", str(target))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["saved_model"] == str(target)
    from diffusers_ext.srnets import load_srnet

    ref, got = load_srnet("realesr-animevideov3-x4"), load_upscaler(target)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ref(x), got(x), atol=1e-6)


def test_cli_merges_a_trainer_lora_folder(tmp_path):
    policy = _policy(FeedForwardSRPolicy.from_pretrained("realesr-animevideov3-x4").net, "realesr-animevideov3-x4")
    policy.save_lora(tmp_path / "lora")
    net, label = upscale_cli.load_model(str(tmp_path / "lora"))
    assert label == "realesr-animevideov3-x4+lora"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x).clamp(0, 1), policy(x)["images"], atol=2e-6)


def test_register_adds_the_upscale_subcommand_to_a_finpercep_parser(tmp_path):
    """The ``finpercep.commands`` entry-point contract of diffusers_ext/cli.py: ``register(subparsers)``."""
    import argparse

    parser = argparse.ArgumentParser(prog="finpercep")
    upscale_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["upscale", "realesr-animevideov3-x4", "a.png", "--out", str(tmp_path), "--tile", "0"])
    assert args.func is upscale_cli.run and args.model == "realesr-animevideov3-x4" and args.tile == 0
    help_text = parser._subparsers._group_actions[0].choices["upscale"].format_help()
    for flag in ("--out", "--device", "--tile", "--overlap", "--save-model"):
        assert flag in help_text
