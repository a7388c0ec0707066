"""One Realtime transcription connection: client events in, turns found, items transcribed, events out.

Audio appended by the client is decoded to 16 kHz and, with server VAD, scored frame by frame. A turn
opens an item when speech starts (its audio reaching `prefix_padding_ms` back) and commits it when
the silence has lasted `silence_duration_ms`; without VAD an item opens at the first audio and is
committed by `input_audio_buffer.commit`.

Each item has a task that asks its `ItemDecoder` for interim text every `interim_seconds` of new
audio. With VAD, the item's audio ends `vad.TAIL_MS` into the silence (the "pause"); audio after it is
held back, and the final transcript is decoded at once, speculatively, while the silence window runs
out: if speech resumes, the held audio joins the item and the speculation's text serves as interim
text; if the turn ends, the speculation is the final transcript, ready (or nearly) when the item is
committed. Items complete in the order they were committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from common.audio import SAMPLE_RATE
from common.errors import ApiError
from router.realtime.audio import InputDecoder
from router.realtime.protocol import SessionConfig, error_event, new_id
from router.realtime.recognizers import Decoded, ItemDecoder
from router.realtime.vad import Boundary, TurnDetector

logger = logging.getLogger("open_speech.realtime")

TRANSCRIPTION = "conversation.item.input_audio_transcription"
# What a model name resolves to: makes the decoder of an item (loading the model if need be).
DecoderFactory = Callable[[SessionConfig], Awaitable[ItemDecoder]]


@dataclass(frozen=True)
class Limits:
    max_session_seconds: float = 3600.0
    max_item_seconds: float = 60.0  # a longer turn is committed there and continues as a new item
    interim_seconds: float = 0.5  # new audio between interim decodes


MAX_OUTBOX = 1000  # events waiting for a client that does not read them; then the session is closed (1008)


class _Stalled(Exception):
    """The client has left `MAX_OUTBOX` events unread."""


PAUSE = "pause"  # item queue marker: the turn may end here
COMMIT = "commit"  # item queue marker: the item is committed


@dataclass
class Item:
    id: str
    start: int  # first sample, in the session's 16 kHz timeline
    queue: asyncio.Queue[np.ndarray | str] = field(default_factory=asyncio.Queue)
    samples: int = 0
    task: asyncio.Task | None = None


class Session:
    def __init__(
        self,
        websocket: WebSocket,
        config: SessionConfig,
        decoders: Callable[[str | None], DecoderFactory],
        limits: Limits,
    ) -> None:
        self.ws = websocket
        self.config = config
        self.decoders = decoders  # model name (None: the session's default) -> decoder factory
        self.limits = limits
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MAX_OUTBOX)
        self.stalled = asyncio.Event()  # the outbox is full: the client reads nothing
        self.decoder = InputDecoder(config.input_format)
        self.vad = TurnDetector(config.turn_detection) if config.turn_detection else None
        self.recent = np.zeros(0, np.float32)  # audio not in an item, kept for the prefix padding
        self.holding = False  # between a pause and the end of the turn (or the speech resuming)
        self.held: list[np.ndarray] = []  # the audio since the pause: the item's if speech resumes
        self.samples = 0  # 16 kHz samples received in all
        self.item: Item | None = None  # the open (not yet committed) item
        self.previous_id: str | None = None  # the last committed item
        self.completed = asyncio.Event()  # the last committed item has sent its final events
        self.completed.set()
        self.tasks: set[asyncio.Task] = set()

    # ---- the connection -----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until the client leaves or the session reaches its maximum length."""
        sender = asyncio.create_task(self._send_events())
        self.send(self.config.session_event("created"))
        try:
            async with asyncio.timeout(self.limits.max_session_seconds):
                while True:
                    message = await self._receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    self.handle(message.get("text"))
        except _Stalled:
            logger.warning("realtime session closed: its client reads none of its %d waiting events", MAX_OUTBOX)
            sender.cancel()
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError):
                await asyncio.wait_for(self.ws.close(1008, "the client does not read its events"), 5)
        except TimeoutError:
            seconds = int(self.limits.max_session_seconds)
            self.send(error_event(f"The session reached its maximum length of {seconds} s.", "session_expired"))
            self.outbox.put_nowait(None)
            await sender
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await self.ws.close(1008, f"session reached its maximum length ({seconds} s)")
        except WebSocketDisconnect:
            pass
        finally:
            for task in self.tasks:
                task.cancel()
            sender.cancel()

    def send(self, event: dict[str, Any]) -> None:
        try:
            self.outbox.put_nowait({"event_id": new_id("event"), **event})
        except asyncio.QueueFull:
            self.stalled.set()  # the connection is closed (see `run`)

    async def _receive(self) -> dict[str, Any]:
        """The client's next message; `_Stalled` once it has left `MAX_OUTBOX` events unread."""
        receiving = asyncio.ensure_future(self.ws.receive())
        stalled = asyncio.ensure_future(self.stalled.wait())
        await asyncio.wait({receiving, stalled}, return_when=asyncio.FIRST_COMPLETED)
        stalled.cancel()
        if self.stalled.is_set():  # even with a message in hand: a client that keeps sending is no excuse
            receiving.cancel()
            raise _Stalled
        return receiving.result()

    async def _send_events(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left: nothing to tell it
            while (event := await self.outbox.get()) is not None:
                await self.ws.send_text(json.dumps(event))

    # ---- client events ------------------------------------------------------------------------
    def handle(self, text: str | None) -> None:
        try:
            event = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.send(error_event("Send JSON text events with a 'type'.", "invalid_event"))
            return
        kind = event["type"]
        if kind in ("session.update", "transcription_session.update"):
            self._update(event)
        elif kind == "input_audio_buffer.append":
            self._append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            self._commit_by_client()
        elif kind == "input_audio_buffer.clear":
            self._clear()
        # Other event types (response.create, conversation.item.*) have no meaning for transcription.

    def _update(self, event: dict[str, Any]) -> None:
        try:
            config = self.config.updated(event)
        except ApiError as exc:
            self.send(error_event(exc.message, exc.code or "invalid_value", param=exc.param))
            return
        if config.model != self.config.model:
            try:
                self.decoders(config.model)
            except ApiError as exc:
                self.send(error_event(exc.message, exc.code or "model_not_found", param="model"))
                config = replace(config, model=self.config.model)
        if config.input_format != self.config.input_format:
            self.decoder = InputDecoder(config.input_format)
        if config.turn_detection != self.config.turn_detection:
            self.vad = TurnDetector(config.turn_detection) if config.turn_detection else None
            if self.item is not None:  # a turn under way ends here: the new detector starts afresh
                self._commit()
        self.config = config
        self.send(config.session_event("updated"))

    def _append(self, data: Any) -> None:
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            self.send(error_event("'audio' must be base64-encoded audio.", "invalid_audio", param="audio"))
            return
        audio = self.decoder.decode(raw)
        start = self.samples
        self.samples += len(audio)
        if self.vad is None:
            self._to_item(audio, start)
            return
        position = 0
        for boundary in self.vad.push(audio):
            # A boundary can lie in audio already routed (the VAD scores whole 32 ms frames): cut no earlier.
            cut = max(boundary.sample - start, position)
            self._route(audio[position:cut], start + position)
            position = cut
            self._boundary(boundary, start + position)
        self._route(audio[position:], start + position)

    def _boundary(self, boundary: Boundary, at: int) -> None:
        if boundary.kind == "start":
            self._speech_started(at)
            return
        if self.item is None:  # the buffer was cleared during this turn
            return
        if boundary.kind == "pause":
            self.holding = True
            self.item.queue.put_nowait(PAUSE)
            return
        held = self._release_held()
        if boundary.kind == "resume":
            self._to_item(held, at - len(held))
        else:
            self._speech_stopped(boundary.speech_end)
            self._route(held, at)

    def _release_held(self) -> np.ndarray:
        held = np.concatenate(self.held) if self.held else np.zeros(0, np.float32)
        self.holding, self.held = False, []
        return held

    def _route(self, audio: np.ndarray, at: int) -> None:
        """Audio starting at sample `at`: to the open item, held after a pause, or kept as prefix padding."""
        if self.holding:
            self.held.append(audio)
        elif self.item is not None:
            self._to_item(audio, at)
        else:
            turn = self.config.turn_detection
            keep = turn.prefix_padding_ms * SAMPLE_RATE // 1000 if turn else 0
            self.recent = np.concatenate([self.recent, audio])[-keep:] if keep else self.recent[:0]

    def _to_item(self, audio: np.ndarray, at: int) -> None:
        if not len(audio):
            return
        if self.item is None:
            self._open(at)
        item = self.item
        item.queue.put_nowait(audio)
        item.samples += len(audio)
        if item.samples >= self.limits.max_item_seconds * SAMPLE_RATE:
            # A turn this long is cut: committed here, continued as a new item.
            self._commit()
            if self.vad is not None and self.vad.speaking:
                self._speech_started(at + len(audio), padded=False)

    # ---- turns and items ----------------------------------------------------------------------
    def _speech_started(self, sample: int, padded: bool = True) -> None:
        """Speech from `sample` on: open an item that starts with the kept prefix padding."""
        padding = self.recent if padded else self.recent[:0]
        item = self._open(sample - len(padding))
        self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": _ms(item.start), "item_id": item.id})
        self.recent = self.recent[:0]
        if len(padding):
            item.queue.put_nowait(padding)
            item.samples += len(padding)

    def _speech_stopped(self, speech_end: int) -> None:
        item = self.item
        self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": _ms(speech_end), "item_id": item.id})
        self._commit()

    def _open(self, start: int) -> Item:
        item = Item(id=new_id("item"), start=start)
        self.item = item
        previous_completed = self.completed
        self.completed = done = asyncio.Event()
        try:
            factory = self.decoders(self.config.model)
        except ApiError as exc:  # the model was unloaded from the registry since: fail this item
            factory, failure = None, exc
        else:
            failure = None
        item.task = self._spawn(self._transcribe(item, factory, failure, previous_completed, done))
        return item

    def _commit_by_client(self) -> None:
        if self.item is None or self.item.samples < SAMPLE_RATE // 10:
            self.send(
                error_event(
                    "Error committing input audio buffer: the buffer holds less than 100 ms of audio.",
                    "input_audio_buffer_commit_empty",
                )
            )
            return
        self._commit()

    def _commit(self) -> None:
        item, self.item = self.item, None
        if self.holding:  # a commit by the client during a pause: the held audio is the item's
            item.queue.put_nowait(self._release_held())
        self.send({"type": "input_audio_buffer.committed", "previous_item_id": self.previous_id, "item_id": item.id})
        self.previous_id = item.id
        item.queue.put_nowait(COMMIT)

    def _clear(self) -> None:
        item, self.item = self.item, None
        if item is not None and item.task is not None:
            item.task.cancel()
        self.recent = self.recent[:0]
        self._release_held()
        self.send({"type": "input_audio_buffer.cleared"})

    def _spawn(self, coroutine: Any) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _transcribe(
        self,
        item: Item,
        factory: DecoderFactory | None,
        failure: ApiError | None,
        previous_completed: asyncio.Event,
        done: asyncio.Event,
    ) -> None:
        """The item's events: interim deltas while it is open, then (in commit order) its last delta and
        `completed`, or `failed`."""
        try:
            try:
                if factory is None:
                    raise failure or ApiError(500, "No model to transcribe with.")
                decoder = await factory(self.config)
                decoded = await self._decode(item, decoder)
            except Exception as exc:
                if not isinstance(exc, ApiError):
                    logger.exception("realtime transcription failed")
                    exc = ApiError(500, "The transcription failed.", code="transcription_failed")
                await previous_completed.wait()
                error = {"type": "server_error", "code": exc.code, "message": exc.message, "param": None}
                self.send({"type": f"{TRANSCRIPTION}.failed", "item_id": item.id, "content_index": 0, "error": error})
                return
            await previous_completed.wait()
            self._delta(item, decoder.close(decoded.text))
            self.send(
                {
                    "type": f"{TRANSCRIPTION}.completed",
                    "item_id": item.id,
                    "content_index": 0,
                    "transcript": decoded.text,
                    **({"logprobs": decoded.logprobs} if decoded.logprobs is not None else {}),
                    "usage": {"type": "duration", "seconds": math.ceil(item.samples / SAMPLE_RATE)},
                }
            )
        finally:
            done.set()

    async def _decode(self, item: Item, decoder: ItemDecoder) -> Decoded:
        """Feed the item's audio to `decoder` as it comes, with interim decodes; its final transcript."""
        interim: asyncio.Task | None = None
        speculation: asyncio.Task | None = None
        new = 0  # samples added since the last interim decode
        try:
            while (message := await item.queue.get()) is not COMMIT:
                if message is PAUSE:
                    if decoder.speculative:
                        speculation = asyncio.create_task(decoder.final())
                    continue
                decoder.add(message)
                new += len(message)
                if speculation is not None:
                    # Speech resumed: the turn goes on. The speculative decode, of the turn up to the
                    # pause, is not wasted: it gives the next interim text.
                    if interim is None or interim.done():
                        new = 0
                        interim = asyncio.create_task(self._interim(item, decoder, speculation))
                    else:
                        speculation.cancel()
                    speculation = None
                if new >= self.limits.interim_seconds * SAMPLE_RATE and (interim is None or interim.done()):
                    new = 0
                    interim = asyncio.create_task(self._interim(item, decoder))
            if interim is not None:
                if decoder.speculative:
                    interim.cancel()  # the final decode supersedes it
                await asyncio.gather(interim, return_exceptions=True)
            return await (speculation or decoder.final())
        finally:
            for task in (interim, speculation):
                if task is not None and not task.done():
                    task.cancel()

    async def _interim(self, item: Item, decoder: ItemDecoder, decoding: Awaitable[Decoded] | None = None) -> None:
        try:
            self._delta(item, await decoder.interim(decoding))
        except ApiError as exc:
            logger.warning("interim transcription failed: %s", exc.message)

    def _delta(self, item: Item, text: str) -> None:
        if text:
            self.send({"type": f"{TRANSCRIPTION}.delta", "item_id": item.id, "content_index": 0, "delta": text})


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE
