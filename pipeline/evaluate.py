"""evaluate: score a run on a held-out split, beside simple baselines, and write the report.

Reads the run directory (model, config.yaml, data.json) and the split it names. Writes into
the run directory: metrics.json, predictions.jsonl (one line per test paragraph), and through
pipeline.report the pages rendered from them: report.md, report.html and README.md (model card).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from pipeline import blend, runs
from pipeline.config import load_config
from pipeline.data import NONE, file_sha256, load_split
from pipeline.errors import InputError, RunDirError
from pipeline.metrics import (bootstrap_ci, calibration, classification_metrics, length_buckets, membership,
                              tfidf_char_lr, theme_metrics, threshold_curves)
from pipeline.model import decide, label_ids, load_run, score_texts
from pipeline.report import MODEL_CARD, REPORT_HTML, write_reports

BOOTSTRAP_RESAMPLES = 1000  # enough for stable 2.5/97.5 percentiles; vectorised, well under a second


def baseline_predictions(train_rows: list[dict], test_rows: list[dict], multi_label: bool) -> dict:
    """name -> (top theme per test row, says-none per test row) for the majority class and a TF-IDF
    character 1-3-gram logistic regression, fitted on `train_rows`.

    Primary = best theme among themes; `none` when the none class wins overall (multi-label only)."""
    fit_rows = train_rows if multi_label else [r for r in train_rows if r["primary"] != NONE]
    counts = Counter(r["primary"] for r in fit_rows)
    themed = Counter({label: n for label, n in counts.items() if label != NONE})
    if not themed:
        raise InputError("the train split has no labelled rows, only none: label some, or check the label column")
    # The commonest theme as the primary; "no theme" for every row where none is the commonest class.
    majority, says_none = themed.most_common(1)[0][0], counts.most_common(1)[0][0] == NONE
    result = {"majority": ([majority] * len(test_rows), [says_none] * len(test_rows))}
    if len({r["primary"] for r in fit_rows}) >= 2:
        clf = tfidf_char_lr().fit([r["text"] for r in fit_rows], [r["primary"] for r in fit_rows])
        proba = clf.predict_proba([r["text"] for r in test_rows])
        classes = list(clf.classes_)
        theme_cols = [j for j, c in enumerate(classes) if c != NONE]
        top = [classes[theme_cols[int(np.argmax(row[theme_cols]))]] for row in proba]
        says_none = [classes[int(np.argmax(row))] == NONE for row in proba]
        result["tfidf_char_lr"] = (top, says_none)
    return result


def score_baselines(predictions: dict, test_rows: list[dict], theme_ids: list[str], multi_label: bool) -> dict:
    """Score baseline_predictions like the model: primary over paragraphs with a theme, none F1 (multi-label)."""
    themed = [i for i, r in enumerate(test_rows) if r["primary"] != NONE]
    out = {}
    for name, (top, says_none) in predictions.items():
        scored = {"primary": classification_metrics([test_rows[i]["primary"] for i in themed], [top[i] for i in themed], theme_ids)}
        if multi_label:
            gold_none = [r["primary"] == NONE for r in test_rows]
            scored["none_f1"] = float(f1_score(gold_none, says_none, zero_division=0))
        if name == "majority":
            scored = {"predicts": top[0] if top else None, **scored}
        out[name] = scored
    return out


def baselines(train_rows: list[dict], test_rows: list[dict], theme_ids: list[str], multi_label: bool) -> dict:
    """Majority class and a TF-IDF character 1-3-gram logistic regression, same split as the model, scored."""
    return score_baselines(baseline_predictions(train_rows, test_rows, multi_label), test_rows, theme_ids, multi_label)


def report_figures(rows: list[dict], probs: np.ndarray, theme_ids: list[str], thresholds: dict | None,
                   base_top: dict[str, list[str]], seed: int) -> dict:
    """The metrics.json keys behind the report's figures: bootstrap intervals (model and model - baseline),
    calibration of the top-theme score, scores by paragraph length, and per-theme threshold curves."""
    top, _ = decide(probs, theme_ids, thresholds)
    themed = [i for i, r in enumerate(rows) if r["primary"] != NONE]
    gold = [rows[i]["primary"] for i in themed]
    pick = lambda values: [values[i] for i in themed]
    out = {"confidence_intervals": {
        "method": "percentile bootstrap over paragraphs with a theme; vs_baselines: paired, model minus baseline",
        "resamples": BOOTSTRAP_RESAMPLES, "seed": seed, "level": 0.95,
        **bootstrap_ci(gold, pick(top), theme_ids, {name: pick(p) for name, p in base_top.items()},
                       resamples=BOOTSTRAP_RESAMPLES, seed=seed),
    }}
    confidence = probs[themed].max(axis=1) if themed else np.zeros(0)
    out["calibration"] = {
        "of": "top-theme score against the gold primary, paragraphs with a theme",
        **calibration(confidence, [t == g for t, g in zip(pick(top), gold)]),
    }
    systems = {"model": pick(top), **{name: pick(p) for name, p in base_top.items() if name != "majority"}}
    out["by_length"] = length_buckets([len(rows[i]["text"]) for i in themed], gold, systems, theme_ids)
    if thresholds is not None:
        out["threshold_curves"] = threshold_curves(probs, membership(rows, theme_ids), theme_ids)
    return out


def _cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "scikit-learn", "policy-theme-pipeline"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def output_files(split: str) -> list[str]:
    """What evaluate writes into the run directory. The test split's files are the run's evaluation (the
    pages and model card are rendered from them); scoring validation must not overwrite them, so its
    files carry the split's name."""
    if split == "test":
        return [runs.METRICS, runs.TEST_PREDICTIONS, REPORT_HTML, runs.REPORT_MD, MODEL_CARD]
    return [f"metrics-{split}.json", f"predictions-{split}.jsonl"]


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """Score the run on `split` and write metrics.json, predictions.jsonl, report.md, report.html and README.md into it."""
    if split not in ("test", "validation"):
        raise RunDirError(f"--split expects test or validation, found {split!r}")
    run_dir = runs.check_run_dir(run_dir)
    cfg = load_config(run_dir / runs.RESOLVED_CONFIG)
    data_info = runs.read_json(run_dir / runs.DATA_INFO)
    data_dir = Path(data_info["data_dir"])
    if not data_dir.is_dir():
        where = " (a path relative to the folder `train` ran in: run evaluate from there)" if not data_dir.is_absolute() else ""
        raise RunDirError(f"the prepared data {data_dir} that {run_dir} was trained on is not here{where}; "
                          f"or rebuild it with `pipeline prepare CONFIG`")
    rows = load_split(data_dir, split)
    if not rows:
        raise RunDirError(f"{data_dir}/{split}.jsonl is empty; expected held-out paragraphs: raise data.test_fraction")
    for name in dict.fromkeys([split, "train"]):  # train: the baselines are fitted on it
        if file_sha256(data_dir / f"{name}.jsonl") != data_info["sha256"].get(name):
            raise RunDirError(
                f"{data_dir}/{name}.jsonl changed since {run_dir} was trained (hash differs); "
                f"retrain with `pipeline train CONFIG` or restore the data it was trained on"
            )
    tokenizer, model = load_run(run_dir)
    theme_ids = label_ids(model.config)
    thresholds = getattr(model.config, "theme_thresholds", None)
    multi = thresholds is not None
    left_out = 0
    if not multi:  # a single-label model always answers a label: rows without one cannot be scored
        left_out = sum(r["primary"] == NONE for r in rows)
        rows = [r for r in rows if r["primary"] != NONE]
        if not rows:
            raise RunDirError(f"{data_dir}/{split}.jsonl has no labelled rows to score ({left_out} without a label)")
    start = time.time()
    texts = [r["text"] for r in rows]
    probs, windows = score_texts(model, tokenizer, texts)
    ngrams, none_gate = blend.load(run_dir, theme_ids), None
    if ngrams is not None:  # train.char_ngram_blend: the run's answer is the blend; the transformer alone is reported too
        transformer_probs, (probs, none_gate) = probs, ngrams.blend(probs, texts)
    seconds = time.time() - start
    metrics = theme_metrics(rows, probs, theme_ids, thresholds, none_gate)
    if ngrams is not None:
        alone = theme_metrics(rows, transformer_probs, theme_ids, ngrams.transformer_thresholds)
        metrics["blend"] = {
            "transformer_share": ngrams.weight,
            "pooling": ngrams.pooling,
            "transformer_alone": {"primary": {k: alone["primary"][k] for k in ("accuracy", "macro_f1")},
                                  "none_f1": alone["none"]["f1"] if "none" in alone else None},
        }
    metrics["split"] = split
    metrics["mode"] = "multi_label" if multi else "single_label"
    metrics["left_out_without_label"] = left_out
    predictions = baseline_predictions(load_split(data_dir, "train"), rows, multi)
    metrics["baselines"] = score_baselines(predictions, rows, theme_ids, multi)
    metrics.update(report_figures(rows, probs, theme_ids, thresholds, {n: p[0] for n, p in predictions.items()}, cfg.seed))
    metrics["run"] = {
        "run_dir": str(run_dir),
        "model": cfg.model.name_or_path or "small BERT (random init)",
        "seed": cfg.seed,
        "data_sha256": data_info["sha256"],
        "evaluated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        "paragraphs_per_second": round(len(rows) / max(seconds, 1e-9), 1),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "versions": _versions(),
    }
    top, labels = decide(probs, theme_ids, thresholds, none_gate)
    metrics_file, predictions_file = output_files(split)[:2]
    with runs.atomic_file(run_dir / predictions_file) as f:
        for row, t, ls, p, w in zip(rows, top, labels, probs, windows):
            f.write(json.dumps({
                "id": row["id"], "text": row["text"], "gold_primary": row["primary"], "gold_secondary": row["secondary"],
                "label": t, "labels": ls, "scores": {th: round(float(x), 4) for th, x in zip(theme_ids, p)}, "windows": w,
            }, ensure_ascii=False) + "\n")
    runs.write_json(run_dir / metrics_file, metrics)
    if split == "test":
        # The pages are rendered from the files just written, so what they show is what metrics.json says.
        write_reports(run_dir)
    return metrics
