import json
from pathlib import Path

from pipeline.data import Dropped, clean_article, normalize, split_rows

from conftest import invoke

SEED = "data/raw/000_73cf914e94b4181e.txt"


def test_cleaning_drops_spam_title_and_date_but_keeps_article_text(project):
    text = Path(SEED).read_text(encoding="utf-8")
    dropped = Dropped()
    paragraphs = clean_article(text, SEED, 8, dropped)
    assert len(paragraphs) == 18
    assert not any("开云" in p for p in paragraphs)
    assert paragraphs[0].startswith("秋日的和平区")
    assert paragraphs[-1].endswith("姚建军表示。")
    assert dropped.counts == {"spam": 5, "heading": 1, "date": 1}
    assert dropped.examples["heading"][0]["text"] == "牢记嘱托 善作善成|向上突破 向新前行 向内挖潜外开放 和平区走出内涵式发展新路子"


def test_spam_marker_alone_is_not_spam():
    dropped = Dropped()
    text = "市民可登录区政府官方网站查询办事指南,全程网上办理。\n另一段落讲述了社区服务的新进展。"
    assert clean_article(text, "a.txt", 8, dropped) == [normalize(line) for line in text.splitlines()]
    assert dropped.counts == {}


def test_prepare_writes_labelled_splits_and_report(project):
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    assert "prepared 18 labelled paragraphs" in result.output
    out = Path("data/prepared-tiny")
    rows = {name: [json.loads(l) for l in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
            for name in ("train", "validation", "test")}
    assert sum(len(r) for r in rows.values()) == 18
    ids = [r["id"] for split in rows.values() for r in split]
    assert len(set(ids)) == 18
    first = next(r for split in rows.values() for r in split if r["id"] == "000_73cf914e94b4181e:7")
    assert first["primary"] == "renewal" and first["text"].startswith("今年7月,民园1920街区改造工程全面竣工")
    report = json.loads((out / "prepare_report.json").read_text(encoding="utf-8"))
    assert report["dropped"]["counts"] == {"spam": 5, "heading": 1, "date": 1}
    assert report["splits"]["test"]["paragraphs"] == len(rows["test"])


def test_split_is_stratified_and_keeps_rare_classes_in_train():
    rows = [{"id": str(i), "text": f"t{i}", "primary": "economy"} for i in range(20)]
    rows += [{"id": "r1", "text": "rare", "primary": "openness"}]
    splits = split_rows(rows, 0.2, 0.2, seed=1)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [13, 4, 4]
    assert any(r["primary"] == "openness" for r in splits["train"])
    assert split_rows(rows, 0.2, 0.2, seed=1) == splits


def test_unknown_theme_names_file_and_line(project):
    lines = Path("data/labels/seed.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"primary": "economy"', '"primary": "economic"')
    Path("data/labels/seed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 2
    assert "data/labels/seed.jsonl:3: unknown theme 'economic'; expected one of" in result.output
    assert not Path("data/prepared-tiny").exists(), "nothing half-written"


def test_gbk_article_is_read(project):
    text = Path(SEED).read_text(encoding="utf-8")
    Path(SEED).write_bytes(text.encode("gb18030"))
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    assert "read as GBK" in result.output


def test_undecodable_file_is_one_line(project):
    Path("data/raw/bad.txt").write_bytes(bytes([0x81, 0x20, 0xfe, 0x41, 0x30]) * 10)
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 2
    assert "data/raw/bad.txt is not UTF-8" in result.output and "iconv" in result.output
    assert "Traceback" not in result.output


def test_empty_and_missing_inputs(project):
    Path("data/raw/empty.txt").write_text("", encoding="utf-8")
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 2 and "data/raw/empty.txt is empty" in result.output
    result = invoke("prepare", "configs/tiny.yaml", "--set", "data.inputs=[data/nowhere]")
    assert result.exit_code == 2 and "input data/nowhere not found" in result.output


def _split_ids(out: Path) -> dict[str, set[str]]:
    return {name: {json.loads(l)["id"] for l in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()}
            for name in ("train", "validation", "test")}


def test_label_rows_can_pin_the_test_split(project):
    # Rows with "split": "test" are the test split when test_fraction is 0 (configs/default.yaml pins
    # 307 People's Daily paragraphs so); relabelling or adding rows elsewhere never moves them.
    path = Path("data/labels/seed.jsonl")
    rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]
    for row in rows[:3]:
        row["split"] = "test"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = invoke("prepare", "configs/tiny.yaml", "--set", "data.test_fraction=0")
    assert result.exit_code == 0, result.output
    splits = _split_ids(Path("data/prepared-tiny"))
    assert splits["test"] == {r["id"] for r in rows[:3]}
    assert len(splits["train"]) + len(splits["validation"]) == 15


def test_unknown_split_names_file_and_line(project):
    lines = Path("data/labels/seed.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[3])
    row["split"] = "dev"
    lines[3] = json.dumps(row, ensure_ascii=False)
    Path("data/labels/seed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 2
    assert 'data/labels/seed.jsonl:4: "split" is "dev"; expected one of train, validation, test' in result.output
