"""Configuration layers and their documentation."""

import dataclasses
import re

import pytest

from common.config import CONFIG_DIR, load
from servers.faster_whisper import FasterWhisperConfig


def test_defaults_come_from_the_yaml_file() -> None:
    config = load(FasterWhisperConfig, "faster_whisper", [])
    assert config == FasterWhisperConfig()


def test_environment_then_command_line_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPEN_SPEECH_PORT", "9001")
    monkeypatch.setenv("OPEN_SPEECH_ALIASES", "whisper-1, default")
    monkeypatch.setenv("OPEN_SPEECH_VAD_FILTER", "true")
    config = load(FasterWhisperConfig, "faster_whisper", ["--beam-size", "2", "--port", "9002"])
    assert (config.port, config.beam_size, config.aliases, config.vad_filter) == (
        9002,
        2,
        ["whisper-1", "default"],
        True,
    )


def test_unknown_yaml_keys_are_refused(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("prot: 80\n")
    with pytest.raises(ValueError, match="prot"):
        load(FasterWhisperConfig, "faster_whisper", ["--config", str(path)])


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("faster_whisper", "servers.faster_whisper:FasterWhisperConfig"),
        ("nemo", "servers.nemo:NemoConfig"),
        ("onnx", "servers.onnx:OnnxConfig"),
        ("diarization", "servers.diarization:DiarizationConfig"),
        ("router", "servers.router:RouterConfig"),
    ],
)
def test_every_key_is_documented_and_the_file_gives_the_defaults(name: str, where: str) -> None:
    module, _, attribute = where.partition(":")
    config = getattr(pytest.importorskip(module), attribute)
    text = (CONFIG_DIR / f"{name}.yaml").read_text()
    for field in dataclasses.fields(config):
        match = re.search(rf"((?:^#.*\n)+)^{field.name}:", text, re.MULTILINE)
        assert match, f"{field.name} has no comment in configs/{name}.yaml"
    assert load(config, name, []) == config()
