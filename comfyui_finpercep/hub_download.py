"""Download a Hub repository once into a ComfyUI model folder, with checksums.

``download_once(repo_id, dest)``:

* first call: reads the repository's file list with checksums (``model_info(files_metadata=True)``:
  sha256 of LFS files, git blob sha1 of the others), downloads the files into a temporary folder
  beside ``dest``, checks every file against its checksum, writes ``finpercep_download.json``
  (repo, commit, sha256 of each file) and moves the folder into place;
* later calls: no network; the files are checked against the manifest's sha256 (a changed or missing
  file is an error that says to delete the folder), unless another revision is asked for.

Only huggingface_hub; importable outside ComfyUI.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

MANIFEST = "finpercep_download.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class ChecksumError(RuntimeError):
    pass


def check_repo_id(repo_id: str, input_name: str = "hub_id") -> str:
    repo_id = repo_id.strip()
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(f"{input_name}: {repo_id!r} is not a Hub repository id; write it as 'owner/name'")
    return repo_id


def folder_name(repo_id: str) -> str:
    """``owner/name`` -> ``owner--name`` (the Hub cache's own convention)."""
    return check_repo_id(repo_id).replace("/", "--")


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def verify_manifest(dest: Path) -> dict:
    """Check every file listed in ``dest``'s manifest; returns the manifest."""
    manifest = json.loads((dest / MANIFEST).read_text())
    for name, sha in manifest["files"].items():
        f = dest / name
        if not f.is_file():
            raise ChecksumError(f"{f} is missing (downloaded from {manifest['repo_id']}); delete {dest} to download it again")
        got, _ = _hashes(f)
        if got != sha:
            raise ChecksumError(
                f"{f} changed since it was downloaded from {manifest['repo_id']} (sha256 {got[:12]}.. != {sha[:12]}..); "
                f"delete {dest} to download it again"
            )
    return manifest


def download_once(repo_id: str, dest: str | Path, revision: Optional[str] = None,
                  allow_patterns: Optional[Iterable[str]] = None) -> Path:
    """``dest`` holding the verified files of ``repo_id`` (downloaded only when not there yet)."""
    from diffusers_ext.hub import check_relative_filename

    repo_id = check_repo_id(repo_id)
    dest = Path(dest)
    if (dest / MANIFEST).is_file():
        manifest = json.loads((dest / MANIFEST).read_text())
        if manifest.get("repo_id") == repo_id and (not revision or revision in (manifest.get("revision"), manifest.get("commit"))):
            verify_manifest(dest)
            return dest
    elif dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and was not downloaded by FinPercep; move it away or pick another hub id")

    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    commit = info.sha
    patterns = list(allow_patterns) if allow_patterns else None
    files = [s for s in (info.siblings or []) if patterns is None or any(fnmatch.fnmatch(s.rfilename, p) for p in patterns)]
    if not files:
        raise FileNotFoundError(f"{repo_id}@{commit[:8]} has no files matching {patterns}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        sums = {}
        for s in files:
            name = check_relative_filename(s.rfilename)
            local = Path(hf_hub_download(repo_id, name, revision=commit, local_dir=tmp))
            sha256, git_sha1 = _hashes(local)
            lfs = getattr(s, "lfs", None)
            expected_sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
            if expected_sha256 is None and isinstance(lfs, dict):
                expected_sha256 = lfs.get("sha256")
            if expected_sha256:
                ok = sha256 == expected_sha256
            elif getattr(s, "blob_id", None):
                ok = git_sha1 == s.blob_id
            else:
                raise ChecksumError(f"{repo_id} lists no checksum for {name}; refusing to use an unverified download")
            if not ok:
                raise ChecksumError(f"{name} from {repo_id}@{commit[:8]} does not match the checksum the Hub lists; "
                                    "the download was corrupted or altered, try again")
            sums[name] = sha256
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        (tmp / MANIFEST).write_text(json.dumps({"repo_id": repo_id, "revision": revision, "commit": commit,
                                                "files": sums}, indent=2, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
