"""Run-directory layout, the `latest` pointer, and writes that never leave half a file.

A run directory (models/<run_name>/) holds:
  model.safetensors, config.json (id2label, label2id, thresholds), tokenizer files,
  config.yaml (resolved config), data.json (hashes of the splits), train_metrics.json,
  and after `evaluate`: metrics.json, report.md, predictions.jsonl.
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
REPORT_MD = "report.md"
TEST_PREDICTIONS = "predictions.jsonl"
LATEST = "latest"


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
    return run_dir


def point_latest(models_dir: Path, run_dir: Path) -> None:
    """Atomically repoint <models_dir>/latest at run_dir (a relative symlink)."""
    link = models_dir / LATEST
    tmp = models_dir / f".{LATEST}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final`, on failure it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `final` for writing; rename over `final` only if the block succeeds."""
    if not final.parent.is_dir():
        raise PipelineError(f"output folder {final.parent} does not exist; create it or choose another --output")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PipelineError(f"could not write {final}: {e.strerror or e}; free space or choose another --output") from None
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
