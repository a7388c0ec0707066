"""What a hostile client or web page tries: family servers used behind the router's back, DNS rebinding
and cross-site requests, malformed forms, keys in logs. A real router with an API key, on tiny.en."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import websockets

from tests.e2e.test_errors import assert_openai_error
from tests.helpers import TINY_EN, ServerProcess, corpus, stream_events, write_registry

KEY = "sk-test-9f8e7d6c"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD_ORIGIN = "http://good.example:3000"
CLIP = corpus("dev")[0]
MAX_UPLOAD_MB = 3


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    registry = write_registry(tmp_path_factory.mktemp("security"), TINY_EN)
    args = ("--registry", str(registry), "--cors-origins", GOOD_ORIGIN, "--max-upload-mb", str(MAX_UPLOAD_MB))
    with ServerProcess("servers/router.py", *args, env={"OPEN_SPEECH_API_KEY": KEY}, name="router-security") as r:
        yield r


def family_url(router: ServerProcess) -> str:
    (model,) = httpx.get(router.url + "/api/ps", headers=AUTH).json()["models"]
    return model["url"]


def transcribe(url: str, headers: dict[str, str], **fields: str) -> httpx.Response:
    files = {"file": ("clip.flac", CLIP.path.read_bytes(), "audio/flac")}
    data = {"model": "whisper-1", **fields}
    return httpx.post(url + "/v1/audio/transcriptions", files=files, data=data, headers=headers, timeout=120)


def test_family_servers_answer_only_the_router(router: ServerProcess) -> None:
    family = family_url(router)
    for headers in ({}, AUTH):  # not even with the router's own key: each family server has one of its own
        assert_openai_error(transcribe(family, headers), 401, None, "invalid_api_key")
        for path in ("/v1/models", "/metrics", "/docs", "/openapi.json"):
            assert httpx.get(family + path, headers=headers).status_code == 401, path
    assert httpx.get(family + "/health").status_code == 200  # for probes, as the router's
    assert transcribe(router.url, AUTH).json()["text"]


def test_the_bearer_scheme_is_case_insensitive(router: ServerProcess) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert httpx.get(router.url + "/v1/models", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200
    assert httpx.get(router.url + "/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401


def test_dns_rebinding_and_cross_site_requests_are_refused(router: ServerProcess) -> None:
    port = router.url.rsplit(":", 1)[1]
    evil = {**AUTH, "Origin": "http://evil.example"}
    # A page of evil.example whose name now resolves to this machine: its requests name their own host.
    assert_openai_error(httpx.get(router.url + "/v1/models", headers={**AUTH, "Host": "evil.example"}), 403, None)
    # Any page, sending through its visitor's browser (which holds no key, or the page found one).
    assert_openai_error(httpx.post(router.url + "/api/pull/tiny.en", headers=evil), 403, None, "forbidden")
    assert_openai_error(transcribe(router.url, evil), 403, None, "forbidden")
    assert_openai_error(httpx.delete(router.url + "/api/ps/tiny.en", headers=evil), 403, None, "forbidden")
    assert httpx.get(router.url + "/v1/models", headers=evil).status_code == 200  # reading is not refused
    # The router's own page, and an origin in cors_origins, go on.
    assert transcribe(router.url, {**AUTH, "Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    assert transcribe(router.url, {**AUTH, "Origin": GOOD_ORIGIN}).status_code == 200
    assert httpx.get(router.url + "/health", headers={"Host": f"localhost:{port}"}).status_code == 200

    async def websocket(origin: str) -> None:
        url = router.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
        async with websockets.connect(url, additional_headers={**AUTH, "Origin": origin}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(websocket("http://evil.example"))
    assert refused.value.response.status_code == 403
    asyncio.run(websocket(GOOD_ORIGIN))


BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes], boundary: str = BOUNDARY, end: bool = True) -> bytes:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in parts
    )
    return body + (f"--{boundary}--\r\n".encode() if end else b"")


MALFORMED = {
    "a JSON body": (b'{"model": "whisper-1"}', "application/json", None),
    "multipart without a boundary": (form(("model", b"whisper-1")), "multipart/form-data", None),
    "a wrong boundary": (
        form(("model", b"whisper-1"), boundary="other"),
        MULTIPART,
        None,
    ),
    "a body cut short": (form(("model", b"whisper-1"), end=False), MULTIPART, None),
    "model sent twice": (
        form(("model", b"tiny.en"), ("model", b"nope")),
        MULTIPART,
        "model",
    ),
    "a model 5000 bytes long": (form(("model", b"m" * 5000)), MULTIPART, "model"),
    "2000 fields": (form(*[("x", b"1")] * 2000), MULTIPART, None),
    "a 100 KB part header": (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\nX-Pad: {"p" * 100_000}\r\n\r\nm\r\n'.encode(),
        MULTIPART,
        None,
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_forms_get_400_and_one_log_line(router: ServerProcess, case: str) -> None:
    body, content_type, param = MALFORMED[case]
    before = router.log()
    response = httpx.post(
        router.url + "/v1/audio/transcriptions", content=body, headers={**AUTH, "content-type": content_type}
    )
    assert_openai_error(response, 400, param, "invalid_form")
    assert "Traceback" not in router.log().replace(before, "")
    assert transcribe(router.url, AUTH).json()["text"]


def test_a_chunked_upload_over_the_limit_gets_413_with_its_code(router: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        for _ in range(MAX_UPLOAD_MB + 1):
            yield bytes(1_000_000)

    headers = {**AUTH, "content-type": MULTIPART}
    response = httpx.post(router.url + "/v1/audio/transcriptions", content=chunks(), headers=headers, timeout=60)
    assert_openai_error(response, 413, "file", "file_too_large")


def test_keys_in_urls_stay_out_of_the_log(router: ServerProcess) -> None:
    assert httpx.get(router.url + f"/v1/models?api_key={KEY}", headers=AUTH).status_code == 200
    assert httpx.get(router.url + f"/health?api_key={KEY}").status_code == 200
    log = router.log_path.read_text(errors="replace")
    assert "api_key=***" in log and KEY not in log


def test_a_family_server_alone_answers_a_huge_upload_with_413(tmp_path: Path) -> None:
    """The client sends its whole body before it reads: the server reads what it refused, so that the
    413 reaches the client instead of a reset connection."""
    with ServerProcess("servers/faster_whisper.py", "--max-upload-mb", "5", name="upload-413") as server:
        size = 40_000_000
        body = (bytes(1_000_000) for _ in range(size // 1_000_000))
        headers = {"content-type": MULTIPART, "content-length": str(size)}
        response = httpx.post(server.url + "/v1/audio/transcriptions", content=body, headers=headers, timeout=120)
        assert_openai_error(response, 413, "file", "file_too_large")


def test_realtime_sessions_count_per_address_without_a_key_and_a_client_that_never_reads_is_closed() -> None:
    with ServerProcess(
        "servers/router.py", "--preload-default", "false", "--realtime-sessions-per-key", "2", name="router-open"
    ) as router:
        url = router.url.replace("http", "ws") + "/v1/realtime?intent=transcription"

        async def sessions() -> tuple[dict, int]:
            held = [await websockets.connect(f"{url}&api_key=x{i}") for i in range(2)]  # keys made up: one address
            try:
                async with websockets.connect(f"{url}&api_key=x2") as ws:
                    event = json.loads(await ws.recv())
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await ws.recv()
                return event, closed.value.rcvd.code
            finally:
                for ws in held:
                    await ws.close()

        event, code = asyncio.run(sessions())
        assert (event["error"]["code"], code) == ("rate_limit_exceeded", 1013)

        async def never_reads() -> None:
            # A small receive buffer: the router's sends block after a few of its events, not after megabytes
            # (which a busy machine takes longer to send than the WebSocket's ping timeout allows).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", router.port))
            async with websockets.connect(url, sock=sock, max_queue=1) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(200_000):  # each answered with an error event that is never read
                        await ws.send("x")
                deadline = time.monotonic() + 60
                while "reads none of its" not in router.log() and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)

        asyncio.run(never_reads())
        assert "reads none of its" in router.log()

        async def still_serving() -> str:
            async with websockets.connect(url) as ws:
                return json.loads(await ws.recv())["type"]

        assert asyncio.run(still_serving()) == "session.created"


def test_slow_clients_are_cut_off_and_connections_capped() -> None:
    args = ("--preload-default", "false", "--max-connections", "5")
    with ServerProcess("servers/router.py", *args, name="router-slow") as router:
        address = ("127.0.0.1", router.port)
        with socket.create_connection(address) as unfinished:  # headers that never end
            unfinished.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            unfinished.settimeout(60)
            started = time.monotonic()
            assert unfinished.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 60

        with socket.create_connection(address) as trickle:  # a body at 10 bytes a second
            head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART}\r\n"
            part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            trickle.sendall(head.encode() + b"Content-Length: 100000\r\n\r\n" + part.encode())
            trickle.settimeout(0.1)
            answer = b""
            for _ in range(900):
                with contextlib.suppress(TimeoutError):
                    trickle.sendall(b"x" * 10)
                    answer += trickle.recv(4096)
                if b"\r\n\r\n" in answer:
                    break
                time.sleep(0.9)
            assert answer.startswith(b"HTTP/1.1 408") and b"upload_too_slow" in answer

        idle = [socket.create_connection(address) for _ in range(5)]
        try:
            assert httpx.get(router.url + "/health").status_code == 503
        finally:
            for connection in idle:
                connection.close()
        time.sleep(0.5)
        assert httpx.get(router.url + "/health").status_code == 200


def test_a_hung_family_server_is_answered_with_503_and_restarted(tmp_path: Path) -> None:
    """SIGSTOP a family server's whole process tree mid-stream: its /health stops answering, the router
    kills it after hang_seconds, the client's stream ends with an error, and the next request restarts it."""
    long_clip = min(corpus("long"), key=lambda c: c.duration)
    registry = write_registry(tmp_path, TINY_EN)
    with ServerProcess(
        "servers/router.py", "--registry", str(registry), "--hang-seconds", "4", name="router-hung"
    ) as r:
        (model,) = httpx.get(r.url + "/api/ps").json()["models"]
        stopped_at: list[float] = []

        def stop_the_family() -> None:
            if not stopped_at:  # at the first event: the family server is decoding
                os.killpg(model["pid"], signal.SIGSTOP)
                stopped_at.append(time.monotonic())

        events = stream_events(r, long_clip.path, "whisper-1", timeout=120, on_event=stop_the_family)
        last = events[-1][1]
        assert last["error"]["code"] == "model_unavailable"
        assert time.monotonic() - stopped_at[0] < 60
        assert "has not answered its health check" in r.log()
        assert transcribe(r.url, {}).json()["text"]  # restarted
        (restarted,) = httpx.get(r.url + "/api/ps").json()["models"]
        assert restarted["pid"] != model["pid"]


def test_a_standalone_family_server_reports_a_stopped_worker() -> None:
    with ServerProcess("servers/faster_whisper.py", "--hang-seconds", "3", name="worker-stopped") as server:
        (worker,) = [
            p
            for p in psutil.Process(server.process.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())
        ]
        worker.suspend()
        try:
            deadline = time.monotonic() + 30
            while httpx.get(server.url + "/health").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert httpx.get(server.url + "/health").status_code == 503
        finally:
            worker.resume()
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert httpx.get(server.url + "/health").status_code == 200
