"""Language detection and translation, with a real multilingual Whisper (base)."""

from __future__ import annotations

from functools import cache

import openai
from faster_whisper import WhisperModel, decode_audio

from common.languages import language_name
from servers.faster_whisper import FALLBACK_TEMPERATURES
from tests.helpers import Clip, corpus, multilingual_whisper

CLIPS = corpus("multilingual")
ONE_PER_LANGUAGE = list({c.language: c for c in CLIPS if "+" not in c.language}.values())
SPANISH = next(c for c in CLIPS if c.language == "es")


@cache
def inprocess() -> WhisperModel:
    return WhisperModel(str(multilingual_whisper()), device="cpu", compute_type="int8")


def inprocess_text(clip: Clip, **options: object) -> str:
    settings = {"beam_size": 1, "temperature": FALLBACK_TEMPERATURES, **options}
    segments, _ = inprocess().transcribe(decode_audio(str(clip.path)), **settings)
    return "".join(s.text for s in segments).strip()


def test_language_detection(multilingual_client: openai.OpenAI) -> None:
    assert len(ONE_PER_LANGUAGE) >= 8
    detected = {}
    for clip in ONE_PER_LANGUAGE:
        with clip.path.open("rb") as f:
            result = multilingual_client.audio.transcriptions.create(
                model="whisper-base", file=f, response_format="verbose_json"
            )
        detected[clip.language] = result.language
    assert detected == {code: language_name(code) for code in detected}


# Temperature 0 below: with the fallback schedule, whisper-base falls back to sampling on this clip
# (temperature 1.0), whose output is random on both sides.


def test_transcription_in_the_spoken_language_equals_in_process(multilingual_client: openai.OpenAI) -> None:
    with SPANISH.path.open("rb") as f:
        result = multilingual_client.audio.transcriptions.create(
            model="whisper-base", file=f, language="es", temperature=0
        )
    assert result.text == inprocess_text(SPANISH, language="es", temperature=0.0)


def test_translation_to_english_equals_in_process(multilingual_client: openai.OpenAI) -> None:
    with SPANISH.path.open("rb") as f:
        result = multilingual_client.audio.translations.create(model="whisper-base", file=f, temperature=0)
    expected = inprocess_text(SPANISH, task="translate", temperature=0.0)
    assert result.text == expected
    assert expected != inprocess_text(SPANISH, temperature=0.0)  # a translation, not the Spanish text


def test_models_list_languages_and_translation(multilingual_client: openai.OpenAI) -> None:
    model = multilingual_client.models.retrieve("whisper-base").model_dump()
    assert model["capabilities"]["translate"] is True
    assert {"es", "de", "ja", "zh"} <= set(model["languages"])
