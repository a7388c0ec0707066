"""A tiny ONNX model in the layout of the published NeMo ONNX exports, built at test time.

The istupakov/parakeet-tdt-0.6b-v2-onnx repository (what onnx-asr downloads for `nemo-parakeet-tdt-0.6b-v2`)
holds `encoder-model.onnx`, `decoder_joint-model.onnx`, `vocab.txt` (`<token> <id>` per line, `<blk>` last)
and `config.json` (`model_type`, `features_size`, `subsampling_factor`). `build_tdt_onnx` makes the same files
from the tiny random-weight TDT model of tests/nemo_models.py with NeMo's own `export()`, so the folder loads
through `onnx_asr.load_model("nemo-conformer-tdt", folder)` (or with no model type: config.json names it), the
code path a downloaded model takes.

The weights are random: the text is gibberish. Use it for plumbing, never accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests import nemo_models

FILES = ("encoder-model.onnx", "decoder_joint-model.onnx", "vocab.txt", "config.json")


def build_tdt_onnx(folder: Path) -> Path:
    """Export the tiny TDT model into `folder` (reused when already complete); returns the folder."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in FILES):
        return folder
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(nemo_models.build_tdt(folder / "nemo")), map_location="cpu").eval()
    folder.mkdir(parents=True, exist_ok=True)
    # A transducer exports as two graphs: NeMo prefixes the file name with each subnet's name
    # (encoder-model.onnx, decoder_joint-model.onnx), as the published exports were made.
    model.export(str(folder / "model.onnx"))
    tokens = [*model.tokenizer.vocab, "<blk>"]  # the blank is the last class of the joint
    (folder / "vocab.txt").write_text("".join(f"{token} {i}\n" for i, token in enumerate(tokens)), encoding="utf-8")
    config = {
        "model_type": "nemo-conformer-tdt",
        "features_size": model.cfg.preprocessor.features,
        "subsampling_factor": model.encoder.subsampling_factor,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
