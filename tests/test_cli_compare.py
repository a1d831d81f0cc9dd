"""`finpercep compare` and FullReferencePipeline. Expected values come from the reference
implementations (tests/reference/perceptual_reference.json, see tests/test_perceptual.py): the pairs
are written as lossless PNGs, so the command must reproduce them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusers_ext.cli import main
from diffusers_ext.pipelines.pipeline_full_reference import FullReferencePipeline
from perceptual_inputs import build_pairs

REFERENCE = {e["name"]: e for e in json.loads(
    (Path(__file__).parent / "reference" / "perceptual_reference.json").read_text())["pairs"]}
TOL = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The astronaut pairs as PNGs: blur.png, noise.png, ref.png (128x96), and coffee_ref.png (80x64)."""
    root = tmp_path_factory.mktemp("compare")
    pairs = {name: (dist, ref) for name, dist, ref in build_pairs()}
    Image.fromarray(pairs["astronaut_blur"][0]).save(root / "blur.png")
    Image.fromarray(pairs["astronaut_noise"][0]).save(root / "noise.png")
    Image.fromarray(pairs["astronaut_blur"][1]).save(root / "ref.png")
    Image.fromarray(pairs["coffee_jpeg"][1]).save(root / "coffee_ref.png")
    # the reference at twice the size, pixel-repeated: area-resizing it back gives ref.png exactly
    Image.fromarray(pairs["astronaut_blur"][1].repeat(2, axis=0).repeat(2, axis=1)).save(root / "ref_x2.png")
    return root


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_one_json_line_per_image_with_the_reference_values(files, capsys):
    code = main(["compare", str(files / "blur.png"), str(files / "noise.png"), "--ref", str(files / "ref.png"),
                 "--metrics", "psnr,ssim,lpips_alex,dists"])
    records = _records(capsys.readouterr().out)
    assert code == 0 and len(records) == 2
    for record, name in zip(records, ("astronaut_blur", "astronaut_noise")):
        assert record["ref"] == str(files / "ref.png")
        assert set(record) == {"image", "ref", "psnr", "ssim", "lpips_alex", "dists", "lpips_npy", "lpips_png"}
        for metric in ("psnr", "ssim", "lpips_alex", "dists"):
            assert record[metric] == pytest.approx(REFERENCE[name][metric], abs=TOL), (name, metric)


def test_map_dir_writes_the_lpips_map_and_a_heat_map(files, tmp_path, capsys):
    code = main(["compare", str(files / "blur.png"), "--ref", str(files / "ref.png"), "--metrics", "lpips_alex",
                 "--map-dir", str(tmp_path / "maps")])
    (record,) = _records(capsys.readouterr().out)
    assert code == 0
    assert record["lpips_npy"] == str(tmp_path / "maps" / "blur.lpips.npy")
    lmap = np.load(record["lpips_npy"])
    assert lmap.dtype == np.float32 and lmap.shape == (96, 128)
    assert float(lmap.mean()) == pytest.approx(REFERENCE["astronaut_blur"]["lpips_alex_map"]["mean"], abs=TOL)
    png = Image.open(record["lpips_png"])
    assert png.mode == "RGB" and png.size == (128, 96)
    assert np.abs(np.asarray(png, dtype=np.int16) - np.asarray(Image.open(files / "blur.png"), dtype=np.int16)).max() > 20


def test_size_mismatch_is_a_clear_error_and_the_other_images_go_on(files, capsys):
    code = main(["compare", str(files / "blur.png"), str(files / "noise.png"),
                 "--ref", str(files / "ref.png"), "--ref", str(files / "coffee_ref.png"), "--metrics", "psnr"])
    captured = capsys.readouterr()
    assert code == 1
    assert [r["image"] for r in _records(captured.out)] == [str(files / "blur.png")]
    assert "noise.png is 128x96 px but the reference" in captured.err and "coffee_ref.png is 80x64 px" in captured.err
    assert "--resize-ref" in captured.err


def test_resize_ref_resizes_the_reference_to_the_image(files, capsys):
    assert main(["compare", str(files / "blur.png"), "--ref", str(files / "ref_x2.png"), "--metrics", "psnr"]) == 1
    assert "256x192 px" in capsys.readouterr().err
    code = main(["compare", str(files / "blur.png"), "--ref", str(files / "ref_x2.png"), "--resize-ref",
                 "--metrics", "psnr,lpips_alex"])
    (record,) = _records(capsys.readouterr().out)
    assert code == 0
    for metric in ("psnr", "lpips_alex"):
        assert record[metric] == pytest.approx(REFERENCE["astronaut_blur"][metric], abs=TOL)


def test_identical_image_gives_null_psnr_and_zero_lpips(files, capsys):
    code = main(["compare", str(files / "ref.png"), "--ref", str(files / "ref.png"), "--metrics", "psnr,ssim,lpips_alex"])
    (record,) = _records(capsys.readouterr().out)
    assert code == 0 and record["psnr"] is None and record["ssim"] == pytest.approx(1.0)
    assert abs(record["lpips_alex"]) < 1e-6


def test_bad_files_and_options(files, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code = main(["compare", str(broken), str(files / "blur.png"), "--ref", str(files / "ref.png"), "--metrics", "psnr"])
    captured = capsys.readouterr()
    assert code == 1 and len(_records(captured.out)) == 1
    assert captured.err.count("\n") == 1 and str(broken) in captured.err
    assert main(["compare", str(files / "blur.png"), "--ref", str(files / "ref.png"), "--metrics", "psnr,lpips_squeeze"]) == 2
    assert "lpips_squeeze" in capsys.readouterr().err
    assert main(["compare", str(files / "blur.png"), "--ref", str(broken)]) == 2
    assert "cannot read the reference" in capsys.readouterr().err


def test_pipeline_twin_returns_one_field_per_metric_and_the_maps(files):
    pipe = FullReferencePipeline().to("cpu")
    out = pipe([str(files / "blur.png"), str(files / "noise.png")], [str(files / "ref.png")] * 2,
               metrics=("ssim", "lpips_alex"), output_lpips_maps=True)
    assert out.psnr is None and out.dists is None and out.lpips_vgg is None
    for i, name in enumerate(("astronaut_blur", "astronaut_noise")):
        assert out.ssim[i] == pytest.approx(REFERENCE[name]["ssim"], abs=TOL)
        assert out.lpips_alex[i] == pytest.approx(REFERENCE[name]["lpips_alex"], abs=TOL)
        assert float(out.lpips_maps[i].mean()) == pytest.approx(REFERENCE[name]["lpips_alex_map"]["mean"], abs=TOL)
    ssim_values, lpips_values, maps = pipe([str(files / "blur.png")], [str(files / "ref.png")],
                                           metrics=("ssim", "lpips_alex"), output_lpips_maps=True, return_dict=False)
    assert len(maps) == 1 and ssim_values.shape == lpips_values.shape == (1,)
