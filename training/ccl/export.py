"""The result of a run: a LoRA folder (weights + model card), written atomically, pushed to the Hub."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from training.checkpointing import atomic_write_dir

logger = logging.getLogger(__name__)

USAGE = {
    "onestep": """```python
from diffusers_ext import OneStepSRPipeline

pipe = OneStepSRPipeline.from_pretrained("{base}")
pipe.load_lora_weights("{repo}")
sr = pipe("low_res.png").images[0]
```""",
    "upscale": """```python
from diffusers import StableDiffusionUpscalePipeline

pipe = StableDiffusionUpscalePipeline.from_pretrained("{base}")
pipe.load_lora_weights("{repo}")
sr = pipe(prompt="", image=low_res_pil_image).images[0]
```""",
    "feedforward": """```python
from diffusers_ext.policies import FeedForwardSRPolicy

policy = FeedForwardSRPolicy.from_pretrained("{base}").load_lora("{repo}").eval()
sr = policy(lr_tensor)["images"]          # Bx3xHxW in [0,1] -> Bx3x(sH)x(sW)
```""",
}


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {t}" for t in items)


def model_card(policy_kind: str, info: dict[str, Any], schedule: dict[str, Any], metrics: dict[str, Any],
               command: str, repo: Optional[str], extra_args: dict[str, Any]) -> str:
    """README.md with YAML front matter (``base_model``, ``library_name``, tags) and the run's
    schedule, final metrics and command."""
    base = info.get("base_model")
    library = "peft" if policy_kind == "feedforward" else "diffusers"
    tags = ["lora", "super-resolution", "image-to-image", "finpercep", "refl", "ccl", f"policy-{policy_kind}"]
    if library == "diffusers":
        tags.append("diffusers")
    front = []
    if base:
        front.append(f"base_model: {base}")
    front += [f"library_name: {library}", "pipeline_tag: image-to-image", "tags:", _yaml_list(tags)]
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    usage = USAGE[policy_kind].format(base=base or info.get("name", "BASE"), repo=repo or "path/to/this/folder")
    args_json = json.dumps(extra_args, indent=1, sort_keys=True, default=str)
    return f"""---
{chr(10).join(front)}
---

# FinPercep ReFL LoRA for `{info.get("name")}` ({policy_kind})

LoRA adapter fine-tuned with reward feedback learning (ReFL) against the FinPercep-RM fine-grained
perceptual reward (global score + Perceptual Degradation Map), under a Co-evolutionary Curriculum (CCL)
that starts from the global reward and moves to finer reward-model stages.

Base model: `{info.get("name")}`.

## Use

{usage}

## CCL schedule

```json
{json.dumps(schedule, indent=1)}
```

## Final metrics (held-out monitor batch)

| metric | value |
| --- | --- |
{rows}

`reward`: the last stage's reward; `psnr`/`ssim` against HR; `brisque`: lower is better;
`judge_*`: an independent reward model (see the training arguments).

## How it was made

```
{command}
```

<details><summary>training arguments</summary>

```json
{args_json}
```
</details>
"""


def write_lora_folder(folder: Path, policy: Any, card: str, files: dict[str, Any]) -> Path:
    """Atomically write the adapter (``policy.save_lora``), ``README.md`` and JSON ``files``."""
    def write(tmp: Path) -> None:
        policy.save_lora(tmp)
        (tmp / "README.md").write_text(card)
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, indent=1, default=str))

    return atomic_write_dir(Path(folder), write)


def push_folder(folder: Path, repo_id: str, private: bool = False, commit_message: str = "FinPercep ReFL LoRA",
                token: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; a failure names the safe local copy."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} is not a finished adapter folder (no README.md); train first")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    except Exception as exc:  # noqa: BLE001 - re-raised with the way out
        raise RuntimeError(
            f"pushing {folder} to the Hub repo {repo_id!r} failed ({exc.__class__.__name__}: {exc}). The adapter "
            f"is complete and safe in {folder}; push it again with `python training/ccl_lora.py --push_only "
            f"--output_dir {folder.parent} --hub_model_id {repo_id}` (check HF_TOKEN / `hf auth login` and "
            f"the network first)") from exc
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s", folder, url)
    return url
