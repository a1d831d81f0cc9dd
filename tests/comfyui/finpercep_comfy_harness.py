"""Run a real ComfyUI server for the node tests and talk to it over HTTP (stdlib only).

    install = ensure_comfyui()                         # tests/comfyui/setup_comfyui.sh (idempotent)
    with ComfyServer(install, base_dir, env=...) as server:
        info = server.object_info()
        result = server.run(api_graph)                 # POST /prompt, poll /history/<id>
        result.ok, result.outputs, result.error

The server process is started by us, niced, and stopped by its own pid.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "tests" / "comfyui" / "setup_comfyui.sh"


@dataclass
class ComfyInstall:
    home: Path

    @property
    def python(self) -> Path:
        return self.home / "venv" / "bin" / "python"

    @property
    def comfyui(self) -> Path:
        return self.home / "ComfyUI"


def ensure_comfyui(timeout: float = 900) -> ComfyInstall:
    """Install (or find) ComfyUI 0.3.75 and its venv; fails with the script's output if that fails."""
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{SETUP} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return ComfyInstall(Path(proc.stdout.strip().splitlines()[-1]))


def run_in_comfy_venv(install: ComfyInstall, script: Path, *args: str, timeout: float = 600) -> str:
    """Run a helper script with the ComfyUI venv's python (niced); returns stdout, raises with the log.
    ComfyUI's checkout (``comfy``, ``folder_paths``...) and this repository (``comfyui_finpercep``,
    ``diffusers_ext``; not installed in that venv, as in a user's plain clone) are importable there
    through PYTHONPATH, so the scripts edit no ``sys.path``."""
    path = os.pathsep.join([str(install.comfyui), str(REPO)])
    proc = subprocess.run(["nice", "-n", "19", str(install.python), str(script), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunResult:
    prompt_id: Optional[str]
    ok: bool
    outputs: dict = field(default_factory=dict)  # node id -> ui dict
    error: Optional[dict] = None  # execution_error payload, or the /prompt 400 body
    seconds: float = 0.0

    def texts(self, node: str) -> list[str]:
        return list(self.outputs.get(node, {}).get("text", []))

    def images(self, node: str) -> list[dict]:
        return list(self.outputs.get(node, {}).get("images", []))


class ComfyServer:
    def __init__(self, install: ComfyInstall, base: Path, env: Optional[dict] = None, port: Optional[int] = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.install = install
        self.base = Path(base)
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.extra_args = extra_args
        self.log_path = self.base / "comfyui.log"
        self.proc: Optional[subprocess.Popen] = None
        self.start_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 180) -> "ComfyServer":
        cmd = ["nice", "-n", "19", str(self.install.python), "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base), "--disable-auto-launch",
               "--database-url", f"sqlite:///{self.base / 'comfyui.db'}", *self.extra_args]
        self._log = open(self.log_path, "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.install.comfyui, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log()[-6000:]}")
            try:
                self.get("/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-6000:]}")
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its pid
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict, timeout: float = 30) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def object_info(self) -> dict:
        return self.get("/object_info")

    def run(self, graph: dict, timeout: float = 300) -> RunResult:
        """Queue an API-format graph and wait for it; errors come back in the result, not raised."""
        t0 = time.monotonic()
        status, body = self.post("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
        if status != 200:
            return RunResult(None, False, error=body, seconds=time.monotonic() - t0)
        pid = body["prompt_id"]
        while True:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                st = entry["status"]
                if st.get("status_str") == "success" or st.get("completed"):
                    return RunResult(pid, True, entry.get("outputs", {}), seconds=time.monotonic() - t0)
                err = next((m[1] for m in st.get("messages", []) if m[0] == "execution_error"), st)
                return RunResult(pid, False, entry.get("outputs", {}), err, time.monotonic() - t0)
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running a prompt:\n{self.log()[-6000:]}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"prompt {pid} did not finish within {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def output_file(self, item: dict) -> Path:
        """The file of an ``images`` entry of a history output (type output/temp)."""
        root = self.base / ("output" if item.get("type") == "output" else "temp")
        return root / item.get("subfolder", "") / item["filename"]
