"""Every command has help and is documented in the README; python -m pipeline works."""

import subprocess
import sys

import pytest

from conftest import ROOT, invoke

COMMANDS = ["prepare", "pretrain", "train", "evaluate", "predict", "run", "cv", "compare", "report-screenshot", "export"]


@pytest.mark.parametrize("command", COMMANDS)
def test_command_has_help_and_readme_section(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output
    assert f"pipeline {command}" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "prepare" in out.stdout
