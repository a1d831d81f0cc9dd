"""Bad and odd inputs through every front door: the Python pipeline, `finpercep score`, the viewer's
batch / inspect, the ComfyUI nodes, and model loading in each of them.

The corpus lives in tests/bad_inputs.py. The library-level conversion rules are unit-tested in
tests/test_image_io.py and the model class's loading errors in tests/test_model.py; here each front
door must (a) score every good-but-odd input with a finite score and a map of the right size, and
(b) refuse every bad one with its own clear, one-place message naming the input and the problem,
without losing the good inputs that come after a bad one.
"""
from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import bad_inputs as bi
from conftest import make_tiny_model
from diffusers_ext import FinPercepRewardPipeline
from diffusers_ext.cli import main as cli_main
from diffusers_ext.image_io import ImageInputError
from hub_fixtures import local_hub  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
DISPLAY = (0.6, "inferno", "weighted")
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def model_dir(work) -> Path:
    make_tiny_model().save_pretrained(work / "models" / "finpercep" / "tiny")
    return work / "models" / "finpercep" / "tiny"


@pytest.fixture(scope="module")
def corpus(work) -> dict[str, bi.Case]:
    return bi.image_files(work / "corpus")


@pytest.fixture(scope="module")
def broken_models(work, model_dir) -> dict[str, bi.Case]:
    return bi.model_folders(model_dir, work / "models" / "finpercep")


@pytest.fixture(scope="module")
def pipe(model_dir) -> FinPercepRewardPipeline:
    p = FinPercepRewardPipeline.from_pretrained(model_dir)
    p.set_progress_bar_config(disable=True)
    return p


def _corpus_ids() -> tuple[list[str], list[str]]:
    """(all file names, bad file names) of the file corpus, for test ids."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cases = bi.image_files(Path(d))
    return sorted(cases), sorted(n for n, c in cases.items() if not c.ok)


FILE_IDS, BAD_FILE_IDS = _corpus_ids()
ARRAY_IDS = list(bi.array_inputs())
MODEL_IDS = ["corrupt_weights", "truncated_weights", "mismatched_config", "pickle_bin"]


def test_the_corpus_is_what_the_matrix_expects(corpus):
    assert sorted(corpus) == FILE_IDS and len(BAD_FILE_IDS) == 10 and len(FILE_IDS) - len(BAD_FILE_IDS) == 7
    assert not corpus[FILE_IDS[0]].ok, "the first file in name order is a bad one"
    assert max(c.value.stat().st_size for c in corpus.values()) < 50_000  # the bombs are tiny on disk
    assert corpus["empty.jpg"].value.stat().st_size == 0


def _check_good(score: float, pdm: np.ndarray, shape: tuple[int, int]) -> None:
    assert math.isfinite(score)
    assert pdm.shape == shape and pdm.dtype == np.float32
    assert np.isfinite(pdm).all() and 0.0 <= pdm.min() <= pdm.max() <= 1.0


# ------------------------------------------------------------------------------------ 1. pipeline


@pytest.mark.parametrize("name", FILE_IDS)
def test_pipeline_file_corpus(pipe, corpus, name):
    case = corpus[name]
    if case.ok:
        out = pipe(str(case.value))
        _check_good(float(out.scores[0]), out.pdms[0], case.shape)
        assert out.overlays[0].size == case.shape[::-1]  # overlays are (width, height)
        return
    with pytest.raises(ImageInputError, match=case.error) as err:
        pipe(str(case.value))
    msg = str(err.value)
    # names the input: the file for decode errors, the item and its size for size errors
    assert name in msg or "images[0] (PIL" in msg
    assert "Traceback" not in msg and len(msg) < 600


def test_pipeline_reads_odd_files_as_the_pixels_they_hold(pipe, corpus):
    """Same pixels, same score: a 16-bit PNG is scaled by 65535, alpha goes over white, and the EXIF
    orientation is applied (a mis-scaled or unrotated read would still give a finite score)."""
    from PIL import Image

    rgb = bi.base_rgb()
    red = rgb[..., 0]
    a = 128 / 255
    over_white = (rgb / 255.0 * a + (1 - a)).astype(np.float32)
    with Image.open(corpus["exif_rot6.jpg"].value) as im:
        stored = np.asarray(im.convert("RGB"))  # as stored: 64 wide x 48 high, not yet rotated
    files = [str(corpus[n].value) for n in ("gray16.png", "rgba.png", "exif_rot6.jpg")]
    got = pipe(files, output_overlays=False).scores
    want = pipe([red, over_white, np.rot90(stored, k=-1).copy()], output_overlays=False).scores
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert abs(float(pipe(np.rot90(stored, k=1).copy()).scores[0]) - float(got[2])) > 1e-6  # rotation matters


@pytest.mark.parametrize("name", ARRAY_IDS)
def test_pipeline_array_corpus(pipe, name):
    case = bi.array_inputs()[name]
    if case.ok:
        out = pipe(case.value, output_overlays=False)
        assert out.scores.shape == (1,)
        _check_good(float(out.scores[0]), out.pdms[0], case.shape)
        return
    with pytest.raises(ImageInputError, match=case.error) as err:
        pipe(case.value)
    assert re.match(r"images\[0\]", str(err.value)), "the message starts with the input's name"


def test_pipeline_refuses_a_list_naming_its_bad_item(pipe, corpus):
    """A list with one bad item is refused as a whole, naming that item, not scored partially."""
    items = [str(corpus["rgb.png"].value), str(corpus["truncated.png"].value), str(corpus["gray.png"].value)]
    with pytest.raises(ImageInputError, match="truncated.png: truncated or corrupt"):
        pipe(items)
    arrays = [bi.base_rgb(), bi.array_inputs()["numpy_nan"].value]
    with pytest.raises(ImageInputError, match=r"images\[1\] .*NaN"):
        pipe(arrays)


# ------------------------------------------------------------------------------------ 2. CLI


def test_cli_scores_the_whole_corpus_in_one_command(model_dir, corpus, work, capsys):
    files = [corpus[n].value for n in FILE_IDS]
    out_dir = work / "cli_out"
    rc = cli_main(["score", *map(str, files), "--model", str(model_dir), "--pdm-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert rc == 1  # documented: 1 when any file failed
    records = [json.loads(line) for line in captured.out.splitlines()]
    good = [n for n in FILE_IDS if corpus[n].ok]
    assert [Path(r["image"]).name for r in records] == good  # every good file, in order, once
    for r in records:
        case = corpus[Path(r["image"]).name]
        assert math.isfinite(r["score"]) and 0.0 <= r["pdm_mean"] <= r["pdm_max"] <= 1.0
        pdm = np.load(r["pdm_npy"])
        _check_good(r["score"], pdm, case.shape)
        assert abs(float(pdm.max()) - r["pdm_max"]) < 1e-6 and Path(r["overlay_png"]).is_file()
    errors = [line for line in captured.err.splitlines() if line.startswith("finpercep:")]
    bad = [n for n in FILE_IDS if not corpus[n].ok]
    assert len(errors) == len(bad), captured.err
    for name, line in zip(bad, errors):  # one line per bad file, in order, naming it and the problem
        assert name in line and re.search(corpus[name].error, line), line
    assert "Traceback" not in captured.err


# ------------------------------------------------------------------------------------ 3. viewer


@pytest.fixture(scope="module")
def viewer(model_dir):
    from demo.models import ModelRef
    from demo.viewer import Viewer, ViewerConfig

    return Viewer(ViewerConfig(model=ModelRef.parse("folder", str(model_dir)), examples_dir=None))


@pytest.fixture(scope="module")
def ref(model_dir) -> tuple[str, str]:
    return "Local folder", str(model_dir)


def test_viewer_batch_over_the_corpus_folder(viewer, ref, corpus, work):
    md, rows, gallery, downloads = viewer.batch([str(work / "corpus")], None, *ref, -1, None, *DISPLAY)
    good = {n for n, c in corpus.items() if c.ok}
    bad = {n for n, c in corpus.items() if not c.ok}
    scored = {r[1]: r for r in rows if r[-1] == ""}
    failed = {r[1]: r[-1] for r in rows if r[-1]}
    assert set(scored) == good and set(failed) == bad
    assert f"Scored {len(good)} of {len(corpus)} files" in md and f"{len(bad)} could not be scored" in md
    assert len(gallery) == len(good)
    for name, row in scored.items():
        h, w = corpus[name].shape
        assert math.isfinite(row[2]) and row[8] == f"{w}×{h}"
    for name, error in failed.items():
        assert name in error and re.search(corpus[name].error, error), error
        assert str(work) not in error, "errors name the file, not the server's temporary path"
    exported = json.loads(next(Path(p) for p in downloads if p.endswith(".json")).read_text())
    assert {r["image"] for r in exported if "error" not in r} == good


@pytest.mark.parametrize("name", BAD_FILE_IDS)
def test_viewer_inspect_refuses_a_bad_file_naming_it(viewer, ref, corpus, name):
    case = corpus[name]
    with pytest.raises(ImageInputError, match=case.error) as err:
        viewer.inspect(str(case.value), *ref, -1, None, *DISPLAY, 0.5, 5)
    assert str(err.value).startswith(name), "the message starts with the file's own name"


def test_viewer_errors_become_a_red_message_in_the_page(viewer, ref, corpus):
    """demo/app.py turns the viewer's errors into gr.Error (a toast), not a server traceback."""
    import gradio as gr

    from demo.app import _guard

    with pytest.raises(gr.Error, match=r"text.png: not a recognized image file"):
        _guard(viewer.inspect, str(corpus["text.png"].value), *ref, -1, None, *DISPLAY, 0.5, 5)
    with pytest.raises(gr.Error, match="cannot load reward model"):
        _guard(viewer.load_model, "Local folder", str(REPO / "tests"))


# ------------------------------------------------------------------------------------ 4. ComfyUI


class _Widget:
    """Stands in for comfy_api's io types (io.Int, io.Image, io.Custom(...)): Input/Output records."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def Input(self, *args, **kwargs):  # noqa: N802 - ComfyUI's spelling
        return SimpleNamespace(type=self.name, args=args, **kwargs)

    Output = Input


class _NodeOutput:
    def __init__(self, *args, ui=None) -> None:
        self.args, self.ui = args, ui


class _IOModule(types.ModuleType):
    def __getattr__(self, name: str):
        return _Widget(name)


def _comfy_modules(models_dir: Path) -> dict[str, types.ModuleType]:
    """The parts of ComfyUI that comfyui_finpercep/nodes.py uses, on the CPU, without a server
    (the real server runs the nodes in tests/test_comfyui_server.py)."""
    cpu = torch.device("cpu")
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = mm.unet_offload_device = mm.intermediate_device = lambda: cpu
    mm.load_models_gpu = lambda models, **kw: None
    mm.throw_exception_if_processing_interrupted = lambda: None
    mm.should_use_fp16 = lambda *a, **kw: False
    patcher = types.ModuleType("comfy.model_patcher")
    patcher.ModelPatcher = lambda model, load_device=None, offload_device=None: SimpleNamespace(model=model)
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total: int) -> None:
            self.total, self.current = total, 0

        def update(self, n: int) -> None:
            self.current += n

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher, comfy.utils = mm, patcher, utils
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {"loras": ([str(models_dir / "loras")], {".safetensors"})}
    fp.get_folder_paths = lambda kind: list(fp.folder_names_and_paths[kind][0])
    fp.get_filename_list = lambda kind: []
    fp.get_full_path = lambda kind, name: None
    fp.add_model_folder_path = lambda kind, path: fp.folder_names_and_paths.setdefault(kind, ([], set()))[0].append(path)
    io = _IOModule("comfy_api.latest.io")
    io.ComfyNode = type("ComfyNode", (), {"hidden": SimpleNamespace(unique_id=None)})  # no server: no node id
    io.Hidden = SimpleNamespace(unique_id="UNIQUE_ID")
    io.Schema = lambda **kw: SimpleNamespace(**kw)
    io.Custom = _Widget
    io.NodeOutput = _NodeOutput
    latest = types.ModuleType("comfy_api.latest")
    preview = lambda *args, **kwargs: SimpleNamespace(values=[])  # noqa: E731
    latest.io, latest.ui = io, SimpleNamespace(PreviewText=lambda text: text, PreviewImage=preview,
                                               PreviewMask=preview)
    latest.ComfyExtension = type("ComfyExtension", (), {})
    api = types.ModuleType("comfy_api")
    api.latest = latest
    return {"comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": patcher, "comfy.utils": utils,
            "folder_paths": fp, "comfy_api": api, "comfy_api.latest": latest}


@pytest.fixture(scope="module")
def nodes(work, model_dir):
    """comfyui_finpercep.nodes imported against the stand-in ComfyUI modules (removed afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, module in _comfy_modules(work / "models").items():
            mp.setitem(sys.modules, name, module)
        sys.modules.pop("comfyui_finpercep.nodes", None)
        import comfyui_finpercep.nodes as nodes_module

        yield nodes_module
        sys.modules.pop("comfyui_finpercep.nodes", None)
        import comfyui_finpercep

        vars(comfyui_finpercep).pop("nodes", None)  # `from comfyui_finpercep import nodes` must not find this one


@pytest.fixture(scope="module")
def handle(nodes, model_dir):
    out = nodes.LoadRewardModel.execute("tiny")
    assert isinstance(out.args[0], nodes.RewardModelHandle)
    return out.args[0]


def _comfy(h: int, w: int, c: int = 3, b: int = 1, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE: ``[B, H, W, C]`` float in [0, 1]."""
    rgb = torch.stack([torch.from_numpy(bi.base_rgb(h, w, seed + k)) for k in range(b)]).float() / 255.0
    return rgb if c == 3 else rgb[..., :1].repeat(1, 1, 1, c)


def test_the_shipped_upscalers_are_in_comfyuis_upscale_models_paths(nodes):
    """Load Upscale Model lists the tuned upscaler the repository ships, with no copying."""
    import folder_paths

    paths = folder_paths.folder_names_and_paths["upscale_models"][0]
    shipped = nodes.SHIPPED_UPSCALERS / "realesr-animevideov3-x4-finpercep"
    assert str(shipped) in paths and (shipped / "realesr-animevideov3-x4-finpercep.safetensors").is_file()


def test_comfy_score_node_odd_but_valid_images(nodes, handle):
    rgb = _comfy(48, 64)
    score, scores, pdm, overlay = nodes.ScoreImage.execute(handle, rgb).args
    assert math.isfinite(score) and pdm.shape == (1, 48, 64) and overlay.shape == (1, 48, 64, 3)
    ref = FinPercepRewardPipeline(handle.pipe.reward_model)(rgb[0].permute(2, 0, 1), output_overlays=False)
    assert scores[0] == pytest.approx(float(ref.scores[0]), abs=1e-5)  # the node scores what the library scores
    gray = nodes.ScoreImage.execute(handle, rgb[..., :1]).args  # 1 channel: repeated to RGB
    assert gray[2].shape == (1, 48, 64) and math.isfinite(gray[0])
    rgba = torch.cat([rgb, torch.full((1, 48, 64, 1), 0.5)], -1)  # half transparent: over white, as everywhere
    over_white = rgb * 0.5 + 0.5
    want = FinPercepRewardPipeline(handle.pipe.reward_model)(over_white[0].permute(2, 0, 1)).scores[0]
    assert nodes.ScoreImage.execute(handle, rgba).args[1][0] == pytest.approx(float(want), abs=1e-5)
    best = nodes.BestOfN.execute(handle, rgba).args[0]
    assert best.shape == (1, 48, 64, 3) and torch.equal(best, rgb), "Best of N outputs the RGB part"
    thin = nodes.ScoreImage.execute(handle, _comfy(16, 300)).args  # minimum height, tiled along its width
    assert thin[2].shape == (1, 16, 300) and math.isfinite(thin[0])
    overshoot = rgb.clone()
    overshoot[0, :4, :4] = 1.2  # e.g. bicubic upscale ringing: ComfyUI clips it, like its Save Image does
    assert nodes.ScoreImage.execute(handle, overshoot).args[2].shape == (1, 48, 64)
    batch = _comfy(48, 64, b=3)
    s3 = nodes.ScoreImage.execute(handle, batch).args[1]
    assert len(s3) == 3 and all(map(math.isfinite, s3))


def _nan_batch() -> torch.Tensor:
    x = _comfy(48, 64, b=3)
    x[1, 5, 5, 0] = float("nan")
    return x


def _inf_batch() -> torch.Tensor:
    x = _comfy(48, 64, b=2)
    x[1, 0, 0, 2] = float("inf")
    return x


COMFY_BAD = {
    "nan_in_item_1": (_nan_batch, r"batch item 1 of 3.*1 NaN"),
    "inf_in_item_1": (_inf_batch, r"batch item 1 of 2.*1 infinite"),
    "int64": (lambda: (_comfy(48, 64) * 255).long(), "int64 has no defined pixel range"),
    "1x1": (lambda: _comfy(1, 1), r"1x1 px \(width x height\) is below the reward model's minimum of 16"),
    "thin_1x500": (lambda: _comfy(500, 1), r"1x500 px \(width x height\) is below the reward model's minimum"),
    "thin_500x1": (lambda: _comfy(1, 500), r"500x1 px \(width x height\) is below the reward model's minimum"),
    "2_channels": (lambda: _comfy(48, 64, c=2), r"expected a ComfyUI IMAGE batch \[B, H, W, 3\], got \(1, 48, 64, 2\)"),
    "5_channels": (lambda: _comfy(48, 64, c=5), r"got \(1, 48, 64, 5\)"),
    "channels_first": (lambda: _comfy(48, 64).permute(0, 3, 1, 2), r"got \(1, 3, 48, 64\)"),
    "no_batch_axis": (lambda: _comfy(48, 64)[0], r"got \(48, 64, 3\)"),
    "5d": (lambda: _comfy(48, 64)[None], r"got \(1, 1, 48, 64, 3\)"),
    "numpy": (lambda: _comfy(48, 64).numpy(), r"got ndarray"),
}


@pytest.mark.parametrize("name", list(COMFY_BAD))
@pytest.mark.parametrize("node", ["ScoreImage", "BestOfN"])
def test_comfy_nodes_refuse_bad_images_naming_the_input(nodes, handle, node, name):
    make, error = COMFY_BAD[name]
    cls = getattr(nodes, node)
    with pytest.raises(ValueError, match=error) as err:
        cls.execute(handle, make())
    msg = str(err.value)
    title, field = ("FinPercep Score Image", "image") if node == "ScoreImage" else ("FinPercep Best of N", "images")
    assert msg.startswith(f"{title}: input '{field}': ") and "Fix: " in msg


def test_comfy_best_of_n_ranks_a_batch(nodes, handle):
    batch = _comfy(48, 64, b=3)
    best, index, rewards, ranked = nodes.BestOfN.execute(handle, batch).args
    assert len(rewards) == 3 and all(map(math.isfinite, rewards)) and index == int(np.argmax(rewards))
    assert torch.equal(best[0], batch[index]) and ranked.shape == batch.shape


# ------------------------------------------------------------------------------------ 5. weights


@pytest.mark.parametrize("name", MODEL_IDS)
def test_broken_model_folders_through_every_front_door(nodes, viewer, broken_models, corpus, name, capsys):
    from demo.models import ModelLoadError, ModelRef, ModelStore

    case = broken_models[name]
    folder = str(case.value)
    # the pipeline (Python API)
    with pytest.raises((OSError, ValueError), match=case.error):
        FinPercepRewardPipeline.from_pretrained(folder)
    # the CLI: one line, exit code 2, no image scored
    rc = cli_main(["score", str(corpus["rgb.png"].value), "--model", folder])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    err = [line for line in captured.err.splitlines() if line.startswith("finpercep:")]
    assert len(err) == 1 and "cannot load reward model" in err[0] and re.search(case.error, err[0])
    # the viewer: its model store, the model panel, and the start-up message
    with pytest.raises(ModelLoadError, match=f"cannot load reward model '{name}'.*{case.error}"):
        ModelStore().get(ModelRef.parse("folder", folder))
    with pytest.raises(ModelLoadError, match=case.error):
        viewer.load_model("Local folder", folder)
    from demo.viewer import Viewer, ViewerConfig

    md, stages = Viewer(ViewerConfig(model=ModelRef.parse("folder", folder)), store=viewer.store).initial_model()
    assert md.startswith("⚠️") and re.search(case.error, md) and stages == [("model default", -1)]
    # ComfyUI: the loader node's models/finpercep/<folder> choice
    assert name in nodes.reward_model_choices()
    with pytest.raises(ValueError, match=rf"FinPercep Load Reward Model: input 'model': {name} is not a loadable.*{case.error}"):
        nodes.LoadRewardModel.execute(name)


def test_a_broken_pipeline_folder_is_explained_too(pipe, work):
    """A pipeline folder (model_index.json + reward_model/) goes through diffusers' pipeline loader,
    which must still reach FinPercepRM's safe loading and its messages."""
    folder = work / "broken_pipeline"
    pipe.save_pretrained(folder)
    weights = folder / "reward_model" / bi.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(OSError, match="corrupt or truncated"):
        FinPercepRewardPipeline.from_pretrained(folder)
    weights.unlink()
    torch.save(pipe.reward_model.state_dict(), folder / "reward_model" / "diffusion_pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors only"):
        FinPercepRewardPipeline.from_pretrained(folder)


ESCAPES = ["../escape", "owner/..", "../../etc/passwd", "owner/../name"]


@pytest.mark.parametrize("ref_", ESCAPES)
def test_model_references_that_climb_out_are_refused(nodes, viewer, corpus, ref_, capsys):
    from demo.models import ModelLoadError, ModelRef

    with pytest.raises((ValueError, FileNotFoundError), match=r"neither a local folder nor a Hub id|Repo id must"):
        FinPercepRewardPipeline.from_pretrained(ref_)
    assert cli_main(["score", str(corpus["rgb.png"].value), "--model", ref_]) == 2
    assert "cannot load reward model" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match=r"cannot load reward model .*\(Hub id\)"):
        viewer.store.get(ModelRef.parse("hub", ref_))
    with pytest.raises(ValueError, match="input 'hub_id'.*not a Hub repository id.*owner/name"):
        nodes.LoadRewardModel.execute("(bundled default)", hub_id=ref_)
    with pytest.raises(ValueError, match="input 'model'"):  # the combo value is never a path out of models/finpercep
        nodes.LoadRewardModel.execute(ref_)


def test_a_hub_repository_listing_a_file_outside_itself_is_refused(local_hub, tmp_path, monkeypatch, nodes, capsys):
    """A (malicious or broken) Hub repository whose file list holds ``../escape.json``: the pipeline's
    Hub download (huggingface_hub's snapshot_download), the CLI, the viewer and the ComfyUI loader
    (our checksummed download_once) refuse it and write nothing outside the repository folder."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoSibling

    from demo.models import ModelLoadError, ModelRef, ModelStore
    from test_comfyui_units import _push_model

    _push_model(tmp_path, "user/evil")
    info, tree = HfApi.model_info, HfApi.list_repo_tree

    def model_info(self, *args, **kwargs):  # the listing download_once reads
        out = info(self, *args, **kwargs)
        out.siblings = [*out.siblings, RepoSibling(rfilename="../escape.json", blob_id="0" * 40)]
        return out

    def list_repo_tree(self, *args, **kwargs):  # the listing snapshot_download reads
        yield from tree(self, *args, **kwargs)
        yield RepoFile(path="../escape.json", size=2, oid="0" * 40)

    monkeypatch.setattr(HfApi, "model_info", model_info)
    monkeypatch.setattr(HfApi, "list_repo_tree", list_repo_tree)
    with pytest.raises(ValueError, match=r"escape\.json"):
        FinPercepRewardPipeline.from_pretrained("user/evil")
    assert cli_main(["score", "x.png", "--model", "user/evil"]) == 2
    assert "cannot load reward model user/evil" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match=r"cannot load reward model 'user/evil' \(Hub id\).*escape\.json"):
        ModelStore().get(ModelRef.parse("hub", "user/evil"))
    with pytest.raises(ValueError, match=r"input 'hub_id'.*refusing file name '\.\./escape\.json'"):
        nodes.LoadRewardModel.execute("(bundled default)", hub_id="user/evil")
    assert not list(tmp_path.rglob("escape.json")), "nothing was written outside the repository folders"


def test_no_code_path_trusts_remote_code():
    """Loading a model must never run code from a repository: no source passes trust_remote_code=True,
    and the transformers backbone leaves it at transformers' default (False)."""
    pattern = re.compile(r"trust_remote_code\s*[=:]\s*True|trust_remote_code\s*=\s*(?!False)\w")
    offenders = [f"{p.relative_to(REPO)}:{i}" for folder in ("diffusers_ext", "demo", "comfyui_finpercep", "training")
                 for p in sorted((REPO / folder).rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_the_hub_backbone_does_not_trust_remote_code(monkeypatch):
    """The one place that builds a model from a Hub repository's own config (the ``hf`` backbone)
    calls transformers without ``trust_remote_code`` (transformers' default: refuse custom code)."""
    transformers = pytest.importorskip("transformers")
    from diffusers_ext.backbones.transformers_backbone import TransformersBackbone

    cfg = transformers.AutoConfig.for_model("resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                            out_features=["stage1", "stage2"])
    calls = []

    def config_from_pretrained(repo_id, **kwargs):
        calls.append(("AutoConfig", repo_id, kwargs))
        return cfg

    def backbone_from_pretrained(repo_id, **kwargs):
        calls.append(("AutoBackbone", repo_id, kwargs))
        return transformers.AutoBackbone.from_config(cfg)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config_from_pretrained)
    monkeypatch.setattr(transformers.AutoBackbone, "from_pretrained", backbone_from_pretrained)
    TransformersBackbone(repo_id="owner/backbone").load_pretrained()
    assert [c[:2] for c in calls] == [("AutoConfig", "owner/backbone"), ("AutoBackbone", "owner/backbone")]
    assert all(not c[2].get("trust_remote_code", False) for c in calls)
