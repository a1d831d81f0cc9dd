"""Load test of the PDM viewer: N concurrent gradio_client users against ``demo/app.py`` on 127.0.0.1.

    python -m benchmarks.load_viewer [--model FOLDER] [--clients 20] [--rounds 5] [--queue-size 16]
                                     [--concurrency 1] [--time-cap 600] [--json load.json]

Starts ``python -m demo.app --host 127.0.0.1 --port <free> --queue-size Q --concurrency C [--model FOLDER]``
in a subprocess (default model: the bundled ``diffusers_ext/default``), then runs ``--clients`` users,
each a thread with its own ``gradio_client.Client`` (its own session), in ``--rounds`` rounds. In a
round all users start together (a barrier: a burst) and each does:

- ``/inspect`` on an image (default: the files in ``examples/``, a different one per user and round),
  checked against the score the pipeline gives directly for that file (markdown and downloaded JSON);
- ``/render`` (redraw from the session's kept maps, no model run) when its inspect was accepted,
  checked to return the same score text and the four downloads;
- every ``--compare-every``-th user also ``/compare`` on a pair, both scores checked.

Round 0 is a warm-up: server RSS after it is the baseline for "memory bounded" (growth from there
to the end of the last round must stay under ``--rss-margin-mb``, default 128 MB: one kept analysis
of a 384 px example with the bundled model is about 2.5 MB, so a per-request leak of even a seventh
of that over the ~40 requests of each of 9 measured rounds exceeds it; the allocator's own noise
was +15 MB over 9 rounds once demo/app.py capped glibc's arenas and trimmed after each job, and
+295 MB over 4 rounds, still rising, before). A total time cap stops everything
(each request waits at most until the cap, then the server is terminated), so the run always ends.

Outcomes of a request:

- ``ok``: it returned and its result is correct;
- ``rejected``: the queue refused it. Gradio's queue (``app.queue(max_size=Q)``) counts the events
  *waiting* (not the ``C`` running ones) over all concurrency groups; when ``Q`` are waiting a new
  one gets HTTP 503 "Queue is full" from ``/gradio_api/queue/join``, which ``gradio_client``
  raises as ``gradio_client.utils.QueueError("Queue is full! Please try again.")`` (see
  ``Client.send_data`` in gradio_client/client.py). That is the documented limit of the viewer
  ("at most --queue-size waiting"). gradio_client raises that same error for any 503 from queue/join
  (Gradio also answers 503 "Queue is stopped" while shutting down), so each rejection is checked:
  it is *justified* when at least ``Q`` other requests of this run were in flight (sent, not yet
  answered, as the clients saw it) at some moment while it was being submitted. That is a necessary
  condition only (a client's request is in flight also while it uploads and downloads), but it
  catches rejections with a near-empty queue. With ``Q >= clients`` nothing can be rejected at all
  (each user has at most one request in flight, so at most ``clients - 1`` others can wait);
- ``wrong``: it returned but the result is not the expected one;
- ``failed``: any other error (a dropped connection, an app error, a timeout at the cap).

Server memory: RSS of the server process and its children, sampled every 0.1 s (psutil, else
``/proc/<pid>/status`` VmRSS), plus readings at start, after each round and at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TQDM_DISABLE", "1")

__all__ = ["LoadConfig", "LoadReport", "Request", "ViewerServer", "expected_scores", "main", "markdown",
           "run_load", "server_rss"]

DISPLAY = (0.6, "inferno", "uniform")  # opacity, colormap, overlay mode: as the page's defaults
SCORE_TOL = 1e-4  # server vs direct pipeline score (thread counts may differ: float reductions)
QUEUE_FULL = "Queue is full"


@dataclass
class LoadConfig:
    model: Optional[str] = None  # model folder; None = the bundled default
    images: Sequence[Path] = ()  # default: examples/
    pair: Optional[tuple[Path, Path]] = None  # for /compare; default: the first two images
    clients: int = 20
    rounds: int = 5  # round 0 is the warm-up
    queue_size: int = 16  # demo/app.py --queue-size: events waiting at most
    concurrency: int = 1  # demo/app.py --concurrency: model jobs at once
    compare_every: int = 4  # users 0, k, 2k, ... also compare
    render: bool = True
    time_cap_s: float = 600.0
    rss_margin_mb: float = 128.0  # allowed server RSS growth, warm-up round -> last round
    rss_interval_s: float = 0.1
    settle_s: float = 0.5  # pause before the RSS reading after a round
    server_start_timeout_s: float = 180.0
    python: str = sys.executable
    workdir: Optional[Path] = None  # logs and client downloads; default: a temporary folder


@dataclass
class Request:
    client: int
    round: int
    kind: str  # inspect / render / compare / health
    start: float
    end: float
    outcome: str  # ok / rejected / wrong / failed
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class LoadReport:
    settings: dict[str, Any]
    requests: list[Request] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_after_round_mb: list[float] = field(default_factory=list)
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_samples: int = 0
    server_cpu_s: Optional[float] = None
    wall_s: float = 0.0
    capped: bool = False  # the time cap stopped the run
    unjustified_rejections: int = 0
    health_ok: Optional[bool] = None
    health_error: str = ""
    server_log_tail: str = ""
    phases_s: dict[str, float] = field(default_factory=dict)  # expected scores, server start, rounds, ...

    # ------------------------------------------------------------------ figures
    def count(self, outcome: str, kind: Optional[str] = None) -> int:
        return sum(r.outcome == outcome and (kind is None or r.kind == kind) for r in self.load_requests)

    @property
    def load_requests(self) -> list[Request]:
        return [r for r in self.requests if r.kind != "health"]

    @property
    def failures(self) -> list[Request]:
        """Everything that is neither a correct answer nor a queue-full rejection."""
        return [r for r in self.load_requests if r.outcome not in ("ok", "rejected")]

    @property
    def rss_growth_mb(self) -> float:
        """Server RSS after the last round minus after the warm-up round."""
        if len(self.rss_after_round_mb) < 2:
            return 0.0
        return self.rss_after_round_mb[-1] - self.rss_after_round_mb[0]

    def latency(self, kind: Optional[str] = None) -> dict[str, float]:
        s = sorted(r.seconds for r in self.load_requests if r.outcome == "ok" and (kind is None or r.kind == kind))
        if not s:
            return {"n": 0}
        return {"n": len(s), "median_s": statistics.median(s), "p95_s": _percentile(s, 95), "max_s": s[-1]}

    def passed(self) -> bool:
        return (not self.failures and not self.unjustified_rejections and not self.capped
                and self.health_ok is not False
                and self.rss_growth_mb <= self.settings["rss_margin_mb"])

    def to_json(self) -> dict[str, Any]:
        kinds = sorted({r.kind for r in self.load_requests})
        return {
            "settings": self.settings,
            "totals": {o: self.count(o) for o in ("ok", "rejected", "wrong", "failed")},
            "by_kind": {k: {**{o: self.count(o, k) for o in ("ok", "rejected", "wrong", "failed")},
                            **self.latency(k)} for k in kinds},
            "latency_all": self.latency(),
            "unjustified_rejections": self.unjustified_rejections,
            "failures": [asdict(r) for r in self.failures[:50]],
            "rss_mb": {"start": self.rss_start_mb, "after_round": self.rss_after_round_mb, "end": self.rss_end_mb,
                       "peak": self.rss_peak_mb, "growth_warmup_to_last": self.rss_growth_mb,
                       "margin": self.settings["rss_margin_mb"], "samples": self.rss_samples},
            "server_cpu_s": self.server_cpu_s,
            "wall_s": self.wall_s,
            "phases_s": self.phases_s,
            "capped": self.capped,
            "health_ok": self.health_ok,
            "health_error": self.health_error,
            "passed": self.passed(),
        }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


# ---------------------------------------------------------------------------------- server process


def server_rss(pid: int) -> int:
    """Resident set size in bytes of ``pid`` plus all its descendants (0 if it is gone)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is installed with gradio's deps here
        psutil = None
    if psutil is not None:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total
    total, todo = 0, [pid]  # pragma: no cover
    while todo:  # pragma: no cover
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return total


def _cpu_seconds(pid: int) -> Optional[float]:
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except Exception:
        return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ViewerServer:
    """``python -m demo.app`` on 127.0.0.1 and a free port in a subprocess, with an RSS sampler."""

    def __init__(self, cfg: LoadConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._sampler: Optional[threading.Thread] = None

    def argv(self) -> list[str]:
        a = [self.cfg.python, "-m", "demo.app", "--host", "127.0.0.1", "--port", str(self.port),
             "--queue-size", str(self.cfg.queue_size), "--concurrency", str(self.cfg.concurrency)]
        return a + (["--model", str(self.cfg.model)] if self.cfg.model else [])

    def start(self) -> "ViewerServer":
        import httpx

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.cfg.server_start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the viewer exited with {self.proc.returncode} before serving:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/gradio_api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the viewer did not answer within {self.cfg.server_start_timeout_s:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)
        self._sampler = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss()
            self._stop.wait(self.cfg.rss_interval_s)

    def rss(self) -> int:
        """Current RSS (bytes), also counted in the peak."""
        r = server_rss(self.proc.pid) if self.proc else 0
        self.peak = max(self.peak, r)
        self.samples += 1
        return r

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> Optional[float]:
        return _cpu_seconds(self.proc.pid) if self.alive() else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._sampler is not None:
            self._sampler.join(timeout=5)

    def __enter__(self) -> "ViewerServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------- clients


def default_images() -> list[Path]:
    from demo.viewer import Viewer, ViewerConfig

    return Viewer(ViewerConfig(examples_dir=ROOT / "examples")).examples()


def expected_scores(model: Optional[str], images: Sequence[Path]) -> dict[str, float]:
    """Score of each file (by file name) straight from ``FinPercepRewardPipeline`` in this process,
    with what the viewer's inspect uses here: the model's default stage and tile size."""
    from diffusers_ext import FinPercepRewardPipeline
    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    pipe = FinPercepRewardPipeline.from_pretrained(model or DEFAULT_MODEL_DIR)
    return {Path(p).name: float(pipe(str(p), output_overlays=False).scores[0]) for p in images}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= SCORE_TOL


def _json_from(downloads: Sequence[str], suffix: str) -> dict:
    """The downloaded JSON file ending in ``suffix`` (``{}`` when there is none)."""
    path = next((p for p in downloads if str(p).endswith(suffix)), None)
    return json.loads(Path(path).read_text()) if path else {}


class _Timeline:
    """Start/end of every request, to tell whether a rejection happened with the queue full."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Request] = []

    def add(self, r: Request) -> None:
        with self.lock:
            self.requests.append(r)

    def unjustified(self, queue_size: int) -> int:
        """Rejections at whose submission fewer than ``queue_size`` other requests were ever in flight
        together. The server's waiting events are all requests that clients had sent and not yet got
        an answer to, so a rejection by Gradio's rule has at least ``queue_size`` of them in flight at
        some instant of the rejected request's own interval."""
        reqs = [r for r in self.requests if r.kind != "health"]
        bad = 0
        for r in reqs:
            if r.outcome != "rejected":
                continue
            others = [o for o in reqs if o is not r and o.start < r.end and o.end > r.start]
            instants = [r.start] + [o.start for o in others if o.start > r.start]
            best = max(sum(o.start <= t < o.end for o in others) for t in instants) if others else 0
            bad += best < queue_size
        return bad


def _call(timeline: _Timeline, client_id: int, rnd: int, kind: str, deadline: float,
          fn: Callable[[], Any], check: Callable[[Any], Optional[str]]) -> tuple[str, Any]:
    """Run one request: ``fn`` submits it and returns a gradio_client Job; ``check`` returns None when
    the result is right, else what is wrong."""
    from gradio_client.utils import QueueError

    start = time.monotonic()
    outcome, error, result = "ok", "", None
    try:
        job = fn()
        result = job.result(timeout=max(0.1, deadline - time.monotonic()))
        problem = check(result)
        if problem:
            outcome, error = "wrong", problem
    except QueueError as e:
        outcome, error = ("rejected" if QUEUE_FULL in str(e) else "failed"), f"QueueError: {e}"
    except (FutureTimeout, TimeoutError):
        outcome, error = "failed", "timeout: still running at the time cap"
    except Exception as e:  # noqa: BLE001 - every other error is a failure of the run
        outcome, error = "failed", f"{type(e).__name__}: {e}"[:500]
    timeline.add(Request(client_id, rnd, kind, start, time.monotonic(), outcome, error))
    return outcome, result


class _User:
    """One simulated user: its own Client (session), so /render sees the maps of its last /inspect."""

    def __init__(self, idx: int, url: str, cfg: LoadConfig, model_args: tuple[str, str], images: Sequence[Path],
                 expected: dict[str, float], download_dir: Path) -> None:
        self.idx, self.url, self.cfg, self.model_args = idx, url, cfg, model_args
        self.images, self.expected = list(images), expected
        self.download_dir = download_dir / f"user{idx:02d}"
        self.client = None

    def connect(self) -> None:
        from gradio_client import Client

        self.client = Client(self.url, verbose=False, download_files=str(self.download_dir))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def round(self, rnd: int, timeline: _Timeline, deadline: float, barrier: threading.Barrier) -> None:
        from gradio_client import handle_file

        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        if time.monotonic() >= deadline:
            return
        if self.client is None:
            try:
                self.connect()
            except Exception as e:  # noqa: BLE001
                timeline.add(Request(self.idx, rnd, "connect", time.monotonic(), time.monotonic(), "failed",
                                     f"{type(e).__name__}: {e}"[:500]))
                return
        c = self.client
        image = self.images[(self.idx + rnd) % len(self.images)]
        want = self.expected[image.name]
        inspect_md: list[str] = []

        def check_inspect(out) -> Optional[str]:
            md, slider, boxes, table, downloads = out
            inspect_md.append(md)
            if f"Score {want:.3f}" not in md:
                return f"{image.name}: expected 'Score {want:.3f}' in {md[:120]!r}"
            rec = _json_from(downloads, ".json")
            if not _close(rec.get("score", math.nan), want) or rec.get("image") != image.name:
                return f"{image.name}: JSON says {rec.get('image')} {rec.get('score')}, expected {want}"
            if len(slider) != 2 or len(downloads) != 4:
                return f"{image.name}: {len(slider)} slider images, {len(downloads)} downloads"
            return None

        outcome, _ = _call(timeline, self.idx, rnd, "inspect", deadline, lambda: c.submit(
            handle_file(str(image)), *self.model_args, -1, "default", *DISPLAY, 0.5, 5, api_name="/inspect"),
            check_inspect)

        if self.cfg.render and outcome == "ok" and time.monotonic() < deadline:
            def check_render(out) -> Optional[str]:
                md, slider, boxes, table, downloads = out
                if md != inspect_md[0]:
                    return f"render of {image.name} shows {md[:80]!r}, inspect showed {inspect_md[0][:80]!r}"
                if len(downloads) != 4 or len(table["data"]) > 2:
                    return f"render of {image.name}: {len(downloads)} downloads, {len(table['data'])} rows (top_k 2)"
                return None

            _call(timeline, self.idx, rnd, "render", deadline,
                  lambda: c.submit(0.3, "viridis", "uniform", 0.5, 2, api_name="/render"), check_render)

        if self.cfg.compare_every and self.idx % self.cfg.compare_every == 0 and time.monotonic() < deadline:
            a, b = self.cfg.pair or (self.images[0], self.images[1 % len(self.images)])
            wa, wb = self.expected[Path(a).name], self.expected[Path(b).name]

            def check_compare(out) -> Optional[str]:
                md, ov_a, ov_b, diff, downloads = out
                rec = _json_from(downloads, "compare.json")
                sa, sb = (rec.get(k, {}).get("score", math.nan) for k in ("a", "b"))
                if not (_close(sa, wa) and _close(sb, wb)):
                    return f"compare: scores {sa}, {sb}, expected {wa}, {wb}"
                if f"B − A = {sb - sa:+.3f}" not in md:
                    return f"compare: markdown {md[:120]!r}"
                return None

            _call(timeline, self.idx, rnd, "compare", deadline, lambda: c.submit(
                handle_file(str(a)), handle_file(str(b)), *self.model_args, -1, "default", *DISPLAY,
                api_name="/compare"), check_compare)


def run_load(cfg: LoadConfig, log: Callable[[str], None] = lambda m: None,
             expected: Optional[dict[str, float]] = None) -> LoadReport:
    """Start the viewer, run the users, stop everything; always returns within about ``time_cap_s``
    plus the server's start and stop. ``expected``: the scores of :func:`expected_scores` when they
    are known already."""
    from demo.models import ModelRef

    images = [Path(p) for p in (cfg.images or default_images())]
    if not images:
        raise ValueError("no images: pass --images or put image files in examples/")
    pair = cfg.pair or (images[0], images[1 % len(images)])
    ref = ModelRef.from_cli(cfg.model)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                if k not in ("python", "workdir", "images", "pair")}
    settings.update(model=cfg.model or "bundled default (diffusers_ext/default)",
                    images=[p.name for p in images], pair=[Path(p).name for p in pair],
                    machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    report = LoadReport(settings=settings)
    log(f"expected scores from the pipeline ({ref.label}) ...")
    tp = time.monotonic()
    expected = expected or expected_scores(cfg.model, sorted(set(images) | set(pair)))
    report.phases_s["expected_scores"] = time.monotonic() - tp
    own_tmp = None
    workdir = cfg.workdir
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="finpercep-load-")
        workdir = Path(own_tmp.name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = ViewerServer(cfg, workdir)
    timeline = _Timeline()
    users: list[_User] = []
    try:
        log(f"starting {' '.join(server.argv()[1:])}")
        tp = time.monotonic()
        server.start()
        t0 = time.monotonic()
        report.phases_s["server_start"] = t0 - tp
        deadline = t0 + cfg.time_cap_s
        report.rss_start_mb = server.rss() / 2**20
        users = [_User(i, server.url, cfg, (ref.kind_label, ref.ref), images, expected, workdir / "downloads")
                 for i in range(cfg.clients)]
        with ThreadPoolExecutor(max_workers=cfg.clients, thread_name_prefix="user") as pool:
            for rnd in range(cfg.rounds):
                if time.monotonic() >= deadline:
                    break
                barrier = threading.Barrier(cfg.clients, timeout=max(1.0, deadline - time.monotonic()))
                futures = [pool.submit(u.round, rnd, timeline, deadline, barrier) for u in users]
                for f in futures:
                    f.result()  # a round never outlives the deadline by more than a result() wake-up
                if time.monotonic() >= deadline:
                    break
                time.sleep(cfg.settle_s)
                report.rss_after_round_mb.append(server.rss() / 2**20)
                n = [r for r in timeline.requests if r.round == rnd]
                log(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: {len(n)} requests, "
                    f"{sum(r.outcome == 'ok' for r in n)} ok, {sum(r.outcome == 'rejected' for r in n)} rejected, "
                    f"RSS {report.rss_after_round_mb[-1]:.0f} MB")
        report.capped = time.monotonic() >= deadline
        report.wall_s = report.phases_s["rounds"] = time.monotonic() - t0
        if server.alive() and not report.capped:  # still healthy: a new user gets a right answer
            from gradio_client import Client, handle_file

            img = images[0]
            want = expected[img.name]
            hc = Client(server.url, verbose=False, download_files=str(workdir / "downloads" / "health"))
            def check_health(o) -> Optional[str]:
                got = _json_from(o[4], ".json").get("score", math.nan)
                return None if _close(got, want) else f"health: score {got}, expected {want}"

            try:
                out, _ = _call(timeline, -1, cfg.rounds, "health", time.monotonic() + 120, lambda: hc.submit(
                    handle_file(str(img)), ref.kind_label, ref.ref, -1, "default", *DISPLAY, 0.5, 5,
                    api_name="/inspect"), check_health)
            finally:
                hc.close()
            report.health_ok = out == "ok"
            report.health_error = timeline.requests[-1].error
        else:
            report.health_ok = False if not server.alive() else None
        report.rss_end_mb = server.rss() / 2**20
        report.server_cpu_s = server.cpu_seconds()
        report.phases_s["health"] = time.monotonic() - t0 - report.wall_s
    finally:
        tp = time.monotonic()
        server.stop()  # first: the users' heartbeat streams then end at once
        for u in users:
            try:
                u.close()
            except Exception:  # noqa: BLE001
                pass
        report.phases_s["stop"] = time.monotonic() - tp
        report.server_log_tail = server.log_tail()
        report.rss_peak_mb = server.peak / 2**20
        report.rss_samples = server.samples
        report.requests = list(timeline.requests)
        report.unjustified_rejections = timeline.unjustified(cfg.queue_size)
        if own_tmp is not None:
            own_tmp.cleanup()
    return report


# ----------------------------------------------------------------------------------------- report


def markdown(report: LoadReport) -> str:
    s = report.settings
    lines = [
        f"Viewer under load: {s['clients']} concurrent gradio_client users on 127.0.0.1, {s['rounds']} rounds "
        f"(round 0 = warm-up), model {s['model']}, `--queue-size {s['queue_size']} --concurrency "
        f"{s['concurrency']}`; {s['machine']}.",
        "",
        "| request | sent | ok | rejected (queue full) | wrong | failed | median s | p95 s | max s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    kinds = [k for k in ("inspect", "render", "compare") if any(r.kind == k for r in report.load_requests)]
    for k in kinds + [None]:
        lat = report.latency(k)
        sent = sum(1 for r in report.load_requests if k is None or r.kind == k)
        fmt = (lambda key: f"{lat[key]:.2f}" if key in lat else "-")
        lines.append(f"| {k or '**all**'} | {sent} | {report.count('ok', k)} | {report.count('rejected', k)} | "
                     f"{report.count('wrong', k)} | {report.count('failed', k)} | {fmt('median_s')} | "
                     f"{fmt('p95_s')} | {fmt('max_s')} |")
    after = ", ".join(f"{x:.0f}" for x in report.rss_after_round_mb)
    ok = report.count("ok")
    lines += [
        "",
        "| server memory / time | value |",
        "|---|---|",
        f"| RSS at start (served, model loaded, no request yet) | {report.rss_start_mb:.0f} MB |",
        f"| RSS after each round | {after} MB |",
        f"| RSS at end (after the health request) | {report.rss_end_mb:.0f} MB |",
        f"| peak RSS ({report.rss_samples} samples) | {report.rss_peak_mb:.0f} MB |",
        f"| growth, warm-up round -> last round (bound {s['rss_margin_mb']:.0f} MB) | {report.rss_growth_mb:+.1f} MB |",
        f"| wall time of the rounds | {report.wall_s:.1f} s (cap {s['time_cap_s']:.0f} s"
        f"{', HIT' if report.capped else ''}) |",
        f"| throughput (ok requests / wall s) | {ok / report.wall_s if report.wall_s else 0:.2f} /s |",
        f"| server CPU time | {report.server_cpu_s:.1f} s |" if report.server_cpu_s is not None
        else "| server CPU time | n/a |",
        f"| rejections without a full queue | {report.unjustified_rejections} |",
        f"| health request afterwards | {'ok' if report.health_ok else report.health_ok} |",
        "",
        f"Verdict: {'PASS' if report.passed() else 'FAIL'} (no failure other than queue-full rejections, every "
        f"rejection with >= {s['queue_size']} requests in flight, RSS growth within the bound, stopped by itself, "
        f"healthy afterwards).",
    ]
    if report.failures:
        lines += ["", "First failures:"] + [f"- {r.kind} user {r.client} round {r.round}: {r.outcome}: {r.error}"
                                            for r in report.failures[:5]]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="reward model folder (default: the bundled diffusers_ext/default)")
    p.add_argument("--images", type=Path, nargs="+", default=None, help="images to inspect (default: examples/)")
    p.add_argument("--clients", type=int, default=20, help="concurrent users (default 20)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, the first a warm-up (default 5)")
    p.add_argument("--queue-size", type=int, default=16, help="demo/app.py --queue-size (default 16, the app's)")
    p.add_argument("--concurrency", type=int, default=1, help="demo/app.py --concurrency (default 1, the app's)")
    p.add_argument("--compare-every", type=int, default=4, help="every k-th user also compares (0: none)")
    p.add_argument("--no-render", action="store_true", help="no /render after /inspect")
    p.add_argument("--time-cap", type=float, default=600.0, help="seconds for all rounds together (default 600)")
    p.add_argument("--rss-margin-mb", type=float, default=128.0,
                   help="allowed server RSS growth from the warm-up round to the last (default 128 MB)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    cfg = LoadConfig(model=a.model, images=a.images or (), clients=a.clients, rounds=a.rounds,
                     queue_size=a.queue_size, concurrency=a.concurrency, compare_every=a.compare_every,
                     render=not a.no_render, time_cap_s=a.time_cap, rss_margin_mb=a.rss_margin_mb)
    report = run_load(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
