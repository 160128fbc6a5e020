"""cv: k-fold cross-validation of a config, mean ± std per metric.

Pools the prepared train and validation splits (the test split stays untouched), cuts K
stratified folds, and for each fold trains on the rest (with a stratified slice of it for early
stopping and thresholds) and evaluates on the fold, beside the TF-IDF baseline. Writes
models/<run_name>-cv/: fold-<k>/ run directories, cv.json, cv.md and cv.html (pipeline.report renders both).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

from pipeline import runs
from pipeline.config import Config, config_dict
from pipeline.data import SCHEMA_FILE, file_sha256, load_split, near_duplicates, split_rows, stable_key
from pipeline.errors import InputError
from pipeline.evaluate import evaluate
from pipeline.report import write_cv_reports
from pipeline.train import train

log = logging.getLogger("pipeline")

FIGURES = {
    "primary macro-F1": lambda m: m["primary"]["macro_f1"],
    "primary accuracy": lambda m: m["primary"]["accuracy"],
    "none F1": lambda m: m["none"]["f1"] if m.get("none", {}).get("support") else None,  # a fold without none rows
    "TF-IDF primary macro-F1": lambda m: m["baselines"].get("tfidf_char_lr", {}).get("primary", {}).get("macro_f1"),
    "TF-IDF none F1": lambda m: m["baselines"].get("tfidf_char_lr", {}).get("none_f1"),
    # A blended run (train.char_ngram_blend): the transformer half alone, so the blend's gain is measured over folds too.
    "transformer-alone primary macro-F1": lambda m: m["blend"]["transformer_alone"]["primary"]["macro_f1"] if "blend" in m else None,
    "transformer-alone none F1": lambda m: (m["blend"]["transformer_alone"]["none_f1"]
                                            if "blend" in m and m.get("none", {}).get("support") else None),
}


def _units(rows: list[dict]) -> dict[str, str]:
    """Row id -> unit key: near-duplicates share one, so a group never straddles a fold (as in prepare)."""
    groups, _ = near_duplicates([r["text"] for r in rows])
    return {rows[i]["id"]: rows[group[0]]["id"] for group in groups for i in group}


def _folds(rows: list[dict], k: int, seed: int, unit_of: dict[str, str]) -> list[list[dict]]:
    """Stratified by primary: each class's units (a row, or a near-duplicate group filed under its first
    row's class), in seeded hash order, dealt round-robin."""
    units: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        units[unit_of.get(row["id"], row["id"])].append(row)
    ordered = sorted(units.values(), key=lambda u: (u[0]["primary"], stable_key(seed, u[0]["text"])))
    folds: list[list[dict]] = [[] for _ in range(k)]
    for i, unit in enumerate(ordered):
        folds[i % k] += unit
    return folds


def cv(cfg: Config, folds: int = 5) -> dict:
    data_dir = Path(cfg.data.output_dir)
    pool = load_split(data_dir, "train") + load_split(data_dir, "validation")
    out = Path(cfg.train.output_dir) / f"{cfg.run_name}-cv"
    out.mkdir(parents=True, exist_ok=True)
    unit_of = _units(pool)
    plan = []  # every fold's splits, checked before any training starts
    for k, held in enumerate(_folds(pool, folds, cfg.seed, unit_of)):
        held_ids = {r["id"] for r in held}
        inner = split_rows([r for r in pool if r["id"] not in held_ids], cfg.data.validation_fraction or 0.1, 0.0,
                           cfg.seed, groups=unit_of)
        if not held or not inner["validation"]:
            raise InputError(f"--folds {folds}: fold {k} would get {len(held)} held-out and {len(inner['validation'])} "
                             f"validation paragraphs from the {len(pool)} pooled ones; choose fewer folds")
        plan.append((held, inner))
    per_fold = []
    for k, (held, inner) in enumerate(plan):
        log.info("fold %d of %d: training on %d paragraphs, scoring %d", k + 1, folds, len(inner["train"]), len(held))
        fold_data = out / f"data-fold-{k}"
        fold_data.mkdir(exist_ok=True)
        for name, rows in (("train", inner["train"]), ("validation", inner["validation"]), ("test", held)):
            with runs.atomic_file(fold_data / f"{name}.jsonl") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if (data_dir / SCHEMA_FILE).exists():  # a schema derived from the data (themes: null) travels with each fold
            shutil.copyfile(data_dir / SCHEMA_FILE, fold_data / SCHEMA_FILE)
        fold_cfg = cfg.model_copy(deep=True)
        fold_cfg.run_name = f"fold-{k}"
        fold_cfg.train.output_dir = str(out)
        run_dir = train(fold_cfg, data_dir=str(fold_data))
        metrics = evaluate(run_dir)
        per_fold.append({name: fn(metrics) for name, fn in FIGURES.items()})
    summary = {}
    for name in FIGURES:
        values = [f[name] for f in per_fold if f[name] is not None]
        if values:
            summary[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "folds": values}
    result = {"folds": folds, "pooled_paragraphs": len(pool), "model": cfg.model.name_or_path or "small BERT (random init)",
              "seed": cfg.seed, "summary": summary,
              # What was cross-validated, so a cv.json can be checked against the data it claims to describe.
              "data_dir": str(data_dir),
              "data_sha256": {name: file_sha256(data_dir / f"{name}.jsonl") for name in ("train", "validation")},
              "near_duplicate_groups": len(set(unit_of.values())),
              "config": config_dict(cfg)}
    runs.write_json(out / "cv.json", result)
    write_cv_reports(result, out, cfg.run_name)
    result["dir"] = str(out)
    return result
