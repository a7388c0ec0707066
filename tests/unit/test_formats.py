"""Renderers: every response format from one transcript."""

from common.formats import render, timestamp
from common.transcript import Segment, Transcript, Word
from tests.helpers import SEGMENT_FIELDS


def transcript() -> Transcript:
    segments = [
        Segment(id=0, start=0.0, end=2.5, text=" Fish & chips <b>", words=[Word(" Fish", 0.0, 0.4, 0.9)]),
        Segment(id=1, start=3661.25, end=3662.0, text=" a --> b", seek=366100, tokens=[1, 2]),
    ]
    return Transcript.from_segments(segments, "en", 3662.0, "transcribe")


def test_timestamps_past_one_hour() -> None:
    assert timestamp(3661.25, ",") == "01:01:01,250"
    assert timestamp(360000.0, ".") == "100:00:00.000"
    assert timestamp(59.9996, ".") == "00:01:00.000"


def test_srt() -> None:
    assert render(transcript(), "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nFish & chips <b>\n\n2\n01:01:01,250 --> 01:01:02,000\na --> b\n"
    )


def test_vtt_escapes_cue_text() -> None:
    assert render(transcript(), "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nFish &amp; chips &lt;b&gt;\n\n"
        "01:01:01.250 --> 01:01:02.000\na --&gt; b\n"
    )


def test_text_and_json() -> None:
    t = transcript()
    assert t.text == "Fish & chips <b> a --> b"
    assert render(t, "text") == t.text + "\n"
    assert render(t, "json") == {"text": t.text, "usage": {"type": "duration", "seconds": 3662}}


def test_verbose_json_fields() -> None:
    body = render(transcript(), "verbose_json", granularities=frozenset({"word", "segment"}))
    assert set(body) == {"task", "language", "duration", "text", "segments", "words", "usage"}
    assert body["language"] == "english"
    assert set(body["segments"][0]) == SEGMENT_FIELDS
    assert body["words"] == [{"word": "Fish", "start": 0.0, "end": 0.4}]
    words_only = render(transcript(), "verbose_json", granularities=frozenset({"word"}))
    assert "segments" not in words_only and "words" in words_only
