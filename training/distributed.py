"""Ending a multi-process run cleanly."""
from __future__ import annotations

from typing import Any

import torch.distributed as dist


def end_run(accelerator: Any) -> None:
    """``end_training`` plus an explicit, synchronized teardown of the process group.

    Without it the gloo group is destroyed when ``main``'s frame is freed, at a different moment on
    each rank, and that teardown hung about one two-process run in four on our CPU (result written,
    the launcher waiting for ever)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
