"""An interrupted `pipeline train` (kill -9) continues from its last complete checkpoint and ends where
an uninterrupted run ends; checkpoints that cannot be resumed are refused or skipped."""

import json
import os
import shutil
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


# tiny: 2 steps an epoch. 4 epochs with patience 2 and a validation macro-F1 that does not improve:
# early stopping's count matters. Checkpoints at each epoch end and at step 5, in the middle of epoch 3.
RUN = ("--set", "train.epochs=4", "--set", "train.early_stopping_patience=2")


def _kill_after_checkpoint(run_name: str, step: int) -> Path:
    """`pipeline train` in a subprocess, killed with SIGKILL as soon as a complete checkpoint of `step`
    or later exists; returns that checkpoint."""
    command = [sys.executable, "-m", "pipeline", "train", "configs/tiny.yaml", "--set", f"run_name={run_name}", *RUN,
               "--set", f"train.save_steps={step}"]
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = Path(f"models/{run_name}.partial/checkpoints")
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        last = runs.last_checkpoint(checkpoints)
        if last is not None and int(last.name.split("-")[1]) >= step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    return runs.last_checkpoint(checkpoints)


def test_killed_run_resumes_to_the_same_model(project):
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    whole = _one_thread("train", "configs/tiny.yaml", "--set", "run_name=whole", *RUN)
    assert whole.exit_code == 0, whole.output

    checkpoint = _kill_after_checkpoint("resumed", 5)
    assert not Path("models/resumed").exists()
    assert os.readlink("models/latest") == "whole", "latest only ever points at a complete run"
    assert not (checkpoint / "training_args.bin").exists(), "no pickles in checkpoints"
    # A checkpoint cut short by the kill: skipped and removed, never resumed from.
    half = checkpoint.parent / "checkpoint-99"
    half.mkdir()
    (half / runs.WEIGHTS).write_bytes(b"half a file")
    # Killed after the Trainer wrote everything but before its pickled arguments were deleted: not resumed from.
    pickled = checkpoint.parent / "checkpoint-98"
    shutil.copytree(checkpoint, pickled)
    (pickled / "training_args.bin").write_bytes(b"a pickle")
    assert runs.last_checkpoint(checkpoint.parent) == checkpoint

    changed = invoke("train", "configs/tiny.yaml", "--set", "run_name=resumed", *RUN, "--set", "train.learning_rate=0.002",
                     "--resume")
    assert changed.exit_code == 2
    assert "--resume: the checkpoints in models/resumed.partial were made from a different config or data " \
           "(train.learning_rate: 0.001 then, 0.002 now)" in changed.output

    resumed = _one_thread("train", "configs/tiny.yaml", "--set", "run_name=resumed", *RUN, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"{half} was not written completely" in resumed.output
    assert f"{pickled} was not written completely" in resumed.output
    step = int(checkpoint.name.split("-")[1])
    assert f"resuming from {checkpoint} (step {step})" in resumed.output
    assert os.readlink("models/latest") == "resumed"
    assert not Path("models/resumed.partial").exists()

    a, b = (json.loads(Path(f"models/{r}/train_metrics.json").read_text()) for r in ("whole", "resumed"))
    assert (a["resumed_from_step"], b["resumed_from_step"]) == (None, step)
    for key in ("epochs_run", "best_validation_macro_f1", "validation_history", "thresholds"):
        assert a[key] == b[key], key
    # Model, optimizer, scheduler, RNG states, the data sampler's position and early stopping's count are
    # all restored: the same float operations in the same order, so the same weights (1e-6: another BLAS).
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
