"""The registry: the diarizers (the bundled one, Sortformer models) beside the transcription models."""

from pathlib import Path

import pytest
import yaml

from common.models import DIARIZE_ONLY
from router.registry import REPO, Registry
from tests.helpers import DIARIZER, TINY_EN, write_registry


def test_the_shipped_registry_names_its_diarizer() -> None:
    registry = Registry.load(REPO / "configs" / "models.yaml")
    diarizer = registry.models[registry.diarizer]
    assert diarizer.diarizes and diarizer.capabilities == DIARIZE_ONLY and diarizer.installed
    assert not registry.models[registry.default].diarizes


@pytest.mark.parametrize(
    ("default", "diarizer", "error"), [("diarizer", "", "default model"), ("tiny.en", "tiny.en", "diarizer")]
)
def test_diarizers_and_transcription_models_are_not_mixed_up(
    tmp_path: Path, default: str, diarizer: str, error: str
) -> None:
    path = write_registry(tmp_path, TINY_EN, DIARIZER, default=default, diarizer=diarizer)
    with pytest.raises(ValueError, match=error):
        Registry.load(path)


def test_without_a_diarizer_key_there_is_none(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"default": "tiny.en", "models": [TINY_EN, DIARIZER]}))
    assert Registry.load(path).diarizer == ""


def test_a_nemo_entry_that_declares_it_diarizes_is_a_diarizer(tmp_path: Path) -> None:
    sortformer = {"id": "sortformer", "family": "nemo", "source": "nvidia/diar_sortformer_4spk-v1", "diarizes": True}
    registry = Registry.load(write_registry(tmp_path, TINY_EN, sortformer, diarizer="sortformer"))
    entry = registry.models["sortformer"]
    assert entry.diarizes and entry.capabilities == DIARIZE_ONLY and registry.diarizer == "sortformer"
    shipped = Registry.load(REPO / "configs" / "models.yaml").resolve("sortformer")
    assert shipped is not None and shipped.family == "nemo" and shipped.diarizes


def test_only_nemo_entries_declare_diarizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only nemo entries declare diarizes"):
        Registry.load(write_registry(tmp_path, {**TINY_EN, "diarizes": True}))


def test_diarizers_from_a_repo_or_folder_are_pyannote_pipelines() -> None:
    """Loading one where pyannote.audio is missing answers 501 with the command that installs it."""
    registry = Registry.load(REPO / "configs" / "models.yaml")
    pyannote = registry.models["pyannote-community-1"]
    assert pyannote.diarizes and pyannote.is_hub_repo and pyannote.extra == "pyannote"
    assert registry.models[registry.diarizer].extra == "diarization"
