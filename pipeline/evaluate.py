"""evaluate: score a run on a held-out split, beside simple baselines, and write the report.

Reads the run directory (model, config.yaml, data.json) and the split it names. Writes into
the run directory: metrics.json, report.md and predictions.jsonl (one line per test paragraph).
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from pipeline import runs
from pipeline.config import load_config
from pipeline.data import NONE, file_sha256, load_split
from pipeline.errors import RunDirError
from pipeline.metrics import classification_metrics, decide, theme_metrics
from pipeline.model import load_run, score_texts


def baselines(train_rows: list[dict], test_rows: list[dict], theme_ids: list[str], multi_label: bool) -> dict:
    """Majority class and a TF-IDF character 1-3-gram logistic regression, same split as the model.

    Scored like the model: primary = best theme among paragraphs that have one; `none` when the
    none class wins overall (multi-label runs only)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    themed = [i for i, r in enumerate(test_rows) if r["primary"] != NONE]

    def scored(top: list[str], says_none: list[bool]) -> dict:
        out = {"primary": classification_metrics([test_rows[i]["primary"] for i in themed], [top[i] for i in themed], theme_ids)}
        if multi_label:
            gold_none = [r["primary"] == NONE for r in test_rows]
            out["none_f1"] = float(f1_score(gold_none, says_none, zero_division=0))
        return out

    fit_rows = train_rows if multi_label else [r for r in train_rows if r["primary"] != NONE]
    majority = Counter(r["primary"] for r in fit_rows if r["primary"] != NONE).most_common(1)[0][0]
    result = {"majority": {"predicts": majority, **scored([majority] * len(test_rows), [False] * len(test_rows))}}
    if len({r["primary"] for r in fit_rows}) >= 2:
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
        clf = LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced")
        clf.fit(vectorizer.fit_transform([r["text"] for r in fit_rows]), [r["primary"] for r in fit_rows])
        proba = clf.predict_proba(vectorizer.transform([r["text"] for r in test_rows]))
        classes = list(clf.classes_)
        theme_cols = [j for j, c in enumerate(classes) if c != NONE]
        top = [classes[theme_cols[int(np.argmax(row[theme_cols]))]] for row in proba]
        says_none = [classes[int(np.argmax(row))] == NONE for row in proba]
        result["tfidf_char_lr"] = scored(top, says_none)
    return result


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """Score the run on `split` and write metrics.json, report.md and predictions.jsonl into it."""
    run_dir = runs.check_run_dir(run_dir)
    cfg = load_config(run_dir / runs.RESOLVED_CONFIG)
    data_info = runs.read_json(run_dir / runs.DATA_INFO)
    data_dir = Path(data_info["data_dir"])
    rows = load_split(data_dir, split)
    if not rows:
        raise RunDirError(f"{data_dir}/{split}.jsonl is empty; expected held-out paragraphs: raise data.test_fraction")
    current = file_sha256(data_dir / f"{split}.jsonl")
    if current != data_info["sha256"].get(split):
        raise RunDirError(
            f"{data_dir}/{split}.jsonl changed since {run_dir} was trained (hash differs); "
            f"retrain with `pipeline train CONFIG` or restore the data it was trained on"
        )
    tokenizer, model = load_run(run_dir)
    theme_ids = [model.config.id2label[i] for i in range(model.config.num_labels)]
    thresholds = getattr(model.config, "theme_thresholds", None)
    multi = thresholds is not None
    if not multi:
        rows = [r for r in rows if r["primary"] != NONE]
    start = time.time()
    probs, windows = score_texts(model, tokenizer, [r["text"] for r in rows])
    seconds = time.time() - start
    metrics = theme_metrics(rows, probs, theme_ids, thresholds)
    metrics["split"] = split
    metrics["mode"] = "multi_label" if multi else "single_label"
    metrics["baselines"] = baselines(load_split(data_dir, "train"), rows, theme_ids, multi)
    metrics["run"] = {
        "run_dir": str(run_dir),
        "model": cfg.model.name_or_path or "small BERT (random init)",
        "seed": cfg.seed,
        "data_sha256": data_info["sha256"],
        "evaluated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        "paragraphs_per_second": round(len(rows) / max(seconds, 1e-9), 1),
    }
    top, labels = decide(probs, theme_ids, thresholds)
    with runs.atomic_file(run_dir / runs.TEST_PREDICTIONS) as f:
        for row, t, ls, p, w in zip(rows, top, labels, probs, windows):
            f.write(json.dumps({
                "id": row["id"], "text": row["text"], "gold_primary": row["primary"], "gold_secondary": row["secondary"],
                "label": t, "labels": ls, "scores": {th: round(float(x), 4) for th, x in zip(theme_ids, p)}, "windows": w,
            }, ensure_ascii=False) + "\n")
    runs.write_json(run_dir / runs.METRICS, metrics)
    with runs.atomic_file(run_dir / runs.REPORT_MD) as f:
        f.write(render_markdown(metrics, rows, top, labels, probs))
    return metrics


def _pct(x: float) -> str:
    return f"{x:.3f}"


def render_markdown(m: dict, rows: list[dict], top: list[str], labels: list[list[str]], probs: np.ndarray) -> str:
    primary = m["primary"]
    lines = [f"# Evaluation report: {Path(m['run']['run_dir']).name}", ""]
    lines += [f"Split `{m['split']}`: {m['n']} paragraphs, {m['n_with_theme']} with a theme. Mode: {m['mode']}.", ""]
    lines += ["## Headline", "", "| figure | model | TF-IDF char LR | majority |", "|---|---|---|---|"]
    base = m["baselines"]
    tf = base.get("tfidf_char_lr", {})
    maj = base["majority"]
    for key, name in (("macro_f1", "primary macro-F1"), ("micro_f1", "primary micro-F1"), ("accuracy", "primary accuracy")):
        lines.append(f"| {name} | {_pct(primary[key])} | {_pct(tf['primary'][key]) if tf else '-'} | {_pct(maj['primary'][key])} |")
    if "none" in m:
        lines.append(f"| none F1 | {_pct(m['none']['f1'])} | {_pct(tf['none_f1']) if tf else '-'} | {_pct(maj['none_f1'])} |")
        lines.append(f"| label-set macro-F1 | {_pct(m['labels']['macro_f1'])} | - | - |")
    lines += ["", "Primary figures are over paragraphs that have a theme: the top-scoring theme against the gold primary.", ""]
    lines += ["## Per theme (primary)", "", "| theme | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for theme, s in primary["per_class"].items():
        lines.append(f"| {theme} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | {s['support']} |")
    if "labels" in m:
        lines += ["", "## Label sets (primary ∪ secondary, thresholds tuned on validation)", "",
                  "| theme | threshold | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
        for theme, s in m["labels"]["per_theme"].items():
            lines.append(f"| {theme} | {s['threshold']:.2f} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | {s['support']} |")
        n = m["none"]
        lines += ["", f"Recognising `none`: precision {_pct(n['precision'])}, recall {_pct(n['recall'])}, F1 {_pct(n['f1'])}, support {n['support']}."]
    cm = m.get("assigned", primary)["confusion_matrix"]
    lines += ["", "## Confusion matrix (rows gold, columns predicted)", "", "| gold \\ predicted | " + " | ".join(cm["labels"]) + " |",
              "|---|" + "---|" * len(cm["labels"])]
    for label, row in zip(cm["labels"], cm["matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(x) for x in row) + " |")
    lines += ["", "## Worst mistakes", "", "| gold | predicted | confidence | text |", "|---|---|---|---|"]
    mistakes = []
    for i, row in enumerate(rows):
        pred = top[i] if labels[i] else NONE
        if pred != row["primary"]:
            mistakes.append((float(probs[i].max()), row["primary"], pred, row["text"]))
    for conf, gold, pred, text in sorted(mistakes, reverse=True)[:15]:
        lines.append(f"| {gold} | {pred} | {conf:.2f} | {text[:80].replace('|', '/')}{'…' if len(text) > 80 else ''} |")
    run = m["run"]
    lines += ["", "## Run", "", f"- model: {run['model']}", f"- seed: {run['seed']}",
              f"- data sha256: " + ", ".join(f"{k} {v[:12]}" for k, v in run["data_sha256"].items()),
              f"- evaluated: {run['evaluated_at']} on {run['machine']}", ""]
    return "\n".join(lines)
