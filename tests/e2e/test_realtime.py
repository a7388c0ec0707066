"""The Realtime transcription WebSocket of the router, with a real client streaming corpus speech."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import websockets

from tests.helpers import Clip, ServerProcess, corpus, normalize, wer
from tests.realtime import TRANSCRIPTION, Recording, append_event, encode, silence, stream

API_KEY = "sk-realtime-test"
SESSIONS_PER_KEY = 8
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def router() -> Iterator[ServerProcess]:
    with ServerProcess(
        "servers/router.py",
        "--api-key",
        API_KEY,
        "--realtime-sessions-per-key",
        str(SESSIONS_PER_KEY),
        name="router-realtime",
    ) as server:
        yield server


def ws_url(router: ServerProcess, query: str = "intent=transcription&model=tiny.en") -> str:
    return router.url.replace("http://", "ws://") + "/v1/realtime?" + query


def clips(n: int, start: int = 0) -> list[Clip]:
    """Clips of 3 to 12 s (short enough for few items, long enough for interim text)."""
    return [c for c in corpus("dev") if 3 <= c.duration <= 12][start : start + n]


def ga_session(**turn_detection: float) -> dict:
    audio: dict = {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "tiny.en"}}
    audio["turn_detection"] = {"type": "server_vad", **turn_detection} if turn_detection else {"type": "server_vad"}
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio}}}


def check_items(recording: Recording) -> list[str]:
    """Every item's events are in order with consistent ids; the items' ids, in commit order."""
    types = [e["type"] for _, e in recording.events]
    assert "error" not in types, recording.of("error")
    committed = recording.of("input_audio_buffer.committed")
    ids = [e["item_id"] for e in committed]
    assert len(set(ids)) == len(ids) and all(i.startswith("item_") for i in ids)
    assert [e["previous_item_id"] for e in committed] == [None, *ids[:-1]]
    completed = recording.of(f"{TRANSCRIPTION}.completed")
    assert [e["item_id"] for e in completed] == ids, "items complete in commit order"
    for item in ids:
        mine = [e["type"] for _, e in recording.events if e.get("item_id") == item]
        assert mine[0] == "input_audio_buffer.speech_started"
        assert mine.index("input_audio_buffer.speech_stopped") + 1 == mine.index("input_audio_buffer.committed")
        assert mine[-1] == f"{TRANSCRIPTION}.completed"
        assert set(mine) <= {
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            f"{TRANSCRIPTION}.delta",
            f"{TRANSCRIPTION}.completed",
        }
    for e in completed:
        assert e["content_index"] == 0 and e["usage"]["type"] == "duration" and e["usage"]["seconds"] >= 1
    return ids


def test_server_vad_turns_interim_text_and_final_transcripts(router: ServerProcess) -> None:
    chosen = clips(2)
    pieces = [silence(0.5)]
    for clip in chosen:
        pieces += [encode(clip.path), silence(1.5)]
    session = ga_session(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    recording = asyncio.run(stream(ws_url(router), pieces, session=session, headers=AUTH, speed=4))

    created, updated = recording.events[0][1], recording.of("session.updated")[0]
    assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    turn = updated["session"]["audio"]["input"]["turn_detection"]
    assert turn == {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
    ids = check_items(recording)
    assert len(ids) >= 2
    assert wer([" ".join(c.text for c in chosen)], [recording.transcript]) <= 0.15

    # Interim text arrives while the speaker is still talking, and agrees with the final transcript.
    first = ids[0]
    stopped = next(t for t, e in recording.events if e["type"] == "input_audio_buffer.speech_stopped")
    early = [e["delta"] for t, e in recording.events if e["type"] == f"{TRANSCRIPTION}.delta" and t < stopped]
    assert early, "no delta before the end of the first turn"
    interim = normalize("".join(early)).split()
    final = normalize(recording.of(f"{TRANSCRIPTION}.completed")[0]["transcript"]).split()
    agreed = min(2, len(interim))  # on a busy machine, fewer interim decodes run: maybe one word
    assert interim[:agreed] == final[:agreed]
    assert all(e["item_id"] == first for t, e in recording.events if e["type"].endswith(".delta") and t < stopped)

    # The VAD's times: speech starts after the leading 0.5 s of silence, minus the prefix padding.
    started = recording.of("input_audio_buffer.speech_started")[0]
    assert 0 <= started["audio_start_ms"] <= 1000
    assert recording.of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"] > started["audio_start_ms"] + 1000


def test_eight_sessions_at_once_in_several_formats(router: ServerProcess) -> None:
    chosen = clips(8, start=2)
    rates = [24_000, 16_000] * 4

    async def one(clip: Clip, rate: int) -> Recording:
        session = ga_session()
        session["session"]["audio"]["input"]["format"]["rate"] = rate
        pieces = [silence(0.3, rate), encode(clip.path, rate), silence(1.5, rate)]
        return await stream(ws_url(router), pieces, session=session, headers=AUTH, speed=4, rate=rate, timeout=300)

    async def all_sessions() -> list[Recording]:
        return await asyncio.gather(*(one(c, r) for c, r in zip(chosen, rates, strict=True)))

    recordings = asyncio.run(all_sessions())
    for recording in recordings:
        check_items(recording)
    assert wer([c.text for c in chosen], [r.transcript for r in recordings]) <= 0.15


@pytest.mark.parametrize(("codec", "name"), [("pcm_mulaw", "g711_ulaw"), ("pcm_alaw", "g711_alaw")])
def test_beta_session_g711_and_manual_commit(router: ServerProcess, codec: str, name: str) -> None:
    clip = clips(1, start=10)[0]
    session = {
        "type": "transcription_session.update",
        "session": {
            "input_audio_format": name,
            "input_audio_transcription": {"model": "tiny.en", "language": "en"},
            "turn_detection": None,
            "unknown_field": {"is": "ignored"},
        },
    }

    async def run() -> list[dict]:
        events = []
        async with websockets.connect(ws_url(router, "intent=transcription"), additional_headers=AUTH) as ws:
            events.append(json.loads(await ws.recv()))
            await ws.send(json.dumps(session))
            audio = encode(clip.path, 8000, codec)
            for i in range(0, len(audio), 1600):  # 200 ms appends
                await ws.send(append_event(audio[i : i + 1600]))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while not events[-1]["type"].endswith((".completed", ".failed")):
                events.append(json.loads(await ws.recv()))
        return events

    events = asyncio.run(run())
    types = [e["type"] for e in events]
    assert types[0] == "session.created"
    updated = events[1]
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == name and updated["session"]["turn_detection"] is None
    assert updated["session"]["input_audio_transcription"]["language"] == "en"
    assert "input_audio_buffer.speech_started" not in types and "error" not in types
    assert types[-1] == f"{TRANSCRIPTION}.completed"
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    assert committed["item_id"] == events[-1]["item_id"]
    assert wer([clip.text], [events[-1]["transcript"]]) <= 0.2


def test_client_mistakes_get_error_events_and_the_session_goes_on(router: ServerProcess) -> None:
    sent: list[str | dict] = [
        "not json",
        {"no": "type"},
        {"type": "input_audio_buffer.append", "audio": "***"},
        {"type": "input_audio_buffer.commit"},
        # Unknown fields and unsupported options are ignored, not errors: semantic_vad runs as server VAD.
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}},
                "include": ["item.input_audio_transcription.logprobs"],
                "whatever": 1,
            },
        },
        {"type": "session.update", "session": {"audio": {"input": {"transcription": {"model": "nope"}}}}},
        {"type": "input_audio_buffer.clear"},
        {"type": "response.create"},  # meaningless for transcription: ignored
        {"type": "input_audio_buffer.commit"},
    ]
    expected = [
        "invalid_event",
        "invalid_event",
        "invalid_audio",
        "input_audio_buffer_commit_empty",
        "session.updated",
        "model_not_found",
        "session.updated",
        "input_audio_buffer.cleared",
        "input_audio_buffer_commit_empty",
    ]

    async def run() -> list[dict]:
        async with websockets.connect(ws_url(router), additional_headers=AUTH) as ws:
            await ws.recv()
            for event in sent:
                await ws.send(event if isinstance(event, str) else json.dumps(event))
            return [json.loads(await ws.recv()) for _ in expected]

    replies = asyncio.run(run())
    assert [r["error"]["code"] if r["type"] == "error" else r["type"] for r in replies] == expected
    assert all(r["error"]["message"] and r["error"]["type"] == "invalid_request_error" for r in replies if "error" in r)
    assert replies[4]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert replies[4]["session"]["include"] == ["item.input_audio_transcription.logprobs"]
    assert replies[6]["session"]["audio"]["input"]["transcription"]["model"] == "tiny.en", "the bad model is not taken"


def test_auth_and_session_limits(router: ServerProcess) -> None:
    async def refused(url: str, **kwargs: object) -> tuple[dict, int, str]:
        async with websockets.connect(url, **kwargs) as ws:
            event = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        return event, closed.value.rcvd.code, closed.value.rcvd.reason

    async def run() -> None:
        event, code, reason = await refused(ws_url(router))
        assert (event["error"]["code"], code, reason) == ("invalid_api_key", 1008, "invalid api key")
        event, code, _ = await refused(ws_url(router), additional_headers={"Authorization": "Bearer wrong"})
        assert code == 1008
        event, code, _ = await refused(ws_url(router, "intent=transcription&model=nope"), additional_headers=AUTH)
        assert (event["error"]["code"], code) == ("model_not_found", 1008)

        # A browser cannot set headers: the key as a query parameter or as a subprotocol.
        async with websockets.connect(ws_url(router, f"intent=transcription&api_key={API_KEY}")) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
        async with websockets.connect(ws_url(router), subprotocols=protocols) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"

        # Sessions per key: the next one is refused with 1013 (try again later) until one closes.
        open_sessions = [
            await websockets.connect(ws_url(router), additional_headers=AUTH) for _ in range(SESSIONS_PER_KEY)
        ]
        try:
            event, code, _ = await refused(ws_url(router), additional_headers=AUTH)
            assert (event["error"]["code"], code) == ("rate_limit_exceeded", 1013)
        finally:
            for ws in open_sessions:
                await ws.close()
        await asyncio.sleep(0.5)
        async with websockets.connect(ws_url(router), additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"

    asyncio.run(run())


def test_sessions_end_at_their_maximum_length() -> None:
    with ServerProcess(
        "servers/router.py", "--preload-default", "false", "--realtime-max-session-seconds", "1", name="router-short"
    ) as router:

        async def run() -> tuple[dict, int, str]:
            async with websockets.connect(ws_url(router)) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                event = json.loads(await ws.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
            return event, closed.value.rcvd.code, closed.value.rcvd.reason

        event, code, reason = asyncio.run(run())
    assert (event["error"]["code"], code) == ("session_expired", 1008)
    assert "maximum length" in reason


def test_a_turn_longer_than_the_item_limit_continues_as_new_items() -> None:
    clip = max(clips(20), key=lambda c: c.duration)
    with ServerProcess("servers/router.py", "--realtime-max-item-seconds", "3", name="router-items") as router:
        session = ga_session(silence_duration_ms=2000)  # no pause in the clip ends the turn
        recording = asyncio.run(stream(ws_url(router), [encode(clip.path), silence(3)], session=session, speed=4))
    committed = recording.of("input_audio_buffer.committed")
    completed = recording.of(f"{TRANSCRIPTION}.completed")
    assert len(committed) >= clip.duration // 3 and [e["item_id"] for e in completed] == [
        e["item_id"] for e in committed
    ]
    assert all(e["usage"]["seconds"] <= 4 for e in completed)
    assert wer([clip.text], [recording.transcript]) <= 0.2  # a word cut at an item boundary may be lost


def test_changing_turn_detection_mid_turn_commits_the_turn(router: ServerProcess) -> None:
    clip = clips(1)[0]
    audio = encode(clip.path)
    half = len(audio) // 2 // 2 * 2

    async def run() -> list[dict]:
        events: list[dict] = []
        async with websockets.connect(ws_url(router), additional_headers=AUTH) as ws:

            async def append(data: bytes) -> None:
                for i in range(0, len(data), 9600):
                    await ws.send(append_event(data[i : i + 9600]))

            await append(silence(0.3) + audio[:half])
            manual = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
            await ws.send(json.dumps(manual))
            await append(audio[half:])
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while len([e for e in events if e["type"].endswith((".completed", ".failed"))]) < 2:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        return events

    events = asyncio.run(run())
    committed = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"]
    completed = [e for e in events if e["type"] == f"{TRANSCRIPTION}.completed"]
    assert len(committed) == 2 and [e["item_id"] for e in completed] == committed
    assert wer([clip.text], [" ".join(e["transcript"] for e in completed)]) <= 0.25  # a word may be cut in two
