"""The `/v1/realtime?intent=transcription` WebSocket: who may connect, how many, and for how long.

A key is read from `Authorization: Bearer`, from `?api_key=`, or (browsers cannot set headers) from
the subprotocol `openai-insecure-api-key.<key>`, as OpenAI's browser clients send it. Refusals are
sent as an `error` event followed by a close frame with a standard code and a readable reason:
1008 (policy: bad key, unknown model, session too long), 1013 (try again later: too many sessions).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable

from starlette.websockets import WebSocket

from common.errors import ApiError
from common.middleware import bearer
from router.realtime.protocol import SessionConfig, error_event
from router.realtime.session import DecoderFactory, Limits, Session

logger = logging.getLogger("open_speech.realtime")
KEY_PROTOCOL = "openai-insecure-api-key."


class RealtimeEndpoint:
    def __init__(
        self,
        decoders: Callable[[str | None], DecoderFactory],
        default_model: str,
        api_key: str,
        sessions_per_key: int,
        limits: Limits,
    ) -> None:
        self.decoders = decoders  # model name -> factory of item decoders; raises ApiError if unknown
        self.default_model = default_model
        self.api_key = api_key
        self.sessions_per_key = sessions_per_key
        self.limits = limits
        self.sessions: Counter[str] = Counter()

    async def __call__(self, websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        key = _key(websocket)
        if self.api_key and not secrets.compare_digest(key.encode(), self.api_key.encode()):
            await _refuse(websocket, 1008, "invalid api key", "Incorrect or missing API key.", "invalid_api_key")
            return
        model = websocket.query_params.get("model") or self.default_model
        try:
            self.decoders(model)
        except ApiError as exc:
            await _refuse(websocket, 1008, "model not found", exc.message, exc.code or "model_not_found")
            return
        # Sessions count per key; without keys, per client address (any key a client makes up is no one's).
        holder = key if self.api_key else f"address {websocket.client.host if websocket.client else '?'}"
        if self.sessions[holder] >= self.sessions_per_key:
            whose = "this key" if self.api_key else "this address"
            message = f"Too many realtime sessions for {whose} (at most {self.sessions_per_key}); retry later."
            await _refuse(websocket, 1013, "too many sessions", message, "rate_limit_exceeded")
            return
        self.sessions[holder] += 1
        try:
            await Session(websocket, SessionConfig(model=model), self.decoders, self.limits).run()
        finally:
            self.sessions[holder] -= 1


def _key(websocket: WebSocket) -> str:
    token = bearer(websocket.headers.get("authorization", "").encode())
    if token:
        return token.decode()
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_PROTOCOL):
            return protocol.removeprefix(KEY_PROTOCOL)
    return websocket.query_params.get("api_key", "")


async def _refuse(websocket: WebSocket, code: int, reason: str, message: str, error_code: str) -> None:
    logger.info("realtime connection refused: %s", message)
    await websocket.send_json(error_event(message, error_code))
    await websocket.close(code, reason)
