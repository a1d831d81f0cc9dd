"""The FinPercep-tuned upscaler that ships in upscalers/ (made by `python -m training.ship_upscaler`):
it loads as a plain spandrel-layout Compact network, upscales x4, differs from the base network it was
tuned from, and its model card states exactly the figures in its metrics.json."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import torch

from diffusers_ext.srnets.export import load_upscaler, spandrel_architecture
from training.ship_upscaler import METRICS, NET, table

FOLDER = Path(__file__).resolve().parents[1] / "upscalers" / f"{NET}-finpercep"
FILE = FOLDER / f"{NET}-finpercep.safetensors"


def test_the_shipped_upscaler_is_small_public_and_spandrel_shaped():
    from safetensors.torch import load_file

    assert FILE.is_file() and FILE.stat().st_size < 5 * 2**20
    for p in FOLDER.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert spandrel_architecture(load_file(FILE)) == "Compact"


def test_it_upscales_x4_and_is_not_the_base_network(photo):
    from diffusers_ext.policies import FeedForwardSRPolicy

    tuned = load_upscaler(FILE).eval()
    base = FeedForwardSRPolicy.from_pretrained(NET).eval()
    x = torch.nn.functional.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None], size=(24, 20), mode="area")
    with torch.no_grad():
        y = tuned(x)
        y_base = base(x)["images"]
    assert y.shape == (1, 3, 96, 80) and torch.isfinite(y).all()
    diff = (y.clamp(0, 1) - y_base.clamp(0, 1)).abs().mean().item()
    assert 1e-4 < diff < 0.05, diff  # tuned, but still the same network (not diverged)


def test_the_model_card_states_the_measured_figures():
    metrics = json.loads((FOLDER / "metrics.json").read_text())
    card = (FOLDER / "README.md").read_text()
    assert table(metrics["rows"]) in card
    assert {k for k, _ in METRICS} <= set(metrics["rows"]["ccl"])
    assert metrics["test_photos"] and all(p in card for p in metrics["test_photos"])
    assert (FOLDER / "before_after.png").is_file()
