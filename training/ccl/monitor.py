"""Reward-hacking monitor: the reward and its two terms next to metrics the reward does not see.

On a fixed held-out batch, every ``--validation_steps``:

* ``reward`` / ``score`` / ``pdm_penalty``: the current CCL stage's reward and its terms;
  ``s_global0``: the stage-0 global score; ``reward_final``: the reward of the schedule's last stage
  (the same yardstick for every arm of an experiment);
* ``psnr`` / ``ssim`` against the HR image (fidelity; higher = better);
* ``brisque``: classic no-reference IQA, OpenCV's ``cv2.quality`` with the LIVE model files of
  Debian ``opencv-doc`` (lower = better). Optional: ``brisque="auto"`` (the default) measures it
  when the files are there and otherwise logs one warning and leaves the column out;
  ``brisque="on"`` requires it, ``"off"`` skips it;
* ``lpips_alex``, ``dists`` and, optionally (``lpips_vgg=True``: another VGG16 pass), ``lpips_vgg``:
  full-reference perceptual distances to HR with the published weights (lower = better;
  :mod:`diffusers_ext.perceptual`: LPIPS v0.1 on ImageNet AlexNet / VGG16, DISTS on VGG16), features
  no reward and no judge of a run uses. They replace ``percep`` (a home-made cosine distance of
  ImageNet EfficientNet-Lite2 features), which is no longer computed; its label and y span stay so
  that the ``monitor.jsonl`` of older runs still plot;
* ``judge_score`` and ``judge_flagged``: an independent FinPercep-RM (another stage or seed): its
  score and the share of pixels whose PDM exceeds ``flag_threshold``;
* ``hack``: 1 when this evaluation is flagged as reward hacking against the first one (step 0) by
  ``hack_rule`` (:mod:`training.ccl.hackflag`: ``reward_final`` up by more than a margin while each of
  its metrics, LPIPS-VGG and DISTS by default, is worse by more than another), else 0; a flagged evaluation also
  logs a warning line. Absent without the perceptual columns.

Reward hacking shows as the reward rising while PSNR/SSIM/LPIPS/DISTS/BRISQUE/the judge get worse.
:func:`plot_curves` draws every series into one PNG (PIL only, no matplotlib).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from diffusers_ext.perceptual import full_reference_metrics, get_model
from diffusers_ext.rewards import RewardConfig, compute_reward, fused_reward
from training.ccl.hackflag import HackRule

logger = logging.getLogger(__name__)

BRISQUE_DIRS = (Path("/usr/share/doc/opencv-doc/examples/quality"),)
BRISQUE_FILES = ("brisque_model_live.yml", "brisque_range_live.yml")


def find_brisque_files() -> tuple[Path, Path]:
    """The BRISQUE model / range files: ``$FINPERCEP_BRISQUE_DIR`` or Debian ``opencv-doc``'s folder."""
    dirs = ([Path(os.environ["FINPERCEP_BRISQUE_DIR"])] if os.environ.get("FINPERCEP_BRISQUE_DIR") else []) + list(BRISQUE_DIRS)
    for d in dirs:
        paths = tuple(d / f for f in BRISQUE_FILES)
        if all(p.is_file() for p in paths):
            return paths  # type: ignore[return-value]
    raise FileNotFoundError(
        f"BRISQUE model files {BRISQUE_FILES} not found in {[str(d) for d in dirs]}: install them with "
        f"`apt-get install opencv-doc`, point FINPERCEP_BRISQUE_DIR at a folder holding them, or pass --brisque off")


def brisque_unavailable() -> Optional[str]:
    """Why BRISQUE cannot be measured here (a message naming the fix), or ``None`` when it can."""
    try:
        import cv2
    except ImportError as e:
        return f"OpenCV is not installed ({e}): pip install opencv-contrib-python-headless"
    if not hasattr(cv2, "quality"):
        return "cv2.quality is missing: install opencv-contrib-python-headless (not opencv-python)"
    try:
        find_brisque_files()
    except FileNotFoundError as e:
        return str(e)
    return None


def make_brisque(mode: "bool | str" = "auto") -> Optional["Brisque"]:
    """A :class:`Brisque` for ``mode`` ``"on"`` / ``True`` (raises when it cannot be measured),
    ``"auto"`` (``None`` with one warning when it cannot) or ``"off"`` / ``False`` (``None``)."""
    mode = {True: "on", False: "off"}.get(mode, mode) if isinstance(mode, bool) else mode
    if mode == "off":
        return None
    if mode not in ("on", "auto"):
        raise ValueError(f"brisque must be 'auto', 'on' or 'off', got {mode!r}")
    why = brisque_unavailable()
    if why is None:
        return Brisque()
    if mode == "on":
        raise FileNotFoundError(f"BRISQUE was asked for (--brisque on) but cannot be measured: {why}")
    logger.warning("BRISQUE left out of the monitor (the 'brisque' column is absent): %s", why)
    return None


class Brisque:
    """BRISQUE (lower = better) of float images in [0,1], via ``cv2.quality`` (opencv-contrib)."""

    def __init__(self) -> None:
        import cv2

        if not hasattr(cv2, "quality"):
            raise ImportError("cv2.quality is missing: install opencv-contrib-python-headless (not opencv-python)")
        model, rng = find_brisque_files()
        self._q = cv2.quality.QualityBRISQUE_create(str(model), str(rng))

    def __call__(self, img: np.ndarray) -> float:
        import cv2

        u8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        return float(self._q.compute(cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))[0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


#: The full-reference perceptual columns against HR (lower = better); ``lpips_vgg`` only on request.
PERCEPTUAL_COLUMNS = ("lpips_alex", "lpips_vgg", "dists")


class Monitor:
    """Evaluates a policy on a fixed ``(lr, hr)`` batch; keeps the history of every evaluation."""

    def __init__(self, lr: torch.Tensor, hr: torch.Tensor, reward_model: Any, final_reward: RewardConfig,
                 final_rm_stage: int, judge: Optional[Any] = None, judge_stage: Optional[int] = None,
                 flag_threshold: float = 0.5, brisque: "bool | str" = "auto", batch_size: int = 4,
                 perceptual: bool = True, lpips_vgg: bool = False, hack_rule: Optional[HackRule] = HackRule()) -> None:
        self.lr, self.hr = lr, hr
        self.hack_rule = hack_rule
        lpips_vgg = lpips_vgg or (hack_rule is not None and "lpips_vgg" in hack_rule.metrics)  # the flag reads it
        self.rm, self.judge, self.judge_stage = reward_model, judge, judge_stage
        self.final_reward, self.final_rm_stage = final_reward, final_rm_stage
        self.flag_threshold = flag_threshold
        self.brisque = make_brisque(brisque)
        self.perceptual = tuple(m for m in PERCEPTUAL_COLUMNS if perceptual and (m != "lpips_vgg" or lpips_vgg))
        for name in self.perceptual:  # load the weights now: a missing weights package fails before training
            get_model(name, next(reward_model.parameters()).device)
        self.batch_size = batch_size
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def sr_images(self, policy: Any, device: torch.device) -> torch.Tensor:
        outs = []
        g = torch.Generator(device="cpu").manual_seed(0)
        for i in range(0, len(self.lr), self.batch_size):
            outs.append(policy(self.lr[i:i + self.batch_size].to(device), generator=g)["images"].float())
        return torch.cat(outs)

    @torch.no_grad()
    def evaluate(self, policy: Any, step: int, reward_cfg: RewardConfig, rm_stage: int,
                 device: torch.device, extra: Optional[dict[str, float]] = None) -> dict[str, float]:
        was = policy.training
        policy.eval()
        sr = self.sr_images(policy, device)
        policy.train(was)
        rec: dict[str, float] = {"step": float(step), "rm_stage": float(rm_stage)}
        rec.update(self.image_metrics(sr, reward_cfg, rm_stage))
        rec.update(extra or {})
        self.flag_hack(rec)
        self.history.append(rec)
        return rec

    def flag_hack(self, rec: dict[str, float]) -> None:
        """Set ``rec["hack"]`` by :attr:`hack_rule` against the first evaluation of the history (0 for
        the first itself), with a warning line when flagged; nothing when the rule is off (``None``)
        or a column is missing."""
        if self.hack_rule is None:
            return
        if not self.history:  # the reference itself is never a hack
            if self.hack_rule.deltas(rec, rec) is not None:
                rec["hack"] = 0.0
            return
        start = self.history[0]
        flag = self.hack_rule.check(start, rec)
        if flag is None:
            return
        rec["hack"] = float(flag)
        if flag:
            logger.warning(self.hack_rule.message(rec["step"], start, rec))

    @torch.no_grad()
    def image_metrics(self, sr: torch.Tensor, reward_cfg: RewardConfig, rm_stage: int) -> dict[str, float]:
        """Every metric of a batch of SR images (``Bx3xHxW`` in [0,1]) against the stored HR batch."""
        dev = next(self.rm.parameters()).device
        x = sr.to(dev)
        terms = compute_reward(self.rm, x, reward_cfg, stage=rm_stage)
        rec = {"reward": terms.reward.mean().item(), "score": terms.score.mean().item(),
               "pdm_penalty": terms.pdm_penalty.mean().item()}
        rec["s_global0"] = self.rm(x, stage=0).score.mean().item()
        fin = self.rm(x, stage=self.final_rm_stage)
        fin_map = fin.pdm if self.final_rm_stage > 0 else None
        rec["reward_final"] = fused_reward(fin.score, fin_map, self.final_reward).reward.mean().item()
        sr_np = sr.permute(0, 2, 3, 1).cpu().numpy()
        hr_np = self.hr.permute(0, 2, 3, 1).cpu().numpy()
        rec["psnr"] = float(np.mean([psnr(a, b) for a, b in zip(sr_np, hr_np)]))
        rec["ssim"] = float(np.mean([ssim(a, b) for a, b in zip(sr_np, hr_np)]))
        if self.brisque is not None:
            rec["brisque"] = float(np.mean([self.brisque(a) for a in sr_np]))
        if self.perceptual:
            values = full_reference_metrics(sr.clamp(0, 1), self.hr.clamp(0, 1), metrics=self.perceptual, device=dev,
                                            batch_size=self.batch_size)
            rec.update({k: float(v.mean()) for k, v in values.items()})
        if self.judge is not None:
            jdev = next(self.judge.parameters()).device
            j = self.judge(sr.to(jdev), stage=self.judge_stage)
            rec["judge_score"] = j.score.mean().item()
            if (self.judge_stage if self.judge_stage is not None else self.judge.stage) > 0:
                rec["judge_pdm"] = j.pdm.mean().item()
                rec["judge_flagged"] = (j.pdm > self.flag_threshold).float().mean().item()
        return rec


# ----------------------------------------------------------------------------------------- plot
_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]

#: Panel titles: what each series is, its unit, and which way is better.
LABELS = {
    "reward": "reward R_k of the current stage (higher = better)",
    "score": "RM global score (higher = better)",
    "pdm_penalty": "PDM penalty, worst-region map (lower = better)",
    "reward_final": "reward of the last CCL stage (higher = better)",
    "s_global0": "stage-0 global score (higher = better)",
    "psnr": "PSNR vs HR, dB (higher = better)",
    "ssim": "SSIM vs HR, 0-1 (higher = better)",
    "brisque": "BRISQUE, 0-100 (lower = better)",
    "lpips_alex": "LPIPS (AlexNet) to HR, ~0-1 (lower = better)",
    "lpips_vgg": "LPIPS (VGG16) to HR, ~0-1 (lower = better)",
    "dists": "DISTS to HR, 0-1 (lower = better)",
    "percep": "perceptual distance to HR, Lite2 features (lower = better; old runs)",
    "judge_score": "judge's score (higher = better)",
    "judge_pdm": "judge's mean PDM, 0-1 (lower = better)",
    "judge_flagged": "judge-flagged pixels, fraction (lower = better)",
    "hack": "hack flag: reward up, the flag's LPIPS / DISTS worse than step 0 (1 = flagged)",
}
#: The smallest y range a panel shows: a change below it stays a small change on the plot
#: (a drift of 0.0001 SSIM must not fill the panel's height). Other series: 0.05.
MIN_SPAN = {"psnr": 1.0, "ssim": 0.02, "brisque": 5.0, "percep": 0.02, "lpips_alex": 0.02, "lpips_vgg": 0.02,
            "dists": 0.02, "pdm_penalty": 0.05, "judge_pdm": 0.05, "judge_flagged": 0.05, "hack": 1.0}
DEFAULT_MIN_SPAN = 0.05


def y_range(key: str, values: Sequence[float]) -> tuple[float, float]:
    """The y range of a panel: the data's, widened to at least :data:`MIN_SPAN` around its middle."""
    lo, hi = min(values), max(values)
    span = MIN_SPAN.get(key, DEFAULT_MIN_SPAN)
    if hi - lo < span:
        mid = (hi + lo) / 2
        lo, hi = mid - span / 2, mid + span / 2
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 x 10^k apart) inside [lo, hi]."""
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    k0, k1 = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) + 0.0 for k in range(k0, k1 + 1)]


def _fmt(v: float, step: float) -> str:
    digits = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{v:.{min(digits, 6)}f}"


def plot_curves(history: Sequence[dict[str, float]], path: str | Path, switches: Sequence[dict] = (),
                keys: Optional[Sequence[str]] = None, train_history: Sequence[dict[str, float]] = (),
                title: str = "FinPercep CCL ReFL monitor", runs: Optional[dict[str, Sequence[dict]]] = None,
                colors: Optional[dict[str, tuple[int, int, int]]] = None) -> Path:
    """One panel per metric over the optimizer step, with y and x axis values, each panel titled with
    its unit and direction (:data:`LABELS`), a y range of at least :data:`MIN_SPAN`, dashed lines at
    the CCL stage switches and a legend. ``train_history`` (per-step ``reward`` etc. on the training
    batch) is drawn faintly behind the held-out values. ``runs`` (label -> history) draws several runs
    into the same panels, one colour per run (``colors``: label -> RGB, default a palette) with their
    names in the legend (``history`` is then ignored). Writes a PNG (PIL only); returns its path."""
    from PIL import Image, ImageDraw, ImageFont

    runs = dict(runs) if runs else {"": history}
    every = [h for hist in runs.values() for h in hist]
    keys = list(keys or [k for k in ("reward", "score", "pdm_penalty", "reward_final", "s_global0", "psnr", "ssim",
                                     "brisque", "percep", "lpips_alex", "lpips_vgg", "dists", "judge_score",
                                     "judge_pdm", "judge_flagged", "hack")
                         if any(k in h for h in every)])
    cols = 3
    rows = max(1, math.ceil(len(keys) / cols))
    pw, ph = 380, 240
    left, right, top_pad, bottom = 62, 14, 22, 38
    run_color = {label: (colors or {}).get(label, _COLORS[j % len(_COLORS)]) for j, label in enumerate(runs)}
    per_row = (cols * pw - 8) // 150
    run_rows = math.ceil(len(runs) / per_row) if len(runs) > 1 else 0
    top = 50 + 16 * run_rows
    img = Image.new("RGB", (cols * pw, rows * ph + top), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    grey, light = (90, 90, 90), (225, 225, 225)
    d.text((8, 6), title, fill="black", font=font)
    # legend: what the marks mean, then one entry per run
    lx, ly = 8, 26
    d.line([lx, ly + 5, lx + 22, ly + 5], fill=(60, 60, 60), width=2)
    d.ellipse([lx + 9, ly + 3, lx + 13, ly + 7], fill=(60, 60, 60))
    d.text((lx + 28, ly), "held-out monitor batch (every --validation_steps)", fill="black", font=font)
    lx += 300
    if train_history:
        d.line([lx, ly + 5, lx + 22, ly + 5], fill=(170, 170, 215), width=1)
        d.text((lx + 28, ly), "training batch, every step", fill="black", font=font)
        lx += 190
    for yy in range(ly, ly + 11, 4):
        d.line([lx + 10, yy, lx + 10, min(yy + 2, ly + 10)], fill=(120, 120, 120))
    d.text((lx + 20, ly), "CCL stage switch", fill="black", font=font)
    if len(runs) > 1:
        for j, label in enumerate(runs):
            rx, ry = 8 + (j % per_row) * 150, 44 + (j // per_row) * 16
            d.rectangle([rx, ry, rx + 12, ry + 8], fill=run_color[label])
            d.text((rx + 16, ry - 2), label, fill="black", font=font)
    steps_all = [h["step"] for h in every] + [h["step"] for h in train_history]
    s_lo, s_hi = (min(steps_all), max(steps_all)) if steps_all else (0.0, 1.0)
    if s_hi == s_lo:
        s_hi = s_lo + 1
    x_ticks = [t for t in nice_ticks(s_lo, s_hi, 5) if s_lo <= t <= s_hi] or [s_lo, s_hi]
    for i, key in enumerate(keys):
        ox, oy = (i % cols) * pw, top + (i // cols) * ph
        x0, y0, x1, y1 = ox + left, oy + top_pad, ox + pw - right, oy + ph - bottom
        d.text((x0, oy + 6), LABELS.get(key, key), fill="black", font=font)
        series = {label: [(h["step"], h[key]) for h in hist if key in h and np.isfinite(h[key])]
                  for label, hist in runs.items()}
        faint = [(h["step"], h[key]) for h in train_history if key in h and np.isfinite(h[key])]
        vals = [v for pts in series.values() for _, v in pts] + [v for _, v in faint]
        if not vals:
            d.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
            d.text((x0 + 8, (y0 + y1) // 2), "no values", fill=grey, font=font)
            continue
        lo, hi = y_range(key, vals)

        def xy(s: float, v: float) -> tuple[float, float]:
            return (x0 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))

        ticks = nice_ticks(lo, hi, 4)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else (hi - lo)
        for t in ticks:  # y grid and values
            ty = xy(s_lo, t)[1]
            d.line([x0, ty, x1, ty], fill=light)
            label = _fmt(t, step)
            d.text((x0 - 6 - 6 * len(label), ty - 5), label, fill=grey, font=font)
        for t in x_ticks:  # x ticks and values
            tx = xy(t, lo)[0]
            d.line([tx, y1, tx, y1 + 3], fill=grey)
            label = f"{t:g}"
            d.text((tx - 3 * len(label), y1 + 5), label, fill=grey, font=font)
        d.text(((x0 + x1) // 2 - 40, y1 + 20), "optimizer step", fill=grey, font=font)
        d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        for ev in switches:
            sx = xy(ev["step"], lo)[0]
            for yy in range(int(y0), int(y1), 6):
                d.line([sx, yy, sx, min(yy + 3, y1)], fill=(120, 120, 120))
        if len(faint) > 1:
            d.line([xy(s, v) for s, v in faint], fill=(170, 170, 215), width=1)
        for label, pts in series.items():
            color = _COLORS[i % len(_COLORS)] if len(runs) == 1 else run_color[label]
            if len(pts) > 1:
                d.line([xy(s, v) for s, v in pts], fill=color, width=2)
            for s_, v in pts:
                cx, cy = xy(s_, v)
                d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
