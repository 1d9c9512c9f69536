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
