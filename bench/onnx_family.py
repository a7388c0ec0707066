"""An ONNX model through the server, beside the faster-whisper family and onnx-asr in-process, in one run.

    .venv/bin/python -m bench.onnx_family --model istupakov/parakeet-tdt-0.6b-v2-onnx --quantization int8
    .venv/bin/python -m bench.onnx_family               # no --model: a random Parakeet-110m-sized TDT export
    .venv/bin/python -m bench.onnx_family --size tiny   # the tests' tiny exported TDT model

Starts `servers/onnx.py` on the model with `--max-batch-size B` and sends the corpus from N closed-loop
clients; then does the same with `servers/faster_whisper.py` on its defaults (bundled tiny.en, CPU int8);
then runs onnx-asr in this process on the same model and clips (its VAD adapter on the same Silero model,
batch B, the server's onnxruntime session options), and prints RTFx (audio seconds / wall seconds) side
by side.

Without `--model` the model is built by tests/onnx_models.py (cached under .cache/onnx/, about a minute
and 460 MB for 110m): random weights in the published export layout, so the figures measure compute and
serving cost, not accuracy (the text is gibberish). `110m` has the dimensions of parakeet-tdt_ctc-110m
and emits about as many tokens per second as a trained Parakeet, so its compute is representative of
that model (parakeet-tdt-0.6b has about 5x its weights); `tiny` has almost no compute, and measures
only what the serving machinery sustains.
"""

from __future__ import annotations

import argparse
import time

from bench.families import decode_audio, server_rtfx
from tests.helpers import CACHE, Clip, corpus


def inprocess_rtfx(args: argparse.Namespace, clips: list[Clip]) -> float:
    """onnx-asr alone: its VAD adapter over the whole list, `batch` pieces per call, as the server is set up."""
    import onnx_asr

    from servers.onnx import BundledSileroVad, OnnxConfig, _source, resolve_auto, session_options

    config = resolve_auto(OnnxConfig(model=args.model, model_type=args.model_type, device="cpu"))
    model, path = _source(config)
    asr = onnx_asr.load_model(
        model,  # type: ignore[arg-type]
        path,
        quantization=args.quantization or None,
        sess_options=session_options(config),
    )
    if args.vad:
        asr = asr.with_vad(BundledSileroVad(), batch_size=args.batch_size, max_speech_duration_s=20)

    def run(chosen: list[Clip]) -> None:
        audio = [decode_audio(c.path) for c in chosen]  # decoding the files is part of the work, as for the server
        for first in range(0, len(audio), args.batch_size):
            results = asr.recognize(audio[first : first + args.batch_size])
            if args.vad:
                for pieces in results:
                    list(pieces)  # the VAD adapter recognizes lazily, as its results are read

    run(clips[:4])  # warm-up
    start = time.perf_counter()
    for _ in range(args.rounds):
        run(clips)
    return sum(c.duration for c in clips) * args.rounds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub repo id, onnx-asr name or folder (default: a random --size export)")
    parser.add_argument("--size", choices=["110m", "tiny"], default="110m", help="the random model without --model")
    parser.add_argument("--model-type", default="")
    parser.add_argument("--quantization", default="")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--corpus", nargs="+", default=["dev"])
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus on each side")
    parser.add_argument("--no-vad", dest="vad", action="store_false", help="fixed windows instead of Silero VAD")
    args = parser.parse_args()

    if args.model is None:
        from tests.onnx_models import build_tdt_onnx

        args.model = str(build_tdt_onnx(CACHE / "onnx" / f"{args.size}-tdt", args.size))
        print(f"random-weight {args.size} TDT export: compute and serving cost, not accuracy (the text is gibberish)")
    clips = [c for name in args.corpus for c in corpus(name)]
    print(
        f"{args.model}: {len(clips)} clips, {sum(c.duration for c in clips) / 60:.1f} min x {args.rounds} rounds, "
        f"batch {args.batch_size}, {args.concurrency} clients"
    )
    onnx_args = ["--model", args.model, "--max-batch-size", str(args.batch_size), "--vad", str(args.vad)]
    if args.model_type:
        onnx_args += ["--model-type", args.model_type]
    if args.quantization:
        onnx_args += ["--quantization", args.quantization]
    onnx = server_rtfx("servers/onnx.py", onnx_args, clips, args.concurrency, args.rounds)
    print(f"  onnx server            RTFx {onnx:8.1f}", flush=True)
    whisper = server_rtfx("servers/faster_whisper.py", [], clips, args.concurrency, args.rounds)
    print(f"  faster-whisper server  RTFx {whisper:8.1f}  (its defaults: bundled tiny.en)", flush=True)
    local = inprocess_rtfx(args, clips)
    print(f"  onnx-asr in-process    RTFx {local:8.1f}  (batch {args.batch_size})", flush=True)
    print(f"  onnx server / onnx-asr in-process: {onnx / local:.2f}; onnx / faster-whisper: {onnx / whisper:.2f}")


if __name__ == "__main__":
    main()
