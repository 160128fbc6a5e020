"""Shared fixtures: a scratch copy of the project files, and one tiny end-to-end run reused by tests."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]

# The tests' models are tiny (hidden 32): one thread does their matrix work with no pool to wake,
# and on a 2-core machine shared with other jobs it runs the suite about 3x faster than two.
import torch  # noqa: E402

torch.set_num_threads(1)


def copy_project(dest: Path) -> Path:
    shutil.copytree(ROOT / "configs", dest / "configs")
    shutil.copytree(ROOT / "data" / "raw", dest / "data" / "raw")
    (dest / "data" / "labels").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "labels" / "seed.jsonl", dest / "data" / "labels" / "seed.jsonl")
    (dest / "models").mkdir()
    return dest


def invoke(*args: str, input: str | None = None):
    """Run the real CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project folder as the working directory."""
    copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`pipeline run configs/tiny.yaml` once, in a scratch project; yields its folder."""
    with working_dir(copy_project(tmp_path_factory.mktemp("tiny"))) as root:
        result = invoke("run", "configs/tiny.yaml")
        assert result.exit_code == 0, result.output
        yield root, result
