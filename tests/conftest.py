"""Shared fixtures. Tests never touch the network: the Hub is offline unless a test starts the
local Hub test server (tests/hub_server.py)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_CONFIG = dict(backbone="tiny", backbone_kwargs={"widths": [8, 12, 16, 24]}, decoder_channels=8,
                   head_hidden=16, min_size=16, native_size=128)


def make_tiny_model(seed: int = 0, **overrides):
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    torch.manual_seed(seed)
    return FinPercepRM(**{**TINY_CONFIG, **overrides}).eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut), float32 HxWx3 in [0, 1], 256x256."""
    from skimage import data
    from skimage.transform import resize

    img = data.astronaut().astype(np.float32) / 255.0
    return resize(img, (256, 256), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="session")
def example_clean() -> np.ndarray:
    """examples/astronaut_clean.jpg, a photo of the test split (never trained on), float32 384x384x3."""
    from PIL import Image

    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    path = DEFAULT_MODEL_DIR.parent.parent / "examples" / "astronaut_clean.jpg"
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


def run_launch(cmd: list, env: dict, timeout: float, cwd: str):
    """``subprocess.run`` for multi-process launches: on a timeout the whole process group gets SIGABRT
    with ``PYTHONFAULTHANDLER=1``, so the failure shows every process's Python stack (where it hung)."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{cmd[2:4]} ran past {timeout:.0f} s; the stacks of its processes:\n{err[-8000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
