"""The README's example runs as printed, and its set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")


def test_python_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102
    out = capsys.readouterr().out
    assert "7.0" in out and "process() pipeline" in out


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert "pip install -e . && onex demo" in commands
    test_command = "pip install -e '.[test]' && python -m pytest"
    assert test_command in commands
    assert test_command in (ROOT / ".ci" / "run").read_text("utf-8")


def test_ci_checks_the_wheel_and_bounds_each_benchmark() -> None:
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    assert "pip wheel" in ci and "onex\" validate --installed" in ci and "onex\" list" in ci
    assert "timeout 60 python \"$bench\" --smoke" in ci and "timeout 300" not in ci
    assert "-m \"not slow\"" in README  # how to deselect the slow tests locally
    pytest_options = (ROOT / "pyproject.toml").read_text("utf-8")
    assert "--durations=25" in pytest_options and "--strict-markers" in pytest_options
