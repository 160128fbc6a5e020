"""Metrics shared by train (model selection, thresholds) and evaluate (reports).

Shapes: `probs` is (n_paragraphs, n_themes) float; gold rows are dicts with `primary`
(a theme id or "none") and `secondary` (list of theme ids).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

NONE = "none"
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def membership(rows: list[dict], theme_ids: list[str]) -> np.ndarray:
    """(n, n_themes) 0/1: primary ∪ secondary."""
    index = {t: i for i, t in enumerate(theme_ids)}
    out = np.zeros((len(rows), len(theme_ids)), dtype=int)
    for r, row in enumerate(rows):
        for theme in [row["primary"], *row.get("secondary", [])]:
            if theme in index:
                out[r, index[theme]] = 1
    return out


def choose_thresholds(probs: np.ndarray, gold: np.ndarray, theme_ids: list[str]) -> dict[str, float]:
    """Per theme, the grid threshold with the best F1 on validation membership (0.5 if no positives)."""
    thresholds = {}
    for j, theme in enumerate(theme_ids):
        if gold[:, j].sum() == 0:
            thresholds[theme] = 0.5
            continue
        scores = [f1_score(gold[:, j], probs[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID]
        thresholds[theme] = float(THRESHOLD_GRID[int(np.argmax(scores))])
    return thresholds


def decide(probs: np.ndarray, theme_ids: list[str], thresholds: dict[str, float] | None):
    """(top theme per row, themes above threshold per row). Without thresholds (single-label) labels = [top]."""
    top = [theme_ids[i] for i in probs.argmax(axis=1)]
    if thresholds is None:
        return top, [[t] for t in top]
    cut = np.array([thresholds[t] for t in theme_ids])
    labels = [[theme_ids[j] for j in np.flatnonzero(row >= cut)] for row in probs]
    # Order labels by score so the first is the strongest.
    labels = [sorted(ls, key=lambda t: -probs[i, theme_ids.index(t)]) for i, ls in enumerate(labels)]
    return top, labels


def predicted_primary(top: list[str], labels: list[list[str]], multi_label: bool) -> list[str]:
    """The primary a paragraph is assigned: none when a multi-label model finds no theme."""
    if not multi_label:
        return top
    return [t if ls else NONE for t, ls in zip(top, labels)]


def classification_metrics(gold_primary: list[str], pred_primary: list[str], classes: list[str]) -> dict:
    """Accuracy, macro/micro F1, per-class P/R/F1/support and the confusion matrix (rows gold, cols predicted)."""
    p, r, f, s = precision_recall_fscore_support(gold_primary, pred_primary, labels=classes, zero_division=0)
    present = [c for c, n in zip(classes, s) if n > 0]
    return {
        "accuracy": float(accuracy_score(gold_primary, pred_primary)),
        "macro_f1": float(f1_score(gold_primary, pred_primary, labels=present, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(gold_primary, pred_primary, labels=present, average="micro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": {"labels": classes, "matrix": confusion_matrix(gold_primary, pred_primary, labels=classes).tolist()},
    }


def theme_metrics(rows: list[dict], probs: np.ndarray, theme_ids: list[str], thresholds: dict[str, float] | None) -> dict:
    """Everything evaluate reports for one split.

    primary:   top theme vs gold primary, among paragraphs that have one (the headline).
    none:      F1 at recognising paragraphs with no theme (multi-label only).
    assigned:  7-way (themes + none) as the model answers it.
    labels:    multi-label set metrics over primary ∪ secondary.
    """
    multi = thresholds is not None
    top, labels = decide(probs, theme_ids, thresholds)
    gold = [r["primary"] for r in rows]
    themed = [i for i, g in enumerate(gold) if g != NONE]
    out = {"n": len(rows), "n_with_theme": len(themed)}
    out["primary"] = classification_metrics([gold[i] for i in themed], [top[i] for i in themed], theme_ids)
    if multi:
        assigned = predicted_primary(top, labels, multi)
        out["assigned"] = classification_metrics(gold, assigned, theme_ids + [NONE])
        gold_none = [g == NONE for g in gold]
        pred_none = [not ls for ls in labels]
        p, r, f, _ = precision_recall_fscore_support(gold_none, pred_none, average="binary", zero_division=0)
        out["none"] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(sum(gold_none))}
        gold_sets = membership(rows, theme_ids)
        pred_sets = np.array([[int(t in ls) for t in theme_ids] for ls in labels]).reshape(len(rows), len(theme_ids))
        p, r, f, s = precision_recall_fscore_support(gold_sets, pred_sets, zero_division=0)
        out["labels"] = {
            "macro_f1": float(f1_score(gold_sets, pred_sets, average="macro", zero_division=0)),
            "micro_f1": float(f1_score(gold_sets, pred_sets, average="micro", zero_division=0)),
            "per_theme": {
                t: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j]),
                    "threshold": thresholds[t]}
                for j, t in enumerate(theme_ids)
            },
        }
    return out


def selection_score(rows: list[dict], probs: np.ndarray, theme_ids: list[str], multi_label: bool) -> float:
    """The validation figure early stopping watches: macro-F1 over themes (+ none at 0.5 for multi-label)."""
    gold = [r["primary"] for r in rows]
    top = [theme_ids[i] for i in probs.argmax(axis=1)]
    if multi_label:
        pred = [t if p.max() >= 0.5 else NONE for t, p in zip(top, probs)]
        classes = sorted(set(gold))
    else:
        keep = [i for i, g in enumerate(gold) if g != NONE]
        gold, pred = [gold[i] for i in keep], [top[i] for i in keep]
        classes = sorted(set(gold))
    return float(f1_score(gold, pred, labels=classes, average="macro", zero_division=0))
