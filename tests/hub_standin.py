"""A local stand-in for the Hugging Face Hub: serves model repositories from folders, for tests.

It speaks the part of the Hub's protocol that `huggingface_hub` uses to download a model, as the installed version
sends it (point `HF_ENDPOINT` at `HubStandin.url`):

- `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{revision}`: the repo's info, `sha` (the commit)
  and `siblings`; with `?blobs=True` (`files_metadata=True`) each sibling also has `size`, `blobId` and `lfs`.
- `GET /api/models/{repo}/tree/{revision}[/{path}]?recursive=...`: the file listing (`snapshot_download`).
- `HEAD` and `GET /{repo}/resolve/{revision}/{filename}`: the file, with `X-Repo-Commit`, `ETag`, `Content-Length`,
  and for LFS files `X-Linked-Etag` and `X-Linked-Size`; `Range: bytes=a-b` is honoured (resumed downloads).
- Errors as the Hub spells them: status 404 (401 for a missing token) with `X-Error-Code` set to `RepoNotFound`,
  `RevisionNotFound` or `EntryNotFound`, which `huggingface_hub` turns into its own exceptions.
- `GET /api/agent-harnesses`: an empty registry, for the agent detection in `huggingface_hub`'s user agent.

No Xet header is ever sent, so `huggingface_hub` downloads over plain HTTP even with `hf_xet` installed. Each repo
has one revision, `main`, whose commit hash is derived from its files; the hash works as a revision too. Files at
or above `lfs_threshold` bytes are served as LFS files (ETag = sha256), the others as git blobs (ETag = git sha1).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_BLOCK = 1 << 20
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_INFO = re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<revision>[^/]+))?")
_TREE = re.compile(rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?")
_RESOLVE = re.compile(rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)")


@dataclass(frozen=True)
class Request:
    """A request the stand-in answered: method, path with query, and its Authorization and Range headers."""

    method: str
    path: str
    authorization: str | None
    range: str | None


@dataclass(frozen=True)
class _File:
    path: str  # in the repo, '/'-separated
    source: Path
    size: int
    blob_id: str  # git sha1 of the blob: the file itself, or its LFS pointer
    sha256: str | None  # LFS files only
    pointer_size: int | None

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


class _Repo:
    def __init__(self, repo_id: str, folder: Path, lfs_threshold: int) -> None:
        self.id = repo_id
        self.files: dict[str, _File] = {}
        for source in sorted(p for p in folder.rglob("*") if p.is_file()):
            path = source.relative_to(folder).as_posix()
            self.files[path] = _describe(path, source, lfs_threshold)
        listing = "".join(f"{f.path}\0{f.blob_id}\n" for f in self.files.values())
        self.sha = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    def folders(self) -> list[str]:
        return sorted({"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)})


def _describe(path: str, source: Path, lfs_threshold: int) -> _File:
    size = source.stat().st_size
    if size < lfs_threshold:
        data = source.read_bytes()
        return _File(path, source, size, _git_blob_id(data), None, None)
    digest = hashlib.sha256()
    with source.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest.hexdigest()}\nsize {size}\n".encode()
    return _File(path, source, size, _git_blob_id(pointer), digest.hexdigest(), len(pointer))


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandin:
    """The stand-in, serving on 127.0.0.1 at a free port from construction until `close()`; a context manager.

    `repos` maps repo ids ("owner/name") to folders. With `token`, every request must carry
    `Authorization: Bearer <token>` (as for a private repo), else it gets the Hub's 401. `bytes_per_second` slows
    file bodies down, so that a download lasts long enough to show progress. `drop_after` cuts the connection once,
    after that many bytes of the first whole file larger than that, as a flaky network would.
    """

    def __init__(
        self,
        repos: Mapping[str, Path | str],
        *,
        token: str | None = None,
        lfs_threshold: int = 10 * 1024 * 1024,
        bytes_per_second: float | None = None,
        drop_after: int | None = None,
    ) -> None:
        self._repos = {repo_id: _Repo(repo_id, Path(folder), lfs_threshold) for repo_id, folder in repos.items()}
        self._token = token
        self._rate = bytes_per_second
        self._drop_after = drop_after
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()

    def commit(self, repo_id: str) -> str:
        """The commit hash `main` points to in `repo_id`."""
        return self._repos[repo_id].sha

    @property
    def requests(self) -> list[Request]:
        """Every request answered so far, in order."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self._requests.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubStandin:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(_Handler):
            standin = hub

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hangs up mid-download (a cancelled pull); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects of the Hub
    standin: HubStandin

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def _route(self, *, body: bool) -> None:
        hub = self.standin
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with hub._lock:
            hub._requests.append(
                Request(self.command, self.path, self.headers.get("Authorization"), self.headers.get("Range"))
            )
        if path == "/api/agent-harnesses":  # asked by huggingface_hub's user-agent telemetry, once a day
            self._json({"standardEnvVars": [], "harnesses": {}}, body=body)
        elif hub._token is not None and self.headers.get("Authorization") != f"Bearer {hub._token}":
            self._error(401, "RepoNotFound", "Invalid username or password.", body=body)
        elif match := _TREE.fullmatch(path):
            repo, commit = self._repo_at(match["repo"], match["revision"], body=body)
            if repo is not None:
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._json(_tree(repo, match["path"] or "", recursive), body=body)
        elif match := _INFO.fullmatch(path):
            repo, commit = self._repo_at(match["repo"], match["revision"] or "main", body=body)
            if repo is not None:
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                self._json(_info(repo, blobs), body=body)
        elif match := _RESOLVE.fullmatch(path):
            repo, commit = self._repo_at(match["repo"], match["revision"], body=body)
            if repo is not None:
                file = repo.files.get(match["path"])
                if file is None:
                    self._error(404, "EntryNotFound", "Entry not found", body=body, commit=commit)
                else:
                    self._file(file, commit, body=body)
        else:
            self._error(404, None, "Sorry, we can't find the page you are looking for.", body=body)

    def _repo_at(self, repo_id: str, revision: str, *, body: bool) -> tuple[_Repo | None, str]:
        repo = self.standin._repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body=body)
            return None, ""
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, body=body)
            return None, ""
        return repo, repo.sha

    def _json(self, payload: Any, *, body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, *, body: bool, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code is not None:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _file(self, file: _File, commit: str, *, body: bool) -> None:
        start, end = 0, file.size - 1
        status = 200
        if (wanted := self.headers.get("Range")) is not None:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if match is None or int(match[1]) >= file.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{file.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match[1])
            end = min(end, int(match[2])) if match[2] else end
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{file.etag}"')
        if file.sha256 is not None:
            self.send_header("X-Linked-Etag", f'"{file.sha256}"')
            self.send_header("X-Linked-Size", str(file.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{file.size}")
        self.end_headers()
        if not body:
            return
        rate, left = self.standin._rate, end - start + 1
        with self.standin._lock:
            drop = self.standin._drop_after
            if drop is not None and status == 200 and file.size > drop:
                self.standin._drop_after = None
                left, self.close_connection = drop, True
        with file.source.open("rb") as f:
            f.seek(start)
            while left > 0:
                block = f.read(min(_BLOCK, left))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)
                if rate:
                    time.sleep(len(block) / rate)


def _info(repo: _Repo, blobs: bool) -> dict[str, Any]:
    siblings: list[dict[str, Any]] = []
    for file in repo.files.values():
        sibling: dict[str, Any] = {"rfilename": file.path}
        if blobs:
            sibling.update(size=file.size, blobId=file.blob_id)
            if file.sha256 is not None:
                sibling["lfs"] = {"size": file.size, "sha256": file.sha256, "pointerSize": file.pointer_size}
        siblings.append(sibling)
    return {
        "_id": repo.sha[:24],
        "id": repo.id,
        "modelId": repo.id,
        "author": repo.id.split("/")[0],
        "sha": repo.sha,
        "lastModified": "2024-01-01T00:00:00.000Z",
        "private": False,
        "gated": False,
        "disabled": False,
        "tags": [],
        "siblings": siblings,
    }


def _tree(repo: _Repo, under: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

    entries: list[dict[str, Any]] = [
        {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder}
        for folder in repo.folders()
        if wanted(folder)
    ]
    for file in repo.files.values():
        if wanted(file.path):
            entry: dict[str, Any] = {"type": "file", "oid": file.blob_id, "size": file.size, "path": file.path}
            if file.sha256 is not None:
                entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": file.pointer_size}
            entries.append(entry)
    return entries
