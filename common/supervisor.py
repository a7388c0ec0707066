"""Family server processes, one per loaded model: start, health, idle expiry, crash detection, stop.

Each loaded model runs as `python servers/<family>.py --port P --model SOURCE ...` on 127.0.0.1,
in its own session (so its LitServe workers can be stopped as a group), and with the kernel told to
send it SIGTERM should the router die, so no orphan keeps a port or GPU memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import httpx
import psutil

from common.errors import ApiError
from common.registry import ModelEntry

logger = logging.getLogger("open_speech.supervisor")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the router exits, however it exits."""
    with contextlib.suppress(OSError):  # not Linux: the router's own shutdown still stops its children
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ModelServer:
    """One running family server."""

    entry: ModelEntry
    port: int
    process: asyncio.subprocess.Process
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    stopping: bool = False
    config: dict = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def memory(self) -> int:
        """Resident memory of the server and all its processes (LitServe workers included), bytes."""
        try:
            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()
        self.last_used = time.time()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.time()
        if self.in_flight == 0:
            self.idle.set()


class Supervisor:
    """Loads and unloads models as family server processes; answers which server serves a model."""

    def __init__(self, default: str, keep_alive: float, load_timeout: float) -> None:
        self.default = default
        self.keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.servers: dict[str, ModelServer] = {}
        self.loading: dict[str, asyncio.Task[ModelServer]] = {}
        self._background: set[asyncio.Task] = set()
        self.http = httpx.AsyncClient(timeout=5)

    def expires_at(self, server: ModelServer) -> float | None:
        if server.entry.id == self.default or self.keep_alive < 0:
            return None
        return server.last_used + self.keep_alive

    def load_in_background(self, entry: ModelEntry) -> None:
        if entry.id not in self.loading and entry.id not in self.servers:
            task = asyncio.create_task(self.load(entry))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def load(self, entry: ModelEntry) -> ModelServer:
        """The model's server, started if needed; concurrent callers share one start."""
        server = self.servers.get(entry.id)
        if server is not None and server.alive and not server.stopping:
            return server
        task = self.loading.get(entry.id)
        if task is None:
            task = asyncio.create_task(self._start(entry))
            self.loading[entry.id] = task
            task.add_done_callback(lambda _: self.loading.pop(entry.id, None))
        return await asyncio.shield(task)

    async def _start(self, entry: ModelEntry) -> ModelServer:
        if not entry.installed:
            raise ApiError(
                501,
                f"The {entry.family} family is not installed here (bash .ci/setup.sh {entry.family}).",
                param="model",
                code="family_unavailable",
            )
        port = _free_port()
        command = [sys.executable, str(entry.script), "--host", "127.0.0.1", "--port", str(port), *entry.server_args()]
        logger.info("loading %s: %s", entry.id, " ".join(command))
        # The router's own config file is not the family server's; OPEN_SPEECH_* options pass through.
        env = {k: v for k, v in os.environ.items() if k != "OPEN_SPEECH_CONFIG"}
        process = await asyncio.create_subprocess_exec(
            *command, env=env, start_new_session=True, preexec_fn=_die_with_parent, stdin=asyncio.subprocess.DEVNULL
        )
        server = ModelServer(entry, port, process)
        server.idle.set()
        try:
            await asyncio.wait_for(self._until_healthy(server), self.load_timeout)
        except TimeoutError:
            await self._kill(server)
            raise ApiError(
                503, f"Model '{entry.id}' did not load within {self.load_timeout:g} s.", code="model_load_timeout"
            ) from None
        except BaseException:  # failed, or cancelled by shutdown: leave no process behind
            await self._kill(server)
            raise
        server.config = await self._effective_config(server)
        server.last_used = time.time()  # idle from now, not from the start of a load that may outlast keep_alive
        self.servers[entry.id] = server
        server.watcher = asyncio.create_task(self._watch(server))
        logger.info(
            "loaded %s (pid %d, port %d) in %.1f s", entry.id, process.pid, port, time.time() - server.loaded_at
        )
        return server

    async def _until_healthy(self, server: ModelServer) -> None:
        while True:
            if not server.alive:
                raise ApiError(
                    500,
                    f"Model '{server.entry.id}' failed to load (its server exited with "
                    f"{server.process.returncode}); see the router's log.",
                    code="model_load_failed",
                )
            try:
                if (await self.http.get(server.url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)

    async def _effective_config(self, server: ModelServer) -> dict:
        try:
            response = await self.http.get(f"{server.url}/v1/models/{server.entry.id}")
            return response.json().get("config", {})
        except (httpx.HTTPError, ValueError):
            return {}

    async def _watch(self, server: ModelServer) -> None:
        """Notice a server that exits on its own (crash, kill -9): forget it; the next request restarts it."""
        code = await server.process.wait()
        if not server.stopping:
            logger.error(
                "model server %s (pid %d) exited unexpectedly with %s", server.entry.id, server.process.pid, code
            )
            self._kill_group(server)
        if self.servers.get(server.entry.id) is server:
            del self.servers[server.entry.id]

    async def unload(self, model_id: str, drain_timeout: float = 60.0) -> bool:
        """Stop a model's server once its in-flight requests are done. False if it was not loaded."""
        server = self.servers.get(model_id)
        if server is None:
            return False
        server.stopping = True
        self.servers.pop(model_id, None)
        try:
            await asyncio.wait_for(server.idle.wait(), drain_timeout)
        except TimeoutError:
            logger.warning("unloading %s with %d requests still in flight", model_id, server.in_flight)
        await self._kill(server)
        logger.info("unloaded %s", model_id)
        return True

    async def _kill(self, server: ModelServer, grace: float = 30.0) -> None:
        server.stopping = True
        if server.alive:
            server.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.process.wait(), grace)
            except TimeoutError:
                logger.warning("%s ignored SIGTERM for %g s; killing it", server.entry.id, grace)
        self._kill_group(server)
        await server.process.wait()

    @staticmethod
    def _kill_group(server: ModelServer) -> None:
        """Whatever is left of the server's process group (LitServe workers of a crashed server)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.process.pid, signal.SIGKILL)

    async def expire_idle(self) -> None:
        """Unload models idle past keep_alive; runs for the router's lifetime."""
        while True:
            await asyncio.sleep(max(0.5, min(10.0, self.keep_alive / 4)) if self.keep_alive > 0 else 10.0)
            now = time.time()
            for server in list(self.servers.values()):
                expires = self.expires_at(server)
                if expires is not None and server.in_flight == 0 and now >= expires:
                    logger.info("%s idle for %g s: unloading", server.entry.id, self.keep_alive)
                    await self.unload(server.entry.id)

    async def shutdown(self) -> None:
        for task in list(self.loading.values()):
            task.cancel()
        await asyncio.gather(*(self._kill(s, grace=20.0) for s in list(self.servers.values())))
        self.servers.clear()
        await self.http.aclose()
