"""Pull a model repository from the Hugging Face Hub into the standard cache, reporting progress like `ollama pull`.

Everything that touches the Hub or the cache goes through `huggingface_hub`, so `HF_TOKEN`, `HF_HOME`,
`HF_HUB_CACHE`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` mean exactly what they mean there. Note that `huggingface_hub`
reads most of them once, when it is imported: set them before the process starts.

A pull goes:

1. resolve the revision (e.g. `main`) to a commit, which also records `refs/<revision>` in the cache;
2. list the commit's files with their sizes, to know the total;
3. download the files one by one with `hf_hub_download`, pinned to that commit, counting bytes as they arrive;
4. seal it with `snapshot_download`, which records the commit's file listing (and fetches nothing more, as every
   file is there). `is_cached` requires that listing, so an interrupted pull never passes for a complete one.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
from huggingface_hub import HfApi, get_cached_repo_tree, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
# "owner/name": letters, digits, '-', '_', '.'; no leading or trailing '.' or '-', no '..' and no '--' (the cache
# spells a repo folder "models--owner--name", so '--' would be ambiguous; the Hub refuses both as well).
REPO_ID = re.compile(rf"(?!.*\.\.)(?!.*--){_PART}/{_PART}")
# A branch, tag, commit or "refs/pr/N". It becomes a file under the cache's refs/ folder, hence no '..'.
_REVISION = re.compile(r"(?!.*\.\.)(?!.*//)[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,199}(?<!/)")

_EMIT_EVERY = 0.1  # seconds: at most ~10 progress events a second


class PullError(Exception):
    """A pull that failed, with a message for the user and the HTTP status that fits it.

    400: the repository id (or revision) is not valid; 404: no such repository or revision on the Hub (or it is
    private or gated and HF_TOKEN does not grant access); 502: the Hub could not be reached or the download failed.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Cancelled(Exception):
    """Raised inside the download thread once the consumer of `pull` has gone away."""


def validate_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it is a plain "owner/name" Hub id; raise PullError(400) otherwise."""
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise PullError(
            400,
            f"Invalid model repository id {repo_id!r}: expected 'owner/name' made of letters, digits, "
            "'-', '_' and '.', e.g. 'Systran/faster-whisper-small'.",
        )
    return repo_id


def _validate_revision(revision: str) -> str:
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        raise PullError(400, f"Invalid revision {revision!r}: expected a branch, tag or commit, e.g. 'main'.")
    return revision


def is_cached(repo_id: str, revision: str = "main") -> bool:
    """Whether a complete snapshot of `repo_id` at `revision` is in the cache. Makes no network call."""
    validate_repo_id(repo_id)
    _validate_revision(revision)
    try:
        # The listing is written by snapshot_download only: without it the cache cannot tell a partial snapshot
        # from a complete one. With it, snapshot_download checks that every listed file is there.
        get_cached_repo_tree(repo_id, revision=revision)
        snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError):
        return False
    return True


def pull(repo_id: str, revision: str = "main") -> Iterator[dict[str, Any]]:
    """Download `repo_id` at `revision` into the Hugging Face cache; iterate over the progress events.

    Events: `{"status": "pulling manifest"}`, then `{"status": "downloading <file>", "total": <bytes of the whole
    repository>, "completed": <bytes so far>}` (at least once per file, at most ~10 a second), then
    `{"status": "success"}`. A repository already in the cache answers `{"status": "success"}` at once, without
    contacting the Hub.

    The id and revision are checked at the call (PullError 400); Hub failures raise PullError (404, 502) while
    iterating. Closing the iterator early stops the download.
    """
    validate_repo_id(repo_id)
    _validate_revision(revision)
    return _pull(repo_id, revision)


def _pull(repo_id: str, revision: str) -> Iterator[dict[str, Any]]:
    if is_cached(repo_id, revision):
        yield {"status": "success"}
        return
    yield {"status": "pulling manifest"}
    api = HfApi()
    try:
        resolved = api.resolve_revision(repo_id, revision=revision)
        info = api.model_info(repo_id, revision=resolved.resolved, files_metadata=True)
    except Exception as error:
        raise _pull_error(error, repo_id, revision) from error
    files = [(sibling.rfilename, sibling.size or 0) for sibling in info.siblings or []]
    total = sum(size for _, size in files)

    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancelled = threading.Event()

    def download() -> None:
        try:
            for name, _ in files:
                if cancelled.is_set():
                    raise _Cancelled
                events.put(("file", name))
                hf_hub_download(repo_id, name, revision=resolved, tqdm_class=_byte_counter(events.put, cancelled))
                events.put(("done", name))
            snapshot_download(repo_id, revision=resolved, tqdm_class=_Quiet)
            events.put(("success", None))
        except BaseException as error:  # handed over to the consumer, who raises it
            events.put(("error", error))

    worker = threading.Thread(target=download, name=f"pull {repo_id}", daemon=True)
    worker.start()
    sizes = dict(files)
    finished = 0  # bytes of the files done
    current, current_bytes = "", 0
    shown, last_emit = -1, 0.0
    try:
        while True:
            kind, value = events.get()
            if kind == "error":
                raise _pull_error(value, repo_id, revision) from value
            if kind == "success":
                break
            if kind == "file":
                current, current_bytes = value, 0
            elif kind == "bytes":
                current_bytes += value
            elif kind == "done":
                finished += sizes[value]
                current_bytes = 0
            # Bytes counted during a file never exceed its size, and never go back (a resumed download may
            # start a file over): `completed` only grows and ends equal to `total`.
            completed = max(shown, min(total, finished + max(0, min(current_bytes, sizes.get(current, 0)))))
            now = time.monotonic()
            if kind != "bytes" or now - last_emit >= _EMIT_EVERY:
                shown, last_emit = completed, now
                yield {"status": f"downloading {current}", "total": total, "completed": completed}
    finally:
        cancelled.set()
    yield {"status": "success"}


class _Quiet(tqdm):
    """A progress bar that draws nothing: a pull reports progress as events, not on stderr."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _byte_counter(report: Callable[[tuple[str, Any]], None], cancelled: threading.Event) -> type[tqdm]:
    """A progress bar class for `hf_hub_download` that reports the bytes written instead of drawing them.

    Plain HTTP downloads call `update(n)`, with a negative `n` when a resumed download has to start over. Xet
    downloads call `update(n)` for bytes written and `update_transfer(n)` for bytes received, which differ (chunks
    are deduplicated and compressed): only the former are counted. Defining `update_transfer` also makes
    `huggingface_hub` use a single bar for both, rather than two instances that would each count.
    """

    class ByteCounter(_Quiet):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if kwargs.get("initial"):
                report(("bytes", int(kwargs["initial"])))

        def update(self, n: float | None = 1) -> bool | None:
            if cancelled.is_set():
                raise _Cancelled
            report(("bytes", int(n or 0)))
            return None

        def update_transfer(self, n: float | None = 1) -> None:
            return None

        def set_transfer_postfix_str(self, s: str = "", refresh: bool = False) -> None:
            return None

    return ByteCounter


def _pull_error(error: BaseException, repo_id: str, revision: str) -> PullError:
    """The PullError a `huggingface_hub` exception stands for."""
    if isinstance(error, PullError):
        return error
    if isinstance(error, GatedRepoError):
        return PullError(404, f"Model repository '{repo_id}' is gated: accept its terms on the Hub and set HF_TOKEN.")
    if isinstance(error, RepositoryNotFoundError):
        hint = "if it is private, set HF_TOKEN to a token that can read it"
        return PullError(404, f"Model repository '{repo_id}' not found on the Hub ({hint}).")
    if isinstance(error, RevisionNotFoundError):
        return PullError(404, f"Revision '{revision}' of model repository '{repo_id}' not found on the Hub.")
    offline = isinstance(error, OfflineModeIsEnabled) or isinstance(error.__cause__, OfflineModeIsEnabled)
    if offline:
        return PullError(502, f"Cannot pull '{repo_id}': HF_HUB_OFFLINE is set and it is not in the cache.")
    if isinstance(error, (RevisionResolutionError, httpx2.TransportError)):
        return PullError(502, f"Cannot reach the Hugging Face Hub to pull '{repo_id}': {_reason(error)}")
    if isinstance(error, HfHubHTTPError):
        return PullError(502, f"The Hugging Face Hub failed while pulling '{repo_id}': {_reason(error)}")
    logger.warning("pull of %s failed", repo_id, exc_info=error)
    return PullError(502, f"Pull of '{repo_id}' failed: {_reason(error)}")


def _reason(error: BaseException) -> str:
    """The innermost cause, in one line: the useful part of `huggingface_hub`'s chained exceptions."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
