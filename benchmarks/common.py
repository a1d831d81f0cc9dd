"""Measurement helpers shared by the benchmark scripts: timing medians, FLOP counts, peak memory
per measurement (CPU RSS or CUDA allocator), the matmul peak and a machine description."""
from __future__ import annotations

import ctypes
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``: this process's own, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pick_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing CUDA when torch sees none."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} but torch sees no CUDA device")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device = torch.device("cpu"),
                   warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an ``n x n`` matmul: the practical compute peak of this machine."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    s = median_seconds(lambda: a @ b, repeats, device)
    return 2 * n**3 / s / 1e9


class PeakMemory:
    """Peak memory of the code inside ``with PeakMemory(device) as m:``, in MB, as ``m.mb``.

    CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated at entry. CPU: the process's
    peak resident set (``VmHWM``) above its resident set at entry; freed heap memory is returned to
    the system first (``malloc_trim``) and the kernel's peak counter is reset
    (``/proc/self/clear_refs``), so each measurement sees only its own peak. Where the kernel does
    not allow the reset, ``mb`` is NaN rather than a number from an earlier measurement.
    """

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.device = device
        self.mb = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._ok = False
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self._start = status_kb("VmRSS")
            self._ok = status_kb("VmHWM") <= self._start + 1024
        except (OSError, KeyError):
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._ok:
            self.mb = (status_kb("VmHWM") - self._start) / 1024


def machine(device: torch.device) -> str:
    """One line naming the hardware and versions the numbers came from."""
    if device.type == "cuda":
        hw = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        hw = f"{cpu}, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}; Python {platform.python_version()}"


def write_report(report: str, out: Path | None, json_path: Path | None, payload: dict) -> None:
    """Print the markdown ``report``; write it to ``out`` and ``payload`` as JSON to ``json_path``."""
    print(report)
    for path, text in ((out, report), (json_path, json.dumps(payload, indent=1, default=str))):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
