"""`pipeline train` under torchrun: two CPU processes (gloo) train the model one process trains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from conftest import invoke


def _setup(root: Path) -> None:
    """Splits whose 16 training paragraphs make whole batches of 8 (4 per process), and a base without
    dropout, so that 1 and 2 processes compute the same thing (see the tolerance below)."""
    from transformers import BertForMaskedLM

    from pipeline.config import ModelConfig
    from pipeline.model import build_tokenizer, small_bert_config

    rows = [json.loads(line) for line in Path("data/labels/seed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 18
    data = root / "data/prepared-dist"
    data.mkdir(parents=True)
    # Each text fits one 64-token window: 16 training windows make two whole global batches of 8, which
    # two processes split 4 + 4 (a ragged last batch would be split unevenly and average differently).
    rows = [{**r, "text": r["text"][:60]} for r in rows]
    for name, part in (("train", rows[:16]), ("validation", rows[16:]), ("test", rows[16:])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    size = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_length=64)
    tokenizer = build_tokenizer([r["text"] for r in rows], 64)
    torch.manual_seed(0)
    base = BertForMaskedLM(small_bert_config(size, len(tokenizer), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    base.save_pretrained(root / "models/base")
    tokenizer.save_pretrained(root / "models/base")
    cfg = yaml.safe_load(Path("configs/tiny.yaml").read_text(encoding="utf-8"))
    cfg["model"]["name_or_path"] = "models/base"
    cfg["data"]["output_dir"] = "data/prepared-dist"
    cfg["train"].update(batch_size=8, epochs=2)
    Path("configs/dist.yaml").write_text("# pipeline train configs/dist.yaml\n" + yaml.safe_dump(cfg), encoding="utf-8")


def test_two_processes_train_the_same_model_as_one(project):
    _setup(project)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1); 3x faster on a busy 2-core machine
    try:
        one = invoke("train", "configs/dist.yaml", "--set", "run_name=one")
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipeline", "train", "configs/dist.yaml", "--set", "run_name=two"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "Traceback" not in two.stderr

    # One process wrote one complete run directory and repointed latest; nothing else is left behind.
    assert sorted(p.name for p in Path("models").iterdir()) == ["base", "latest", "one", "two"]
    assert os.readlink("models/latest") == "two"
    assert not list(Path("models/two").glob("*.bin"))

    a, b = (json.loads(Path(f"models/{r}/train_metrics.json").read_text()) for r in ("one", "two"))
    assert (a["processes"], b["processes"]) == (1, 2)
    # Validation ran once over the whole split (predictions gathered from both processes, in order).
    assert b["validation_history"] == a["validation_history"] and len(b["validation_history"]) == 2
    assert b["thresholds"] == a["thresholds"]
    # The global batch of 8 is split 4 + 4 and the two gradients averaged: the same step as one process
    # takes, up to float rounding (sums in another order, half-batches padded to other lengths), ~1e-7
    # relative. Measured: weights differ by at most ~6e-8 after the 4 steps. 1e-5 is far above that and
    # far below what training moves a weight (~1e-3: 4 Adam steps at lr 1e-3), so a wrong batch split,
    # data order or initialisation fails it. Adam hides a gradient scaled by the number of processes
    # (transformers' average_tokens_across_devices does that to our batch-mean losses); the loss shows it.
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    wa, wb = load_file("models/one/model.safetensors"), load_file("models/two/model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    start = load_file("models/base/model.safetensors")
    assert max((wa[k] - start[k]).abs().max().item() for k in start if k in wa) > 5e-4, "training moved the weights"
