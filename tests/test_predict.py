"""Batch inference through the real CLI on the tiny run's model."""

import json
from pathlib import Path

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
    out = tmp_path / "out.csv"
    assert invoke("predict", root / SEED, "--model", root / "models/tiny", "-o", out, "--format", "csv").exit_code == 0
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("id,source,paragraph_index,label,labels,windows,score_economy")


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
