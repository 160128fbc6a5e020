"""Build the tokenizer and the classifier: a hub name, a local folder, or a small BERT from config.

The small BERT uses a character vocabulary, as bert-base-chinese does: every CJK character is
its own token; digits and Latin letters get WordPiece pieces (`x` and `##x`) so numbers and
words are spelled out instead of becoming [UNK].
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def load_tokenizer(name_or_path: str, max_length: int):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise _hub_hint(name_or_path, e) from None
    tokenizer.model_max_length = min(max_length, tokenizer.model_max_length or max_length)
    return tokenizer


def build_classifier(cfg: ModelConfig, theme_ids: list[str], multi_label: bool, train_texts: list[str]):
    """(tokenizer, model) for fine-tuning; label maps travel inside the model's config.json."""
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


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 64, stride: int = 32):
    """(probs (n, n_labels), windows per text). Text longer than the window is scored over
    overlapping windows whose probabilities are averaged: nothing is cut off.

    Windows are sorted by length and padded per batch, so short paragraphs do not pay for long ones.
    """
    import numpy as np
    import torch

    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32), []
    max_length = tokenizer.model_max_length
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=min(stride, max_length // 4),
        return_overflowing_tokens=True,
        padding=False,
    )
    owners = enc["overflow_to_sample_mapping"]
    ids = enc["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    multi = model.config.problem_type == "multi_label_classification"
    window_probs = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
            probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
            window_probs[batch] = probs.float().numpy()
    sums = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    counts = np.bincount(owners, minlength=len(texts))
    np.add.at(sums, owners, window_probs)
    return sums / counts[:, None], counts.tolist()
