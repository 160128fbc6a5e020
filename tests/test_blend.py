"""train.char_ngram_blend: the n-gram half against scikit-learn, and a blended tiny run from train to predict."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from conftest import ROOT, copy_project, invoke, working_dir
from pipeline import blend

SEED = "data/raw/000_73cf914e94b4181e.txt"
THEMES = ["economy", "renewal", "culture", "livelihood", "reform", "openness"]


def _seed_rows():
    return [json.loads(line) for line in (ROOT / "data/labels/seed.jsonl").read_text(encoding="utf-8").splitlines()]


def _sklearn(ngrams, texts, labels):
    # The model blend.fit stands for, fitted by scikit-learn on the same features.
    x = ngrams.vectorizer.transform(texts)
    return LogisticRegression(C=blend.C, class_weight="balanced", max_iter=2000, solver="newton-cg").fit(x, labels)


def test_single_label_probabilities_are_scikit_learns_softmax():
    rows = _seed_rows()
    texts, primary = [r["text"] for r in rows], [r["primary"] for r in rows]
    labels = [*THEMES, "none", "sports"]  # "sports" never occurs in training: it must score 0
    ngrams = blend.fit(rows, labels, multi_label=False)
    reference = _sklearn(ngrams, texts, primary)
    expected = reference.predict_proba(ngrams.vectorizer.transform(texts))
    ours = ngrams.probs(texts)
    for k, label in enumerate(reference.classes_):
        np.testing.assert_allclose(ours[:, labels.index(label)], expected[:, k], atol=1e-4)
    assert ours[:, labels.index("sports")].max() == 0.0
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_two_classes_match_scikit_learn_and_multi_label_adds_none():
    rows = _seed_rows()
    two = [r for r in rows if r["primary"] in ("economy", "renewal")]
    ngrams = blend.fit(two, ["economy", "renewal"], multi_label=False)
    texts = [r["text"] for r in rows]
    reference = _sklearn(ngrams, [r["text"] for r in two], [r["primary"] for r in two])
    expected = reference.predict_proba(ngrams.vectorizer.transform(texts))[:, list(reference.classes_).index("renewal")]
    np.testing.assert_allclose(ngrams.probs(texts)[:, 1], expected, atol=1e-5)

    multi = blend.fit(rows, THEMES, multi_label=True)
    assert multi.classes == [*THEMES, "none"] and multi.label_ids == THEMES
    reference = _sklearn(multi, texts, [r["primary"] for r in rows])
    expected = reference.predict_proba(multi.vectorizer.transform(texts))
    for k, label in enumerate(reference.classes_):
        np.testing.assert_allclose(multi.probs(texts)[:, multi.classes.index(label)], expected[:, k], atol=1e-4)


def test_the_none_gate_decides_no_label():
    from pipeline.model import decide

    rows = _seed_rows()
    texts = ["国务院部署扩大对外开放。", "今天天气晴朗。"]
    ngrams = blend.fit(rows, THEMES, multi_label=True)._replace(weight=0.5, none_threshold=0.6)
    transformer = np.array([[0.1, 0.1, 0.1, 0.1, 0.1, 0.9], [0.2, 0.1, 0.1, 0.1, 0.1, 0.1]], np.float32)
    probs, gate = ngrams.blend(transformer, texts)
    ngram = ngrams.probs(texts)
    np.testing.assert_allclose(probs, 0.5 * transformer + 0.5 * ngram[:, :6], atol=1e-6)
    none_score = 0.5 * (1 - transformer.max(axis=1)) + 0.5 * ngram[:, 6]
    np.testing.assert_array_equal(gate, none_score >= 0.6)
    # gated rows get no label; the others at least their top one, even below every threshold
    top, labels = decide(probs, THEMES, {t: 0.99 for t in THEMES}, np.array([False, True]))
    assert labels == [[top[0]], []]


def test_saved_and_loaded_model_scores_the_same(tmp_path):
    rows = _seed_rows()
    ngrams = blend.fit(rows, THEMES, multi_label=True)._replace(
        weight=0.3, none_threshold=0.45, transformer_thresholds={t: 0.4 for t in THEMES})
    blend.save(ngrams, tmp_path)
    loaded = blend.load(tmp_path)
    texts = [r["text"] for r in rows] + ["从未见过的句子。"]
    np.testing.assert_array_equal(loaded.probs(texts), ngrams.probs(texts))
    assert loaded[3:] == ngrams[3:]  # classes, mode, share, none threshold, the transformer's thresholds
    transformer = np.full((len(texts), len(THEMES)), 0.5, np.float32)
    for got, expected in zip(loaded.blend(transformer, texts), ngrams.blend(transformer, texts)):
        np.testing.assert_array_equal(got, expected)
    assert blend.load(tmp_path / "elsewhere") is None


@pytest.fixture(scope="module")
def blended_run(tmp_path_factory):
    """`pipeline run configs/tiny.yaml` with the blend, in a scratch project; yields (project, run directory)."""
    with working_dir(copy_project(tmp_path_factory.mktemp("blend"))) as root:
        result = invoke("run", "configs/tiny.yaml", "--set", "train.char_ngram_blend=true", "--set", "run_name=blended")
    assert result.exit_code == 0, result.output
    return root, root / "models/blended"


def test_blended_run_records_the_share_and_the_transformer_alone(blended_run):
    root, run = blended_run
    assert (run / blend.INFO_FILE).is_file() and (run / blend.WEIGHTS_FILE).is_file()
    trained = json.loads((run / "train_metrics.json").read_text())["char_ngram_blend"]
    share = trained["transformer_share"]
    assert share in blend.SHARES and set(trained["validation_score_by_share"]) == {str(s) for s in blend.SHARES}
    assert trained["none_threshold"] in blend.NONE_THRESHOLDS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["blend"]["transformer_share"] == share
    assert set(metrics["blend"]["transformer_alone"]["primary"]) == {"accuracy", "macro_f1"}
    assert f"The model is a blend (train.char_ngram_blend): {share:.1f} × the fine-tuned transformer" in (run / "report.md").read_text()
    assert "The model is a blend" in (run / "README.md").read_text()


def test_blended_scores_are_the_blend_in_evaluate_and_predict(blended_run, tmp_path):
    from pipeline.model import load_run, score_texts

    root, run = blended_run
    recorded = [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in recorded]
    tokenizer, model = load_run(run)
    transformer, _ = score_texts(model, tokenizer, texts)
    ngrams = blend.load(run)
    expected = ngrams.weight * transformer + (1 - ngrams.weight) * ngrams.probs(texts)[:, :-1]
    _, gate = ngrams.blend(transformer, texts)
    assert [not r["labels"] for r in recorded] == gate.tolist()  # no label exactly where the none gate is set
    theme_ids = [model.config.id2label[i] for i in range(model.config.num_labels)]
    got = np.array([[r["scores"][t] for t in theme_ids] for r in recorded])
    np.testing.assert_allclose(got, expected, atol=1e-4)

    # predict (float32, as evaluate scores) gives the same scores for the same paragraphs, and so does an export
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n" for r in recorded),
                      encoding="utf-8")
    exported = invoke("export", run, "--format", "torch", "--output", tmp_path / "export")
    assert exported.exit_code == 0, exported.output
    for model_dir in (run, tmp_path / "export"):
        out = tmp_path / f"{model_dir.name}.jsonl"
        result = invoke("predict", source, "--model", model_dir, "--dtype", "float32", "-o", out)
        assert result.exit_code == 0, result.output
        predicted = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        np.testing.assert_allclose([[p["scores"][t] for t in theme_ids] for p in predicted], got, atol=2e-4)
        assert [p["labels"] for p in predicted] == [r["labels"] for r in recorded]
