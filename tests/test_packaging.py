"""The wheel ships what the editable install shows: every capability package and its contracts.

An editable install reads the source tree, so a package or a contract that ``pyproject.toml``
forgets is only missed once a user installs the wheel. This builds the wheel and compares it
with the tree (``.ci/run`` also installs it in a fresh venv and runs ``onex list`` and
``onex validate --installed``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _expected() -> set[str]:
    """Every file the wheel must hold for the capabilities folder, under its installed name."""
    caps = ROOT / "capabilities"
    wanted = set()
    for path in caps.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        if path.suffix in {".py", ".yaml", ".json"}:
            wanted.add("onex_compose/capabilities/" + path.relative_to(caps).as_posix())
    return wanted


# build artefacts and caches: setuptools reuses ./build/lib, so a file deleted from the tree
# would still reach a wheel built in place (.ci/run builds from a clean copy too)
IGNORE = shutil.ignore_patterns("build", "dist", ".git", "*.egg-info", "__pycache__", ".venv",
                                ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_ships_every_capability_package_and_contract(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("onex_compose-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _expected() - names
    assert not missing, f"the wheel lacks {sorted(missing)}"
    stale = {n for n in names if n.startswith("onex_compose/capabilities/")} - _expected()
    assert not stale, f"the wheel holds files the tree does not have: {sorted(stale)}"
    assert "onex_compose/py.typed" in names
    assert not any(n.startswith("capabilities/") for n in names)  # never a top-level package
    for package in {Path(n).parent for n in names if n.endswith("/__init__.py")}:
        contracts = [n for n in names if n.startswith(f"{package.as_posix()}/mixin_")]
        if package.parent.as_posix() == "onex_compose/capabilities":  # a capability package
            assert contracts, f"capability package {package} ships no mixin_<name>.yaml"
