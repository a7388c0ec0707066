"""Renderers for every OpenAI `response_format`, from one `Transcript`."""

from __future__ import annotations

import math
from typing import Any, Literal

from common.languages import language_name
from common.transcript import Segment, Transcript

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
# The formats that can say who spoke (diarized_json always; the others when the client sends diarize=true).
SPEAKER_FORMATS = frozenset({"diarized_json", "verbose_json", "srt", "vtt"})
Granularity = Literal["word", "segment"]


def usage(duration: float) -> dict[str, Any]:
    """OpenAI's duration-based usage: billed audio seconds."""
    return {"type": "duration", "seconds": math.ceil(duration)}


def render_json(t: Transcript, *, include_logprobs: bool = False, with_languages: bool = False) -> dict[str, Any]:
    """`logprobs` as the family scored them (tokens, or words); `languages`, when the client named
    candidates, is the detected one (none where the family cannot tell)."""
    body: dict[str, Any] = {"text": t.text}
    if include_logprobs:
        body["logprobs"] = [p.to_json() for p in t.logprobs]
    if with_languages:
        body["languages"] = languages(t)
    body["usage"] = usage(t.duration)
    return body


def languages(t: Transcript) -> list[dict[str, str]]:
    return [{"code": t.language}] if t.language else []


def render_verbose_json(
    t: Transcript, granularities: frozenset[str] = frozenset(), *, with_languages: bool = False
) -> dict[str, Any]:
    """verbose_json with OpenAI's exact fields; segments unless only words were asked for."""
    body: dict[str, Any] = {
        "task": t.task,
        "language": language_name(t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": s.id,
                "seek": s.seek,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
                **_speaker(s.speaker),
            }
            for s in t.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3), **_speaker(w.speaker)}
            for w in t.words
        ]
    if with_languages:
        body["languages"] = languages(t)
    body["usage"] = usage(t.duration)
    return body


def _speaker(speaker: str | None) -> dict[str, str]:
    return {} if speaker is None else {"speaker": speaker}


def diarized_segment(s: Segment) -> dict[str, Any]:
    """OpenAI's diarized segment, also the body of a `transcript.text.segment` stream event."""
    return {
        "type": "transcript.text.segment",
        "id": f"seg_{s.id}",
        "start": round(s.start, 3),
        "end": round(s.end, 3),
        "text": s.text.strip(),
        "speaker": s.speaker or "",
    }


def render_diarized_json(t: Transcript) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [diarized_segment(s) for s in t.segments],
        "usage": usage(t.duration),
    }


def render_text(t: Transcript) -> str:
    return t.text + "\n"


def timestamp(seconds: float, decimal: str) -> str:
    """HH:MM:SS<decimal>mmm, with hours growing past 99 rather than wrapping."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def render_srt(t: Transcript) -> str:
    """Speakers, where known, open their cues as `[A] `: SRT has no voice markup of its own."""
    cues = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n"
        f"{'' if s.speaker is None else f'[{s.speaker}] '}{s.text.strip()}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(cues)


def vtt_escape(text: str) -> str:
    """Cue text may not hold raw '&', '<' or '>' (nor so the '-->' marker)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(t: Transcript) -> str:
    """Speakers, where known, as WebVTT voice spans: `<v A>text`."""
    cues = [
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n"
        f"{'' if s.speaker is None else f'<v {vtt_escape(s.speaker)}>'}{vtt_escape(s.text.strip())}\n"
        for s in t.segments
    ]
    return "\n".join(["WEBVTT\n", *cues])


def render(
    t: Transcript,
    response_format: str,
    *,
    granularities: frozenset[str] = frozenset(),
    include_logprobs: bool = False,
    with_languages: bool = False,
) -> dict[str, Any] | str:
    """The response body: a dict for the JSON formats, text for the others."""
    if response_format == "json":
        return render_json(t, include_logprobs=include_logprobs, with_languages=with_languages)
    if response_format == "verbose_json":
        return render_verbose_json(t, granularities, with_languages=with_languages)
    if response_format == "text":
        return render_text(t)
    if response_format == "srt":
        return render_srt(t)
    if response_format == "vtt":
        return render_vtt(t)
    if response_format == "diarized_json":
        return render_diarized_json(t)
    raise ValueError(f"unknown response_format {response_format!r}")
