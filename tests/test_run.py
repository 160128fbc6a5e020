"""The tiny end-to-end run: the files a user gets and the numbers in them."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import invoke

THEMES = ["economy", "renewal", "culture", "livelihood", "reform", "openness"]


def test_run_writes_a_complete_run_directory(tiny_run):
    root, result = tiny_run
    run = root / "models" / "tiny"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "config.yaml",
                 "data.json", "train_metrics.json", "metrics.json", "report.md", "report.html", "README.md",
                 "predictions.jsonl"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    assert not list(run.glob("*.bin")), "weights are safetensors only"
    assert os.readlink(root / "models" / "latest") == "tiny"
    assert "report: models/tiny/report.html" in result.output
    stages = json.loads((run / "stages.json").read_text(encoding="utf-8"))
    assert list(stages["seconds"]) == ["prepare", "pretrain", "train", "evaluate"]
    assert stages["total_seconds"] == pytest.approx(sum(stages["seconds"].values()), abs=0.2)
    assert "stage seconds: prepare " in result.output
    assert json.loads((run / "train_metrics.json").read_text(encoding="utf-8"))["precision"] in ("float32", "bfloat16")


def test_label_maps_and_thresholds_travel_in_config_json(tiny_run):
    root, _ = tiny_run
    config = json.loads((root / "models/tiny/config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(6)] == THEMES
    assert config["label2id"]["openness"] == 5
    assert config["problem_type"] == "multi_label_classification"
    assert set(config["theme_thresholds"]) == set(THEMES)
    assert all(0 < t < 1 for t in config["theme_thresholds"].values())
    weights = load_file(root / "models/tiny/model.safetensors")
    assert weights["classifier.weight"].shape == (6, 32)


def test_long_paragraphs_are_trained_on_every_window(tiny_run):
    # configs/tiny.yaml has 64-token windows; every seed paragraph (78-285 characters) is longer.
    from pipeline.data import load_split
    from pipeline.model import encode_windows, load_run

    root, _ = tiny_run
    run = root / "models/tiny"
    t = json.loads((run / "train_metrics.json").read_text())
    train_rows, val_rows = (load_split(root / "data/prepared-tiny", s) for s in ("train", "validation"))
    tokenizer, model = load_run(run)
    assert t["train_windows"] == len(encode_windows(tokenizer, [r["text"] for r in train_rows])[0]) > len(train_rows)
    assert t["validation_windows"] == len(encode_windows(tokenizer, [r["text"] for r in val_rows])[0]) > len(val_rows)
    assert t["train_paragraphs_over_one_window"] == len(train_rows)


def test_resolved_config_and_data_hashes_saved(tiny_run):
    root, _ = tiny_run
    saved = yaml.safe_load((root / "models/tiny/config.yaml").read_text(encoding="utf-8"))
    assert saved["seed"] == 13 and saved["model"]["hidden_size"] == 32
    assert [t["id"] for t in saved["themes"]] == THEMES, "themes are inlined, the run describes itself"
    data = json.loads((root / "models/tiny/data.json").read_text())
    assert set(data["sha256"]) == {"train", "validation", "test"}
    assert all(len(h) == 64 for h in data["sha256"].values())


def test_metrics_json_is_consistent_with_the_test_split(tiny_run):
    root, _ = tiny_run
    m = json.loads((root / "models/tiny/metrics.json").read_text())
    test_rows = [json.loads(l) for l in (root / "data/prepared-tiny/test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert m["n"] == len(test_rows)
    per = m["primary"]["per_class"]
    assert list(per) == THEMES
    assert sum(c["support"] for c in per.values()) == m["n_with_theme"]
    matrix = m["primary"]["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == m["n_with_theme"]
    correct = sum(matrix[i][i] for i in range(6))
    assert abs(m["primary"]["accuracy"] - correct / m["n_with_theme"]) < 1e-9
    for key in ("accuracy", "macro_f1", "micro_f1"):
        assert 0 <= m["primary"][key] <= 1
    assert "tfidf_char_lr" in m["baselines"] and "majority" in m["baselines"]
    report = (root / "models/tiny/report.md").read_text(encoding="utf-8")
    assert f"| primary macro-F1 | {m['primary']['macro_f1']:.3f} |" in report
    assert "## Confusion matrix" in report


def test_test_predictions_carry_gold_and_scores(tiny_run):
    root, _ = tiny_run
    lines = [json.loads(l) for l in (root / "models/tiny/predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines and all(set(l["scores"]) == set(THEMES) for l in lines)
    assert all(l["scores"][l["label"]] == max(l["scores"].values()) for l in lines)


def test_window_overlap_changes_training_windows_only(project):
    # train.window_overlap 0: each token of a long paragraph is trained on once per epoch; validation
    # keeps the overlap evaluate and predict score with, so thresholds are tuned on what inference sees.
    from pipeline.data import load_split
    from pipeline.model import SCORING_OVERLAP, encode_windows, load_run

    result = invoke("run", "configs/tiny.yaml", "--set", "train.window_overlap=0", "--set", "run_name=no-overlap")
    assert result.exit_code == 0, result.output
    assert "split with 0 tokens of overlap" in result.output
    run = Path("models/no-overlap")
    t = json.loads((run / "train_metrics.json").read_text())
    train_rows, val_rows = (load_split(Path("data/prepared-tiny"), s) for s in ("train", "validation"))
    tokenizer, _ = load_run(run)
    train_texts = [r["text"] for r in train_rows]
    assert t["train_windows"] == len(encode_windows(tokenizer, train_texts, stride=0)[0])
    assert t["train_windows"] < len(encode_windows(tokenizer, train_texts, stride=SCORING_OVERLAP)[0])
    assert t["validation_windows"] == len(encode_windows(tokenizer, [r["text"] for r in val_rows])[0])
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["window_overlap"] == 0


def test_bfloat16_training_runs_and_is_recorded(project):
    # What train.precision auto picks on AMX CPUs and recent GPUs (emulated, slower, elsewhere).
    result = invoke("run", "configs/tiny.yaml", "--set", "train.precision=bfloat16", "--set", "run_name=bf16")
    assert result.exit_code == 0, result.output
    run = Path("models/bf16")
    assert json.loads((run / "train_metrics.json").read_text(encoding="utf-8"))["precision"] == "bfloat16"
    assert load_file(run / "model.safetensors")["classifier.weight"].dtype == torch.float32  # weights stay float32
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))["n"] > 0


def test_length_grouped_batches_pad_less_and_replay_by_seed_and_epoch():
    # train.group_by_length: windows of similar length share a batch. The order is drawn from the seed and
    # the epoch alone, so every process of a data-parallel run, and a resumed run, sees the same one.
    from pipeline.train import _length_grouped_sampler

    lengths = [3 + (i * 37) % 126 for i in range(2000)]

    def order(seed, epoch):
        sampler, _ = _length_grouped_sampler(lengths, 32, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def padded(indices):
        return sum(max(lengths[i] for i in indices[j:j + 32]) * len(indices[j:j + 32]) for j in range(0, len(indices), 32))

    first = order(42, 0)
    assert sorted(first) == list(range(2000))
    assert first == order(42, 0) and first != order(42, 1) and first != order(7, 0)
    shuffled = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(first) < 0.8 * padded(shuffled)
    assert padded(first) < 1.1 * sum(lengths)  # random batches: about 1.9 times


@pytest.mark.parametrize("processes", [1, 2])
def test_length_grouped_order_survives_a_mid_epoch_resume(processes):
    # Resuming in epoch 2 after 3 batches: accelerate wraps the loader once more to skip them, and its
    # set_epoch no longer reaches the sampler with 2 processes; the Trainer's epoch-begin callback does.
    from types import SimpleNamespace

    from accelerate import skip_first_batches
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from pipeline.train import _length_grouped_sampler

    lengths = [3 + (i * 37) % 126 for i in range(400)]

    def batches(epoch, process, skip, state_epoch):
        sampler, callback = _length_grouped_sampler(lengths, 8, seed=42)
        loader = prepare_data_loader(DataLoader(list(range(400)), batch_size=8, sampler=sampler), put_on_device=False,
                                     num_processes=processes, process_index=process)
        if skip:
            loader = skip_first_batches(loader, skip)
        callback.on_epoch_begin(None, SimpleNamespace(epoch=state_epoch), None)
        loader.set_epoch(epoch)
        return [b.tolist() for b in loader]

    for process in range(processes):
        whole = batches(2, process, 0, 2.0)
        assert batches(2, process, 3, 2.3) == whole[3:]
        assert whole != batches(0, process, 0, 0.0)
