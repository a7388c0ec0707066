"""Keywords (`keywords[]`) on tiny.en: names recalled, and what an unrelated keyword list costs in WER.

    .venv/bin/python -m bench.keywords [--concurrency 2]

Starts `servers/faster_whisper.py` on its defaults (bundled tiny.en, beam 5) and sends, with the openai SDK:

1. recall: the dev clips whose names tiny.en gets wrong (`TERMS`), without and with every term as
   keywords; a term counts when it appears in the transcript, exactly spelt. Beside them, in-process
   faster-whisper on the same model with the terms as `hotwords` (what the server should reproduce).
2. wer: the whole dev corpus without keywords and with `UNRELATED` keywords (words no clip says), WER
   normalized with Whisper's English normalizer. Target: at most 0.3 points worse.

Both sides of each comparison run in this one process tree, one after the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
from faster_whisper import WhisperModel

from servers.faster_whisper import model_path
from tests.helpers import Clip, ServerProcess, corpus, wer

# Dev clips with names tiny.en misspells without help (found by transcribing the dev corpus).
TERMS = {
    "LJ001-0024": ["Maintz", "Schoeffer"],
    "LJ001-0027": ["Schoeffer"],
    "LJ001-0028": ["Basle"],
    "LJ001-0031": ["Sweynheim", "Pannartz", "Subiaco"],
    "p225_016": ["Norsemen"],
}
UNRELATED = ["Kubernetes", "PostgreSQL", "Reykjavik", "Tchaikovsky", "photosynthesis", "Zanzibar", "quinoa",
             "Ljubljana", "mitochondria", "Anthropic"]  # fmt: skip


def recall(texts: dict[str, str]) -> tuple[int, int]:
    """Terms found in the transcripts of their clips, and terms in all."""
    found = sum(term in texts[clip] for clip, terms in TERMS.items() for term in terms)
    return found, sum(len(terms) for terms in TERMS.values())


def transcribe_all(clips: list[Clip], one: Callable[[Clip], str], concurrency: int) -> dict[str, str]:
    with ThreadPoolExecutor(concurrency) as pool:
        return dict(zip([c.id for c in clips], pool.map(one, clips), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    dev = corpus("dev")
    named = [c for c in dev if c.id in TERMS]
    keywords = sorted({term for terms in TERMS.values() for term in terms})

    with ServerProcess("servers/faster_whisper.py", name="bench-keywords") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)

        def through_server(words: list[str]) -> Callable[[Clip], str]:
            def one(clip: Clip) -> str:
                with clip.path.open("rb") as f:
                    return client.audio.transcriptions.create(model="whisper-1", file=f, keywords=words).text

            return one

        plain = transcribe_all(named, through_server([]), args.concurrency)
        boosted = transcribe_all(named, through_server(keywords), args.concurrency)
        dev_plain = transcribe_all(dev, through_server([]), args.concurrency)
        dev_unrelated = transcribe_all(dev, through_server(UNRELATED), args.concurrency)

    model = WhisperModel(model_path("bundled"), device="cpu", compute_type="int8")

    def in_process(clip: Clip) -> str:
        segments, _ = model.transcribe(str(clip.path), language="en", beam_size=5, hotwords=", ".join(keywords))
        return "".join(s.text for s in segments).strip()

    hotwords = transcribe_all(named, in_process, 1)

    print(f"\n## Term recall ({len(named)} dev clips, {recall(plain)[1]} names)\n")
    print("| run | names right |")
    print("|---|---|")
    runs = {"server, no keywords": plain, "server, keywords": boosted, "in-process, hotwords": hotwords}
    for name, texts in runs.items():
        found, total = recall(texts)
        print(f"| {name} | {found}/{total} ({100 * found / total:.0f} %) |")
    references = [c.text for c in dev]
    without = 100 * wer(references, [dev_plain[c.id] for c in dev])
    unrelated = 100 * wer(references, [dev_unrelated[c.id] for c in dev])
    print(f"\n## WER on the dev corpus ({len(dev)} clips) with {len(UNRELATED)} unrelated keywords\n")
    print("| run | WER | change |")
    print("|---|---|---|")
    print(f"| no keywords | {without:.2f} % | |")
    print(f"| unrelated keywords | {unrelated:.2f} % | {unrelated - without:+.2f} points |")
    for clip in named:
        print(f"\n{clip.id}\n  plain:    {plain[clip.id]}\n  keywords: {boosted[clip.id]}")


if __name__ == "__main__":
    main()
