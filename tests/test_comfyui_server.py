"""The FinPercep nodes inside a real ComfyUI (0.3.75) server.

Session set-up (see tests/comfyui/): install ComfyUI and its venv (setup_comfyui.sh, cached outside
the repository), build tiny diffusion components + SR adapters with peft (make_test_assets.py,
cached), lay out a ComfyUI base directory with this repository linked into custom_nodes/, real
photos (scikit-image) in input/, and start `main.py --cpu` with HF_ENDPOINT pointing at the local
Hub test server. The shipped example workflows (example_workflows/api/*.json) then run through POST
/prompt with the bundled reward model (and the tiny SD components for the SR / inpainting parts), the
template route serves every UI workflow, each of them opens, runs and is screenshotted in the real
frontend in headless Chromium, and feed-forward upscalers exported in spandrel's layout run in
ComfyUI's core upscale nodes exactly like our policy.

Screenshots go to a temporary folder; FINPERCEP_UPDATE_DOCS=1 writes them into docs/ (the README's).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from api_to_ui import MODELS, TEMPLATES, ui_path  # tests/comfyui: pyproject pythonpath
from finpercep_comfy_harness import ComfyServer, ensure_comfyui, run_in_comfy_venv
from hub_server import LocalHubServer, hub_env

REPO = Path(__file__).resolve().parents[1]
UI_WORKFLOWS = REPO / "example_workflows"
WORKFLOWS = UI_WORKFLOWS / "api"
TEMPLATE_FOLDER = "finpercep"  # the name of the custom-node folder (the symlink below)
NODE_IDS = list(json.loads((REPO / "node_list.json").read_text()))
BUNDLED = "(bundled default)"
SIZE = 256
#: what an artist types into the node search to find an image-quality node (issue 26)
SEARCH_WORDS = ("quality", "iqa", "degradation", "artifact", "reward", "upscale", "compare")
ARTIFACT = (150, 100, 72, 80)  # y, x, h, w of the pasted defect in the test photo (on the textured suit)


# ------------------------------------------------------------------------------------ fixtures


def _photos(folder: Path) -> dict[str, Path]:
    from skimage import data

    clean = Image.fromarray(data.astronaut()).resize((SIZE, SIZE), Image.LANCZOS)
    y, x, h, w = ARTIFACT
    artifact = clean.copy()
    # An over-smoothed ("painterly") patch, the typical defect of real-world SR outputs.
    patch = clean.crop((x, y, x + w, y + h)).filter(ImageFilter.GaussianBlur(5))
    artifact.paste(patch, (x, y))
    files = {
        "clean": clean,
        "artifact": artifact,
        # candidates of an "upscale": bicubic x2 and x4 of the photo (the typical soft SR failure)
        "mild": clean.resize((SIZE // 2, SIZE // 2), Image.BICUBIC).resize((SIZE, SIZE), Image.BICUBIC),
        "heavy": clean.resize((SIZE // 4, SIZE // 4), Image.BICUBIC).resize((SIZE, SIZE), Image.BICUBIC),
        "lowres": Image.fromarray(data.chelsea()).resize((48, 32), Image.LANCZOS),
        "tiny": clean.resize((8, 8)),
    }
    out = {}
    for name, im in files.items():
        out[name] = folder / f"fp_{name}.png"
        im.save(out[name])
    return out


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A running ComfyUI with FinPercep, test assets and photos; yields a namespace."""
    install = ensure_comfyui()
    # Tiny SD components and adapters: built once per version of the asset script, cached with ComfyUI.
    script = REPO / "tests" / "comfyui" / "make_test_assets.py"
    assets = install.home / "test-assets" / hashlib.sha1(script.read_bytes()).hexdigest()[:12]
    for stale in (install.home / "test-assets").glob("*"):  # assets of older versions of the script
        if stale != assets:
            shutil.rmtree(stale, ignore_errors=True)
    run_in_comfy_venv(install, script, "--comfyui", str(install.comfyui), "--base", str(assets))
    info = json.loads((assets / "finpercep_assets.json").read_text())

    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    os.symlink(REPO, base / "custom_nodes" / TEMPLATE_FOLDER)
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(assets / "models" / "checkpoints" / info["checkpoint"], base / "models" / "checkpoints" / info["checkpoint"])
    shutil.copytree(assets / "models" / "loras", base / "models" / "loras")
    (base / "input").mkdir()
    photos = _photos(base / "input")
    # no upscaler here: the upscale workflow picks the tuned one the repository ships (upscalers/), which
    # the nodes add to ComfyUI's upscale_models paths
    (base / "models" / "upscale_models").mkdir(parents=True)

    # The reward model the workflows use: the bundled default. FINPERCEP_COMFYUI_TEST_REWARD_MODEL=<folder>
    # swaps in another (e.g. a checkpoint still in training) under models/finpercep/test_rm.
    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    override = os.environ.get("FINPERCEP_COMFYUI_TEST_REWARD_MODEL")
    rm_folder = Path(override) if override else DEFAULT_MODEL_DIR
    assert (rm_folder / "config.json").is_file(), f"no reward model in {rm_folder}: the workflows score with the bundled default"
    reward_choice = BUNDLED
    if override:
        shutil.copytree(rm_folder, base / "models" / "finpercep" / "test_rm")
        reward_choice = "test_rm"

    hub_root = tmp_path_factory.mktemp("hub")
    hub = LocalHubServer(hub_root / "server").start()
    with hub_env(hub, home=hub_root / "client"):
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo("user/finpercep-rm")
        api.upload_folder(repo_id="user/finpercep-rm", folder_path=str(rm_folder))
        api.create_repo("user/finpercep-sr")
        api.upload_folder(repo_id="user/finpercep-sr", folder_path=info["adapter_dir"])
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_local_test_token", "HF_HOME": str(hub_root / "comfy-hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "0"}
    server = ComfyServer(install, base, env=env).start()

    class NS:
        pass

    ns = NS()
    ns.install, ns.server, ns.hub, ns.base, ns.photos, ns.assets = install, server, hub, base, photos, info
    ns.assets_dir, ns.reward_model = assets, reward_choice
    yield ns
    server.stop()
    hub.stop()


def _wf(name: str, comfy=None, photos: dict | None = None) -> dict:
    """An API workflow as shipped; ``photos`` (node id -> file in input/) swaps example nodes for Load Image."""
    wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node in wf.values():
        if node["class_type"] == "FinPercepLoadRewardModel" and comfy is not None:
            node["inputs"]["model"] = comfy.reward_model
    for nid, photo in (photos or {}).items():
        assert wf[nid]["class_type"] == "FinPercepLoadExampleImage", (name, nid)
        wf[nid] = {"class_type": "LoadImage", "inputs": {"image": photo}}
    return wf


def _img(comfy, result, node: str, index: int = 0) -> np.ndarray:
    items = result.images(node)
    assert items, f"node {node} saved no image: {result.outputs.get(node)}"
    return np.asarray(Image.open(comfy.server.output_file(items[index])).convert("RGB"), np.float32) / 255


def _ok(result, comfy):
    assert result.ok, f"prompt failed: {json.dumps(result.error)[:3000]}\n--- log ---\n{comfy.server.log()[-3000:]}"
    return result


def _scores(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"score (-?[0-9.]+)", text)]


def _tiny_sd(wf: dict, comfy, steps: int = 1) -> dict:
    for node in wf.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = comfy.assets["checkpoint"]
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
        if node["class_type"] == "FinPercepLoadSRAdapter":
            node["inputs"]["adapter"] = comfy.assets["adapter"]
    return wf


# ------------------------------------------------------------------------------------ registration


def test_every_node_is_listed_and_loaded(comfy):
    info = comfy.server.object_info()
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["python_module"] == "custom_nodes.finpercep"
    # the node library groups them: scoring, masks, SR (the example loader at the top)
    groups = {info[n]["category"] for n in NODE_IDS}
    assert groups == {"FinPercep", "FinPercep/score", "FinPercep/mask", "FinPercep/SR"}, groups
    assert info["FinPercepScoreImage"]["category"] == "FinPercep/score"
    assert info["FinPercepPDMToInpaintMask"]["category"] == "FinPercep/mask"
    assert info["FinPercepOneStepSR"]["category"] == info["FinPercepLoadSRAdapter"]["category"] == "FinPercep/SR"
    ours = {k for k, v in info.items() if v.get("python_module") == "custom_nodes.finpercep"}
    assert ours == set(NODE_IDS)
    log = comfy.server.log()
    assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if "finpercep" in l.lower())
    assert re.search(r"Import times for custom nodes:.*\n.*finpercep", log, re.S), log[-2000:]
    score = info["FinPercepScoreImage"]
    assert score["output"] == ["FLOAT", "FLOAT", "MASK", "IMAGE"] and score["output_is_list"] == [False, True, False, False]
    assert score["input"]["optional"]["overlay_mode"][1]["options"] == ["uniform", "weighted"]


def test_every_input_and_output_has_a_tooltip_and_search_words(comfy):
    """The issue counted 10 of 35 inputs and 7 of 15 outputs without a tooltip, and the node search
    (frontend 1.32.9: node id and display name only) found nothing for quality / IQA / degradation."""
    info = comfy.server.object_info()
    missing = []
    for node_id in NODE_IDS:
        spec = info[node_id]
        assert len(spec["description"]) > 40, node_id
        for section in ("required", "optional"):
            for name, t in spec["input"].get(section, {}).items():
                if len(t) < 2 or not t[1].get("tooltip"):
                    missing.append(f"{node_id}.{name}")
        tips = spec.get("output_tooltips") or [None] * len(spec["output"])
        missing += [f"{node_id} -> {name}" for name, tip in zip(spec["output_name"], tips) if not tip]
    assert missing == [], missing
    names = " ".join(info[n]["display_name"].lower() for n in NODE_IDS)
    for word in SEARCH_WORDS:
        assert word in names, word
    assert BUNDLED in info["FinPercepLoadRewardModel"]["input"]["required"]["model"][1]["options"]
    assert comfy.assets["adapter"] in info["FinPercepLoadSRAdapter"]["input"]["required"]["adapter"][1]["options"]


# ------------------------------------------------------------------------------------ reward workflows


def test_score_workflow_on_a_photo_with_a_pasted_artifact(comfy):
    wf = _wf("finpercep_score", comfy, {"1": comfy.photos["artifact"].name})
    r = _ok(comfy.server.run(wf), comfy)
    pdm = _img(comfy, r, "6")[..., 0]
    overlay = _img(comfy, r, "4")
    assert pdm.shape == (SIZE, SIZE) and overlay.shape == (SIZE, SIZE, 3)
    assert 0.0 <= pdm.min() and pdm.max() <= 1.0
    (score,) = _scores(r.texts("3")[0])
    assert np.isfinite(score)
    y, x, h, w = ARTIFACT
    inside = np.zeros_like(pdm, bool)
    inside[y:y + h, x:x + w] = True
    assert pdm[inside].mean() > pdm[~inside].mean() + 0.08, (pdm[inside].mean(), pdm[~inside].mean())
    # uniform (the default): the whole map at overlay_alpha 0.6, so clean pixels get the colormap's dark
    # end too (0.4 x the photo + 0.6 x near-black); weighted: the photo where the map is clean
    photo = np.asarray(Image.open(comfy.photos["artifact"]).convert("RGB"), np.float32) / 255
    clean_px = pdm < 0.05
    assert clean_px.mean() > 0.3
    assert wf["3"]["inputs"]["overlay_mode"] == "uniform"
    assert np.abs(overlay[clean_px] - 0.4 * photo[clean_px]).mean() < 0.03
    wf["3"]["inputs"]["overlay_mode"] = "weighted"
    weighted = _img(comfy, _ok(comfy.server.run(wf), comfy), "4")
    assert np.abs(weighted[clean_px] - photo[clean_px]).mean() < 0.05
    # forced tiling (64 px tiles, 16 px overlap) runs through the ComfyUI progress bar and gives
    # the same picture: a seamless map, the defect found again
    wf["3"]["inputs"].update(tile_size=64, tile_overlap=16)
    r = _ok(comfy.server.run(wf), comfy)
    tiled = _img(comfy, r, "6")[..., 0]
    assert tiled.shape == (SIZE, SIZE)
    assert tiled[inside].mean() > tiled[~inside].mean() + 0.05, (tiled[inside].mean(), tiled[~inside].mean())
    assert np.isfinite(_scores(r.texts("3")[0])[0])


def test_best_of_n_orders_clean_mild_heavy(comfy):
    wf = _wf("finpercep_best_of_n", comfy, {"1": comfy.photos["heavy"].name, "3": comfy.photos["clean"].name})
    wf["4"]["inputs"]["scale_by"], wf["11"]["inputs"]["scale_by"] = 0.5, 2.0  # candidate 2: bicubic x2 of the clean photo
    r = _ok(comfy.server.run(wf), comfy)
    text = r.texts("7")[0]
    assert text.startswith("best: candidate 1 of 3"), text
    rewards = [float(v) for v in re.findall(r"reward (-?[0-9.]+)", text)]
    assert rewards[1] > rewards[2] > rewards[0], text
    best = _img(comfy, r, "8")
    clean = np.asarray(Image.open(comfy.photos["clean"]).convert("RGB"), np.float32) / 255
    assert np.abs(best - clean).max() < 1.5 / 255
    assert len(r.images("7")) == 3, "Best of N previews the ranked candidates on the canvas"
    ranked = [_img(comfy, r, "9", i) for i in range(3)]
    assert np.abs(ranked[0] - clean).max() < 1.5 / 255
    # with the PDM term on, the clean photo still wins (its worst region is the least degraded)
    wf["7"]["inputs"]["pdm_weight"] = 1.0
    r2 = _ok(comfy.server.run(wf), comfy)
    assert r2.texts("7")[0].startswith("best: candidate 1 of 3"), r2.texts("7")[0]


def test_fix_where_bad_inpaints_only_the_defect(comfy):
    wf = _tiny_sd(_wf("finpercep_fix_where_bad", comfy, {"1": comfy.photos["artifact"].name}), comfy)
    r = _ok(comfy.server.run(wf), comfy)
    mask = _img(comfy, r, "15")[..., 0]
    fixed = _img(comfy, r, "12")
    photo = np.asarray(Image.open(comfy.photos["artifact"]).convert("RGB"), np.float32) / 255
    y, x, h, w = ARTIFACT
    assert mask.shape == (SIZE, SIZE)
    covered = (mask[y:y + h, x:x + w] > 0.5).mean()
    outside = np.ones_like(mask, bool)
    outside[max(0, y - 40):y + h + 40, max(0, x - 40):x + w + 40] = False
    assert covered > 0.6, f"mask covers {covered:.0%} of the pasted artifact"
    assert (mask[outside] > 0.5).mean() < 0.1, "mask spills over the clean photo"
    untouched = mask < 1 / 255
    assert np.abs(fixed[untouched] - photo[untouched]).max() <= 1.5 / 255, "pixels outside the mask changed"
    full = mask > 1 - 1 / 255
    assert np.abs(fixed[full] - photo[full]).mean() > 0.02, "the masked region was not re-generated"
    assert len(_scores(r.texts("3")[0])) == 1 and len(_scores(r.texts("13")[0])) == 1


# ------------------------------------------------------------------------------------ SR workflows


def test_upscale_score_fix_loop_with_the_sr_adapter(comfy):
    wf = _tiny_sd(_wf("finpercep_upscale_score_fix", comfy, {"1": comfy.photos["lowres"].name}), comfy)
    wf["22"]["inputs"]["scale_by"] = 1.0  # the photo is low-res already
    r = _ok(comfy.server.run(wf), comfy)
    sr = _img(comfy, r, "7")
    assert sr.shape == (128, 192, 3) and np.isfinite(sr).all() and sr.std() > 0
    report = r.texts("4")[0]
    from safetensors import safe_open

    with safe_open(str(Path(comfy.assets["adapter_dir"], "pytorch_lora_weights.safetensors")), "pt") as f:
        n = sum(k.endswith(".lora_A.weight") for k in f.keys())
    assert f"{n} LoRA modules" in report and f"applied all {n} layers" in report, report
    assert "scale 2.0 (alpha from metadata)" in report
    assert _img(comfy, r, "16").shape == (128, 192, 3)
    assert "lora key not loaded" not in comfy.server.log().lower()


def _sr_graph(comfy, image: str, strength: float | None, converted: str | None = None) -> dict:
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy.assets["checkpoint"]}},
        "4": {"class_type": "FinPercepOneStepSR", "inputs": {"model": ["3", 0], "vae": ["2", 2], "image": ["1", 0],
                                                             "upscale_by": 2.0, "timestep": 999}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "srtest"}},
    }
    if converted is not None:
        g["3"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["2", 0], "lora_name": converted, "strength_model": 1.0}}
    elif strength is None:
        g["4"]["inputs"]["model"] = ["2", 0]
    else:
        g["3"] = {"class_type": "FinPercepLoadSRAdapter", "inputs": {"model": ["2", 0], "adapter": comfy.assets["adapter"],
                                                                     "hub_id": "", "strength": strength, "save_converted": True,
                                                                     "vae": ["2", 2]}}
        g["4"]["inputs"]["vae"] = ["3", 1]
    return g


def test_sr_adapter_changes_the_output_and_the_converted_file_loads_in_the_stock_loader(comfy):
    img = comfy.photos["lowres"].name
    base = _img(comfy, _ok(comfy.server.run(_sr_graph(comfy, img, None)), comfy), "5")
    zero = _img(comfy, _ok(comfy.server.run(_sr_graph(comfy, img, 0.0)), comfy), "5")
    full_r = _ok(comfy.server.run(_sr_graph(comfy, img, 1.0)), comfy)
    full = _img(comfy, full_r, "5")
    assert base.shape == (64, 96, 3)
    assert np.abs(zero - base).max() <= 1 / 255, "strength 0 must leave the model unchanged"
    changed = np.abs(full - base) > 1.5 / 255
    assert changed.mean() > 0.2, f"the adapter changed only {changed.mean():.0%} of the SR pixels"
    converted = Path(comfy.base, "models", "loras", "finpercep_converted", "finpercep_tiny_sr.safetensors")
    assert converted.is_file()
    log_before = len(comfy.server.log())
    stock = _img(comfy, _ok(comfy.server.run(_sr_graph(comfy, img, None, "finpercep_converted/finpercep_tiny_sr.safetensors")), comfy), "5")
    assert "lora key not loaded" not in comfy.server.log()[log_before:].lower()
    assert np.abs(stock - full).max() <= 1 / 255, "the stock LoRA loader must give the same model"


def test_sr_matches_diffusers_and_no_key_is_skipped(comfy):
    """In-process ComfyUI vs diffusers/peft: same UNet, same adapter, one-step x0 at t=999."""
    out = run_in_comfy_venv(comfy.install, REPO / "tests" / "comfyui" / "check_sr_equivalence.py", "--comfyui",
                            str(comfy.install.comfyui), "--base", str(comfy.assets_dir))
    res = json.loads(out.strip().splitlines()[-1])
    assert res["model_type"] == "SD15"
    assert res["lora_key_not_loaded"] == []
    # ComfyUI alone maps the PEFT names of convs / projections but silently skips every attention
    # to_q/to_k/to_v/to_out (and would use scale 1 instead of alpha/r): the reason for the conversion.
    assert res["raw_peft_keys_loaded"] < res["n_adapter_modules"], res
    assert res["raw_attention_modules"] > 0 and res["raw_peft_keys_loaded"] <= res["n_adapter_modules"] - res["raw_attention_modules"]
    assert res["n_adapter_modules"] == res["n_file_modules"] > 50
    assert res["scales"] == [2.0] and res["alpha_source"] == "metadata"
    assert res["base_model"] == "finpercep-test/tiny-sd15"
    assert res["rel_err_base"] < 1e-4 and res["rel_err_lora"] < 1e-4 and res["rel_err_half"] < 1e-4, res
    assert res["rel_change_lora"] > 0.05 and res["rel_base_unchanged"] == 0.0 and res["finite"], res
    # the optional VAE-encoder part of an adapter, on an SD VAE in ComfyUI vs peft on diffusers
    assert res["vae_modules"] > 20
    assert res["vae_rel_err_base"] < 1e-4 and res["vae_rel_err_lora"] < 1e-4 and res["vae_rel_change"] > 0.05, res
    # an adapter saved by the trainer itself (UNet + VAE-encoder parts): the ComfyUI nodes' one-step SR
    # gives the trainer's own SR output, with and without the adapter
    assert res["trainer_files"] == ["pytorch_lora_weights.safetensors", "vae_encoder_lora.safetensors"]
    assert res["trainer_unet_modules"] > 20 and res["trainer_vae_modules"] > 20
    assert res["sr_shape"] == [1, 32, 48, 3] and res["sr_ref_std"] > 0.01
    assert res["sr_base_max_abs_err"] < 2e-3 and res["sr_max_abs_err"] < 2e-3, res
    assert res["sr_adapter_change"] > 0.02, res


# ------------------------------------------------------------------------------------ Hub and errors


def test_hub_ids_download_once_into_the_model_folders(comfy):
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": comfy.photos["clean"].name}},
        "2": {"class_type": "FinPercepLoadRewardModel", "inputs": {"model": BUNDLED, "hub_id": "user/finpercep-rm",
                                                                   "stage": -1, "dtype": "auto"}},
        "3": {"class_type": "FinPercepScoreImage", "inputs": {"reward_model": ["2", 0], "image": ["1", 0], "tile_size": -1,
                                                              "tile_overlap": -1, "overlay_alpha": 0.6, "colormap": "inferno",
                                                              "stage": -1}},
    }
    r = _ok(comfy.server.run(g), comfy)
    folder = comfy.base / "models" / "finpercep" / "user--finpercep-rm"
    manifest = json.loads((folder / "finpercep_download.json").read_text())
    assert manifest["repo_id"] == "user/finpercep-rm" and "config.json" in manifest["files"]
    hub_score = _scores(r.texts("3")[0])[0]
    g["2"]["inputs"].update(hub_id="", model=comfy.reward_model)
    bundled_score = _scores(_ok(comfy.server.run(g), comfy).texts("3")[0])[0]
    assert abs(hub_score - bundled_score) < 1e-4, "the Hub copy of the bundled model scores differently"
    # loaded again (another stage forces re-execution): no request reaches the Hub
    n = comfy.hub.count()
    g["2"]["inputs"].update(hub_id="user/finpercep-rm", stage=0)
    _ok(comfy.server.run(g), comfy)
    assert comfy.hub.count() == n
    # the downloaded folder is now also offered in the model list
    opts = comfy.server.object_info()["FinPercepLoadRewardModel"]["input"]["required"]["model"][1]["options"]
    assert "user--finpercep-rm" in opts
    # an SR adapter from the Hub
    sr = _sr_graph(comfy, comfy.photos["lowres"].name, 1.0)
    sr["3"]["inputs"].update(hub_id="user/finpercep-sr", save_converted=False)
    r = _ok(comfy.server.run(sr), comfy)
    assert (comfy.base / "models" / "loras" / "finpercep" / "user--finpercep-sr" / "finpercep_download.json").is_file()


def _error(comfy, graph) -> str:
    r = comfy.server.run(graph)
    assert not r.ok, "the prompt should have failed"
    return json.dumps(r.error)


def test_errors_name_the_input_and_the_fix(comfy):
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": comfy.photos["tiny"].name}},
        "2": {"class_type": "FinPercepLoadRewardModel", "inputs": {"model": comfy.reward_model, "hub_id": "", "stage": -1,
                                                                   "dtype": "auto"}},
        "3": {"class_type": "FinPercepScoreImage", "inputs": {"reward_model": ["2", 0], "image": ["1", 0], "tile_size": -1,
                                                              "tile_overlap": -1, "overlay_alpha": 0.6, "colormap": "inferno",
                                                              "stage": -1}},
    }
    msg = _error(comfy, g)
    assert "input 'image'" in msg and "8x8 px" in msg and "Fix:" in msg and "Upscale Image" in msg, msg
    g["1"]["inputs"]["image"] = comfy.photos["clean"].name
    g["3"]["inputs"]["stage"] = 16  # within the widget's range, above the model's last stage
    msg = _error(comfy, g)
    assert "input 'stage'" in msg and "Fix:" in msg, msg
    g["3"]["inputs"]["stage"] = -1
    g["2"]["inputs"]["hub_id"] = "user/does-not-exist"
    msg = _error(comfy, g)
    assert "input 'hub_id'" in msg and "does-not-exist" in msg and "Fix:" in msg, msg
    sr = _sr_graph(comfy, comfy.photos["lowres"].name, 1.0)
    sr["3"]["inputs"].update(adapter=comfy.assets["adapter_other_base"], save_converted=False)
    msg = _error(comfy, sr)
    assert "input 'model'" in msg and "another base model" in msg and "finpercep-test/tiny-sd2" in msg and "Fix:" in msg, msg
    # an adapter with a VAE-encoder part needs the VAE, and an SD VAE (the test checkpoint has TAESD)
    sr["3"]["inputs"].update(adapter=comfy.assets["adapter_with_vae"])
    del sr["3"]["inputs"]["vae"]
    sr["4"]["inputs"]["vae"] = ["2", 2]
    msg = _error(comfy, sr)
    assert "input 'vae'" in msg and "also adapts the VAE encoder" in msg and "Fix:" in msg, msg
    sr["3"]["inputs"]["vae"] = ["2", 2]
    msg = _error(comfy, sr)
    assert "input 'vae'" in msg and "TAESD" in msg and "Fix:" in msg, msg
    sr["3"]["inputs"].update(adapter="no/such/adapter.safetensors")
    r = comfy.server.run(sr)  # ComfyUI's own validation refuses a value not in the list
    assert not r.ok and "adapter" in json.dumps(r.error)


def test_large_images_report_their_time(comfy):
    """Above 1 MP the Score Image text says what the run took (the issue: 40 s for 2048 px with no
    estimate); small images keep the short text."""
    big = comfy.base / "input" / "fp_big.png"
    Image.open(comfy.photos["clean"]).resize((1040, 1040), Image.BICUBIC).save(big)
    wf = _wf("finpercep_score", comfy, {"1": big.name})
    text = _ok(comfy.server.run(wf), comfy).texts("3")[0]
    assert re.search(r"time: [0-9.]+ s for 1\.1 MP in \d+ tiles", text), text
    small = _ok(comfy.server.run(_wf("finpercep_score", comfy, {"1": comfy.photos["clean"].name})), comfy)
    assert "time:" not in small.texts("3")[0]


def test_compare_to_reference_reports_the_full_reference_metrics(comfy):
    """FinPercep Compare to Reference on diffusers_ext.perceptual: PSNR as numpy computes it from the two
    files, LPIPS / DISTS / SSIM as the library computes them outside ComfyUI, zero distance to itself,
    the LPIPS map as a preview; a reference of another size is refused unless resized."""
    from diffusers_ext.perceptual import full_reference_metrics

    g = {"1": {"class_type": "LoadImage", "inputs": {"image": comfy.photos["artifact"].name}},
         "2": {"class_type": "LoadImage", "inputs": {"image": comfy.photos["clean"].name}},
         "3": {"class_type": "FinPercepCompareToReference",
               "inputs": {"image": ["1", 0], "reference": ["2", 0], "lpips_net": "alex", "resize_reference": "no"}}}
    r = _ok(comfy.server.run(g), comfy)
    text = r.texts("3")[0]
    got = {k: float(v) for k, v in re.findall(r"(PSNR|SSIM|LPIPS \(alex\)|DISTS) (-?[0-9.]+|inf)", text)}
    x, y = (np.asarray(Image.open(comfy.photos[k]).convert("RGB"), np.float64) / 255 for k in ("artifact", "clean"))
    assert got["PSNR"] == pytest.approx(10 * np.log10(1 / np.mean((x - y) ** 2)), abs=0.01), text
    ref = full_reference_metrics(str(comfy.photos["artifact"]), str(comfy.photos["clean"]), ("ssim", "lpips_alex", "dists"))
    assert got["SSIM"] == pytest.approx(ref["ssim"][0], abs=1e-3)
    assert got["LPIPS (alex)"] == pytest.approx(ref["lpips_alex"][0], abs=1e-3) and got["LPIPS (alex)"] > 0.01
    assert got["DISTS"] == pytest.approx(ref["dists"][0], abs=1e-3)
    assert len(r.images("3")) == 1, "the LPIPS map is previewed"
    g["3"]["inputs"]["reference"] = ["1", 0]
    same = _ok(comfy.server.run(g), comfy).texts("3")[0]
    assert "PSNR inf dB" in same and "LPIPS (alex) 0.0000" in same and "SSIM 1.0000" in same, same
    g["2"]["inputs"]["image"] = comfy.photos["lowres"].name
    g["3"]["inputs"]["reference"] = ["2", 0]
    msg = _error(comfy, g)
    assert "input 'reference'" in msg and "48x32 px" in msg and "resize_reference" in msg and "Fix:" in msg, msg
    g["3"]["inputs"]["resize_reference"] = "auto"
    assert "PSNR" in _ok(comfy.server.run(g), comfy).texts("3")[0]


def test_ui_workflows_are_the_twins_of_the_api_workflows(comfy, tmp_path):
    """example_workflows/*.json (editor format) are generated from example_workflows/api/*.json (+ the
    .md notes) with this server's /object_info; a change of a node's inputs, of an API workflow or of a
    note must regenerate them."""
    info = tmp_path / "object_info.json"
    info.write_text(json.dumps(comfy.server.object_info()))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "comfyui" / "api_to_ui.py"), str(info), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for ui_file in sorted(UI_WORKFLOWS.glob("*.json")):
        ui = json.loads(ui_file.read_text())
        api = json.loads((UI_WORKFLOWS / ui["extra"]["finpercep_api_twin"]).read_text())
        assert sorted(n["type"] for n in ui["nodes"] if n["type"] != "MarkdownNote") == sorted(
            n["class_type"] for n in api.values())
        assert len(ui["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())


# ------------------------------------------------------------------------------------ templates, first Run, browser


def test_template_route_serves_every_workflow_and_its_thumbnail(comfy):
    """ComfyUI's template browser lists the first existing of example_workflows/, example/, examples/,
    workflow/, workflows/ (our examples/ holds images): every UI workflow must be listed and served,
    under its human title (the card shows the file name), with its thumbnail ``<name>.jpg`` (the card
    fetched a 404 for each before)."""
    names = sorted(p.stem for p in UI_WORKFLOWS.glob("*.json"))
    assert names == sorted(TEMPLATES.values()) and len(names) >= 5
    assert sorted(TEMPLATES) == sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    listed = comfy.server.get("/workflow_templates")
    assert sorted(listed.get(TEMPLATE_FOLDER, [])) == names, listed
    for name in names:
        base = f"/api/workflow_templates/{TEMPLATE_FOLDER}/{urllib.parse.quote(name)}"
        served = comfy.server.get(f"{base}.json")
        assert served == json.loads((UI_WORKFLOWS / f"{name}.json").read_text()), name
        with urllib.request.urlopen(comfy.server.url + f"{base}.jpg", timeout=30) as r:  # the card's URL
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg", (name, r.headers)
            thumb = Image.open(__import__("io").BytesIO(r.read()))
        assert thumb.format == "JPEG" and thumb.size == (400, 400), (name, thumb.format, thumb.size)
        assert (UI_WORKFLOWS / f"{name}.jpg").stat().st_size < 60_000, "keep the committed thumbnails small"


def test_example_image_node_lists_the_bundled_examples(comfy):
    opts = comfy.server.object_info()["FinPercepLoadExampleImage"]["input"]["required"]["image"][1]["options"]
    assert opts == sorted(p.name for p in (REPO / "examples").iterdir() if p.suffix.lower() in (".png", ".jpg"))
    used = {n["inputs"]["image"] for f in WORKFLOWS.glob("*.json") for n in json.loads(f.read_text()).values()
            if n["class_type"] == "FinPercepLoadExampleImage"}
    assert used and used <= set(opts)


def test_reward_workflows_run_as_shipped(comfy):
    """A new user's first Run: nothing changed but the reward model choice of a test override."""
    r = _ok(comfy.server.run(_wf("finpercep_compare", comfy)), comfy)  # the weights are installed here
    assert all("LPIPS (alex)" in r.texts(n)[0] for n in ("5", "6")), r.outputs
    for name in ("finpercep_score", "finpercep_best_of_n", "finpercep_upscale_model_score"):
        r = _ok(comfy.server.run(_wf(name, comfy)), comfy)
        texts = [t for node in r.outputs.values() for t in node.get("text", [])]
        assert any("score" in t for t in texts), (name, r.outputs)
    # the last one, the upscale workflow: the shipped tuned upscaler's x4 scores above a bicubic x4 of the same input
    model_score, bicubic_score = (_scores(r.texts(n)[0])[0] for n in ("6", "9"))
    assert model_score > bicubic_score, (model_score, bicubic_score)


def test_sd_workflows_name_the_checkpoint_and_adapter_to_get(comfy):
    for name in ("finpercep_fix_where_bad", "finpercep_upscale_score_fix"):
        note = (WORKFLOWS / f"{name}.md").read_text()
        wf = _wf(name, comfy)
        for node in wf.values():
            if node["class_type"] == "CheckpointLoaderSimple":
                assert node["inputs"]["ckpt_name"] in note and "Comfy-Org/stable-diffusion-v1-5-archive" in note
            if node["class_type"] == "FinPercepLoadSRAdapter":
                assert node["inputs"]["adapter"].split("/")[0] in note and "training.ccl_lora" in note
        # as shipped, without the checkpoint: ComfyUI refuses the nodes that need it, naming the file (the
        # reward part runs: ComfyUI executes the outputs whose inputs are valid)
        status, body = comfy.server.post("/prompt", {"prompt": wf, "client_id": "sd-check"})
        msg = json.dumps(body.get("node_errors") or body)
        assert "v1-5-pruned-emaonly-fp16.safetensors" in msg and "ckpt_name" in msg, msg
        ui = json.loads(ui_path(name).read_text())
        notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "MarkdownNote"]
        assert notes == [note.strip() + "\n"], "the note shows in the editor"
        # the loader carries the download, so the frontend's missing-model dialog offers it
        (loader,) = [n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple"]
        ckpt = loader["widgets_values"][0]
        assert loader["properties"]["models"] == [{"name": ckpt, **MODELS[ckpt]}]
        assert MODELS[ckpt]["url"].startswith("https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/")
        assert MODELS[ckpt]["directory"] == "checkpoints" and MODELS[ckpt]["url"].endswith("/" + ckpt)


def _tuned_policy(name: str = "realesr-animevideov3-x4", seed: int = 0):
    """A real pretrained network with a LoRA whose B matrices are random: what a trainer run leaves."""
    import torch

    from diffusers_ext.policies import FeedForwardSRPolicy

    torch.manual_seed(seed)
    policy = FeedForwardSRPolicy.from_pretrained(name).add_lora(rank=2, alpha=4.0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return policy.eval()


def test_spandrel_loads_the_exported_upscaler_like_our_policy(comfy, tmp_path):
    """spandrel's ModelLoader and ComfyUI's core Load Upscale Model + Upscale Image (using Model), in
    ComfyUI's own environment, on files of diffusers_ext.srnets.export: the tuned policy's images."""
    import torch

    from diffusers_ext.srnets import RRDBNet
    from diffusers_ext.policies import FeedForwardSRPolicy
    from diffusers_ext.srnets.export import export_policy

    torch.manual_seed(1)
    tiny_x2 = FeedForwardSRPolicy(RRDBNet(num_feat=16, num_block=2, scale=2), "rrdb-x2").add_lora(rank=2)
    with torch.no_grad():
        for n, p in tiny_x2.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    cases = []
    for name, policy in (("animevideov3-x4", _tuned_policy()), ("x4plus", _tuned_policy("realesrgan-x4plus", 1)),
                         ("rrdb-x2", tiny_x2.eval())):
        file = export_policy(policy, tmp_path / "models" / f"{name}-finpercep.safetensors")
        x = torch.rand(1, 20, 28, 3, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = policy(x.movedim(-1, 1))["images"].movedim(1, -1)
        np.save(tmp_path / f"{name}.in.npy", x.numpy())
        np.save(tmp_path / f"{name}.out.npy", ref.numpy())
        cases.append({"file": str(file), "input": str(tmp_path / f"{name}.in.npy"),
                      "expected": str(tmp_path / f"{name}.out.npy")})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = run_in_comfy_venv(comfy.install, REPO / "tests" / "comfyui" / "check_upscaler_spandrel.py", "--cases",
                            str(tmp_path / "cases.json"))
    res = json.loads(out.strip().splitlines()[-1])
    got = {c["file"]: c for c in res["cases"]}
    assert got["animevideov3-x4-finpercep.safetensors"]["architecture"] == "Compact"
    assert got["x4plus-finpercep.safetensors"]["architecture"] == "ESRGAN"
    assert got["rrdb-x2-finpercep.safetensors"]["architecture"] == "ESRGAN"
    for c in res["cases"]:
        assert c["shape"] == c["expected_shape"], c
        assert c["spandrel_max_abs_err"] < 1e-5 and c["comfy_node_max_abs_err"] < 1e-5, c


def test_upscale_workflow_runs_a_finpercep_tuned_upscaler(comfy):
    """The upscale workflow with a tuned file in models/upscale_models: ComfyUI's output is the policy's."""
    import torch

    from diffusers_ext.srnets.export import export_policy

    policy = _tuned_policy(seed=3)
    export_policy(policy, comfy.base / "models" / "upscale_models" / "finpercep-test-x4.safetensors")
    wf = _wf("finpercep_upscale_model_score", comfy, {"1": comfy.photos["lowres"].name})
    wf["3"]["inputs"]["scale_by"] = 1.0  # the photo is low-res already
    wf["4"]["inputs"]["model_name"] = "finpercep-test-x4.safetensors"
    r = _ok(comfy.server.run(wf), comfy)
    got = _img(comfy, r, "7")
    lr = np.asarray(Image.open(comfy.photos["lowres"]).convert("RGB"), np.float32) / 255
    with torch.no_grad():
        ref = policy(torch.from_numpy(lr).permute(2, 0, 1)[None])["images"][0].permute(1, 2, 0).numpy()
    assert got.shape == ref.shape == (128, 192, 3)
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6  # SaveImage truncates to 8 bits
    assert np.isfinite(_scores(r.texts("6")[0])[0])


def test_ui_workflows_open_run_and_show_results_in_the_browser(comfy, tmp_path):
    """Every UI workflow from the template browser of the real frontend (headless Chromium): it loads,
    equals its API twin, runs with the editor's Run (the SD ones on the tiny test checkpoint), no node
    turns red, nothing overlaps, the FinPercep nodes show their texts and previews; a screenshot each."""
    update = os.environ.get("FINPERCEP_UPDATE_DOCS") == "1"
    shots = REPO / "docs" if update else tmp_path
    thumbs = UI_WORKFLOWS if update else tmp_path / "thumbs"
    overrides = {"CheckpointLoaderSimple": {"ckpt_name": comfy.assets["checkpoint"]}, "KSampler": {"steps": 1},
                 "FinPercepLoadSRAdapter": {"adapter": comfy.assets["adapter"]},
                 "FinPercepLoadRewardModel": {"model": comfy.reward_model}}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "comfyui" / "check_ui_workflows.py"), comfy.server.url,
                           "--folder", TEMPLATE_FOLDER, "--shots", str(shots), "--set", json.dumps(overrides),
                           "--thumbnails", str(thumbs), "--search", ",".join(SEARCH_WORDS)],
                          capture_output=True, text=True, timeout=1800)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    report = {d["api"]: d for d in lines if "workflow" in d}
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert sorted(d["workflow"] for d in report.values()) == sorted(p.stem for p in UI_WORKFLOWS.glob("*.json"))
    # the cards, in order: what runs with nothing downloaded first (ComfyUI lists them in directory order)
    (cards,) = [d["card_titles"] for d in lines if "card_titles" in d]
    assert cards == list(TEMPLATES.values()), cards
    # the editor's node search finds a FinPercep node for each word an artist tried (it found none before)
    (search,) = [d["search"] for d in lines if "search" in d]
    assert {w: any(h.startswith("FinPercep") for h in hits) for w, hits in search.items()} == \
        {w: True for w in SEARCH_WORDS}, search
    for name, d in report.items():
        assert d["ok"] and d["loaded_from_template"] and d["api_equal"] and d["status"] == "success", d
        assert d["red"] == [] and d["overlaps"] == [] and not d["node_errors"] and d["execution_error"] is None, d
        shot = Path(d["screenshot"])
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(shot).size[0] >= 1200
        thumb = Image.open(d["thumbnail"])
        assert thumb.format == "JPEG" and thumb.size == (400, 400)
        # every FinPercep node shows its result, also those ComfyUI took from its cache, and the results
        # stay on the nodes like the core previews: after a tab switch and after a cached run
        assert d["text_nodes"] and sorted(d["texts"]) == sorted(d["text_nodes"]), d
        assert d["texts_after_tab_switch"] == d["texts"], d
        assert d["texts_after_cached_run"] == d["texts"], d
        # the SD workflows name their checkpoint in the frontend's missing-model dialog (not on this server)
        wants_sd = any(n["class_type"] == "CheckpointLoaderSimple" for n in json.loads((WORKFLOWS / f"{name}.json").read_text()).values())
        assert d["missing_models"] == (["v1-5-pruned-emaonly-fp16.safetensors"] if wants_sd else []), d
    score = report["finpercep_score"]
    assert any(re.search(r"score -?[0-9.]+", t) for t in score["texts"].values()), score["texts"]
    assert any(t.startswith("best: candidate") for t in report["finpercep_best_of_n"]["texts"].values())
    # the example image, the Score Image node (overlay + map) and the two Save Image nodes show previews
    assert len(score["previews"]) >= 4, score
