"""The result of a run: a LoRA folder (weights + model card, and for a feed-forward policy the merged
upscaler that ComfyUI's core Load Upscale Model reads), written atomically with mode 0644 files,
pushed to the Hub."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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

#: How to use the merged upscaler file of a feed-forward run (``{file}``: its name in this folder).
UPSCALER_USAGE = """### In ComfyUI, with its own nodes (no custom node needed)

`{file}` is the network with the adapter merged into its weights, a plain safetensors state dict in
the layout spandrel (ComfyUI's model loader) recognizes. Copy it to `ComfyUI/models/upscale_models/`,
then **Load Upscale Model** -> **Upscale Image (using Model)**; the outputs equal the policy's above
(FinPercep's test suite checks it in a real ComfyUI). The FinPercep node pack's
`example_workflows/finpercep_upscale_model_score.json` upscales with it, scores and shows the map.

### Command line

```bash
python -m diffusers_ext.upscale_cli {file} IMAGE_OR_FOLDER... --out upscaled/    # finpercep upscale ...
```"""



def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {t}" for t in items)


def stages_reached(train_log: Sequence[dict[str, Any]], schedule: dict[str, Any]) -> list[dict[str, Any]]:
    """Per CCL stage of ``schedule``: its reward-model stage and the optimizer steps the run spent in it
    (``0`` for a stage it never reached), from the per-step records of the training log."""
    stages = schedule.get("stages", [])
    out = []
    for i, st in enumerate(stages):
        steps = [r["step"] for r in train_log if int(r.get("ccl_stage", -1)) == i]
        out.append({"ccl_stage": i, "rm_stage": st.get("rm_stage"), "steps": len(steps),
                    "first_step": min(steps) if steps else None, "last_step": max(steps) if steps else None})
    return out


def _stages_text(stages: Sequence[dict[str, Any]]) -> str:
    if not stages:
        return "The schedule has no stages."
    reached = [s for s in stages if s["steps"]]
    rows = "\n".join(f"| {s['ccl_stage']} | RM_{s['rm_stage']} | {s['steps']} | "
                      + (f"{s['first_step']}-{s['last_step']}" if s["steps"] else "not reached") + " |" for s in stages)
    last = reached[-1] if reached else None
    if last is None:
        head = "The run made no training step."
    elif len(reached) == len(stages):
        head = (f"The run went through all {len(stages)} curriculum stages and ended in stage {last['ccl_stage']} "
                f"(reward-model stage RM_{last['rm_stage']}).")
    else:
        missing = ", ".join(str(s["ccl_stage"]) for s in stages if not s["steps"])
        head = (f"**The run reached {len(reached)} of {len(stages)} curriculum stages**: it ended in stage "
                f"{last['ccl_stage']} (RM_{last['rm_stage']}"
                + (", the global reward only" if last["rm_stage"] == 0 else "")
                + f"); stage(s) {missing} were never trained. Train longer (`--max_train_steps`) to reach them.")
    return f"""{head}

| CCL stage | reward model | steps | step range |
| --- | --- | --- | --- |
{rows}"""


def _judge_text(judge: Optional[str], metrics: dict[str, Any]) -> str:
    if judge:
        return (f"`judge_*`: an independent reward model, `{judge}` (not the one the policy was trained "
                f"against): its score and the share of pixels its map flags.")
    return ("**No independent judge**: no `--judge_model` other than the training reward model was given, so "
            "the table has no `judge_*` columns (the reward model judging its own policy would only repeat "
            "`score`). Pass another FinPercep-RM, e.g. one trained with another seed, to watch for reward "
            "hacking with a model the policy never saw.")


def model_card(policy_kind: str, info: dict[str, Any], schedule: dict[str, Any], metrics: dict[str, Any],
               command: str, repo: Optional[str], extra_args: dict[str, Any],
               stages: Optional[Sequence[dict[str, Any]]] = None, judge: Optional[str] = None,
               upscaler_file: Optional[str] = None, coevolve: Optional[dict[str, Any]] = None) -> str:
    """README.md with YAML front matter (``base_model``, ``library_name``, tags) and the run's
    schedule, the curriculum stages it reached (``stages``: :func:`stages_reached`), final metrics
    (with or without an independent ``judge``), the merged ``upscaler_file`` of a feed-forward
    policy, the co-evolving reward's summary (``coevolve``), and the command."""
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
    if upscaler_file:
        usage += "\n\n" + UPSCALER_USAGE.format(file=upscaler_file)
    stages_md = _stages_text(stages) if stages is not None else ""
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

## Curriculum stages reached

{stages_md}

## Final metrics (held-out monitor batch)

| metric | value |
| --- | --- |
{rows}

`reward`: the last stage's reward; `psnr` (dB) / `ssim` (0-1) against HR; `brisque`: lower is better.
{_judge_text(judge, metrics)}
{_coevolve_text(coevolve)}
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


def write_lora_folder(folder: Path, policy: Any, card: str, files: dict[str, Any],
                      extra: Sequence[Callable[[Path], Any]] = ()) -> Path:
    """Atomically write the adapter (``policy.save_lora``), ``README.md``, JSON ``files`` and whatever
    each ``extra(tmp_folder)`` writes (e.g. the merged upscaler); every file mode 0644, the folder 0755
    (safetensors writes 0600 through its temporary file)."""
    def write(tmp: Path) -> None:
        policy.save_lora(tmp)
        (tmp / "README.md").write_text(card)
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, indent=1, default=str))
        for fn in extra:
            fn(tmp)
        for p in tmp.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(tmp, 0o755)

    return atomic_write_dir(Path(folder), write)


def _coevolve_text(summary: Optional[dict[str, Any]]) -> str:
    if not summary:
        return ""
    return (f"\n## Co-evolving reward\n\nThe reward model learned this policy's own outputs during the run "
            f"(training/ccl/coevolve.py): {summary['updates']} updates, {summary['accepted']} kept by the guard rails. "
            "The adapted reward model is in `reward_model/` (load it with `FinPercepRM.from_pretrained`); "
            "`coevolve.json` lists every update.\n")


def upscaler_name(net_name: str) -> str:
    """File name of the merged upscaler of a run on ``net_name`` (ComfyUI lists upscalers by file name)."""
    return f"{net_name}-finpercep.safetensors"


def export_upscaler(policy_kind: str, pretrained: str, folder: Path, name: str,
                    metadata: Optional[dict[str, Any]] = None) -> Path:
    """The merged upscaler of a feed-forward run: the pretrained network rebuilt in float32 with the
    adapter just saved in ``folder`` (so mixed-precision base weights never leak into the file),
    merged, written in spandrel's layout and checked against the unmerged policy."""
    from diffusers_ext.policies import FeedForwardSRPolicy
    from diffusers_ext.srnets.export import export_policy

    if policy_kind != "feedforward":
        raise ValueError(f"only feed-forward policies export a merged upscaler, not {policy_kind!r}")
    policy = FeedForwardSRPolicy.from_pretrained(pretrained).load_lora(folder).eval()
    return export_policy(policy, Path(folder) / name, {"finpercep_policy": "feedforward", **(metadata or {})})


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
                f"adapter is complete and safe in {folder}; push it again with `python -m training.ccl_lora "
                f"--push_only --output_dir {folder.parent} --hub_model_id {repo_id}` (check HF_TOKEN / `hf auth "
                f"login` and the network first)") from exc
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s", folder, url)
    return url
