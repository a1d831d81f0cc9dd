"""`finpercep score`: JSON lines, PDM files, bad files reported and skipped, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from diffusers_ext.cli import main


@pytest.fixture
def model_dir(tmp_path):
    make_tiny_model().save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_score_writes_json_npy_and_overlay(model_dir, photo, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "sub" / "a.jpg"
    b.parent.mkdir()
    Image.fromarray((photo * 255).astype(np.uint8)).save(a)
    Image.fromarray((photo[:120, :200] * 255).astype(np.uint8)).save(b)
    rc = main(["score", str(a), str(b), "--model", str(model_dir), "--pdm-dir", str(tmp_path / "out")])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in lines] == [str(a), str(b)]
    assert set(lines[0]) == {"image", "score", "raw_score", "pdm_mean", "pdm_max", "pdm_p95", "frac_above", "threshold",
                             "stage", "num_stages", "width", "height", "tiles", "pdm_npy", "overlay_png"}
    assert (lines[1]["width"], lines[1]["height"], lines[1]["tiles"]) == (200, 120, 2)  # native 128 px: 2 tiles
    assert lines[0]["pdm_npy"] != lines[1]["pdm_npy"]  # same stem, no overwrite
    pdm = np.load(lines[1]["pdm_npy"])
    assert pdm.shape == (120, 200) and pdm.dtype == np.float32 and 0 <= pdm.min() <= pdm.max() <= 1
    assert abs(float(pdm.max()) - lines[1]["pdm_max"]) < 1e-6
    assert Image.open(lines[0]["overlay_png"]).size == (256, 256)


def test_bad_files_are_reported_and_the_rest_scored(model_dir, photo, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray((photo * 255).astype(np.uint8)).save(good)
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    files = [tmp_path / "missing.png", tmp_path / "text.png", good, tmp_path / "empty.jpg", tmp_path / "tiny.png"]
    rc = main(["score", *map(str, files), "--model", str(model_dir)])
    captured = capsys.readouterr()
    assert rc == 1
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["image"] for r in out] == [str(good)] and out[0]["pdm_npy"] is None
    errors = [line for line in captured.err.splitlines() if line.startswith("finpercep:")]  # not progress bars
    assert len(errors) == 4
    for name, err in zip(["missing.png", "text.png", "empty.jpg", "tiny.png"], errors):
        assert err.startswith("finpercep: ") and name in err


def test_bad_model_is_one_clear_line(tmp_path, capsys):
    rc = main(["score", "x.png", "--model", str(tmp_path / "nope")])
    assert rc == 2
    assert "cannot load reward model" in capsys.readouterr().err


def test_console_script_entry_point_runs(model_dir, photo, tmp_path):
    img = tmp_path / "p.png"
    Image.fromarray((photo * 255).astype(np.uint8)).save(img)
    proc = subprocess.run([sys.executable, "-m", "diffusers_ext.cli", "score", str(img), "--model", str(model_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["image"] == str(img)
