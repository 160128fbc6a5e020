"""Label tools: agreement, check, suggest, and the Label Studio / doccano round trip."""

import json
from pathlib import Path

from conftest import ROOT, invoke


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_agreement_kappa_on_a_hand_made_case(project, tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "1", "primary": "economy", "secondary": []},
                                      {"id": "2", "primary": "economy", "secondary": ["reform"]},
                                      {"id": "3", "primary": "none", "secondary": []},
                                      {"id": "4", "primary": "culture", "secondary": []}])
    b = _write(tmp_path / "b.jsonl", [{"id": "1", "primary": "economy", "secondary": []},
                                      {"id": "2", "primary": "reform", "secondary": ["economy"]},
                                      {"id": "3", "primary": "none", "secondary": []},
                                      {"id": "4", "primary": "culture", "secondary": []}])
    result = invoke("label", "agreement", a, b, "--config", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    # primary: 3 of 4 agree; chance agreement p_e = (2*1 + 0*1 + 1*1 + 1*1)/16 = 4/16, kappa = (0.75-0.25)/0.75
    assert "4 paragraphs; primary: kappa 0.667, agreement 0.750" in result.output
    # economy membership agrees on all 4 (both mark 1 and 2): kappa 1
    assert "economy     kappa 1.000  agreement 1.000" in result.output


def test_label_check_lists_a_planted_error(project):
    rows = [json.loads(l) for l in Path("data/labels/seed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[7]["primary"] == "renewal"
    rows[7]["primary"] = "openness"  # a 街区改造 paragraph mislabelled
    _write(Path("data/labels/seed.jsonl"), rows)
    result = invoke("label", "check", "configs/tiny.yaml", "-o", "check.jsonl", "--min-confidence", "0.3")
    assert result.exit_code == 0, result.output
    suspects = [json.loads(l) for l in Path("check.jsonl").read_text(encoding="utf-8").splitlines()]
    planted = [s for s in suspects if s["id"] == "000_73cf914e94b4181e:7"]
    assert planted and planted[0]["gold"] == "openness" and planted[0]["where"] == "data/labels/seed.jsonl:8"


def test_suggest_writes_unlabelled_paragraphs_in_label_format(tiny_run, project, tmp_path):
    root, _ = tiny_run
    extra = Path("data/raw/second.txt")
    extra.write_text("今年全区新建社区养老服务中心三处,方便老年人就近就医和日常照料。\n"
                     "开发区引进外资企业十家,外贸出口总额比上年增长一成以上。\n"
                     "老旧小区完成供热管网改造,道路重新铺设,居民出行更加方便。\n", encoding="utf-8")
    result = invoke("label", "suggest", "configs/tiny.yaml", "--model", root / "models/tiny", "--n", "2", "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2
    assert all(r["id"].startswith("second:") and r["primary"] == "" and r["text"] for r in rows)


def test_label_studio_round_trip(project, tmp_path):
    tasks_in = _write(tmp_path / "todo.jsonl", [{"id": "p1", "text": "引进外资企业十家。"}, {"id": "p2", "text": "天气晴。"},
                                                {"id": "p3", "text": "未标注的一段。"}])
    out = tmp_path / "tasks.json"
    assert invoke("label", "export", tasks_in, "--format", "labelstudio", "-o", out, "--config", "configs/tiny.yaml").exit_code == 0
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert tasks[0]["data"] == {"text": "引进外资企业十家。", "pid": "p1"}
    assert '<Choice value="none"/>' in out.with_suffix(".xml").read_text()

    def ann(primary, secondary=()):
        return [{"result": [{"from_name": "primary", "type": "choices", "value": {"choices": [primary]}},
                            {"from_name": "secondary", "type": "choices", "value": {"choices": list(secondary)}}]}]

    tasks[0]["annotations"] = ann("openness", ["economy"])
    tasks[1]["annotations"] = ann("none")
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    labels = tmp_path / "labels.jsonl"
    result = invoke("label", "import", exported, "--format", "labelstudio", "-o", labels, "--config", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    assert "2 labelled paragraphs" in result.output and "1 tasks not annotated yet" in result.output
    rows = [json.loads(l) for l in labels.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"id": "p1", "primary": "openness", "secondary": ["economy"], "text": "引进外资企业十家。"},
                    {"id": "p2", "primary": "none", "secondary": [], "text": "天气晴。"}]


def test_doccano_round_trip_and_unknown_theme(project, tmp_path):
    todo = _write(tmp_path / "todo.jsonl", [{"id": "p1", "text": "新建学校两所。"}])
    out = tmp_path / "doccano.jsonl"
    assert invoke("label", "export", todo, "--format", "doccano", "-o", out, "--config", "configs/tiny.yaml").exit_code == 0
    row = json.loads(out.read_text(encoding="utf-8"))
    row["label"] = ["livelihood", "renewal"]
    out.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    labels = tmp_path / "labels.jsonl"
    assert invoke("label", "import", out, "--format", "doccano", "-o", labels, "--config", "configs/tiny.yaml").exit_code == 0
    assert json.loads(labels.read_text(encoding="utf-8")) == {"id": "p1", "primary": "livelihood", "secondary": ["renewal"],
                                                              "text": "新建学校两所。"}
    row["label"] = ["welfare"]
    out.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    result = invoke("label", "import", out, "--format", "doccano", "-o", labels, "--config", "configs/tiny.yaml")
    assert result.exit_code == 2 and f"{out}:1: unknown theme 'welfare'" in result.output
