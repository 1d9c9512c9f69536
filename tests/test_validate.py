"""The contract validator: checks, wording, file/line, folders, JSON, and robustness to any input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onex_compose import Registry
from onex_compose._validate import (
    ValidationReport,
    detect_kind,
    render_reports,
    validate_contract,
    validate_data,
    validate_file,
    validate_paths,
    validate_text,
)
from onex_compose.capabilities import CONTRACTS_DIR
from onex_compose.exceptions import ContractError

FIXTURES = Path(__file__).parent / "fixtures" / "contracts"
SEED_YAML = FIXTURES / "mixins" / "mixin_error_handling.yaml"
SEED_LINES = ["✓ YAML syntax valid", "✓ Schema validation passed",
              "✓ All required fields present", "✓ Node type constraints valid",
              "✓ Action definitions complete"]

VALID_TEXT = """\
mixin_name: "mixin_example"
mixin_version: {major: 1, minor: 0, patch: 0}
description: "Example mixin description"
applicable_node_types: ["COMPUTE", "EFFECT"]
actions:
  - name: "process_data"
    description: "Process data"
    inputs: ["data"]
    outputs: ["result"]
    required: true
    timeout_ms: 1000
example_config:
  enabled: true
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_success_prints_exactly_the_seed_check_lines():
    report = validate_file(SEED_YAML)
    assert report.ok and report.kind == "mixin"
    assert report.render_text().splitlines() == SEED_LINES


def test_failure_lists_every_problem_under_its_check_with_file_and_line(tmp_path):
    path = write(tmp_path, "mixin_example.yaml", """\
mixin_name: "mixin_example"
mixin_version: {major: 1, minor: 0, patch: 0}
applicable_node_types: ["COMPUTE", "INVALID_TYPE"]
actions:
  - name: "process_data"
    description: "Process data"
    inputs: ["data"]
""")
    report = validate_file(path)
    assert not report.ok
    assert report.render_text().splitlines() == [
        "✓ YAML syntax valid",
        "✓ Schema validation passed",
        "✗ All required fields present",
        f"    ✗ {path}:1: 'description' field required",
        "✗ Node type constraints valid",
        f"    ✗ {path}:3: applicable_node_types[1]: 'INVALID_TYPE' not in [COMPUTE, EFFECT, "
        "REDUCER, ORCHESTRATOR]",
        "✗ Action definitions complete",
        f"    ✗ {path}:5: actions[0]: 'outputs' field required",
    ]


def test_yaml_failure_stops_at_the_syntax_check(tmp_path):
    path = write(tmp_path, "mixin_broken.yaml", "mixin_name: [unclosed\n")
    report = validate_file(path)
    lines = report.render_text().splitlines()
    assert lines[0] == "✗ YAML syntax valid"
    assert lines[1].startswith(f"    ✗ {path}:")
    assert len(lines) == 2


def test_schema_problem_lands_in_the_schema_check(tmp_path):
    path = write(tmp_path, "mixin_example.yaml", VALID_TEXT + "metrics: [{name: m, type: timer}]\n")
    lines = validate_file(path).render_text().splitlines()
    assert lines[1] == "✗ Schema validation passed"
    assert "metrics[0].type: 'timer' not in [counter, gauge, histogram]" in lines[2]


def test_warnings_do_not_fail_unless_strict(tmp_path):
    text = VALID_TEXT.replace("    required: true\n    timeout_ms: 1000\n", "")
    report = validate_text(text, source="x.yaml", registry=Registry())
    assert report.ok and report.warnings
    assert report.render_text().splitlines()[:5] == SEED_LINES
    assert report.render_text().splitlines()[5].startswith("⚠ x.yaml:6: actions[0]: action")


def test_missing_config_section_is_a_warning():
    text = VALID_TEXT.split("example_config")[0]
    report = validate_text(text, registry=Registry())
    assert report.ok
    assert any("no example_config section" in w.message for w in report.warnings)


def test_json_form(tmp_path):
    report = validate_file(SEED_YAML)
    data = report.to_dict()
    assert data["ok"] is True and data["kind"] == "mixin"
    assert [c["name"] for c in data["checks"]] == [line[2:] for line in SEED_LINES]
    bad = validate_text("mixin_name: mixin_x\n", source="m.yaml", registry=Registry())
    problems = bad.to_dict()["problems"]
    assert {"path", "message", "line", "file", "check", "severity"} <= set(problems[0])
    assert json.loads(render_reports([report, bad], "json"))["ok"] is False


def test_detect_kind():
    assert detect_kind({"mixin_name": "x"}) == "mixin"
    assert detect_kind({"capabilities": []}) == "node"
    assert detect_kind({"subcontracts": []}) == "node"
    assert detect_kind({}, "deploy/contract.yaml") == "node"
    assert detect_kind(["a"], "notes.yaml") is None


def test_non_contract_and_non_mapping_inputs():
    assert "not a contract" in validate_data({"a": 1}).errors[0].message
    assert "a contract is a YAML mapping" in validate_data([1, 2], kind="mixin").errors[0].message
    assert "got an empty file" in validate_text("", source="mixin_x.yaml").errors[0].message
    assert "is not a string" in validate_data({1: "x"}, kind="mixin").errors[0].message


def test_node_contract_checks(tmp_path):
    path = write(tmp_path, "svc/contract.yaml", "node_type: COMPUTE\ncapabilities: [cachng]\n")
    report = validate_file(path)
    assert report.kind == "node"
    lines = report.render_text().splitlines()
    assert lines[-1] == "✓ Subcontract references resolved"
    assert "✗ Schema validation passed" in lines
    assert f"    ✗ {path}:2: capabilities[0]: unknown capability 'cachng' (did you mean " \
           "'caching'?)" in lines[lines.index("✗ Schema validation passed") + 1]


def test_node_contract_reference_problems_are_references(tmp_path):
    (tmp_path / ".onex-root").touch()
    path = write(tmp_path, "n/contract.yaml",
                 "node_type: COMPUTE\nsubcontracts:\n  - path: ../mixins/missing.yaml\n")
    lines = validate_file(path).render_text().splitlines()
    assert lines[-2] == "✗ Subcontract references resolved"
    assert "Subcontract file not found: ../mixins/missing.yaml" in lines[-1]
    assert f"{path}:3: subcontracts[0].path" in lines[-1]


def test_node_type_problem_of_a_node_contract():
    report = validate_data({"node_type": "SINK"})
    assert [p.check for p in report.errors] == ["node_types"]
    assert report.errors[0].message == "'SINK' not in [COMPUTE, EFFECT, REDUCER, ORCHESTRATOR]"


def test_folder_validates_every_contract_and_skips_other_yaml(tmp_path):
    write(tmp_path, "mixins/mixin_example.yaml", VALID_TEXT)
    write(tmp_path, "mixins/mixin_bad.yaml", "mixin_name: mixin_bad\n")
    write(tmp_path, "nodes/a/contract.yaml", "node_type: EFFECT\n")
    write(tmp_path, "ci.yml", "jobs: {}\n")
    write(tmp_path, ".hidden/mixin_x.yaml", "garbage: [")
    reports = validate_paths([tmp_path], registry=Registry())
    names = [Path(r.source).name for r in reports]
    assert names == ["ci.yml", "mixin_bad.yaml", "mixin_example.yaml", "contract.yaml"]
    assert [r.ok for r in reports] == [True, False, True, True]
    assert reports[0].skipped
    text = render_reports(reports)
    assert text.endswith("2 contracts valid, 1 invalid (1 YAML file skipped: not contracts)")
    assert f"{tmp_path / 'mixins' / 'mixin_bad.yaml'}:" in text


def test_empty_folder_is_an_error(tmp_path):
    report = validate_paths([tmp_path])[0]
    assert not report.ok and "no YAML files" in report.errors[0].message


def test_validate_contract_accepts_models_and_mappings():
    from onex_compose.model.contracts import ModelContractCompute, load_contract

    assert validate_contract(ModelContractCompute(capabilities=["caching"])).ok
    assert not validate_contract(ModelContractCompute(capabilities=["nope"])).ok
    model = load_contract(SEED_YAML)
    assert validate_contract(model).ok
    assert validate_contract({"node_type": "REDUCER"}).ok


def test_raise_for_errors_is_one_contract_error():
    report = validate_data({"mixin_name": "bad-name"}, registry=Registry())
    with pytest.raises(ContractError) as info:
        report.raise_for_errors()
    assert len(info.value.problems) == len(report.errors) >= 4
    assert isinstance(info.value, ValueError)
    ValidationReport("x").raise_for_errors()  # no errors: nothing raised


def test_the_repo_capabilities_folder_validates():
    reports = validate_paths([CONTRACTS_DIR])
    checked = [r for r in reports if not r.skipped]
    assert checked, "no contracts found in capabilities/"
    bad = [r.render_text(header=True) for r in checked if not r.ok]
    assert not bad, "\n\n".join(bad)


# -- hypothesis: mutated contracts always give a report, never another exception ------------

BASE = yaml.safe_load(SEED_YAML.read_text("utf-8"))
NODE_BASE = {"node_type": "COMPUTE", "name": "n", "capabilities": ["caching"],
             "subcontracts": [{"capability": "caching", "config": {"namespace": "x"}},
                              {"path": "../mixins/mixin_error_handling.yaml"}]}

JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=10), st.integers(),
                                                      st.none(), st.sampled_from(
                                                          ["caching", "path", "capability",
                                                           "config", "event_type"])),
                                            inner, max_size=4)),
    max_leaves=12)


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


def _mutate(data, draw):
    data = copy.deepcopy(data)
    paths = list(_paths(data))
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "delete", "add_key", "rename"]))
    if not path:
        return draw(JUNK) if op == "replace" else data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "replace":
        parent[last] = draw(JUNK)
    elif op == "delete":
        del parent[last]
    elif op == "add_key" and isinstance(parent[last], dict):
        parent[last][draw(st.text(max_size=12))] = draw(JUNK)
    elif op == "rename" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(last)
    return data


def _check_report(report):
    assert isinstance(report, ValidationReport)
    for problem in report.problems:
        assert isinstance(problem.message, str) and problem.message
        problem.render()
    report.render_text()
    json.dumps(report.to_dict())
    if report.ok:
        assert report.contract is not None
    else:
        assert report.contract is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_mixin_contracts_always_yield_a_report(data):
    mutated = _mutate(BASE, data.draw)
    _check_report(validate_data(mutated, source="mutated.yaml", registry=Registry()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_node_contracts_always_yield_a_report(data):
    mutated = _mutate(NODE_BASE, data.draw)
    _check_report(validate_data(mutated, source="contract.yaml", kind="node",
                                path=FIXTURES / "nodes" / "contract.yaml", root=FIXTURES))


NODE_MAP_BASE = {"node_type": "COMPUTE", "capabilities": ["metrics"],
                 "subcontracts": {"caching": {"namespace": "x"}, "event_type": {}}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_mapping_form_node_contracts_always_yield_a_report(data):
    mutated = _mutate(NODE_MAP_BASE, data.draw)
    _check_report(validate_data(mutated, source="contract.yaml", kind="node",
                                path=FIXTURES / "nodes" / "contract.yaml", root=FIXTURES))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_always_yields_a_report(text):
    _check_report(validate_text(text, source="mixin_any.yaml", registry=Registry()))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_yaml_text_always_yields_a_report(data):
    text = SEED_YAML.read_text("utf-8")
    position = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.text(max_size=8))
    cut = data.draw(st.integers(0, 5))
    _check_report(validate_text(text[:position] + insert + text[position + cut:],
                                source="mixin_error_handling.yaml", registry=Registry()))


# -- every problem in one run; honest check lines; reference problems at the right place -------


def test_schema_failure_still_reports_unknown_capabilities(tmp_path):
    (tmp_path / ".onex-root").touch()
    path = write(tmp_path, "n/contract.yaml", """\
node_type: COMPUTE
capabilities: [cachng, metrics]
subcontracts:
  - capability: caching
    config: {max_entris: 3}
""")
    messages = [p.render() for p in validate_file(path).errors]
    assert any("capabilities[0]: unknown capability 'cachng' (did you mean 'caching'?)" in m
               for m in messages), messages
    assert any("unknown key 'max_entris' (did you mean 'max_entries'?)" in m
               for m in messages), messages


def test_schema_failure_still_checks_the_config_section(tmp_path):
    # beside the module, or inside the capability's package folder
    (contract,) = CONTRACTS_DIR.rglob("mixin_caching.yaml")
    text = contract.read_text("utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("description:"))
    text = text.replace("  max_entries:", "  max_entris:")
    report = validate_text(text, source="mixin_caching.yaml")
    messages = [p.message for p in report.errors]
    assert "'description' field required" in messages
    assert any("unknown key 'max_entris' (did you mean 'max_entries'?)" in m
               for m in messages), messages


def test_checks_that_could_not_run_are_not_reported_as_passed(tmp_path):
    report = validate_data({"mixin_name": "mixin_example",
                            "mixin_version": {"major": 1, "minor": 0, "patch": 0}})
    lines = report.render_text().splitlines()
    assert "- Node type constraints valid: not checked ('applicable_node_types' is missing)" \
        in lines
    assert "- Action definitions complete: not checked ('actions' is missing)" in lines
    assert "✓ Node type constraints valid" not in lines
    statuses = {c["id"]: c["status"] for c in report.to_dict()["checks"]}
    assert statuses == {"yaml": "passed", "schema": "passed", "required": "failed",
                        "node_types": "not checked", "actions": "not checked"}
    other = validate_file(write(tmp_path, "notes.yaml", "a: 1\n")).render_text().splitlines()
    assert other[3:] == ["- All required fields present: not checked (not a contract)",
                         "- Node type constraints valid: not checked (not a contract)",
                         "- Action definitions complete: not checked (not a contract)"]


def test_a_missing_file_is_not_called_a_mixin_contract(tmp_path):
    report = validate_file(tmp_path / "contract.yaml")
    assert report.kind == "node"
    with pytest.raises(ContractError, match=r"^Invalid node contract"):
        report.raise_for_errors()
    with pytest.raises(ContractError, match=r"^Invalid contract "):
        validate_file(tmp_path / "service.yaml").raise_for_errors()


def test_unknown_keys_in_subcontract_entries_name_the_entry_keys(tmp_path):
    (tmp_path / ".onex-root").touch()
    write(tmp_path, "mixins/mixin_error_handling.yaml", SEED_YAML.read_text("utf-8"))
    path = write(tmp_path, "n/contract.yaml", """\
node_type: COMPUTE
subcontracts:
  - path: "../mixins/mixin_error_handling.yaml"
    integration_feld: x
  - capability: caching
    confg: {}
""")
    lines = [p.render() for p in validate_file(path).errors]
    assert lines == [
        f"{path}:4: subcontracts[0]: unknown key 'integration_feld' (did you mean "
        "'integration_field'?); known keys: path, integration_field, capability, config",
        f"{path}:6: subcontracts[1]: unknown key 'confg' (did you mean 'config'?); known "
        "keys: capability, config, integration_field"]


def test_reference_problems_point_at_the_reference(tmp_path):
    (tmp_path / ".onex-root").touch()
    write(tmp_path, "mixins/mixin_error_handling.yaml", SEED_YAML.read_text("utf-8"))
    write(tmp_path, "n/other.yaml", "node_type: EFFECT\n")
    path = write(tmp_path, "n/contract.yaml", """\
node_type: COMPUTE
subcontracts:
  - path: "."
  - path: "other.yaml"
  - path: "../mixins/mixin_error_handling.yaml"
    config: {circuit_failure_threshold: 7, bogus: 1}
""")
    errors = validate_file(path).errors
    assert [(p.file, p.line, p.path) for p in errors] == [
        (str(path), 3, ("subcontracts", 0, "path")),
        (str(path), 4, ("subcontracts", 1, "path")),
        (str(path), 6, ("subcontracts", 2, "config"))]
    assert "is a folder, not a contract file" in errors[0].message
    assert "'other.yaml' is a node contract" in errors[1].message
    assert errors[2].message.startswith("unknown key 'bogus'")


def test_mapping_subcontracts_with_bad_keys_yield_a_report(tmp_path):
    path = write(tmp_path, "contract.yaml", """\
node_type: COMPUTE
subcontracts:
  caching: {max_entris: 3}
  path: {null: 1}
""")
    errors = validate_file(path).errors
    assert [(p.line, p.path) for p in errors] == [(3, ("subcontracts", "caching")),
                                                   (4, ("subcontracts", "path"))]
    assert "unknown key 'max_entris' (did you mean 'max_entries'?)" in errors[0].message
    assert "configuration key None of 'path' is not a string" in errors[1].message
