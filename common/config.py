"""Configuration: dataclass defaults < a YAML file in configs/ < OPEN_SPEECH_* environment < command line.

Every server describes its options as a dataclass; `load` fills one from the layers above. The YAML
files in configs/ document every key. Environment variables are the key in upper case with the
prefix `OPEN_SPEECH_` (`port` -> `OPEN_SPEECH_PORT`); lists are comma-separated there. The file is
`configs/<name>.yaml` unless `--config` or `OPEN_SPEECH_CONFIG` names another.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.models import Capabilities

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ENV_PREFIX = "OPEN_SPEECH_"

T = TypeVar("T")


@dataclasses.dataclass
class ListenConfig:
    """Options every server shares: the router and the family servers."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 100.0
    log_level: str = "info"
    api_key: str = ""
    max_connections: int = 1000


@dataclasses.dataclass
class ServerConfig(ListenConfig):
    """Options every family server shares."""

    model: str = ""
    name: str = ""  # the id clients send; empty: derived from `model`
    aliases: list[str] = dataclasses.field(default_factory=list)
    device: str = "auto"
    max_batch_size: int = 8
    api_servers: int = 0  # 0: one on CPU, one per 4 cores (at most 8) beside a GPU (see `api_servers`)
    max_audio_seconds: float = 7200.0
    max_queued_audio_seconds: float = 14400.0
    queue_timeout: float = 600.0
    hang_seconds: float = 10.0
    # What the model can do, as the router's registry declares it; unset: detected from the model.
    languages: list[str] | None = None
    translate: bool | None = None
    word_timestamps: bool | None = None

    def public(self) -> dict[str, Any]:
        """The settings, as `/v1/models/{id}` shows them: all but the keys."""
        return {key: value for key, value in dataclasses.asdict(self).items() if not key.endswith("_key")}

    def capabilities(self, detected: Capabilities) -> Capabilities:
        """`detected`, with what this server was told (by the registry) in place of what it detected."""
        told = {"translate": self.translate, "word_timestamps": self.word_timestamps}
        told["languages"] = tuple(self.languages) if self.languages else None
        return dataclasses.replace(detected, **{key: value for key, value in told.items() if value is not None})


@dataclasses.dataclass
class TranscriptionConfig(ServerConfig):
    """Options every transcription family shares: who to ask who spoke (diarized_json, diarize=true), by
    URL, diarizer and key. A router sets them to itself for the family servers it starts."""

    diarizer_url: str = ""
    diarizer: str = "diarizer"
    diarizer_key: str = ""


def load(cls: type[T], name: str, argv: list[str] | None = None) -> T:
    """Build `cls` from its defaults, then the YAML file, the environment and `argv`, later winning."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=f"open-speech {name} server")
    parser.add_argument("--config", help=f"YAML file (default: configs/{name}.yaml)")
    for key in fields:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar=key.upper())
    args = vars(parser.parse_args(argv))

    path = Path(args.pop("config") or os.environ.get(ENV_PREFIX + "CONFIG") or CONFIG_DIR / f"{name}.yaml")
    values: dict[str, Any] = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    for key in fields:
        env = os.environ.get(ENV_PREFIX + key.upper())
        if env is not None:
            values[key] = env
        if args.get(key) is not None:
            values[key] = args[key]
    return cls(**{key: coerce(value, hints[key], key) for key, value in values.items()})


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn text (from env or argv) or YAML values into the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value or [])
        (item_type,) = typing.get_args(hint)
        return [coerce(v, item_type, key) for v in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean, got {value!r}")
    if hint in (int, float, str):
        return hint(value)
    raise TypeError(f"{key}: unsupported config type {hint}")


def api_servers(config: ServerConfig, accelerator: str) -> int:
    """API processes (each decodes uploads and relays results on one core): as configured, else one on
    CPU, where the cores are the model's, and one per 4 cores beside a GPU, which a single one cannot keep
    fed with short requests (docs/benchmarks.md#serving-overhead)."""
    if config.api_servers:
        return config.api_servers
    return 1 if accelerator == "cpu" else max(1, min(8, (os.cpu_count() or 1) // 4))
