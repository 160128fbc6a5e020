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


def test_label_tools_take_a_schema_derived_from_the_data(project, tmp_path):
    # A single-label config with themes: null: export offers its own labels (no none, no secondary),
    # import checks against them, from Label Studio's JSON-MIN export too.
    (tmp_path / "news.csv").write_text("text,label\n" + "".join(f"体育新闻第{i}条。,sports\n财经新闻第{i}条。,finance\n" for i in range(6)),
                                       encoding="utf-8")
    cfg = tmp_path / "own.yaml"
    cfg.write_text(f"run_name: own\nthemes: null\ndata:\n  tables: [{{path: {tmp_path / 'news.csv'}}}]\n"
                   f"  output_dir: {tmp_path / 'prepared'}\ntrain:\n  mode: single_label\n", encoding="utf-8")
    todo = _write(tmp_path / "todo.jsonl", [{"id": "n1", "text": "女排夺冠。"}, {"id": "n2", "text": "股市收涨。"}])
    out = tmp_path / "tasks.json"
    result = invoke("label", "export", todo, "--format", "labelstudio", "-o", out, "--config", cfg)
    assert result.exit_code == 2 and "schema.json not found; run `pipeline prepare CONFIG` first" in result.output
    assert invoke("prepare", cfg).exit_code == 0
    assert invoke("label", "export", todo, "--format", "labelstudio", "-o", out, "--config", cfg).exit_code == 0
    xml = out.with_suffix(".xml").read_text()
    assert '<Choice value="sports"/>' in xml and "none" not in xml and "secondary" not in xml
    minimal = tmp_path / "min.json"  # JSON-MIN: one flat object per task, the choice as a string
    minimal.write_text(json.dumps([{"id": 1, "text": "女排夺冠。", "pid": "n1", "primary": "sports"},
                                   {"id": 2, "text": "股市收涨。", "pid": "n2"}], ensure_ascii=False), encoding="utf-8")
    labels = tmp_path / "labels.jsonl"
    result = invoke("label", "import", minimal, "--format", "labelstudio", "-o", labels, "--config", cfg)
    assert result.exit_code == 0, result.output
    assert "1 labelled paragraphs" in result.output and "1 tasks not annotated yet" in result.output
    assert json.loads(labels.read_text(encoding="utf-8")) == {"id": "n1", "primary": "sports", "secondary": [], "text": "女排夺冠。"}
    other_ui = tmp_path / "other.json"
    other_ui.write_text(json.dumps([{"data": {"text": "股市收涨。", "pid": "n2"}, "annotations": [
        {"result": [{"from_name": "label", "type": "choices", "value": {"choices": ["finance"]}}]}]}]), encoding="utf-8")
    result = invoke("label", "import", other_ui, "--format", "labelstudio", "-o", labels, "--config", cfg)
    assert result.exit_code == 2 and "expected choices named primary/secondary" in result.output and "found label" in result.output
    b = _write(tmp_path / "b.jsonl", [{"id": "n1", "primary": "sports"}, {"id": "n2", "primary": "finance"}])
    result = invoke("label", "agreement", b, b, "--config", cfg)
    assert result.exit_code == 0 and "kappa 1.000" in result.output
