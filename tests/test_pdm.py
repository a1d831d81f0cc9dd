"""diffusers_ext.pdm: colormaps, overlays, 16-bit PNG round trip, regions and summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_ext.image_io import ImageInputError
from diffusers_ext.pdm import (
    COLORMAPS,
    Region,
    apply_colormap,
    as_pdm,
    draw_regions,
    get_colormap,
    label_components,
    overlay,
    pdm_from_png,
    pdm_to_png,
    region_stats,
    resize_pdm,
    summary,
    worst_windows,
)


def _lightness(lut: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB uint8 colours."""
    c = lut.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, 24389 / 27 * y)


# ------------------------------------------------------------------------------------ colormaps


def test_colormap_tables() -> None:
    assert set(COLORMAPS) == {"turbo", "inferno", "viridis", "magma", "rainbow", "gray"}
    for lut in COLORMAPS.values():
        assert lut.shape == (256, 3) and lut.dtype == np.uint8 and not lut.flags.writeable


@pytest.mark.parametrize(
    "name,first,last",
    [
        ("inferno", (0, 0, 4), (252, 255, 164)),
        ("magma", (0, 0, 4), (252, 253, 191)),
        ("viridis", (68, 1, 84), (253, 231, 37)),
        ("turbo", (48, 18, 59), (122, 4, 3)),
        ("rainbow", (0, 0, 128), (128, 0, 0)),
        ("gray", (0, 0, 0), (255, 255, 255)),
    ],
)
def test_colormap_endpoints(name: str, first: tuple, last: tuple) -> None:
    lut = COLORMAPS[name]
    assert tuple(lut[0]) == first and tuple(lut[-1]) == last
    ends = apply_colormap(np.array([[0.0, 1.0]], np.float32), name)
    assert tuple(ends[0, 0]) == first and tuple(ends[0, 1]) == last


@pytest.mark.parametrize("name", ["inferno", "viridis", "magma", "gray"])
def test_sequential_colormaps_have_monotonic_lightness(name: str) -> None:
    lightness = _lightness(COLORMAPS[name])
    assert np.all(np.diff(lightness) >= 0.0)
    assert lightness[-1] - lightness[0] > 60


def test_colormap_names() -> None:
    assert get_colormap("Inferno") is COLORMAPS["inferno"]
    assert get_colormap("jet") is COLORMAPS["rainbow"]
    with pytest.raises(ValueError, match="unknown colormap 'plasma'.*gray, inferno, magma, rainbow, turbo, viridis"):
        apply_colormap(np.zeros((2, 2)), "plasma")


def test_apply_colormap_shapes_and_inputs() -> None:
    out = apply_colormap(torch.rand(1, 1, 5, 7), "viridis")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.array_equal(apply_colormap(np.full((2, 2), 255, np.uint8), "gray"), np.full((2, 2, 3), 255))


def test_as_pdm_refusals() -> None:
    with pytest.raises(ImageInputError, match="1 NaN"):
        as_pdm(np.array([[0.5, np.nan]]))
    with pytest.raises(ImageInputError, match="H x W"):
        as_pdm(np.zeros((2, 3, 4)))
    with pytest.raises(ImageInputError, match="pdm_from_png"):
        as_pdm(Image.new("L", (2, 2)))
    assert as_pdm(np.array([[1.01, -0.01]])).tolist() == [[1.0, 0.0]]


# ------------------------------------------------------------------------------------- overlay


def _image_and_half_map() -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    pdm = np.zeros((24, 32), np.float32)
    pdm[:, 16:] = 1.0
    return image, pdm


def test_weighted_overlay_keeps_clean_pixels_and_marks_degraded_ones() -> None:
    image, pdm = _image_and_half_map()
    out = np.asarray(overlay(image, pdm, alpha=0.6, cmap="inferno", mode="weighted"))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :16], image[:, :16])  # pdm = 0: the image, exactly
    expected = np.rint(image[:, 16:] * 0.4 + np.array(COLORMAPS["inferno"][-1], float) * 0.6)
    assert np.abs(out[:, 16:].astype(float) - expected).max() <= 1


def test_uniform_overlay_blends_everywhere() -> None:
    image, pdm = _image_and_half_map()
    out = np.asarray(overlay(Image.fromarray(image), pdm, alpha=0.5, mode="uniform"))
    expected_left = np.rint(image[:, :16] * 0.5 + np.array(COLORMAPS["inferno"][0], float) * 0.5)
    assert np.abs(out[:, :16].astype(float) - expected_left).max() <= 1
    assert np.array_equal(np.asarray(overlay(image, pdm, alpha=0.0, mode="uniform")), image)


def test_overlay_resizes_the_map_and_validates_arguments() -> None:
    image = np.zeros((40, 48, 3), np.float32)
    out = overlay(image, torch.ones(10, 12), alpha=1.0, cmap="gray")
    assert out.size == (48, 40) and np.all(np.asarray(out) == 255)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((40, 48)), alpha=1.5)
    with pytest.raises(ValueError, match="mode"):
        overlay(image, np.zeros((40, 48)), mode="additive")


def test_resize_pdm_bilinear_stays_in_range() -> None:
    small = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    big = resize_pdm(small, (20, 30))
    assert big.shape == (20, 30) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0 and 0.3 < big.mean() < 0.7


# ------------------------------------------------------------------------------------- PNG I/O


def test_png_round_trip_exact_to_1_over_65535(tmp_path: Path) -> None:
    pdm = np.random.default_rng(1).random((33, 47)).astype(np.float32)
    pdm[0, 0], pdm[0, 1] = 0.0, 1.0
    img = pdm_to_png(pdm)
    assert img.mode == "I;16"
    path = tmp_path / "map.png"
    img.save(path)
    for back in (pdm_from_png(path), pdm_from_png(Image.open(path))):
        assert back.shape == pdm.shape and back.dtype == np.float32
        assert np.abs(back - pdm).max() <= 0.5 / 65535 + 1e-7
        assert back[0, 0] == 0.0 and back[0, 1] == 1.0


def test_pdm_from_png_other_modes() -> None:
    assert np.allclose(pdm_from_png(Image.new("L", (2, 2), 255)), 1.0)
    assert np.allclose(pdm_from_png(Image.fromarray(np.full((2, 2), 65535, np.int32))), 1.0)
    with pytest.raises(ImageInputError, match="not a grayscale map"):
        pdm_from_png(Image.new("RGB", (2, 2)))


# ------------------------------------------------------------------------------------- regions


def _two_squares() -> np.ndarray:
    pdm = np.full((100, 120), 0.05, np.float32)
    pdm[10:30, 20:40] = 0.9  # 400 px, severity 360
    pdm[50:80, 60:90] = 0.7  # 900 px, severity 630
    pdm[95, 5] = 1.0  # a single hot pixel, below the default min_area
    return pdm


def test_region_stats_finds_pasted_squares_in_severity_order() -> None:
    regions = region_stats(_two_squares())
    assert [r.box for r in regions] == [(60, 50, 90, 80), (20, 10, 40, 30)]
    big, small = regions
    assert big.area == 900 and small.area == 400
    assert big.mean == pytest.approx(0.7) and small.max == pytest.approx(0.9)
    assert big.severity > small.severity and all(r.kind == "component" for r in regions)
    assert [r.box for r in region_stats(_two_squares(), top_k=1)] == [(60, 50, 90, 80)]
    assert len(region_stats(_two_squares(), min_area=1)) == 3


def test_region_stats_falls_back_to_worst_windows() -> None:
    pdm = np.full((64, 64), 0.1, np.float32)
    pdm[40:48, 8:16] = 0.3  # the worst window, still below the threshold
    pdm[0:8, 56:64] = 0.2
    regions = region_stats(pdm, threshold=0.5, top_k=3)
    assert [r.kind for r in regions] == ["window"] * 3
    assert regions[0].box == (8, 40, 16, 48) and regions[0].mean == pytest.approx(0.3)
    assert regions[1].box == (56, 0, 64, 8) and regions[1].mean == pytest.approx(0.2)
    assert region_stats(pdm, fallback=False) == []


def test_worst_windows_ragged_edges() -> None:
    pdm = np.zeros((10, 13), np.float32)
    pdm[9, 12] = 1.0
    (worst,) = worst_windows(pdm, top_k=1, window=4)
    assert worst.box == (12, 8, 13, 10) and worst.area == 2 and worst.mean == pytest.approx(0.5)


def test_label_components_eight_connected_numpy_matches_scipy() -> None:
    diagonal = np.eye(5, dtype=bool)
    for use_scipy in (False, True):
        labels, n = label_components(diagonal, use_scipy=use_scipy)
        assert n == 1 and labels[4, 4] == 1 and labels[0, 1] == 0
    rng = np.random.default_rng(2)
    for shape, density in [((1, 40), 0.5), ((40, 1), 0.5), ((37, 53), 0.45), ((64, 64), 0.6)]:
        mask = rng.random(shape) < density
        ours, n_ours = label_components(mask, use_scipy=False)
        ref, n_ref = label_components(mask, use_scipy=True)
        assert n_ours == n_ref and np.array_equal(ours, ref)
    empty, n = label_components(np.zeros((3, 3), bool), use_scipy=False)
    assert n == 0 and not empty.any()


def test_draw_regions_draws_boxes() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    regions = region_stats(_two_squares())
    out = np.asarray(draw_regions(image, regions, width=1, numbered=False))
    assert out.shape == (100, 120, 3)
    assert tuple(out[50, 70]) == (255, 59, 48) and tuple(out[79, 89]) == (255, 59, 48)  # box edges
    assert tuple(out[65, 75]) == (0, 0, 0)  # inside untouched
    windows = [Region(0, 0, 10, 10, 100, 0.2, 0.3, kind="window")]
    assert tuple(np.asarray(draw_regions(image, windows))[0, 5]) == (255, 214, 10)
    assert draw_regions(image, regions).size == (120, 100)  # numbered labels render too


def test_region_as_dict() -> None:
    d = Region(1, 2, 3, 4, 4, 0.5, 0.9).as_dict()
    assert d["severity"] == 2.0 and d["kind"] == "component" and d["x1"] == 3


# ------------------------------------------------------------------------------------- summary


def test_summary() -> None:
    pdm = np.zeros((10, 10), np.float32)
    pdm[:2] = 1.0  # 20 % at 1.0
    stats = summary(pdm)
    assert stats == {"mean": pytest.approx(0.2), "max": 1.0, "p95": 1.0, "frac_above": pytest.approx(0.2),
                     "threshold": 0.5}
    assert all(isinstance(v, float) for v in stats.values())
    assert summary(torch.full((1, 4, 4), 0.25))["p95"] == pytest.approx(0.25)
