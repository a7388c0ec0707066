"""Tiny random-weight models of the real NeMo ASR classes (and of its Sortformer diarizer), built at test time.

Each builder writes a ``.nemo`` archive with ``save_to`` so that tests load it exactly the way real checkpoints
load: ``ASRModel.restore_from(path, map_location="cpu")``. The architectures mirror the published models
(FastConformer encoder, TDT / RNNT / CTC heads, Canary's transformer decoder and prompt format) at a tiny size:
2 encoder layers, d_model 64. A build takes a few seconds on 2 CPU cores and gives an archive of a few MB.

The weights are random (seeded), so the text they produce is gibberish: use these models to test plumbing,
shapes, batching, timestamps and streaming protocol, never accuracy.

NeMo is imported lazily so this module can be imported (and tests skipped) where NeMo is not installed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SAMPLE_RATE = 16000
WINDOW_STRIDE = 0.01  # mel hop in seconds
SUBSAMPLING_FACTOR = 8  # FastConformer: one encoder frame per 80 ms
TDT_DURATIONS = [0, 1, 2, 3, 4]
# The lookahead options of nvidia/nemotron-speech-streaming-en-0.6b: [left, right] in encoder frames of 80 ms,
# i.e. right context 13 -> 1.12 s chunks, 6 -> 560 ms, 1 -> 160 ms, 0 -> 80 ms.
STREAMING_ATT_CONTEXTS = [[70, 13], [70, 6], [70, 1], [70, 0]]
CANARY_LANGUAGES = ("en", "de", "es", "fr")
SORTFORMER_SPEAKERS = 4  # as diar_sortformer_4spk-v1

_D_MODEL = 64
_N_MELS = 128  # as parakeet-tdt-0.6b-v2, canary-1b-flash and nemotron-speech-streaming use
_PRED_HIDDEN = 64
_SEED = 1234

_TEXTS: dict[str, list[str]] = {
    "en": [
        "the quick brown fox jumps over the lazy dog",
        "she sells sea shells by the sea shore",
        "a journey of a thousand miles begins with a single step",
        "speech recognition turns spoken words into written text",
        "open the window and let the fresh air in",
        "we will meet again at seven o'clock tomorrow morning",
        "How are you? I am fine, thank you. Let's go!",
    ],
    "de": [
        "der schnelle braune fuchs springt über den faulen hund",
        "guten morgen, wie geht es dir heute?",
        "wir treffen uns morgen um sieben uhr",
        "die spracherkennung wandelt gesprochene wörter in text um",
    ],
    "es": [
        "el rápido zorro marrón salta sobre el perro perezoso",
        "buenos días, ¿cómo estás hoy?",
        "nos vemos mañana a las siete",
        "el reconocimiento de voz convierte palabras habladas en texto",
    ],
    "fr": [
        "le renard brun rapide saute par-dessus le chien paresseux",
        "bonjour, comment allez-vous aujourd'hui ?",
        "nous nous retrouvons demain à sept heures",
        "la reconnaissance vocale transforme la parole en texte",
    ],
}

# Every special token a canary2 prompt (canary-1b-flash) can contain, besides the language tags; CanaryTokenizer
# adds its defaults (<|nospeech|>, <pad>, <|endoftext|>, <|startoftranscript|>, <|pnc|>, <|nopnc|>) itself.
_CANARY2_SPECIAL_TOKENS = [
    "<|startofcontext|>",
    "<|itn|>",
    "<|noitn|>",
    "<|timestamp|>",
    "<|notimestamp|>",
    "<|diarize|>",
    "<|nodiarize|>",
    "<|emo:undefined|>",
    "<|emo:neutral|>",
    "<|emo:angry|>",
    "<|emo:happy|>",
    "<|emo:sad|>",
]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic weights without disturbing the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _workdir(folder: Path) -> Iterator[Path]:
    """A scratch folder inside ``folder`` (created if needed) for tokenizer training; removed afterwards.

    ``save_to`` copies the tokenizer files into the archive, so nothing outside it needs to survive.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        yield Path(work)


def _train_tokenizer(folder: Path, sentences: list[str], vocab_size: int) -> Path:
    """Trains a small SentencePiece model; returns the folder holding ``tokenizer.model``."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "text.txt"
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    # hard_vocab_limit is off in create_spt_model, so a corpus too small for vocab_size gives fewer tokens
    # instead of failing.
    create_spt_model(
        str(text), vocab_size=vocab_size, sample_size=-1, do_lower_case=False, output_dir=str(folder / "spm")
    )
    return folder / "spm"


def _preprocessor(normalize: str = "per_feature") -> dict[str, Any]:
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": SAMPLE_RATE,
        "normalize": normalize,
        "window_size": 0.025,
        "window_stride": WINDOW_STRIDE,
        "window": "hann",
        "features": _N_MELS,
        "n_fft": 512,
        "log": True,
        "frame_splicing": 1,
        "dither": 1.0e-5,  # applied in training mode only
        "pad_to": 0,
        "pad_value": 0.0,
    }


def _encoder(**overrides: Any) -> dict[str, Any]:
    """A 2-layer FastConformer: 8x depthwise-striding subsampling, relative positional attention."""
    cfg: dict[str, Any] = {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": _N_MELS,
        "feat_out": -1,
        "n_layers": 2,
        "d_model": _D_MODEL,
        # No biases in attention / feed-forward / conv modules. NeMo 3.0's change_attention_model() then builds
        # the new attention layers *with* randomly initialised biases: tests of long-audio mode can catch that.
        "use_bias": False,
        "subsampling": "dw_striding",
        "subsampling_factor": SUBSAMPLING_FACTOR,
        "subsampling_conv_channels": 32,
        "causal_downsampling": False,
        "ff_expansion_factor": 2,
        "self_attention_model": "rel_pos",
        "n_heads": 4,
        "att_context_size": [-1, -1],
        "att_context_style": "regular",
        "xscaling": True,
        "untie_biases": True,
        "pos_emb_max_len": 5000,
        "conv_kernel_size": 9,
        "conv_norm_type": "batch_norm",
        "conv_context_size": None,
        "dropout": 0.1,
        "dropout_pre_encoder": 0.1,
        "dropout_emb": 0.0,
        "dropout_att": 0.1,
    }
    cfg.update(overrides)
    return cfg


def _transducer_cfg(tokenizer_dir: Path, encoder: dict[str, Any], normalize: str, tdt: bool) -> dict[str, Any]:
    """Config of EncDecRNNTBPEModel; with ``tdt`` the joint gets duration outputs and the loss is TDT."""
    cfg: dict[str, Any] = {
        "sample_rate": SAMPLE_RATE,
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": _preprocessor(normalize),
        "encoder": encoder,
        "model_defaults": {"enc_hidden": _D_MODEL, "pred_hidden": _PRED_HIDDEN, "joint_hidden": _PRED_HIDDEN},
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": _PRED_HIDDEN, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.0},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "fused_batch_size": 4,
            "jointnet": {"joint_hidden": _PRED_HIDDEN, "activation": "relu", "dropout": 0.1},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
    }
    if tdt:
        cfg["joint"]["num_extra_outputs"] = len(TDT_DURATIONS)
        cfg["model_defaults"]["tdt_durations"] = TDT_DURATIONS
        cfg["decoding"].update({"model_type": "tdt", "durations": TDT_DURATIONS})
        cfg["loss"] = {
            "loss_name": "tdt",
            "tdt_kwargs": {
                "fastemit_lambda": 0.0,
                "clamp": -1.0,
                "durations": TDT_DURATIONS,
                "sigma": 0.02,
                "omega": 0.1,
            },
        }
    else:
        cfg["loss"] = {"loss_name": "default"}
    return cfg


def _make_input_sensitive(model: Any) -> None:
    """Re-initialises the weights of the encoder's convolutional subsampling with He init.

    With NeMo's default init the subsampling output is dominated by its biases (the part that varies with the
    input is ~10x smaller), so a random model emits the same token on every frame whatever the audio. After
    this it emits varied gibberish, which makes batched-vs-single and streaming-vs-offline comparisons
    meaningful. The (non-zero) biases are kept, as in a trained model.
    """
    import torch

    for module in model.encoder.pre_encode.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv1d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def _save(model_cls: type, cfg: dict[str, Any], path: Path) -> Path:
    from omegaconf import OmegaConf

    with _seeded(_SEED):
        model = model_cls(cfg=OmegaConf.create(cfg))
        _make_input_sensitive(model)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(path))
    return path


def build_tdt(folder: Path) -> Path:
    """Parakeet-TDT-like model: EncDecRNNTBPEModel with TDT loss and greedy_batch TDT decoding."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    with _workdir(folder) as work:
        tokenizer = _train_tokenizer(work, _TEXTS["en"], vocab_size=64)
        cfg = _transducer_cfg(tokenizer, _encoder(), normalize="per_feature", tdt=True)
        return _save(EncDecRNNTBPEModel, cfg, Path(folder) / "tiny-tdt.nemo")


def build_cache_aware_rnnt(folder: Path) -> Path:
    """Cache-aware streaming FastConformer RNNT like nvidia/nemotron-speech-streaming-en-0.6b.

    Causal subsampling and convolutions, chunked-limited attention with several [left, right] lookaheads
    (the first is the default; switch with ``encoder.set_default_att_context_size``), and no per-utterance
    feature normalisation, which a stream cannot compute. Being random, it tends to emit bursts of
    ``max_symbols`` (10) tokens per encoder frame.
    """
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    encoder = _encoder(
        causal_downsampling=True,
        att_context_size=STREAMING_ATT_CONTEXTS,
        att_context_style="chunked_limited",
        conv_context_size="causal",
        conv_norm_type="layer_norm",
    )
    with _workdir(folder) as work:
        tokenizer = _train_tokenizer(work, _TEXTS["en"], vocab_size=64)
        cfg = _transducer_cfg(tokenizer, encoder, normalize="NA", tdt=False)
        return _save(EncDecRNNTBPEModel, cfg, Path(folder) / "tiny-streaming-rnnt.nemo")


def build_ctc(folder: Path) -> Path:
    """FastConformer CTC model: EncDecCTCModelBPE."""
    from nemo.collections.asr.models import EncDecCTCModelBPE

    with _workdir(folder) as work:
        tokenizer = _train_tokenizer(work, _TEXTS["en"], vocab_size=64)
        cfg: dict[str, Any] = {
            "sample_rate": SAMPLE_RATE,
            "tokenizer": {"dir": str(tokenizer), "type": "bpe"},
            "preprocessor": _preprocessor(),
            "encoder": _encoder(),
            # feat_in, num_classes and vocabulary are filled in by the model from the tokenizer
            "decoder": {
                "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                "feat_in": _D_MODEL,
                "num_classes": -1,
                "vocabulary": [],
            },
            "decoding": {"strategy": "greedy_batch"},
        }
        return _save(EncDecCTCModelBPE, cfg, Path(folder) / "tiny-ctc.nemo")


def build_canary(folder: Path) -> Path:
    """Canary AED model (EncDecMultiTaskModel) with canary-1b-flash's "canary2" prompt format.

    Its CanaryTokenizer aggregates a special-token tokenizer (``spl_tokens``: language tags, task and
    formatting flags) and one SentencePiece tokenizer per language; ``model.tokenizer.langs`` lists them.
    """
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from nemo.collections.common.tokenizers.canary_tokenizer import CANARY_SPECIAL_TOKENIZER, CanaryTokenizer

    with _workdir(folder) as work:
        special_dir = work / CANARY_SPECIAL_TOKENIZER
        CanaryTokenizer.build_special_tokenizer(
            _CANARY2_SPECIAL_TOKENS + [f"<|{lang}|>" for lang in CANARY_LANGUAGES], special_dir
        )
        langs: dict[str, dict[str, str]] = {CANARY_SPECIAL_TOKENIZER: {"dir": str(special_dir), "type": "bpe"}}
        for lang in CANARY_LANGUAGES:
            tokenizer = _train_tokenizer(work / lang, _TEXTS[lang], vocab_size=48)
            langs[lang] = {"dir": str(tokenizer), "type": "bpe"}

        cfg: dict[str, Any] = {
            "sample_rate": SAMPLE_RATE,
            "prompt_format": "canary2",
            "prompt_defaults": [
                {
                    "role": "user",
                    "slots": {
                        "decodercontext": "",
                        "source_lang": "<|en|>",
                        "target_lang": "<|en|>",
                        "emotion": "<|emo:undefined|>",
                        "pnc": "<|pnc|>",
                        "itn": "<|noitn|>",
                        "diarize": "<|nodiarize|>",
                        "timestamp": "<|notimestamp|>",
                    },
                }
            ],
            "tokenizer": {
                "dir": None,
                "type": "agg",
                "langs": langs,
                "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryTokenizer"},
            },
            "model_defaults": {"asr_enc_hidden": _D_MODEL, "lm_enc_hidden": _D_MODEL, "lm_dec_hidden": _D_MODEL},
            "preprocessor": _preprocessor(),
            "encoder": _encoder(),
            "transf_encoder": {
                "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
                "num_layers": 0,  # canary-1b-flash has none either
                "hidden_size": _D_MODEL,
                "inner_size": 4 * _D_MODEL,
                "num_attention_heads": 4,
            },
            "transf_decoder": {
                "_target_": "nemo.collections.asr.modules.transformer.get_nemo_transformer",
                "model_name": None,
                "pretrained": False,
                "encoder": None,
                "pre_ln_final_layer_norm": True,
                "config_dict": {
                    "max_sequence_length": 512,
                    "num_token_types": 0,
                    "embedding_dropout": 0.1,
                    "learn_positional_encodings": False,
                    "hidden_size": _D_MODEL,
                    "inner_size": 4 * _D_MODEL,
                    "num_layers": 2,
                    "num_attention_heads": 4,
                    "ffn_dropout": 0.1,
                    "attn_score_dropout": 0.1,
                    "attn_layer_dropout": 0.1,
                    "hidden_act": "relu",
                    "pre_ln": True,
                    "vocab_size": None,  # set by the model from the tokenizer
                },
            },
            "head": {
                "_target_": "nemo.collections.asr.parts.submodules.token_classifier.TokenClassifier",
                "num_layers": 1,
                "activation": "relu",
                "log_softmax": True,
                "hidden_size": _D_MODEL,
                "num_classes": None,  # set by the model from the tokenizer
                "dropout": 0.0,
                "use_transformer_init": True,
            },
            "decoding": {
                "strategy": "beam",
                "return_best_hypothesis": True,
                # Random weights never emit <|endoftext|>, so every output runs to this bound: the longest
                # encoder output in the batch + 20 tokens, prompt included.
                "beam": {"beam_size": 1, "len_pen": 0.0, "max_generation_delta": 20},
            },
            "loss": {
                "_target_": "nemo.collections.common.losses.smoothed_cross_entropy.SmoothedCrossEntropyLoss",
                "label_smoothing": 0.0,
                "pad_id": None,
            },
        }
        return _save(EncDecMultiTaskModel, cfg, Path(folder) / "tiny-canary.nemo")


def _sortformer_cfg(**modules: Any) -> dict[str, Any]:
    """Config of SortformerEncLabelModel as NeMo's sortformer_diarizer_hybrid_loss_4spk-v1.yaml has it, shrunk:
    a 2-layer FastConformer (80 mels, 8x subsampling: a frame per 80 ms), its output projected to a 2-layer
    Transformer encoder, and sigmoid activity of 4 speakers per frame. ``modules`` adds SortformerModules
    options (the streaming ones)."""
    tf_d_model = 32
    return {
        "sample_rate": SAMPLE_RATE,
        "pil_weight": 0.5,
        "ats_weight": 0.5,
        "max_num_of_spks": SORTFORMER_SPEAKERS,
        "model_defaults": {"fc_d_model": _D_MODEL, "tf_d_model": tf_d_model},
        "preprocessor": {**_preprocessor(), "features": 80},
        "sortformer_modules": {
            "_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
            "num_spks": SORTFORMER_SPEAKERS,
            "dropout_rate": 0.5,
            "fc_d_model": _D_MODEL,
            "tf_d_model": tf_d_model,
            **modules,
        },
        "encoder": _encoder(feat_in=80, use_bias=True),
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": 2,
            "hidden_size": tf_d_model,
            "inner_size": 4 * tf_d_model,
            "num_attention_heads": 4,
            "attn_score_dropout": 0.5,
            "attn_layer_dropout": 0.5,
            "ffn_dropout": 0.5,
            "hidden_act": "relu",
            "pre_ln": False,
            "pre_ln_final_layer_norm": True,
        },
        "loss": {"_target_": "nemo.collections.asr.losses.bce_loss.BCELoss", "weight": None, "reduction": "mean"},
    }


def build_sortformer(folder: Path) -> Path:
    """Offline Sortformer diarizer (SortformerEncLabelModel) like nvidia/diar_sortformer_4spk-v1."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    return _save(SortformerEncLabelModel, _sortformer_cfg(), Path(folder) / "tiny-sortformer.nemo")


def build_streaming_sortformer(folder: Path) -> Path:
    """Streaming Sortformer like nvidia/diar_streaming_sortformer_4spk-v2: the same network, run on chunks of
    12 frames (0.96 s) with a speaker cache of 40 frames and a FIFO of 20, so that a 10 s clip takes a dozen
    steps and several cache updates."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    streaming = {
        "spkcache_len": 40,
        "fifo_len": 20,
        "chunk_len": 12,
        "spkcache_update_period": 12,
        "chunk_left_context": 1,
        "chunk_right_context": 1,
    }
    cfg = {**_sortformer_cfg(**streaming), "streaming_mode": True}
    return _save(SortformerEncLabelModel, cfg, Path(folder) / "tiny-streaming-sortformer.nemo")


def build_all(folder: Path) -> dict[str, Path]:
    """Builds every tiny model into ``folder``; keys: "tdt", "streaming_rnnt", "canary", "ctc"."""
    return {
        "tdt": build_tdt(folder),
        "streaming_rnnt": build_cache_aware_rnnt(folder),
        "canary": build_canary(folder),
        "ctc": build_ctc(folder),
    }
