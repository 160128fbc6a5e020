"""Build the tokenizer and the classifier: a hub name, a local folder, or a small BERT from config.

The small BERT uses a character vocabulary, as bert-base-chinese does: every CJK character is
its own token; digits and Latin letters get WordPiece pieces (`x` and `##x`) so numbers and
words are spelled out instead of becoming [UNK].

Inference (score_texts, load_scorer) reads a run directory, or an export folder written by
`pipeline export` (model.onnx or int8 torch weights, beside export.json), and scores text over
overlapping windows, sorted by length and padded per batch.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, PipelineError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Tokens shared by consecutive windows of a long text when scoring it (validation, evaluate, predict):
# each window boundary gets context on both sides.
SCORING_OVERLAP = 32


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


def build_vocab(texts: Iterable[str], min_count: int = 1) -> dict[str, int]:
    """token → id: specials, then characters by frequency (ties by code point), ## pieces for non-CJK."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(unicodedata.normalize("NFKC", text).lower())
    chars = sorted((c for c, n in counts.items() if n >= min_count and not c.isspace()), key=lambda c: (-counts[c], c))
    tokens = list(SPECIAL_TOKENS)
    for char in chars:
        tokens.append(char)
        if not _is_cjk(char) and (char.isalnum()):
            tokens.append("##" + char)
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer(texts: Iterable[str], max_length: int, min_count: int = 1):
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab=build_vocab(texts, min_count), do_lower_case=True, tokenize_chinese_chars=True)
    tokenizer.model_max_length = max_length
    return tokenizer


def small_bert_config(cfg, vocab_size: int, **extra):
    """A BertConfig from the size fields shared by ModelConfig and PretrainConfig."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(cfg.max_length, 64),
        **extra,
    )


def _hub_hint(name: str, error: Exception) -> PipelineError:
    return PipelineError(
        f"could not load model {name!r} from a local folder or the Hugging Face hub ({type(error).__name__}); "
        f"offline, set model.name_or_path to a pretrained base built by `pipeline pretrain` "
        f"(configs/default.yaml does this) or to null for a small randomly initialised BERT"
    )


def _offline_unless_hub_reachable(name_or_path: str) -> None:
    """A hub name on a machine without network: switch the hub client to its local cache at once,
    instead of retrying for minutes, so a cached model still loads and a missing one fails fast."""
    import os
    import socket

    if Path(name_or_path).exists() or os.environ.get("HF_HUB_OFFLINE"):
        return
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        import huggingface_hub.constants

        os.environ["HF_HUB_OFFLINE"] = "1"
        huggingface_hub.constants.HF_HUB_OFFLINE = True


def load_tokenizer(name_or_path: str, max_length: int):
    from transformers import AutoTokenizer

    _offline_unless_hub_reachable(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise _hub_hint(name_or_path, e) from None
    tokenizer.model_max_length = min(max_length, tokenizer.model_max_length or max_length)
    return tokenizer


def build_classifier(cfg: ModelConfig, theme_ids: list[str], multi_label: bool, train_texts: list[str]):
    """(tokenizer, model) for fine-tuning; label maps travel inside the model's config.json."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    id2label = dict(enumerate(theme_ids))
    label2id = {label: i for i, label in id2label.items()}
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    if cfg.name_or_path is None:
        tokenizer = build_tokenizer(train_texts, cfg.max_length)
        config = small_bert_config(
            cfg, len(tokenizer), num_labels=len(theme_ids), id2label=id2label, label2id=label2id, problem_type=problem_type
        )
        return tokenizer, BertForSequenceClassification(config)
    tokenizer = load_tokenizer(cfg.name_or_path, cfg.max_length)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.name_or_path,
            dtype=torch.float32,  # a base may be stored in float16; fine-tuning needs float32 master weights
            num_labels=len(theme_ids),
            id2label=id2label,
            label2id=label2id,
            problem_type=problem_type,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as e:
        raise _hub_hint(cfg.name_or_path, e) from None
    return tokenizer, model


def load_run(run_dir: Path):
    """(tokenizer, model) from a run directory, weights from safetensors only."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
        model = AutoModelForSequenceClassification.from_pretrained(run_dir, use_safetensors=True)
    except Exception as e:  # corrupted or truncated files surface as many exception types
        raise PipelineError(
            f"cannot load the model in {run_dir} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"the run directory is corrupted: retrain with `pipeline train CONFIG`"
        ) from None
    model.eval()
    return tokenizer, model


def decide(probs, theme_ids: list[str], thresholds: dict[str, float] | None, none_gate=None):
    """(top theme per row, themes at or above their threshold per row, strongest first); without
    thresholds (single-label) labels = [top]. The top theme is the argmax even when a weaker theme
    clears a lower threshold and it does not: as a primary it is right more often (checked on the
    default test split). With `none_gate` (a blended multi-label run, blend.py), a row gets no theme
    exactly where the gate is set, and otherwise at least its top one. Here, not in metrics, so that
    inference of an unblended run does not load scikit-learn."""
    import numpy as np

    top = [theme_ids[i] for i in probs.argmax(axis=1)]
    if thresholds is None:
        return top, [[t] for t in top]
    cut = np.array([thresholds[t] for t in theme_ids])
    labels = []
    for i, row in enumerate(probs):
        above = np.flatnonzero(row >= cut)
        themes = [theme_ids[j] for j in above[np.argsort(-row[above], kind="stable")]]
        if none_gate is not None:
            themes = [] if none_gate[i] else themes or [top[i]]
        labels.append(themes)
    return top, labels


def encode_windows(tokenizer, texts: list[str], stride: int = SCORING_OVERLAP):
    """(token ids per window, owning text index per window). Text longer than the model's window
    becomes several windows overlapping by `stride` tokens: nothing is cut off.

    The windows are cut here rather than by the tokenizer's return_overflowing_tokens, whose result
    depends on the tokenizers release: 0.23.2 returns only the first overflow window of each text,
    which silently dropped everything past about 220 tokens."""
    max_length = tokenizer.model_max_length
    prefix, suffix = _special_tokens_around(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body < 2:
        raise ConfigError(f"the tokenizer's window of {max_length} tokens (its model_max_length) leaves no room for text "
                          f"beside its special tokens; expected 16 or more: set model_max_length in its tokenizer_config.json")
    step = max(1, body - min(stride, max_length // 4))
    enc = tokenizer(texts, add_special_tokens=False, truncation=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)  # verbose: no "longer than max length" warning
    ids, owners = [], []
    for owner, tokens in enumerate(enc["input_ids"]):
        start = 0
        while True:
            ids.append(prefix + tokens[start:start + body] + suffix)
            owners.append(owner)
            if start + body >= len(tokens):
                break
            start += step
    return ids, owners


def _special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] and [SEP] for BERT)."""
    probe = "中文 text"
    bare, full = tokenizer(probe, add_special_tokens=False)["input_ids"], tokenizer(probe)["input_ids"]
    for at in range(len(full) - len(bare) + 1):  # the text's tokens inside the full encoding
        if full[at:at + len(bare)] == bare:
            return full[:at], full[at + len(bare):]
    # Some tokenizers encode the text differently once special tokens are added: take the special ids at the ends.
    special = set(tokenizer.all_special_ids)
    head = next((i for i, t in enumerate(full) if t not in special), len(full))
    tail = next((i for i in range(len(full), head, -1) if full[i - 1] not in special), head)
    return full[:head], full[tail:]


SHAPE_STEP = 16


def _round_up(n: int, step: int = SHAPE_STEP) -> int:
    return -(-n // step) * step


def score_windows(forward, ids: list[list[int]], owners: list[int], n_texts: int, n_labels: int,
                  multi_label: bool, pad_id: int, batch_size: int = 64, pool=None):
    """(probs (n_texts, n_labels), windows per text): the mean of each text's window probabilities.

    `forward(input_ids, attention_mask)` takes int64 arrays (batch, length) and returns logits.
    Windows are sorted by length and padded per batch, so short paragraphs do not pay for long ones.
    With `pool` (an executor), batches run concurrently on its threads: torch and onnxruntime release
    the GIL inside their kernels (see predict's streams).
    """
    import numpy as np
    from scipy.special import expit, softmax

    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    longest = int(lengths.max(initial=0))
    window_probs = np.empty((len(ids), n_labels), dtype=np.float32)

    def score_batch(start: int) -> None:
        batch = order[start : start + batch_size]
        # Batch shapes come from a small fixed set: widths and row counts rounded up to a multiple of 16.
        # oneDNN (torch's CPU kernels) compiles and caches kernels per shape: one shape per length let
        # that cache, and peak memory with it, grow with the input (766 MiB at 2,000 paragraphs, 984 MiB
        # at 20,000), and recompiling cost time. Sorted: the last window is the longest.
        width = min(_round_up(int(lengths[batch[-1]])), longest)
        rows = min(_round_up(len(batch)), batch_size)
        input_ids = np.full((rows, width), pad_id, dtype=np.int64)
        for row, i in enumerate(batch):
            input_ids[row, : lengths[i]] = ids[i]
        attention_mask = (np.arange(width) < np.pad(lengths[batch], (0, rows - len(batch)), constant_values=1)[:, None])
        logits = np.asarray(forward(input_ids, attention_mask.astype(np.int64)), dtype=np.float32)[: len(batch)]
        window_probs[batch] = expit(logits) if multi_label else softmax(logits, axis=1)

    list((pool.map if pool is not None else map)(score_batch, range(0, len(order), batch_size)))
    return mean_by_owner(window_probs, owners, n_texts), np.bincount(owners, minlength=n_texts).tolist()


def mean_by_owner(window_probs, owners, n_texts: int):
    """(n_texts, n_labels): each text's score is the mean of its windows' probabilities. Training's early
    stopping, evaluate and predict all score a paragraph this way."""
    import numpy as np

    counts = np.bincount(owners, minlength=n_texts)
    sums = np.zeros((n_texts, window_probs.shape[1]), dtype=np.float32)
    np.add.at(sums, owners, window_probs)
    return sums / np.maximum(counts, 1)[:, None]


def torch_forward(model):
    """forward(input_ids, attention_mask) -> logits (numpy) for a transformers model, on its device."""
    import torch

    def forward(input_ids, attention_mask):
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(input_ids).to(model.device),
                           attention_mask=torch.from_numpy(attention_mask).to(model.device)).logits
        return logits.float().cpu().numpy()

    return forward


def quantize_int8(model):
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised on the fly).

    Only CPU kernels exist for it; embeddings and LayerNorm stay float.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch.ao.quantization warns it will move to torchao; quantize_dynamic is still the built-in way.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model.to("cpu"), {torch.nn.Linear}, dtype=torch.qint8)


def onnx_forward(path: Path, threads: int | None = None):
    """forward(input_ids, attention_mask) -> logits from an ONNX file, run by onnxruntime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PipelineError("running an ONNX model needs onnxruntime; install it with pip install -e '.[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise PipelineError(f"cannot load {path} ({type(e).__name__}); export it again with `pipeline export RUN_DIR --format onnx`") from None

    def forward(input_ids, attention_mask):
        return session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    return forward


def native_bfloat16() -> bool:
    """Whether this machine runs bfloat16 matrix work in hardware: a GPU that supports it, or a CPU with
    AMX tiles. There bfloat16 is much faster than float32 (batch inference about 2.4x on a 2-core
    AMX Xeon, README: Batch inference performance); elsewhere it is emulated and slower, so "auto"
    keeps float32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up defensively
    return bool(probe and probe())


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bfloat16' where the hardware runs it natively, else 'float32'; others unchanged."""
    return ("bfloat16" if native_bfloat16() else "float32") if precision == "auto" else precision


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 64, stride: int = SCORING_OVERLAP):
    """(probs (n, n_labels), windows per text) for a transformers model. Text longer than the window
    is scored over overlapping windows whose probabilities are averaged: nothing is cut off."""
    import numpy as np

    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32), []
    ids, owners = encode_windows(tokenizer, texts, stride)
    multi = model.config.problem_type == "multi_label_classification"
    return score_windows(torch_forward(model), ids, owners, len(texts), model.config.num_labels, multi,
                         tokenizer.pad_token_id, batch_size)


ONNX_FILE = "model.onnx"
EXPORT_INFO = "export.json"  # in an export folder: {"format": "onnx"|"torch", "quantize": null|"int8", "source": run dir}


def last_layer_cls_only(model):
    """The model, for inference, with its last encoder layer computing its output at [CLS] only.

    A sequence classifier reads the last layer at [CLS] alone (BertPooler takes position 0), yet the
    stock last layer computes every position: its query projection, attention, output projection and
    feed-forward for all tokens. The replacement still lets [CLS] attend to every token's key and
    value, so its output is the same numbers within float rounding; the rest of the layer, about a
    fifth of a 4-layer model's inference work, is skipped. It is built from the layer's own modules,
    so int8 quantisation and dtype casts apply to it unchanged. Only the logits stay whole: hidden
    states or attentions asked of the last layer would be [CLS]'s alone. Models other than an
    encoder-only BertForSequenceClassification with eager or sdpa attention (the masks this layer
    reads) are returned as they are."""
    import torch.nn.functional as F
    from torch import nn
    from transformers import BertForSequenceClassification

    class ClsOnlyLayer(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
            attention = self.layer.attention
            heads, size = attention.self.num_attention_heads, attention.self.attention_head_size
            batch, length, _ = hidden_states.shape
            cls = hidden_states[:, :1]
            query = attention.self.query(cls).view(batch, 1, heads, size).transpose(1, 2)
            key = attention.self.key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
            value = attention.self.value(hidden_states).view(batch, length, heads, size).transpose(1, 2)
            if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[2] > 1:
                attention_mask = attention_mask[:, :, :1]  # the [CLS] query's row of the mask
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                     scale=attention.self.scaling)
            attended = attention.output(context.transpose(1, 2).reshape(batch, 1, heads * size), cls)
            return self.layer.output(self.layer.intermediate(attended), attended)

    if (type(model) is not BertForSequenceClassification or model.config.is_decoder or model.training
            or getattr(model.config, "_attn_implementation", None) not in ("eager", "sdpa")):
        return model
    layers = model.bert.encoder.layer
    if type(layers[-1]).__name__ != "ClsOnlyLayer":
        layers[-1] = ClsOnlyLayer(layers[-1])
    return model


class Scorer(NamedTuple):
    """What inference needs: the tokenizer, the model's config (labels, thresholds) and its forward pass."""

    tokenizer: object
    config: object
    forward: Callable  # (input_ids, attention_mask) int64 arrays -> logits array
    engine: str  # "torch" or "onnx", with "-int8" when quantised
    ngrams: object = None  # blend.CharNgrams when the run blends in a character n-gram model

    def blend(self, probs, texts: list[str]):
        """(probabilities, none gate or None): the transformer's, blended as trained (train.char_ngram_blend)."""
        return (probs, None) if self.ngrams is None else self.ngrams.blend(probs, texts)


def label_ids(config) -> list[str]:
    """The model's labels in output order."""
    return [config.id2label[i] for i in range(config.num_labels)]


def load_scorer(model_dir: Path, quantize: str | None = None, threads: int | None = None, dtype: str | None = None) -> Scorer:
    """A Scorer from a run directory (float32 weights; int8-quantised, or cast to `dtype` such as
    bfloat16, on request) or from an export folder written by `pipeline export` (ONNX, or torch
    weights quantised as its export.json says)."""
    import json

    import torch

    from pipeline import blend

    info = {"format": "torch", "quantize": quantize}
    if (model_dir / EXPORT_INFO).is_file():
        info = json.loads((model_dir / EXPORT_INFO).read_text(encoding="utf-8"))
    engine = info["format"] + ("-int8" if info["quantize"] else "")
    if info["format"] == "onnx":
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(model_dir)
        return Scorer(AutoTokenizer.from_pretrained(model_dir), config, onnx_forward(model_dir / ONNX_FILE, threads), engine,
                      blend.load(model_dir, label_ids(config)))
    if threads:
        torch.set_num_threads(threads)
    tokenizer, model = load_run(model_dir)
    model = last_layer_cls_only(model)
    if info["quantize"]:
        model = quantize_int8(model)
    if dtype:
        # bfloat16 runs on CPUs with AMX or AVX512-BF16 several times faster than float32 (and on GPUs);
        # elsewhere it is emulated and slower. Scores then differ from float32 in the third decimal.
        model = model.to(getattr(torch, dtype))
        engine += f"-{dtype}"
    if not info["quantize"] and torch.cuda.is_available():
        import os

        # One process per GPU under torchrun/accelerate: each takes the GPU of its local rank.
        model = model.to(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return Scorer(tokenizer, model.config, torch_forward(model), engine + ("-cuda" if model.device.type == "cuda" else ""),
                  blend.load(model_dir, label_ids(model.config)))
