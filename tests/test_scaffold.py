"""``onex new capability``: the scaffold validates and its own tests pass without edits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onex_compose import ConfigurationError
from onex_compose._cli import main
from onex_compose._scaffold import scaffold_capability
from onex_compose._validate import validate_file

REPO = Path(__file__).resolve().parent.parent


def _pytest(folder: Path, test_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=folder, capture_output=True, text=True, timeout=120, check=False, env=env)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scaffold_validates_and_its_tests_pass(tmp_path):
    target = tmp_path / "audit"
    assert main(["new", "capability", "audit_trail", "--target", str(target)]) == 0
    contract = target / "mixin_audit_trail.yaml"
    report = validate_file(contract)
    assert report.ok and not report.warnings, report.render_text()
    assert main(["validate", "--strict", str(target)]) == 0
    proc = _pytest(tmp_path, target / "test_audit_trail.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scaffold_inside_a_package_and_for_effect_nodes(tmp_path):
    package = tmp_path / "myplugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    paths = scaffold_capability("outbox", package, node_types=["EFFECT"])
    data = yaml.safe_load(paths[0].read_text())
    assert data["composition"]["module"] == "myplugins.outbox"
    assert data["applicable_node_types"] == ["EFFECT"]
    # the generated test composes on a base the capability applies to
    assert "compose(NodeEffect, [\"outbox\"]" in paths[2].read_text()
    proc = _pytest(tmp_path, paths[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scaffold_with_a_stdlib_name_does_not_shadow_it(tmp_path):
    paths = scaffold_capability("json", tmp_path / "x")
    assert paths[1].name == "json_capability.py"
    assert yaml.safe_load(paths[0].read_text())["composition"]["module"] == "json_capability"
    proc = _pytest(tmp_path, paths[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scaffold_files_and_contents(tmp_path):
    paths = scaffold_capability("rate_card", tmp_path)
    assert [p.name for p in paths] == ["mixin_rate_card.yaml", "rate_card.py",
                                       "test_rate_card.py"]
    data = yaml.safe_load(paths[0].read_text())
    assert data["mixin_name"] == "mixin_rate_card"
    assert data["rate_card_config"] == {"enabled": True, "label": "rate_card"}
    assert data["composition"] == {"module": "rate_card", "mixin_class": "MixinRateCard",
                                   "config_model": "RateCardConfig"}
    source = paths[1].read_text()
    assert "class MixinRateCard:" in source and "__slots__ = ()" in source
    assert "def setup_rate_card(self" in source and "def __init__(self, config" in source
    compile(source, str(paths[1]), "exec")
    compile(paths[2].read_text(), str(paths[2]), "exec")


def test_scaffold_refuses_to_overwrite(tmp_path):
    scaffold_capability("thing", tmp_path)
    with pytest.raises(FileExistsError, match="pass --force"):
        scaffold_capability("thing", tmp_path)
    assert len(scaffold_capability("thing", tmp_path, force=True)) == 3


@pytest.mark.parametrize("name", ["Thing", "9lives", "with-dash", "class", "process", "start",
                                  "setup_x", "trailing_"])
def test_scaffold_rejects_bad_names(tmp_path, name):
    with pytest.raises(ConfigurationError):
        scaffold_capability(name, tmp_path)


@pytest.mark.parametrize(("name", "what"), [
    ("caching", "a registered capability"),
    ("health_monitoring", "an alias of 'health_check'"),
    ("fault_tolerance", "a bundle of retry, circuit_breaker"),
])
def test_scaffold_refuses_names_the_registry_already_knows(tmp_path, name, what):
    # the contract would be checked against the built-in config model (and fail validation)
    with pytest.raises(ConfigurationError, match=f"{name!r} is taken: it is {what}"):
        scaffold_capability(name, tmp_path)
    assert not list(tmp_path.iterdir())


def test_scaffold_rejects_bad_node_types_and_modules(tmp_path):
    with pytest.raises(ConfigurationError, match="'SINK' not in"):
        scaffold_capability("thing", tmp_path, node_types=["SINK"])
    with pytest.raises(ConfigurationError, match="not a dotted Python module path"):
        scaffold_capability("thing", tmp_path, module="my-pkg.thing")


def test_scaffold_into_the_builtin_folder_uses_the_package_default(tmp_path, monkeypatch):
    import importlib

    caps = importlib.import_module("onex_compose.capabilities")
    monkeypatch.setattr(caps, "CONTRACTS_DIR", tmp_path)
    paths = scaffold_capability("sample", tmp_path)
    data = yaml.safe_load(paths[0].read_text())
    assert "module" not in data["composition"]
    assert "from onex_compose.capabilities.sample import SampleConfig" in paths[2].read_text()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scaffold_package_shape_validates_and_its_tests_pass(tmp_path):
    target = tmp_path / "plugins"
    assert main(["new", "capability", "ledger", "--package", "--target", str(target)]) == 0
    home = target / "ledger"
    assert sorted(p.name for p in home.iterdir()) == ["__init__.py", "_memory.py",
                                                      "mixin_ledger.yaml"]
    data = yaml.safe_load((home / "mixin_ledger.yaml").read_text())
    assert data["composition"]["module"] == "ledger"  # the package: its __init__ has the mixin
    assert "class Ledger:" in (home / "_memory.py").read_text()  # the backend module
    init = (home / "__init__.py").read_text()
    assert "from ._memory import Ledger" in init and "class MixinLedger:" in init
    assert "class Ledger:" not in init
    assert main(["validate", "--strict", str(home)]) == 0
    proc = _pytest(target, target / "test_ledger.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                           str(home)], capture_output=True, text=True, timeout=60, env=env)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_scaffold_package_inside_a_package(tmp_path):
    package = tmp_path / "myplugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    paths = scaffold_capability("outbox", package, package=True, node_types=["EFFECT"])
    assert [p.relative_to(package).as_posix() for p in paths] == [
        "outbox/mixin_outbox.yaml", "outbox/__init__.py", "outbox/_memory.py", "test_outbox.py"]
    assert yaml.safe_load(paths[0].read_text())["composition"]["module"] == "myplugins.outbox"
    assert 'Path(__file__).parent / "outbox" / "mixin_outbox.yaml"' in paths[3].read_text()
    for path in paths[1:]:
        compile(path.read_text(), str(path), "exec")
