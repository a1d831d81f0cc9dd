"""The FinPercep nodes inside a real ComfyUI (0.3.75) server.

Session set-up (see tests/comfyui/): install ComfyUI and its venv (setup_comfyui.sh, cached outside
the repository), build tiny diffusion components + SR adapters with peft (make_test_assets.py,
cached), lay out a ComfyUI base directory with this repository linked into custom_nodes/, real
photos (scikit-image) in input/, and start `main.py --cpu` with HF_ENDPOINT pointing at the local
Hub test server. The shipped example workflows (workflows/api/*.json) then run through POST /prompt
with the bundled reward model (and the tiny SD components for the SR / inpainting parts).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
from finpercep_comfy_harness import ComfyServer, ensure_comfyui, run_in_comfy_venv  # noqa: E402
from hub_server import LocalHubServer, hub_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows" / "api"
NODE_IDS = list(json.loads((REPO / "node_list.json").read_text()))
BUNDLED = "(bundled default)"
SIZE = 256
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
    os.symlink(REPO, base / "custom_nodes" / "finpercep")
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(assets / "models" / "checkpoints" / info["checkpoint"], base / "models" / "checkpoints" / info["checkpoint"])
    shutil.copytree(assets / "models" / "loras", base / "models" / "loras")
    (base / "input").mkdir()
    photos = _photos(base / "input")

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


def _wf(name: str, comfy=None) -> dict:
    wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node in wf.values():
        if node["class_type"] == "FinPercepLoadRewardModel" and comfy is not None:
            node["inputs"]["model"] = comfy.reward_model
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
        assert info[node_id]["category"] == "FinPercep"
    ours = {k for k, v in info.items() if v.get("python_module") == "custom_nodes.finpercep"}
    assert ours == set(NODE_IDS)
    log = comfy.server.log()
    assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if "finpercep" in l.lower())
    assert re.search(r"Import times for custom nodes:.*\n.*finpercep", log, re.S), log[-2000:]
    score = info["FinPercepScoreImage"]
    assert score["output"] == ["FLOAT", "FLOAT", "MASK", "IMAGE"] and score["output_is_list"] == [False, True, False, False]
    assert BUNDLED in info["FinPercepLoadRewardModel"]["input"]["required"]["model"][1]["options"]
    assert comfy.assets["adapter"] in info["FinPercepLoadSRAdapter"]["input"]["required"]["adapter"][1]["options"]


# ------------------------------------------------------------------------------------ reward workflows


def test_score_workflow_on_a_photo_with_a_pasted_artifact(comfy):
    wf = _wf("finpercep_score", comfy)
    wf["1"]["inputs"]["image"] = comfy.photos["artifact"].name
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
    # the overlay shows the image where the map is clean and the heat map where it is not
    photo = np.asarray(Image.open(comfy.photos["artifact"]).convert("RGB"), np.float32) / 255
    clean_px = pdm < 0.05
    assert clean_px.mean() > 0.3
    assert np.abs(overlay[clean_px] - photo[clean_px]).mean() < 0.05
    # forced tiling (64 px tiles, 16 px overlap) runs through the ComfyUI progress bar and gives
    # the same picture: a seamless map, the defect found again
    wf["3"]["inputs"].update(tile_size=64, tile_overlap=16)
    r = _ok(comfy.server.run(wf), comfy)
    tiled = _img(comfy, r, "6")[..., 0]
    assert tiled.shape == (SIZE, SIZE)
    assert tiled[inside].mean() > tiled[~inside].mean() + 0.05, (tiled[inside].mean(), tiled[~inside].mean())
    assert np.isfinite(_scores(r.texts("3")[0])[0])


def test_best_of_n_orders_clean_mild_heavy(comfy):
    wf = _wf("finpercep_best_of_n", comfy)
    wf["1"]["inputs"]["image"] = comfy.photos["heavy"].name
    wf["3"]["inputs"]["image"] = comfy.photos["clean"].name
    wf["4"]["inputs"]["image"] = comfy.photos["mild"].name
    r = _ok(comfy.server.run(wf), comfy)
    text = r.texts("7")[0]
    assert text.startswith("best: candidate 1 of 3"), text
    rewards = [float(v) for v in re.findall(r"reward (-?[0-9.]+)", text)]
    assert rewards[1] > rewards[2] > rewards[0], text
    best = _img(comfy, r, "8")
    clean = np.asarray(Image.open(comfy.photos["clean"]).convert("RGB"), np.float32) / 255
    assert np.abs(best - clean).max() < 1.5 / 255
    ranked = [_img(comfy, r, "9", i) for i in range(3)]
    assert np.abs(ranked[0] - clean).max() < 1.5 / 255
    # with the PDM term on, the clean photo still wins (its worst region is the least degraded)
    wf["7"]["inputs"]["pdm_weight"] = 1.0
    r2 = _ok(comfy.server.run(wf), comfy)
    assert r2.texts("7")[0].startswith("best: candidate 1 of 3"), r2.texts("7")[0]


def test_fix_where_bad_inpaints_only_the_defect(comfy):
    wf = _tiny_sd(_wf("finpercep_fix_where_bad", comfy), comfy)
    wf["1"]["inputs"]["image"] = comfy.photos["artifact"].name
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
    wf = _tiny_sd(_wf("finpercep_upscale_score_fix", comfy), comfy)
    wf["1"]["inputs"]["image"] = comfy.photos["lowres"].name
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


def test_ui_workflows_are_the_twins_of_the_api_workflows(comfy, tmp_path):
    """workflows/*.json (editor format) are generated from workflows/api/*.json with this server's
    /object_info; a change of a node's inputs or of an API workflow must regenerate them."""
    info = tmp_path / "object_info.json"
    info.write_text(json.dumps(comfy.server.object_info()))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "comfyui" / "api_to_ui.py"), str(info), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for ui_file in sorted((REPO / "workflows").glob("*.json")):
        ui = json.loads(ui_file.read_text())
        api = json.loads((WORKFLOWS / ui_file.name).read_text())
        assert sorted(n["type"] for n in ui["nodes"]) == sorted(n["class_type"] for n in api.values())
        assert len(ui["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())
