"""Build an FGR-style dataset of triplets ``(I_sr, I_syn, I_gt)`` with ground-truth maps ``M_gt``.

    python -m training.data.build_fgr --out data/fgr --train 2400 --val 200 --test 400

For each item: crop an HR photo of the split (random rescale, crop, flip) -> second-order
real-world degradation to LR -> an SR model of the pool -> region swap with a random or
superpixel mask -> ``M_gt`` (PAPER.md §2). Item ``i`` of a split depends only on (seed, split, i),
so a stopped build resumes where it stopped and gives the same files as an uninterrupted one.

Folder layout::

    dataset.json          settings, calibrated GT-map scales, photo ids per split
    manifest.jsonl        one JSON line per finished item
    <split>/<i>_{gt,sr,syn}.png, <i>_mask.png (8-bit), <i>_mgt.png (16-bit M_gt)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .gt_maps import FEATURE_DISTANCES, GTMapConfig, gt_map, raw_differences
from .photos import DEFAULT_SOURCES, EXTRA_SOURCES, SPLITS, Photo, parse_sources, photo_pool
from .sr_pool import ArtifactSR, SRMethod, default_pool, match_size, sample_method

SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
CHANGED_THRESHOLD = 0.1  # M_gt above this inside the mask = "pixel really changed"


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODE[split], index])


def item_id(split: str, index: int) -> str:
    """The id of item ``index`` of ``split`` in the manifest (``train/000042``)."""
    return f"{split}/{index:06d}"


def missing_items(out: Path, counts: dict[str, int]) -> list[str]:
    """Ids of the items ``counts`` asks for that no manifest of ``out`` lists yet."""
    done = read_manifest(out)
    return [item_id(s, i) for s in SPLITS for i in range(counts.get(s, 0)) if item_id(s, i) not in done]


class PhotoCache:
    """Photos decoded once and kept as uint8 (a 2560x1600 photo is 12 MB)."""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def get(self, photo: Photo) -> np.ndarray:
        if photo.id not in self._cache:
            self._cache[photo.id] = (photo.load() * 255).round().astype(np.uint8)
        return self._cache[photo.id]


def random_hr_crop(photo: np.ndarray, size: int, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """A ``size``x``size`` float crop after a log-uniform rescale (so content scale varies), a random
    flip and 90-degree rotation; retries flat crops (std < 0.03) a few times."""
    h, w = photo.shape[:2]
    lo = size / min(h, w)
    crop = None
    for _ in range(tries):
        s = float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, 1.0)))))
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        scaled = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_AREA) if (nh, nw) != (h, w) else photo
        y, x = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
        crop = scaled[y:y + size, x:x + size].astype(np.float32) / 255.0
        if crop.std() >= 0.03:
            break
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    return np.ascontiguousarray(crop)


DEGRADATION_LEVELS = ("realesrgan", "light", "clean")
DEGRADATION_PROBS = (0.4, 0.4, 0.2)


def make_lr(hr: np.ndarray, scale: int, rng: np.random.Generator, level: str) -> np.ndarray:
    """LR input of the SR model: Real-ESRGAN's harsh second-order degradation, its ``light``
    preset, or a ``clean`` area downscale (then the SR output only has the model's own, subtle,
    artifacts). The mix keeps both gross and subtle defects in the data."""
    from .degradations import DegradationConfig, degrade

    if level == "clean":
        h, w = hr.shape[:2]
        lr = cv2.resize(hr, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
        return (np.clip(lr, 0, 1) * 255).round().astype(np.float32) / 255
    return degrade(hr, scale, rng, DegradationConfig.light() if level == "light" else None)


RECIPES = ("v3", "v2")
BASES = ("photo", "sr", "garbage")
BASE_PROBS = (0.45, 0.45, 0.10)
GROUP_PROBS = {"adds": 0.4, "removes": 0.4, "colour": 0.1, "structure": 0.1}
SR_OPERATOR_PROB = 0.5  # an SR output gets one more defect operator on top this often
STRENGTH = (0.1, 1.0)  # subtle to severe


def _draw_operator(rng: np.random.Generator) -> str:
    """A defect operator: its group by :data:`GROUP_PROBS` (detail-adding and detail-removing
    balanced), then uniformly within the group."""
    from .families import FAMILIES, OPERATOR_FAMILIES

    groups = list(GROUP_PROBS)
    group = groups[int(rng.choice(len(groups), p=np.array([GROUP_PROBS[g] for g in groups])))]
    names = [n for n in OPERATOR_FAMILIES if FAMILIES[n].group == group]
    return names[int(rng.integers(len(names)))]


def _sr_output(hr: np.ndarray, pool: list[tuple[SRMethod, float]], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    method = sample_method(pool, rng)
    level = DEGRADATION_LEVELS[int(rng.choice(len(DEGRADATION_LEVELS), p=DEGRADATION_PROBS))]
    lr = make_lr(hr, method.scale, rng, level)
    sr = match_size(method(lr, rng), hr)
    info = {"sr_method": method.name, "degradation": level, "lr_size": list(lr.shape[:2])}
    if isinstance(method, ArtifactSR):
        info["artifact"] = method.last_artifact
    if getattr(method, "last_settings", None):  # SRMD's drawn noise level / kernel-code factor
        info["sr_settings"] = method.last_settings
    return sr, info


def make_triplet(hr: np.ndarray, pool: list[tuple[SRMethod, float]], rng: np.random.Generator,
                 recipe: str = "v3") -> dict[str, Any]:
    """``gt``, ``sr``, ``syn``, ``mask`` (float32 arrays) and what made them.

    ``v3`` (default): the fully damaged image ``sr`` is, by :data:`BASE_PROBS`, the clean photo
    with one or two defect operators (``photo``), an SR network's output of a degraded copy,
    sometimes with an operator on top (``sr``), or a garbage image (``garbage``); ``syn`` swaps a
    masked region of it into the clean photo. ``v2``: the earlier recipe (SR output, the pool's own
    artifact members), kept to reproduce older datasets."""
    from .families import FAMILIES, garbage_image, operator

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    info: dict[str, Any] = {}
    families: list[str] = []
    if recipe == "v2":
        full, info = _sr_output(hr, pool, rng)
        base = "sr"
    else:
        base = BASES[int(rng.choice(len(BASES), p=BASE_PROBS))]
        if base == "garbage":
            full, info["garbage"] = garbage_image(*hr.shape[:2], rng)
            families.append("garbage")
        else:
            if base == "photo":
                full, n_ops = hr, 1 + int(rng.random() < 0.2)
            else:
                full, info = _sr_output(hr, pool, rng)
                n_ops = int(rng.random() < SR_OPERATOR_PROB)
            ops = []
            for _ in range(n_ops):
                name = _draw_operator(rng)
                strength = float(rng.uniform(*STRENGTH))
                full = operator(name)(full, rng, strength)
                ops.append({"name": name, "strength": round(strength, 4)})
            info["operators"] = ops
            families += [o["name"] for o in ops]
    net = str(info.get("sr_method", "")).split("+")[0]
    if net in FAMILIES:
        families.insert(0, net)
    if info.get("artifact"):
        families.append(info["artifact"])
    return {**swap_region(hr, full, rng), "base": base, "families": sorted(set(families)), **info}


def swap_region(hr: np.ndarray, full: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The region swap of every FGR item (PAPER.md §2): a random mask ``M`` and ``I_syn = M * I_sr +
    (1 - M) * I_gt``; returns ``gt``, ``sr``, ``syn``, ``mask`` (float32) and ``mask_kind``. The
    co-evolving reward (training/ccl/coevolve.py) makes its items from policy outputs with it."""
    from .masks import sample_mask

    mask, mask_kind = sample_mask(hr, rng)
    m = mask[..., None]
    syn = (m * full + (1 - m) * hr).astype(np.float32)
    return {"gt": hr, "sr": full.astype(np.float32), "syn": syn, "mask": mask.astype(np.float32),
            "mask_kind": mask_kind}


def _save_png(arr: np.ndarray, path: Path, bits: int = 8) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    if bits == 16:
        Image.fromarray((np.clip(arr, 0, 1) * 65535).round().astype(np.uint16)).save(tmp)
    else:
        Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(tmp)
    os.replace(tmp, path)


def load_png(path: Path) -> np.ndarray:
    """Read an item PNG back to float32 in [0, 1] (8-bit RGB/L or 16-bit L)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    return arr.astype(np.float32) / (65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0)


def calibrate_scales(photos: list[Photo], cache: PhotoCache, pool, feat, hr_size: int, seed: int,
                     n: int, quantile: float = 0.95, recipe: str = "v3") -> tuple[float, float]:
    """Fixed dataset-wide scales: the ``quantile`` of in-mask pixel / feature differences over
    ``n`` calibration triplets drawn from the train photos (never from val/test).

    Whatever the recipe, the triplets are those of the v2 recipe (SR outputs, with artifact
    operators half the time): a typical SR failure maps to about 1, and the v3 recipe's garbage
    and severe geometric defects, which would inflate a quantile of their own, simply clip."""
    if recipe == "v3":
        pool = list(pool) + [(ArtifactSR(m), w) for m, w in pool]
    pix, fea = [], []
    for i in tqdm(range(n), desc="calibrating GT-map scales", leave=False):
        rng = np.random.default_rng([seed, 99, i])
        hr = random_hr_crop(cache.get(photos[int(rng.integers(len(photos)))]), hr_size, rng)
        t = make_triplet(hr, pool, rng, "v2")
        p, f = raw_differences(t["syn"], t["gt"], t["mask"], feat)
        pix.append(p)
        fea.append(f)
    return float(np.quantile(np.concatenate(pix), quantile)), float(np.quantile(np.concatenate(fea), quantile))


def manifest_files(root: Path) -> list[Path]:
    """``manifest.jsonl`` and the per-shard ``manifest.shard<i>-of-<n>.jsonl`` files."""
    return sorted(root.glob("manifest*.jsonl"))


def _read_lines(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: that item is redone
                continue
            done[rec["id"]] = rec
    return done


def read_manifest(root: Path) -> dict[str, dict]:
    """Every finished item of the dataset in ``root`` (all shards), by id."""
    done: dict[str, dict] = {}
    for path in manifest_files(Path(root)):
        done.update(_read_lines(path))
    return done


def _rewrite_manifest(path: Path) -> None:
    """Drop a line cut by a crash (and anything unparsable) so new lines never append to it."""
    if not path.is_file():
        return
    text = path.read_text()
    done = _read_lines(path)
    if text and (not text.endswith("\n") or len(text.splitlines()) != len(done)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
        os.replace(tmp, path)


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` -> the launcher's rank / world size
    (``accelerate launch`` / ``torchrun`` set ``RANK`` and ``WORLD_SIZE``), else ``(0, 1)``."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def build_threads(threads: Optional[int], shard_text: Optional[str]) -> int:
    """Torch threads of one build process. Processes sharing a machine must split its cores: two
    shards with torch's default of all cores each ran 4-5x slower here (oversubscription)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        return threads
    local = os.environ.get("LOCAL_WORLD_SIZE")
    n = int(local) if local else (parse_shard(shard_text)[1] if shard_text else 1)
    return max(1, (os.cpu_count() or 1) // n)


def build(out: Path, counts: dict[str, int], hr_size: int = 256, seed: int = 0,
          feature: str = "efficientnet_lite0", alpha: float = 0.5, pixel_scale: Optional[float] = None,
          feature_scale: Optional[float] = None, extra_photos: tuple[str, ...] = (), calib_items: int = 32,
          pool: Optional[list] = None, progress: bool = True, recipe: str = "v3",
          shard: tuple[int, int] = (0, 1), sources: str | tuple[str, ...] = DEFAULT_SOURCES) -> Path:
    """Build (or resume) the dataset in ``out``; returns ``out``.

    ``sources``: the offline photo sources (training/data/photos.py; names, ``"all"`` or a
    comma-separated string), stored in ``dataset.json``; a folder built before the key existed
    was built from the default pool, and a resume with other sources is refused.

    ``shard=(i, n)`` builds only the items whose global position is ``i`` modulo ``n`` into
    ``manifest.shard<i>-of-<n>.jsonl``: run ``n`` processes (or machines sharing the folder) with
    ``i = 0..n-1``; together they write exactly the items one process would. Every shard computes
    the same ``dataset.json`` (same seed) and writes it atomically."""
    shard_i, shard_n = shard
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "dataset.json"
    sources = parse_sources(sources)
    if meta_path.is_file():  # before anything slow: a resume with other sources is refused at once
        built = parse_sources(json.loads(meta_path.read_text()).get("sources", DEFAULT_SOURCES))
        if built != sources:
            raise ValueError(f"{out} was built from the photo sources {','.join(built)}, not {','.join(sources)}: "
                             f"pass --sources {','.join(built)} to resume it, or use another --out folder")
    photos = {s: photo_pool(s, extra_photos, sources) for s in SPLITS}
    pool = pool if pool is not None else default_pool(with_artifacts=recipe == "v2")
    feat = FEATURE_DISTANCES[feature]()
    cache = PhotoCache()
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        for key, val in (("seed", seed), ("hr_size", hr_size), ("feature", feature), ("recipe", recipe)):
            if meta.get(key, "v2" if key == "recipe" else None) != val:
                raise ValueError(f"{out} was built with {key}={meta.get(key)!r}, not {val!r}: use another --out folder")
        gcfg = GTMapConfig(**meta["gt_map"])
    else:
        if not photos["train"]:
            raise ValueError("the train split has no photos")
        if pixel_scale is None or feature_scale is None:
            ps, fs = calibrate_scales(photos["train"], cache, pool, feat, hr_size, seed, calib_items, recipe=recipe)
            pixel_scale = pixel_scale or ps
            feature_scale = feature_scale or fs
        gcfg = GTMapConfig(alpha=alpha, pixel_scale=pixel_scale, feature_scale=feature_scale)
        meta = {"version": 3 if recipe == "v3" else 1, "recipe": recipe, "seed": seed, "hr_size": hr_size,
                "feature": feature, "gt_map": asdict(gcfg), "changed_threshold": CHANGED_THRESHOLD,
                "pool": [m.name for m, _ in pool], "sources": list(sources),
                "photos": {s: [p.id for p in photos[s]] for s in SPLITS}}
        tmp = meta_path.with_suffix(f".tmp{shard_i}")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, meta_path)
    name = "manifest.jsonl" if shard_n == 1 else f"manifest.shard{shard_i}-of-{shard_n}.jsonl"
    _rewrite_manifest(out / name)
    done = read_manifest(out)
    every = [(s, i) for s in SPLITS for i in range(counts.get(s, 0))]
    todo = [(s, i) for k, (s, i) in enumerate(every) if k % shard_n == shard_i and item_id(s, i) not in done]
    desc = "building FGR triplets" + (f" (shard {shard_i}/{shard_n})" if shard_n > 1 else "")
    with open(out / name, "a") as manifest:
        for split, i in tqdm(todo, desc=desc, disable=not progress):
            if not photos[split]:
                raise ValueError(f"the {split} split has no photos; add photos with --photos")
            rng = item_rng(seed, split, i)
            photo = photos[split][int(rng.integers(len(photos[split])))]
            hr = random_hr_crop(cache.get(photo), hr_size, rng)
            t = make_triplet(hr, pool, rng, recipe)
            mgt = gt_map(t["syn"], t["gt"], t["mask"], feat, gcfg)
            (out / split).mkdir(exist_ok=True)
            stem = out / split / f"{i:06d}"
            for key in ("gt", "sr", "syn", "mask"):
                _save_png(t[key], Path(f"{stem}_{key}.png"))
            _save_png(mgt, Path(f"{stem}_mgt.png"), bits=16)
            changed = (mgt > CHANGED_THRESHOLD) & (t["mask"] > 0.5)
            rec = {"id": item_id(split, i), "split": split, "index": i, "photo": photo.id,
                   "sr_method": t.get("sr_method"), "artifact": t.get("artifact"), "mask_kind": t["mask_kind"],
                   "degradation": t.get("degradation"), "base": t["base"], "families": t["families"],
                   "operators": t.get("operators"), "garbage": t.get("garbage"),
                   **({"sr_settings": t["sr_settings"]} if t.get("sr_settings") else {}),
                   "mask_coverage": float(t["mask"].mean()), "changed_fraction": float(changed.mean()),
                   "mgt_mean": float(mgt.mean())}
            manifest.write(json.dumps(rec) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())
    return out


def _build_shard(threads: int, out: Path, counts: dict[str, int], kwargs: dict) -> None:
    torch.set_num_threads(threads)
    build(out, counts, **kwargs)


def build_parallel(out: Path, counts: dict[str, int], processes: int, progress: bool = True,
                   threads: Optional[int] = None, **kwargs: Any) -> Path:
    """:func:`build` in ``processes`` worker processes on this machine (shards ``i/processes``, the
    cores split among them unless ``threads`` per worker is given; with one process ``threads`` is
    this process's torch threads for the build), then one pass that checks every
    item is there; returns ``out``.

    Exactly the files of a one-process build; resumable like it. A worker that fails stops the
    build with an error naming its shard once the others are done (their items are kept: rerun to
    resume). ``kwargs`` are :func:`build`'s, without ``shard``."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if "shard" in kwargs:
        raise ValueError("build_parallel chooses the shards itself: pass no shard")
    if processes > 1:
        import multiprocessing as mp

        if not (Path(out) / "dataset.json").is_file():
            build(out, {}, progress=progress, **kwargs)  # settings and GT-map calibration once, here, not per worker

        ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
        threads = threads or max(1, (os.cpu_count() or 1) // processes)
        workers = [ctx.Process(target=_build_shard, name=f"fgr-shard-{i}",
                               args=(threads, out, counts, {**kwargs, "shard": (i, processes),
                                                            "progress": progress and i == 0}))
                   for i in range(processes)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        failed = [f"{i}/{processes} (exit code {w.exitcode})" for i, w in enumerate(workers) if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"FGR build in {out}: shard(s) {', '.join(failed)} failed (the error is printed "
                               "above); the finished items are kept, rerun the same command to resume")
        if not missing_items(Path(out), counts):
            return out
    # one process: everything; after the workers, only what they left (none, unless one was killed)
    previous = torch.get_num_threads()
    if processes == 1 and threads:
        torch.set_num_threads(threads)
    try:
        return build(out, counts, progress=progress, **kwargs)
    finally:
        torch.set_num_threads(previous)


def default_processes() -> int:
    """Build processes when none are asked for: one per core of this process, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/fgr"), help="dataset folder (resumes if it exists)")
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--hr-size", type=int, default=256, help="HR crop side in px (a multiple of 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", action="append", default=[], help="extra folder of HR photos (repeatable)")
    ap.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                    help="offline photo sources, comma-separated, or 'all' (the default pool plus the opt-in "
                         "sources of training/data/photos.py: " + ",".join(EXTRA_SOURCES) + "); default: %(default)s")
    ap.add_argument("--feature", choices=sorted(FEATURE_DISTANCES), default="efficientnet_lite0",
                    help="feature extractor of Diff_feat (dino needs Hub weights)")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the pixel term in M_gt")
    ap.add_argument("--pixel-scale", type=float, default=None, help="fixed scale of Diff_pixel (default: calibrated)")
    ap.add_argument("--feature-scale", type=float, default=None, help="fixed scale of Diff_feat (default: calibrated)")
    ap.add_argument("--recipe", choices=RECIPES, default="v3", help="v3: defect families on photos, SR outputs "
                    "and garbage; v2: SR outputs only (the earlier recipe)")
    ap.add_argument("--shard", default=None, help="build only shard i of n (i/n, e.g. 0/4); default: the "
                    "launcher's RANK/WORLD_SIZE, else everything")
    ap.add_argument("--processes", type=int, default=None,
                    help="without --shard or a launcher: build with this many worker processes on this "
                         "machine (default: one per core, at most 8)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of this process (default: the cores divided among the processes "
                         "of this machine: LOCAL_WORLD_SIZE under a launcher, n for --shard i/n)")
    args = ap.parse_args(argv)
    if args.hr_size % 4:
        ap.error("--hr-size must be a multiple of 4 (the SR scale)")
    if args.processes is not None and args.processes < 1:
        ap.error(f"--processes must be at least 1, got {args.processes}")
    try:
        sources = parse_sources(args.sources)
    except ValueError as e:
        ap.error(str(e))
    counts = {"train": args.train, "val": args.val, "test": args.test}
    kwargs = dict(hr_size=args.hr_size, seed=args.seed, feature=args.feature, alpha=args.alpha,
                  pixel_scale=args.pixel_scale, feature_scale=args.feature_scale, extra_photos=tuple(args.photos),
                  recipe=args.recipe, sources=sources)
    if args.shard is not None or os.environ.get("WORLD_SIZE"):  # one shard of a multi-process or multi-machine build
        torch.set_num_threads(build_threads(args.threads, args.shard))
        build(args.out, counts, shard=parse_shard(args.shard), **kwargs)
    else:
        processes = args.processes or default_processes()
        threads = build_threads(args.threads, None) if processes == 1 else args.threads
        build_parallel(args.out, counts, processes, threads=threads, **kwargs)
    print(f"dataset ready in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
