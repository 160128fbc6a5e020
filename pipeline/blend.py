"""A character n-gram linear model trained beside the transformer, and the blend of the two.

Why: with a few thousand labelled paragraphs and a CPU's fine-tuning budget, a small transformer and
a TF-IDF character n-gram logistic regression make different mistakes. Averaging their probabilities,
with the share chosen on validation, beat either alone on both of this project's corpora
(docs/MEASUREMENTS.md). `train.char_ngram_blend: true` turns it on; the report shows the transformer
alone beside the blend, so the gain is measured in every run.

Writes, beside the transformer in the run directory: char_ngrams.safetensors (idf (n_features,),
coef (n_labels, n_features), intercept (n_labels,), float32) and char_ngrams.json (the n-grams in
feature order, the label order, multi-label or not, the transformer's share of the blend and, for
multi-label runs, the thresholds the transformer alone would use, so reports can show it alone). Nothing is pickled:
the vectoriser is rebuilt from its vocabulary and idf, the linear model is one matrix product.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

WEIGHTS_FILE = "char_ngrams.safetensors"
INFO_FILE = "char_ngrams.json"
SHARES = np.round(np.arange(0.0, 1.01, 0.1), 1)  # the transformer's share of the blend, tried on validation
NGRAM_RANGE = (1, 3)


class CharNgrams(NamedTuple):
    """A fitted TF-IDF vectoriser and linear scores per label; `weight` is the transformer's share."""

    vectorizer: object
    coef: np.ndarray  # (n_labels, n_features)
    intercept: np.ndarray  # (n_labels,)
    label_ids: list[str]
    multi_label: bool
    weight: float
    transformer_thresholds: dict[str, float] | None = None  # multi-label: the transformer's own, for its figures alone

    def probs(self, texts: list[str]) -> np.ndarray:
        """(n, n_labels): per-label sigmoids (one-vs-rest) for multi-label, a softmax otherwise."""
        if not texts:
            return np.zeros((0, len(self.label_ids)), dtype=np.float32)
        scores = np.asarray(self.vectorizer.transform(texts) @ self.coef.T) + self.intercept
        if self.multi_label:
            from scipy.special import expit

            return expit(scores).astype(np.float32)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def blend(self, transformer_probs: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.weight * transformer_probs + (1.0 - self.weight) * self.probs(texts)


def _vectorizer(**kwargs):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # The same features as the TF-IDF baseline in every report (metrics.tfidf_char_vectorizer).
    return TfidfVectorizer(analyzer="char", ngram_range=NGRAM_RANGE, sublinear_tf=True, dtype=np.float32, **kwargs)


def fit(rows: list[dict], label_ids: list[str], multi_label: bool) -> CharNgrams:
    """Fit on the training rows: one logistic regression per label over primary ∪ secondary
    (multi-label), or one multinomial regression over the primary (single-label)."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.metrics import membership

    vectorizer = _vectorizer()
    x = vectorizer.fit_transform([r["text"] for r in rows])

    def regression():
        # As the baseline: C=10 and balanced classes; newton-cg reaches the unique optimum quickly.
        return LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000, solver="newton-cg")

    coef = np.zeros((len(label_ids), x.shape[1]), np.float32)
    intercept = np.full(len(label_ids), -1e4, np.float32)  # a label training never shows scores 0
    if multi_label:
        gold = membership(rows, label_ids)
        for j in range(len(label_ids)):
            if gold[:, j].all():
                intercept[j] = 1e4
            elif gold[:, j].any():
                lr = regression().fit(x, gold[:, j])
                coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
    else:
        primary = [r["primary"] for r in rows]
        if len(set(primary)) == 1:
            intercept[label_ids.index(primary[0])] = 0.0
        else:
            lr = regression().fit(x, primary)
            weights, biases = lr.coef_, lr.intercept_
            if len(lr.classes_) == 2:  # sklearn keeps one row, the second class's log-odds: as a softmax, ± half of it
                weights, biases = np.vstack([-weights / 2, weights / 2]), np.array([-biases[0] / 2, biases[0] / 2])
            for label, w, b in zip(lr.classes_, weights, biases):
                coef[label_ids.index(label)], intercept[label_ids.index(label)] = w, b
    return CharNgrams(vectorizer, coef, intercept, list(label_ids), multi_label, 1.0, None)


def choose_weight(ngrams: CharNgrams, rows: list[dict], transformer_probs: np.ndarray) -> tuple[float, dict[str, float]]:
    """The transformer's share (0 to 1 in steps of 0.1) with the best validation score, and the score of
    each share. Multi-label: macro-F1 of the primary with `none` as a class, after choosing thresholds
    for that share, as the run will use them; single-label: macro-F1 of the top label."""
    from pipeline.metrics import choose_thresholds, membership, predicted_primary, selection_score
    from pipeline.model import decide

    linear = ngrams.probs([r["text"] for r in rows])
    gold = [r["primary"] for r in rows]
    scores = {}
    for share in SHARES:
        probs = share * transformer_probs + (1 - share) * linear
        if ngrams.multi_label:
            from sklearn.metrics import f1_score

            thresholds = choose_thresholds(probs, membership(rows, ngrams.label_ids), ngrams.label_ids)
            top, labels = decide(probs, ngrams.label_ids, thresholds)
            pred = predicted_primary(top, labels, True)
            scores[float(share)] = float(f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0))
        else:
            scores[float(share)] = selection_score(rows, probs, ngrams.label_ids, False)
    # Ties go to the larger transformer share: the model the run is named for, and the smaller change.
    best = max(scores, key=lambda s: (round(scores[s], 6), s))
    return best, scores


def save(ngrams: CharNgrams, run_dir: Path) -> None:
    from safetensors.numpy import save_file

    vocabulary = ngrams.vectorizer.vocabulary_
    features = [None] * len(vocabulary)
    for gram, index in vocabulary.items():
        features[index] = gram
    save_file({"idf": ngrams.vectorizer.idf_.astype(np.float32), "coef": ngrams.coef, "intercept": ngrams.intercept},
              str(run_dir / WEIGHTS_FILE))
    (run_dir / INFO_FILE).write_text(json.dumps({
        "weight": ngrams.weight, "labels": ngrams.label_ids, "multi_label": ngrams.multi_label,
        "transformer_thresholds": ngrams.transformer_thresholds, "ngram_range": list(NGRAM_RANGE), "features": features,
    }, ensure_ascii=False), encoding="utf-8")


def load(model_dir: Path) -> CharNgrams | None:
    """The run's n-gram model, or None when it was trained without one."""
    if not (model_dir / INFO_FILE).is_file():
        return None
    from safetensors.numpy import load_file

    info = json.loads((model_dir / INFO_FILE).read_text(encoding="utf-8"))
    arrays = load_file(str(model_dir / WEIGHTS_FILE))
    vectorizer = _vectorizer(vocabulary={gram: i for i, gram in enumerate(info["features"])})
    vectorizer.idf_ = arrays["idf"]
    return CharNgrams(vectorizer, arrays["coef"], arrays["intercept"], info["labels"], info["multi_label"], info["weight"],
                      info.get("transformer_thresholds"))
