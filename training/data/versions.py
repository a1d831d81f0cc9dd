"""Whole-image versions of clean photos, ordered by a full-reference perceptual teacher (reward model v6).

The FGR triplets only compare pasted regions inside one image (``S_sr < S_syn < S_gt``); nothing in
them says how far a *whole* image is from what it should be, across photos and SR networks. A
*version set* does: one clean HR crop and many whole versions of it (real SR networks, a family drawn first, on degraded
copies at several strengths, classical upscalers, blur, over-sharpening, noise, waxy smoothing, JPEG,
every defect operator of :mod:`training.data.families`, and optionally the outputs of a policy that
hacked an earlier reward), each labelled with the teacher's distance to the clean crop (LPIPS-VGG,
LPIPS-alex, DISTS: :mod:`diffusers_ext.perceptual`). The reward model learns to order the versions
of one photo as the teacher does, the clean photo first (``training/whole_image.py``).

    python -m training.data.versions --out data/versions_v6 --train 1200 --val 120

Layout (resumable; item ``i`` of a split depends only on ``(seed, split, i)``)::

    versions.json             settings, photo ids per split
    manifest.jsonl            one line per finished item: id, photo, kinds, teacher distances
    labels.jsonl              teacher distances added later (``--label-only``), merged into the manifest records
    <split>/<i>.npz           ``images``: uint8 [K, H, W, 3], version 0 the clean crop
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from .artifacts import _to_u8
from .build_fgr import PhotoCache, item_rng, make_lr, random_hr_crop
from .degradations import add_gaussian_noise, gaussian_blur, jpeg_compress
from .families import OPERATOR_FAMILIES, operator
from .photos import SPLITS, parse_sources, photo_pool
from .sr_pool import match_size

#: the teacher distances stored per version (all lower = closer to the clean photo)
TEACHER_METRICS = ("lpips_vgg", "lpips_alex", "dists")
SR_LEVELS = ("clean", "light", "realesrgan")
CLASSICAL = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4,
             "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}

Policy = Callable[[np.ndarray], np.ndarray]  # LR float HxWx3 -> SR float (any size; resized to HR)


def unsharp(img: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """Over-sharpening: ``img + amount * (img - blur(img))`` (halos grow with ``amount``)."""
    return np.clip(img + amount * (img - gaussian_blur(img, sigma)), 0, 1).astype(np.float32)


def waxy(img: np.ndarray, strength: float) -> np.ndarray:
    """Edge-preserving smoothing (bilateral): the plastic skin of over-denoised SR outputs."""
    d = int(5 + 6 * strength)
    return cv2.bilateralFilter(img.astype(np.float32), d, 0.05 + 0.2 * strength, 2 + 6 * strength)


def filter_version(kind: str, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One image-processing version of ``hr`` (``blur``, ``sharpen``, ``noise``, ``waxy``, ``jpeg``)
    with a random strength from subtle to severe, and what was drawn."""
    if kind == "blur":
        sigma = float(np.exp(rng.uniform(np.log(0.4), np.log(3.0))))
        return gaussian_blur(hr, sigma), {"sigma": sigma}
    if kind == "sharpen":
        amount, sigma = float(rng.uniform(0.5, 4.0)), float(rng.uniform(0.8, 2.5))
        return unsharp(hr, amount, sigma), {"amount": amount, "sigma": sigma}
    if kind == "noise":
        sigma = float(np.exp(rng.uniform(np.log(1.5), np.log(25.0))))  # in 1/255 units
        return add_gaussian_noise(hr, rng, sigma, gray=bool(rng.random() < 0.3)), {"sigma255": sigma}
    if kind == "waxy":
        s = float(rng.uniform(0.2, 1.0))
        return waxy(hr, s), {"strength": s}
    if kind == "jpeg":
        q = int(rng.integers(8, 92))
        return jpeg_compress(hr, q), {"quality": q}
    raise ValueError(f"unknown filter version {kind!r}")


FILTERS = ("blur", "sharpen", "noise", "waxy", "jpeg")


class VersionMaker:
    """Draws the versions of one clean crop.

    ``networks``: SR pool members (objects with ``name``, ``scale`` and ``__call__(lr, rng)``, e.g.
    :class:`training.data.sr_pool.NetworkSR`); ``policies``: named LR->SR callables (e.g. an
    upscaler that hacked an earlier reward). Per crop: the clean crop, ``n_sr`` network outputs
    (random network and degradation level), ``n_classical`` classical upscales, ``n_filter`` filter
    versions and ``n_operator`` whole-image defect operators, and one output of each policy."""

    def __init__(self, networks: Sequence, policies: Optional[dict[str, Policy]] = None, n_sr: int = 6,
                 n_classical: int = 2, n_filter: int = 4, n_operator: int = 3) -> None:
        self.networks, self.policies = list(networks), dict(policies or {})
        self.n_sr, self.n_classical, self.n_filter, self.n_operator = n_sr, n_classical, n_filter, n_operator

    def __call__(self, hr: np.ndarray, rng: np.random.Generator) -> list[tuple[str, np.ndarray, dict]]:
        out: list[tuple[str, np.ndarray, dict]] = [("clean", hr, {})]
        families = sorted({network_family(n.name) for n in self.networks})
        for _ in range(self.n_sr if self.networks else 0):
            fam = families[int(rng.integers(len(families)))]  # a family first: no family dominates by its variants
            members = [n for n in self.networks if network_family(n.name) == fam]
            net = members[int(rng.integers(len(members)))]
            level = SR_LEVELS[int(rng.integers(len(SR_LEVELS)))]
            lr = make_lr(hr, int(net.scale), rng, level)
            out.append((f"sr:{net.name}", match_size(net(lr, rng), hr), {"level": level}))
        for _ in range(self.n_classical):
            name = sorted(CLASSICAL)[int(rng.integers(len(CLASSICAL)))]
            scale = int(rng.choice([2, 4]))
            level = SR_LEVELS[int(rng.integers(len(SR_LEVELS)))]
            lr = make_lr(hr, scale, rng, level)
            up = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=CLASSICAL[name])
            out.append((f"classical:{name}", match_size(up, hr), {"level": level, "scale": scale}))
        for kind in rng.choice(FILTERS, size=self.n_filter, replace=self.n_filter > len(FILTERS)):
            img, info = filter_version(str(kind), hr, rng)
            out.append((f"filter:{kind}", img, info))
        for name in rng.choice(OPERATOR_FAMILIES, size=self.n_operator, replace=False):
            s = float(rng.uniform(0.1, 1.0))
            out.append((f"operator:{name}", np.clip(operator(str(name))(hr, rng, s), 0, 1).astype(np.float32),
                        {"strength": s}))
        for name, policy in self.policies.items():
            level = SR_LEVELS[int(rng.integers(len(SR_LEVELS)))]
            lr = make_lr(hr, 4, rng, level)
            out.append((f"policy:{name}", match_size(policy(lr), hr), {"level": level}))
        return out


class Teacher:
    """The full-reference teacher: distances of versions to their clean crop by ``metrics`` (LPIPS-VGG,
    LPIPS-alex, DISTS; :mod:`diffusers_ext.perceptual`). The clean crop's features are computed once
    per set (a reference batch of one)."""

    def __init__(self, metrics: Sequence[str] = TEACHER_METRICS, device: str = "cpu", batch_size: int = 8) -> None:
        from diffusers_ext.perceptual import get_model

        unknown = [m for m in metrics if m not in TEACHER_METRICS]
        if unknown:
            raise ValueError(f"unknown teacher metrics {unknown}; choose from {', '.join(TEACHER_METRICS)}")
        self.models = {m: get_model(m, device) for m in metrics}
        self.metrics, self.device, self.batch_size = tuple(metrics), device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, list[float]]:
        """``images``: uint8 ``[K, H, W, 3]``, version 0 the clean crop -> metric -> K distances."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(self.device)
        return {name: [0.0] + [float(v) for v in d] for name, d in self.distances(x[1:], x[:1]).items()}

    @torch.no_grad()
    def distances(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metric -> ``[B]`` distances of images ``x`` (``Bx3xHxW`` in [0, 1]) to one reference ``ref``
        (``1x3xHxW``)."""
        x, ref = x.to(self.device), ref.to(self.device)
        return {name: torch.cat([model(x[i:i + self.batch_size], ref) for i in range(0, len(x), self.batch_size)]
                                ).float().cpu() for name, model in self.models.items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_manifest(root: Path) -> dict[str, dict]:
    """Finished items by id, with the teacher distances that :func:`label` added later merged in."""
    out = {rec["id"]: rec for rec in _jsonl(Path(root) / "manifest.jsonl")}
    for extra in _jsonl(Path(root) / "labels.jsonl"):
        if extra["id"] in out:
            out[extra["id"]].update({k: v for k, v in extra.items() if k != "id"})
    return out


def label(out: Path, metrics: Sequence[str], teacher: Optional[Teacher] = None, progress: bool = True) -> int:
    """Add the teacher distances ``metrics`` to every finished item of ``out`` that lacks one (appended
    to ``labels.jsonl``; resumable): a set built with the cheap LPIPS-alex teacher gets LPIPS-VGG and
    DISTS later, when there is time. Returns the number of items labelled."""
    out = Path(out)
    todo = [r for r in read_manifest(out).values() if any(m not in r for m in metrics)]
    teacher = teacher or Teacher([m for m in metrics])
    with (out / "labels.jsonl").open("a") as f:
        for rec in tqdm(todo, desc="labels", disable=not progress):
            images = np.load(out / rec["split"] / f"{rec['index']:06d}.npz")["images"]
            f.write(json.dumps({"id": rec["id"], **teacher(images)}) + "\n")
            f.flush()
    return len(todo)


#: SR networks kept out of the version sets' training data, so the whole-image benchmark measures
#: networks the model never saw (a kernel-conditioned CNN family, a community SPAN model and a real GAN)
HOLDOUT_NETWORKS = ("srmd-x2", "srmd-x3", "srmd-x4", "srmdnf-x2", "srmdnf-x3", "srmdnf-x4", "span-clearreality-x4",
                    "idealo-rrdn-gans-x4")


def network_family(name: str) -> str:
    """The family of an SR network name (scale, width and noise-level variants of one model together):
    ``waifu2x-photo-noise2-x2`` -> ``waifu2x-photo``, ``span-ch52-x4`` -> ``span``."""
    return re.sub(r"-(noise|ch)\d+", "", re.sub(r"-x\d+$", "", name))


def default_networks(names: Optional[Sequence[str]] = None, holdout: Sequence[str] = HOLDOUT_NETWORKS) -> list:
    """The installed SR networks for version sets: every photo model of
    :func:`diffusers_ext.srnets.available_models` but ``holdout`` (waifu2x's anime-style models and
    the 2x/3x animevideov3 variants left out), unless ``names`` is given."""
    from diffusers_ext.srnets import available_models

    from .sr_pool import NetworkSR

    have = available_models()
    if names is None:
        names = [n for n in have if n not in holdout and not n.startswith("waifu2x-anime")
                 and n not in ("realesr-animevideov3-x2", "realesr-animevideov3-x3")]
    missing = [n for n in names if n not in have]
    if missing:
        raise FileNotFoundError(f"SR networks {missing} are not installed (available: {', '.join(have)})")
    return [NetworkSR(n) for n in names]


def build(out: Path, counts: dict[str, int], hr_size: int = 192, seed: int = 0, sources: Sequence[str] = (),
          networks: Optional[Sequence] = None, policies: Optional[dict[str, Policy]] = None,
          teacher: Optional[Teacher] = None, progress: bool = True, **maker_kwargs) -> Path:
    """Build (or resume) a version-set folder; returns ``out``. ``networks``: SR network names or
    pool members (default: :func:`default_networks`); ``teacher``: any callable like :class:`Teacher`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "versions.json"
    settings = {"hr_size": hr_size, "seed": seed, "sources": list(sources),
                "networks": None if networks is None else [n if isinstance(n, str) else n.name for n in networks],
                "policies": sorted(policies or {}), "maker": maker_kwargs}
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old["settings"] != settings:
            raise ValueError(f"{out} was built with other settings ({old['settings']}); use another --out, or the "
                             f"same settings ({settings}) to resume")
    pools = {s: photo_pool(s, sources=tuple(sources)) for s in SPLITS}
    if not meta_path.is_file():
        meta_path.write_text(json.dumps({"settings": settings, "teacher": list(TEACHER_METRICS),
                                         "photos": {s: [p.id for p in pools[s]] for s in SPLITS}}, indent=1))
    nets = default_networks() if networks is None else (
        [n for n in networks if not isinstance(n, str)] + default_networks([n for n in networks if isinstance(n, str)]))
    maker = VersionMaker(nets, policies, **maker_kwargs)
    teacher = teacher or Teacher()
    done = read_manifest(out)
    cache = PhotoCache()
    todo = [(s, i) for s in SPLITS for i in range(counts.get(s, 0)) if f"{s}/{i:06d}" not in done]
    with (out / "manifest.jsonl").open("a") as manifest:
        for split, i in tqdm(todo, desc="versions", disable=not progress):
            photos = pools[split]
            if not photos:
                raise ValueError(f"no {split} photos in the sources {list(sources)}")
            rng = item_rng(seed, split, i)
            photo = photos[int(rng.integers(len(photos)))]
            hr = random_hr_crop(cache.get(photo), hr_size, rng)
            versions = maker(hr, rng)
            images = np.stack([_to_u8(v) for _, v, _ in versions])
            labels = teacher(images)
            rid = f"{split}/{i:06d}"
            (out / split).mkdir(exist_ok=True)
            tmp = out / split / f"{i:06d}.tmp.npz"
            np.savez(tmp, images=images)
            tmp.replace(out / split / f"{i:06d}.npz")
            rec = {"id": rid, "split": split, "index": i, "photo": photo.id, "kinds": [k for k, _, _ in versions],
                   "info": [inf for _, _, inf in versions], **labels}
            manifest.write(json.dumps(rec) + "\n")
            manifest.flush()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/versions_v6"))
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--test", type=int, default=0)
    ap.add_argument("--hr-size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", default="all", help="photo sources (training/data/photos.py), or 'all'")
    ap.add_argument("--networks", default=None, help="comma-separated SR networks (default: every installed photo model)")
    ap.add_argument("--policy", action="append", default=[],
                    help="NAME=merged upscaler .safetensors whose outputs join every set (repeatable; e.g. an "
                         "upscaler that hacked an earlier reward)")
    ap.add_argument("--metrics", default=",".join(TEACHER_METRICS),
                    help="teacher metrics computed (LPIPS-VGG and DISTS cost ~3x LPIPS-alex each on a CPU)")
    ap.add_argument("--versions-per-set", type=int, default=16, help="versions besides the clean crop and policies")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--label-only", action="store_true",
                    help="build nothing: add the --metrics teacher distances to the finished items that lack them")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.label_only:
        n = label(args.out, args.metrics.split(","))
        print(f"labelled {n} version sets in {args.out}", file=sys.stderr)
        return 0
    from training.evaluate_whole_image import load_policy

    nets = args.networks.split(",") if args.networks else None
    policies = {name: load_policy(path) for name, path in (p.split("=", 1) for p in args.policy)}
    k = args.versions_per_set
    n_sr = max(1, round(k * 0.4))
    n_op = max(1, round(k * 0.2))
    n_cl = max(1, round(k * 0.1))
    build(args.out, {"train": args.train, "val": args.val, "test": args.test}, hr_size=args.hr_size, seed=args.seed,
          sources=parse_sources(args.sources), networks=nets, policies=policies,
          teacher=Teacher(args.metrics.split(",")), n_sr=n_sr, n_classical=n_cl, n_operator=n_op,
          n_filter=max(1, k - n_sr - n_op - n_cl))
    print(f"versions ready in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
