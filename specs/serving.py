"""Run a family's LitAPI behind the OpenAI audio spec: limits, errors, devices and signals."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

import litserve as ls

from common import metrics, middleware, scratch
from common.config import ServerConfig, api_servers
from common.errors import install_error_handlers
from common.http import HeaderDeadline
from specs.heartbeat import Heartbeat
from specs.transport import PipeTransport, job_queue

MAX_TMPDIR = 64  # longest temporary folder given to child processes (see `serve`)


def configure_logging(level: str) -> None:
    """Log our loggers' records at `level` and above to stderr, in the calling process."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class _WorkerLogging(ls.Callback):
    """Configure logging in each inference worker before its setup: LitServe starts workers as new
    (spawned) processes, which the server's own logging set-up does not reach."""

    def __init__(self, level: str) -> None:
        self.level = level

    def on_before_setup(self, *args: Any, **kwargs: Any) -> None:
        configure_logging(self.level)


class _Server(ls.LitServer):
    """LitServer with jobs and results on pipes rather than through its Manager (see `specs.transport`)."""

    def _init_manager(self, num_api_servers: int) -> Any:
        manager = super()._init_manager(num_api_servers)
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = job_queue()
        self._transport = PipeTransport.create(num_api_servers)
        return manager


def _stop_on_sigterm() -> None:
    """LitServe shuts down cleanly on SIGINT only; containers and supervisors send SIGTERM.

    Forked uvicorn processes inherit this handler; uvicorn re-raises the signal there once it has
    shut down gracefully, and then they only need to exit.
    """
    main_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            sys.exit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def serve(
    api: ls.LitAPI, config: ServerConfig, accelerator: str, devices: str = "auto", workers_per_device: int = 1
) -> None:
    """Start LitServe with `api` on `devices` ("auto": every one of the accelerator's, or a count) and block
    until SIGINT or SIGTERM."""
    card = api.spec.model  # the OpenAIAudioSpec's model card
    scratch.sweep()
    metrics.setup(card.family)  # before LitServe starts the processes that record metrics
    # This server's temporary folder, gone when it stops: decoded uploads are spooled to audio/ there, and
    # the processes it starts make theirs in it (LitServe's queue manager: a folder with a Unix socket,
    # whose path may not pass 107 bytes, hence a short enough parent or none).
    run = scratch.folder("server")
    if len(str(run)) <= MAX_TMPDIR:
        os.environ["TMPDIR"] = tempfile.tempdir = str(run)
    (spool := run / "audio").mkdir()
    api.spec.limits = dataclasses.replace(api.spec.limits, spool=spool)
    server = _Server(
        api,
        accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices,
        workers_per_device=workers_per_device,
        timeout=config.queue_timeout,
        callbacks=[_WorkerLogging(config.log_level), Heartbeat(run)],
        middlewares=[
            middleware.CancelOnDisconnect,
            *([(middleware.BearerAuth, {"key": config.api_key})] if config.api_key else []),
            (middleware.UploadLimit, {"max_bytes": int(config.max_upload_mb * 1_000_000)}),
            (middleware.RequestMetrics, {"layer": "server", "model": card.id}),
        ],
    )
    install_error_handlers(server.app)
    _stop_on_sigterm()
    try:
        server.run(
            host=config.host,
            port=config.port,
            num_api_servers=api_servers(config, accelerator),
            log_level=config.log_level,
            generate_client_file=False,
            http=HeaderDeadline,
            limit_concurrency=config.max_connections,
        )
    finally:
        shutil.rmtree(run, ignore_errors=True)
        metrics.cleanup()
