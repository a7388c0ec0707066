"""A NeMo model through the server beside NeMo's own in-process batched inference, in one run.

    .venv/bin/python -m bench.nemo_family --model nvidia/parakeet-tdt-0.6b-v2 --batch-size 128 --concurrency 64
    .venv/bin/python -m bench.nemo_family            # no --model: a tiny random TDT model built on the spot

Starts `servers/nemo.py` on the model with `--max-batch-size B`, sends the corpus from N closed-loop
clients, then stops it and runs `model.transcribe(audio, batch_size=B)` in this process on the same
clips, and prints RTFx (audio seconds / wall seconds) for both. With real weights on a GPU this is
the figure to hold against the model card (parakeet-tdt-0.6b-v2: RTFx 3386 at batch 128); a tiny
model measures only what the serving machinery (HTTP, decoding uploads, queues, batching) sustains.
"""

from __future__ import annotations

import argparse
import time

from bench.families import decode_audio, server_rtfx, spooled
from tests.helpers import CACHE, Clip, corpus


def inprocess_rtfx(model_source: str, clips: list[Clip], batch: int, rounds: int) -> float:
    import torch

    from servers.nemo import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_source, device).eval()
    audio_seconds = sum(c.duration for c in clips) * rounds
    model.transcribe([decode_audio(c.path) for c in clips[:4]], batch_size=batch, verbose=False)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):  # decoding the files is part of the work, as it is for the server
        model.transcribe([decode_audio(c.path) for c in clips], batch_size=batch, verbose=False)
    return audio_seconds / (time.perf_counter() - start)


def direct_rtfx(model_source: str, clips: list[Clip], batch: int, rounds: int) -> float:
    """The server's own decode path (NemoAPI.transcribe_batch) called in this process: no HTTP, no queues."""
    import torch

    from common.jobs import TranscriptionJob
    from servers.nemo import NemoAPI, NemoConfig, model_card, read_config, resolve_auto

    config = resolve_auto(NemoConfig(model=model_source, name="bench", max_batch_size=batch))
    api = NemoAPI(config, model_card(config, read_config(model_source)))
    api.setup("cuda:0" if torch.cuda.is_available() else "cpu")
    audio_seconds = sum(c.duration for c in clips) * rounds
    start = time.perf_counter()
    for _ in range(rounds):
        jobs = [TranscriptionJob(spooled(c.path)) for c in clips]
        for first in range(0, len(jobs), batch):
            for _step in api.transcribe_batch(jobs[first : first + batch]):
                pass
        for job in jobs:
            job.audio.delete()
    return audio_seconds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Hugging Face id or .nemo file (default: a tiny random TDT model)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--corpus", nargs="+", default=["dev"])
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus on each side")
    args = parser.parse_args()

    if args.model is None:
        from tests.nemo_models import build_tdt

        args.model = str(build_tdt(CACHE / "nemo"))
    clips = [c for name in args.corpus for c in corpus(name)]
    print(
        f"{args.model}: {len(clips)} clips, {sum(c.duration for c in clips) / 60:.1f} min x {args.rounds} rounds, "
        f"batch {args.batch_size}, {args.concurrency} clients"
    )
    served = server_rtfx(
        "servers/nemo.py",
        ["--model", args.model, "--max-batch-size", str(args.batch_size)],
        clips,
        args.concurrency,
        args.rounds,
    )
    print(f"  server      RTFx {served:8.1f}", flush=True)
    local = inprocess_rtfx(args.model, clips, args.batch_size, args.rounds)
    print(f"  in-process  RTFx {local:8.1f}  (NeMo transcribe, batch {args.batch_size})", flush=True)
    direct = direct_rtfx(args.model, clips, args.batch_size, args.rounds)
    print(f"  in-process  RTFx {direct:8.1f}  (the server's decode path, batch {args.batch_size}, no HTTP)")
    print(f"  server / NeMo transcribe: {served / local:.2f}; server / its own path in-process: {served / direct:.2f}")


if __name__ == "__main__":
    main()
