"""ONNX and int8 exports of the tiny run: the command, the folder it writes, parity with the float model."""

import json
import shutil

import pytest

from conftest import invoke

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SEED = "data/raw/000_73cf914e94b4181e.txt"


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
    """A copy of the tiny run, so that exports into it leave the shared run untouched."""
    root, _ = tiny_run
    dest = tmp_path_factory.mktemp("export") / "tiny"
    shutil.copytree(root / "models/tiny", dest)
    return root, dest


def test_onnx_export_writes_a_folder_and_reports_parity(run_copy, tmp_path):
    root, run = run_copy
    result = invoke("export", run, "--format", "onnx", "--check", root / SEED)
    assert result.exit_code == 0, result.output
    folder = run / "export-onnx"
    assert f"exported: {folder}" in result.output
    assert "parity with the float model on 18 records: identical top theme 100.00%" in result.output
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "config.json", "config.yaml", "export.json", "tokenizer.json"}
    info = json.loads((folder / "export.json").read_text())
    assert info["format"] == "onnx" and info["quantize"] is None
    assert info["parity"]["identical_top"] == 1.0 and info["parity"]["max_score_difference"] <= 1e-4

    # predict runs the export, by its folder or by --engine onnx on the run, and agrees with the float model.
    float_out, onnx_out, engine_out = tmp_path / "float.jsonl", tmp_path / "onnx.jsonl", tmp_path / "engine.jsonl"
    assert invoke("predict", root / SEED, "--model", run, "-o", float_out, "--dtype", "float32").exit_code == 0
    result = invoke("predict", root / SEED, "--model", folder, "-o", onnx_out)
    assert result.exit_code == 0 and ", onnx," in result.output, result.output
    assert invoke("predict", root / SEED, "--model", run, "--engine", "onnx", "-o", engine_out).exit_code == 0
    a, b = _records(float_out), _records(onnx_out)
    assert [r["label"] for r in a] == [r["label"] for r in b] == [r["label"] for r in _records(engine_out)]
    assert max(abs(x["scores"][t] - y["scores"][t]) for x, y in zip(a, b) for t in x["scores"]) <= 2e-4
    assert [r["windows"] for r in a] == [r["windows"] for r in b]


def test_onnx_int8_export_parity(run_copy, tmp_path):
    # Quantises the float export of the test above when it ran (a fresh export-onnx is reused).
    from pipeline.export import export

    root, run = run_copy
    result = export(run, "onnx", "int8", tmp_path / "onnx-int8", check=[str(root / SEED)])
    assert result["parity"]["records"] == 18
    # The tiny model's top two scores are within about 1e-3 of each other, and dynamic quantisation
    # scales each batch by its range: one flip in 18 is noise there; the score bound is the real check.
    assert result["parity"]["identical_top"] >= 0.9 and result["parity"]["max_score_difference"] < 0.02
    assert json.loads((tmp_path / "onnx-int8" / "export.json").read_text())["quantize"] == "int8"


def test_torch_int8_export_parity_and_predict(run_copy, tmp_path):
    root, run = run_copy
    out = tmp_path / "torch-int8"
    result = invoke("export", run, "--format", "torch", "--quantize", "int8", "-o", out, "--check", root / SEED)
    assert result.exit_code == 0, result.output
    parity = json.loads((out / "export.json").read_text())["parity"]
    assert parity["identical_top"] >= 0.95 and parity["max_score_difference"] < 0.02
    result = invoke("predict", root / SEED, "--model", out, "-o", tmp_path / "p.jsonl")
    assert result.exit_code == 0 and "torch-int8" in result.output


def test_export_and_engine_mistakes_are_one_line(run_copy, tmp_path):
    root, run = run_copy
    fresh = tmp_path / "fresh"
    shutil.copytree(root / "models/tiny", fresh)
    result = invoke("predict", root / SEED, "--model", fresh, "--engine", "onnx")
    assert result.exit_code == 2
    assert f"has no ONNX export at {fresh}/export-onnx; create it with `pipeline export {fresh} --format onnx`" in result.output
    result = invoke("export", fresh, "--format", "tflite")
    assert result.exit_code == 2 and "--format expects one of onnx, torch, found 'tflite'" in result.output
    result = invoke("predict", root / SEED, "--model", fresh, "--quantize", "int4")
    assert result.exit_code == 2 and "--quantize expects int8, found 'int4'" in result.output
