"""The result of a run: a LoRA folder (weights + model card), written atomically, pushed to the Hub."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

from training.checkpointing import atomic_write_dir, recover_dir

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


#: ``push_folder`` retries: tries in all, and the first wait (doubled after each failed try). Module
#: values so tests (and impatient users) can shorten them; the arguments of ``push_folder`` win.
PUSH_ATTEMPTS = 3
PUSH_BACKOFF_S = 2.0
#: HTTP answers worth another try: request timeout, rate limit and server errors (every 5xx).
TRANSIENT_STATUS = (408, 429)
#: Requests that huggingface_hub (2.x) already retries itself with ``http_backoff`` (5 retries, 1..8 s
#: apart): preupload and LFS calls always, the commit POST when ``upload_folder`` takes its hf_xet
#: pipeline. A failure there is not retried again here (that would multiply the retries); the repo
#: creation, and the commit of the legacy path (no hf_xet), are retried by nobody else.
_BACKED_OFF_BY_HF = ("/preupload/", "/info/lfs/")


def _hf_retried(url: str) -> bool:
    if any(part in url for part in _BACKED_OFF_BY_HF):
        return True
    if "/commit/" in url:
        try:
            from huggingface_hub import hf_api

            return bool(hf_api.is_xet_available())
        except (ImportError, AttributeError):
            return False
    return False


def _failed_url(exc: BaseException) -> str:
    for holder in (getattr(exc, "response", None), exc):
        try:
            request = getattr(holder, "request", None)
        except RuntimeError:  # httpx raises when an error has no request attached
            request = None
        if request is not None:
            return str(getattr(request, "url", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """True for errors a later try may not meet: HTTP 408/429/5xx, lost connections, timeouts.
    HTTP 401/403/404 (token, permissions, wrong repo id) and local errors are final."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in TRANSIENT_STATUS
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import httpx2
    except ImportError:  # pragma: no cover - huggingface_hub < 2 uses requests
        return False
    return isinstance(exc, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError))


def push_folder(folder: Path, repo_id: str, private: bool = False, commit_message: str = "FinPercep ReFL LoRA",
                token: Optional[str] = None, attempts: Optional[int] = None, backoff_s: Optional[float] = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; a failure names the safe local copy.

    Transient failures (:func:`is_transient`) of the repo creation or the commit are retried, ``attempts``
    tries in all (default :data:`PUSH_ATTEMPTS`), waiting ``backoff_s``, then twice that, ... (default
    :data:`PUSH_BACKOFF_S`). Re-sending the whole upload is safe: files already on the Hub are skipped
    by huggingface_hub and ``create_repo(exist_ok=True)`` accepts an existing repo."""
    from huggingface_hub import HfApi

    attempts = PUSH_ATTEMPTS if attempts is None else max(1, int(attempts))
    backoff_s = PUSH_BACKOFF_S if backoff_s is None else float(backoff_s)
    folder = Path(folder)
    recover_dir(folder)  # a crash in the final swap of write_lora_folder left it as <folder>.ready
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} is not a finished adapter folder (no README.md); train first")
    api = HfApi(token=token)
    for attempt in range(1, attempts + 1):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
            break
        except Exception as exc:  # noqa: BLE001 - re-raised with the way out
            retry = attempt < attempts and is_transient(exc) and not _hf_retried(_failed_url(exc))
            if retry:
                wait = backoff_s * 2 ** (attempt - 1)
                logger.warning("pushing %s to %s failed (%s: %s); try %d of %d in %.2g s", folder, repo_id,
                               exc.__class__.__name__, exc, attempt + 1, attempts, wait)
                time.sleep(wait)
                continue
            tries = f" after {attempt} tries" if attempt > 1 else ""
            why = " ".join(str(exc).split())  # one line: HfHubHTTPError messages span several
            raise RuntimeError(
                f"pushing {folder} to the Hub repo {repo_id!r} failed{tries} ({exc.__class__.__name__}: {why}). The "
                f"adapter is complete and safe in {folder}; push it again with `python training/ccl_lora.py "
                f"--push_only --output_dir {folder.parent} --hub_model_id {repo_id}` (check HF_TOKEN / `hf auth "
                f"login` and the network first)") from exc
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s", folder, url)
    return url
