"""A character n-gram linear model trained beside the transformer, and the blend of the two.

Why: with a few thousand labelled paragraphs and a CPU's fine-tuning budget, a small transformer and
a TF-IDF character n-gram logistic regression make different mistakes. Pooling their probabilities,
with the pooling and share chosen on validation, beat either alone on both of this project's corpora
(docs/MEASUREMENTS.md). `train.char_ngram_blend: true` turns it on; the report shows the transformer
alone beside the blend, so the gain is measured in every run.

The n-gram model is one multinomial logistic regression over the primary label: over the labels for
a single-label run, over the labels and `none` for a multi-label run. A single-label run pools the
two in one of two ways, whichever scores better on validation together with the transformer's share:
the weighted mean of their probabilities, or their weighted geometric mean, renormalised (log-linear
pooling, a product of experts: a label needs both models' support). On THUCNews the geometric mean
scored higher on validation in each of four runs (docs/MEASUREMENTS.md). A multi-label run always
takes the mean: the n-gram model, trained on primary labels, gives a paragraph's secondary themes
little probability, and a product would push them below every threshold while the validation score,
which reads the primary theme and `none`, would not see it.

For a multi-label run the blend also decides "no label" as the n-gram model does, as one of the classes: a paragraph gets no label when
its none score, share × (1 − the transformer's top probability) + (1 − share) × the n-gram model's
P(none), reaches a threshold tuned on validation; otherwise it gets the labels at or above their
thresholds, at least its top one. (Thresholds alone decided `none` less well: docs/MEASUREMENTS.md.)

Writes, beside the transformer in the run directory: char_ngrams.safetensors (idf (n_features,),
coef (n_classes, n_features), intercept (n_classes,), float32) and char_ngrams.json (the n-grams in
feature order, the classes, the pooling, the transformer's share, the none threshold and, for multi-label runs, the
thresholds the transformer alone would use, so reports can show it alone). Nothing is pickled: the
vectoriser is rebuilt from its vocabulary and idf, the linear model is one matrix product.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

WEIGHTS_FILE = "char_ngrams.safetensors"
INFO_FILE = "char_ngrams.json"
NONE = "none"
SHARES = np.round(np.arange(0.0, 1.01, 0.1), 1)  # the transformer's share of the blend, tried on validation
POOLINGS = ("mean", "geometric")  # single-label runs try both, in this order: on a tie the plain mean stays
NONE_THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
# Character 1-2-grams and C=30: the best of 1-2/1-3-grams × C 10/30 in 5-fold cross-validation on the training
# split of both corpora (macro-F1 0.746 and 0.848 against the report baseline's 1-3-grams, C=10: 0.737, 0.842;
# docs/MEASUREMENTS.md). The test splits played no part in the choice.
NGRAM_RANGE = (1, 2)
C = 30.0


class CharNgrams(NamedTuple):
    """A fitted TF-IDF vectoriser and a multinomial logistic regression over `classes`: the labels, then
    `none` for a multi-label run. `weight` is the transformer's share of the blend."""

    vectorizer: object
    coef: np.ndarray  # (n_classes, n_features)
    intercept: np.ndarray  # (n_classes,)
    classes: list[str]
    multi_label: bool
    weight: float = 1.0
    none_threshold: float | None = None  # multi-label: the blend's none score at which a paragraph gets no label
    transformer_thresholds: dict[str, float] | None = None  # multi-label: the transformer's own, for its figures alone
    pooling: str = "mean"  # how the two are combined: "mean" or "geometric" (POOLINGS)

    @property
    def label_ids(self) -> list[str]:
        return self.classes[:-1] if self.multi_label else self.classes

    def probs(self, texts: list[str]) -> np.ndarray:
        """(n, n_classes) softmax probabilities."""
        if not texts:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        scores = np.asarray(self.vectorizer.transform(texts) @ self.coef.T) + self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def scores(self, transformer_probs: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(blended label probabilities (n, n_labels), none score (n,) for multi-label runs, else None)."""
        return self.combine(transformer_probs, self.probs(texts))

    def combine(self, transformer_probs: np.ndarray, ngram: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """scores(), from the n-gram model's probabilities already computed (choose tries many shares on them)."""
        share, labels = self.weight, ngram[:, :len(self.label_ids)]
        if self.pooling == "geometric":  # single-label only (load and choose keep multi-label runs on the mean)
            # In logs, renormalised as a softmax; share 1 or 0 gives one model's probabilities to float precision,
            # and the floor keeps log(0) finite.
            log_probs = share * np.log(np.maximum(transformer_probs, 1e-12)) + (1.0 - share) * np.log(np.maximum(labels, 1e-12))
            probs = np.exp(log_probs - log_probs.max(axis=1, keepdims=True))
            probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        else:
            probs = share * transformer_probs + (1.0 - share) * labels
        if not self.multi_label:
            return probs, None
        return probs, share * (1.0 - transformer_probs.max(axis=1)) + (1.0 - share) * ngram[:, -1]

    def blend(self, transformer_probs: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(blended label probabilities (n, n_labels), none gate (n,) bool for multi-label runs, else None)."""
        probs, none_score = self.scores(transformer_probs, texts)
        return probs, None if none_score is None else none_score >= self.none_threshold


def _vectorizer(ngram_range=NGRAM_RANGE, **kwargs):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=tuple(ngram_range), sublinear_tf=True, dtype=np.float32, **kwargs)


def fit(rows: list[dict], label_ids: list[str], multi_label: bool) -> CharNgrams:
    """Fit on the training rows' primary labels (and `none`, for a multi-label run)."""
    from sklearn.linear_model import LogisticRegression

    classes = [*label_ids, NONE] if multi_label else list(label_ids)
    vectorizer = _vectorizer()
    x = vectorizer.fit_transform([r["text"] for r in rows])
    primary = [r["primary"] for r in rows]
    coef = np.zeros((len(classes), x.shape[1]), np.float32)
    intercept = np.full(len(classes), -1e4, np.float32)  # a class training never shows scores 0
    if len(set(primary)) == 1:
        intercept[classes.index(primary[0])] = 0.0
    else:
        # Balanced classes, as the report's baseline; newton-cg reaches the unique optimum quickly.
        lr = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, solver="newton-cg").fit(x, primary)
        weights, biases = lr.coef_, lr.intercept_
        if len(lr.classes_) == 2:  # sklearn keeps one row, the second class's log-odds: as a softmax, ± half of it
            weights, biases = np.vstack([-weights / 2, weights / 2]), np.array([-biases[0] / 2, biases[0] / 2])
        for label, w, b in zip(lr.classes_, weights, biases):
            coef[classes.index(label)], intercept[classes.index(label)] = w, b
    return CharNgrams(vectorizer, coef, intercept, classes, multi_label)


def choose(ngrams: CharNgrams, rows: list[dict], transformer_probs: np.ndarray) -> tuple[CharNgrams, dict[str, dict[float, float]]]:
    """The model with the pooling and the transformer's share (0 to 1 in steps of 0.1) that score best on
    the validation rows, and the score of each: {pooling: {share: score}}. Multi-label: macro-F1 of the answer (the labels and `none` as
    classes) after choosing the label thresholds and then the none threshold for that share, as the
    run will use them; single-label: macro-F1 of the top label."""
    from sklearn.metrics import f1_score

    from pipeline.metrics import choose_thresholds, membership, selection_score
    from pipeline.model import decide

    ngram = ngrams.probs([r["text"] for r in rows])  # once: every share and cut below reuses them
    gold = [r["primary"] for r in rows]
    label_ids = ngrams.label_ids

    def answer_f1(probs, thresholds, none_gate) -> float:
        top, labels = decide(probs, label_ids, thresholds, none_gate)
        pred = [t if ls else NONE for t, ls in zip(top, labels)]
        return float(f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0))

    candidates, scores = {}, {}
    poolings = POOLINGS[:1] if ngrams.multi_label else POOLINGS  # multi-label: the mean (module docstring)
    for pooling, share in ((p, float(s)) for p in poolings for s in SHARES):
        candidate = ngrams._replace(weight=share, pooling=pooling)
        if ngrams.multi_label:
            probs, none_score = candidate.combine(transformer_probs, ngram)  # once: only the none cut varies below
            thresholds = choose_thresholds(probs, membership(rows, label_ids), label_ids)
            by_cut = {float(t): answer_f1(probs, thresholds, none_score >= t) for t in NONE_THRESHOLDS}
            cut = max(by_cut, key=lambda t: (round(by_cut[t], 6), t))  # ties: the higher cut, fewer "no label"
            candidate, scores[pooling, share] = candidate._replace(none_threshold=cut), by_cut[cut]
        else:
            scores[pooling, share] = selection_score(rows, candidate.combine(transformer_probs, ngram)[0], label_ids, False)
        candidates[pooling, share] = candidate
    # Ties go to the larger transformer share (the model the run is named for, and the smaller change), then to
    # the plain mean: at share 0 and 1 the two poolings are the same model.
    best = max(scores, key=lambda k: (round(scores[k], 6), k[1], k[0] == "mean"))
    by_pooling = {pooling: {share: scores[p, share] for p, share in scores if p == pooling} for pooling in poolings}
    return candidates[best], by_pooling


def save(ngrams: CharNgrams, run_dir: Path) -> None:
    from safetensors.numpy import save_file

    vocabulary = ngrams.vectorizer.vocabulary_
    features = [None] * len(vocabulary)
    for gram, index in vocabulary.items():
        features[index] = gram
    save_file({"idf": ngrams.vectorizer.idf_.astype(np.float32), "coef": ngrams.coef, "intercept": ngrams.intercept},
              str(run_dir / WEIGHTS_FILE))
    (run_dir / INFO_FILE).write_text(json.dumps({
        "weight": ngrams.weight, "pooling": ngrams.pooling, "none_threshold": ngrams.none_threshold, "classes": ngrams.classes,
        "multi_label": ngrams.multi_label, "transformer_thresholds": ngrams.transformer_thresholds,
        "ngram_range": list(NGRAM_RANGE), "features": features,
    }, ensure_ascii=False), encoding="utf-8")


def _blended(model_dir: Path) -> bool:
    """Whether the run (or export) in model_dir was trained with the blend: either file, or its config, says so."""
    import yaml

    from pipeline import runs

    if (model_dir / INFO_FILE).is_file() or (model_dir / WEIGHTS_FILE).is_file():
        return True
    try:
        config = yaml.safe_load((model_dir / runs.RESOLVED_CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False  # check_run_dir and load_config report an unreadable config.yaml on their own
    return bool((config.get("train") or {}).get("char_ngram_blend"))


def load(model_dir: Path, label_ids: list[str] | None = None) -> CharNgrams | None:
    """The run's n-gram model, or None when it was trained without one. A blended run whose n-gram files
    are missing, damaged or for other labels than `label_ids` is an error, never silently unblended."""
    from pipeline.errors import RunDirError

    if not _blended(model_dir):
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    missing = [name for name in (INFO_FILE, WEIGHTS_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise RunDirError(f"{model_dir} was trained with train.char_ngram_blend but its n-gram model cannot be read "
                          f"({missing[0]} is missing); retrain with `pipeline train CONFIG`")
    try:
        info = json.loads((model_dir / INFO_FILE).read_text(encoding="utf-8"))
        arrays = load_file(str(model_dir / WEIGHTS_FILE))
        vectorizer = _vectorizer(info["ngram_range"], vocabulary={gram: i for i, gram in enumerate(info["features"])})
        vectorizer.idf_ = arrays["idf"]
        ngrams = CharNgrams(vectorizer, arrays["coef"], arrays["intercept"], info["classes"], info["multi_label"],
                            info["weight"], info["none_threshold"], info["transformer_thresholds"],
                            info.get("pooling", "mean"))  # runs from before the pooling choice used the mean
        problems = []
        if ngrams.coef.shape != (len(ngrams.classes), len(info["features"])) or ngrams.intercept.shape != (len(ngrams.classes),):
            problems.append(f"coefficients {ngrams.coef.shape} for {len(ngrams.classes)} classes and {len(info['features'])} n-grams")
        if label_ids is not None and ngrams.label_ids != list(label_ids):
            problems.append(f"classes {ngrams.label_ids}, the model's labels are {list(label_ids)}")
        if ngrams.pooling not in POOLINGS:
            problems.append(f"pooling {ngrams.pooling!r}, expected one of {', '.join(POOLINGS)}")
        elif ngrams.multi_label and ngrams.pooling != "mean":
            problems.append(f"a multi-label blend with pooling {ngrams.pooling!r}, expected mean")
        if ngrams.multi_label and ngrams.none_threshold is None:
            problems.append("a multi-label blend without a none threshold")
        if problems:
            raise ValueError("; ".join(problems))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:  # JSONDecodeError is a ValueError
        raise RunDirError(f"{model_dir} was trained with train.char_ngram_blend but its n-gram model cannot be read "
                          f"({type(e).__name__}: {e}); retrain with `pipeline train CONFIG`") from None
    return ngrams
