"""Metrics shared by train (model selection, thresholds) and evaluate (reports).

Shapes: `probs` is (n_paragraphs, n_themes) float; gold rows are dicts with `primary`
(a theme id or "none") and `secondary` (list of theme ids).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.model import decide

NONE = "none"
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def tfidf_char_vectorizer():
    """Character 1-3-grams, sublinear term frequency: the baseline's features, and label suggest's similarity."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)


def tfidf_char_lr():
    """The TF-IDF baseline every report shows, and label check's cross-validated model. newton-cg reaches
    the (unique, L2-regularised) optimum in about 4 s on the default corpus; lbfgs took 26 s."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(tfidf_char_vectorizer(),
                         LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced", solver="newton-cg"))


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


def theme_metrics(rows: list[dict], probs: np.ndarray, theme_ids: list[str], thresholds: dict[str, float] | None,
                  none_gate: np.ndarray | None = None) -> dict:
    """Everything evaluate reports for one split.

    primary:   top theme vs gold primary, among paragraphs that have one (the headline).
    none:      F1 at recognising paragraphs with no theme (multi-label only).
    assigned:  7-way (themes + none) as the model answers it.
    labels:    multi-label set metrics over primary ∪ secondary.
    """
    multi = thresholds is not None
    top, labels = decide(probs, theme_ids, thresholds, none_gate)
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


# ---- Uncertainty, calibration and breakdowns for the evaluation report -------------------------

LENGTH_BUCKETS = 5
BOOTSTRAP_CHUNK = 100  # resamples per vectorised step


def confusion_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and micro-F1 from confusion counts (..., k, k), rows gold, columns predicted.

    Same definitions as classification_metrics: macro and micro over the classes that occur in the
    gold labels of that sample, F1 = 2tp / (gold count + predicted count), 0 where undefined."""
    counts = np.asarray(counts, dtype=float)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    gold, predicted = counts.sum(axis=-1), counts.sum(axis=-2)
    n = gold.sum(axis=-1)
    present = gold > 0
    denom = gold + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    n_present = present.sum(axis=-1)
    macro = np.divide((f1 * present).sum(axis=-1), n_present, out=np.zeros_like(n), where=n_present > 0)
    micro_denom = (predicted * present).sum(axis=-1) + n
    micro = np.divide(2 * (tp * present).sum(axis=-1), micro_denom, out=np.zeros_like(n), where=micro_denom > 0)
    accuracy = np.divide(tp.sum(axis=-1), n, out=np.zeros_like(n), where=n > 0)
    return {"accuracy": accuracy, "macro_f1": macro, "micro_f1": micro}


def bootstrap_ci(gold: list[str], pred: list[str], classes: list[str], against: dict[str, list[str]] | None = None,
                 resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap 95% intervals of accuracy, macro-F1 and micro-F1, paragraphs resampled with replacement.

    `against` maps a baseline name to its predictions for the same paragraphs; each gets the paired
    interval of (model - baseline), drawn from the same resamples, so a shared hard paragraph does
    not widen the difference. Returns {"primary": {metric: [low, high]},
    "vs_baselines": {name: {metric: {"delta": d, "ci": [low, high]}}}}."""
    index = {c: i for i, c in enumerate(classes)}
    k, n = len(classes), len(gold)
    g = np.array([index[x] for x in gold], dtype=np.int64)
    systems = {"model": pred, **(against or {})}
    # One code per paragraph and system: its confusion cell (gold * k + predicted).
    codes = {name: g * k + np.array([index[x] for x in p], dtype=np.int64) for name, p in systems.items()}
    rng = np.random.default_rng(seed)
    boot: dict[str, list[dict]] = {name: [] for name in systems}
    for start in range(0, resamples, BOOTSTRAP_CHUNK):  # chunks bound memory on a 10,000-paragraph split
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        picks = rng.integers(0, n, size=(size, n)) if n else np.zeros((size, 0), dtype=np.int64)
        offsets = np.arange(size)[:, None] * k * k  # each resample's cells shifted into its own block
        for name, code in codes.items():  # the same picks for every system: paired differences
            stacked = np.bincount((offsets + code[picks]).ravel(), minlength=size * k * k)
            boot[name].append(confusion_scores(stacked.reshape(size, k, k)))
    scores = {name: {m: np.concatenate([chunk[m] for chunk in chunks]) for m in chunks[0]} for name, chunks in boot.items()}
    point = {name: confusion_scores(np.bincount(code, minlength=k * k).reshape(k, k)) for name, code in codes.items()}

    tail = (1 - level) / 2 * 100
    interval = lambda values: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
    out = {"primary": {m: interval(v) for m, v in scores["model"].items()}, "vs_baselines": {}}
    for name in against or {}:
        out["vs_baselines"][name] = {
            m: {"delta": float(point["model"][m] - point[name][m]), "ci": interval(scores["model"][m] - scores[name][m])}
            for m in scores["model"]
        }
    return out


def calibration(confidence, correct, n_bins: int = 10) -> dict:
    """Reliability bins and expected calibration error (ECE) of a confidence against being right.

    Equal-width bins [low, high), the last one closed at 1. ECE = sum over bins of
    (bin size / n) * |accuracy in bin - mean confidence in bin|. Empty bins have n 0 and no means."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    # floor(c * n_bins), not searchsorted on linspace edges: those can be an ulp off, putting 0.6 below 0.6.
    which = np.minimum(np.floor(confidence * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        size = int(members.sum())
        entry = {"low": round(b / n_bins, 6), "high": round((b + 1) / n_bins, 6), "n": size,
                 "confidence": None, "accuracy": None}
        if size:
            entry["confidence"] = float(confidence[members].mean())
            entry["accuracy"] = float(correct[members].mean())
            ece += size / len(confidence) * abs(entry["accuracy"] - entry["confidence"])
        bins.append(entry)
    return {"ece": float(ece), "n": int(len(confidence)), "bins": bins}


def threshold_curves(probs: np.ndarray, gold_sets: np.ndarray, theme_ids: list[str], grid=THRESHOLD_GRID) -> dict:
    """Per theme, precision and recall of membership at each grid threshold (precision None when nothing is predicted)."""
    out = {"thresholds": [float(t) for t in grid], "per_theme": {}}
    for j, theme in enumerate(theme_ids):
        precision, recall = [], []
        positives = int(gold_sets[:, j].sum())
        for t in grid:
            said = probs[:, j] >= t
            hits = int((said & (gold_sets[:, j] == 1)).sum())
            precision.append(hits / int(said.sum()) if said.any() else None)
            recall.append(hits / positives if positives else None)
        out["per_theme"][theme] = {"precision": precision, "recall": recall, "positives": positives}
    return out


def length_edges(lengths: list[int], buckets: int = LENGTH_BUCKETS) -> list[int]:
    """Lower edges (characters) of up to `buckets` buckets holding about equal numbers of paragraphs.

    From the split's own quantiles, not fixed numbers: headlines (THUCNews, ~20 characters) and
    People's Daily paragraphs (~130) would otherwise land in a single bucket. The same split gives
    the same edges, so runs scored on it still compare bucket by bucket."""
    if not len(lengths):
        return [0]
    lengths = np.asarray(lengths)
    # floor + 1: a bucket [low, high) then holds every paragraph up to its quantile, so none is empty...
    edges = sorted({0, *(int(np.floor(x)) + 1 for x in np.quantile(lengths, np.arange(1, buckets) / buckets))})
    # ...except where many paragraphs share one length: drop those buckets.
    which = np.searchsorted(edges, lengths, side="right") - 1
    return [0] + [e for i, e in enumerate(edges) if i and (which == i).any()]


def length_buckets(lengths: list[int], gold: list[str], preds: dict[str, list[str]], classes: list[str],
                   edges: list[int] | None = None) -> dict:
    """Accuracy and macro-F1 of each system's primary per paragraph-length bucket (characters).

    `preds` maps a system name (model, baselines) to its predictions for the same paragraphs;
    `edges` are the buckets' lower edges (default: length_edges of these paragraphs)."""
    edges = list(edges) if edges is not None else length_edges(lengths)
    lengths = np.asarray(lengths)
    bounds = list(edges) + [None]
    buckets = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        label = f"{low}–{high - 1}" if high is not None else f"≥{low}"
        members = np.flatnonzero((lengths >= low) & ((lengths < high) if high is not None else True))
        bucket = {"range": label, "low": low, "high": high, "n": int(len(members)), "scores": {}}
        if len(members):
            for name, pred in preds.items():
                m = classification_metrics([gold[i] for i in members], [pred[i] for i in members], classes)
                bucket["scores"][name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        buckets.append(bucket)
    return {"edges": list(edges), "buckets": buckets}
