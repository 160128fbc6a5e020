"""Broken inputs fed to each command: every one ends in one line on stderr (what was expected, what was
found, how to fix it), exit code 2, no traceback and no partial output; or, where the input is only
unusual (UTF-16, a BOM, GBK, a 5 MB paragraph), the command works.

Cases tested elsewhere, not repeated here:
  test_prepare.py  empty article file, missing input, GBK article, undecodable bytes, unknown theme in labels
  test_predict.py  JSONL line that is not JSON or lacks "text", missing run directory, output folder that
                   does not exist, corrupted weights, long paragraph scored in windows
  test_config.py   wrong types, unknown keys, missing config file
  test_resume.py   half-written checkpoint, --resume without a checkpoint or with another config
Near-duplicates and leakage between splits are at the end.
"""

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import invoke
from pipeline.data import near_duplicates, split_rows

SEED = "data/raw/000_73cf914e94b4181e.txt"
LABELS = "data/labels/seed.jsonl"
PREPARED = Path("data/prepared-tiny")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"


def fails(result, *expected: str) -> str:
    """The one error line of a failed command, checked for the expected fragments."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def no_leftovers(folder: Path) -> None:
    """No temporary files or folders (.name.xxxx) left where an output was being written."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


# --- prepare -------------------------------------------------------------------------------------

def test_prepare_binary_article(project):
    Path("data/raw/scan.txt").write_bytes(PNG)
    fails(invoke("prepare", "configs/tiny.yaml"),
          "data/raw/scan.txt looks binary (NUL bytes found); expected UTF-8 text, e.g. convert with iconv -t UTF-8")
    assert not PREPARED.exists()


def test_prepare_reads_utf16_and_bom_but_not_utf16_without_bom(project):
    text = Path(SEED).read_text(encoding="utf-8")
    Path(SEED).write_bytes(text.encode("utf-16"))  # with a byte-order mark
    Path(LABELS).write_bytes(b"\xef\xbb\xbf" + Path(LABELS).read_bytes())  # UTF-8 with a BOM
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    assert "read as UTF-16" in result.output and "prepared 18 labelled paragraphs" in result.output
    Path(SEED).write_bytes(text.encode("utf-16-le"))
    fails(invoke("prepare", "configs/tiny.yaml"),
          f"{SEED} looks like UTF-16LE text without a byte-order mark; expected UTF-8: convert it with iconv -f UTF-16LE -t UTF-8")


def test_prepare_jsonl_input_names_the_bad_line(project):
    records = Path("data/raw/records.jsonl")
    records.write_text('{"id": "r1", "text": "和平区推进城市更新。"}\n{"id": "r2", "body": "没有 text"}\n', encoding="utf-8")
    fails(invoke("prepare", "configs/tiny.yaml"), f'{records}:2: expected an object with a "text" string')
    records.write_text('{"id": "r1", "text": "和平区推进城市更新。"}\n{"id": "r2", "text": "  "}\n', encoding="utf-8")
    fails(invoke("prepare", "configs/tiny.yaml"), f'{records}:2: "text" is empty; remove the line or fill it in')
    records.write_bytes('{"id": "r1", "text": "和平区推进城市更新。"}\n'.encode("gbk"))
    fails(invoke("prepare", "configs/tiny.yaml"), f"{records}:1: not UTF-8; it looks like GBK: convert the file with iconv -f GBK -t UTF-8")
    records.write_text("\n\n", encoding="utf-8")
    fails(invoke("prepare", "configs/tiny.yaml"), f'{records} has no records; expected one JSON object per line with a "text" field')
    assert not PREPARED.exists()


def test_prepare_accepts_a_5mb_paragraph(project):
    Path("data/raw/long.txt").write_text("和平区推进城市更新,建设宜居城市。" * 110_000 + "\n", encoding="utf-8")  # 5.3 MB, one line
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    assert "read 19, unlabelled 1 (not used)" in result.output


def test_prepare_bad_label_values(project):
    lines = Path(LABELS).read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    Path(LABELS).write_text("\n".join([json.dumps({**row, "primary": ["economy"]}), *lines[1:]]) + "\n", encoding="utf-8")
    fails(invoke("prepare", "configs/tiny.yaml"), f"{LABELS}:1: ", "primary", "economy")
    Path(LABELS).write_text("\n".join([json.dumps({**row, "secondary": "reform"}), *lines[1:]]) + "\n", encoding="utf-8")
    fails(invoke("prepare", "configs/tiny.yaml"), f"{LABELS}:1: ", "secondary", "reform")
    assert not PREPARED.exists()


def test_prepare_never_replaces_a_folder_it_did_not_write(project):
    fails(invoke("prepare", "configs/tiny.yaml", "--set", "data.output_dir=data"),
          "data exists and does not look like an earlier output of this stage (no prepare_report.json); "
          "it would be replaced: choose another folder or remove it yourself")
    assert Path(SEED).is_file() and Path(LABELS).is_file()


def test_prepare_output_in_a_new_folder_is_created(project):
    result = invoke("prepare", "configs/tiny.yaml", "--set", "data.output_dir=new/nested/prepared")
    assert result.exit_code == 0, result.output
    assert Path("new/nested/prepared/train.jsonl").is_file()


def test_prepare_disk_full_leaves_nothing(project, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    fails(invoke("prepare", "configs/tiny.yaml"),
          "could not write data/prepared-tiny: No space left on device; free space or fix permissions, or choose another output")
    assert not PREPARED.exists()
    no_leftovers(Path("data"))


# --- config --------------------------------------------------------------------------------------

def test_config_files_that_are_not_a_config(project):
    Path("configs/list.yaml").write_text("- run_name: x\n", encoding="utf-8")
    fails(invoke("prepare", "configs/list.yaml"), "config file configs/list.yaml: expected a mapping of sections, found list")
    Path("configs/png.yaml").write_bytes(PNG)
    fails(invoke("train", "configs/png.yaml"), "config file configs/png.yaml is not valid YAML", "fix the syntax")
    Path("configs/empty.yaml").write_text("", encoding="utf-8")
    fails(invoke("train", "configs/empty.yaml"), "invalid config configs/empty.yaml: run_name: required but missing; data: required but missing")
    Path("configs/bom.yaml").write_bytes(b"\xef\xbb\xbf" + Path("configs/tiny.yaml").read_bytes())
    from pipeline.config import load_config

    assert load_config("configs/bom.yaml").run_name == "tiny"


# --- train ---------------------------------------------------------------------------------------

def test_train_without_prepared_data(project):
    fails(invoke("train", "configs/tiny.yaml"), "data/prepared-tiny/train.jsonl not found; run `pipeline prepare CONFIG` first")


def test_train_output_names_that_would_overwrite_something(project):
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    fails(invoke("train", "configs/tiny.yaml", "--set", "run_name=latest"), "run_name 'latest' is reserved")
    fails(invoke("train", "configs/tiny.yaml", "--set", "train.output_dir=configs/themes.yaml"),
          "train.output_dir configs/themes.yaml is a file; expected a folder for runs: choose another")
    fails(invoke("train", "configs/tiny.yaml", "--set", "train.output_dir=data", "--set", "run_name=raw"),
          "data/raw exists and does not look like an earlier output of this stage (no config.yaml)")
    assert Path(SEED).is_file()


def test_train_disk_full_keeps_latest_and_checkpoints(project, monkeypatch):
    from transformers import Trainer

    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0

    def full(self, model, trial):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{self.args.output_dir}/checkpoint-{self.state.global_step}")

    monkeypatch.setattr(Trainer, "_save_checkpoint", full)
    result = invoke("train", "configs/tiny.yaml")
    fails(result, "training stopped: cannot write models/tiny.partial/checkpoints/checkpoint-")  # the first epoch's end
    assert ("(No space left on device); free space or fix permissions, then run the same command again: "
            "it continues from the last checkpoint") in result.output
    assert not Path("models/tiny").exists() and not Path("models/latest").exists()


# --- evaluate and predict on a broken run directory ----------------------------------------------

@pytest.fixture
def run_copy(tiny_run, tmp_path):
    root, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(root / "models/tiny", copy)
    for name in ("metrics.json", "report.md", "report.html", "predictions.jsonl", "README.md"):
        (copy / name).unlink(missing_ok=True)
    return root, copy


def test_evaluate_and_predict_with_weights_missing_or_cut_short(run_copy, tmp_path):
    root, run = run_copy
    weights = run / "model.safetensors"
    full = weights.read_bytes()
    weights.unlink()
    fails(invoke("evaluate", run), f"run directory {run} is incomplete: model.safetensors is missing; retrain with `pipeline train CONFIG`")
    fails(invoke("predict", root / SEED, "--model", run, "-o", tmp_path / "out.jsonl"), "model.safetensors is missing")
    weights.write_bytes(full[: len(full) // 2])
    fails(invoke("evaluate", run), f"cannot load the model in {run}", "the run directory is corrupted: retrain")
    assert sorted(p.name for p in run.iterdir() if p.name.endswith((".json", ".md", ".jsonl"))) == \
           ["config.json", "data.json", "stages.json", "tokenizer.json", "tokenizer_config.json", "train_metrics.json"]
    no_leftovers(run)
    (run / "config.json").write_text("{not json", encoding="utf-8")
    weights.write_bytes(full)
    fails(invoke("predict", root / SEED, "--model", run, "-o", tmp_path / "out.jsonl"), "the run directory is corrupted")
    assert not (tmp_path / "out.jsonl").exists()


def test_predict_unusual_encodings(tiny_run, tmp_path):
    root, _ = tiny_run
    model = root / "models/tiny"
    text = (root / SEED).read_text(encoding="utf-8")
    out = tmp_path / "out.jsonl"
    for name, raw in (("gbk.txt", text.encode("gbk")), ("utf16.txt", text.encode("utf-16")),
                      ("bom.txt", b"\xef\xbb\xbf" + text.encode("utf-8"))):
        (tmp_path / name).write_bytes(raw)
        result = invoke("predict", tmp_path / name, "--model", model, "-o", out)
        assert result.exit_code == 0, result.output
        assert len(out.read_text(encoding="utf-8").splitlines()) == 18, name
    records = '{"id": "a", "text": "和平区推进城市更新。"}\n{"id": "b", "text": "扩大对外开放。"}\n'
    (tmp_path / "utf16.jsonl").write_bytes(records.encode("utf-16"))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + records.encode("utf-8"))
    for name in ("utf16.jsonl", "bom.jsonl"):
        result = invoke("predict", tmp_path / name, "--model", model, "-o", out)
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == ["a", "b"]


def test_predict_empty_binary_and_undecodable_inputs(tiny_run, tmp_path):
    root, _ = tiny_run
    model = root / "models/tiny"
    out = tmp_path / "out.jsonl"
    cases = {
        "empty.txt": (b"", "empty.txt is empty; expected article text (UTF-8)"),
        "empty.jsonl": (b"\n", 'empty.jsonl has no records; expected one JSON object per line with a "text" field'),
        "scan.txt": (PNG, "scan.txt looks binary (NUL bytes found); expected UTF-8 text, e.g. convert with iconv -t UTF-8"),
        "scan.jsonl": (PNG, "scan.jsonl looks binary (NUL bytes found); expected UTF-8 JSON lines, e.g. convert with iconv -t UTF-8"),
        "gbk.jsonl": ('{"text": "和平区推进城市更新。"}\n'.encode("gbk"), "gbk.jsonl:1: not UTF-8; it looks like GBK: convert the file with iconv -f GBK -t UTF-8"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        fails(invoke("predict", tmp_path / name, "--model", model, "-o", out), message)
        assert not out.exists()
    fails(invoke("predict", "-", "--model", model, input="和平区推进城市更新。".encode("gbk")),
          "stdin is not UTF-8; convert it with iconv -t UTF-8")
    no_leftovers(tmp_path)


def test_predict_output_that_cannot_be_written(tiny_run, tmp_path):
    root, _ = tiny_run
    model = root / "models/tiny"
    fails(invoke("predict", root / SEED, "--model", model, "-o", tmp_path),
          f"output {tmp_path} is a folder; expected a file name, e.g. {tmp_path / 'predictions.jsonl'}")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    fails(invoke("predict", root / SEED, "--model", model, "-o", "/dev/full"),
          "could not write /dev/full: No space left on device; free space or fix permissions, or choose another output")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode), "a device is written to, never replaced by a file"


@pytest.mark.slow
def test_predict_5mb_paragraph_is_scored_in_windows(tiny_run, tmp_path):
    # 40,000 windows: minutes on a busy 2-core machine, hence slow.
    root, _ = tiny_run
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"id": "long", "text": "和平区推进城市更新,建设宜居城市。" * 110_000}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = invoke("predict", src, "--model", root / "models/tiny", "-o", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["windows"] > 30_000 and len(record["text"]) == 1_870_000


# --- pretrain ------------------------------------------------------------------------------------

def test_pretrain_empty_corpus_file(project):
    Path("data/empty.txt").write_text("\n", encoding="utf-8")
    fails(invoke("pretrain", "configs/tiny.yaml", "--set", "pretrain.corpus=[data/empty.txt]"),
          "data/empty.txt is empty; expected article text (UTF-8)")


# --- nothing is unpickled, YAML is read safely ---------------------------------------------------

def test_code_never_unpickles_or_loads_yaml_unsafely():
    import re

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("pipeline").glob("*.py")):
        code = "\n".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines())  # comments may name them
        unsafe = r"import pickle|pickle\.loads?\(|torch\.load\(|allow_pickle=True|yaml\.(load|full_load|unsafe_load)\(|(?<![.\w])eval\("
        assert not re.search(unsafe, code), path.name


# --- near-duplicates and leakage -----------------------------------------------------------------

BASE = "和平区坚持以人民为中心的发展思想,推进老旧小区改造,改善居民居住条件,提升城市品质。"


def test_near_duplicates_are_found_and_grouped():
    texts = [
        BASE,
        "2024, " + BASE.replace("。", "!"),  # other digits and punctuation: the same letters
        BASE.replace("居民", "市民"),  # one character changed: 29 of 39 5-grams shared
        "扩大高水平对外开放,吸引外资企业落户,推动贸易和投资自由化便利化。",
        "2024",  # no letters: never a near-duplicate
        "2025",
    ]
    groups, pairs = near_duplicates(texts)
    assert groups == [[0, 1, 2]]
    assert pairs == [(0, 1, 1.0), (0, 2, 0.744)]


def test_split_keeps_each_group_in_one_split():
    rows = [{"id": str(i), "text": f"t{i}", "primary": "economy"} for i in range(20)]
    groups = {str(i): "g" for i in range(0, 20, 4)}  # five near-copies of one text
    splits = split_rows(rows, 0.2, 0.2, seed=1, groups=groups)
    homes = {name for name, members in splits.items() for r in members if r["id"] in groups}
    assert len(homes) == 1
    assert sum(len(s) for s in splits.values()) == 20
    assert split_rows(rows, 0.2, 0.2, seed=1, groups={}) == split_rows(rows, 0.2, 0.2, seed=1)


def test_prepare_reports_near_duplicates_and_keeps_them_together(project):
    labelled = [json.loads(line) for line in Path(LABELS).read_text(encoding="utf-8").splitlines()]
    copies = [r["text"].replace("。", "!", 1) + "(记者 王明)" for r in labelled[:6]]  # re-published with a byline
    Path("data/raw/copy.txt").write_text("\n".join(copies) + "\n", encoding="utf-8")
    with open(LABELS, "a", encoding="utf-8") as f:
        for i, r in enumerate(labelled[:6]):
            f.write(json.dumps({"id": f"copy:{i}", "primary": r["primary"], "secondary": r["secondary"]}) + "\n")
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 0, result.output
    assert "near-duplicates: 6 groups (12 paragraphs), each kept within one split; e.g. 000_73cf914e94b4181e:" in result.output
    report = json.loads((PREPARED / "prepare_report.json").read_text(encoding="utf-8"))
    near = report["near_duplicates"]
    assert (near["groups"], near["paragraphs"], near["groups_with_different_primary"]) == (6, 12, 0)
    assert len(near["examples"]) == 5 and all(e["b"].startswith("copy:") and e["jaccard"] >= 0.7 for e in near["examples"])
    home = {}
    for name in ("train", "validation", "test"):
        for line in (PREPARED / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            home[json.loads(line)["id"]] = name
    assert all(home[f"copy:{i}"] == home[labelled[i]["id"]] for i in range(6))


def test_prepare_says_which_files_in_an_input_folder_it_skips(project):
    Path("data/raw/notes.csv").write_text("a,b\n", encoding="utf-8")
    result = invoke("prepare", "configs/tiny.yaml")
    assert result.exit_code == 0 and "data/raw: 1 files skipped (not .txt, .md or .jsonl, or broken links), e.g. notes.csv" in result.output


def test_prepare_two_inputs_with_one_name_would_share_ids(project):
    article = next(Path("data/raw").glob("*.txt"))
    for folder in ("a", "b"):
        Path(f"data/more/{folder}").mkdir(parents=True)
        shutil.copy(article, f"data/more/{folder}/{article.name}")
    result = invoke("prepare", "configs/tiny.yaml", "--set", 'data.inputs=["data/more"]')
    assert result.exit_code == 2
    assert f"two inputs share the name '{article.stem}': rename one of them" in result.output
    assert "Traceback" not in result.output and not Path("data/prepared-tiny").exists()


# --- found by a review: more mistakes a user makes ---------------------------------------------------

def test_config_mistakes_yaml_cannot_catch(project, tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(Path("configs/tiny.yaml").read_text(encoding="utf-8") + "train:\n  epochs: 1\n", encoding="utf-8")
    fails(invoke("prepare", twice), f"config file {twice}: line", "key 'train' is given twice in one mapping")
    fails(invoke("prepare", "configs/tiny.yaml", "--set", "train.epochs=[1"),
          "--set 'train.epochs=[1': the value is not valid YAML")
    fails(invoke("prepare", "configs/tiny.yaml", "--set", "x=!!python/object/apply:os.system ['true']"), "not valid YAML")
    fails(invoke("pretrain", "configs/tiny.yaml", "--set", "pretrain.num_heads=3"),
          "hidden_size 256 must be a multiple of num_heads 3")
    # Themes changed after prepare: train names the label the new list lacks instead of a KeyError.
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    themes = [t for t in __import__("yaml").safe_load(Path("configs/themes.yaml").read_text(encoding="utf-8"))
              if t["id"] != "livelihood"]
    Path("configs/five.yaml").write_text(__import__("yaml").safe_dump(themes, allow_unicode=True), encoding="utf-8")
    fails(invoke("train", "configs/tiny.yaml", "--set", "themes=configs/five.yaml"),
          "holds label 'livelihood', which the config's themes do not list", "run `pipeline prepare CONFIG` again")


def test_run_cv_and_predict_refuse_what_would_fail_later(project):
    fails(invoke("run", "configs/tiny.yaml", "--set", "data.test_fraction=0"),
          "test.jsonl is empty, so `run` would have nothing to evaluate on")
    assert not Path("models/tiny").exists(), "nothing was trained"
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    fails(invoke("cv", "configs/tiny.yaml", "--folds", "40"), "--folds 40: fold", "choose fewer folds")
    assert not Path("models/tiny-cv/fold-0").exists(), "no fold was trained"
    result = invoke("predict", SEED, "--model", "models/none", "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output and "Traceback" not in result.output


def test_export_never_replaces_a_folder_it_did_not_write_and_runs_need_their_tokenizer(run_copy, tmp_path):
    root, run = run_copy
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine", encoding="utf-8")
    fails(invoke("export", run, "--format", "torch", "--quantize", "int8", "-o", foreign),
          f"{foreign} exists and does not look like an earlier output of this stage (no export.json)")
    assert (foreign / "keep.txt").read_text(encoding="utf-8") == "mine"
    from pipeline.runs import umask

    expected = 0o666 & ~umask()  # what an ordinary file gets under this umask
    assert (root / "models/tiny/model.safetensors").stat().st_mode & 0o777 == expected, "weights as readable as any output"
    (run / "tokenizer.json").unlink()
    fails(invoke("predict", root / SEED, "--model", run, "-o", tmp_path / "out.jsonl"),
          f"run directory {run} is incomplete: no tokenizer")


def test_label_import_of_malformed_exports(project, tmp_path):
    cases = {
        "strings.json": (["a", "b"], "expected a task object, found str"),
        "annotations.json": ([{"data": {"pid": "p", "text": "t"}, "annotations": ["x"]}], 'expected "annotations" a list of objects'),
        "result.json": ([{"data": {"pid": "p", "text": "t"}, "annotations": [{"result": "economy"}]}],
                        "expected the annotation's \"result\" a list of objects"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
        fails(invoke("label", "import", tmp_path / name, "--format", "labelstudio", "-o", tmp_path / "l.jsonl",
                     "--config", "configs/tiny.yaml"), message)
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps({"text": "经济", "pid": "p", "label": [[0, 2, "economy"]]}) + "\n", encoding="utf-8")
    fails(invoke("label", "import", spans, "--format", "doccano", "-o", tmp_path / "l.jsonl", "--config", "configs/tiny.yaml"),
          f"{spans}:1: expected \"label\" a list of label names", "span labels are not classes")
    fails(invoke("label", "export", LABELS, "--format", "labelstudio", "-o", tmp_path / "tasks.xml", "--config", "configs/tiny.yaml"),
          "expected the tasks file (JSON)")
    assert not (tmp_path / "l.jsonl").exists() and not (tmp_path / "tasks.xml").exists()


def test_sigterm_leaves_no_partial_output(tiny_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    root, _ = tiny_run
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"经济发展取得新成绩,改革开放不断深入。第{i}段。" * 8}, ensure_ascii=False) + "\n"
                           for i in range(200_000)), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "predict", str(big), "--model", str(root / "models/tiny"),
                             "-o", str(out / "p.jsonl"), "--summary", str(out / "s.jsonl")],
                            stderr=subprocess.PIPE, text=True, cwd=root)
    deadline = time.time() + 60
    while not any(out.iterdir()) and time.time() < deadline:  # writing has begun
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM); nothing half-written was kept" in stderr, stderr
    assert list(out.iterdir()) == []


def test_yaml_anchors_repeated_rows_huge_cells_and_odd_label_studio_values(project, tmp_path):
    # YAML merge keys still work with the duplicate-key check.
    rows = "".join(f"经济新闻第{i}条内容。,economy\n文化新闻第{i}条内容。,culture\n" for i in range(6))
    (tmp_path / "a.csv").write_text("text,label\n" + rows, encoding="utf-8")
    cfg = tmp_path / "anchors.yaml"
    cfg.write_text(f"run_name: a\nthemes: null\ndata:\n  tables:\n    - &t {{path: {tmp_path / 'a.csv'}, split: null}}\n"
                   f"    - {{<<: *t, path: {tmp_path / 'a.csv'}}}\n  output_dir: {tmp_path / 'p'}\n", encoding="utf-8")
    result = invoke("prepare", cfg)  # the same rows twice: word-for-word repeats, dropped and counted
    assert result.exit_code == 0, result.output
    assert "'duplicate': 12" in result.output
    # A cell over csv's default 128 KiB limit is read; an unclosed quote near the end is named, not a traceback.
    (tmp_path / "a.csv").write_text("text,label\n" + "长" * 200_000 + ",economy\n" + rows, encoding="utf-8")
    assert invoke("prepare", cfg).exit_code == 0
    (tmp_path / "a.csv").write_text("text,label\n" + rows + '"未闭合的引号,economy\n', encoding="utf-8")
    fails(invoke("prepare", cfg), f"{tmp_path / 'a.csv'}:14: expected 2 columns", "check the delimiter and quoting")
    # Label Studio values of the wrong type.
    for task, message in (({"data": None, "annotations": [{"result": [{"from_name": "primary", "value": {"choices": ["economy"]}}]}]},
                           'expected "data" an object'),
                          ({"data": {"pid": "p", "text": "t"}, "annotations": [{"result": [{"from_name": "primary", "value": {"choices": [1]}}]}]},
                           "expected choices as label names")):
        (tmp_path / "ls.json").write_text(json.dumps([task]), encoding="utf-8")
        fails(invoke("label", "import", tmp_path / "ls.json", "--format", "labelstudio", "-o", tmp_path / "l.jsonl",
                     "--config", "configs/tiny.yaml"), message)
