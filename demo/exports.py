"""Downloads of the viewer: the PDM as ``.npy`` (float32 H x W in [0, 1], the ``finpercep score
--pdm-dir`` format) and as a 16-bit PNG (value ``round(p * 65535)``, read back with
``diffusers_ext.pdm.pdm_from_png``), the overlay PNG, and a JSON of the scores.

Files go into per-request folders under one temporary root; only the newest ``keep`` folders are
kept, so a viewer left open for days does not fill the disk.
"""
from __future__ import annotations

import atexit
import csv
import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import PIL.Image

from diffusers_ext.pdm import Region, pdm_to_png

from .core import Analysis, Comparison

__all__ = ["ExportStore", "export_analysis", "export_batch", "export_comparison", "safe_stem"]


def safe_stem(name: str, default: str = "image") -> str:
    """A file-name stem from ``name``: its stem, with anything but letters, digits, ``._-`` replaced."""
    stem = Path(str(name)).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem[:80] or default


class ExportStore:
    """Per-request export folders under one temporary root, newest ``keep`` kept."""

    def __init__(self, root: Optional[Path] = None, keep: int = 64) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="finpercep-view-"))
        if root is None:  # our own temporary root: remove it when the process ends
            atexit.register(self.cleanup)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, int(keep))
        self._lock = threading.Lock()
        self._n = 0

    def new(self, label: str = "export") -> Path:
        with self._lock:
            self._n += 1
            folder = Path(tempfile.mkdtemp(prefix=f"{self._n:06d}-{safe_stem(label)}-", dir=self.root))
            old = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            for p in old[: max(0, len(old) - self.keep)]:
                if p != folder:
                    shutil.rmtree(p, ignore_errors=True)
            return folder

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def write_maps(an: Analysis, folder: Path, stem: Optional[str] = None) -> list[Path]:
    """``<stem>.pdm.npy`` and ``<stem>.pdm.png`` (16-bit) of ``an``'s map."""
    stem = stem or safe_stem(an.name)
    npy, png = folder / f"{stem}.pdm.npy", folder / f"{stem}.pdm.png"
    np.save(npy, an.pdm.astype(np.float32))
    pdm_to_png(an.pdm).save(png)
    return [npy, png]


def export_analysis(an: Analysis, folder: Path, overlay: PIL.Image.Image, regions: Sequence[Region] = (),
                    threshold: float = 0.5, maps: bool = True) -> list[Path]:
    """The downloads of one analysis: ``.pdm.npy``, ``.pdm.png`` (when ``maps``), ``.overlay.png``
    and ``.json`` (score, map statistics, regions), all named after the image."""
    stem = safe_stem(an.name)
    files = write_maps(an, folder, stem) if maps else []
    ov = folder / f"{stem}.overlay.png"
    overlay.save(ov)
    files.append(ov)
    files.append(_write_json(folder / f"{stem}.json", an.record(regions, threshold)))
    return files


def export_comparison(c: Comparison, folder: Path) -> list[Path]:
    """Both maps (``a_<name>``, ``b_<name>``), the difference ``diff_b_minus_a.npy`` (float32 in
    [-1, 1]) and ``compare.json``."""
    files = write_maps(c.a, folder, "a_" + safe_stem(c.a.name)) + write_maps(c.b, folder, "b_" + safe_stem(c.b.name))
    diff = folder / "diff_b_minus_a.npy"
    np.save(diff, c.diff.astype(np.float32))
    return files + [diff, _write_json(folder / "compare.json", c.record())]


BATCH_FIELDS = ["image", "score", "band", "pdm_mean", "pdm_max", "pdm_p95", "frac_above", "stage", "width",
                "height", "tiles", "seconds", "error"]


def export_batch(records: Sequence[dict], folder: Path) -> list[Path]:
    """``batch.json`` (all records) and ``batch.csv`` (the :data:`BATCH_FIELDS` columns)."""
    js = _write_json(folder / "batch.json", list(records))
    path = folder / "batch.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BATCH_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: r.get(k, "") for k in BATCH_FIELDS})
    return [js, path]
