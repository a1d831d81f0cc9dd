"""Deterministic image pairs for the perceptual-metric tests, rebuilt offline from scikit-image's
bundled ``astronaut`` and ``coffee`` photos (numpy, Pillow and scikit-image only, so the reference
script in ``tests/reference/make_perceptual_reference.py`` builds the same pairs in its own venv).

Each pair is ``(name, distorted, reference)`` with uint8 ``H x W x 3`` arrays; :func:`digest` is the
SHA-256 of a pair's bytes, stored in the reference JSON so a test first checks that it rebuilt
exactly the inputs the reference values were computed on.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image


def _box_blur(a: np.ndarray, passes: int) -> np.ndarray:
    """``passes`` 3x3 box blurs with edge replication, rounded to uint8."""
    x = a.astype(np.float64)
    for _ in range(passes):
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(p[i:i + x.shape[0], j:j + x.shape[1]] for i in range(3) for j in range(3)) / 9.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _noise(a: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise of ``sigma`` (0..255 units) from numpy's PCG64 generator, rounded to uint8."""
    n = np.random.default_rng(seed).normal(0.0, sigma, size=a.shape)
    return np.clip(np.rint(a.astype(np.float64) + n), 0, 255).astype(np.uint8)


def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality, subsampling=2)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()


def build_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Five pairs: astronaut 96x128 (H x W) and coffee 64x80 crops under blur, noise, JPEG."""
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut()[30:126, 150:278])
    coffee = np.ascontiguousarray(data.coffee()[120:184, 200:280])
    return [
        ("astronaut_blur", _box_blur(astronaut, 2), astronaut),
        ("astronaut_noise", _noise(astronaut, 12.0, seed=1), astronaut),
        ("astronaut_jpeg", _jpeg(astronaut, 15), astronaut),
        ("coffee_blur_noise", _noise(_box_blur(coffee, 1), 6.0, seed=2), coffee),
        ("coffee_jpeg", _jpeg(coffee, 25), coffee),
    ]


def digest(distorted: np.ndarray, reference: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (distorted, reference):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
    return h.hexdigest()
