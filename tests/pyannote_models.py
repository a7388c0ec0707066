"""A tiny random-weight stand-in for `pyannote/speaker-diarization-community-1`, built at test time.

The real repository (pyannote.audio 4) holds a pipeline `config.yaml` naming three parts by `$model/<folder>`,
each in a folder of its own:

- `segmentation/pytorch_model.bin`: PyanNet (SincNet, LSTM, feed-forward), powerset output over 3 speakers with
  at most 2 at once (7 classes), on 10 s chunks;
- `embedding/pytorch_model.bin`: WeSpeaker's ResNet34 (80 fbank bins in, 256-d embeddings out);
- `plda/xvec_transform.npz` and `plda/plda.npz`: the VBx clustering's x-vector transform (centring, LDA to 128
  dimensions) and PLDA model.

This builds the same layout with the same classes, saved the way pyannote.audio saves checkpoints, so that
`Pipeline.from_pretrained(folder)` loads it exactly as it loads the real one. The segmentation model is shrunk
(one small LSTM layer, one linear layer) and the embedding model reads 8 fbank bins, not 80: a build takes a
third of a second (22 MB, nearly all of it ResNet34's convolutions), a diarization of 10 s about half a second
on one CPU thread. The weights are random (seeded); the segmentation's output is biased towards one speaker at
a time, as speech mostly is, so that the stand-in finds speech and a speaker in any audio (one speaker: random
embeddings are all alike). Its speakers mean nothing: it tests plumbing and shapes, never accuracy.

pyannote.audio and torch are imported lazily, so that this module imports without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    from pyannote.audio import Model

REPO_ID = "open-speech-test/speaker-diarization-community-1"  # as tests/hub_standin.py serves it
EMBEDDING_DIMENSION = 256  # WeSpeakerResNet34's
LDA_DIMENSION = 128  # PLDA's default `lda_dimension`
_FBANK_BINS = 8  # a multiple of 8 (ResNet34 strides frequency by 8); the real model reads 80
_SEED = 1234

# community-1's config.yaml (the repository is gated; as the projects that ship it quote it).
CONFIG = {
    "pipeline": {
        "name": "pyannote.audio.pipelines.SpeakerDiarization",
        "params": {
            "clustering": "VBxClustering",
            "segmentation": "$model/segmentation",
            "segmentation_batch_size": 32,
            "embedding": "$model/embedding",
            "embedding_batch_size": 32,
            "embedding_exclude_overlap": True,
            "plda": "$model/plda",
        },
    },
    "params": {
        "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
        "segmentation": {"min_duration_off": 0.0},
    },
}


def build(folder: Path) -> Path:
    """Write the stand-in repository into `folder` (created if needed); returns `folder`."""
    import torch

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        _save(_segmentation(), folder / "segmentation")
        _save(_embedding(), folder / "embedding")
    _plda(folder / "plda", np.random.default_rng(_SEED))
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return folder


def _segmentation() -> Model:
    """PyanNet with segmentation-3.0's task (powerset, 3 speakers, 2 at once, 10 s chunks), shrunk."""
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    model = PyanNet(
        lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True, "monolithic": True, "dropout": 0.0},
        linear={"hidden_size": 16, "num_layers": 1},
    )
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=10.0,
        warm_up=(0.0, 0.0),
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    model.build()
    with torch.no_grad():  # mostly one speaker at a time, rarely silence or two (classes 0 and 4-6)
        model.classifier.bias.copy_(torch.tensor([-1.0, 2.0, 1.5, 1.0, -2.0, -2.0, -2.0]))
    return model


def _embedding() -> Model:
    """WeSpeaker's ResNet34, as community-1's embedding model is, on fewer fbank bins."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    model = WeSpeakerResNet34(num_mel_bins=_FBANK_BINS)
    # What pyannote's WeSpeaker conversion script gives its checkpoints.
    model.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0)
    return model


def _save(model: Model, folder: Path) -> None:
    """`pytorch_model.bin` as pyannote.audio writes it: a Lightning checkpoint with its own metadata."""
    import lightning
    import torch

    model.eval()
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "pytorch_model.bin")


def _plda(folder: Path, rng: np.random.Generator) -> None:
    """VBx's transform (256-d x-vectors to 128-d LDA space) and PLDA (an orthogonal transform, positive
    between-class variances in decreasing order), random but well-conditioned."""
    folder.mkdir(parents=True, exist_ok=True)
    lda, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIMENSION, LDA_DIMENSION)))
    np.savez(
        folder / "xvec_transform.npz",
        mean1=0.01 * rng.standard_normal(EMBEDDING_DIMENSION),
        mean2=0.01 * rng.standard_normal(LDA_DIMENSION),
        lda=lda,
    )
    tr, _ = np.linalg.qr(rng.standard_normal((LDA_DIMENSION, LDA_DIMENSION)))
    np.savez(
        folder / "plda.npz",
        mu=0.01 * rng.standard_normal(LDA_DIMENSION),
        tr=tr,
        psi=np.sort(rng.uniform(0.5, 5.0, LDA_DIMENSION))[::-1].copy(),
    )
