"""ComfyUI node pack, the parts that run without ComfyUI: registration list, the cheap root entry,
PEFT -> ComfyUI LoRA key conversion (checked numerically against peft), PDM -> inpaint mask, and
the once-only checksummed Hub download (against the local Hub test server).

The nodes themselves run inside a real ComfyUI server in tests/test_comfyui_server.py."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_fixtures import local_hub  # noqa: F401

from comfyui_finpercep import NODE_IDS
from comfyui_finpercep import lora_convert as lc
from comfyui_finpercep.hub_download import MANIFEST, ChecksumError, check_repo_id, download_once, folder_name
from comfyui_finpercep.masks import dilate, feather, pdm_to_mask

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ packaging


def test_node_list_json_matches_registered_ids():
    listed = json.loads((REPO / "node_list.json").read_text())
    assert isinstance(listed, dict)
    assert set(listed) == set(NODE_IDS)
    # The schemas in nodes.py (imported only inside ComfyUI) declare exactly these ids, in this order.
    declared = re.findall(r'node_id="([^"]+)"', (REPO / "comfyui_finpercep" / "nodes.py").read_text())
    assert tuple(declared) == NODE_IDS
    assert all(v.strip() for v in listed.values())


def test_pyproject_has_comfy_registry_section():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = cfg["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "includes"):
        assert key in comfy, key
    assert cfg["project"]["name"] and cfg["project"]["version"]


def test_root_init_is_cheap_and_side_effect_free(tmp_path):
    """Import the repository root the way ComfyUI does (spec_from_file_location): nothing heavy is
    imported and sys.path is untouched until ComfyUI calls comfy_entrypoint()."""
    code = f"""
import importlib.util, inspect, sys, json
before = set(sys.modules); path = list(sys.path)
spec = importlib.util.spec_from_file_location("finpercep_root", {str(REPO / '__init__.py')!r},
                                              submodule_search_locations=[{str(REPO)!r}])
m = importlib.util.module_from_spec(spec); sys.modules["finpercep_root"] = m; spec.loader.exec_module(m)
new = sorted(set(sys.modules) - before)
print(json.dumps({{"new": new, "path_same": path == sys.path,
                  "entry": inspect.iscoroutinefunction(m.comfy_entrypoint),
                  "has_v1": hasattr(m, "NODE_CLASS_MAPPINGS")}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    heavy = [m for m in res["new"] if m.split(".")[0] in ("torch", "diffusers", "numpy", "comfy_api", "comfyui_finpercep",
                                                           "diffusers_ext", "safetensors")]
    assert heavy == []
    assert res["path_same"] and res["entry"]
    # ComfyUI only calls comfy_entrypoint when NODE_CLASS_MAPPINGS is absent (V1 wins otherwise).
    assert res["has_v1"] is False


def test_workflows_are_valid_api_graphs():
    files = sorted((REPO / "example_workflows" / "api").glob("*.json"))
    assert {f.stem for f in files} >= {"finpercep_score", "finpercep_best_of_n", "finpercep_fix_where_bad",
                                       "finpercep_upscale_score_fix", "finpercep_upscale_model_score"}
    # ComfyUI serves the first existing of these as templates; only example_workflows/ may hold workflows
    assert not any((REPO / d).is_dir() for d in ("example", "workflow", "workflows"))
    assert not list((REPO / "examples").glob("*.json"))
    twins = {json.loads(f.read_text())["extra"]["finpercep_api_twin"] for f in (REPO / "example_workflows").glob("*.json")}
    assert twins == {f"api/{f.name}" for f in files}  # one UI workflow (named by its title) per API workflow
    used = set()
    for f in files:
        graph = json.loads(f.read_text())
        for nid, node in graph.items():
            used.add(node["class_type"])
            for value in node["inputs"].values():
                if isinstance(value, list):
                    assert value[0] in graph, f"{f.name}: node {nid} links to missing node {value[0]}"
    assert set(NODE_IDS) <= used, f"nodes without an example workflow: {set(NODE_IDS) - used}"


# ------------------------------------------------------------------------------------ LoRA conversion

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "ff.net.2"]


def _peft_unet(r=4, alpha=8, seed=0, **cfg_kwargs):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights="gaussian", **cfg_kwargs)
    unet.add_adapter(cfg)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return unet, cfg


def _save_pipeline_format(unet, cfg, folder: Path, metadata=True) -> Path:
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    kwargs = {"unet_lora_adapter_metadata": cfg.to_dict()} if metadata else {}
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True, **kwargs)
    return folder / lc.LORA_WEIGHT_NAME


def _peft_deltas(unet) -> dict[str, torch.Tensor]:
    """module name -> the weight delta peft adds (scale * B @ A, conv-aware)."""
    out = {}
    for name, mod in unet.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            out[name] = mod.get_delta_weight("default").detach()
    return out


def _kohya_deltas(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ComfyUI computes from kohya keys: alpha / rank * up @ down (reshaped for convs)."""
    out = {}
    for key, down in sd.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = sd[f"{name}.lora_up.weight"]
        scale = float(sd[f"{name}.alpha"]) / down.shape[0]
        if down.ndim == 4 and down.shape[2:] != (1, 1):
            delta = torch.einsum("or,rihw->oihw", up.flatten(1), down)
        else:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
        out[name[len("lora_unet_"):].replace("_", ".")] = scale * delta
    return out


def _match(peft: dict, kohya: dict) -> float:
    """Max abs difference of the deltas, matching module names up to '.'/'_' (kohya flattens them)."""
    flat = {k.replace("_", "."): v for k, v in peft.items()}
    assert set(flat) == set(kohya), set(flat) ^ set(kohya)
    return max(float((flat[k].reshape(kohya[k].shape) - kohya[k]).abs().max()) for k in kohya)


def test_convert_pipeline_format_matches_peft_scale(tmp_path):
    unet, cfg = _peft_unet(r=4, alpha=8)
    file = _save_pipeline_format(unet, cfg, tmp_path)
    tensors, meta = lc.read_adapter_file(file)
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in tensors)
    sd, report = lc.convert_peft_to_kohya(tensors, meta)
    assert report.alpha_source == "metadata" and set(report.scales.values()) == {2.0}
    assert len(report.modules) == len(_peft_deltas(unet)) > 20
    assert all(k.startswith("lora_unet_") for k in sd)
    assert all(re.search(r"\.(lora_down\.weight|lora_up\.weight|alpha)$", k) for k in sd)
    assert _match(_peft_deltas(unet), _kohya_deltas(sd)) < 1e-6
    # round trip through the file the node offers for the stock LoRA loader
    out = lc.save_converted(sd, tmp_path / "conv" / "x.safetensors", source="test", base_model="b/m")
    back, back_meta = lc.read_adapter_file(out)
    assert back_meta["base_model"] == "b/m" and set(back) == set(sd)
    again, rep2 = lc.convert_peft_to_kohya(back, back_meta)
    assert rep2.already_comfy and len(rep2.modules) == len(report.modules) and set(rep2.scales.values()) == {2.0}


def test_convert_rslora_and_alpha_pattern(tmp_path):
    unet, cfg = _peft_unet(r=4, alpha=6, use_rslora=True, alpha_pattern={"to_k": 2})
    sd, report = lc.convert_peft_to_kohya(*lc.read_adapter_file(_save_pipeline_format(unet, cfg, tmp_path)))
    k_modules = [m for m in report.modules if m.endswith("to_k")]
    assert k_modules and all(math.isclose(report.scales[m], 2 / 2.0) for m in k_modules)
    assert all(math.isclose(report.scales[m], 6 / 2.0) for m in report.modules if not m.endswith("to_k"))
    assert _match(_peft_deltas(unet), _kohya_deltas(sd)) < 1e-6


def test_convert_save_lora_adapter_format(tmp_path):
    """unet.save_lora_adapter: keys without 'unet.' and un-prefixed metadata."""
    unet, _ = _peft_unet(r=2, alpha=5)
    unet.save_lora_adapter(str(tmp_path))
    tensors, meta = lc.read_adapter_file(tmp_path / lc.LORA_WEIGHT_NAME)
    assert not any(k.startswith("unet.") for k in tensors)
    sd, report = lc.convert_peft_to_kohya(tensors, meta)
    assert set(report.scales.values()) == {2.5}
    assert _match(_peft_deltas(unet), _kohya_deltas(sd)) < 1e-6


def test_convert_diffusers_names_as_the_trainer_saves_them(tmp_path):
    """The trainer's save_lora passes the PEFT state dict through convert_state_dict_to_diffusers:
    'unet.<module>.lora.down.weight' / '.lora.up.weight' keys, metadata as usual."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet, cfg = _peft_unet(r=4, alpha=8)
    StableDiffusionPipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=cfg.to_dict(), safe_serialization=True)
    tensors, meta = lc.read_adapter_file(tmp_path / lc.LORA_WEIGHT_NAME)
    assert any(k.endswith(".lora.down.weight") for k in tensors)  # (convs may keep lora_A: both are handled)
    sd, report = lc.convert_peft_to_kohya(tensors, meta)
    assert set(report.scales.values()) == {2.0}
    assert _match(_peft_deltas(unet), _kohya_deltas(sd)) < 1e-6


def test_convert_without_metadata_uses_scale_one_like_diffusers(tmp_path):
    unet, cfg = _peft_unet(r=4, alpha=8)
    tensors, meta = lc.read_adapter_file(_save_pipeline_format(unet, cfg, tmp_path, metadata=False))
    assert lc.METADATA_KEY not in meta
    sd, report = lc.convert_peft_to_kohya(tensors, meta)
    assert report.alpha_source.startswith("none") and set(report.scales.values()) == {1.0}
    assert all(float(sd[k]) == 4.0 for k in sd if k.endswith(".alpha"))


def test_convert_ignores_other_components_and_refuses_unknown():
    a, b = torch.randn(2, 8), torch.randn(8, 2)
    sd = {"unet.mid_block.attentions.0.proj_in.lora_A.weight": a, "unet.mid_block.attentions.0.proj_in.lora_B.weight": b,
          "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": a,
          "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": b}
    out, report = lc.convert_peft_to_kohya(sd)
    assert set(out) == {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight",
                        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight",
                        "lora_unet_mid_block_attentions_0_proj_in.alpha"}
    assert report.ignored_prefixes == {"text_encoder.": 2} and "text_encoder" in report.summary()
    with pytest.raises(lc.AdapterFormatError, match="not a LoRA key"):
        lc.convert_peft_to_kohya({"unet.conv_in.weight": a})
    with pytest.raises(lc.AdapterFormatError, match="DoRA"):
        lc.convert_peft_to_kohya({**sd, "unet.mid_block.attentions.0.proj_in.lora_magnitude_vector": torch.ones(8)})
    with pytest.raises(lc.AdapterFormatError, match="no lora_B"):
        lc.convert_peft_to_kohya({"unet.x.lora_A.weight": a})
    with pytest.raises(lc.AdapterFormatError, match="no LoRA keys for this part"):
        lc.convert_peft_to_kohya({k: v for k, v in sd.items() if k.startswith("text_encoder")})


def test_adapter_file_lookup_and_model_card(tmp_path):
    with pytest.raises(lc.AdapterFormatError, match="only .safetensors"):
        lc.read_adapter_file(tmp_path / "x.bin")
    (tmp_path / lc.LORA_WEIGHT_NAME).write_bytes(b"")
    assert lc.find_adapter_file(tmp_path) == tmp_path / lc.LORA_WEIGHT_NAME
    (tmp_path / "README.md").write_text("---\nlibrary_name: diffusers\nbase_model:\n- stabilityai/sd-2-1-base\ntags:\n- lora\n---\n# x\n")
    assert lc.model_card_base_model(tmp_path) == "stabilityai/sd-2-1-base"
    (tmp_path / "README.md").write_text("---\nbase_model: 'owner/base'\n---\n")
    assert lc.model_card_base_model(tmp_path) == "owner/base"
    with pytest.raises(FileNotFoundError):
        lc.find_adapter_file(tmp_path / "missing")


# ------------------------------------------------------------------------------------ masks


def _square_pdm(h=96, w=128, box=(30, 40, 20, 24), value=0.9):
    pdm = torch.full((1, h, w), 0.1)
    y, x, bh, bw = box
    pdm[0, y:y + bh, x:x + bw] = value
    return pdm


def test_pdm_to_mask_threshold_dilate_feather():
    pdm = _square_pdm()
    hard = pdm_to_mask(pdm, 0.5, dilate_px=0, feather_px=0)
    assert hard.shape == (1, 96, 128) and hard.dtype == torch.float32
    assert set(hard.unique().tolist()) == {0.0, 1.0} and int(hard.sum()) == 20 * 24
    grown = pdm_to_mask(pdm, 0.5, dilate_px=5, feather_px=0)
    assert bool((grown >= hard).all())
    # a disk of radius 5: 5 px straight out from an edge, less on the diagonal
    assert grown[0, 30 + 10, 40 - 5] == 1 and grown[0, 30 + 10, 40 - 6] == 0
    assert grown[0, 30 - 5, 40 + 10] == 1 and grown[0, 30 - 6, 40 + 10] == 0
    assert grown[0, 30 - 5, 40 - 5] == 0
    soft = pdm_to_mask(pdm, 0.5, dilate_px=5, feather_px=8)
    assert bool((soft[grown > 0.5] == 1).all()), "feathering must not eat into the region"
    ring = soft[0, 40, 40 - 5 - 9:40 - 5]
    assert bool((ring[1:] >= ring[:-1]).all()) and 0 < float(ring.mean()) < 1
    assert float(soft[0, 40, 0]) == 0.0
    assert bool((soft >= 0).all() and (soft <= 1).all())
    inv = pdm_to_mask(pdm, 0.5, 0, 0, invert=True)
    assert torch.equal(inv, 1 - hard)


def test_pdm_to_mask_min_area_and_shapes():
    pdm = _square_pdm()
    pdm[0, 80, 10] = 0.95  # a one-pixel speck
    assert int(pdm_to_mask(pdm, 0.5, 0, 0).sum()) == 20 * 24 + 1
    assert int(pdm_to_mask(pdm, 0.5, 0, 0, min_area=4).sum()) == 20 * 24
    assert pdm_to_mask(pdm[0], 0.5, 0, 0).shape == (1, 96, 128)
    with pytest.raises(ValueError, match="threshold"):
        pdm_to_mask(pdm, 1.5)
    with pytest.raises(ValueError, match="shape"):
        pdm_to_mask(torch.zeros(1, 1, 4, 4))
    big = dilate(pdm_to_mask(pdm, 0.5, 0, 0), 13)
    assert big[0, 30 + 10, 40 - 13] == 1 and big[0, 30 + 10, 40 - 14] == 0
    assert torch.equal(feather(big, 0), big)


# ------------------------------------------------------------------------------------ Hub download


def _push_model(tmp_path, repo="user/finpercep-tiny"):
    from conftest import make_tiny_model
    from huggingface_hub import HfApi

    folder = tmp_path / "push"
    make_tiny_model().save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n")
    api = HfApi()
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(folder))
    return folder


def test_download_once_with_checksums(local_hub, tmp_path):
    _push_model(tmp_path)
    dest = tmp_path / "models" / "finpercep" / folder_name("user/finpercep-tiny")
    got = download_once("user/finpercep-tiny", dest, allow_patterns=["*.json", "*.safetensors", "*.md"])
    assert got == dest and (dest / "config.json").is_file() and (dest / "diffusion_pytorch_model.safetensors").is_file()
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["repo_id"] == "user/finpercep-tiny" and len(manifest["commit"]) == 40
    assert set(manifest["files"]) == {"config.json", "diffusion_pytorch_model.safetensors", "README.md"}
    assert not (dest / ".cache").exists()
    from diffusers_ext import FinPercepRewardPipeline

    assert FinPercepRewardPipeline.from_pretrained(dest).reward_model.num_stages >= 1
    # second call: no network at all
    n = local_hub.count()
    assert download_once("user/finpercep-tiny", dest) == dest
    assert local_hub.count() == n
    # a changed file is caught
    (dest / "config.json").write_text((dest / "config.json").read_text() + " ")
    with pytest.raises(ChecksumError, match="changed since it was downloaded"):
        download_once("user/finpercep-tiny", dest)


def test_download_refuses_a_file_that_does_not_match_the_hub_checksum(local_hub, tmp_path, monkeypatch):
    _push_model(tmp_path)
    from huggingface_hub import HfApi

    real = HfApi.model_info

    def tampered(self, *a, **k):
        info = real(self, *a, **k)
        for s in info.siblings:
            if s.rfilename == "config.json":
                s.blob_id = "0" * 40
        return info

    monkeypatch.setattr(HfApi, "model_info", tampered)
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumError, match="does not match the checksum"):
        download_once("user/finpercep-tiny", dest)
    assert not dest.exists() and not list(tmp_path.glob(".dl.*")), "a failed download leaves nothing behind"


def test_repo_id_validation(tmp_path):
    for bad in ("../x", "a/b/c", "a", "/abs/path", "a/..", "owner/na me"):
        with pytest.raises(ValueError, match="owner/name"):
            check_repo_id(bad)
    assert folder_name("owner/name") == "owner--name"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        download_once("owner/name", tmp_path / "taken")
