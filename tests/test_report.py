"""The evaluation report: its numbers (hand-made cases with known answers, and the tiny run's metrics.json),
the self-contained HTML page in a real browser, the model card, cv.html and `pipeline compare`."""

import base64
import json
import re
import shutil

import numpy as np
import pytest
import yaml

from conftest import invoke
from pipeline import report
from pipeline.metrics import (bootstrap_ci, calibration, classification_metrics, confusion_scores, length_buckets,
                              length_edges, threshold_curves)

THEMES = ["economy", "renewal", "culture", "livelihood", "reform", "openness"]


# ---- Pure functions, literal expected values -----------------------------------------------------

def test_confusion_matrix_and_scores_on_a_hand_made_case():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b", "c"])
    assert m["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]  # rows gold, columns predicted
    assert m["accuracy"] == 0.5
    # F1: a 2*1/(2+2) = 0.5, b 2*1/(1+2) = 2/3, c 0 -> macro 7/18; micro = 2*2/(4+4).
    assert m["macro_f1"] == pytest.approx(7 / 18)
    assert m["micro_f1"] == 0.5
    vectorised = confusion_scores(np.array(m["confusion_matrix"]["matrix"]))
    assert {k: float(v) for k, v in vectorised.items()} == pytest.approx({"accuracy": 0.5, "macro_f1": 7 / 18, "micro_f1": 0.5})


def test_confusion_scores_ignore_classes_absent_from_gold_like_sklearn():
    # d is predicted but never gold: it counts against accuracy, not in macro/micro over present classes.
    m = classification_metrics(["a", "b", "c", "a"], ["d", "d", "a", "a"], ["a", "b", "c", "d"])
    counts = np.array(m["confusion_matrix"]["matrix"])
    assert counts.tolist() == [[1, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    got = {k: float(v) for k, v in confusion_scores(counts).items()}
    assert got == pytest.approx({"accuracy": 0.25, "macro_f1": 1 / 6, "micro_f1": 1 / 3})
    assert got == pytest.approx({k: m[k] for k in got})


def test_calibration_bins_and_ece_on_a_hand_made_case():
    cal = calibration([0.95, 0.85, 0.65, 0.6, 0.3], [1, 0, 1, 0, 1], n_bins=5)
    filled = [[b["low"], b["high"], b["n"], b["confidence"], b["accuracy"]] for b in cal["bins"] if b["n"]]
    assert sum(filled, []) == pytest.approx([0.2, 0.4, 1, 0.3, 1.0, 0.6, 0.8, 2, 0.625, 0.5, 0.8, 1.0, 2, 0.9, 0.5])
    # (1 * |1 - 0.3| + 2 * |0.5 - 0.625| + 2 * |0.5 - 0.9|) / 5
    assert cal["ece"] == pytest.approx(0.35)
    assert [b["n"] for b in cal["bins"]] == [0, 1, 0, 2, 2] and cal["n"] == 5


def test_calibration_edges_perfect_and_overconfident():
    assert calibration([1.0, 1.0, 0.0], [1, 1, 0], n_bins=10)["ece"] == 0.0
    cal = calibration([1.0, 0.1], [1, 1], n_bins=10)
    assert [b["n"] for b in cal["bins"]] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]  # 1.0 in the last bin, 0.1 in [0.1, 0.2)
    assert cal["ece"] == pytest.approx(0.45)  # half the paragraphs are off by 0.9
    assert calibration([0.9] * 4, [0, 0, 0, 0], n_bins=10)["ece"] == pytest.approx(0.9)


def test_bootstrap_intervals_are_seeded_and_paired():
    gold = ["a"] * 10 + ["b"] * 10
    perfect = bootstrap_ci(gold, gold, ["a", "b"], {"same": gold, "majority": ["a"] * 20}, resamples=200, seed=3)
    assert perfect["primary"] == {"accuracy": [1.0, 1.0], "macro_f1": [1.0, 1.0], "micro_f1": [1.0, 1.0]}
    assert perfect["vs_baselines"]["same"]["accuracy"] == {"delta": 0.0, "ci": [0.0, 0.0]}
    versus_majority = perfect["vs_baselines"]["majority"]["accuracy"]
    assert versus_majority["delta"] == 0.5 and versus_majority["ci"][0] > 0
    noisy = ["a"] * 7 + ["b"] * 3 + ["b"] * 8 + ["a"] * 2
    first = bootstrap_ci(gold, noisy, ["a", "b"], resamples=200, seed=3)
    assert first == bootstrap_ci(gold, noisy, ["a", "b"], resamples=200, seed=3)
    low, high = first["primary"]["accuracy"]
    assert low < 0.75 < high and 0.5 < low and high < 1.0


def test_threshold_curves_and_length_buckets_on_hand_made_cases():
    curves = threshold_curves(np.array([[0.9], [0.6], [0.2]]), np.array([[1], [0], [1]]), ["economy"], grid=(0.1, 0.5, 0.95))
    assert curves["per_theme"]["economy"] == {"precision": [2 / 3, 0.5, None], "recall": [1.0, 0.5, 0.0], "positives": 2}
    edges = [0, 80, 120, 160, 240]
    buckets = length_buckets([10, 90, 300, 85], ["a", "b", "a", "b"], {"model": ["a", "a", "a", "b"]}, ["a", "b"], edges)["buckets"]
    assert [(b["range"], b["n"]) for b in buckets] == [("0–79", 1), ("80–119", 2), ("120–159", 0), ("160–239", 0), ("≥240", 1)]
    assert buckets[1]["scores"]["model"]["accuracy"] == 0.5 and buckets[2]["scores"] == {}
    # Default edges: the split's quintiles (floor + 1), empty buckets from tied lengths dropped.
    assert length_edges(list(range(10, 101, 10))) == [0, 29, 47, 64, 83]
    assert length_edges([5] * 10) == [0] and length_edges([1, 2, 2, 2, 2, 2, 2, 2, 9]) == [0, 3]


# ---- The tiny run's report -----------------------------------------------------------------------

def _tiny(tiny_run):
    root, _ = tiny_run
    run = root / "models" / "tiny"
    return run, json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def test_evaluate_writes_report_html_model_card_and_new_metrics(tiny_run):
    run, m = _tiny(tiny_run)
    for name in ("metrics.json", "report.md", "report.html", "README.md", "predictions.jsonl"):
        assert (run / name).is_file(), name
    ci = m["confidence_intervals"]
    assert ci["resamples"] == 1000 and ci["seed"] == 13 and ci["level"] == 0.95
    for key in ("accuracy", "macro_f1", "micro_f1"):
        low, high = ci["primary"][key]
        assert low <= m["primary"][key] <= high
        assert set(ci["vs_baselines"]) == set(m["baselines"])
    assert 0 <= m["calibration"]["ece"] <= 1 and sum(b["n"] for b in m["calibration"]["bins"]) == m["n_with_theme"]
    assert sum(b["n"] for b in m["by_length"]["buckets"]) == m["n_with_theme"]
    assert set(m["threshold_curves"]["per_theme"]) == set(THEMES)
    # The keys evaluate wrote before the report grew stay where they were.
    for key in ("n", "n_with_theme", "primary", "assigned", "none", "labels", "split", "mode", "baselines", "run"):
        assert key in m, key


def test_report_numbers_equal_metrics_json(tiny_run):
    run, m = _tiny(tiny_run)
    md = (run / "report.md").read_text(encoding="utf-8")
    page = (run / "report.html").read_text(encoding="utf-8")
    ci = m["confidence_intervals"]["primary"]
    tf = m["baselines"]["tfidf_char_lr"]["primary"]
    for key, name in (("macro_f1", "primary macro-F1"), ("micro_f1", "primary micro-F1"), ("accuracy", "primary accuracy")):
        value, (low, high) = m["primary"][key], ci[key]
        assert f"| {name} | {value:.3f} | {low:.3f}–{high:.3f} | {tf[key]:.3f} |" in md
        card = re.search(rf'data-metric="{key}">(.*?)</div></div>', page, re.S).group(1)
        assert f'<div class="value">{value:.3f}</div>' in card and f"95% CI {low:.3f}–{high:.3f}" in card
        assert f"TF-IDF char LR {tf[key]:.3f}" in card
    for theme, s in m["primary"]["per_class"].items():
        assert f"| {theme} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |" in md
    for theme, s in m["labels"]["per_theme"].items():
        assert f"<td class=\"l\">{theme}</td><td>{s['threshold']:.2f}</td><td>{s['precision']:.3f}</td>" in page
    assert f'<b id="ece">{m["calibration"]["ece"]:.3f}</b>' in page
    assert f"Expected calibration error (ECE): {m['calibration']['ece']:.3f}" in md
    matrix = m["assigned"]["confusion_matrix"]
    for label, row in zip(matrix["labels"], matrix["matrix"]):
        assert f"| {label} | " + " | ".join(map(str, row)) + " |" in md
    assert m["run"]["data_sha256"]["test"] in md and m["run"]["data_sha256"]["test"] in page


def test_report_lists_mistakes_worst_first(tiny_run):
    run, m = _tiny(tiny_run)
    predictions = [json.loads(l) for l in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    wrong = [p for p in predictions if (p["label"] if p["labels"] else "none") != p["gold_primary"]]
    md = (run / "report.md").read_text(encoding="utf-8")
    section = md.split("## Worst mistakes")[1].split("## Run")[0]
    shown = [float(line.split("|")[1]) for line in section.splitlines() if re.match(r"\| \d\.\d\d \|", line)]
    assert len(shown) == min(len(wrong), report.MISTAKES_SHOWN)
    assert shown == sorted(shown, reverse=True)


def test_report_html_is_self_contained(tiny_run):
    run, _ = _tiny(tiny_run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) >= 5, "headline, confusion, reliability, thresholds, length"
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "url(" not in page


def test_report_in_headless_chromium_shows_headline_and_every_image(tiny_run, tmp_path):
    reason = report.browser_missing()
    if reason:
        pytest.skip(reason)
    run, m = _tiny(tiny_run)
    with report.open_page(run / "report.html") as driver:
        headline = driver.find_element("id", "headline").text
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
        ece = driver.find_element("id", "ece").text
    for key in ("accuracy", "macro_f1", "micro_f1"):
        assert f"{m['primary'][key]:.3f}" in headline
        assert f"{m['baselines']['tfidf_char_lr']['primary'][key]:.3f}" in headline
    assert "TF-IDF" in headline and "BERT" in headline
    assert len(images) >= 5 and all(complete and width > 0 for _, complete, width in images), images
    assert ece == f"{m['calibration']['ece']:.3f}"
    result = invoke("report-screenshot", run, "--output", tmp_path / "report.png", "--width", "900")
    assert result.exit_code == 0, result.output
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 900
    assert int.from_bytes(png[20:24], "big") > 2000, "the whole page, not one window"


def test_model_card_front_matter_metrics_and_loading_snippet(tiny_run):
    run, m = _tiny(tiny_run)
    card = (run / "README.md").read_text(encoding="utf-8")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["language"] == "zh" and meta["pipeline_tag"] == "text-classification"
    assert meta["metrics"] == ["accuracy", "f1"]
    values = {x["name"]: x["value"] for x in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"primary-theme accuracy": round(m["primary"]["accuracy"], 4),
                      "primary-theme macro-F1": round(m["primary"]["macro_f1"], 4),
                      "primary-theme micro-F1": round(m["primary"]["micro_f1"], 4)}
    for heading in ("## Intended use", "## Training data", "## Metrics", "## Limitations", "## How to use"):
        assert heading in body, heading
    assert f"| primary macro-F1 | {m['primary']['macro_f1']:.3f} [" in body
    assert "pipeline predict" in body and "AutoModelForSequenceClassification" in body
    # The snippet a reader copies must run as written (pointed at this folder).
    snippet = body.split("```python\n")[1].split("```")[0]
    snippet = re.sub(r'path = ".*?"', f"path = {str(run)!r}", snippet).replace("print(primary, themes)", "")
    scope = {}
    exec(snippet, scope)
    assert scope["primary"] in THEMES and set(scope["themes"]) <= set(THEMES)


# ---- cv.html and compare -------------------------------------------------------------------------

def test_cv_reports_render_mean_std_and_every_fold(tmp_path):
    result = {"folds": 3, "pooled_paragraphs": 120, "model": "small BERT (random init)", "seed": 7, "summary": {
        "primary macro-F1": {"mean": 0.6, "std": 0.05, "folds": [0.55, 0.6, 0.65]},
        "TF-IDF primary macro-F1": {"mean": 0.5, "std": 0.1, "folds": [0.4, 0.5, 0.6]},
    }}
    out = report.write_cv_reports(result, tmp_path, "demo")
    md = out["md"].read_text(encoding="utf-8")
    assert "| primary macro-F1 | 0.600 ± 0.050 | 0.550, 0.600, 0.650 |" in md
    page = out["html"].read_text(encoding="utf-8")
    assert '<td class="l">primary macro-F1</td><td>0.600 ± 0.050</td><td>0.550</td><td>0.600</td><td>0.650</td>' in page
    assert "BERT is ahead in 3 of 3 folds" in page and 'class="verdict better"' in page
    assert re.findall(r'src="([^"]{22})', page) == ["data:image/png;base64,"] and "<script" not in page


def _fake_run(root, name, macro_f1, epochs, test_hash="abc"):
    run = root / name
    run.mkdir()
    metrics = {"split": "test", "mode": "single_label", "n": 10, "n_with_theme": 10,
               "primary": {"accuracy": 0.5, "macro_f1": macro_f1, "micro_f1": 0.5},
               "baselines": {"majority": {"primary": {"accuracy": 0.3, "macro_f1": 0.1, "micro_f1": 0.3}}},
               "run": {"data_sha256": {"test": test_hash}}}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (run / "config.yaml").write_text(yaml.safe_dump({"run_name": name, "seed": 1, "train": {"epochs": epochs, "batch_size": 8}}))
    return run


def test_compare_prints_deltas_and_config_differences_and_writes_a_page(tmp_path):
    first, second = _fake_run(tmp_path, "a", 0.5, 3), _fake_run(tmp_path, "b", 0.625, 5)
    result = invoke("compare", first, second, "--output", tmp_path / "cmp.html")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    macro = next(l for l in lines if l.startswith("primary macro-F1"))
    assert macro.split()[-3:] == ["0.500", "0.625", "(+0.125)"]
    epochs = next(l for l in lines if l.startswith("train.epochs"))
    assert epochs.split()[1:] == ["3", "5"]
    assert not any(l.startswith("train.batch_size") or l.startswith("run_name") for l in lines)
    page = (tmp_path / "cmp.html").read_text(encoding="utf-8")
    assert '0.625 <span class="up">(+0.125)</span>' in page and '<td class="l">train.epochs</td><td class="l">3</td><td class="l">5</td>' in page
    assert "different test data" not in page


def test_compare_warns_about_different_test_data_and_explains_a_missing_metrics_file(tmp_path):
    first, second = _fake_run(tmp_path, "a", 0.5, 3), _fake_run(tmp_path, "b", 0.5, 3, test_hash="other")
    result = invoke("compare", first, second, "--output", tmp_path / "cmp.html")
    assert result.exit_code == 0 and "different test data" in result.output
    (second / "metrics.json").unlink()
    result = invoke("compare", first, second, "--output", tmp_path / "cmp.html")
    assert result.exit_code == 2
    assert f"{second / 'metrics.json'} is missing; score the run first with `pipeline evaluate {second}`" in result.stderr


def test_compare_the_tiny_run_with_itself(tiny_run, tmp_path):
    run, m = _tiny(tiny_run)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("metrics.json", "config.yaml"):
        shutil.copy(run / name, copy / name)
    result = invoke("compare", run, copy, "--output", tmp_path / "cmp.html")
    assert result.exit_code == 0, result.output
    assert f"{m['primary']['macro_f1']:.3f} (+0.000)" in result.output
    assert "config: no differences besides run_name" in result.output
    page = (tmp_path / "cmp.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1 and "<script" not in page


def test_single_label_report_from_hand_made_scores_shows_the_known_numbers(tmp_path):
    """A report rendered from hand-made scores (no training): the figures a reader sees are the known answers."""
    from pipeline.evaluate import baselines, report_figures
    from pipeline.metrics import theme_metrics

    texts = ["经济增长" * 10, "经济产业" * 25, "老旧小区改造" * 20, "文化遗产" * 70]
    rows = [{"id": f"a:{i}", "text": t, "primary": g, "secondary": []}
            for i, (t, g) in enumerate(zip(texts, ["economy", "economy", "renewal", "culture"]))]
    probs = np.full((4, 6), 0.02)
    for i, (theme, score) in enumerate([("economy", 0.9), ("renewal", 0.6), ("renewal", 0.8), ("culture", 0.7)]):
        probs[i, THEMES.index(theme)] = score
    train = [{"id": f"t:{i}", "text": t, "primary": g, "secondary": []}
             for i, (t, g) in enumerate([("经济发展产业", "economy"), ("城市更新改造", "renewal"), ("文化传承遗产", "culture")] * 2)]
    m = theme_metrics(rows, probs, THEMES, None)
    m.update(split="test", mode="single_label", baselines=baselines(train, rows, THEMES, False))
    # top themes: economy, renewal (wrong), renewal, culture
    m.update(report_figures(rows, probs, THEMES, None, {"majority": ["economy"] * 4}, seed=1))
    m["run"] = {"run_dir": str(tmp_path), "model": "hand-made", "seed": 1, "data_sha256": {"test": "0" * 64},
                "evaluated_at": "2026-01-01 00:00:00", "machine": "test", "paragraphs_per_second": 1.0}
    (tmp_path / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    with open(tmp_path / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row, p in zip(rows, probs):
            top = THEMES[int(p.argmax())]
            f.write(json.dumps({"id": row["id"], "text": row["text"], "gold_primary": row["primary"], "gold_secondary": [],
                                "label": top, "labels": [top], "scores": dict(zip(THEMES, p.round(4).tolist())), "windows": 1}) + "\n")
    out = report.write_reports(tmp_path)
    md, page = out["md"].read_text(encoding="utf-8"), out["html"].read_text(encoding="utf-8")
    assert m["primary"]["accuracy"] == 0.75 and m["primary"]["macro_f1"] == pytest.approx(7 / 9)
    assert "| primary accuracy | 0.750 |" in md and "| primary macro-F1 | 0.778 |" in md
    assert '<div class="value">0.750</div>' in page and '<div class="value">0.778</div>' in page
    assert "| economy | 1.000 | 0.500 | 0.667 | 2 |" in md and "| renewal | 0.500 | 1.000 | 0.667 | 1 |" in md
    # ECE: bins 0.6 (wrong), 0.7, 0.8, 0.9 (right): (0.6 + 0.3 + 0.2 + 0.1) / 4
    assert m["calibration"]["ece"] == pytest.approx(0.3) and f'<b id="ece">0.300</b>' in page
    assert "| 0.60 | economy | renewal | 经济产业" in md  # the one mistake, with its confidence
    assert [(b["range"], b["n"]) for b in m["by_length"]["buckets"]] == [("0–76", 1), ("77–116", 1), ("117–184", 1), ("≥185", 1)]
    assert "label sets" not in md.lower() and "threshold" not in page.lower() and page.count("<img") == 4
    card = out["card"].read_text(encoding="utf-8")
    assert "multi-label" not in card.split("---")[1] and "logits.softmax(-1)" in card
