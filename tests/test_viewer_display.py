"""What the viewer shows at first sight: the map visible (uniform overlay), the before/after slider
out of the way, and worst regions that are regions of the defect, not of the map's border."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from demo import core

ROOT = Path(__file__).resolve().parent.parent


def test_border_weight_spares_the_inside_and_damps_the_edge():
    w = core.border_weight((64, 96))
    assert w.shape == (64, 96) and w.max() == pytest.approx(1.0) and w.min() >= 0.05
    assert w[0, 40] < 0.1 and w[32, 0] < 0.1 and w[32, 48] == pytest.approx(1.0)
    assert (np.diff(w[32, :48]) >= 0).all()  # rises monotonically towards the centre


def test_a_band_along_the_border_ranks_after_the_defect_inside():
    pdm = np.full((200, 200), 0.05, np.float32)
    pdm[:, 180:] = 0.75          # the map rising along the right border (a map artefact), large
    pdm[80:110, 60:95] = 0.65    # the defect, smaller and fainter than the band
    regions = core.find_regions(pdm, threshold=0.5, top_k=5)
    assert regions[0].box == (60, 80, 95, 110) and regions[0].mean == pytest.approx(0.65)
    assert regions[1].box == (180, 0, 200, 200) and regions[1].mean == pytest.approx(0.75)
    # no component above the threshold: the windows are placed by the same weighting
    faint = np.full((160, 160), 0.02, np.float32)
    faint[:, :12] = 0.3
    faint[70:90, 70:90] = 0.2
    win = core.find_regions(faint, threshold=0.5, top_k=1)[0]
    assert win.kind == "window" and win.x0 < 90 <= win.x1 + 20 and win.y0 < 90 and win.x0 >= 40  # at the blob
    assert win.max == pytest.approx(0.2)


def test_worst_regions_put_a_border_rise_after_the_defect():
    """A map that rises along the right border (as a real model's does: padding) more strongly than
    over an interior defect: the defect must come first, the border band after it."""
    pdm = np.full((288, 288), 0.05, np.float32)
    pdm[40:150, 30:160] = 0.6           # the defect
    pdm[200:240, 276:288] = 0.9         # a stronger rise in the border band
    regions = core.find_regions(pdm, threshold=0.5, top_k=3)
    assert regions, "no region found"
    first = regions[0]
    cx, cy = (first.x0 + first.x1) / 2, (first.y0 + first.y1) / 2
    assert 30 <= cx <= 160 and 40 <= cy <= 150, regions
    assert any(r.x1 >= 276 for r in regions[1:]), regions  # the border rise is still listed, later


def test_defaults_show_the_map_and_keep_the_slider_out_of_the_way():
    pytest.importorskip("gradio")
    from demo.app import build_app
    from demo.viewer import ViewerConfig

    assert core.DEFAULT_OVERLAY["mode"] == "uniform"
    app = build_app(ViewerConfig(examples_dir=None))
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["overlay"].slider_position == 0  # the overlay covers the image, the handle at the left edge
    assert by_id["alpha"].value == core.DEFAULT_OVERLAY["alpha"]
    modes = [b for b in app.blocks.values() if getattr(b, "label", None) == "Overlay mode"]
    assert modes and modes[0].value == "uniform"
    # uniform at the default opacity shows even a faint map: a mild map (0.2) moves the pixels visibly
    rgb = np.full((32, 32, 3), 0.5, np.float32)
    pdm = np.full((32, 32), 0.2, np.float32)
    an = core.Analysis("x", rgb, 0.5, pdm, 1, 1, "m", 0.0, 1)
    shown = np.asarray(core.overlay_image(an), np.float32) / 255
    weighted = np.asarray(core.overlay_image(an, mode="weighted"), np.float32) / 255
    assert np.abs(shown - rgb).mean() > 2.5 * np.abs(weighted - rgb).mean()
