"""The typing of the public API: mypy (strict) over ``typing_tests/``, run in a subprocess.

``pass_*.py`` files must type-check cleanly (and run: the patterns they show are real);
``fail_*.py`` files must produce exactly the errors marked ``# E: <message>`` on their lines.

mypy cannot follow the editable install's import hook (it maps ``onex_compose.capabilities`` to
the top-level ``capabilities/`` folder), so the check runs against a link tree with the installed
layout (``onex_compose/`` plus ``onex_compose/capabilities/``) on ``MYPYPATH``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "typing_tests"
PASS_FILES = sorted(TYPING.glob("pass_*.py"))
FAIL_FILES = sorted(TYPING.glob("fail_*.py"))
_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<msg>.*?)(  \[[a-z-]+\])?$")
_MARK = re.compile(r"#\s*E:\s*(.+?)(?=\s+#\s*E:|$)")

pytest.importorskip("mypy", reason="mypy is part of the test extras")


def _link_tree(root: Path) -> Path:
    site = root / "site"
    pkg = site / "onex_compose"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "onex_compose").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "capabilities").symlink_to(ROOT / "capabilities")
    return site


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str]]]:
    """Run mypy once over every typing_tests file; errors by file name."""
    work = tmp_path_factory.mktemp("mypy")
    site = _link_tree(work)
    env = dict(os.environ, MYPYPATH=str(site))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
           "--no-pretty", "--no-error-summary", "--show-error-codes",
           "--cache-dir", str(work / "cache"), *map(str, PASS_FILES + FAIL_FILES)]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode not in (0, 1) or proc.stderr.strip():
        pytest.fail(f"mypy crashed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    errors: dict[str, list[tuple[int, str]]] = {}
    for line in proc.stdout.splitlines():
        match = _LINE.match(line)
        if match:
            name = Path(match["file"]).name
            errors.setdefault(name, []).append((int(match["line"]), match["msg"]))
        elif ": error:" in line:
            pytest.fail(f"unparsed mypy output: {line}")
    return errors


def test_there_are_typing_tests() -> None:
    assert PASS_FILES and FAIL_FILES


@pytest.mark.slow  # runs mypy (about 10 s, once per module)
@pytest.mark.parametrize("path", PASS_FILES, ids=lambda p: p.name)
def test_pass_file_type_checks_cleanly(path: Path,
                                       mypy_errors: dict[str, list[tuple[int, str]]]) -> None:
    assert mypy_errors.get(path.name, []) == []


@pytest.mark.slow  # runs mypy
@pytest.mark.parametrize("path", FAIL_FILES, ids=lambda p: p.name)
def test_fail_file_reports_exactly_the_marked_errors(
        path: Path, mypy_errors: dict[str, list[tuple[int, str]]]) -> None:
    expected: list[tuple[int, str]] = []
    for number, text in enumerate(path.read_text("utf-8").splitlines(), 1):
        expected += [(number, m.strip()) for m in _MARK.findall(text)]
    assert expected, f"{path.name} has no '# E:' markers"
    assert sorted(mypy_errors.get(path.name, [])) == sorted(expected)


@pytest.mark.parametrize("path", PASS_FILES, ids=lambda p: p.name)
def test_pass_file_runs(path: Path) -> None:
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=TYPING)
    assert proc.returncode == 0, proc.stderr


def test_package_ships_py_typed() -> None:
    assert (ROOT / "onex_compose" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    assert re.search(r'"onex_compose"\s*=\s*\[[^\]]*"py\.typed"', pyproject)
