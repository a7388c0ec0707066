"""The bundled diarizer's turns: a pause in one speaker's speech is theirs when VAD, hearing the pause
alone, finds speech in most of it (`_heard_alone`), and parts their turn when it is silence."""

from __future__ import annotations

import numpy as np
from faster_whisper import decode_audio

from common.audio import SAMPLE_RATE
from servers.diarization import HOP, _heard_alone, _turns
from tests.helpers import CORPUS


def test_a_pause_holds_quiet_speech_only_when_vad_hears_most_of_it_alone() -> None:
    speech = decode_audio(str(CORPUS / "dev" / "audio" / "1089-134686-0001.flac"))  # 3.3 s
    silence = np.zeros(2 * SAMPLE_RATE, np.float32)
    pauses = {
        "speech": (speech, True),
        "silence": (silence, False),
        "a second of speech in six": (np.concatenate([silence, speech[:SAMPLE_RATE], silence, silence]), False),
    }
    for name, (pause, quiet) in pauses.items():
        audio = np.concatenate([speech, pause, speech])
        regions = [(0, speech.size), (speech.size + pause.size, audio.size)]
        expected = {(-(-speech.size // HOP), (speech.size + pause.size) // HOP)} if quiet else set()
        assert _heard_alone(audio, regions) == expected, name


def test_one_speakers_stretches_across_a_quiet_pause_are_one_turn() -> None:
    pieces = [(0, 300, 0), (600, 900, 0), (1000, 1200, 1)]  # frames: speaker 0 twice, then speaker 1
    assert _turns(pieces, 1300, frozenset()) == [(0, 325, 0), (575, 925, 0), (975, 1225, 1)]
    assert _turns(pieces, 1300, frozenset({(300, 600)})) == [(0, 925, 0), (975, 1225, 1)]
    # Between two speakers, a pause of quiet speech is still nobody's.
    assert _turns(pieces, 1300, frozenset({(900, 1000)})) == [(0, 325, 0), (575, 925, 0), (975, 1225, 1)]
