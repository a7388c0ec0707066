"""The model registry: which models the router can serve, from which source, by which family server.

One YAML file (configs/models.yaml) lists the models. Each entry names its family (the server script
that runs it), its source (a Hugging Face repo id, a local path, or `bundled`), the aliases clients
may send as `model`, what it can do, and per-model options passed to the family server as
`--<option> value` (device, compute_type, max_batch_size, workers_per_device, ...). Entries of the
diarization family, and nemo entries that declare `diarizes: true` (Sortformer models), are diarizers,
not transcription models; the file names the default one.

An entry with a `url` is served by a family server the router does not start (in Kubernetes, a
Service in front of that server's replicas): the router proxies to it and never starts or stops it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from common.errors import ApiError
from common.models import DIARIZE_ONLY, Capabilities

REPO = Path(__file__).resolve().parent.parent
WEB = Path(__file__).resolve().parent / "web"  # the page the router serves at `/`, its assets under /web/
FAMILY_SCRIPTS = {
    "faster-whisper": "servers/faster_whisper.py",
    "nemo": "servers/nemo.py",
    "onnx": "servers/onnx.py",
    "diarization": "servers/diarization.py",
}
# The package each family needs: installed by `bash .ci/setup.sh <extra>` (nemo, onnx); resemblyzer (only
# its weights, for the bundled diarizer) by every install.
FAMILY_PACKAGES = {"faster-whisper": "faster_whisper", "nemo": "nemo", "onnx": "onnx_asr", "diarization": "resemblyzer"}
# Diarization entries whose source is not `bundled` are pyannote.audio pipelines: `bash .ci/setup.sh pyannote`.
PYANNOTE = "pyannote"


@dataclass(frozen=True)
class ModelEntry:
    id: str
    family: str
    source: str
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    languages: tuple[str, ...] | None = None  # None: every language the family knows
    translate: bool = False
    stream: bool = True
    word_timestamps: bool = True
    description: str = ""
    url: str = ""  # served by an external family server at this base URL (never started by the router)
    # A diarizer (`/v1/audio/diarizations`), which transcribes nothing: every diarization entry, and the
    # nemo entries that say so (a Sortformer model, which the family server serves as a diarizer).
    diarizes: bool = False

    @property
    def external(self) -> bool:
        return bool(self.url)

    @property
    def capabilities(self) -> Capabilities:
        """As declared here; passed to the family server, which serves by it: one source for both."""
        if self.diarizes:
            return DIARIZE_ONLY
        return Capabilities(self.languages, self.translate, self.word_timestamps, self.stream)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    @property
    def script(self) -> Path:
        return REPO / FAMILY_SCRIPTS[self.family]

    @property
    def module(self) -> str:
        """The family server's module, run as `python -m` (what `python servers/<family>.py` runs)."""
        return f"servers.{self.script.stem}"

    @property
    def extra(self) -> str:
        """What `bash .ci/setup.sh <extra>` installs the family's package with."""
        return PYANNOTE if self.family == "diarization" and self.source != "bundled" else self.family

    @property
    def installed(self) -> bool:
        """Whether this installation has the family's script and package."""
        package = "pyannote.audio" if self.extra == PYANNOTE else FAMILY_PACKAGES[self.family]
        return self.script.exists() and _importable(package)

    @property
    def is_hub_repo(self) -> bool:
        return self.source != "bundled" and "/" in self.source and not Path(self.source).exists()

    def server_args(self) -> list[str]:
        """The family server's command-line options that make it serve this entry."""
        args = ["--model", self.source, "--name", self.id, "--aliases", ",".join(self.aliases)]
        declared = {
            "languages": list(self.languages or []),
            "translate": self.translate,
            "word_timestamps": self.word_timestamps,
        }
        for key, value in (declared | self.options).items():
            text = (
                ",".join(map(str, value))
                if isinstance(value, list)
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
            args += [f"--{key.replace('_', '-')}", text]
        return args


@dataclass(frozen=True)
class Registry:
    default: str  # the transcription model loaded at start
    models: dict[str, ModelEntry]
    diarizer: str = ""  # the diarizer that transcriptions with speakers use ("": none)

    def resolve(self, name: str) -> ModelEntry | None:
        """The entry whose id or alias is `name`."""
        return self._names().get(name)

    def entry(self, name: str, diarizer: bool | None = None) -> ModelEntry:
        """The entry whose id or alias is `name`; 404 in OpenAI's shape when there is none, and 400 when
        it is (`diarizer` True) or is not (False) a diarizer but the request needs the other kind."""
        entry = self.resolve(name)
        if entry is None:
            raise ApiError(
                404, f"The model '{name}' does not exist; see /v1/models.", param="model", code="model_not_found"
            )
        if diarizer is not None and entry.diarizes != diarizer:
            does = "only diarizes" if entry.diarizes else "does not diarize"
            raise ApiError(400, f"Model '{entry.id}' {does}.", param="model", code="unsupported_task")
        return entry

    def _names(self) -> dict[str, ModelEntry]:
        return {name: entry for entry in self.models.values() for name in entry.names}

    @classmethod
    def load(cls, path: Path) -> Registry:
        data = yaml.safe_load(path.read_text()) or {}
        models: dict[str, ModelEntry] = {}
        seen: dict[str, str] = {}
        for raw in data.get("models", []):
            entry = _entry(raw, path)
            for name in entry.names:
                if name in seen:
                    raise ValueError(f"{path}: '{name}' names both {seen[name]} and {entry.id}")
                seen[name] = entry.id
            models[entry.id] = entry
        default = data.get("default", "")
        if default not in models or models[default].diarizes:
            raise ValueError(f"{path}: the default model '{default}' is not a transcription model of the registry")
        diarizer = data.get("diarizer", "")
        if diarizer and (diarizer not in models or not models[diarizer].diarizes):
            raise ValueError(f"{path}: the diarizer '{diarizer}' is not a diarization model of the registry")
        return cls(default, models, diarizer)


def _importable(module: str) -> bool:
    """Whether `module` can be imported, without importing it (only the packages it is in)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a package it is in is missing
        return False


def _entry(raw: dict[str, Any], path: Path) -> ModelEntry:
    unknown = set(raw) - set(ModelEntry.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: model {raw.get('id')!r} has unknown keys {sorted(unknown)}")
    if raw.get("family") not in FAMILY_SCRIPTS:
        raise ValueError(
            f"{path}: model {raw.get('id')!r} has family {raw.get('family')!r}, "
            f"expected one of {sorted(FAMILY_SCRIPTS)}"
        )
    url = raw.get("url", "")
    if url and urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{path}: model {raw.get('id')!r} has url {url!r}, expected http://host:port")
    if "diarizes" in raw and raw["family"] != "nemo":  # diarization entries always do, the others never
        raise ValueError(f"{path}: model {raw.get('id')!r}: only nemo entries declare diarizes (Sortformer models)")
    languages = raw.get("languages")
    return ModelEntry(
        **{
            **raw,
            "diarizes": bool(raw.get("diarizes", raw["family"] == "diarization")),
            "aliases": tuple(raw.get("aliases", ())),
            "languages": None if languages in (None, "all") else tuple(languages),
            "options": dict(raw.get("options") or {}),
            "url": url.rstrip("/"),
        }
    )
