"""Run-directory layout, the `latest` pointer, checkpoints to resume from, and writes that never
leave half a file.

A run directory (models/<run_name>/) holds:
  model.safetensors, config.json (id2label, label2id, thresholds), tokenizer files,
  config.yaml (resolved config), data.json (hashes of the splits), train_metrics.json,
  and after `evaluate`: metrics.json, report.html, report.md, README.md (model card), predictions.jsonl.

While it trains, a run lives in models/<run_name>.partial/ (a fixed name, so a second invocation
and every process of a distributed run find the same folder):
  resume.json    what the checkpoints were made from (config, data hashes, processes)
  checkpoints/   transformers.Trainer checkpoints (checkpoint-<step>/)
  run/           the run directory being written; renamed to models/<run_name> when complete
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError, RunDirError

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
RESOLVED_CONFIG = "config.yaml"
DATA_INFO = "data.json"
TRAIN_METRICS = "train_metrics.json"
METRICS = "metrics.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model")  # fast, WordPiece, SentencePiece
REPORT_MD = "report.md"
TEST_PREDICTIONS = "predictions.jsonl"
LATEST = "latest"

PARTIAL_SUFFIX = ".partial"
RESUME_INFO = "resume.json"
CHECKPOINTS = "checkpoints"
STAGED = "run"
# What transformers.Trainer writes into checkpoint-<step>/; trainer_state.json comes last, after the
# weights, optimizer, scheduler and RNG states, so a checkpoint holding it was written completely.
_CHECKPOINT_PREFIX = "checkpoint-"
_TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_FILES = (WEIGHTS, "optimizer.pt", "scheduler.pt")
# The Trainer pickles its arguments into this file in every save; the project deletes it everywhere
# (safetensors only, nothing is unpickled).
PICKLED_ARGS = "training_args.bin"


def check_run_dir(path: str | Path) -> Path:
    """A complete run directory, or a RunDirError saying what is missing."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunDirError(
            f"run directory {run_dir} does not exist; train one with `pipeline train CONFIG` or pass --model models/<run-name>"
        )
    for name in (WEIGHTS, MODEL_CONFIG, RESOLVED_CONFIG):
        if not (run_dir / name).is_file():
            raise RunDirError(f"run directory {run_dir} is incomplete: {name} is missing; retrain with `pipeline train CONFIG`")
    # Without its vocabulary a tokenizer still loads, maps every character to [UNK] and scores nonsense.
    if not any((run_dir / name).is_file() for name in TOKENIZER_FILES):
        raise RunDirError(f"run directory {run_dir} is incomplete: no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                          f"retrain with `pipeline train CONFIG`")
    return run_dir


def point_latest(models_dir: Path, run_dir: Path) -> None:
    """Atomically repoint <models_dir>/latest at run_dir (a relative symlink)."""
    link = models_dir / LATEST
    tmp = models_dir / f".{LATEST}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def partial_dir(final: Path) -> Path:
    """Where the run that will become `final` keeps its checkpoints and stages its files."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def _checkpoint_step(path: Path) -> int:
    return int(path.name[len(_CHECKPOINT_PREFIX):])


def _is_complete_checkpoint(path: Path, processes: int) -> bool:
    try:
        json.loads((path / _TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Every process saves its own RNG state (rng_state_<rank>.pth; rng_state.pth when alone), and not
    # necessarily before the main process writes trainer_state.json.
    rng = ["rng_state.pth"] if processes == 1 else [f"rng_state_{i}.pth" for i in range(processes)]
    if not all((path / name).is_file() for name in (*_CHECKPOINT_FILES, *rng)):
        return False
    # The Trainer pickles its arguments into training_args.bin before trainer_state.json; train's on_save
    # callback deletes it once the checkpoint is whole. Still there: killed before that last step.
    if (path / PICKLED_ARGS).exists():
        return False
    from safetensors import safe_open

    try:  # reads the header only: a truncated or foreign weights file fails here, not in the middle of resuming
        with safe_open(str(path / WEIGHTS), framework="pt"):
            pass
    except Exception:  # safetensors raises its own error types for malformed files
        return False
    return True


def no_pickled_args():
    """A Trainer callback: the Trainer writes training_args.bin (a pickle) into each checkpoint and never
    reads it back (the optimizer, scheduler and RNG states it reads on resume are loaded with
    weights_only=True). Deleting it is also the last step of a save, which _is_complete_checkpoint checks."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class NoPickledArgs(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
                (folder / PICKLED_ARGS).unlink(missing_ok=True)

    return NoPickledArgs()


def checkpoints(folder: Path) -> list[Path]:
    """checkpoint-<step> folders, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_CHECKPOINT_PREFIX)
             and p.name[len(_CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=_checkpoint_step)


def last_checkpoint(folder: Path, processes: int = 1) -> Path | None:
    """The newest checkpoint that was written completely (a kill -9 can leave the newest one half-written)."""
    complete = [p for p in checkpoints(folder) if _is_complete_checkpoint(p, processes)]
    return complete[-1] if complete else None


def discard_incomplete_checkpoints(folder: Path, processes: int = 1) -> list[Path]:
    """Remove half-written checkpoints, so that the Trainer neither resumes from one nor counts it when
    rotating old checkpoints away. Returns what was removed."""
    removed = [p for p in checkpoints(folder) if not _is_complete_checkpoint(p, processes)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_replaceable(final: Path, marker: str | None) -> None:
    """`final` may be replaced by a new version of itself: it does not exist, is empty, or holds `marker`
    (a file only this kind of folder has). A folder path mistyped as `.` or `data` is never deleted."""
    if final.is_symlink():
        raise PipelineError(f"{final} is a link; expected a folder to write into: choose another name")
    if not final.exists():
        return
    if not final.is_dir():
        raise PipelineError(f"{final} exists and is a file; expected a folder to write into: move it or choose another name")
    if marker is not None and any(final.iterdir()) and not (final / marker).exists():
        raise PipelineError(
            f"{final} exists and does not look like an earlier output of this stage (no {marker}); "
            f"it would be replaced: choose another folder or remove it yourself"
        )


def publish_dir(staged: Path, final: Path) -> None:
    """Put the finished folder `staged` in place of `final`. The old version is renamed aside before the new
    one is renamed in, so `final` (and a `latest` link to it) is never a half-deleted folder."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_error(final: Path, e: OSError) -> PipelineError:
    # Name what the user asked for, not the temporary name the error happened on.
    return PipelineError(f"could not write {final}: {e.strerror or e}; free space or fix permissions, or choose another output")


@contextmanager
def atomic_dir(final: Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final`, on failure it is removed.
    `marker`: a file every earlier version of `final` holds (see check_replaceable).
    One process only: distributed training stages in partial_dir() instead."""
    check_replaceable(final, marker)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as e:
        raise _write_error(final, e) from None
    try:
        yield tmp
        publish_dir(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(final, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `final` for writing; rename over `final` only if the block succeeds.
    A device, pipe or link (/dev/stdout, /dev/full, a FIFO) is written through: renaming a file over it
    would replace the device or link itself."""
    final = Path(final)
    encoding = None if "b" in mode else "utf-8"
    if final.is_dir():
        raise PipelineError(f"output {final} is a folder; expected a file name, e.g. {final / 'predictions.jsonl'}")
    if final.is_symlink() or (final.exists() and not final.is_file()):
        try:
            with open(final, mode, encoding=encoding) as handle:
                yield handle
        except OSError as e:
            raise _write_error(final, e) from None
        return
    if not final.parent.is_dir():
        raise PipelineError(f"output folder {final.parent} does not exist; create it or choose another --output")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    except OSError as e:
        raise _write_error(final, e) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.chmod(0o666 & ~umask())  # mkstemp makes it private; the result is an ordinary file
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(final, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; rerun the stage that writes it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is corrupted ({e}); rerun the stage that writes it") from None
