"""Where weights come from: the bundled default, local folders, Hub ids. Safe loading only."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
"""The reward model that ships inside the package (trained by ``training/train_reward.py``)."""


def check_relative_filename(name: str) -> str:
    """Refuse file names that could escape a repository folder (``../``, absolute paths)."""
    parts = Path(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ValueError(f"refusing file name {name!r}: it must be a relative path inside the repository")
    return name


def is_hub_id(path_or_id: str | os.PathLike) -> bool:
    """True when ``path_or_id`` is not an existing local path and looks like ``owner/name``."""
    s = str(path_or_id)
    return not os.path.exists(s) and s.count("/") == 1 and not s.startswith((".", "/", "~"))


def resolve_model_dir(path_or_id: str | os.PathLike | None, allow_patterns: Iterable[str] | None = None,
                      revision: str | None = None, **hub_kwargs) -> Path:
    """A local folder for ``path_or_id``: the bundled default for ``None``, the folder itself when it
    exists, else a Hub snapshot (``owner/name``), downloaded once into the Hub cache."""
    if path_or_id is None:
        return DEFAULT_MODEL_DIR
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if not is_hub_id(path_or_id):
        raise FileNotFoundError(
            f"{str(path_or_id)!r} is neither a local folder nor a Hub id of the form 'owner/name'"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id), revision=revision,
                                  allow_patterns=list(allow_patterns) if allow_patterns else None, **hub_kwargs))


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict: safetensors directly; a pickle (``.bin``/``.pt``/``.pth``) only with
    ``weights_only=True``, which refuses arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def load_state_dict_from_hub(repo_id: str, filenames: Iterable[str], revision: str | None = None) -> dict[str, torch.Tensor]:
    """Download the first of ``filenames`` that ``repo_id`` has and load it safely."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    names = [check_relative_filename(f) for f in filenames]
    for name in names:
        try:
            return load_weights_file(hf_hub_download(repo_id, name, revision=revision))
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"{repo_id} has none of the weight files {names}")
