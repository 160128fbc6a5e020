"""cv: k-fold cross-validation of a config, mean ± std per metric.

Pools the prepared train and validation splits (the test split stays untouched), cuts K
stratified folds, and for each fold trains on the rest (with a stratified slice of it for early
stopping and thresholds) and evaluates on the fold, beside the TF-IDF baseline. Writes
models/<run_name>-cv/: fold-<k>/ run directories, cv.json, cv.md and cv.html (pipeline.report renders both).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pipeline import runs
from pipeline.config import Config
from pipeline.data import load_split, split_rows
from pipeline.evaluate import evaluate
from pipeline.report import write_cv_reports
from pipeline.train import train

FIGURES = {
    "primary macro-F1": lambda m: m["primary"]["macro_f1"],
    "primary accuracy": lambda m: m["primary"]["accuracy"],
    "none F1": lambda m: m.get("none", {}).get("f1"),
    "TF-IDF primary macro-F1": lambda m: m["baselines"].get("tfidf_char_lr", {}).get("primary", {}).get("macro_f1"),
    "TF-IDF none F1": lambda m: m["baselines"].get("tfidf_char_lr", {}).get("none_f1"),
}


def _folds(rows: list[dict], k: int, seed: int) -> list[list[dict]]:
    """Stratified by primary: each class's members (in seeded hash order) dealt round-robin."""
    ordered = split_rows(rows, 0.0, 0.0, seed)["train"]
    ordered.sort(key=lambda r: r["primary"])  # stable: keeps the seeded order within a class
    folds: list[list[dict]] = [[] for _ in range(k)]
    for i, row in enumerate(ordered):
        folds[i % k].append(row)
    return folds


def cv(cfg: Config, folds: int = 5) -> dict:
    data_dir = Path(cfg.data.output_dir)
    pool = load_split(data_dir, "train") + load_split(data_dir, "validation")
    out = Path(cfg.train.output_dir) / f"{cfg.run_name}-cv"
    out.mkdir(parents=True, exist_ok=True)
    per_fold = []
    for k, held in enumerate(_folds(pool, folds, cfg.seed)):
        held_ids = {r["id"] for r in held}
        rest = [r for r in pool if r["id"] not in held_ids]
        inner = split_rows(rest, cfg.data.validation_fraction or 0.1, 0.0, cfg.seed)
        fold_data = out / f"data-fold-{k}"
        fold_data.mkdir(exist_ok=True)
        for name, rows in (("train", inner["train"]), ("validation", inner["validation"]), ("test", held)):
            with runs.atomic_file(fold_data / f"{name}.jsonl") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
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
              "seed": cfg.seed, "summary": summary}
    runs.write_json(out / "cv.json", result)
    write_cv_reports(result, out, cfg.run_name)
    result["dir"] = str(out)
    return result
