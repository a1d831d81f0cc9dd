"""Ending a multi-process run cleanly."""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import torch.distributed as dist

logger = logging.getLogger(__name__)

#: seconds the process-group teardown may take once every rank has reached it (it takes milliseconds)
TEARDOWN_TIMEOUT_S = 60.0


def _teardown() -> None:
    dist.barrier()
    dist.destroy_process_group()


def end_run(accelerator: Any, timeout_s: float = TEARDOWN_TIMEOUT_S) -> None:
    """``end_training`` plus an explicit, synchronized and bounded teardown of the process group.

    Without an explicit teardown the gloo group is destroyed when ``main``'s frame is freed, at a
    different moment on each rank, and that hung about one two-process run in four on our CPU
    (result written, the launcher waiting for ever). A barrier before ``destroy_process_group``
    makes it rare, not impossible (pytorch/pytorch#75097: our CI still hung in it once). Everything
    of the run is on disk when this is called, so a teardown still running after ``timeout_s`` is
    abandoned: the hang is named in the log and the process exits with status 0 at once
    (``os._exit``: a normal exit would wait on the same stuck group in the interpreter's finalizer)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not (dist.is_available() and dist.is_initialized()):
        return
    worker = threading.Thread(target=_teardown, name="finpercep-teardown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        logger.warning("the process-group teardown hung for %.0f s after the run had finished and saved "
                       "everything (pytorch/pytorch#75097): exiting this process now", timeout_s)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
