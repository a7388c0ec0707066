"""The bundled diarizer (`servers/diarization.py`) against exact speaker times, in process.

    .venv/bin/python -m bench.diarization [--repeats 3] [--no-whisper] [--no-encoder] [--no-server]

Recordings with known speakers and exact turn times:

1. dev: `long/multispeaker_dev_concat.flac` (255 s, 5 speakers: LibriSpeech 1089 and 2412, VCTK p225
   and p226, one MFA speaker recorded twice), its manifest's `segments`.
2. untranscribed, seed 0: built here from `untranscribed/` (LibriSpeech test-other): 4 speakers' clips,
   5 each, interleaved so that the speaker changes at every clip, with 0.5-1 s gaps. Then two more
   draws (4 and 6 speakers) and `long/`'s LJSpeech file (one speaker), to see that the settings hold.

For each: the diarization error rate (missed speech + false alarm + confusion over reference speech, on
10 ms frames, the best one-to-one mapping of found speakers to true ones, frames within 0.25 s of a
reference boundary not scored: NIST md-eval's `-c 0.25`, pyannote.metrics' collar=0.5), the number of
speakers found, and, with every speaker enrolled from a 2-10 s reference, the share of scored speech
time labelled with the right name. References come from clips outside the conversation where there
are any (untranscribed); the dev speakers have no clips outside it, so theirs are cut from clips in
it and those stretches are left out of the score.

The encoder: the largest difference between the numpy encoder's embeddings and real resemblyzer's (torch,
librosa; `embed_utterance` of `normalize_volume`d audio, as resemblyzer preprocesses it) on a few clips,
when torch and librosa are installed (the test environment has both). Target: at most 1e-4.

Then the cost: CPU and wall seconds of diarize() on the dev file (median of --repeats), beside what
in-process faster-whisper tiny.en (int8, 2 threads, beam 5) takes to transcribe it. Targets: DER at
most 10 % and exactly 5 speakers on dev, at least 95 % named right, diarize() at most ~30 % of tiny.en.

Last, what a client waits: the dev file sent to a router on the shipped registry (tiny.en as whisper-1,
the bundled diarizer) as `json`, as `verbose_json` with word timestamps (what diarized_json asks of the
model) and as `diarized_json`, in turn, --repeats times each after one of each to load both models.
Target: diarized_json at most 1.3x the time of json. And naming as a client sees it: the dev file as
diarized_json with four speakers enrolled (OpenAI's limit), once leaving out each of the two LibriSpeech
speakers, scored over the enrolled speakers' speech with the segments as turns.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from dataclasses import dataclass

import httpx
import numpy as np
from faster_whisper import decode_audio

from common.audio import SAMPLE_RATE
from common.speakers import Turn
from servers.diarization import BundledDiarizer
from tests.helpers import CORPUS, FRAME, ServerProcess, data_url, der, scored_frames, speaker_frames

DER_TARGET = 0.10
NAMED_TARGET = 0.95
COST_TARGET = 0.30  # diarize() time over tiny.en's
SERVED_TARGET = 1.3  # diarized_json's time over json's, through the router
DEV_FILE = CORPUS / "long" / "audio" / "multispeaker_dev_concat.flac"
# Enrolment references for the dev speakers: (clip, first second, last second), each inside the conversation.
DEV_REFERENCES = {
    "LS-1089": ("1089-134691-0001", 0.0, 5.415),
    "LS-2412": ("2412-153948-0001", 0.0, 8.0),
    "VCTK-p225": ("p225_003", 0.0, 6.01),
    "VCTK-p226": ("p226_003", 0.0, 6.81),
    "MFA-spk1": ("acoustic_corpus", 0.0, 8.0),
}
CLIPS_EACH = 5  # clips of each speaker in an untranscribed conversation


@dataclass
class Conversation:
    name: str
    audio: np.ndarray
    truth: list[Turn]
    references: dict[str, np.ndarray]  # speaker: enrolment audio
    unscored: list[tuple[float, float]]  # where references were cut from: not scored for naming


def manifest(folder: str) -> list[dict]:
    return [json.loads(line) for line in (CORPUS / folder / "manifest.jsonl").read_text().splitlines()]


def dev_conversation() -> Conversation:
    entry = next(e for e in manifest("long") if e["audio"].endswith("multispeaker_dev_concat.flac"))
    truth = [Turn(s["start"], s["end"], s["speaker"]) for s in entry["segments"]]
    audio = decode_audio(str(CORPUS / "long" / entry["audio"]))
    starts = {s["id"]: s["start"] for s in entry["segments"]}
    references, unscored = {}, []
    for speaker, (clip, first, last) in DEV_REFERENCES.items():
        at = starts[clip]
        references[speaker] = audio[round((at + first) * SAMPLE_RATE) : round((at + last) * SAMPLE_RATE)]
        unscored.append((at + first, at + last))
    return Conversation("dev (5 speakers)", audio, truth, references, unscored)


def untranscribed_conversation(count: int, seed: int) -> Conversation:
    """`count` speakers drawn at random; for each, its first 2-10 s clip is its reference and CLIPS_EACH
    others are its turns; rounds of one clip per speaker, in an order that never repeats a speaker."""
    rng = np.random.default_rng(seed)
    clips: dict[str, list[dict]] = {}
    for entry in manifest("untranscribed"):
        clips.setdefault(entry["speaker"], []).append(entry)
    speakers = sorted(rng.choice(sorted(clips), count, replace=False).tolist())
    references, turns = {}, {}
    for speaker in speakers:
        reference = next(e for e in clips[speaker] if 2 <= e["duration"] <= 10)
        references[speaker] = decode_audio(str(CORPUS / "untranscribed" / reference["audio"]))
        turns[speaker] = [e for e in clips[speaker] if e is not reference][:CLIPS_EACH]
    order: list[str] = []
    for _ in range(CLIPS_EACH):
        round_ = rng.permutation(speakers).tolist()
        if order and round_[0] == order[-1]:
            round_.reverse()
        order += round_
    pieces, truth, at = [], [], 0.0
    for speaker in order:
        clip = decode_audio(str(CORPUS / "untranscribed" / turns[speaker].pop(0)["audio"]))
        gap = np.zeros(round(rng.uniform(0.5, 1.0) * SAMPLE_RATE), np.float32)
        truth.append(Turn(at, at + clip.size / SAMPLE_RATE, speaker))
        pieces += [clip, gap]
        at += (clip.size + gap.size) / SAMPLE_RATE
    audio = np.concatenate(pieces[:-1])
    return Conversation(f"untranscribed, seed {seed} ({count} speakers)", audio, truth, references, [])


def one_speaker() -> Conversation:
    """`long/`'s other file: 234 s of one reader (LJSpeech), to be found as one speaker."""
    entry = next(e for e in manifest("long") if not e["audio"].endswith("multispeaker_dev_concat.flac"))
    audio = decode_audio(str(CORPUS / "long" / entry["audio"]))
    return Conversation("LJSpeech (1 speaker)", audio, [Turn(0.0, entry["duration"], "LJ")], {}, [])


def named_right(
    conversation: Conversation, turns: list[Turn], enrolled: list[str] | None = None
) -> tuple[float, float]:
    """Shares of scored reference speech frames (of the `enrolled` speakers: all by default) whose turn
    carries that speaker's name: of all of them, and of those that any turn covers (what VAD missed left
    out)."""
    count = round(conversation.audio.size / SAMPLE_RATE / FRAME) + 1
    names: dict[str, int] = {}
    ref = speaker_frames(conversation.truth, count, names)
    hyp = speaker_frames(turns, count, names)
    speakers = [names[speaker] for speaker in enrolled or conversation.references]
    keep = scored_frames(conversation.truth, count) & np.isin(ref, speakers)
    for start, end in conversation.unscored:
        keep[round(start / FRAME) : round(end / FRAME)] = False
    right = ref[keep] == hyp[keep]
    return float(np.mean(right)), float(np.mean(right[hyp[keep] >= 0]))


def encoder_difference(diarizer: BundledDiarizer) -> tuple[float, int] | None:
    """Largest absolute difference of the numpy encoder's embeddings from real resemblyzer's, and the clip
    count; None without torch and librosa."""
    if not all(importlib.util.find_spec(name) for name in ("torch", "librosa")):
        return None
    sys.modules.setdefault("webrtcvad", types.ModuleType("webrtcvad"))  # only its unused silence trimming needs it
    from resemblyzer import VoiceEncoder, normalize_volume

    encoder = VoiceEncoder("cpu", verbose=False)
    clips = [("dev", clip) for clip in manifest("dev")[::8]]
    clips += [("untranscribed", clip) for clip in manifest("untranscribed")[::20]]
    worst = 0.0
    for folder, clip in clips:
        audio = decode_audio(str(CORPUS / folder / clip["audio"]))
        reference = encoder.embed_utterance(normalize_volume(audio, -30, increase_only=True))
        worst = max(worst, float(np.abs(diarizer._utterance(audio) - reference).max()))
    return worst, len(clips)


def whisper_seconds(audio: np.ndarray) -> tuple[float, float]:
    """CPU and wall seconds of in-process tiny.en (int8, 2 threads, beam 5) transcribing `audio`."""
    from faster_whisper import WhisperModel

    from servers.faster_whisper import model_path

    model = WhisperModel(model_path("bundled"), device="cpu", compute_type="int8", cpu_threads=2)
    cpu, wall = time.process_time(), time.perf_counter()
    list(model.transcribe(audio, language="en", beam_size=5)[0])
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-whisper", action="store_true", help="skip timing tiny.en")
    parser.add_argument("--no-encoder", action="store_true", help="skip comparing with real resemblyzer")
    parser.add_argument("--no-server", action="store_true", help="skip timing requests through a router")
    args = parser.parse_args()

    diarizer = BundledDiarizer()
    conversations = [dev_conversation(), untranscribed_conversation(4, 0)]
    conversations += [untranscribed_conversation(4, 1), untranscribed_conversation(6, 2), one_speaker()]
    print("| conversation | length | speakers (true) | speakers found | DER | named right (of speech found) |")
    print("|---|---|---|---|---|---|")
    results = []
    for conversation in conversations:
        duration = conversation.audio.size / SAMPLE_RATE
        turns = diarizer.diarize(conversation.audio)
        error, found = der(conversation.truth, turns, duration), len({t.speaker for t in turns})
        named, of_all = "-", 1.0
        if conversation.references:
            known = {speaker: diarizer.embed(audio) for speaker, audio in conversation.references.items()}
            of_all, of_found = named_right(conversation, diarizer.diarize(conversation.audio, known))
            named = f"{of_all:.1%} ({of_found:.1%})"
        results.append((error, found, of_all))
        print(
            f"| {conversation.name} | {duration:.0f} s | {len({s.speaker for s in conversation.truth})} "
            f"| {found} | {error:.1%} | {named} |"
        )
    error, found, of_all = results[0]
    print(
        f"\ndev: DER {error:.1%} (target at most {DER_TARGET:.0%}), {found} speakers (target 5), "
        f"{of_all:.1%} named right (target at least {NAMED_TARGET:.0%})"
    )

    if not args.no_encoder:
        difference = encoder_difference(diarizer)
        if difference is None:
            print("\nencoder vs real resemblyzer: skipped (needs torch and librosa)")
        else:
            print(f"\nencoder vs real resemblyzer: max abs difference {difference[0]:.1e} over {difference[1]} clips")

    dev = conversations[0].audio
    cpu, wall = [], []
    for _ in range(args.repeats):
        started_cpu, started = time.process_time(), time.perf_counter()
        diarizer.diarize(dev)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    print(f"\n| diarize() on the dev file ({dev.size / SAMPLE_RATE:.0f} s) | CPU s | wall s | x real time |")
    print("|---|---|---|---|")
    print(
        f"| median of {args.repeats} | {statistics.median(cpu):.2f} | {statistics.median(wall):.2f} "
        f"| {dev.size / SAMPLE_RATE / statistics.median(wall):.0f}x |"
    )
    if not args.no_whisper:
        whisper_cpu, whisper_wall = whisper_seconds(dev)
        print(
            f"| tiny.en transcribe(), for scale | {whisper_cpu:.2f} | {whisper_wall:.2f} "
            f"| {dev.size / SAMPLE_RATE / whisper_wall:.0f}x |"
        )
        print(
            f"\ndiarize() / tiny.en: {statistics.median(cpu) / whisper_cpu:.0%} of its CPU time, "
            f"{statistics.median(wall) / whisper_wall:.0%} of its wall time (target: at most {COST_TARGET:.0%})"
        )
    if not args.no_server:
        seconds = dev.size / SAMPLE_RATE
        times, named = through_a_router(args.repeats, conversations[0])
        medians = {form: statistics.median(each) for form, each in times.items()}
        print(f"\n| through a router, the dev file ({seconds:.0f} s) | wall s (median of {args.repeats}) | x json |")
        print("|---|---|---|")
        for form, median in medians.items():
            print(f"| {form} | {median:.2f} | {median / medians['json']:.2f} |")
        ratio = medians["diarized_json"] / medians["json"]
        print(f"\ndiarized_json / json: {ratio:.2f}x (target: at most {SERVED_TARGET}x)")
        print(
            "diarized_json, 4 known speakers: "
            + ", ".join(f"{of_all:.1%} ({of_covered:.1%})" for of_all, of_covered in named)
            + " of their speech named right (of the speech its segments cover)"
        )


SERVED_FORMS = {
    "json": {},
    "verbose_json with words": {"response_format": "verbose_json", "timestamp_granularities[]": "word"},
    "diarized_json": {"response_format": "diarized_json"},
}


def through_a_router(repeats: int, dev: Conversation) -> tuple[dict[str, list[float]], list[tuple[float, float]]]:
    """Wall seconds of each of `SERVED_FORMS`' requests for the dev file, taken in turn; and the shares
    named right in diarized_json with four speakers enrolled (`named_right`, its segments taken as turns),
    for each of two left out."""
    with ServerProcess("servers/router.py", name="bench-diarization") as router:

        def request(fields: dict[str, str]) -> float:
            started = time.perf_counter()
            with DEV_FILE.open("rb") as f:
                httpx.post(
                    router.url + "/v1/audio/transcriptions",
                    files={"file": f},
                    data={"model": "whisper-1", **fields},
                    timeout=600,
                ).raise_for_status()
            return time.perf_counter() - started

        for fields in SERVED_FORMS.values():  # every model loaded and warm
            request(fields)
        times: dict[str, list[float]] = {form: [] for form in SERVED_FORMS}
        for _ in range(repeats):
            for form, fields in SERVED_FORMS.items():
                times[form].append(request(fields))
        named = []
        for left_out in ("LS-1089", "LS-2412"):
            enrolled = [speaker for speaker in dev.references if speaker != left_out]
            with DEV_FILE.open("rb") as f:
                response = httpx.post(
                    router.url + "/v1/audio/transcriptions",
                    files={"file": f},
                    data={
                        "model": "whisper-1",
                        "response_format": "diarized_json",
                        "known_speaker_names[]": enrolled,
                        "known_speaker_references[]": [data_url(dev.references[name]) for name in enrolled],
                    },
                    timeout=600,
                )
            segments = response.raise_for_status().json()["segments"]
            turns = [Turn(s["start"], s["end"], s["speaker"]) for s in segments]
            named.append(named_right(dev, turns, enrolled))
    return times, named


if __name__ == "__main__":
    main()
