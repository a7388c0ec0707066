"""ONNX models in the layout of the published NeMo ONNX exports, built from random-weight NeMo models.

The istupakov/parakeet-tdt-0.6b-v2-onnx repository (what onnx-asr downloads for `nemo-parakeet-tdt-0.6b-v2`)
holds `encoder-model.onnx`, `decoder_joint-model.onnx`, `vocab.txt` (`<token> <id>` per line, `<blk>` last)
and `config.json` (`model_type`, `features_size`, `subsampling_factor`). `build_tdt_onnx` makes the same files
from a random-weight NeMo TDT model with NeMo's own `export()`, so the folder loads through
`onnx_asr.load_model("nemo-conformer-tdt", folder)` (or with no model type: config.json names it), the code
path a downloaded model takes. Two sizes:

- `tiny` (the tests): the tiny TDT model of tests/nemo_models.py, 2 layers, d_model 64; a few MB.
- `110m` (bench/onnx_family.py): the dimensions of nvidia/parakeet-tdt_ctc-110m's TDT path (NeMo's
  FastConformer large config): 17 layers, d_model 512, 8 heads, feed-forward x4, 256 subsampling channels,
  8x subsampling, 80 mels, prediction and joint networks of 640, a 1024-token vocabulary, durations 0-4.
  The CTC head of the hybrid is left out (onnx-asr's TDT path never runs it). About 110M weights, 460 MB of ONNX.

The weights are random: the text is gibberish. Use these for plumbing and cost, never accuracy. The cost of
greedy TDT decoding (one decoder_joint call per step) depends on how many tokens and steps the joint network
picks; on the dev corpus the random 110m model takes 8.5 decoder steps and emits 4.2 tokens (3.9 "words")
per second of speech, the range of a trained Parakeet on English (about 3-4 tokens/s), so its logits are
left as they are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests import nemo_models

FILES = ("encoder-model.onnx", "decoder_joint-model.onnx", "vocab.txt", "config.json")
SIZES = ("tiny", "110m")


def build_tdt_onnx(folder: Path, size: str = "tiny") -> Path:
    """Export a random TDT model of `size` into `folder` (reused when already complete); returns the folder."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in FILES):
        return folder
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    from nemo.collections.asr.models import ASRModel

    nemo_file = nemo_models.build_tdt(folder / "nemo") if size == "tiny" else _build_110m(folder / "nemo")
    model = ASRModel.restore_from(str(nemo_file), map_location="cpu").eval()
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
    if size != "tiny":
        nemo_file.unlink()  # 440 MB that the ONNX files duplicate
        nemo_file.parent.rmdir()
    return folder


def _build_110m(folder: Path) -> Path:
    """The parakeet-tdt_ctc-110m-sized TDT model as a .nemo archive."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    mels, hidden, d_model = 80, 640, 512
    encoder = nemo_models._encoder(
        feat_in=mels,
        n_layers=17,
        d_model=d_model,
        n_heads=8,
        ff_expansion_factor=4,
        subsampling_conv_channels=256,
    )
    with nemo_models._workdir(folder) as work:
        tokenizer = nemo_models._train_tokenizer(work, _sentences(), vocab_size=1024)
        cfg: dict[str, Any] = nemo_models._transducer_cfg(tokenizer, encoder, normalize="per_feature", tdt=True)
        cfg["preprocessor"]["features"] = mels
        cfg["model_defaults"].update(enc_hidden=d_model, pred_hidden=hidden, joint_hidden=hidden)
        cfg["decoder"]["prednet"]["pred_hidden"] = hidden
        cfg["joint"]["jointnet"]["joint_hidden"] = hidden
        with nemo_models._seeded(nemo_models._SEED):
            model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg))
            nemo_models._make_input_sensitive(model)
        model.eval()
        path = folder / "tdt-110m.nemo"
        model.save_to(str(path))
    return path


def _sentences() -> list[str]:
    """Seeded pseudo-English (words of 1-4 syllables) with enough variety for a 1024-piece vocabulary."""
    rng = random.Random(nemo_models._SEED)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch", "sh"]
    syllables = [o + v + c for o in onsets for v in "aeiou" for c in ("", "n", "r", "s", "t")]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(6000)]
    return [" ".join(rng.choices(words, k=12)) for _ in range(4000)]
