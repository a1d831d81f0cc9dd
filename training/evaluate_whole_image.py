"""Whole-image ranking benchmark (reward model v6): does the score order whole upscales as people see them?

    python -m training.evaluate_whole_image [--model PATH] [--policy NAME=UPSCALER.safetensors ...]

On crops of the *test-split photos* (never trained on; 256 px by default, scored as a user scores
them: the pipeline's default tiling), each crop gets versions: the clean crop, the upscale of its own
degraded copy (one ``light`` Real-ESRGAN-style degradation per crop and scale, shared by every
network) by every SR network of ``--networks`` and by bicubic, a mildly blurred copy (Gaussian sigma
1), and the output of each ``--policy`` upscaler (e.g. one that 300 steps of pure ReFL made out of an
earlier reward: a *hacked* upscaler). The full-reference teacher (LPIPS-VGG, DISTS, LPIPS-alex
against the clean crop; :mod:`diffusers_ext.perceptual`) says how far each version is. Figures:

- ``clean_top``: share of crops whose clean version scores highest of all its versions;
- ``tau_lpips_vgg`` / ``tau_dists`` / ``tau_lpips_alex``: Kendall tau-b between the score and minus
  the teacher distance over one crop's versions, averaged over crops (1 = the teacher's order);
- per version kind: ``below_clean`` (share of crops where it scores below the clean crop),
  ``agree_vgg`` (share of its pairs with the crop's other versions that the score orders as
  LPIPS-VGG does), its mean score and mean teacher distances.

The benchmark set (images and teacher distances) is built once into ``--bench`` and reused, so
models are compared on identical versions. Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from diffusers_ext.models.finpercep_rm import FinPercepRM
from diffusers_ext.request import resolve
from training.data.build_fgr import PhotoCache, make_lr, random_hr_crop
from training.data.degradations import gaussian_blur
from training.data.photos import ALL_SOURCES, photo_pool
from training.data.artifacts import _to_u8
from training.data.sr_pool import match_size
from training.data.versions import TEACHER_METRICS, Teacher

ROOT = Path(__file__).resolve().parent.parent
HACKED_UPSCALERS = ROOT / "benchmarks" / "hacked_upscalers"
#: the upscaler that 300 steps of pure ReFL made out of reward v5 (the benchmark's default policy)
HACK_V5 = HACKED_UPSCALERS / "realesr-animevideov3-x4-hacked-by-v5.safetensors"
#: the default version networks: every photo SR network the package can load
DEFAULT_BENCH_NETWORKS = ("realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3-x4", "waifu2x-photo-x2",
                          "span-ch52-x4", "idealo-rdn-psnr-small-x2", "srmd-x4", "srmdnf-x4", "span-clearreality-x4",
                          "idealo-rrdn-gans-x4")


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b of two equal-length vectors (ties handled as in scipy.stats.kendalltau)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    n1, n2 = n0 - int(np.sum(da == 0)), n0 - int(np.sum(db == 0))
    if n1 == 0 or n2 == 0:
        return float("nan")
    return float(np.sum(da * db) / np.sqrt(n1 * n2))


def load_policy(path: str):
    """An LR->SR callable from a merged upscaler file (``diffusers_ext.srnets.export.save_upscaler``)."""
    from diffusers_ext.srnets.export import load_upscaler

    net = load_upscaler(path).eval()

    @torch.no_grad()
    def run(lr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float()
        return net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()

    return run


def build_bench(out: Path, n: int = 40, size: int = 256, seed: int = 0,
                networks: Sequence[str] = DEFAULT_BENCH_NETWORKS, policies: Optional[dict[str, str]] = None,
                sources: Sequence[str] = ALL_SOURCES, progress: bool = True) -> dict:
    """Build (or load, when its settings match) the benchmark set in ``out``."""
    out = Path(out)
    settings = {"n": n, "size": size, "seed": seed, "networks": list(networks), "policies": sorted(policies or {}),
                "sources": list(sources)}
    meta = out / "bench.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        if data["settings"] == settings:
            return data
        raise ValueError(f"{out} holds a benchmark with other settings ({data['settings']}); pass another --bench")
    from training.data.sr_pool import NetworkSR

    nets = [NetworkSR(name) for name in networks]
    pols = {name: load_policy(path) for name, path in (policies or {}).items()}
    teacher = Teacher()
    photos = photo_pool("test", sources=tuple(sources))
    cache = PhotoCache()
    rng = np.random.default_rng([seed, 2424])
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in tqdm(range(n), desc="whole-image bench", disable=not progress):
        photo = photos[i % len(photos)]
        hr = random_hr_crop(cache.get(photo), size, rng)
        lrs = {s: make_lr(hr, s, np.random.default_rng([seed, i, s]), "light") for s in (2, 4)}
        versions: list[tuple[str, np.ndarray]] = [("clean", hr), ("blur_sigma1", gaussian_blur(hr, 1.0))]
        versions.append(("bicubic_x4", cv2.resize(lrs[4], (size, size), interpolation=cv2.INTER_CUBIC)))
        for net in nets:
            versions.append((net.name, net(lrs[int(net.scale)], rng)))
        for name, pol in pols.items():
            versions.append((f"policy:{name}", pol(lrs[4])))
        images = np.stack([_to_u8(match_size(v, hr)) for _, v in versions])
        np.save(out / f"{i:04d}.npy", images)
        items.append({"photo": photo.id, "kinds": [k for k, _ in versions], **teacher(images)})
    data = {"settings": settings, "items": items}
    meta.write_text(json.dumps(data, indent=1))
    return data


@torch.no_grad()
def score_bench(model: FinPercepRM, bench: Path, data: dict, stage: Optional[int] = None) -> list[np.ndarray]:
    """The calibrated scores of every version of every item, as the pipeline scores them (default tiling)."""
    model.eval()
    tiling = resolve(model).tiling
    out = []
    for i, _ in enumerate(data["items"]):
        images = np.load(Path(bench) / f"{i:04d}.npy")
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        out.append(np.concatenate([model(x[j:j + 4], stage=stage, tiling=tiling).score.float().numpy()
                                   for j in range(0, len(x), 4)]))
    return out


def summarize(data: dict, scores: list[np.ndarray]) -> dict:
    """The benchmark's figures from the scores of :func:`score_bench`."""
    items = data["items"]
    res: dict = {"items": len(items), "clean_top": float(np.mean([int(np.argmax(s)) == 0 and s[0] > np.max(s[1:])
                                                                    for s in scores]))}
    for t in TEACHER_METRICS:
        res[f"tau_{t}"] = float(np.nanmean([kendall_tau(s, -np.asarray(it[t])) for s, it in zip(scores, items)]))
    kinds: dict[str, dict[str, list]] = {}
    for s, it in zip(scores, items):
        vgg = np.asarray(it["lpips_vgg"])
        for j, kind in enumerate(it["kinds"]):
            row = kinds.setdefault(kind, {"below_clean": [], "agree_vgg": [], "score": [], **{t: [] for t in TEACHER_METRICS}})
            if j:
                row["below_clean"].append(float(s[j] < s[0]))
            others = [k for k in range(len(s)) if k != j and vgg[k] != vgg[j]]
            row["agree_vgg"] += [float(np.sign(s[j] - s[k]) == np.sign(vgg[k] - vgg[j])) for k in others]
            row["score"].append(float(s[j]))
            for t in TEACHER_METRICS:
                row[t].append(float(it[t][j]))
    res["kinds"] = {k: {m: (float(np.mean(v)) if v else float("nan")) for m, v in row.items()} for k, row in kinds.items()}
    sr = [k for k in res["kinds"] if k not in ("clean", "blur_sigma1")]
    res["sr_below_clean"] = float(np.mean([res["kinds"][k]["below_clean"] for k in sr if not k.startswith("policy:")]))
    return res


def teacher_agreement(data: dict) -> dict[str, float]:
    """Kendall tau between the teacher metrics themselves over each crop's versions, averaged over crops:
    how far two full-reference metrics agree on the order (the ceiling a no-reference score can reach
    against both at once)."""
    items = data["items"]
    pairs = [(a, b) for i, a in enumerate(TEACHER_METRICS) for b in TEACHER_METRICS[i + 1:]]
    return {f"{a}~{b}": float(np.nanmean([kendall_tau(np.asarray(it[a]), np.asarray(it[b])) for it in items]))
            for a, b in pairs}


def format_table(res: dict, title: str) -> str:
    lines = [f"### {title}", "",
             f"{res['items']} crops: clean on top **{res['clean_top']:.3f}**; Kendall tau vs LPIPS-VGG "
             f"**{res['tau_lpips_vgg']:.3f}**, vs DISTS **{res['tau_dists']:.3f}**, vs LPIPS-alex {res['tau_lpips_alex']:.3f}; "
             f"SR versions below the clean crop {res['sr_below_clean']:.3f}", "",
             "The teachers among themselves (Kendall tau): " + ", ".join(
                 f"{k.replace('~', ' vs ')} {v:.3f}" for k, v in res.get("teacher_agreement", {}).items()), "",
             "| version | below clean | agrees with LPIPS-VGG | mean score | LPIPS-VGG | DISTS | LPIPS-alex |",
             "|---|---|---|---|---|---|---|"]
    for k, r in res["kinds"].items():
        below = "-" if k == "clean" else f"{r['below_clean']:.3f}"
        lines.append(f"| {k} | {below} | {r['agree_vgg']:.3f} | {r['score']:.3f} | {r['lpips_vgg']:.3f} | "
                     f"{r['dists']:.3f} | {r['lpips_alex']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="reward model folder (default: the bundled one)")
    ap.add_argument("--stage", type=int, default=None, help="stage to score with (default: the model's)")
    ap.add_argument("--bench", type=Path, default=ROOT / "data" / "whole_image_bench")
    ap.add_argument("--n", type=int, default=40, help="test-split crops")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--networks", default=",".join(DEFAULT_BENCH_NETWORKS))
    ap.add_argument("--policy", action="append", default=None,
                    help="NAME=merged upscaler .safetensors (repeatable); default: the upscaler that pure ReFL made "
                         "out of v5 (benchmarks/hacked_upscalers)")
    ap.add_argument("--out", type=Path, default=ROOT / "training" / "results" / "whole_image")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    policies = dict(p.split("=", 1) for p in (args.policy if args.policy is not None else [f"hack_v5_anime={HACK_V5}"]))
    data = build_bench(args.bench, args.n, args.size, args.seed, [n for n in args.networks.split(",") if n], policies)
    model = FinPercepRM.from_pretrained(args.model)
    res = summarize(data, score_bench(model, args.bench, data, args.stage))
    res["teacher_agreement"] = teacher_agreement(data)
    res["model"] = args.model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    table = format_table(res, args.title or f"{args.model} (stage {args.stage if args.stage is not None else 'default'})")
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
