"""Family server processes, one per loaded model: start, health, idle expiry, crash detection, stop.

Each loaded model runs as `python -P -m servers.<family> --port P --model SOURCE ...` on 127.0.0.1,
in its own session (so its LitServe workers can be stopped as a group), and with the kernel told to
send it SIGTERM should the router die, so no orphan keeps a port or GPU memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import psutil

from common.errors import ApiError
from router.registry import ModelEntry, Registry

logger = logging.getLogger("open_speech.supervisor")

PR_SET_PDEATHSIG = 1
# An external server's /health and model answers are quick; a longer wait means it is not there.
PROBE_TIMEOUT = 2.0


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the router exits, however it exits."""
    with contextlib.suppress(OSError):  # not Linux: the router's own shutdown still stops its children
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now, for a server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until_healthy(url: str, alive: Callable[[], bool]) -> bool:
    """Poll the server at `url` until its /health answers 200 (True) or `alive()` turns false (False)."""
    async with httpx.AsyncClient(timeout=2) as http:
        while alive():
            try:
                if (await http.get(url + "/health")).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    return False


@dataclass
class Served:
    """A model's server as the router sees it, local or external: its traffic and its settings."""

    entry: ModelEntry
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    stopping: bool = False
    config: dict = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    key: str = ""  # the family server's api_key: the router sends it on every request

    @property
    def headers(self) -> dict[str, str]:
        """What every request to this server carries: its key."""
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()
        self.last_used = time.time()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.time()
        if self.in_flight == 0:
            self.idle.set()

    def unavailable(self, exc: Exception) -> ApiError:
        """The 503 for a request this server failed to answer (it died or cannot be reached), logged."""
        logger.error("model server %s failed during a request: %r", self.entry.id, exc)
        return ApiError(503, self.unavailable_message, code="model_unavailable", headers={"Retry-After": "1"})


@dataclass
class ModelServer(Served):
    """One family server process the router started."""

    port: int = field(kw_only=True)
    process: asyncio.subprocess.Process = field(kw_only=True)
    watcher: asyncio.Task | None = None
    status = "ready"  # it is in Supervisor.servers only once healthy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @property
    def unavailable_message(self) -> str:
        return f"The server for model '{self.entry.id}' stopped unexpectedly; it will be restarted on the next request."

    def memory(self) -> int:
        """Resident memory of the server and all its processes (LitServe workers included), bytes."""
        try:
            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0


@dataclass
class ExternalServer(Served):
    """A family server the router does not run (the registry entry's `url`, e.g. a Kubernetes Service
    in front of replicas): requests go to it as they come; the router never starts, stops or expires it.
    """

    status: str = "unknown"  # from the last probe: ready, loading, unreachable or misconfigured
    detail: str = ""  # why it is not ready, for the client
    pid = None

    def __post_init__(self) -> None:
        self.idle.set()

    def found(self, status: str, detail: str = "") -> str:
        """Keep what a probe found; its status."""
        self.status, self.detail = status, detail
        return status

    @property
    def url(self) -> str:
        return self.entry.url

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def alive(self) -> bool:
        return True  # whether it answers shows on each request (503 when it does not)

    @property
    def unavailable_message(self) -> str:
        return (
            f"The server for model '{self.entry.id}' at {self.url} cannot be reached; "
            "it is managed outside this router (check that its replicas are ready)."
        )

    def memory(self) -> int:
        return 0  # another machine's


class Supervisor:
    """Loads and unloads models as family server processes; answers which server serves a model.

    Models with a `url` in the registry are external: in `servers` from the start, probed (never
    started) by `load`, refused by `unload`, never expired.
    """

    def __init__(
        self,
        registry: Registry,
        keep_alive: float,
        load_timeout: float,
        load_on_request: str,
        family_key: str = "",
        hang_seconds: float = 20.0,
        family_env: dict[str, str] | None = None,
    ) -> None:
        """`family_env`: options for every family server started (OPEN_SPEECH_* variables)."""
        self.default = registry.default
        self.keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.load_on_request = load_on_request  # "wait" or "reject"
        self.hang_seconds = hang_seconds  # a server whose /health fails this long is killed, then restarted
        self.family_env = family_env or {}
        self.servers: dict[str, ModelServer | ExternalServer] = {
            entry.id: ExternalServer(entry, key=family_key) for entry in registry.models.values() if entry.external
        }
        self.loading: dict[str, asyncio.Task[ModelServer]] = {}
        self._background: set[asyncio.Task] = set()
        self.http = httpx.AsyncClient(timeout=5)

    def expires_at(self, server: ModelServer | ExternalServer) -> float | None:
        if isinstance(server, ExternalServer) or server.entry.id == self.default or self.keep_alive < 0:
            return None
        return server.last_used + self.keep_alive

    def load_in_background(self, entry: ModelEntry) -> None:
        if entry.id not in self.loading and entry.id not in self.servers:
            task = asyncio.create_task(self.load(entry))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def server_for(self, entry: ModelEntry) -> ModelServer | ExternalServer:
        """The server to send a request for `entry` to: loaded now if need be, or (`load_on_request` reject)
        a 503 with Retry-After while it loads in the background."""
        server = self.servers.get(entry.id)
        if server is not None and server.alive and not server.stopping:
            return server
        if self.load_on_request == "reject":
            self.load_in_background(entry)
            raise ApiError(
                503,
                f"Model '{entry.id}' is loading; retry shortly.",
                code="model_loading",
                headers={"Retry-After": "10"},
            )
        return await self.load(entry)

    async def load(self, entry: ModelEntry) -> ModelServer | ExternalServer:
        """The model's server, started if needed; concurrent callers share one start.

        An external model is only probed: 503 with the reason unless its server is ready.
        """
        server = self.servers.get(entry.id)
        if isinstance(server, ExternalServer):
            if await self.probe(server) != "ready":
                raise ApiError(503, server.detail, code="model_unavailable", headers={"Retry-After": "10"})
            return server
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
                f"The {entry.family} family is not installed here (bash .ci/setup.sh {entry.extra}).",
                param="model",
                code="family_unavailable",
            )
        port = free_port()
        command = [sys.executable, "-P", "-m", entry.module, "--host", "127.0.0.1", "--port", str(port)]
        command += entry.server_args()
        logger.info("loading %s: %s", entry.id, " ".join(command))
        # The router's own config file is not the family server's; OPEN_SPEECH_* options pass through.
        env = {k: v for k, v in os.environ.items() if k != "OPEN_SPEECH_CONFIG"} | self.family_env
        # A key for this start alone, given through the environment (a command line is visible to every
        # user of the machine): the family server answers only the router, whoever finds its port.
        key = env["OPEN_SPEECH_API_KEY"] = secrets.token_urlsafe(32)
        process = await asyncio.create_subprocess_exec(
            *command, env=env, start_new_session=True, preexec_fn=_die_with_parent, stdin=asyncio.subprocess.DEVNULL
        )
        server = ModelServer(entry, key=key, port=port, process=process)
        server.idle.set()
        try:
            healthy = await asyncio.wait_for(until_healthy(server.url, lambda: server.alive), self.load_timeout)
        except TimeoutError:
            await self._kill(server)
            raise ApiError(
                503, f"Model '{entry.id}' did not load within {self.load_timeout:g} s.", code="model_load_timeout"
            ) from None
        except BaseException:  # cancelled by shutdown: leave no process behind
            await self._kill(server)
            raise
        if not healthy:
            await self._kill(server)
            raise ApiError(
                500,
                f"Model '{entry.id}' failed to load (its server exited with {process.returncode}); "
                "see the router's log.",
                code="model_load_failed",
            )
        server.config = await self._effective_config(server)
        server.last_used = time.time()  # idle from now, not from the start of a load that may outlast keep_alive
        self.servers[entry.id] = server
        server.watcher = asyncio.create_task(self._watch(server))
        logger.info(
            "loaded %s (pid %d, port %d) in %.1f s", entry.id, process.pid, port, time.time() - server.loaded_at
        )
        return server

    async def _effective_config(self, server: ModelServer) -> dict:
        try:
            response = await self.http.get(f"{server.url}/v1/models/{server.entry.id}", headers=server.headers)
            return response.json().get("config", {})
        except (httpx.HTTPError, ValueError):
            return {}

    async def _watch(self, server: ModelServer) -> None:
        """Notice a server that exits on its own (crash, kill -9) or stops answering (hung: killed here):
        forget it; its requests in flight get 503 as their connections drop; the next request restarts it."""
        watchdog = asyncio.create_task(self._until_hung(server))
        try:
            code = await server.process.wait()
        finally:
            watchdog.cancel()
        if not server.stopping:
            logger.error(
                "model server %s (pid %d) exited unexpectedly with %s", server.entry.id, server.process.pid, code
            )
            self._kill_group(server)
        if self.servers.get(server.entry.id) is server:
            del self.servers[server.entry.id]

    async def _until_hung(self, server: ModelServer) -> None:
        """Poll the server's /health (it proves its inference workers' heartbeat) and kill it once it has
        failed for `hang_seconds`: a stopped or stuck server would otherwise hold its requests for ever."""
        answered = time.monotonic()
        while True:
            await asyncio.sleep(PROBE_TIMEOUT)
            try:
                healthy = (await self.http.get(server.url + "/health", timeout=PROBE_TIMEOUT)).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy:
                answered = time.monotonic()
            elif time.monotonic() - answered > self.hang_seconds and not server.stopping:
                logger.error(
                    "model server %s (pid %d) has not answered its health check for %g s: restarting it",
                    server.entry.id,
                    server.pid,
                    self.hang_seconds,
                )
                self._kill_group(server)
                return

    async def unload(self, model_id: str, drain_timeout: float = 60.0) -> bool:
        """Stop a model's server once its in-flight requests are done. False if it was not loaded."""
        server = self.servers.get(model_id)
        if server is None:
            return False
        if isinstance(server, ExternalServer):
            raise ApiError(
                409,
                f"Model '{model_id}' is managed externally (served by {server.url}); the router cannot unload it.",
                param="model",
                code="model_managed_externally",
            )
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
        started = [s for s in self.servers.values() if isinstance(s, ModelServer)]
        await asyncio.gather(*(self._kill(s, grace=20.0) for s in started))
        self.servers.clear()
        await self.http.aclose()

    async def probe(self, server: ExternalServer) -> str:
        """Ask an external server whether it is ready and serves its model; its status, also kept on it."""
        model, url = server.entry.id, server.url
        try:
            health = await self.http.get(url + "/health", timeout=PROBE_TIMEOUT)
            if health.status_code != 200:
                why = f"its /health answered {health.status_code}"
                return server.found(
                    "loading", f"Model '{model}' is served by {url}, not ready yet ({why}); retry shortly."
                )
            answer = await self.http.get(f"{url}/v1/models/{model}", headers=server.headers, timeout=PROBE_TIMEOUT)
            if answer.status_code != 200:
                why = f"start it with --name {model}"
                return server.found("misconfigured", f"The server at {url} does not serve model '{model}' ({why}).")
            server.config = answer.json().get("config", {})
        except (httpx.HTTPError, ValueError) as exc:
            why = f"{type(exc).__name__}); it is managed outside this router."
            return server.found("unreachable", f"Model '{model}' is served by {url}, which cannot be reached ({why}")
        return server.found("ready")

    async def states(self) -> dict[str, str]:
        """Each loaded or loading model's state; external ones probed now, at once."""
        external = [s for s in self.servers.values() if isinstance(s, ExternalServer)]
        await asyncio.gather(*(self.probe(s) for s in external))
        return {s.entry.id: s.status for s in self.servers.values()} | {model: "loading" for model in self.loading}
