"""Bring your own labelled data: tables in the usual formats, any label set."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import invoke

# 24 different headlines: copies that differ only in a number are near-duplicates, which prepare keeps
# within one split, so repeated texts could not be split three ways.
ROWS = [(text, label) for triple in zip(
    ["央行下调存款准备金率,释放长期资金。", "股市早盘震荡,创业板指数收涨。", "多家银行上调大额存单利率。", "人民币汇率中间价小幅走高。",
     "上市公司三季报净利润同比增长。", "国债期货主力合约全线收跌。", "基金公司发行首只养老目标产品。", "保险资金加大权益类资产配置。"],
    ["楼市成交量环比上涨三成。", "新盘开售当天去化八成。", "多地出台政策支持刚性住房需求。", "二手房挂牌价格连续两月回落。",
     "开发商土地储备规模明显收缩。", "城市更新项目带动老旧小区改造。", "住房公积金贷款额度有所提高。", "租赁住房供应计划超额完成。"],
    ["国足主场两球取胜,晋级下一轮。", "女排三比零横扫对手夺得冠军。", "马拉松赛吸引三万名跑者参加。", "游泳名将打破亚洲纪录。",
     "篮球联赛季后赛今晚开打。", "乒乓球世锦赛男单决赛落幕。", "滑雪场迎来新赛季首批游客。", "田径队公布奥运参赛名单。"])
    for text, label in zip(triple, ["finance", "realty", "sports"])]
NAMES = ["finance", "realty", "sports"]


def _config(tmp_path: Path, tables: list[dict], **train) -> Path:
    cfg = {
        "run_name": "own", "seed": 3, "themes": None,
        "data": {"tables": tables, "output_dir": str(tmp_path / "prepared"), "validation_fraction": 0.2, "test_fraction": 0.2},
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_length": 32},
        "train": {"mode": "single_label", "epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "models"), **train},
    }
    path = tmp_path / "own.yaml"
    path.write_text("# test config\n" + yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _splits(tmp_path):
    return {s: [json.loads(l) for l in (tmp_path / "prepared" / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
            for s in ("train", "validation", "test")}


def test_csv_with_header_end_to_end_derives_the_schema(tmp_path):
    import csv

    src = tmp_path / "news.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "body", "category"])
        writer.writerows([f"标题{i % 24}", t, c] for i, (t, c) in enumerate(ROWS + ROWS[:2]))
    cfg = _config(tmp_path, [{"path": str(src), "text_columns": ["title", "body"], "label_column": "category"}])
    result = invoke("run", cfg)
    assert result.exit_code == 0, result.output
    splits = _splits(tmp_path)
    assert sum(map(len, splits.values())) == 26 - 2  # the last two rows repeat rows 1-2: dropped and counted
    assert "'duplicate': 2" in result.output
    run = tmp_path / "models" / "own"
    config = json.loads((run / "config.json").read_text())
    assert sorted(config["id2label"].values()) == NAMES
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert sorted(t["id"] for t in saved["themes"]) == NAMES, "the derived schema is saved with the run"
    report = (run / "report.md").read_text(encoding="utf-8")  # own labels are "labels", not policy "themes"
    assert "## Per label (primary)" in report and "with a label." in report and "theme" not in report.split("## Run")[0]
    row = next(r for s in splits.values() for r in s if r["id"] == "news:2")
    assert row["text"] == "标题0 央行下调存款准备金率,释放长期资金。" and row["primary"] == "finance"


def test_tsv_without_header_maps_integer_ids_through_names_file(tmp_path):
    rows = [(f"{t}{i}", NAMES.index(c)) for i, (t, c) in enumerate(ROWS)]
    (tmp_path / "train.txt").write_text("".join(f"{t}\t{c}\n" for t, c in rows[:18]), encoding="utf-8")
    (tmp_path / "test.txt").write_text("".join(f"{t}\t{c}\n" for t, c in rows[18:]), encoding="utf-8")
    (tmp_path / "class.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    common = {"format": "tsv", "header": False, "columns": ["text", "label"], "label_names": str(tmp_path / "class.txt")}
    cfg = _config(tmp_path, [{"path": str(tmp_path / "train.txt"), **common},
                             {"path": str(tmp_path / "test.txt"), "split": "test", **common}])
    result = invoke("prepare", cfg, "--set", "data.test_fraction=0")
    assert result.exit_code == 0, result.output
    splits = _splits(tmp_path)
    assert len(splits["test"]) == 6 and {r["id"] for r in splits["test"]} == {f"test:{i}" for i in range(1, 7)}
    assert json.loads((tmp_path / "prepared" / "schema.json").read_text()) == NAMES, "names-file order is kept"
    assert splits["test"][0]["primary"] in NAMES


def test_jsonl_multi_label_parquet_and_saved_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"content": f"{t}{i}", "tags": f"{c};sports" if c != "sports" else ""},
                                        ensure_ascii=False) + "\n" for i, (t, c) in enumerate(ROWS)), encoding="utf-8")
    pq.write_table(pa.table({"text": [f"{t}p{i}" for i, (t, _) in enumerate(ROWS)], "label": [c for _, c in ROWS]}),
                   tmp_path / "b.parquet")
    Dataset.from_dict({"text": [f"{t}h{i}" for i, (t, _) in enumerate(ROWS)], "label": [c for _, c in ROWS]}).save_to_disk(
        str(tmp_path / "c"))
    cfg = _config(tmp_path, [{"path": str(jsonl), "text_columns": ["content"], "label_column": "tags", "label_separator": ";"},
                             {"path": str(tmp_path / "b.parquet")}, {"path": str(tmp_path / "c")}], mode="multi_label")
    result = invoke("prepare", cfg)
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for s in _splits(tmp_path).values() for r in s}
    assert len(rows) == 72
    assert rows["a:1"]["primary"] == "finance" and rows["a:1"]["secondary"] == ["sports"]
    assert rows["a:3"]["primary"] == "none", "an empty label cell means no label"
    assert rows["b:2"]["primary"] == "realty" and rows["c:3"]["primary"] == "sports"


def test_missing_column_unnamed_id_and_label_only_in_test(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("text,cat\n好文章一。,finance\n", encoding="utf-8")
    result = invoke("prepare", _config(tmp_path, [{"path": str(src)}]))
    assert result.exit_code == 2
    assert f"{src}:2: column 'label' not found; columns are text, cat" in result.output

    (tmp_path / "class.txt").write_text("finance\nrealty\n", encoding="utf-8")
    src.write_text("text,label\n好文章一。,0\n好文章二。,7\n", encoding="utf-8")
    result = invoke("prepare", _config(tmp_path, [{"path": str(src), "label_names": str(tmp_path / "class.txt")}]))
    assert result.exit_code == 2
    assert f"{src}:3: label id '7' has no name in {tmp_path / 'class.txt'} (2 names, ids 0-1)" in result.output

    train, test = tmp_path / "tr.csv", tmp_path / "te.csv"
    train.write_text("text,label\n" + "".join(f"甲{i}。,finance\n" for i in range(5)), encoding="utf-8")
    test.write_text("text,label\n乙。,realty\n", encoding="utf-8")
    result = invoke("prepare", _config(tmp_path, [{"path": str(train)}, {"path": str(test), "split": "test"}]))
    assert result.exit_code == 2
    assert f"{test}:2: label 'realty' appears in test but never in train" in result.output
    assert "Traceback" not in result.output


def test_cv_on_a_derived_schema_keeps_near_copies_in_one_fold(tmp_path):
    import csv

    # Each headline twice, the copy re-numbered: a near-duplicate that must not be in two folds.
    rows = [(t, c) for t, c in ROWS] + [(f"{t[:-1]}(第2版)。", c) for t, c in ROWS[:6]]
    src = tmp_path / "news.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *rows])
    cfg = _config(tmp_path, [{"path": str(src)}], epochs=1)
    assert invoke("prepare", cfg, "--set", "data.test_fraction=0").exit_code == 0
    # Blended (single-label): every fold fits its own n-gram model, and the transformer alone is summarised too.
    result = invoke("cv", cfg, "--folds", "2", "--set", "train.char_ngram_blend=true")
    assert result.exit_code == 0, result.output
    assert "primary macro-F1:" in result.output
    out = tmp_path / "models" / "own-cv"
    summary = json.loads((out / "cv.json").read_text())
    assert len(summary["summary"]["primary macro-F1"]["folds"]) == 2
    assert len(summary["summary"]["transformer-alone primary macro-F1"]["folds"]) == 2
    assert all((out / f"fold-{k}" / "char_ngrams.json").is_file() for k in range(2))
    for k in range(2):  # single-label: validation chooses between both poolings, and the fold's report names its choice
        trained = json.loads((out / f"fold-{k}" / "train_metrics.json").read_text())["char_ngram_blend"]
        assert set(trained["validation_score_by_pooling_and_share"]) == {"mean", "geometric"}
        assert json.loads((out / f"fold-{k}" / "char_ngrams.json").read_text())["pooling"] == trained["pooling"]
    assert set(summary["data_sha256"]) == {"train", "validation"} and summary["config"]["run_name"] == "own"
    assert summary["near_duplicate_groups"] == 6
    for k in range(2):
        assert json.loads((out / f"data-fold-{k}" / "schema.json").read_text()) == NAMES
    held = [{json.loads(l)["text"] for l in (out / f"data-fold-{k}" / "test.jsonl").read_text(encoding="utf-8").splitlines()}
            for k in range(2)]
    for text, _ in ROWS[:6]:
        copy = f"{text[:-1]}(第2版)。"
        assert (text in held[0]) == (copy in held[0]) and (text in held[1]) == (copy in held[1]), text


def test_table_cells_with_line_breaks_float_ids_and_bad_label_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "news.csv"  # a quoted cell spanning two lines keeps its line break; line numbers count lines
    src.write_text('text,label\n"第一行\n第二行",finance\n' + "".join(f'"{t}",{c}\n' for t, c in ROWS) + "楼市回暖,real estate\n",
                   encoding="utf-8")
    result = invoke("prepare", _config(tmp_path, [{"path": str(src)}]))
    assert result.exit_code == 2
    assert f"{src}:28: label 'real estate' contains whitespace" in result.output and "'real_estate'" in result.output
    src.write_text(src.read_text(encoding="utf-8").replace("real estate", "realty"), encoding="utf-8")
    result = invoke("prepare", _config(tmp_path, [{"path": str(src)}]))
    assert result.exit_code == 0 and "1 records span several lines (first at line 2)" in result.output
    rows = {r["id"]: r for s in _splits(tmp_path).values() for r in s}
    assert rows["news:2"]["text"] == "第一行 第二行", "the line break is whitespace, normalised to a space, not lost"
    assert rows["news:4"]["text"] == ROWS[0][0], "the row after the two-line cell starts on line 4"

    # An integer label column with a missing value reads as floats (9.0): ids still map to names.
    (tmp_path / "class.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    ids = [float(NAMES.index(c)) for _, c in ROWS]
    pq.write_table(pa.table({"text": [t for t, _ in ROWS], "label": ids}), tmp_path / "news.parquet")
    cfg = _config(tmp_path, [{"path": str(tmp_path / "news.parquet"), "label_names": str(tmp_path / "class.txt")}])
    result = invoke("prepare", cfg)
    assert result.exit_code == 0, result.output
    assert {r["primary"] for s in _splits(tmp_path).values() for r in s} == set(NAMES)
    (tmp_path / "class.txt").write_text("finance\nnone\nsports\n", encoding="utf-8")
    result = invoke("prepare", cfg)
    assert result.exit_code == 2 and "a class is named 'none', which means 'no label' here" in result.output


def test_single_label_rows_without_a_label_are_counted_not_lost(tmp_path):
    import csv

    src = tmp_path / "news.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *ROWS, ["今天天气晴朗。", ""], ["明日有小雨。", ""], ["周末气温回升。", ""]])
    cfg = _config(tmp_path, [{"path": str(src)}], epochs=1)
    result = invoke("run", cfg)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "prepared" / "prepare_report.json").read_text())
    assert report["without_label"] == 3
    in_test = sum(r["primary"] == "none" for r in _splits(tmp_path)["test"])
    metrics = json.loads((tmp_path / "models" / "own" / "metrics.json").read_text())
    assert metrics["left_out_without_label"] == in_test and metrics["n"] == len(_splits(tmp_path)["test"]) - in_test
    if in_test:
        assert f"{in_test} rows of the split have no label and are left out" in (tmp_path / "models" / "own" / "report.md").read_text()
    # Scoring validation writes its own files and leaves the test evaluation as it was.
    before = (tmp_path / "models" / "own" / "metrics.json").read_bytes()
    result = invoke("evaluate", tmp_path / "models" / "own", "--split", "validation")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "own" / "metrics-validation.json").is_file()
    assert (tmp_path / "models" / "own" / "metrics.json").read_bytes() == before
    result = invoke("evaluate", tmp_path / "models" / "own", "--split", "dev")
    assert result.exit_code == 2 and "--split expects test or validation, found 'dev'" in result.output


def test_a_json_array_of_records_reads_like_jsonl(tmp_path):
    src = tmp_path / "news.json"
    src.write_text(json.dumps([{"text": t, "label": c} for t, c in ROWS], ensure_ascii=False, indent=1), encoding="utf-8")
    assert invoke("prepare", _config(tmp_path, [{"path": str(src)}])).exit_code == 0
    rows = {r["id"]: r for s in _splits(tmp_path).values() for r in s}
    assert len(rows) == len(ROWS) and rows["news:1"]["text"] == ROWS[0][0] and rows["news:1"]["primary"] == "finance"
    src.write_text(json.dumps(["just a string"]), encoding="utf-8")
    result = invoke("prepare", _config(tmp_path, [{"path": str(src)}]))
    assert result.exit_code == 2 and f"{src}:1: expected a record with named fields" in result.output


def test_early_stopping_scores_a_long_paragraph_by_its_windows_mean(tmp_path):
    # Paragraphs several 32-token windows long, with a learnable signal: the best validation figure the
    # Trainer kept is the one evaluate's scoring (score_texts: the mean over windows) gives the kept model.
    import random

    from pipeline.data import load_split
    from pipeline.metrics import selection_score
    from pipeline.model import load_run, score_texts

    rng = random.Random(0)
    words = {"finance": "股票基金银行利率债券", "realty": "楼盘住房租赁土地物业", "sports": "比赛球队冠军体育赛事"}
    # The first window (30 characters) is filler alike for every class: only the later windows tell them
    # apart, so scoring a paragraph by its first window alone would not reach the kept figure.
    rows = [("".join(rng.choice("的了在是和这有也就都") for _ in range(40)) + "".join(rng.choice(chars) for _ in range(50))
             + f"第{i}篇。", label) for label, chars in words.items() for i in range(14)]
    src = tmp_path / "long.csv"
    src.write_text("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows), encoding="utf-8")
    cfg = _config(tmp_path, [{"path": str(src)}], epochs=6, learning_rate=0.005, early_stopping_patience=6)
    result = invoke("run", cfg, "--set", "model.max_length=32")
    assert result.exit_code == 0, result.output
    run = tmp_path / "models" / "own"
    t = json.loads((run / "train_metrics.json").read_text())
    val_rows = load_split(tmp_path / "prepared", "validation")
    assert t["validation_windows"] >= 3 * len(val_rows) and t["best_validation_macro_f1"] > 0.5
    tokenizer, model = load_run(run)
    probs, windows = score_texts(model, tokenizer, [r["text"] for r in val_rows])
    assert sum(windows) == t["validation_windows"]
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert selection_score(val_rows, probs, labels, False) == pytest.approx(t["best_validation_macro_f1"], abs=1e-6)
