"""train: fine-tune a BERT classifier on the prepared splits with transformers.Trainer.

Reads data.output_dir/{train,validation}.jsonl. Writes models/<run_name>/: model.safetensors,
config.json (id2label, label2id, problem_type, theme_thresholds), tokenizer files, config.yaml
(resolved), data.json (split hashes) and train_metrics.json, then points models/latest at it.
The run directory appears only when complete (built in a temporary folder, then renamed).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from pipeline import runs
from pipeline.config import Config, save_config
from pipeline.data import NONE, file_sha256, load_split, resolve_schema
from pipeline.errors import InputError
from pipeline.metrics import choose_thresholds, membership, selection_score
from pipeline.model import build_classifier, score_texts

log = logging.getLogger("pipeline")


def _targets(rows: list[dict], theme_ids: list[str], multi_label: bool, secondary_weight: float):
    """Multi-label: float vectors, 1 for the primary and `secondary_weight` for secondaries, so the
    top score learns to be the primary. Single-label: the primary's index."""
    index = {t: i for i, t in enumerate(theme_ids)}
    if not multi_label:
        return [index[r["primary"]] for r in rows]
    out = []
    for r in rows:
        vec = [0.0] * len(theme_ids)
        for t in r["secondary"]:
            vec[index[t]] = secondary_weight
        if r["primary"] != NONE:
            vec[index[r["primary"]]] = 1.0
        out.append(vec)
    return out


def _loss_with_class_weights(rows: list[dict], theme_ids: list[str], multi_label: bool):
    """A compute_loss_func for Trainer weighting rare themes up (inverse frequency, capped at 10)."""
    import torch

    if multi_label:
        positives = membership(rows, theme_ids).sum(axis=0).clip(min=1)
        pos_weight = torch.tensor(((len(rows) - positives) / positives).clip(1, 10), dtype=torch.float32)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    else:
        counts = np.bincount([theme_ids.index(r["primary"]) for r in rows], minlength=len(theme_ids)).clip(min=1)
        weight = torch.tensor((counts.sum() / (len(counts) * counts)).clip(max=10), dtype=torch.float32)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def compute_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        loss_fn.to(logits.device)  # weights live where the model runs (CPU or GPU)
        return loss_fn(logits, labels.to(logits.dtype) if multi_label else labels)

    return compute_loss


def train(cfg: Config, data_dir: str | None = None) -> Path:
    """Fine-tune per cfg and return the run directory."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    multi = cfg.train.mode == "multi_label"
    data_dir = Path(data_dir or cfg.data.output_dir)
    train_rows, val_rows = load_split(data_dir, "train"), load_split(data_dir, "validation")
    if not multi:  # a softmax over themes cannot say "none": those paragraphs are left out, and counted
        dropped = sum(r["primary"] == NONE for r in train_rows + val_rows)
        train_rows = [r for r in train_rows if r["primary"] != NONE]
        val_rows = [r for r in val_rows if r["primary"] != NONE]
        log.info("single_label mode: %d paragraphs labelled none left out of train/validation", dropped)
    if not train_rows or not val_rows:
        raise InputError(
            f"{data_dir}: train has {len(train_rows)} and validation {len(val_rows)} usable paragraphs; "
            f"expected at least one each: label more paragraphs or raise data.validation_fraction"
        )
    resolve_schema(cfg, data_dir)
    theme_ids = cfg.theme_ids
    set_seed(cfg.seed)
    tokenizer, model = build_classifier(cfg.model, theme_ids, multi, [r["text"] for r in train_rows])

    def encode(rows):
        ds = Dataset.from_dict({"text": [r["text"] for r in rows],
                                "labels": _targets(rows, theme_ids, multi, cfg.train.secondary_weight)})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=tokenizer.model_max_length),
                      batched=True, remove_columns=["text"])

    train_ds, val_ds = encode(train_rows), encode(val_rows)

    def compute_metrics(pred):
        logits = torch.tensor(pred.predictions)
        probs = (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy()
        return {"macro_f1": selection_score(val_rows, probs, theme_ids, multi)}

    models_dir = Path(cfg.train.output_dir)
    final = models_dir / cfg.run_name
    start = time.time()
    with runs.atomic_dir(final) as run_dir:
        args = TrainingArguments(
            output_dir=str(run_dir / "checkpoints"),
            num_train_epochs=cfg.train.epochs,
            per_device_train_batch_size=cfg.train.batch_size,
            per_device_eval_batch_size=max(cfg.train.batch_size, 64),
            learning_rate=cfg.train.learning_rate,
            weight_decay=cfg.train.weight_decay,
            warmup_steps=cfg.train.warmup_ratio,  # a float below 1 is a ratio of total steps
            lr_scheduler_type="linear",
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model="macro_f1",
            greater_is_better=True,
            logging_strategy="epoch",
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=not _is_tty(),
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            compute_loss_func=_loss_with_class_weights(train_rows, theme_ids, multi) if cfg.train.class_weights else None,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience)],
        )
        result = trainer.train()
        model = trainer.model.eval()
        val_probs, _ = score_texts(model, tokenizer, [r["text"] for r in val_rows])
        if multi:
            model.config.theme_thresholds = choose_thresholds(val_probs, membership(val_rows, theme_ids), theme_ids)
        trainer.save_model(str(run_dir))  # safetensors weights, config.json with label maps, tokenizer
        (run_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: nothing in a run dir is unpickled
        _remove_checkpoints(run_dir / "checkpoints")
        save_config(cfg, run_dir / runs.RESOLVED_CONFIG)
        runs.write_json(run_dir / runs.DATA_INFO, {
            "data_dir": str(data_dir),
            "sha256": {name: file_sha256(data_dir / f"{name}.jsonl") for name in ("train", "validation", "test")},
            "train_paragraphs": len(train_rows),
            "validation_paragraphs": len(val_rows),
        })
        history = [e for e in trainer.state.log_history if "eval_macro_f1" in e]
        runs.write_json(run_dir / runs.TRAIN_METRICS, {
            "seed": cfg.seed,
            "train_seconds": round(time.time() - start, 1),
            "train_loss": result.training_loss,
            "epochs_run": trainer.state.epoch,
            "best_validation_macro_f1": trainer.state.best_metric,
            "validation_history": [{"epoch": e["epoch"], "macro_f1": e["eval_macro_f1"]} for e in history],
            "thresholds": getattr(model.config, "theme_thresholds", None),
        })
    runs.point_latest(models_dir, final)
    return final


def _remove_checkpoints(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _is_tty() -> bool:
    return os.isatty(2)
