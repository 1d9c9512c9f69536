"""The YAML mixin contract model: every field and rule of seed 002's schema, plus composition."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from onex_compose import Registry, default_registry
from onex_compose._contracts import ModelMixinContract, problems_from_error
from onex_compose._loading import load_yaml, load_yaml_text
from onex_compose._manifest import contract_paths
from onex_compose._validate import validate_data, validate_file, validate_text
from onex_compose.capabilities import CONTRACTS_DIR
from onex_compose.model.subcontracts import SUBCONTRACT_META_FIELDS

FIXTURES = Path(__file__).parent / "fixtures" / "contracts"
SEED_YAML = FIXTURES / "mixins" / "mixin_error_handling.yaml"

VALID = {
    "mixin_name": "mixin_example",
    "mixin_version": {"major": 1, "minor": 0, "patch": 0},
    "description": "Example mixin description",
    "applicable_node_types": ["COMPUTE", "EFFECT"],
    "actions": [{"name": "process_data", "description": "Process data", "inputs": ["data"],
                 "outputs": ["result"], "required": True, "timeout_ms": 1000}],
}


def contract(**changes):
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def messages(data, *, registry=None):
    """Every error message the validator reports for ``data`` (rendered with its path)."""
    report = validate_data(data, kind="mixin", registry=registry or Registry())
    return [p.render() for p in report.errors]


def one_error(data):
    errors = messages(data)
    assert len(errors) == 1, errors
    return errors[0]


# -- the valid baseline and the seed's contract ---------------------------------------------------


def test_baseline_is_valid():
    model = ModelMixinContract.model_validate(VALID)
    assert model.capability == "example"
    assert model.config_key == "example_config"
    assert str(model.mixin_version) == "1.0.0"


def test_seed_contract_loads_with_every_section():
    model = ModelMixinContract.model_validate(load_yaml(SEED_YAML).data)
    assert model.mixin_name == "mixin_error_handling"
    assert [a.name for a in model.actions] == ["handle_error", "circuit_breaker_check",
                                              "should_retry", "record_error_metric"]
    assert model.actions[1].timeout_ms == 500 and model.actions[1].required is False
    assert model.config["circuit_half_open_max_calls"] == 3
    assert model.config["error_log_level"] == "ERROR"
    assert model.output_models["error_handling_result"]["recovery_suggestions"].items.type == \
        "string"
    assert [d.name for d in model.requires_dependencies] == ["logging_protocol",
                                                             "metrics_protocol"]
    assert model.requires_dependencies[1].optional is True
    hist = next(m for m in model.metrics if m.type == "histogram")
    assert hist.buckets == [1, 5, 10, 50, 100, 500, 1000, 5000]


def test_round_trip_through_yaml_keeps_the_config_section_name():
    model = ModelMixinContract.model_validate(load_yaml(SEED_YAML).data)
    data = model.to_data()
    assert "error_handling_config" in data and "config" not in data
    again = ModelMixinContract.model_validate(yaml.safe_load(yaml.safe_dump(data)))
    assert again == model
    # bare output types are written back bare
    assert data["output_models"]["circuit_status_result"]["status"] == "string"


# -- required fields (seed 002: "'description' field required") ---------------------------------


@pytest.mark.parametrize("field", ["mixin_name", "mixin_version", "description",
                                   "applicable_node_types", "actions"])
def test_each_required_field(field):
    assert one_error(contract(**{field: None})) == f"'{field}' field required"


def test_seed_missing_description_example():
    data = yaml.safe_load('mixin_name: "mixin_example"\n'
                          "mixin_version: {major: 1, minor: 0, patch: 0}\n")
    errors = messages(data)
    assert "'description' field required" in errors


# -- mixin_name, mixin_version, description --------------------------------------------------


@pytest.mark.parametrize("name", ["example", "mixin-example", "mixin_Example", "mixin_", "Mixin_x"])
def test_mixin_name_pattern(name):
    assert "must be 'mixin_<capability>' in snake_case" in one_error(contract(mixin_name=name))


def test_mixin_name_hint_fixes_hyphens():
    assert "e.g. 'mixin_error_handling'" in one_error(contract(mixin_name="mixin-error-handling"))


def test_mixin_version_must_be_an_object():
    error = one_error(contract(mixin_version="1.0.0"))
    assert "mixin_version must be an object {major, minor, patch}" in error


@pytest.mark.parametrize(("version", "expected"), [
    ({"major": 1, "minor": 0}, "mixin_version: 'patch' field required"),
    ({"major": -1, "minor": 0, "patch": 0}, "mixin_version.major: must be at least 0, got -1"),
    ({"major": "1", "minor": 0, "patch": 0},
     "mixin_version.major: expected an integer, got the string '1'"),
    ({"major": 1, "minor": 0, "patch": 0, "build": 3}, "unknown key 'build'"),
])
def test_mixin_version_fields(version, expected):
    assert expected in one_error(contract(mixin_version=version))


@pytest.mark.parametrize(("length", "ok"), [(19, False), (20, True), (500, True), (501, False)])
def test_description_length_bounds(length, ok):
    errors = messages(contract(description="d" * length))
    if ok:
        assert errors == []
    else:
        assert errors == [f"description: 'description' must be 20-500 characters long, got "
                          f"{length}"]


# -- applicable_node_types -----------------------------------------------------------------------


def test_seed_invalid_node_type_wording():
    error = one_error(contract(applicable_node_types=["COMPUTE", "INVALID_TYPE"]))
    assert error == ("applicable_node_types[1]: 'INVALID_TYPE' not in "
                     "[COMPUTE, EFFECT, REDUCER, ORCHESTRATOR]")


def test_node_type_case_hint_and_every_bad_entry_reported():
    errors = messages(contract(applicable_node_types=["compute", "BOGUS"]))
    assert len(errors) == 2
    assert "(node types are upper case: 'COMPUTE')" in errors[0]
    assert "'BOGUS' not in" in errors[1]


def test_node_types_not_empty_not_repeated():
    assert "must not be empty" in one_error(contract(applicable_node_types=[]))
    assert "listed twice" in one_error(contract(applicable_node_types=["EFFECT", "EFFECT"]))


# -- actions ---------------------------------------------------------------------------------


def action(**changes):
    data = copy.deepcopy(VALID["actions"][0])
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


def test_seed_missing_outputs_wording():
    data = yaml.safe_load("""
actions:
  - name: "process_data"
    description: "Process data"
    inputs: ["data"]
""")
    assert one_error(contract(actions=data["actions"])) == "actions[0]: 'outputs' field required"


def test_seed_correct_action_example_is_valid():
    data = yaml.safe_load("""
actions:
  - name: "process_data"
    description: "Process data"
    inputs: ["data"]
    outputs: ["result"]
""")
    report = validate_data(contract(actions=data["actions"]), registry=Registry())
    assert report.ok
    # required and timeout_ms are defaulted, and the validator says so
    assert any("does not set required and timeout_ms" in w.message for w in report.warnings)
    assert report.contract.actions[0].timeout_ms == 30000


@pytest.mark.parametrize("field", ["name", "description", "inputs", "outputs"])
def test_each_required_action_field(field):
    assert one_error(contract(actions=[action(**{field: None})])) == \
        f"actions[0]: '{field}' field required"


@pytest.mark.parametrize(("timeout", "ok"), [(0, False), (1, True), (300000, True),
                                             (300001, False)])
def test_timeout_ms_bounds(timeout, ok):
    errors = messages(contract(actions=[action(timeout_ms=timeout)]))
    assert (errors == []) is ok
    if not ok:
        assert errors[0].startswith("actions[0].timeout_ms: must be at")


def test_actions_must_not_be_empty_or_repeat():
    assert "actions: must not be empty" in one_error(contract(actions=[]))
    assert "action 'process_data' defined twice" in one_error(
        contract(actions=[action(), action()]))


def test_action_types_are_strict():
    errors = messages(contract(actions=[action(required="yes", timeout_ms=1.5, inputs="data")]))
    assert "actions[0].required: expected true or false, got the string 'yes'" in errors
    assert any(e.startswith("actions[0].timeout_ms: expected an integer") for e in errors)
    assert "actions[0].inputs: expected a list, got the string 'data'" in errors


def test_action_name_snake_case():
    assert "must be snake_case" in one_error(contract(actions=[action(name="ProcessData")]))


def test_unknown_action_key_did_you_mean():
    error = one_error(contract(actions=[action(requird=True)]))
    assert "unknown key 'requird' (did you mean 'required'?)" in error


# -- config section ------------------------------------------------------------------------


def test_config_section_named_after_the_capability():
    model = ModelMixinContract.model_validate(contract(example_config={"ttl": 5}))
    assert model.config == {"ttl": 5}


def test_config_section_with_mixin_prefix_is_accepted():
    model = ModelMixinContract.model_validate(contract(mixin_example_config={"ttl": 5}))
    assert model.config == {"ttl": 5}
    assert model.to_data()["example_config"] == {"ttl": 5}


def test_misnamed_config_section_is_an_unknown_key():
    error = one_error(contract(exampel_config={"ttl": 5}))
    assert "unknown key 'exampel_config' (did you mean 'example_config'?)" in error


def test_config_section_of_another_capability_is_refused():
    error = one_error(contract(caching_config={"ttl": 5}))
    assert "the config section must be named after the capability: 'example_config'" in error


def test_config_section_keys_and_type():
    assert "config key 'TTL' must be snake_case" in one_error(contract(example_config={"TTL": 1}))
    assert "expected a mapping" in one_error(contract(example_config=[1, 2]))


def test_config_checked_against_the_registered_model():
    from pydantic import BaseModel, ConfigDict

    class ExampleConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ttl: int = 5
        name: str = "x"

    class MixinExample:
        __slots__ = ()

    reg = Registry(name="cfg")
    reg.register(MixinExample, name="example", config=ExampleConfig)
    errors = messages(contract(example_config={"ttl": "long", "nmae": "y"}), registry=reg)
    assert any("example_config.ttl" in e and "ExampleConfig" in e for e in errors)
    assert any("unknown key 'nmae' (did you mean 'name'?)" in e for e in errors)
    report = validate_data(contract(example_config={"ttl": 9}), registry=reg)
    assert report.ok
    warnings = [w.message for w in report.warnings]
    assert any("does not list 'name'" in w for w in warnings)
    assert any("example_config.ttl is 9 but ExampleConfig defaults to 5" in w for w in warnings)


# -- output models, dependencies, metrics, composition -------------------------------------


def test_output_models():
    good = {"result": {"a": "string", "b": {"type": "array", "items": "integer"},
                       "c": {"type": "object", "properties": {"d": "timestamp"}}}}
    assert messages(contract(output_models=good)) == []
    assert "'strin' not in [string, integer, float, boolean, timestamp, array, object]" in \
        one_error(contract(output_models={"r": {"a": "strin"}}))
    assert "'items' is only allowed with type 'array'" in one_error(
        contract(output_models={"r": {"a": {"type": "string", "items": "string"}}}))
    assert "'properties' is only allowed with type 'object'" in one_error(
        contract(output_models={"r": {"a": {"type": "array", "properties": {}}}}))


def test_dependencies():
    deps = [{"name": "example", "type": "capability", "description": "it"}]
    assert messages(contract(dependencies=deps)) == []
    assert "'plugin' not in [capability, protocol, service, resource]" in one_error(
        contract(dependencies=[{"name": "x", "type": "plugin"}]))
    assert "unknown key 'optional'" in one_error(
        contract(dependencies=[{"name": "x", "type": "protocol", "optional": True}]))


def test_requires_dependencies_optional():
    req = [{"name": "metrics", "type": "capability", "description": "counts", "optional": True}]
    model = ModelMixinContract.model_validate(contract(requires_dependencies=req))
    assert model.requires_dependencies[0].optional is True
    assert "expected true or false" in one_error(contract(requires_dependencies=[
        {"name": "metrics", "type": "capability", "optional": "no"}]))


def metric(**fields):
    return {"name": "calls_total", "type": "counter", "description": "calls", **fields}


def test_metrics_rules():
    assert messages(contract(metrics=[metric(), metric(name="lat", type="histogram",
                                                      buckets=[0.5, 1, 2.5])])) == []
    assert "'timer' not in [counter, gauge, histogram]" in one_error(
        contract(metrics=[metric(type="timer")]))
    assert "'buckets' is only allowed on histogram metrics (this one is a counter)" in one_error(
        contract(metrics=[metric(buckets=[1, 2])]))
    assert "'buckets' is only allowed on histogram metrics (this one is a gauge)" in one_error(
        contract(metrics=[metric(type="gauge", buckets=[1])]))
    assert "strictly increasing: 3 comes after 5" in one_error(
        contract(metrics=[metric(type="histogram", buckets=[1, 5, 3])]))
    assert "strictly increasing: 5 comes after 5" in one_error(
        contract(metrics=[metric(type="histogram", buckets=[1, 5, 5])]))
    assert "at least one bucket" in one_error(contract(metrics=[metric(type="histogram",
                                                                       buckets=[])]))
    assert "not a finite number" in one_error(
        contract(metrics=[metric(type="histogram", buckets=[1, float("inf")])]))
    assert "label 'op' listed twice" in one_error(contract(metrics=[metric(labels=["op", "op"])]))
    assert "label 'Op' must be snake_case" in one_error(contract(metrics=[metric(labels=["Op"])]))
    assert "metric 'calls_total' defined twice" in one_error(
        contract(metrics=[metric(), metric()]))


def test_composition_section():
    comp = {"capability": "example", "module": "pkg.example", "mixin_class": "MixinExample",
            "config_model": "ExampleConfig", "rank": 300, "guard_rank": 40,
            "subcontract_key": "example_key", "aliases": ["sample"], "before": ["retry"],
            "after": ["metrics"], "conflicts": ["other"], "setup": "setup_example",
            "start": "start_example", "close": "close_example", "provides": ["ExampleProtocol"]}
    model = ModelMixinContract.model_validate(contract(composition=comp))
    assert model.subcontract_key == "example_key"
    assert model.to_data()["composition"] == comp
    assert "unknown key 'rnak' (did you mean 'rank'?)" in one_error(
        contract(composition={"rnak": 3}))
    assert "mixin_name must be 'mixin_other'" in one_error(
        contract(composition={"capability": "other"}))
    assert "is not a dotted module path" in one_error(contract(composition={"module": "a/b"}))
    assert "must be 'ClassName' or 'module.path:ClassName'" in one_error(
        contract(composition={"config_model": "a b"}))


def test_unknown_top_level_key_did_you_mean():
    error = one_error(contract(descripton="typo"))
    assert "unknown key 'descripton' (did you mean 'description'?)" in error
    assert "known keys: mixin_name, mixin_version, description" in error


def test_all_problems_reported_at_once_with_lines():
    text = """\
mixin_name: "mixin_example"
mixin_version: {major: 1, minor: 0, patch: 0}
applicable_node_types: ["COMPUTE", "INVALID_TYPE"]
actions:
  - name: "process_data"
    description: "Process data"
    inputs: ["data"]
"""
    loaded = load_yaml_text(text, "x.yaml")
    with pytest.raises(ValidationError) as info:
        ModelMixinContract.model_validate(loaded.data)
    problems = problems_from_error(info.value, ModelMixinContract, loaded.data,
                                   lines=loaded.lines, file="x.yaml")
    rendered = [p.render() for p in problems]
    assert rendered == [
        "x.yaml:1: 'description' field required",
        "x.yaml:3: applicable_node_types[1]: 'INVALID_TYPE' not in [COMPUTE, EFFECT, REDUCER, "
        "ORCHESTRATOR]",
        "x.yaml:5: actions[0]: 'outputs' field required",
    ]
    assert [p.check for p in problems] == ["required", "node_types", "actions"]


# -- every capability contract in the repo ---------------------------------------------------------

REPO_CONTRACTS = contract_paths(Path(CONTRACTS_DIR))


@pytest.mark.parametrize("path", REPO_CONTRACTS, ids=[p.name for p in REPO_CONTRACTS])
def test_repo_contract_validates(path):
    report = validate_file(path)
    assert report.ok, report.render_text()


@pytest.mark.parametrize("path", REPO_CONTRACTS, ids=[p.name for p in REPO_CONTRACTS])
def test_repo_contract_config_section_matches_the_config_model(path):
    model = ModelMixinContract.model_validate(load_yaml(path).data)
    spec = default_registry.get(model.capability)
    config_model = spec.config_model
    section = model.config
    if config_model is None:
        assert not section, f"{path.name} has a config section but no config model"
        return
    defaults = {k: v for k, v in config_model().model_dump(mode="json").items()
                if k not in SUBCONTRACT_META_FIELDS}
    assert section is not None, f"{path.name} lacks {model.config_key}"
    assert set(section) == set(defaults), (
        f"{model.config_key} keys differ from {config_model.__name__}: only in contract "
        f"{sorted(set(section) - set(defaults))}, only in model "
        f"{sorted(set(defaults) - set(section))}")
    for key, default in defaults.items():
        assert section[key] == default, (
            f"{model.config_key}.{key} = {section[key]!r}, {config_model.__name__} default "
            f"{default!r}")


def test_there_are_repo_contracts_to_check():
    assert REPO_CONTRACTS, "capabilities/ holds no mixin_*.yaml contract"


# -- hypothesis: generated valid contracts round-trip ------------------------------------------

SNAKE = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
               max_size=40).filter(lambda s: s.strip() != "")
NODE_TYPES = ["COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), TEXT)
OUTPUT_TYPE = st.sampled_from(["string", "integer", "float", "boolean", "timestamp", "array",
                               "object"])


@st.composite
def valid_contracts(draw):
    cap = draw(SNAKE)
    names = draw(st.lists(SNAKE, min_size=1, max_size=4, unique=True))
    actions = []
    for name in names:
        entry = {"name": name, "description": draw(TEXT),
                 "inputs": draw(st.lists(SNAKE, max_size=3)),
                 "outputs": draw(st.lists(SNAKE, max_size=3))}
        if draw(st.booleans()):
            entry["required"] = draw(st.booleans())
        if draw(st.booleans()):
            entry["timeout_ms"] = draw(st.integers(1, 300000))
        actions.append(entry)
    data = {
        "mixin_name": f"mixin_{cap}",
        "mixin_version": {k: draw(st.integers(0, 99)) for k in ("major", "minor", "patch")},
        "description": draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                    min_size=20, max_size=120)),
        "applicable_node_types": draw(st.lists(st.sampled_from(NODE_TYPES), min_size=1,
                                               max_size=4, unique=True)),
        "actions": actions,
    }
    if draw(st.booleans()):
        data[f"{cap}_config"] = draw(st.dictionaries(SNAKE, st.one_of(
            SCALARS, st.lists(TEXT, max_size=3)), max_size=5))
    if draw(st.booleans()):
        field_type = st.one_of(OUTPUT_TYPE, st.builds(
            lambda t: {"type": "array", "items": t}, OUTPUT_TYPE))
        data["output_models"] = draw(st.dictionaries(SNAKE, st.dictionaries(
            SNAKE, field_type, min_size=1, max_size=3), max_size=3))
    if draw(st.booleans()):
        data["dependencies"] = [{"name": n, "type": draw(st.sampled_from(
            ["capability", "protocol", "service", "resource"])), "description": draw(TEXT)}
            for n in draw(st.lists(SNAKE, max_size=3))]
    if draw(st.booleans()):
        data["requires_dependencies"] = [{"name": n, "type": "capability", "description": "x",
                                          "optional": draw(st.booleans())}
                                         for n in draw(st.lists(SNAKE, max_size=3))]
    if draw(st.booleans()):
        metrics = []
        for n in draw(st.lists(SNAKE, max_size=3, unique=True)):
            kind = draw(st.sampled_from(["counter", "gauge", "histogram"]))
            entry = {"name": n, "type": kind, "description": "m",
                     "labels": draw(st.lists(SNAKE, max_size=3, unique=True))}
            if kind == "histogram" and draw(st.booleans()):
                entry["buckets"] = sorted(draw(st.sets(st.integers(0, 10**6), min_size=1,
                                                       max_size=6)))
            metrics.append(entry)
        data["metrics"] = metrics
    if draw(st.booleans()):
        data["composition"] = {"rank": draw(st.integers(0, 1000)),
                               "aliases": draw(st.lists(SNAKE, max_size=2, unique=True))}
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_contracts())
def test_generated_valid_contracts_round_trip(data):
    model = ModelMixinContract.model_validate(data)
    text = yaml.safe_dump(model.to_data(), sort_keys=False, allow_unicode=True)
    report = validate_text(text, source="generated.yaml", registry=Registry())
    assert report.ok, report.render_text()
    assert report.contract == model
    assert ModelMixinContract.model_validate(report.contract.to_data()) == model


# -- docstring examples of the contract modules run as written ------------------------------------

CONTRACT_MODULES = [
    "onex_compose._loading", "onex_compose._contracts", "onex_compose._node_contracts",
    "onex_compose._validate", "onex_compose._contract_compose", "onex_compose._scaffold",
    "onex_compose._cli", "onex_compose.model.contracts", "onex_compose.model.subcontracts",
]


@pytest.mark.parametrize("name", CONTRACT_MODULES)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
