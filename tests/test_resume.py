"""An interrupted `pipeline train` (kill -9) continues from its last complete checkpoint and ends where
an uninterrupted run ends; checkpoints that cannot be resumed are refused or skipped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import invoke
from pipeline import runs


def _one_thread(*args):
    """The CLI in-process with one thread, as the killed subprocess runs (OMP_NUM_THREADS=1), so that
    float sums are done in the same order and the runs are comparable bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return invoke(*args)
    finally:
        torch.set_num_threads(threads)


def _kill_after_first_checkpoint(run_name: str) -> None:
    """`pipeline train` in a subprocess, killed with SIGKILL as soon as a complete checkpoint exists."""
    command = [sys.executable, "-m", "pipeline", "train", "configs/tiny.yaml", "--set", f"run_name={run_name}",
               "--set", "train.save_steps=1"]  # tiny: 2 steps an epoch; step 1 is checkpointed mid-epoch
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = Path(f"models/{run_name}.partial/checkpoints")
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if runs.last_checkpoint(checkpoints) is not None:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]


def test_killed_run_resumes_to_the_same_model(project):
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    whole = _one_thread("train", "configs/tiny.yaml", "--set", "run_name=whole")
    assert whole.exit_code == 0, whole.output

    _kill_after_first_checkpoint("resumed")
    assert not Path("models/resumed").exists()
    assert os.readlink("models/latest") == "whole", "latest only ever points at a complete run"
    checkpoint = runs.last_checkpoint(Path("models/resumed.partial/checkpoints"))
    assert checkpoint.name == "checkpoint-1"
    assert not (checkpoint / "training_args.bin").exists(), "no pickles in checkpoints"
    # A checkpoint cut short by the kill: skipped and removed, never resumed from.
    (checkpoint.parent / "checkpoint-2").mkdir(exist_ok=True)
    (checkpoint.parent / "checkpoint-2" / runs.WEIGHTS).write_bytes(b"half a file")

    changed = invoke("train", "configs/tiny.yaml", "--set", "run_name=resumed", "--set", "train.learning_rate=0.002", "--resume")
    assert changed.exit_code == 2
    assert "--resume: the checkpoints in models/resumed.partial were made from a different config or data " \
           "(train.learning_rate: 0.001 then, 0.002 now)" in changed.output

    resumed = _one_thread("train", "configs/tiny.yaml", "--set", "run_name=resumed", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "models/resumed.partial/checkpoints/checkpoint-2 was not written completely" in resumed.output
    assert "resuming from models/resumed.partial/checkpoints/checkpoint-1 (step 1)" in resumed.output
    assert os.readlink("models/latest") == "resumed"
    assert not Path("models/resumed.partial").exists()

    a, b = (json.loads(Path(f"models/{r}/train_metrics.json").read_text()) for r in ("whole", "resumed"))
    assert (a["resumed_from_step"], b["resumed_from_step"]) == (None, 1)
    for key in ("epochs_run", "best_validation_macro_f1", "validation_history", "thresholds"):
        assert a[key] == b[key], key
    # Model, optimizer, scheduler, RNG states and the data sampler's position are all restored: the
    # same float operations in the same order, so the same weights (1e-6 allows for a different BLAS).
    wa, wb = load_file("models/whole/model.safetensors"), load_file("models/resumed/model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_resume_without_a_checkpoint_is_one_line(project):
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    result = invoke("train", "configs/tiny.yaml", "--resume")
    assert result.exit_code == 2
    assert "error: --resume: no complete checkpoint in models/tiny.partial/checkpoints; " \
           "run without --resume to start training" in result.output
    assert "Traceback" not in result.output and not Path("models/tiny").exists()


def test_last_checkpoint_needs_every_file_the_trainer_reads(tmp_path):
    def checkpoint(step, files):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"{}")
        return folder

    from safetensors.torch import save_file

    complete = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
    for step, rng in ((5, ["rng_state_0.pth", "rng_state_1.pth"]), (10, ["rng_state_0.pth"]), (15, [])):
        save_file({"w": torch.zeros(1)}, checkpoint(step, [*complete, *rng]) / runs.WEIGHTS)
    (tmp_path / "checkpoint-20").mkdir()
    assert runs.last_checkpoint(tmp_path, processes=2).name == "checkpoint-5"  # 10: process 1's RNG state missing
    assert [p.name for p in runs.discard_incomplete_checkpoints(tmp_path, processes=2)] == \
           ["checkpoint-10", "checkpoint-15", "checkpoint-20"]
    assert [p.name for p in runs.checkpoints(tmp_path)] == ["checkpoint-5"]
