"""train.char_ngram_blend: the n-gram half against scikit-learn, and a blended tiny run from train to predict."""

import json
import shutil
from pathlib import Path

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


def _fixed_ngrams(q: np.ndarray, labels: list[str]):
    """An n-gram model that gives text str(i) the probabilities q[i]: each text is one n-gram of its own
    (a TF-IDF row of a single 1.0), and the model's scores for it are log q[i]."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [chr(0x4E00 + i) for i in range(len(q))]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 1), vocabulary={t: i for i, t in enumerate(texts)})
    vectorizer.idf_ = np.ones(len(texts), np.float32)
    coef = np.log(np.maximum(q, 1e-30)).T.astype(np.float32)
    return texts, blend.CharNgrams(vectorizer, coef, np.zeros(len(labels), np.float32), labels, False)


def test_geometric_pooling_is_the_weighted_geometric_mean_renormalised():
    labels = ["x", "y", "z"]
    q = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    texts, ngrams = _fixed_ngrams(q, labels)
    np.testing.assert_allclose(ngrams.probs(texts), q, atol=1e-6)
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    got, _ = ngrams._replace(pooling="geometric", weight=0.3).scores(p, texts)
    expected = p ** 0.3 * q ** 0.7
    np.testing.assert_allclose(got, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    for share, alone in ((1.0, p), (0.0, q)):  # at either end, one model's probabilities exactly
        np.testing.assert_allclose(ngrams._replace(pooling="geometric", weight=share).scores(p, texts)[0], alone, atol=1e-6)


def test_validation_chooses_the_pooling_that_scores_better():
    # Gold y rows: the transformer says x, the n-gram model says z, both give y 0.28. Any weighted mean
    # answers x or z (0.72s or 0.72(1 - s) beats 0.28 at every s); the geometric mean answers y, the one
    # label both models support. x and z rows are easy for both.
    labels = ["x", "y", "z"]
    p = np.array([[0.9, 0.1, 0.0], [0.72, 0.28, 0.0], [0.72, 0.28, 0.0], [0.1, 0.1, 0.8]], np.float32)
    q = np.array([[0.8, 0.1, 0.1], [0.0, 0.28, 0.72], [0.0, 0.28, 0.72], [0.1, 0.1, 0.8]])
    texts, ngrams = _fixed_ngrams(q, labels)
    rows = [{"text": t, "primary": g} for t, g in zip(texts, ["x", "y", "y", "z"])]
    chosen, scores = blend.choose(ngrams, rows, p)
    assert set(scores) == set(blend.POOLINGS) and set(scores["mean"]) == set(map(float, blend.SHARES))
    assert max(scores["mean"].values()) < 1.0 and scores["geometric"][0.5] == 1.0
    assert chosen.pooling == "geometric" and 0.0 < chosen.weight < 1.0
    assert scores["geometric"][chosen.weight] == 1.0
    # where the two tie, as they do when the transformer alone is best, the plain mean stays
    chosen, _ = blend.choose(ngrams, [{"text": t, "primary": g} for t, g in zip(texts, ["x", "x", "x", "z"])], p)
    assert (chosen.pooling, chosen.weight) == ("mean", 1.0)


def test_saved_and_loaded_model_scores_the_same(tmp_path):
    rows = _seed_rows()
    ngrams = blend.fit(rows, THEMES, multi_label=True)._replace(
        weight=0.3, none_threshold=0.45, transformer_thresholds={t: 0.4 for t in THEMES})
    blend.save(ngrams, tmp_path)
    loaded = blend.load(tmp_path)
    texts = [r["text"] for r in rows] + ["从未见过的句子。"]
    np.testing.assert_array_equal(loaded.probs(texts), ngrams.probs(texts))
    assert loaded[3:] == ngrams[3:]  # classes, mode, share, none threshold, the transformer's thresholds, pooling
    transformer = np.full((len(texts), len(THEMES)), 0.5, np.float32)
    for got, expected in zip(loaded.blend(transformer, texts), ngrams.blend(transformer, texts)):
        np.testing.assert_array_equal(got, expected)
    assert blend.load(tmp_path / "elsewhere") is None


def test_the_pooling_is_saved_and_older_runs_load_as_the_mean(tmp_path):
    from pipeline.errors import RunDirError

    rows = _seed_rows()
    texts = [r["text"] for r in rows]
    single = blend.fit(rows, [*THEMES, "none"], multi_label=False)._replace(weight=0.4, pooling="geometric")
    blend.save(single, tmp_path)
    loaded = blend.load(tmp_path)
    assert loaded.pooling == "geometric" and loaded.weight == 0.4
    transformer = np.full((len(texts), len(THEMES) + 1), 1 / 7, np.float32)
    np.testing.assert_array_equal(loaded.blend(transformer, texts)[0], single.blend(transformer, texts)[0])
    info_path = tmp_path / blend.INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8"))
    del info["pooling"]  # a run trained before the pooling was chosen pooled by the mean
    info_path.write_text(json.dumps(info), encoding="utf-8")
    assert blend.load(tmp_path).pooling == "mean"
    # a multi-label blend pools by the mean only (blend.py): a file saying otherwise is damaged
    multi = blend.fit(rows, THEMES, multi_label=True)._replace(weight=0.3, none_threshold=0.45, pooling="geometric")
    blend.save(multi, tmp_path)
    with pytest.raises(RunDirError, match="a multi-label blend with pooling 'geometric', expected mean"):
        blend.load(tmp_path)


def test_a_multi_label_blend_tries_the_mean_only():
    rows = _seed_rows()
    ngrams = blend.fit(rows, THEMES, multi_label=True)
    transformer = np.random.default_rng(0).uniform(size=(len(rows), len(THEMES))).astype(np.float32)
    chosen, scores = blend.choose(ngrams, rows, transformer)
    assert set(scores) == {"mean"} and chosen.pooling == "mean"


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
    assert share in blend.SHARES and trained["pooling"] in blend.POOLINGS
    # tiny.yaml is multi-label: the mean is the only pooling tried (single-label runs try both: test_tables' cv)
    assert {p: set(by_share) for p, by_share in trained["validation_score_by_pooling_and_share"].items()} == {
        "mean": {str(s) for s in blend.SHARES}}
    assert trained["none_threshold"] in blend.NONE_THRESHOLDS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["blend"]["transformer_share"] == share and metrics["blend"]["pooling"] == trained["pooling"]
    assert set(metrics["blend"]["transformer_alone"]["primary"]) == {"accuracy", "macro_f1"}
    note = (f"{share:.1f} × the fine-tuned transformer" if trained["pooling"] == "mean" else
            f"the weighted geometric mean of the fine-tuned transformer's probabilities (weight {share:.1f})")
    assert f"The model is a blend (train.char_ngram_blend): {note}" in (run / "report.md").read_text()
    assert "The model is a blend" in (run / "README.md").read_text()


@pytest.fixture
def gated_copy(blended_run, tmp_path):
    """A copy of the blended run with the share set to 0.5 and the none threshold at the median none score of
    the seed paragraphs, so that the gate holds some of them back and lets others through."""
    from pipeline.model import load_run, score_texts

    root, run = blended_run
    copy = tmp_path / "gated"
    shutil.copytree(run, copy)
    rows = _seed_rows()
    texts = [r["text"] for r in rows]
    tokenizer, model = load_run(copy)
    transformer, _ = score_texts(model, tokenizer, texts)
    ngram = blend.load(copy).probs(texts)
    none_score = 0.5 * (1 - transformer.max(axis=1)) + 0.5 * ngram[:, -1]
    info = json.loads((copy / blend.INFO_FILE).read_text(encoding="utf-8"))
    info.update(weight=0.5, none_threshold=float(np.median(none_score)))
    (copy / blend.INFO_FILE).write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    expected = 0.5 * transformer + 0.5 * ngram[:, :-1]
    return root, copy, rows, expected, none_score >= info["none_threshold"], transformer


def test_evaluate_predict_and_export_answer_with_the_blend(gated_copy, tmp_path):
    from pipeline.metrics import theme_metrics

    root, run, rows, expected, gate, transformer = gated_copy
    assert 0 < gate.sum() < len(rows)  # the gate decides some rows each way
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n" for r in rows),
                      encoding="utf-8")
    exported = invoke("export", run, "--format", "torch", "--output", tmp_path / "export")
    assert exported.exit_code == 0, exported.output
    for model_dir in (run, tmp_path / "export"):
        out = tmp_path / f"{model_dir.name}.jsonl"
        result = invoke("predict", source, "--model", model_dir, "--dtype", "float32", "-o", out)
        assert result.exit_code == 0, result.output
        predicted = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        theme_ids = list(predicted[0]["scores"])
        np.testing.assert_allclose([[p["scores"][t] for t in theme_ids] for p in predicted], expected, atol=2e-4)
        assert [not p["labels"] for p in predicted] == gate.tolist()  # no theme exactly where the gate is set
        assert all(p["labels"][0] == p["label"] for p in predicted if p["labels"])  # else at least the top one

    with working_dir(root):  # evaluate finds the prepared data by the relative path train recorded
        result = invoke("evaluate", run)
    assert result.exit_code == 0, result.output
    recorded = [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    index = {r["id"]: i for i, r in enumerate(rows)}
    np.testing.assert_allclose([[r["scores"][t] for t in theme_ids] for r in recorded],
                               expected[[index[r["id"]] for r in recorded]], atol=1e-4)
    metrics = json.loads((run / "metrics.json").read_text())
    test_rows = [{"primary": r["gold_primary"], "secondary": r["gold_secondary"]} for r in recorded]
    alone = theme_metrics(test_rows, transformer[[index[r["id"]] for r in recorded]], theme_ids,
                          blend.load(run).transformer_thresholds)
    assert metrics["blend"]["transformer_alone"]["primary"]["macro_f1"] == pytest.approx(alone["primary"]["macro_f1"])


@pytest.mark.parametrize("damage, message", [
    ("drop_weights", "char_ngrams.safetensors is missing"),
    ("drop_info", "char_ngrams.json is missing"),
    ("cut_info", "JSONDecodeError"),
    ("other_labels", "the model's labels are"),
    ("unknown_pooling", "pooling 'median', expected one of mean, geometric"),
])
def test_a_damaged_blend_is_one_clear_error(blended_run, tmp_path, damage, message):
    root, run = blended_run
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    info_path = copy / blend.INFO_FILE
    if damage == "drop_weights":
        (copy / blend.WEIGHTS_FILE).unlink()
    elif damage == "drop_info":
        info_path.unlink()  # config.yaml still says the run is blended: never answer with the transformer alone
    elif damage == "cut_info":
        info_path.write_bytes(info_path.read_bytes()[:100])
    else:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if damage == "other_labels":
            info["classes"] = ["a", "b", "none"]
        else:
            info["pooling"] = "median"
        info_path.write_text(json.dumps(info), encoding="utf-8")
    for command in (["predict", root / SEED, "--model", copy, "-o", tmp_path / "out.jsonl"], ["export", copy]):
        result = invoke(*command)
        assert result.exit_code != 0
        assert "trained with train.char_ngram_blend but its n-gram model cannot be read" in result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_switching_the_blend_on_keeps_checkpoints_resumable(blended_run):
    from pipeline.config import load_config
    from pipeline.train import _fingerprint

    root, _ = blended_run
    plain = load_config(root / "configs/tiny.yaml")
    blended = load_config(root / "configs/tiny.yaml", ["train.char_ngram_blend=true"])
    data = root / "data/prepared-tiny"
    # The n-gram model is fitted after the transformer: the transformer's checkpoints stay valid.
    assert _fingerprint(plain, data, 1) == _fingerprint(blended, data, 1)
    assert _fingerprint(plain, data, 1) != _fingerprint(load_config(root / "configs/tiny.yaml", ["train.epochs=3"]), data, 1)


def test_label_suggest_ranks_and_labels_with_the_blend(gated_copy, tmp_path):
    from pipeline.model import load_run, score_texts

    _, run, *_ = gated_copy
    with working_dir(copy_project(tmp_path / "project")):
        Path("data/raw/second.txt").write_text(
            "今年全区新建社区养老服务中心三处,方便老年人就近就医和日常照料。\n"
            "开发区引进外资企业十家,外贸出口总额比上年增长一成以上。\n"
            "老旧小区完成供热管网改造,道路重新铺设,居民出行更加方便。\n"
            "昨日本市最高气温十二摄氏度,夜间有小雨,风力三到四级。\n", encoding="utf-8")
        result = invoke("label", "suggest", "configs/tiny.yaml", "--model", run, "--n", "4", "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4
    tokenizer, model = load_run(run)
    transformer, _ = score_texts(model, tokenizer, [r["text"] for r in rows])
    probs, gate = blend.load(run).blend(transformer, [r["text"] for r in rows])
    theme_ids = list(rows[0]["model_scores"])
    np.testing.assert_allclose([[r["model_scores"][t] for t in theme_ids] for r in rows], probs, atol=2e-3)
    assert [not r["model_labels"] for r in rows] == gate.tolist()
