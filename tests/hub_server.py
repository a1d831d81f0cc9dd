"""A local, stdlib-only Hugging Face Hub test server.

`LocalHubServer` answers the subset of the Hub HTTP API that `huggingface_hub` (2.x) uses for
`create_repo`, `upload_file` / `upload_folder` / `create_commit`, `list_repo_files` / `list_repo_tree`,
`model_info` / `repo_info`, `hf_hub_download`, `snapshot_download`, and therefore diffusers'
`push_to_hub` / `from_pretrained("user/repo")`. Point the client at it with `hub_env(server)`.

Design notes (read from the installed `huggingface_hub` source):

* Xet is never advertised: preupload answers ``"uploadMode": "regular"`` for every file, so the client
  sends file contents inline (base64) in the NDJSON commit, and resolve responses carry no
  ``X-Xet-*`` headers / ``xet-auth`` links and tree entries no ``xetHash``, so downloads use plain HTTP.
* Files are served directly (no CDN redirect). ``ETag`` is the sha256 of the content, ``X-Repo-Commit``
  is the 40-hex commit oid; ``Content-Length`` is exact (the client checks it), ``Range`` is honoured.
* Tree / preupload ``oid`` values are git blob sha1s, exactly what the client computes for regular
  files, so re-uploading an unchanged file is skipped client-side like on the real Hub.
* Errors use the ``X-Error-Code`` header values the client maps to exceptions
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) plus ``{"error": ...}`` bodies.
* A new repo starts with an initial commit holding ``.gitattributes``, as on the Hub.

Fault injection (for reliability tests)::

    server.fail_next(2, status=500, route="commit")   # the next 2 commits answer HTTP 500
    server.drop_next(1, route="commit")               # the next commit gets no response at all

Route names: see `ROUTES`. Every request is recorded in `server.requests` (see `count`).

Typical use (pytest: the `local_hub` fixture in tests/hub_fixtures.py does exactly this)::

    with LocalHubServer() as server, hub_env(server):
        model.push_to_hub("user/tiny")
        UNet2DModel.from_pretrained("user/tiny")
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote

__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_USER",
    "ROUTES",
    "Fault",
    "HubEnv",
    "HubError",
    "LocalHubServer",
    "RequestRecord",
    "hub_env",
]

DEFAULT_TOKEN = "hf_local_test_token"
DEFAULT_USER = "user"

_ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "whoami": ("GET",),  # /api/whoami-v2
    "create_repo": ("POST",),  # /api/repos/create
    "delete_repo": ("DELETE",),  # /api/repos/delete
    "validate_yaml": ("POST",),  # /api/validate-yaml
    "info": ("GET",),  # /api/{type}s/{repo_id}[/revision/{rev}]
    "tree": ("GET",),  # /api/{type}s/{repo_id}/tree/{rev}[/{path}]
    "paths_info": ("POST",),  # /api/{type}s/{repo_id}/paths-info/{rev}
    "preupload": ("POST",),  # /api/{type}s/{repo_id}/preupload/{rev}
    "commit": ("POST",),  # /api/{type}s/{repo_id}/commit/{rev}
    "resolve": ("GET", "HEAD"),  # /[{type}s/]{repo_id}/resolve/{rev}/{path}
}
#: Route names usable in `LocalHubServer.fail_next` / `drop_next` / `count` (see `_ROUTE_METHODS` for URLs).
ROUTES = tuple(_ROUTE_METHODS)

_REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_SUBROUTES = {"revision", "tree", "preupload", "commit", "paths-info", "resolve", "refs", "commits", "branch"}
_API_ROUTE_NAMES = {
    "revision": "info", "tree": "tree", "paths-info": "paths_info", "preupload": "preupload", "commit": "commit"
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
_COPY_CHUNK = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(content: bytes) -> str:
    """Git object id of a blob (what the Hub reports as `oid` / `blobId` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An HTTP error answer: status, message and optional ``X-Error-Code`` / extra headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def _check_repo_path(path: str) -> str:
    """Validate a path inside a repo; refuse traversal and odd segments with HTTP 400."""
    if not path or "\\" in path or "\0" in path or path.startswith("/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise HubError(400, f"Invalid path in repo (no empty, '.' or '..' segments allowed): {path!r}")
    if parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo (.git is reserved): {path!r}")
    return path


def _flag(params: Mapping[str, list[str]], name: str) -> bool:
    """Boolean query / form parameter (``true`` / ``1``; httpx sends Python bools as ``true`` / ``false``)."""
    return str(params.get(name, ["false"])[-1]).lower() in ("1", "true")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """First and last byte of a single ``Range: bytes=a-b`` / ``a-`` / ``-n`` header; HTTP 416 if unusable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.groups() == ("", ""):
        raise HubError(416, f"Unsupported Range: {header}", headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        raise HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{size}"})
    return start, end


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    date: str
    files: dict[str, str]  # path -> sha256 of the content


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # branch / refs/pr/N -> commit oid
    commits: dict[str, _Commit] = field(default_factory=dict)
    num_prs: int = 0

    @property
    def url_path(self) -> str:
        return f"{_URL_PREFIX[self.repo_type]}{self.repo_id}"


class _BlobStore:
    """Content-addressed file store (``<root>/blobs/<sha256>``) with cached size / git oid."""

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._meta: dict[str, tuple[int, str]] = {}  # sha256 -> (size, git blob oid)

    def put(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        if sha256 not in self._meta:
            path = self.path(sha256)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            os.replace(tmp, path)
            self._meta[sha256] = (len(content), git_blob_oid(content))
        return sha256

    def has(self, sha256: str) -> bool:
        return sha256 in self._meta

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def size(self, sha256: str) -> int:
        return self._meta[sha256][0]

    def git_oid(self, sha256: str) -> str:
        return self._meta[sha256][1]


# --------------------------------------------------------------------------------------------------
# Fault injection and request log
# --------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """An injected failure for the next `remaining` requests matching `route` / `method` (None: any).

    kind ``"status"`` answers `status` with a JSON error `message` (plus `headers`, e.g. Retry-After);
    kind ``"drop"`` reads the request and closes the connection without any response.
    """

    kind: Literal["status", "drop"]
    remaining: int
    route: str | None = None
    method: str | None = None
    status: int = 500
    message: str = "Injected fault (LocalHubServer)"
    headers: dict[str, str] = field(default_factory=dict)
    triggered: int = 0

    def matches(self, route: str, method: str) -> bool:
        return (
            self.remaining > 0
            and (self.route is None or self.route == route)
            and (self.method is None or self.method.upper() == method)
        )


@dataclass
class RequestRecord:
    """One request seen by the server, logged before it is answered.

    `status` is set just before the response is sent; it stays None for a dropped connection.
    """

    method: str
    path: str
    route: str | None
    status: int | None


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


class LocalHubServer:
    """Hub-compatible HTTP server on 127.0.0.1 (random free port), run in a background thread.

    Args:
        root: folder for the file contents (repo metadata lives in memory); a temporary folder,
            removed by `stop`, if None.
        token: the only accepted access token; None accepts any (or no) token.
        user: user name returned by whoami, and namespace of repos created without one.

    Use as a context manager (``with LocalHubServer() as server: ...``) or `start` / `stop`.
    """

    def __init__(self, root: str | Path | None = None, *, token: str | None = DEFAULT_TOKEN, user: str = DEFAULT_USER):
        self.token = token
        self.user = user
        self._root_arg = Path(root) if root is not None else None
        self._root: Path | None = None
        self._owns_root = False
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: _BlobStore | None = None
        self._connections: set[socket.socket] = set()
        self._commit_counter = 0
        #: pending injected faults, first match wins (see `fail_next` / `drop_next`)
        self.faults: list[Fault] = []
        #: every request handled, in arrival order
        self.requests: list[RequestRecord] = []
        #: tracebacks of unexpected server-side exceptions (answered as HTTP 500)
        self.errors: list[str] = []
        #: the client environment while `hub_env(self)` is active, else None
        self.env: HubEnv | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (what HF_ENDPOINT must be set to)."""
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("LocalHubServer is not started")
        return self._root

    def start(self) -> LocalHubServer:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread. Returns self."""
        if self._httpd is not None:
            return self
        if self._root_arg is None:
            self._root = Path(tempfile.mkdtemp(prefix="local-hub-"))
            self._owns_root = True
        else:
            self._root = self._root_arg
            self._root.mkdir(parents=True, exist_ok=True)
        self._blobs = _BlobStore(self._root)
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, hub=self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, remove the temporary folder (if owned)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake up handler threads blocked on idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owns_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            with self._lock:  # the blobs are gone: a restarted server starts empty
                self._repos.clear()
            self._root, self._owns_root = None, False

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- fault injection / introspection ----------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        route: str | None = None,
        method: str | None = None,
        message: str = "Injected fault (LocalHubServer)",
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer the next `n` requests matching `route` (see `ROUTES`; None: any) with HTTP `status`."""
        return self._add_fault(Fault("status", n, route, method, status, message, dict(headers or {})))

    def drop_next(self, n: int = 1, *, route: str | None = None, method: str | None = None) -> Fault:
        """Close the connection without a response for the next `n` requests matching `route`."""
        return self._add_fault(Fault("drop", n, route, method))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(self, route: str | None = None, method: str | None = None) -> int:
        """Number of requests seen on `route` (None: all), optionally for one HTTP method."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (route is None or r.route == route) and (method is None or r.method == method.upper())
            )

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Files of a repo at `revision`, read from the server state (not through HTTP)."""
        with self._lock:
            return sorted(self._resolve_commit(self._get_repo(repo_type, repo_id), revision).files)

    def read_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """Content of one file, read from the server state (not through HTTP)."""
        with self._lock:
            commit = self._resolve_commit(self._get_repo(repo_type, repo_id), revision)
            if path not in commit.files:
                raise KeyError(path)
            return self._store.path(commit.files[path]).read_bytes()

    def head(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str:
        """Commit oid that `revision` points to."""
        with self._lock:
            return self._resolve_commit(self._get_repo(repo_type, repo_id), revision).oid

    def _add_fault(self, fault: Fault) -> Fault:
        if fault.remaining < 1:
            raise ValueError(f"A fault needs n >= 1 (got {fault.remaining})")
        if fault.route is not None and fault.route not in ROUTES:
            raise ValueError(f"Unknown route {fault.route!r}; expected one of {ROUTES}")
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, route: str, method: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(route, method):
                    fault.remaining -= 1
                    fault.triggered += 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _record(self, method: str, path: str, route: str | None) -> RequestRecord:
        record = RequestRecord(method, path, route, None)
        with self._lock:
            self.requests.append(record)
        return record

    # -- state helpers (callers hold self._lock) --------------------------------------------------

    @property
    def _store(self) -> _BlobStore:
        if self._blobs is None:
            raise RuntimeError("LocalHubServer is not started")
        return self._blobs

    def _get_repo(self, repo_type: str, repo_id: str, *, authorized: bool = True) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve_commit(self, repo: _Repo, revision: str) -> _Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(
        self, repo: _Repo, parent: str | None, title: str, description: str, files: dict[str, str]
    ) -> _Commit:
        self._commit_counter += 1
        date = _now()
        seed = json.dumps([
            repo.repo_type, repo.repo_id, parent, title, description, date, self._commit_counter, sorted(files.items())
        ])
        commit = _Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, description, date, dict(files))
        repo.commits[commit.oid] = commit
        return commit

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str) -> _Commit:
        """Most recent ancestor of `commit` (inclusive) that changed `path`."""
        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if parent.files.get(path) != current.files.get(path):
                break
            current = parent
        return current

    def _file_entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict[str, Any]:
        sha256 = commit.files[path]
        entry: dict[str, Any] = {
            "type": "file", "oid": self._store.git_oid(sha256), "size": self._store.size(sha256), "path": path
        }
        if expand:
            last = self._last_commit(repo, commit, path)
            entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return entry

    def _folder_entry(self, commit: _Commit, folder: str) -> dict[str, Any]:
        content = sorted((p, s) for p, s in commit.files.items() if p.startswith(folder + "/"))
        oid = hashlib.sha1(json.dumps(content).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": folder}

    def _info(self, repo: _Repo, commit: _Commit, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = self._store.size(commit.files[path])
                sibling["blobId"] = self._store.git_oid(commit.files[path])
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(self._store.size(s) for s in set(commit.files.values())),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = "static"
        return info


# --------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, hub: LocalHubServer):
        self.hub = hub
        super().__init__(address, handler)


class _DropConnection(Exception):
    """Raised by a handler to close the connection without answering."""


@dataclass
class _Route:
    name: str
    repo_type: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None  # path in repo (decoded)


class _Handler(BaseHTTPRequestHandler):
    """Request handler: parse the route, apply faults, dispatch, answer JSON/bytes."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every answer has a Content-Length
    server_version = "LocalHubServer/1.0"
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # header and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _HTTPServer
    _log_record: RequestRecord | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def hub(self) -> LocalHubServer:
        return self.server.hub

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.hub._lock:
            self.hub._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean; see `LocalHubServer.requests`

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._log_record is not None:
            self._log_record.status = code  # logged before any byte of the answer leaves
        super().send_response(code, message)

    def _handle(self, method: str) -> None:
        raw_path, _, query = self.path.partition("?")
        self._log_record = None
        try:
            body = self._read_body()
            self._log_record = self.hub._record(method, raw_path, None)
            route = self._parse_route(method, raw_path)
            self._log_record.route = route.name
            fault = self.hub._take_fault(route.name, method)
            if fault is not None and fault.kind == "drop":
                raise _DropConnection
            if fault is not None:
                raise HubError(fault.status, fault.message, headers=fault.headers)
            self._dispatch(method, route, parse_qs(query), body)
        except _DropConnection:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except HubError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a server bug must surface as a 500, not a hang
            self.hub.errors.append(traceback.format_exc())
            self._send_error(HubError(500, "Internal error in LocalHubServer (see server.errors)"))

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str = "application/json",
    ) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        return status

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> int:
        return self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), **err.headers}
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        self._send_json(err.status, {"error": err.message}, headers)

    # -- routing ----------------------------------------------------------------------------------

    def _parse_route(self, method: str, raw_path: str) -> _Route:
        """Map a raw (percent-encoded) URL path to a `_Route`; path segments are decoded one by one."""
        segments = raw_path.split("/")[1:]
        if segments[:1] == ["api"]:
            rest = segments[1:]
            fixed = {
                ("whoami-v2",): "whoami",
                ("repos", "create"): "create_repo",
                ("repos", "delete"): "delete_repo",
                ("validate-yaml",): "validate_yaml",
            }
            if tuple(rest) in fixed:
                return _Route(fixed[tuple(rest)])
            if len(rest) >= 2 and rest[0] in ("models", "datasets", "spaces"):
                repo_type = rest[0][:-1]
                ids = rest[1:]
                n = 2 if len(ids) >= 2 and ids[1] not in _API_SUBROUTES else 1
                repo_id, sub = "/".join(ids[:n]), ids[n:]
                if not sub:
                    return _Route("info", repo_type, repo_id)
                name = _API_ROUTE_NAMES.get(sub[0])
                if name is not None and len(sub) >= 2:
                    path = unquote("/".join(sub[2:])) or None
                    if path is not None:
                        _check_repo_path(path)
                    return _Route(name, repo_type, repo_id, unquote(sub[1]), path)
            raise HubError(404, f"Not found: {method} {raw_path} (not implemented by LocalHubServer)")
        # /[datasets/|spaces/]{namespace}/{name}/resolve/{revision}/{path...} (or a namespace-less {name})
        repo_type = "model"
        if segments[0] in ("datasets", "spaces"):
            repo_type, segments = segments[0][:-1], segments[1:]
        for n in (2, 1):
            if len(segments) >= n + 3 and segments[n] == "resolve":
                path = _check_repo_path(unquote("/".join(segments[n + 2 :])))
                return _Route("resolve", repo_type, "/".join(segments[:n]), unquote(segments[n + 1]), path)
        raise HubError(404, f"Not found: {method} {raw_path}")

    def _dispatch(self, method: str, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        """Call ``_route_<name>``; returns the HTTP status sent."""
        if method not in _ROUTE_METHODS[route.name]:
            raise HubError(405, f"Method {method} not allowed on {route.name}")
        handler = getattr(self, f"_route_{route.name}")
        return handler(route, query, body)

    # -- auth -------------------------------------------------------------------------------------

    def _authorized(self, *, required: bool) -> bool:
        """True if the request carries the server token (any token if the server has none).

        A wrong token is always a 401 (like the Hub); a missing one only when `required`.
        """
        auth = self.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if given is not None and self.hub.token is not None and given != self.hub.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        if given is None and required and self.hub.token is not None:
            raise HubError(401, "You must be authenticated to access this resource")
        return given is not None or self.hub.token is None

    # -- API routes -------------------------------------------------------------------------------

    def _route_whoami(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        self._authorized(required=True)
        user = self.hub.user
        return self._send_json(200, {
            "type": "user",
            "id": hashlib.sha1(user.encode()).hexdigest()[:24],
            "name": user,
            "fullname": user,
            "email": None,
            "emailVerified": False,
            "isPro": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local-test", "role": "write"}},
        })

    def _route_validate_yaml(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        self._authorized(required=False)
        payload = self._json_body(body)
        if not isinstance(payload.get("content"), str):
            raise HubError(400, "Missing 'content'")
        return self._send_json(200, {"errors": [], "warnings": []})

    def _route_create_repo(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        self._authorized(required=True)
        payload = self._json_body(body)
        repo_type = payload.get("type") or "model"
        name, namespace = payload.get("name"), payload.get("organization") or self.hub.user
        if repo_type not in _REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        for part in (name, namespace):
            if not isinstance(part, str) or not _NAME_RE.match(part) or "--" in part or ".." in part:
                raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        hub = self.hub
        with hub._lock:
            existing = hub._repos.get((repo_type, repo_id))
            if existing is None:
                private = payload.get("private")
                if private is None:
                    private = payload.get("visibility") == "private"
                repo = _Repo(repo_type, repo_id, bool(private), _now())
                gitattributes = hub._store.put(_GITATTRIBUTES)
                initial = hub._new_commit(repo, None, "initial commit", "", {".gitattributes": gitattributes})
                repo.branches["main"] = initial.oid
                hub._repos[(repo_type, repo_id)] = repo
        url = f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        if existing is not None:
            # huggingface_hub's create_repo(exist_ok=True) ignores the 409 and still reads "url" from the body.
            return self._send_json(409, {"error": f"You already created this {repo_type} repo", "url": url})
        return self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _route_delete_repo(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        self._authorized(required=True)
        payload = self._json_body(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
            del self.hub._repos[(repo_type, repo_id)]
        return self._send_json(200, {})

    def _read_repo(self, route: _Route) -> tuple[_Repo, _Commit]:
        assert route.repo_type is not None and route.repo_id is not None
        repo = self.hub._get_repo(route.repo_type, route.repo_id, authorized=self._authorized(required=False))
        return repo, self.hub._resolve_commit(repo, route.revision or "main")

    def _route_info(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        with self.hub._lock:
            repo, commit = self._read_repo(route)
            info = self.hub._info(repo, commit, blobs=_flag(query, "blobs"))
        return self._send_json(200, info)

    def _route_tree(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        recursive, expand = _flag(query, "recursive"), _flag(query, "expand")
        hub = self.hub
        with hub._lock:
            repo, commit = self._read_repo(route)
            base = route.path or ""
            prefix = f"{base}/" if base else ""
            below = sorted(p for p in commit.files if p.startswith(prefix))
            if base and not below:
                headers = {"X-Repo-Commit": commit.oid}
                raise HubError(404, f"Entry not found: {base}", "EntryNotFound", headers)
            folders: set[str] = set()
            files: list[str] = []
            for path in below:
                parts = path[len(prefix) :].split("/")
                if not recursive:
                    if len(parts) == 1:
                        files.append(path)
                    else:
                        folders.add(prefix + parts[0])
                    continue
                files.append(path)
                folders.update(prefix + "/".join(parts[:k]) for k in range(1, len(parts)))
            entries = [hub._folder_entry(commit, f) for f in sorted(folders)]
            entries += [hub._file_entry(repo, commit, p, expand) for p in files]
        return self._send_json(200, entries)

    def _route_paths_info(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        form = parse_qs(body.decode(), keep_blank_values=True)
        if "application/json" in self.headers.get("Content-Type", ""):
            form = {k: v if isinstance(v, list) else [v] for k, v in self._json_body(body).items()}
        paths = [_check_repo_path(str(p)) for p in form.get("paths", [])]
        expand = _flag(form, "expand")
        hub = self.hub
        with hub._lock:
            repo, commit = self._read_repo(route)
            entries = []
            for path in paths:
                if path in commit.files:
                    entries.append(hub._file_entry(repo, commit, path, expand))
                elif any(p.startswith(path + "/") for p in commit.files):
                    entries.append(hub._folder_entry(commit, path))
        return self._send_json(200, entries)

    def _route_preupload(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        authorized = self._authorized(required=True)
        payload = self._json_body(body)
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "Missing 'files' list")
        hub = self.hub
        with hub._lock:
            assert route.repo_type is not None and route.repo_id is not None
            repo = hub._get_repo(route.repo_type, route.repo_id, authorized=authorized)
            if query.get("create_pr") and route.revision not in repo.branches:
                commit = None
            else:
                commit = hub._resolve_commit(repo, route.revision or "main")
            answer = []
            for item in files:
                path = _check_repo_path(str(item.get("path", "")) if isinstance(item, dict) else "")
                entry: dict[str, Any] = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
                if commit is not None and path in commit.files:
                    entry["oid"] = hub._store.git_oid(commit.files[path])
                answer.append(entry)
        return self._send_json(200, {"files": answer, "commitOid": commit.oid if commit else None})

    def _route_commit(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        authorized = self._authorized(required=True)
        header, operations = self._parse_commit_payload(body)
        title = header["summary"]
        hub = self.hub
        with hub._lock:
            assert route.repo_type is not None and route.repo_id is not None
            repo = hub._get_repo(route.repo_type, route.repo_id, authorized=authorized)
            branch = route.revision or "main"
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for op, path, data in operations:
                if op == "add":
                    assert isinstance(data, bytes)
                    files[path] = hub._store.put(data)
                elif op == "lfs":
                    assert isinstance(data, str)
                    if not hub._store.has(data):
                        raise HubError(400, f"LFS object {data} for {path} was never uploaded (preupload: 'regular')")
                    files[path] = data
                elif op == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
            pr_url = None
            if query.get("create_pr"):
                repo.num_prs += 1
                branch = f"refs/pr/{repo.num_prs}"
                pr_url = f"{hub.endpoint}/{repo.url_path}/discussions/{repo.num_prs}"
            commit = hub._new_commit(repo, head.oid, title, str(header.get("description") or ""), files)
            repo.branches[branch] = commit.oid
        return self._send_json(200, {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{hub.endpoint}/{repo.url_path}/commit/{commit.oid}",
            "hookOutput": "",
            "pullRequestUrl": pr_url,
        })

    @staticmethod
    def _parse_commit_payload(body: bytes) -> tuple[dict[str, Any], list[tuple[str, str, bytes | str | None]]]:
        """Decode and validate an NDJSON commit before touching the repo (a commit is atomic)."""
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
                raise HubError(400, "Commit payload must be NDJSON starting with a 'header' line")
            header = lines[0].get("value") or {}
            if not isinstance(header.get("summary"), str) or not header["summary"]:
                raise HubError(400, "Commit summary is required")
            operations: list[tuple[str, str, bytes | str | None]] = []
            for item in lines[1:]:
                key, value = item.get("key"), item.get("value") or {}
                raw_path = str(value.get("path", ""))
                path = _check_repo_path(raw_path.rstrip("/") if key == "deletedFolder" else raw_path)
                if key == "file":
                    content = value.get("content", "")
                    if value.get("encoding") == "base64":
                        operations.append(("add", path, base64.b64decode(content, validate=True)))
                    else:
                        operations.append(("add", path, str(content).encode()))
                elif key == "lfsFile":
                    operations.append(("lfs", path, str(value.get("oid", ""))))
                elif key in ("deletedFile", "deletedFolder"):
                    operations.append((key, path, None))
                else:
                    raise HubError(400, f"Unsupported commit operation: {key!r}")
        except (ValueError, TypeError, AttributeError) as err:  # bad JSON / base64 / shapes
            raise HubError(400, f"Malformed commit payload: {err}") from None
        return header, operations

    # -- file download ----------------------------------------------------------------------------

    def _route_resolve(self, route: _Route, query: dict[str, list[str]], body: bytes) -> int:
        hub = self.hub
        with hub._lock:
            repo, commit = self._read_repo(route)
            sha256 = commit.files.get(route.path or "")
            if sha256 is None:
                raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
            size = hub._store.size(sha256)
            blob_path = hub._store.path(sha256)
        filename = (route.path or "").rsplit("/", 1)[-1]
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{quote(filename)}\"",
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            start, end = _parse_range(range_header, size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "GET" and length:
            with open(blob_path, "rb") as f:
                f.seek(start)
                remaining = length
                while remaining > 0:
                    chunk = f.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        return status

    def _json_body(self, body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from None
        if not isinstance(payload, dict):
            raise HubError(400, "JSON body must be an object")
        return payload


# --------------------------------------------------------------------------------------------------
# Client environment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubEnv:
    """What `hub_env` configured: endpoint, token and the temporary HF_HOME / hub cache."""

    endpoint: str
    token: str
    home: Path
    cache_dir: Path


_ENV_KEYS = (
    "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME",
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH",
    "HF_HUB_DISABLE_TELEMETRY", "NO_PROXY", "no_proxy",
)

_ENV_UNSET = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE"
)


def _module_dicts() -> Iterator[dict[str, Any]]:
    """Globals of every imported module (without triggering lazy imports)."""
    import sys
    import types

    for module in list(sys.modules.values()):
        if isinstance(module, types.ModuleType):
            namespace = module.__dict__
            if isinstance(namespace, dict):
                yield namespace


@contextlib.contextmanager
def hub_env(
    server: LocalHubServer | str, *, token: str = DEFAULT_TOKEN, home: str | Path | None = None
) -> Iterator[HubEnv]:
    """Point `huggingface_hub` (and diffusers) at `server` for the duration of the block.

    Sets ``HF_ENDPOINT``, ``HF_TOKEN`` (a dummy token), a temporary ``HF_HOME`` / ``HF_HUB_CACHE``,
    unsets ``HF_HUB_OFFLINE``, and — because huggingface_hub reads these at import time — patches
    `huggingface_hub.constants` plus every module-level copy of them (``from huggingface_hub.constants
    import HF_HUB_OFFLINE`` in diffusers, ``diffusers.utils.constants.HUGGINGFACE_CO_RESOLVE_ENDPOINT``,
    ...) and the endpoint of module-level `HfApi` instances (`huggingface_hub.hf_api.api`, behind
    `create_repo`, `upload_folder`, `model_info`, ...). The shared HTTP client is reset on entry and exit.
    Everything is restored on exit, including copies made by modules imported inside the block.
    """
    from huggingface_hub import constants
    from huggingface_hub.hf_api import HfApi
    from huggingface_hub.utils import _http

    endpoint = (server.endpoint if isinstance(server, LocalHubServer) else server).rstrip("/")
    own_home = home is None
    home_path = Path(tempfile.mkdtemp(prefix="hf-home-")) if home is None else Path(home)
    cache = home_path / "hub"
    for folder in (cache, home_path / "assets", home_path / "xet"):
        folder.mkdir(parents=True, exist_ok=True)

    old_endpoint = constants.ENDPOINT
    new_values: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HUGGINGFACE_CO_RESOLVE_ENDPOINT": endpoint,  # diffusers / transformers copy of HF_ENDPOINT
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home_path),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home_path / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home_path / "assets"),
        "HF_XET_CACHE": str(home_path / "xet"),
        "HF_TOKEN_PATH": str(home_path / "token"),
        "HF_STORED_TOKENS_PATH": str(home_path / "stored_tokens"),
        "HF_MODULES_CACHE": str(home_path / "modules"),  # diffusers / transformers remote-code cache
    }
    # Value of each name before patching: a module global with that name and value is a copy to patch.
    originals = {name: getattr(constants, name, None) for name in new_values}
    originals["HUGGINGFACE_CO_RESOLVE_ENDPOINT"] = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    originals["HF_MODULES_CACHE"] = os.environ.get("HF_MODULES_CACHE", os.path.join(constants.HF_HOME, "modules"))

    saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
    patched: list[tuple[dict[str, Any], str, Any]] = []  # (module globals, name, old value)
    patched_apis: list[tuple[HfApi, str]] = []
    modules_before = {id(namespace) for namespace in _module_dicts()}

    def restore_env() -> None:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    try:
        for key in _ENV_UNSET:
            os.environ.pop(key, None)
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        os.environ.update({
            "HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HOME": str(home_path), "HF_HUB_CACHE": str(cache),
            "HF_ASSETS_CACHE": str(home_path / "assets"), "HF_XET_CACHE": str(home_path / "xet"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": no_proxy, "no_proxy": no_proxy,
        })
        for namespace in _module_dicts():
            for name, value in new_values.items():
                if name in namespace and (namespace is constants.__dict__ or namespace[name] == originals[name]):
                    patched.append((namespace, name, namespace[name]))
                    namespace[name] = value
            for obj in list(namespace.values()):
                if issubclass(type(obj), HfApi) and obj.endpoint == old_endpoint:
                    patched_apis.append((obj, obj.endpoint))
                    obj.endpoint = endpoint
                    getattr(obj, "_whoami_cache", {}).clear()
        _http.close_session()  # the shared httpx client reads proxy env vars when created
    except BaseException:
        restore_env()
        for namespace, name, old in reversed(patched):
            namespace[name] = old
        raise

    env = HubEnv(endpoint=endpoint, token=token, home=home_path, cache_dir=cache)
    if isinstance(server, LocalHubServer):
        server.env = env
    try:
        yield env
    finally:
        if isinstance(server, LocalHubServer):
            server.env = None
        _http.close_session()
        restore_env()
        for namespace, name, old in reversed(patched):
            if namespace.get(name) is new_values[name]:
                namespace[name] = old
        for api, old_ep in patched_apis:
            if api.endpoint == endpoint:
                api.endpoint = old_ep
        # Modules imported inside the block copied patched values: put the originals back.
        for namespace in _module_dicts():
            if id(namespace) in modules_before:
                continue
            for name, value in new_values.items():
                if name in namespace and namespace[name] is value:
                    namespace[name] = originals[name]
            for obj in list(namespace.values()):
                if issubclass(type(obj), HfApi) and obj.endpoint == endpoint:
                    obj.endpoint = originals["ENDPOINT"]
        if own_home:
            shutil.rmtree(home_path, ignore_errors=True)
