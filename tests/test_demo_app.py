"""The PDM viewer (demo/): its functions called directly, and the running app through gradio_client."""
from __future__ import annotations

import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from fixture_models import defect_photo, make_detector_model, smooth_photo
from diffusers_ext import FinPercepRewardPipeline
from diffusers_ext.image_io import ImageInputError
from diffusers_ext.pdm import overlay, pdm_from_png, region_stats
from hub_fixtures import local_hub  # noqa: F401

from demo import core, models  # noqa: E402
from viewer_browser import _base_photo, artifact_photo, free_port, running_app  # noqa: E402
from demo.exports import ExportStore, safe_stem  # noqa: E402
from demo.models import ModelLoadError, ModelRef, ModelStore, stage_choices  # noqa: E402
from demo.viewer import Viewer, ViewerConfig  # noqa: E402

DISPLAY = (0.6, "inferno", "weighted")
# gradio 6.31's own use of pandas 3 (not ours)
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny model folder, a photo with pasted artifacts, other test inputs and an examples folder."""
    d = tmp_path_factory.mktemp("viewer")
    make_tiny_model().save_pretrained(d / "tiny")
    photo, _ = artifact_photo(d / "photo_artifacts.png", size=128)
    clean = d / "photo_clean.png"
    Image.fromarray(_base_photo(128)).save(clean)
    (d / "notes.png").write_text("these are notes, not pixels")
    Image.new("RGB", (8, 8), (40, 90, 200)).save(d / "tiny.png")
    Image.open(photo).resize((96, 80)).save(d / "small_b.png")
    ex = d / "examples"
    ex.mkdir()
    Image.open(photo).save(ex / "scene_sr.png")
    Image.open(photo).convert("L").convert("RGB").save(ex / "scene_clean.png")
    Image.open(photo).save(ex / "other_x4.png")
    return {"dir": d, "model": d / "tiny", "photo": photo, "clean": clean, "notimage": d / "notes.png",
            "tiny": d / "tiny.png", "small_b": d / "small_b.png", "examples": ex}


@pytest.fixture(scope="module")
def config(files) -> ViewerConfig:
    return ViewerConfig(model=ModelRef.parse("folder", str(files["model"])), max_file_size="200kb",
                        examples_dir=files["examples"], max_batch=4)


@pytest.fixture(scope="module")
def viewer(config) -> Viewer:
    return Viewer(config)


@pytest.fixture(scope="module")
def ref(files) -> tuple[str, str]:
    return "Local folder", str(files["model"])


@pytest.fixture(scope="module")
def pipe(files) -> FinPercepRewardPipeline:
    return FinPercepRewardPipeline.from_pretrained(files["model"])


def fake_analysis(pdm: np.ndarray, score: float = 0.9) -> core.Analysis:
    h, w = pdm.shape
    rgb = np.tile(np.linspace(0, 1, w, dtype=np.float32)[None, :, None], (h, 1, 3))
    return core.Analysis(name="fake.png", rgb=rgb, score=score, pdm=pdm.astype(np.float32), stage=2, num_stages=2,
                         model="fake", seconds=0.0, tiles=1, stats=core.summary(pdm))


# ------------------------------------------------------------------------------------- model choice


def test_model_ref_parse_and_cli(files):
    assert ModelRef.parse("Bundled default", "ignored") == ModelRef("default", "")
    folder = ModelRef.parse("Local folder", str(files["model"]))
    assert folder.kind == "folder" and Path(folder.ref) == files["model"].resolve() and folder.label == "tiny"
    assert ModelRef.parse("hub", " owner/name ") == ModelRef("hub", "owner/name")
    assert ModelRef.from_cli(None) == ModelRef() and ModelRef.from_cli("owner/name").kind == "hub"
    assert ModelRef.from_cli(str(files["model"])) == folder
    with pytest.raises(ModelLoadError, match="needs a model folder path"):
        ModelRef.parse("Local folder", "  ")
    with pytest.raises(ModelLoadError, match="needs a Hub id"):
        ModelRef.parse("Hub id", "")
    with pytest.raises(ModelLoadError, match="unknown model source 'ftp'"):
        ModelRef.parse("ftp", "x")
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hub id"):
        ModelRef.from_cli("./no/such/model/folder")


def test_store_caches_evicts_and_explains_failures(files, tmp_path, monkeypatch):
    store = ModelStore(capacity=1)
    ref = ModelRef.parse("folder", str(files["model"]))
    p1 = store.get(ref)
    assert store.get(ref) is p1  # cached
    make_tiny_model(seed=1).save_pretrained(tmp_path / "other")
    store.get(ModelRef.parse("folder", str(tmp_path / "other")))
    assert store.loaded() == [ModelRef.parse("folder", str(tmp_path / "other"))]  # LRU capacity 1
    with pytest.raises(ModelLoadError, match="does not exist"):
        store.get(ModelRef("folder", str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load reward model 'empty'.*config.json"):
        store.get(ModelRef("folder", str(tmp_path / "empty")))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        store.get(ModelRef("hub", "nobody/no-such-reward-model"))
    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", tmp_path / "empty")
    with pytest.raises(ModelLoadError, match=r"bundled default reward model is missing.*training.train_default"):
        store.get(ModelRef())


def test_hub_id_model_loads_through_the_store(local_hub, pipe):
    pipe.push_to_hub("finpercep/viewer-tiny")
    loaded = ModelStore().get(ModelRef.parse("Hub id", "finpercep/viewer-tiny"))
    assert loaded.reward_model.num_stages == pipe.reward_model.num_stages


def test_stage_choices_cover_every_curriculum_stage(viewer, ref):
    md, choices = viewer.load_model(*ref)
    n = make_tiny_model().num_stages
    assert f"stages 0..{n}" in md and "tiny" in md
    assert [v for _, v in choices] == [-1, *range(n + 1)]
    assert "global score only" in choices[1][0] and "finest" in choices[-1][0]
    assert stage_choices(None) == [("model default", -1)]


def test_initial_model_failure_is_a_message_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", tmp_path)
    md, choices = Viewer(ViewerConfig()).initial_model()
    assert md.startswith("⚠️") and "training.train_default" in md and choices == [("model default", -1)]


# ----------------------------------------------------------------------------------------- inspect


def test_inspect_matches_the_pipeline_and_exports_everything(viewer, ref, files, pipe):
    state, md, (img, ov), boxes, rows, downloads = viewer.inspect(files["photo"], *ref, -1, "0", *DISPLAY, 0.5, 5)
    direct = pipe(str(files["photo"]), tile_size=0, output_overlays=False)
    an = state.analysis
    np.testing.assert_allclose(an.pdm, direct.pdms[0], atol=1e-6)
    assert an.score == pytest.approx(float(direct.scores[0]), abs=1e-6)
    assert f"Score {an.score:.3f}" in md and an.guide.band(an.score)[0] in md and "photo_artifacts.png" in md
    assert img.size == ov.size == boxes.size == (128, 128)
    expected = region_stats(an.pdm, threshold=0.5, top_k=5)
    assert [r[2] for r in rows] == [f"{r.x0}, {r.y0}, {r.x1}, {r.y1}" for r in expected]
    by_suffix = {Path(p).name.split(".", 1)[1]: Path(p) for p in downloads}
    assert set(by_suffix) == {"pdm.npy", "pdm.png", "overlay.png", "json"}
    np.testing.assert_array_equal(np.load(by_suffix["pdm.npy"]), an.pdm)
    assert np.abs(pdm_from_png(by_suffix["pdm.png"]) - an.pdm).max() <= 0.5 / 65535 + 1e-7
    want = np.asarray(overlay(an.rgb, an.pdm, alpha=0.6, cmap="inferno"))
    np.testing.assert_array_equal(np.asarray(Image.open(by_suffix["overlay.png"])), want)
    record = json.loads(by_suffix["json"].read_text())
    assert record["score"] == pytest.approx(an.score) and record["image"] == "photo_artifacts.png"
    assert record["pdm_max"] == pytest.approx(float(an.pdm.max())) and len(record["regions"]) == len(rows)


def test_regions_find_the_planted_defect(viewer, tmp_path):
    """The regions of a real inspection, with a model whose map has structure (tests/fixture_models.py):
    a noise patch planted off the diagonal is the first and only component region, at its place, and
    its box is drawn there; a clean photo has no component at all. (The tiny random model maps every
    pixel to ~0.519: one region, the whole image, whatever the region finding does.)"""
    detector = tmp_path / "detector"
    make_detector_model().save_pretrained(detector)
    box = (80, 16, 112, 48)  # x0, y0, x1, y1: a box with x and y swapped would miss it
    for name, img in (("defect", defect_photo(128, box=box)[0]), ("clean", smooth_photo(128))):
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    _, _, _, boxes, rows, _ = viewer.inspect(tmp_path / "defect.png", "Local folder", str(detector), -1, "0",
                                             *DISPLAY, 0.5, 5)
    assert len(rows) == 1 and rows[0][1] == "component" and rows[0][4] > 0.8, rows
    x0, y0, x1, y1 = (int(v) for v in rows[0][2].split(", "))
    inter = max(0, min(x1, box[2]) - max(x0, box[0])) * max(0, min(y1, box[3]) - max(y0, box[1]))
    union = (x1 - x0) * (y1 - y0) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    assert inter / union > 0.7, (rows[0][2], box)
    drawn = np.asarray(boxes)
    assert tuple(drawn[y0, (x0 + x1) // 2]) == (255, 59, 48) and tuple(drawn[y1 - 1, (x0 + x1) // 2]) == (255, 59, 48)
    _, _, _, _, clean_rows, _ = viewer.inspect(tmp_path / "clean.png", "Local folder", str(detector), -1, "0",
                                               *DISPLAY, 0.5, 5)
    assert clean_rows and all(r[1] == "window" for r in clean_rows) and max(r[5] for r in clean_rows) < 0.5


def test_stage_zero_has_no_map_and_no_regions(viewer, ref, files):
    state, md, _, _, rows, _ = viewer.inspect(files["photo"], *ref, 0, "0", *DISPLAY, 0.5, 5)
    assert state.analysis.stage == 0 and not state.analysis.pdm.any()
    assert "global only" in md and rows == []


def test_large_images_are_tiled_like_the_cli(viewer, ref, files, pipe):
    state, md, *_ = viewer.inspect(files["photo"], *ref, -1, "64", *DISPLAY, 0.5, 5)
    direct = pipe(str(files["photo"]), tile_size=64, output_overlays=False)
    assert state.analysis.tiles == 9 and "9 tiles" in md
    np.testing.assert_allclose(state.analysis.pdm, direct.pdms[0], atol=1e-6)


def test_progress_is_reported_per_tile_with_the_time_left(viewer, ref, files):
    seen: list[tuple[float, str]] = []
    viewer.inspect(files["photo"], *ref, -1, "64", *DISPLAY, 0.5, 5, progress=lambda f, m: seen.append((f, m)))
    tiles = [(f, m) for f, m in seen if " tile " in m and " of 9" in m]
    assert [round(f * 9) for f, _ in tiles] == list(range(1, 10)), seen
    assert all(re.search(r"tile \d of 9, about \d+ s left", m) for _, m in tiles), tiles


def test_render_redraws_without_the_model(viewer, ref, files):
    state, *_ = viewer.inspect(files["photo"], *ref, -1, "0", *DISPLAY, 0.5, 5)
    store, viewer.store = viewer.store, None  # a model run would fail now
    try:
        md, (img, ov), _, rows, downloads = viewer.render(state, 0.0, "viridis", "weighted", 0.5, 2)
        _, (_, ov_u), *_ = viewer.render(state, 1.0, "gray", "uniform", 0.5, 2)
    finally:
        viewer.store = store
    np.testing.assert_array_equal(np.asarray(ov), np.asarray(img))  # opacity 0: the image itself
    gray = np.rint(state.analysis.pdm * 255)
    assert np.abs(np.asarray(ov_u)[..., 0].astype(float) - gray).max() <= 1  # uniform, opacity 1: the map
    assert len(rows) <= 2 and len(downloads) == 4 and all(Path(p).is_file() for p in downloads)
    with pytest.raises(ImageInputError, match="nothing to redraw"):
        viewer.render(None, *DISPLAY, 0.5, 5)


def test_regions_table_and_boxes_follow_the_map():
    pdm = np.zeros((64, 96), np.float32)
    pdm[10:30, 50:80] = 0.9
    pdm[40:44, 5:9] = 0.7
    an = fake_analysis(pdm)
    regions = core.find_regions(an.pdm, threshold=0.5, top_k=5)
    rows = core.region_rows(an, regions)
    assert rows[0] == [1, "component", "50, 10, 80, 30", round(100 * 600 / pdm.size, 2), 0.9, 0.9]
    assert rows[1][2] == "5, 40, 9, 44" and len(rows) == 2
    drawn = np.asarray(core.regions_image(an, regions))
    assert tuple(drawn[10, 60]) == (255, 59, 48)  # top edge of box 1 in red
    assert core.find_regions(np.zeros((8, 8), np.float32)) == []


def test_input_errors_name_the_file_and_the_fix(viewer, ref, files):
    with pytest.raises(ImageInputError, match=r"notes\.png: not a recognized image file.*text file.*pass a PNG"):
        viewer.inspect(files["notimage"], *ref, -1, None, *DISPLAY, 0.5, 5)
    with pytest.raises(ImageInputError, match=r"tiny\.png: 8x8 px .* below the reward model.s minimum of 16 px"):
        viewer.inspect(files["tiny"], *ref, -1, None, *DISPLAY, 0.5, 5)
    with pytest.raises(ImageInputError, match="no image"):
        viewer.inspect(None, *ref, -1, None, *DISPLAY, 0.5, 5)
    with pytest.raises(ImageInputError, match="'abc' is not a number"):
        viewer.inspect(files["photo"], *ref, -1, "abc", *DISPLAY, 0.5, 5)
    with pytest.raises(ImageInputError, match="stage must be in 0..4"):
        viewer.inspect(files["photo"], *ref, 9, None, *DISPLAY, 0.5, 5)
    small = Viewer(ViewerConfig(max_pixels=1000), store=viewer.store)
    with pytest.raises(ImageInputError, match="above the limit of 1,000 pixels"):
        small.inspect(files["photo"], *ref, -1, None, *DISPLAY, 0.5, 5)


# ---------------------------------------------------------------------------------- compare / batch


def test_compare_scores_both_and_maps_the_difference(viewer, ref, files):
    state, md, ov_a, ov_b, diff, downloads = viewer.compare(files["photo"], files["clean"], *ref, -1, "0", *DISPLAY)
    c = state.comparison
    assert c.diff.shape == (128, 128) and not c.resized
    np.testing.assert_allclose(c.diff, c.b.pdm - c.a.pdm, atol=1e-7)
    assert f"B − A = {c.b.score - c.a.score:+.3f}" in md and ov_a.size == ov_b.size == diff.size == (128, 128)
    names = {Path(p).name for p in downloads}
    assert {"compare.json", "diff_b_minus_a.npy", "a_photo_artifacts.pdm.npy", "b_photo_clean.pdm.png"} <= names
    record = json.loads(next(Path(p) for p in downloads if p.endswith("compare.json")).read_text())
    assert record["score_delta_b_minus_a"] == pytest.approx(c.b.score - c.a.score)
    state2, *_ = viewer.compare(files["photo"], files["small_b"], *ref, -1, "0", *DISPLAY)
    assert state2.comparison.resized and state2.comparison.diff.shape == (128, 128)
    same = core.compare(c.a, c.a)
    assert not same.diff.any() and same.record()["better"] == "tie"
    with pytest.raises(ImageInputError, match="compare needs two images"):
        viewer.compare(files["photo"], None, *ref, -1, None, *DISPLAY)


def test_diff_image_colours():
    img = np.asarray(core.diff_image(np.array([[-1.0, 0.0, 1.0]], np.float32)))
    assert tuple(img[0, 0]) == (33, 102, 172) and tuple(img[0, 1]) == (247, 247, 247)
    assert tuple(img[0, 2]) == (178, 24, 43)


def test_batch_scores_files_and_folders_worst_first(viewer, ref, files, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.open(files["photo"]).save(folder / "a.png")
    (folder / "readme.txt").write_text("skipped: not an image suffix")
    md, rows, gallery, downloads = viewer.batch([str(files["clean"]), str(files["notimage"])],
                                                [str(folder / "a.png"), str(folder / "readme.txt")], *ref, -1, "0",
                                                *DISPLAY)
    assert "Scored 2 of 3 files" in md
    scores = [r[2] for r in rows if r[2] is not None]
    assert scores == sorted(scores) and len(gallery) == 2
    assert rows[-1][1] == "notes.png" and "not a recognized image file" in rows[-1][-1]
    js = json.loads(Path(downloads[0]).read_text())
    assert [r["image"] for r in js][-1] == "notes.png" and "batch.csv" in downloads[1]
    with pytest.raises(ImageInputError, match="batch limit of 4"):
        viewer.batch([str(files["photo"])] * 1 + [str(p) for p in files["examples"].iterdir()] + [str(files["clean"])],
                     None, *ref, -1, None, *DISPLAY)
    with pytest.raises(ImageInputError, match="no images to score"):
        viewer.batch([], [str(folder / "readme.txt")], *ref, -1, None, *DISPLAY)


def test_examples_and_same_scene_pairs(viewer):
    assert [p.name for p in viewer.examples()] == ["other_x4.png", "scene_clean.png", "scene_sr.png"]
    assert [(a.name, b.name) for a, b in viewer.example_pairs()] == [("scene_sr.png", "scene_clean.png")]


CARD = """# model card

Split: test

| stage | pdm_auroc | map_l1 | triplet_acc | pair_acc | score_gt | score_syn | score_sr | items |
|---|---|---|---|---|---|---|---|---|
| 0 | 0.500 | 0.126 | 0.813 | 0.875 | 0.730 | 0.531 | -0.347 | 300 |
| 4 | 0.910 | 0.050 | 0.900 | 0.950 | 0.800 | 0.500 | 0.100 | 300 |
"""


def test_score_guide_defaults_and_bands():
    g = core.ScoreGuide()  # uncalibrated fallback: the training targets 1.0 / 0.9 / 0.8
    assert [g.band(s)[0] for s in (1.02, 0.96, 0.9, 0.86, 0.82, 0.7)] == [
        "looks clean", "looks clean", "some visible defects", "some visible defects", "clearly degraded",
        "severely degraded"]
    assert "higher = better" in g.legend() and "training targets" in g.legend() and "Uncalibrated" in g.legend()
    # a score between the typical full-SR and one-region values reads as degraded, never "or worse"
    label, meaning = core.ScoreGuide(0.559, 0.085, -1.925).band(-1.170)
    assert label == "clearly degraded" and "closer to fully super-resolved" in meaning and "or worse" not in meaning


def test_calibrated_scores_read_on_the_fixed_plain_bands(files, tmp_path, viewer):
    g = core.ScoreGuide.for_model(None, 3, calibrated=True)
    assert g.calibrated and [g.band(s)[0] for s in (0.93, 0.8, 0.79, 0.5, 0.49, 0.2, 0.19, 0.02)] == [
        "looks clean", "looks clean", "some visible defects", "some visible defects", "clearly degraded",
        "clearly degraded", "severely degraded", "severely degraded"]
    assert "about 0.9" in g.legend() and "≥ 0.8 looks clean" in g.legend()
    folder = tmp_path / "calibrated"
    model = make_tiny_model()
    model.register_to_config(score_calibration=[[2.0, 0.5]] * (model.num_stages + 1))
    model.save_pretrained(folder)
    (folder / "README.md").write_text(CARD)  # a calibrated model ignores the card's raw typical scores
    an = viewer.analyze(files["photo"], "Local folder", str(folder), -1, "0")
    assert an.guide.calibrated and 0.0 < an.score < 1.0 and an.raw_score is not None
    assert abs(an.score - 1 / (1 + np.exp(-(2.0 * an.raw_score + 0.5)))) < 1e-4
    md = core.score_markdown(an)
    assert an.guide.band(an.score)[0] in md and f"raw {an.raw_score:.3f}" in md
    assert an.record()["raw_score"] == pytest.approx(an.raw_score)


def test_score_guide_reads_the_model_card_per_stage(files, tmp_path, viewer, ref):
    g0 = core.ScoreGuide.from_model_card(CARD, 0)
    assert (g0.clean, g0.local, g0.degraded) == (0.73, 0.531, -0.347) and "stage 0" in g0.source
    g4 = core.ScoreGuide.from_model_card(CARD, 4)
    assert (g4.clean, g4.local, g4.degraded) == (0.8, 0.5, 0.1)
    assert core.ScoreGuide.from_model_card(CARD, 7) == g4  # no row: the last (finest) stage
    assert [g4.band(s)[0] for s in (0.7, 0.4, 0.2, 0.0)] == [
        "looks clean", "some visible defects", "clearly degraded", "severely degraded"]
    assert core.ScoreGuide.from_model_card("no table here", 0) is None
    assert core.ScoreGuide.from_model_card(CARD.replace("0.531", "0.900"), 0) is None  # not ordered: unusable
    carded = tmp_path / "carded"
    make_tiny_model().save_pretrained(carded)
    (carded / "README.md").write_text(CARD)
    an = viewer.analyze(files["photo"], "Local folder", str(carded), 4, "0")
    assert an.guide == g4
    assert viewer.analyze(files["photo"], *ref, 0, "0").guide == core.ScoreGuide()  # no card: training targets


def test_exports_names_and_pruning(tmp_path):
    assert safe_stem("../../etc/pass wd.png") == "pass_wd" and safe_stem("....") == "image"
    store = ExportStore(tmp_path / "exp", keep=2)
    made = [store.new(f"x{i}") for i in range(4)]
    left = sorted(p for p in store.root.iterdir())
    assert len(left) == 2 and made[-1] in left


# ------------------------------------------------------------------------------- command line / cli


def test_main_arguments_and_finpercep_view(monkeypatch, files):
    from demo import app as app_mod
    from diffusers_ext import cli

    args = app_mod.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.max_file_size == "25mb"
    assert app_mod.main(["--model", str(files["dir"] / "no-such-folder")]) == 2
    seen = {}
    monkeypatch.setattr(app_mod, "run", lambda args: seen.setdefault("args", args) and 0)
    assert cli.main(["view", "--port", "7999", "--model", "some/model", "--max-pixels", "1000"]) == 0
    # `finpercep view` (the demo's entry point) parses exactly the options of `python -m demo.app`
    got = {k: v for k, v in vars(seen["args"]).items() if k not in ("command", "func")}
    assert got == vars(app_mod.parse_args(["--port", "7999", "--model", "some/model", "--max-pixels", "1000"]))


# ------------------------------------------------------------------------------- the running app


@pytest.fixture(scope="module")
def app(config):
    with running_app(config) as blocks:
        yield blocks


@pytest.fixture(scope="module")
def served(app) -> str:
    return app.local_url.rstrip("/")


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served, verbose=False)


def test_app_is_local_queued_and_limited(app, served, config):
    assert served.startswith("http://127.0.0.1:") and app.server_name == "127.0.0.1"
    assert app.share is False and app.share_url is None
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and app.analytics_enabled is False
    assert app._queue.max_size == config.queue_size and app.max_file_size == 200 * 1024
    heavy = [fn for fn in app.fns.values() if fn.concurrency_id == "model"]
    assert {fn.api_name for fn in heavy} >= {"inspect", "compare", "batch", "load_model"}
    assert all(fn.concurrency_limit == config.concurrency for fn in heavy)


def test_app_serves_no_files_but_its_own(served, files):
    import httpx

    root = Path(__file__).resolve().parent.parent
    for private in (root / "pyproject.toml", files["model"] / "config.json"):
        assert httpx.get(f"{served}/gradio_api/file={private}", timeout=30).status_code == 403
    example = files["examples"] / "scene_sr.png"
    assert httpx.get(f"{served}/gradio_api/file={example}", timeout=30).status_code == 200


def test_client_inspect_render_and_downloads(client, ref, files, viewer):
    from gradio_client import handle_file

    md, slider, boxes, table, downloads = client.predict(
        handle_file(str(files["photo"])), *ref, -1, "0", *DISPLAY, 0.5, 5, api_name="/inspect")
    direct = viewer.analyze(files["photo"], *ref, -1, "0")
    assert f"Score {direct.score:.3f}" in md
    assert len(slider) == 2 and Image.open(slider[1]).size == (128, 128) and Image.open(boxes).size == (128, 128)
    assert table["headers"] == core.REGION_HEADERS
    npy = next(p for p in downloads if p.endswith(".pdm.npy"))
    np.testing.assert_allclose(np.load(npy), direct.pdm, atol=1e-6)
    md2, slider2, _, table2, downloads2 = client.predict(0.0, "gray", "weighted", 0.5, 1, api_name="/render")
    assert md2 == md and len(table2["data"]) <= 1 and len(downloads2) == 4
    np.testing.assert_array_equal(np.asarray(Image.open(slider2[1])), np.asarray(Image.open(slider2[0])))


def test_client_shows_clear_errors(client, ref, files):
    from gradio_client import handle_file

    with pytest.raises(Exception, match=r"notes\.png: not a recognized image file"):
        client.predict(handle_file(str(files["notimage"])), *ref, -1, None, *DISPLAY, 0.5, 5, api_name="/inspect")
    with pytest.raises(Exception, match="needs a Hub id"):
        client.predict("Hub id", "", api_name="/load_model")


def test_client_compare_batch_and_load_model(client, ref, files):
    from gradio_client import handle_file

    md, *_ = client.predict("Local folder", str(files["model"]), api_name="/load_model")
    assert "stages 0..4" in md
    md, ov_a, ov_b, diff, downloads = client.predict(handle_file(str(files["photo"])), handle_file(str(files["clean"])),
                                                     *ref, -1, "0", *DISPLAY, api_name="/compare")
    assert "B − A" in md and any(p.endswith("compare.json") for p in downloads)
    md, table, gallery, downloads = client.predict([handle_file(str(files["photo"])), handle_file(str(files["clean"]))],
                                                   None, *ref, -1, "0", *DISPLAY, api_name="/batch")
    assert "Scored 2 of 2" in md and len(table["data"]) == 2 and len(gallery) == 2


def test_upload_size_limit_is_enforced(served, files):
    import httpx

    big = files["dir"] / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 200 * 1024  # config.max_file_size is 200 kB
    with big.open("rb") as fh:
        r = httpx.post(f"{served}/gradio_api/upload", files={"files": ("big.png", fh, "image/png")}, timeout=30)
    assert r.status_code == 413, r.text
    with files["photo"].open("rb") as fh:
        ok = httpx.post(f"{served}/gradio_api/upload", files={"files": ("p.png", fh, "image/png")}, timeout=30)
    assert ok.status_code == 200


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
