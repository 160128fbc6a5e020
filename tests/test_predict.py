"""Batch inference through the real CLI on the tiny run's model."""

import json
import os
from pathlib import Path

import pytest

from conftest import invoke

THEMES = {"economy", "renewal", "culture", "livelihood", "reform", "openness"}
SEED = "data/raw/000_73cf914e94b4181e.txt"


def _records(path):
    return [json.loads(l) for l in Path(path).read_text(encoding="utf-8").splitlines()]


def test_predict_article_gives_one_record_per_paragraph(tiny_run, tmp_path):
    root, _ = tiny_run
    out = tmp_path / "pred.jsonl"
    result = invoke("predict", root / SEED, "--model", root / "models/tiny", "--output", out)
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert len(records) == 18
    assert [r["paragraph_index"] for r in records] == list(range(18))
    assert records[0]["id"] == "000_73cf914e94b4181e:0"
    for r in records:
        assert set(r) == {"id", "source", "paragraph_index", "text", "label", "labels", "scores", "windows"}
        assert r["label"] in THEMES and set(r["labels"]) <= THEMES
        assert set(r["scores"]) == THEMES and all(0 <= v <= 1 for v in r["scores"].values())
        assert r["scores"][r["label"]] == max(r["scores"].values())
    assert not any("开云" in r["text"] for r in records)


def test_predict_jsonl_keeps_ids_and_records_whole(tiny_run, tmp_path):
    root, _ = tiny_run
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "和平区大力推进老旧小区改造。"}\n{"text": "第二条记录,没有编号。\\n第二行不拆分。"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert invoke("predict", src, "--model", root / "models/tiny", "-o", out).exit_code == 0
    records = _records(out)
    assert [r["id"] for r in records] == ["a", "in:2"]
    assert records[1]["text"] == "第二条记录,没有编号。 第二行不拆分。"


def test_predict_stdin_and_csv(tiny_run, tmp_path):
    root, _ = tiny_run
    result = invoke("predict", "-", "--model", root / "models/tiny", input='{"id": "x", "text": "扩大对外开放,引进外资。"}\n')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["id"] == "x"
    out = tmp_path / "out.csv"  # CSV from the suffix, no --format needed
    assert invoke("predict", root / SEED, "--model", root / "models/tiny", "-o", out).exit_code == 0
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("id,source,paragraph_index,label,labels,windows,score_economy")
    # The same records as the JSONL output: ids, top labels and scores agree row by row.
    import csv

    assert invoke("predict", root / SEED, "--model", root / "models/tiny", "-o", tmp_path / "out.jsonl").exit_code == 0
    records = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == len(records) == 18
    for row, record in zip(rows, records):
        assert (row["id"], row["label"], int(row["windows"])) == (record["id"], record["label"], record["windows"])
        assert abs(float(row["score_economy"]) - record["scores"]["economy"]) < 1e-3


def test_long_paragraph_is_windowed_not_truncated(tiny_run, tmp_path):
    root, _ = tiny_run
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"id": "long", "text": "和平区推进城市更新。" * 60}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert invoke("predict", src, "--model", root / "models/tiny", "-o", out).exit_code == 0
    record = _records(out)[0]
    assert record["windows"] > 1
    assert len(record["text"]) == 600


def test_malformed_jsonl_names_the_line_and_writes_nothing(tiny_run, tmp_path):
    root, _ = tiny_run
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "好的一行。"}\n{"text": 没有引号}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", out)
    assert result.exit_code == 2
    assert f"{src}:2: expected a JSON object, found invalid JSON" in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))
    src.write_text('{"id": 1, "body": "no text"}\n', encoding="utf-8")
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", out)
    assert result.exit_code == 2 and f'{src}:1: expected an object with a "text" string' in result.output


def test_missing_run_dir_and_output_folder(tiny_run, tmp_path):
    root, _ = tiny_run
    result = invoke("predict", root / SEED, "--model", tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist; train one with `pipeline train CONFIG`" in result.output
    result = invoke("predict", root / SEED, "--model", root / "models/tiny", "-o", tmp_path / "no/such/dir/out.jsonl")
    assert result.exit_code == 2 and "output folder" in result.output and "does not exist" in result.output


def test_corrupted_weights_are_one_line(tiny_run, tmp_path):
    import shutil

    root, _ = tiny_run
    broken = tmp_path / "broken"
    shutil.copytree(root / "models/tiny", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = invoke("predict", root / SEED, "--model", broken)
    assert result.exit_code == 2
    assert "the run directory is corrupted" in result.output and "Traceback" not in result.output


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return path


# Lengths from a few characters to several windows, in no particular order, so that sorting by length
# inside a chunk and splitting across chunks are both exercised.
MIXED = [("和平区推进城市更新。" * (i * 7 % 23 + 1))[: 5 + (i * 37) % 400] for i in range(40)]


def test_long_paragraph_window_count_is_exact(tiny_run, tmp_path):
    # max_length 64: 62 text tokens a window, windows overlap by 16 tokens: 600 characters take 13 windows.
    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", ["和平区推进城市更新。" * 60, "短句也要打分。"])
    out = tmp_path / "out.jsonl"
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", out)
    assert result.exit_code == 0, result.output
    assert [r["windows"] for r in _records(out)] == [13, 1]
    assert "(1 needed several windows)" in result.output


def test_windows_cover_every_token_in_order(tiny_run):
    # The windows are cut by encode_windows itself: tokenizers 0.23.2's return_overflowing_tokens gave only
    # two windows per text, silently dropping the rest. Stitched back together, the windows are the text.
    from pipeline.model import encode_windows, load_run

    root, _ = tiny_run
    tokenizer, _ = load_run(root / "models/tiny")
    texts = ["", "短句。", "和平区推进城市更新。" * 60, "经济" * 31]
    ids, owners = encode_windows(tokenizer, texts)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for i, text in enumerate(texts):
        windows = [w for w, o in zip(ids, owners) if o == i]
        assert all(w[0] == cls and w[-1] == sep and len(w) <= 64 for w in windows)
        stitched = windows[0][1:-1]
        for w in windows[1:]:
            assert w[1:17] == stitched[-16:]  # 16 tokens of overlap at max_length 64
            stitched += w[17:-1]
        assert stitched == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [owners.count(i) for i in range(len(texts))] == [1, 1, 13, 1]


def test_windows_of_a_tokenizer_that_knows_none_of_the_text():
    # Every character [UNK], itself a special token: the windows still carry [CLS] and [SEP] once each.
    from transformers import BertTokenizer

    from pipeline.model import encode_windows

    tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "的": 5})
    tokenizer.model_max_length = 16
    ids, owners = encode_windows(tokenizer, ["中文" * 20, "的"])
    assert ids[0] == [2] + [1] * 14 + [3] and ids[-1] == [2, 5, 3]
    assert owners == [0, 0, 0, 0, 1]  # 40 tokens: windows of 14 overlapping by 4 start at 0, 10, 20, 30


def test_output_order_and_scores_survive_chunking_and_length_sorting(tiny_run, tmp_path, monkeypatch):
    import numpy as np

    from pipeline import predict as predict_module
    from pipeline.model import load_run, score_texts

    root, _ = tiny_run
    monkeypatch.setattr(predict_module, "CHUNK", 7)  # 40 records: six chunks, the last one short
    src = _jsonl(tmp_path / "in.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    counts = predict_module.predict(root / "models/tiny", [str(src)], str(out), batch_size=4, progress=False,
                                    dtype="float32")  # the exact scores; auto may pick bfloat16
    records = _records(out)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(40)] and counts["records"] == 40
    assert [r["text"] for r in records] == MIXED
    # Each record alone gives the same scores as in its sorted, padded batch.
    tokenizer, model = load_run(root / "models/tiny")
    for i in (0, 13, 39):
        alone, windows = score_texts(model, tokenizer, [MIXED[i]])
        assert windows == [records[i]["windows"]]
        assert np.allclose(alone[0], [records[i]["scores"][model.config.id2label[j]] for j in range(6)], atol=1e-3)


def test_shards_cover_every_record_exactly_once(tiny_run, tmp_path):
    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", MIXED)
    seen = []
    for i in range(3):
        out = tmp_path / f"shard-{i}.jsonl"
        result = invoke("predict", src, "--model", root / "models/tiny", "-o", out, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        ids = [r["id"] for r in _records(out)]
        assert ids == [f"r{k}" for k in range(i, 40, 3)]  # record k goes to shard k mod 3, in input order
        seen += ids
    assert sorted(seen) == sorted(f"r{k}" for k in range(40))


def test_shard_auto_reads_torchrun_environment(tiny_run, tmp_path, monkeypatch):
    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", MIXED[:10])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", tmp_path / "same.jsonl", "--shard", "auto")
    assert result.exit_code == 2 and "put {shard} in the name" in result.output
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", tmp_path / "p-{shard}.jsonl", "--shard", "auto")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in _records(tmp_path / "p-1.jsonl")] == ["r1", "r3", "r5", "r7", "r9"]
    result = invoke("predict", src, "--model", root / "models/tiny", "--shard", "3/3")
    assert result.exit_code == 2 and "--shard 3/3: expected 0 <= i < n" in result.output


def test_summary_has_one_line_per_article_with_theme_shares(tiny_run, tmp_path):
    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", MIXED[:5])
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.jsonl"
    result = invoke("predict", root / SEED, src, "--model", root / "models/tiny", "-o", out, "--summary", summary)
    assert result.exit_code == 0, result.output
    records, articles = _records(out), _records(summary)
    assert [a["source"] for a in articles] == [str(root / SEED), str(src)]
    assert [a["paragraphs"] for a in articles] == [18, 5]
    first = articles[0]
    assert set(first) == {"source", "paragraphs", "main_themes", "theme_shares", "theme_paragraphs", "mean_scores"}
    for theme in THEMES:
        carried = sum(theme in r["labels"] for r in records[:18])
        assert first["theme_paragraphs"][theme] == carried
        assert first["theme_shares"][theme] == round(carried / 18, 4)
        assert abs(first["mean_scores"][theme] - sum(r["scores"][theme] for r in records[:18]) / 18) < 1e-3
    assert first["main_themes"] == sorted((t for t, s in first["theme_shares"].items() if s >= 0.25),
                                          key=lambda t: -first["theme_shares"][t])


def test_progress_bar_shows_rate_and_eta(tiny_run, tmp_path, capsys):
    from pipeline.predict import predict

    root, _ = tiny_run
    predict(root / "models/tiny", [str(root / SEED)], str(tmp_path / "out.jsonl"), progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "18/18" in bar and "para/s" in bar and "<00:00" in bar  # count/total, elapsed<remaining, rate


def test_int8_quantisation_matches_the_float_model(tiny_run, tmp_path):
    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", MIXED)
    float_out, int8_out = tmp_path / "float.jsonl", tmp_path / "int8.jsonl"
    assert invoke("predict", src, "--model", root / "models/tiny", "-o", float_out, "--dtype", "float32").exit_code == 0
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", int8_out, "--quantize", "int8")
    assert result.exit_code == 0 and "torch-int8" in result.output
    a, b = _records(float_out), _records(int8_out)
    assert sum(x["label"] == y["label"] for x, y in zip(a, b)) / len(a) >= 0.95
    assert max(abs(x["scores"][t] - y["scores"][t]) for x, y in zip(a, b) for t in THEMES) < 0.02


def test_bfloat16_matches_the_float_model(tiny_run, tmp_path):
    # What --dtype auto picks on AMX CPUs and recent GPUs (elsewhere bfloat16 is emulated: slower, same answers).
    import copy

    import numpy as np
    import torch

    from pipeline.model import load_run, score_texts

    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", MIXED)
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", tmp_path / "bf16.jsonl", "--dtype", "bfloat16")
    assert result.exit_code == 0 and "torch-bfloat16" in result.output, result.output
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", tmp_path / "x.jsonl", "--dtype", "half")
    assert result.exit_code == 2 and "--dtype expects auto, float32 or bfloat16, found 'half'" in result.output

    # The tiny run's scores all sit near 0.5, too close to compare top themes; a classifier layer with
    # large weights spreads them, so that bfloat16 has real decisions to keep.
    tokenizer, model = load_run(root / "models/tiny")
    torch.manual_seed(0)
    model.classifier.weight.data.normal_(0, 3.0)
    exact, _ = score_texts(model, tokenizer, MIXED)
    low, _ = score_texts(copy.deepcopy(model).to(torch.bfloat16), tokenizer, MIXED)
    difference = np.abs(exact - low).max()
    assert difference < 0.05
    top2 = np.sort(exact, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * difference  # no bfloat16 error this size can swap these
    assert clear.mean() >= 0.5
    assert (exact.argmax(1) == low.argmax(1))[clear].all()


def test_decide_label_is_the_top_theme_labels_those_over_their_threshold():
    import numpy as np

    from pipeline.model import decide

    themes = ["economy", "renewal", "culture"]
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4], [0.5, 0.7, 0.7], [0.1, 0.1, 0.1], [0.45, 0.1, 0.35]])
    thresholds = {"economy": 0.5, "renewal": 0.5, "culture": 0.3}
    top, labels = decide(probs, themes, thresholds)
    assert top == ["economy", "culture", "renewal", "economy", "economy"]
    # Strongest first; ties keep the schema's order; empty means no theme; the top theme may miss its
    # threshold while a weaker theme clears a lower one (last row).
    assert labels == [["economy", "renewal"], ["culture"], ["renewal", "culture", "economy"], [], ["culture"]]
    assert decide(probs, themes, None) == (top, [[t] for t in top])


def test_cls_only_last_layer_gives_the_full_models_scores(tiny_run):
    # Inference computes the last layer at [CLS] only; padded batches of mixed lengths must score
    # exactly as the stock model does.
    import copy

    import torch

    from pipeline.model import last_layer_cls_only, load_run

    root, _ = tiny_run
    tokenizer, model = load_run(root / "models/tiny")
    torch.manual_seed(0)
    model.classifier.weight.data.normal_(0, 3.0)  # spread the scores so a wrong [CLS] would show
    fast = last_layer_cls_only(copy.deepcopy(model))
    assert type(fast.bert.encoder.layer[-1]).__name__ == "ClsOnlyLayer"
    assert last_layer_cls_only(fast) is fast and type(fast.bert.encoder.layer[-1].layer).__name__ == "BertLayer"
    batch = tokenizer(MIXED[:12], truncation=True, max_length=64, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding present: the mask path is exercised
    with torch.inference_mode():
        assert torch.allclose(model(**batch).logits, fast(**batch).logits, atol=1e-5)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two streams need two CPUs; with one, --streams 2 runs one")
def test_concurrent_streams_write_the_same_records(tiny_run, tmp_path):
    root, _ = tiny_run
    src = _jsonl(tmp_path / "in.jsonl", MIXED)
    for streams in ("1", "2"):
        result = invoke("predict", src, "--model", root / "models/tiny", "-o", tmp_path / f"s{streams}.jsonl",
                        "--dtype", "float32", "--batch-size", "4", "--streams", streams)
        assert result.exit_code == 0, result.output
    assert _records(tmp_path / "s1.jsonl") == _records(tmp_path / "s2.jsonl")
    result = invoke("predict", src, "--model", root / "models/tiny", "--streams", "0")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --streams expects a positive number of concurrent batches, found 0"
