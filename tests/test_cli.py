"""The ``onex`` command line, in-process through ``main(argv)`` and once as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onex_compose import Registry, _cli
from onex_compose._cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "contracts"
SEED_YAML = FIXTURES / "mixins" / "mixin_error_handling.yaml"
SEED_OUTPUT = """\
✓ YAML syntax valid
✓ Schema validation passed
✓ All required fields present
✓ Node type constraints valid
✓ Action definitions complete
"""
BAD = """\
mixin_name: "mixin_example"
mixin_version: {major: 1, minor: 0, patch: 0}
applicable_node_types: ["COMPUTE", "INVALID_TYPE"]
actions:
  - name: "process_data"
    description: "Process data"
    inputs: ["data"]
"""


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- validate / run contract_validator -------------------------------------------------------


def test_validate_success(capsys):
    code, out, _ = run(capsys, "validate", str(SEED_YAML))
    assert code == 0
    assert out == SEED_OUTPUT


def test_seed_spelling(capsys):
    code, out, _ = run(capsys, "run", "contract_validator", "--contract", str(SEED_YAML))
    assert (code, out) == (0, SEED_OUTPUT)


def test_validate_failure(tmp_path, capsys):
    path = tmp_path / "mixin_example.yaml"
    path.write_text(BAD)
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 1
    assert f"    ✗ {path}:1: 'description' field required" in out
    assert f"    ✗ {path}:3: applicable_node_types[1]: 'INVALID_TYPE' not in [COMPUTE, EFFECT, " \
           "REDUCER, ORCHESTRATOR]" in out
    assert f"    ✗ {path}:5: actions[0]: 'outputs' field required" in out


def test_validate_json(tmp_path, capsys):
    path = tmp_path / "mixin_example.yaml"
    path.write_text(BAD)
    code, out, _ = run(capsys, "validate", "--format", "json", str(SEED_YAML), str(path))
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    assert [r["ok"] for r in data["reports"]] == [True, False]
    messages = [p["message"] for p in data["reports"][1]["problems"]]
    assert "'description' field required" in messages


def test_validate_folder_and_quiet(tmp_path, capsys):
    (tmp_path / "mixin_a.yaml").write_text(SEED_YAML.read_text().replace(
        "mixin_error_handling", "mixin_a").replace("error_handling_config", "a_config"))
    code, out, _ = run(capsys, "validate", str(tmp_path))
    assert code == 0
    assert out.splitlines()[0] == f"{tmp_path / 'mixin_a.yaml'}:"
    assert out.rstrip().endswith("1 contract valid, 0 invalid")
    code, out, _ = run(capsys, "validate", "-q", str(tmp_path))
    assert (code, out) == (0, "")


def test_validate_strict_fails_on_warnings(tmp_path, capsys):
    path = tmp_path / "mixin_example.yaml"
    path.write_text(BAD.replace('mixin_version', 'description: "Example mixin description"\n'
                                'mixin_version').replace(
        '"INVALID_TYPE"', '"EFFECT"') + '    outputs: ["x"]\n')
    assert run(capsys, "validate", str(path))[0] == 0
    code, out, _ = run(capsys, "validate", "--strict", str(path))
    assert code == 1
    assert "⚠" in out


def test_validate_missing_path(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "file not found" in out


def test_validate_node_contract_with_root(capsys):
    contract = FIXTURES / "nodes" / "error_node" / "contract.yaml"
    code, out, _ = run(capsys, "validate", "--root", str(FIXTURES), str(contract))
    assert code == 0, out
    assert out.splitlines() == [*SEED_OUTPUT.splitlines()[:4],
                                "✓ Subcontract references resolved"]
    # a root that excludes the referenced file makes the reference escape the tree
    code, out, _ = run(capsys, "validate", "--root", str(contract.parent), str(contract))
    assert code == 1 and "outside the contract tree" in out


def test_run_usage_errors(capsys):
    code, _, err = run(capsys, "run", "contract_validatr", "--contract", str(SEED_YAML))
    assert code == 2 and "did you mean 'contract_validator'?" in err
    code, _, err = run(capsys, "run", "contract_validator")
    assert code == 2 and "needs --contract PATH" in err


def test_no_command_and_help(capsys):
    assert run(capsys, )[0] == 2
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "validate" in out


# -- list ----------------------------------------------------------------------------------------


@pytest.fixture
def private_registry(monkeypatch):
    reg = Registry(name="cli")
    reg.load_manifest({
        "capabilities": {
            "alpha": {"mixin": "tests.no_such_module_for_cli:MixinAlpha"},
            "beta": {"mixin": "tests.no_such_module_for_cli:MixinBeta", "requires": ["alpha"],
                     "applicable_node_types": ["EFFECT"]},
        },
        "aliases": {"first": ["alpha"], "both": ["alpha", "beta"]},
    })
    monkeypatch.setattr(_cli, "get_registry", lambda: reg)
    return reg


def test_list_reads_metadata_without_importing(private_registry, capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["capability", "requires", "node", "types", "aliases"]
    assert lines[1].split() == ["alpha", "-", "all", "first"]
    assert lines[2].split() == ["beta", "alpha", "EFFECT", "-"]
    assert "  both -> alpha, beta" in out
    # the mixin modules do not even exist: nothing was imported
    assert not any(spec.loaded for spec in private_registry)
    assert "tests.no_such_module_for_cli" not in sys.modules


def test_list_json(private_registry, capsys):
    code, out, _ = run(capsys, "list", "--format", "json")
    data = json.loads(out)
    assert [c["name"] for c in data["capabilities"]] == ["alpha", "beta"]
    assert data["capabilities"][0]["aliases"] == ["first"]
    assert data["aliases"]["both"] == ["alpha", "beta"]


def test_list_default_registry_imports_no_capability_module(capsys):
    before = {m for m in sys.modules if m.startswith("onex_compose.capabilities.")}
    code, out, _ = run(capsys, "list")
    assert code == 0 and "capability" in out
    after = {m for m in sys.modules if m.startswith("onex_compose.capabilities.")}
    assert after == before


# -- explain / graph -------------------------------------------------------------------------


def test_explain_text_json_dot(capsys):
    code, out, _ = run(capsys, "explain", "NodeCompute", "caching")
    assert code == 0
    assert out.startswith("NodeCompute[caching,metrics] (composed, base NodeCompute)")
    assert "metrics: required by caching" in out
    code, out, _ = run(capsys, "explain", "NodeCompute", "caching", "--format", "json")
    assert json.loads(out)["order"] == ["metrics", "caching"]
    code, out, _ = run(capsys, "explain", "COMPUTE", "caching", "--format", "dot")
    assert out.startswith('digraph "NodeCompute[caching,metrics]"')


def test_explain_errors(capsys):
    code, _, err = run(capsys, "explain", "NodeComput", "caching")
    assert code == 2 and "did you mean 'NodeCompute'?" in err
    code, _, err = run(capsys, "explain", "NodeCompute", "cachng")
    assert code == 1 and "Did you mean 'caching'?" in err
    code, _, err = run(capsys, "explain", "NodeCompute", "caching", "--prefer", "oops")
    assert code == 2 and "--prefer takes NAME=VALUE" in err


def test_explain_with_options(capsys):
    code, out, _ = run(capsys, "explain", "NodeCompute", "caching", "--exclude",
                       "caching.generate_cache_key")
    assert code == 0
    assert "exclude: 'generate_cache_key' of 'caching' hidden" in out


def test_explain_a_service_base(capsys):
    code, out, err = run(capsys, "explain", "NodeComputeService", "metrics")
    assert code == 0, err
    assert "metrics" in out


def test_graph_dot_to_stdout_and_file(tmp_path, capsys):
    code, out, _ = run(capsys, "graph", "NodeCompute", "caching")
    assert code == 0 and out.startswith("digraph")
    target = tmp_path / "g.dot"
    code, out, _ = run(capsys, "graph", "NodeCompute", "caching", "-o", str(target))
    assert code == 0 and target.read_text().startswith("digraph")


def test_graph_png_without_graphviz(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, _, err = run(capsys, "graph", "NodeCompute", "caching", "-o", str(tmp_path / "g.png"))
    assert code == 1
    assert "Graphviz is not installed ('dot' not found on PATH)" in err
    assert not (tmp_path / "g.png").exists()


def test_graph_svg_needs_an_output_file(capsys):
    code, _, err = run(capsys, "graph", "NodeCompute", "caching", "--format", "svg")
    assert code == 2 and "needs -o FILE" in err


def test_graph_renders_through_graphviz(tmp_path, capsys, monkeypatch):
    # a stand-in `dot` that records its arguments and input, as Graphviz would be called
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\ndata = sys.stdin.read()\n"
                    "out = sys.argv[sys.argv.index('-o') + 1]\n"
                    "open(out, 'w').write(sys.argv[1] + '\\n' + data)\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    target = tmp_path / "g.svg"
    code, out, err = run(capsys, "graph", "NodeCompute", "caching", "-o", str(target))
    assert code == 0, err
    rendered = target.read_text()
    assert rendered.startswith("-Tsvg\ndigraph")
    assert f"wrote {target}" in out


# -- new / demo ------------------------------------------------------------------------------


def test_new_capability(tmp_path, capsys):
    code, out, _ = run(capsys, "new", "capability", "audit_trail", "--target", str(tmp_path))
    assert code == 0
    assert (tmp_path / "mixin_audit_trail.yaml").exists()
    assert f"created {tmp_path / 'audit_trail.py'}" in out
    code, _, err = run(capsys, "new", "capability", "audit_trail", "--target", str(tmp_path))
    assert code == 1 and "--force" in err
    code, _, err = run(capsys, "new", "capability", "Bad-Name", "--target", str(tmp_path))
    assert code == 1 and "snake_case" in err
    code, _, err = run(capsys, "new", "widget", "x", "--target", str(tmp_path))
    assert code == 2 and "makes 'capability'" in err


def test_demo_missing_module_is_a_clear_error(capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "onex_compose._demo":
            raise ModuleNotFoundError("No module named 'onex_compose._demo'",
                                      name="onex_compose._demo")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    code, _, err = run(capsys, "demo")
    assert code == 1
    assert "the demo is not available in this build" in err


def test_demo_calls_main_with_the_arguments(capsys, monkeypatch):
    import types

    seen = {}
    module = types.ModuleType("onex_compose._demo")

    def demo_main(argv):
        seen["argv"] = argv
        print("demo ran")
        return 3

    module.main = demo_main
    monkeypatch.setitem(sys.modules, "onex_compose._demo", module)
    code, out, _ = run(capsys, "demo", "--fast", "x")
    assert code == 3
    assert seen["argv"] == ["--fast", "x"]
    assert out == "demo ran\n"


# -- as a real process ---------------------------------------------------------------------


def test_console_script_in_a_subprocess(tmp_path):
    exe = shutil.which("onex")
    cmd = [exe] if exe else [sys.executable, "-m", "onex_compose._cli"]
    proc = subprocess.run([*cmd, "run", "contract_validator", "--contract", str(SEED_YAML)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == SEED_OUTPUT
    bad = tmp_path / "mixin_example.yaml"
    bad.write_text(BAD)
    proc = subprocess.run([*cmd, "validate", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert "'outputs' field required" in proc.stdout
    assert "Traceback" not in proc.stderr


# -- issue 9, point 7: --version, a bare base, --json everywhere a format is ------------------


def test_version(capsys):
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"onex-compose {version('onex-compose')}"


def test_explain_a_base_without_capabilities(capsys):
    code, out, err = run(capsys, "explain", "NodeCompute")
    assert (code, err) == (0, "")
    assert out.startswith("NodeCompute (hand-written, base NodeCoreBase)")
    assert "onex explain NodeCompute caching retry" in out  # how to go on
    code, out, _ = run(capsys, "explain", "NodeEffectService", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["class"] == "NodeEffectService" and data["capabilities"][0]["name"] == "node_service"
    code, out, _ = run(capsys, "graph", "EFFECT")
    assert code == 0 and out.startswith('digraph "NodeEffect"')


@pytest.mark.parametrize("argv", [
    ["list"],
    ["explain", "NodeCompute", "caching"],
    ["validate", str(SEED_YAML)],
    ["run", "contract_validator", "--contract", str(SEED_YAML)],
])
def test_json_is_short_for_format_json(capsys, argv):
    code_long, long_out, _ = run(capsys, *argv, "--format", "json")
    code_short, short_out, _ = run(capsys, *argv, "--json")
    assert code_long == code_short == 0
    assert json.loads(short_out) == json.loads(long_out)


def test_validate_the_installed_contracts(capsys):
    import onex_compose.capabilities as caps

    code, out, _ = run(capsys, "validate", "--installed", "--json")
    assert code == 0, out
    data = json.loads(out)
    names = {Path(r["file"]).name for r in data["reports"] if not r.get("skipped")}
    expected = {p.name for p in Path(caps.CONTRACTS_DIR).rglob("mixin_*.yaml")}
    assert expected and expected <= names
    code, _, err = run(capsys, "validate")
    assert code == 2 and "--installed" in err
