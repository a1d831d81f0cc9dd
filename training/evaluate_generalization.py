"""Generalization and robustness benchmark of a reward model (reward model v3), one command:

    python -m training.evaluate_generalization [--model PATH] [--protocol runs/protocol_rm/model]

Part 1, defect families (``training/data/families.py``). On crops of the *test-split photos*
(never seen in training), every family's defect is pasted into a random region at two strengths
(0.4 and 0.9; for an SR network: its output on a lightly / harshly degraded input). Per family:

- ``auroc``: pixel AUROC of the map on the damaged image: pixels of the region that really changed
  (smoothed channel-mean difference >= 0.01) against pixels outside it;
- ``pair``: share of images with S(clean) > S(damaged);
- ``mono``: share with S(strength 0.4) > S(strength 0.9) (same region, same draw: more of the
  same defect must score lower);
and, over all clean crops, ``false_alarm``: share of clean-photo pixels with PDM > 0.5.
With ``--protocol``, the protocol model (trained without :data:`PROTOCOL_HOLDOUT`) is reported on
its unseen and seen families apart: the honest estimate of how the shipped model generalizes.

Part 2, robustness, in units of the model's own gap ``S(sharp) - S(Gaussian blur, sigma 2)``
(raw scores, so the figures do not depend on the calibration):

- ``noise``, ``jpeg95``, ``shift1``: mean |score change| under Gaussian noise of sigma 1/255, JPEG
  quality 95 and a 1-px shift of the crop, over sharp, blurred and SR-output images;
- ``attack_gain``: mean gain of a 10-step L-inf 2/255 PGD attack on the blurred photos;
- ``garbage``: every garbage image (noise, flat, stripes, blocks, ...) must score below the mean
  blurred photo (``garbage_below_blur``: the share that does) with a high map (``garbage_pdm``).

Writes ``<out>/generalization.json`` and ``.md`` (the README's tables).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from diffusers_ext.models.finpercep_rm import FinPercepRM
from training.data.build_fgr import PhotoCache, make_lr, random_hr_crop
from training.data.degradations import jpeg_compress
from training.data.families import FAMILIES, GARBAGE_KINDS, PROTOCOL_HOLDOUT, SR_NET_GROUPS, garbage_image, operator
from training.data.gt_maps import pixel_difference
from training.data.masks import random_blobs
from training.data.photos import photo_pool
from training.data.sr_pool import match_size
from training.metrics import auroc
from training.robustness import attack_score

STRENGTHS = (0.4, 0.9)
CHANGED = 0.01
SR_LEVEL = {0.4: "light", 0.9: "realesrgan"}


def eval_crops(n: int, size: int, seed: int, extra_photos: tuple[str, ...] = ()) -> list[np.ndarray]:
    """``n`` deterministic crops (``size`` + 1 px, for the shift test) of the test-split photos."""
    photos = photo_pool("test", extra_photos)
    cache = PhotoCache()
    rng = np.random.default_rng([seed, 404])
    return [random_hr_crop(cache.get(photos[i % len(photos)]), size + 1, rng) for i in range(n)]


class Scorer:
    """Raw scores and maps of a model at one stage; with ``smoothing=(k, sigma)`` the randomized-smoothing
    variant: the mean over ``k`` copies of the input plus Gaussian noise of std ``sigma`` (fixed draws,
    the same for every call: common random numbers, so it is deterministic and the attack sees it)."""

    def __init__(self, model: FinPercepRM, stage: Optional[int] = None, batch_size: int = 8,
                 smoothing: Optional[tuple[int, float]] = None) -> None:
        self.model = model.eval()
        self.stage = model.stage if stage is None else stage
        self.batch_size = batch_size
        self.smoothing = smoothing

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.smoothing:
            out = self.model(x, stage=self.stage)
            return out.raw_score, out.pdm
        k, sigma = self.smoothing
        gen = torch.Generator().manual_seed(1234)
        noise = torch.randn((k, *x.shape[1:]), generator=gen)  # one draw per copy, shared by the batch
        raws, maps = [], []
        for j in range(k):
            out = self.model((x + sigma * noise[j]).clamp(0, 1), stage=self.stage)
            raws.append(out.raw_score)
            maps.append(out.pdm)
        return torch.stack(raws).mean(0), torch.stack(maps).mean(0)

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``[n]`` and maps ``[n, H, W]`` of float32 HxWx3 images of one size."""
        raws, maps = [], []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack(images[i:i + self.batch_size])).permute(0, 3, 1, 2).contiguous()
            raw, pdm = self._forward(x)
            raws.append(raw.float().numpy())
            maps.append(pdm[:, 0].float().numpy())
        return np.concatenate(raws), np.concatenate(maps)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]


def damaged(name: str, hr: np.ndarray, strength: float, seed: int, nets: dict) -> np.ndarray:
    """The fully damaged version of ``hr`` by family ``name`` at ``strength`` (same draw per seed)."""
    rng = np.random.default_rng([seed, 5])
    if FAMILIES[name].group in SR_NET_GROUPS:
        if name not in nets:
            from training.data.sr_pool import NetworkSR

            nets[name] = NetworkSR(name)
        net = nets[name]
        lr = make_lr(hr, net.scale, rng, SR_LEVEL[strength])
        return match_size(net(lr, rng), hr)
    return operator(name)(hr, rng, strength)


def family_table(scorer: Scorer, crops: list[np.ndarray], families: list[str], seed: int) -> dict[str, dict]:
    size = crops[0].shape[0] - 1
    clean = [c[:size, :size] for c in crops]
    s_clean, m_clean = scorer(clean)
    nets: dict = {}
    rows: dict[str, dict] = {}
    for name in tqdm(families, desc="families", leave=False):
        row: dict[str, float] = {}
        s_by = {}
        for strength in STRENGTHS:
            syns, masks = [], []
            for j, hr in enumerate(clean):
                mask = random_blobs(size, size, np.random.default_rng([seed, j, 3]), float(np.random.default_rng([seed, j, 4]).uniform(0.12, 0.35)))
                full = damaged(name, hr, strength, seed * 1000 + j, nets)
                syns.append((mask[..., None] * full + (1 - mask[..., None]) * hr).astype(np.float32))
                masks.append(mask)
            s_syn, m_syn = scorer(syns)
            s_by[strength] = s_syn
            pos, neg = [], []
            for hr, syn, mask, pdm in zip(clean, syns, masks, m_syn):
                diff = pixel_difference(syn, hr)
                p = pdm[(mask > 0.5) & (diff >= CHANGED)]
                if len(p) >= 50:
                    pos.append(p)
                neg.append(pdm[mask < 0.01])
            row[f"auroc@{strength}"] = auroc(np.concatenate(pos), np.concatenate(neg)) if pos else float("nan")
            row[f"pair@{strength}"] = float(np.mean(s_clean > s_syn))
        row["mono"] = float(np.mean(s_by[STRENGTHS[0]] > s_by[STRENGTHS[1]]))
        row["group"] = FAMILIES[name].group
        rows[name] = row
    rows["_clean"] = {"false_alarm": float((m_clean > 0.5).mean()), "pdm_mean": float(m_clean.mean())}
    return rows


def robustness(scorer: Scorer, crops: list[np.ndarray], seed: int, attack_steps: int = 10,
               attack_eps: float = 2.0 / 255) -> dict[str, float]:
    size = crops[0].shape[0] - 1
    sharp = [c[:size, :size] for c in crops]
    blur = [cv2.GaussianBlur(c, (0, 0), 2.0) for c in sharp]
    nets: dict = {}
    sr = [damaged("realesr-animevideov3-x4", c, 0.4, seed * 1000 + j, nets) for j, c in enumerate(sharp)]
    s_sharp, _ = scorer(sharp)
    s_blur, _ = scorer(blur)
    s_sr, _ = scorer(sr)
    gap = float(s_sharp.mean() - s_blur.mean())
    base = np.concatenate([s_sharp, s_blur, s_sr])
    everything = sharp + blur + sr
    rng = np.random.default_rng([seed, 77])
    noisy = [np.clip(x + rng.normal(0, 1 / 255, x.shape), 0, 1).astype(np.float32) for x in everything]
    jpeg = [jpeg_compress(x, 95) for x in everything]
    shifted = [c[1:, 1:] for c in crops]
    out = {"gap": gap, "score_sharp": float(s_sharp.mean()), "score_blur": float(s_blur.mean()),
           "noise": float(np.abs(scorer(noisy)[0] - base).mean() / abs(gap)),
           "jpeg95": float(np.abs(scorer(jpeg)[0] - base).mean() / abs(gap)),
           "shift1": float(np.abs(scorer(shifted)[0] - s_sharp).mean() / abs(gap))}
    gen = torch.Generator().manual_seed(seed)
    xb = torch.from_numpy(np.stack(blur)).permute(0, 3, 1, 2).contiguous()
    advs = []
    for i in range(0, len(xb), scorer.batch_size):
        advs.append(attack_score(scorer.raw, xb[i:i + scorer.batch_size], attack_eps, attack_steps, gen))
    adv = torch.cat(advs).permute(0, 2, 3, 1).numpy()
    out["attack_gain"] = float((scorer(list(adv))[0] - s_blur).mean() / abs(gap))
    out["attack_psnr"] = float(10 * np.log10(1 / np.mean((adv - np.stack(blur)) ** 2)))
    g_rng = np.random.default_rng([seed, 99])
    garbage = [garbage_image(size, size, g_rng, kind)[0] for kind in GARBAGE_KINDS for _ in range(2)]
    s_g, m_g = scorer(garbage)
    out["garbage_below_blur"] = float(np.mean(s_g < s_blur.mean()))
    out["garbage_max_minus_blur"] = float((s_g.max() - s_blur.mean()) / abs(gap))
    out["garbage_pdm"] = float(m_g.mean())
    return out


def summarize(rows: dict[str, dict], names: list[str]) -> dict[str, float]:
    rs = [rows[n] for n in names if n in rows]
    if not rs:
        return {}
    keys = [k for k in rs[0] if k != "group"]
    out = {k: float(np.nanmean([r[k] for r in rs])) for k in keys}
    out["min_auroc"] = float(np.nanmin([r[f"auroc@{s}"] for r in rs for s in STRENGTHS]))
    out["n_families"] = len(rs)
    return out


def summaries(rows: dict[str, dict], families: list[str], unseen: tuple[str, ...] = ()) -> dict[str, dict]:
    """The summary rows of a model: unseen and seen families (a protocol model), all of them, and
    each group (``group adds``: detail-adding, ``group removes``, ``group colour``, ``group sr_net``, ...)."""
    out = {}
    if unseen:
        out = {"unseen": summarize(rows, list(unseen)), "seen": summarize(rows, [n for n in families if n not in unseen])}
    out["all"] = summarize(rows, families)
    for group in dict.fromkeys(FAMILIES[n].group for n in families):
        out[f"group {group}"] = summarize(rows, [n for n in families if FAMILIES[n].group == group])
    return out


def markdown(result: dict) -> str:
    lines = []
    for label, block in result["models"].items():
        lines.append(f"### {label}\n")
        lines.append(f"Model: `{block['model']}` (stage {block['stage']}); {result['n_crops']} crops of "
                     f"{result['size']} px from the test-split photos.\n")
        lines.append("| family | group | seen | AUROC@0.4 | AUROC@0.9 | pair@0.4 | pair@0.9 | mono |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, r in block["families"].items():
            if name.startswith("_"):
                continue
            seen = "no" if name in block["unseen"] else "yes"
            lines.append(f"| {name} | {r['group']} | {seen} | {r['auroc@0.4']:.3f} | {r['auroc@0.9']:.3f} | "
                         f"{r['pair@0.4']:.2f} | {r['pair@0.9']:.2f} | {r['mono']:.2f} |")
        lines.append("")
        lines.append("| summary | families | mean AUROC | min AUROC | pair | mono |")
        lines.append("|---|---|---|---|---|---|")
        for part, sm in block["summary"].items():
            if sm:
                pair = (sm["pair@0.4"] + sm["pair@0.9"]) / 2
                au = (sm["auroc@0.4"] + sm["auroc@0.9"]) / 2
                lines.append(f"| {part} | {sm['n_families']} | {au:.3f} | {sm['min_auroc']:.3f} | {pair:.3f} | "
                             f"{sm['mono']:.3f} |")
        c = block["families"]["_clean"]
        lines.append(f"\nClean false alarms (share of clean-photo pixels with PDM > 0.5): {c['false_alarm']:.4f} "
                     f"(mean clean map {c['pdm_mean']:.3f}).\n")
        rb = block["robustness"]
        lines.append("| robustness (in units of the sharp-blur gap) | value |\n|---|---|")
        for k in ("noise", "jpeg95", "shift1", "attack_gain", "garbage_max_minus_blur"):
            lines.append(f"| {k} | {rb[k]:.3f} |")
        lines.append(f"| garbage_below_blur (share) | {rb['garbage_below_blur']:.2f} |")
        lines.append(f"| garbage_pdm (mean map) | {rb['garbage_pdm']:.3f} |")
        lines.append(f"\nRaw gap {rb['gap']:.3f} (sharp {rb['score_sharp']:.3f}, blurred {rb['score_blur']:.3f}); "
                     f"attack PSNR {rb['attack_psnr']:.1f} dB.\n")
    return "\n".join(lines)


def evaluate_model(path: Optional[str], stage: Optional[int], crops: list[np.ndarray], seed: int,
                   unseen: tuple[str, ...], smoothing: Optional[tuple[int, float]] = None) -> dict:
    model = FinPercepRM.from_pretrained(path or str(_default_dir())).eval()
    scorer = Scorer(model, stage, smoothing=smoothing)
    families = [n for n, f in FAMILIES.items() if f.group != "garbage"]
    rows = family_table(scorer, crops, families, seed)
    return {"model": path or "bundled default", "stage": scorer.stage, "smoothing": smoothing,
            "families": rows, "unseen": list(unseen),
            "summary": summaries(rows, families, unseen), "robustness": robustness(scorer, crops, seed)}


def _default_dir() -> Path:
    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    return Path(DEFAULT_MODEL_DIR)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="reward model folder (default: the bundled model)")
    ap.add_argument("--protocol", default=None,
                    help="protocol model folder (trained with --exclude_families protocol); reported on its unseen families")
    ap.add_argument("--stage", type=int, default=None)
    ap.add_argument("--crops", type=int, default=20)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", action="append", default=[], help="extra folder of test photos (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("training/results"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoothing", default=None, metavar="K:SIGMA",
                    help="score the randomized-smoothing variant: mean over K noisy copies, noise std SIGMA/255")
    ap.add_argument("--skip_shipped", action="store_true", help="with --protocol: evaluate only the protocol model")
    args = ap.parse_args(argv)
    smoothing = None
    if args.smoothing:
        k, sigma = args.smoothing.split(":")
        smoothing = (int(k), float(sigma) / 255)
    if args.threads:
        torch.set_num_threads(args.threads)
    crops = eval_crops(args.crops, args.size, args.seed, tuple(args.photos))
    result = {"n_crops": len(crops), "size": args.size, "seed": args.seed, "models": {}}
    if args.protocol:
        result["models"]["protocol model (held-out families unseen)"] = evaluate_model(
            args.protocol, args.stage, crops, args.seed, PROTOCOL_HOLDOUT, smoothing)
    if not (args.protocol and args.skip_shipped):
        result["models"]["shipped model (all families seen)"] = evaluate_model(
            args.model, args.stage, crops, args.seed, (), smoothing)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generalization.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (args.out / "generalization.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
