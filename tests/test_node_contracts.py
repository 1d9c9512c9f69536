"""Node contracts: capabilities, subcontract references and inline models, addressing, composition."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onex_compose import NodeCompute, NodeEffect, Registry, coerce_config, explain
from onex_compose.exceptions import ConfigurationError, ContractError
from onex_compose.model.contracts import (
    ConfigView,
    ModelContract,
    ModelContractCompute,
    ModelContractEffect,
    ModelContractOrchestrator,
    ModelContractReducer,
    compose_from_contract,
    contract_class_for,
    load_contract,
    load_node,
)

# -- a private registry with small, real capabilities --------------------------------------------


class GreetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    greeting: str = "hello"
    times: int = Field(default=1, ge=1, le=5)


class MixinGreet:
    __slots__ = ()

    def setup_greet(self, config=None) -> None:
        self.greet_config = coerce_config(GreetConfig, config, "greet")

    def greet(self, name: str) -> str:
        return " ".join([self.greet_config.greeting] * self.greet_config.times) + f" {name}"


class BusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: str = "events"


class MixinBus:
    __slots__ = ()

    def setup_bus(self, config=None) -> None:
        self.bus_config = coerce_config(BusConfig, config, "bus")


class SendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    target: str = "outbox"


class MixinSend:
    __slots__ = ()

    def setup_send(self, config=None) -> None:
        self.send_config = coerce_config(SendConfig, config, "send")


@pytest.fixture(scope="module")
def reg() -> Registry:
    registry = Registry(name="node-contracts")
    registry.register(MixinGreet, name="greet", config=GreetConfig)
    registry.register(MixinBus, name="bus", config=BusConfig, subcontract_key="event_kind")
    registry.register(MixinSend, name="send", config=SendConfig,
                      applicable_node_types=["EFFECT"])
    registry.alias("salutation", "greet")
    return registry


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "mixins").mkdir(parents=True)
    (root / "nodes" / "canary" / "node_a").mkdir(parents=True)
    (root / ".onex-root").touch()
    (root / "mixins" / "mixin_greet.yaml").write_text("""\
mixin_name: "mixin_greet"
mixin_version: {major: 1, minor: 0, patch: 0}
description: "Greets people by name, a configurable number of times"
applicable_node_types: ["COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR"]
actions:
  - {name: greet, description: "Greet someone", inputs: [name], outputs: [text],
     required: true, timeout_ms: 100}
greet_config:
  greeting: "hi"
  times: 2
""")
    (root / "mixins" / "mixin_send.yaml").write_text("""\
mixin_name: "mixin_send"
mixin_version: {major: 1, minor: 0, patch: 0}
description: "Sends messages to an outbox (an EFFECT-only capability)"
applicable_node_types: ["EFFECT"]
actions:
  - {name: send, description: "Send", inputs: [message], outputs: [], required: true,
     timeout_ms: 1000}
send_config:
  target: "outbox"
""")
    (tmp_path / "outside.yaml").write_text("mixin_name: mixin_greet\n")
    return root


def node_file(tree: Path, text: str) -> Path:
    path = tree / "nodes" / "canary" / "node_a" / "contract.yaml"
    path.write_text(text)
    return path


# -- models ---------------------------------------------------------------------------------


def test_node_type_classes():
    assert ModelContractCompute().node_type == "COMPUTE"
    assert ModelContractEffect().node_type == "EFFECT"
    assert ModelContractReducer().node_type == "REDUCER"
    assert ModelContractOrchestrator().node_type == "ORCHESTRATOR"
    assert contract_class_for("EFFECT") is ModelContractEffect
    assert ModelContract(node_type="REDUCER").node_type == "REDUCER"


def test_node_type_mismatch_and_bad_values():
    with pytest.raises(ValidationError, match="does not match ModelContractCompute"):
        ModelContractCompute(node_type="EFFECT")
    with pytest.raises(ValidationError, match=r"'SINK' not in \[COMPUTE"):
        ModelContract(node_type="SINK")
    with pytest.raises(ValidationError, match="node_type"):
        ModelContract()


def test_capabilities_list_and_version():
    c = ModelContractCompute(capabilities=["greet", "bus"], version="1.2.3", name="n")
    assert c.capabilities == ["greet", "bus"]
    assert str(c.version) == "1.2.3"
    with pytest.raises(ValidationError, match="listed twice"):
        ModelContractCompute(capabilities=["greet", "greet"])
    with pytest.raises(ValidationError, match="MAJOR.MINOR.PATCH"):
        ModelContractCompute(version="v1")


def test_unknown_top_level_key_with_hint():
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "capabilites": ["greet"]})
    assert "unknown key 'capabilites' (did you mean 'capabilities'?)" in str(info.value)


# -- inline subcontracts and addressing --------------------------------------------------------


def test_inline_mapping_form_and_seed000_hasattr(reg):
    c = load_contract({"node_type": "COMPUTE",
                       "subcontracts": {"greet": {"greeting": "yo"}, "event_kind": {}}},
                      registry=reg)
    assert hasattr(c.subcontracts, "greet")
    assert not hasattr(c.subcontracts, "caching")
    assert c.subcontracts.greet.greeting == "yo"
    assert isinstance(c.subcontracts.greet, GreetConfig)
    # the bus capability is addressed by its subcontract key, as seed 000 does with event_type
    assert c.subcontracts.event_kind == BusConfig()
    assert c.subcontracts.bus is c.subcontracts.event_kind
    assert c.greet_configuration is c.subcontracts.greet
    assert c.capability_config_for("bus", "event_kind")[0] == BusConfig()


def test_inline_list_form_with_integration_field(reg):
    c = load_contract({"node_type": "COMPUTE", "subcontracts": [
        {"capability": "greet", "config": {"times": 3}, "integration_field": "hello_cfg"}]},
        registry=reg)
    assert c.hello_cfg.times == 3
    assert c.subcontracts.greet.times == 3
    with pytest.raises(AttributeError) as info:
        c.greet_configuration
    assert "known integration fields: hello_cfg" in str(info.value)


def test_inline_model_instance(reg):
    c = ModelContractCompute.model_validate(
        {"subcontracts": [GreetConfig(times=2)]}, context={"registry": reg})
    assert c.greet_configuration == GreetConfig(times=2)


def test_inline_config_validated_by_the_registered_model(reg):
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "subcontracts": [
            {"capability": "greet", "config": {"times": 9, "greting": "x"}}]}, registry=reg)
    text = str(info.value)
    assert "subcontracts[0].config.times: must be at most 5, got 9" in text
    assert "unknown key 'greting' (did you mean 'greeting'?)" in text


def test_unregistered_capability_config_is_a_view():
    c = ModelContractCompute(subcontracts=[{"capability": "unknown_thing",
                                            "config": {"depth": {"max": 3}}}])
    assert isinstance(c.unknown_thing_configuration, ConfigView)
    assert c.unknown_thing_configuration.depth.max == 3
    with pytest.raises(TypeError, match="read-only"):
        c.unknown_thing_configuration["depth"] = 1
    view = pickle.loads(pickle.dumps(c.unknown_thing_configuration))
    assert view == {"depth": {"max": 3}} and isinstance(view, ConfigView)


def test_model_without_a_known_capability_is_refused():
    class Anonymous(BaseModel):
        x: int = 1

    with pytest.raises(ValidationError, match="cannot tell which capability"):
        ModelContractCompute(subcontracts=[Anonymous()])


def test_bad_subcontract_item_shapes():
    with pytest.raises(ValidationError, match="a subcontract is a mapping"):
        ModelContractCompute(subcontracts=[5])
    with pytest.raises(ValidationError, match="subcontracts must be a list"):
        ModelContractCompute(subcontracts="greet")
    with pytest.raises(ValidationError, match="must be a Python identifier"):
        ModelContractCompute(subcontracts=[{"capability": "greet",
                                            "integration_field": "not-valid"}])


def test_integration_field_used_twice(reg):
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "subcontracts": [
            {"capability": "greet", "integration_field": "shared"},
            {"capability": "bus", "integration_field": "shared"}]}, registry=reg)
    assert "Integration field 'shared' used multiple times (subcontracts[0] and " \
           "subcontracts[1])" in str(info.value)


def test_capability_configured_twice(reg):
    with pytest.raises(ContractError, match="'greet' is configured twice"):
        load_contract({"node_type": "COMPUTE", "subcontracts": [
            {"capability": "greet"}, {"capability": "greet", "integration_field": "other"}]},
            registry=reg)


def test_integration_field_clashing_with_a_contract_attribute(reg):
    with pytest.raises(ContractError, match="clashes with a contract attribute"):
        load_contract({"node_type": "COMPUTE", "subcontracts": [
            {"capability": "greet", "integration_field": "capabilities"}]}, registry=reg)


def test_inline_subcontract_not_applicable_to_node_type(reg):
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "subcontracts": {"send": {}}}, registry=reg)
    assert "Mixin 'mixin_send' not applicable to node type 'COMPUTE'. Applicable types: " \
           "[EFFECT]" in str(info.value)


def test_contract_round_trip_and_pickle(reg):
    data = {"node_type": "EFFECT", "name": "n", "capabilities": ["greet"],
            "subcontracts": [{"capability": "send", "config": {"target": "x"}}]}
    c = load_contract(data, registry=reg)
    again = load_contract(c.to_data(), registry=reg)
    assert again == c
    assert pickle.loads(pickle.dumps(c)) == c


# -- references ------------------------------------------------------------------------------


def test_reference_relative_to_the_contract_file(tree, reg):
    path = node_file(tree, """\
node_type: COMPUTE
subcontracts:
  - path: "../../../mixins/mixin_greet.yaml"
    integration_field: "greeting_configuration"
""")
    c = load_contract(path, registry=reg)
    assert c.greeting_configuration == GreetConfig(greeting="hi", times=2)
    assert c.subcontracts.greet is c.greeting_configuration
    entry = c.subcontracts[0]
    assert entry.kind == "reference" and entry.mixin.capability == "greet"
    assert c.capability_config_for("greet")[1] == \
        "contract subcontracts[0] -> ../../../mixins/mixin_greet.yaml"


def test_reference_default_integration_field_and_overrides(tree, reg):
    path = node_file(tree, """\
node_type: COMPUTE
subcontracts:
  - path: "../../../mixins/mixin_greet.yaml"
    config: {times: 4}
""")
    c = load_contract(path, registry=reg)
    assert c.greet_configuration == GreetConfig(greeting="hi", times=4)


def test_reference_without_a_registered_model_is_a_view(tree):
    path = node_file(tree, "node_type: COMPUTE\nsubcontracts:\n"
                           "  - {path: ../../../mixins/mixin_greet.yaml}\n")
    c = ModelContractCompute.model_validate(
        yaml.safe_load(path.read_text()),
        context={"base_dir": path.parent, "root": tree, "registry": Registry()})
    assert c.greet_configuration == {"greeting": "hi", "times": 2}
    assert c.greet_configuration.times == 2


def test_subcontract_file_not_found(tree, reg):
    path = node_file(tree, "node_type: COMPUTE\nname: x\nsubcontracts:\n"
                           "  - path: ../../../mixins/mixin_nope.yaml\n"
                           "    integration_field: nope_configuration\n")
    with pytest.raises(ContractError) as info:
        load_contract(path, registry=reg)
    text = str(info.value)
    assert "Subcontract file not found: ../../../mixins/mixin_nope.yaml" in text
    assert f"{path}:4: subcontracts[0].path" in text


def test_reference_escaping_the_tree(tree, reg):
    path = node_file(tree, "node_type: COMPUTE\nsubcontracts:\n"
                           "  - path: ../../../../outside.yaml\n")
    with pytest.raises(ContractError, match="outside the contract tree"):
        load_contract(path, registry=reg)


def test_reference_to_a_node_contract_or_broken_mixin(tree, reg):
    (tree / "mixins" / "other.yaml").write_text("node_type: EFFECT\n")
    (tree / "mixins" / "mixin_bad.yaml").write_text(
        "mixin_name: mixin_bad\nmixin_version: {major: 1, minor: 0, patch: 0}\n")
    path = node_file(tree, "node_type: COMPUTE\nsubcontracts:\n"
                           "  - path: ../../../mixins/other.yaml\n"
                           "  - path: ../../../mixins/mixin_bad.yaml\n")
    with pytest.raises(ContractError) as info:
        load_contract(path, registry=reg)
    text = str(info.value)
    assert "is a node contract: a subcontract reference must point to a mixin contract" in text
    assert "mixin_bad.yaml:1: 'description' field required (in the mixin contract referenced " \
           "by subcontracts[1])" in text


def test_bad_value_in_the_referenced_file_names_its_line(tree, reg):
    mixin = tree / "mixins" / "mixin_greet.yaml"
    mixin.write_text(mixin.read_text().replace("times: 2", "times: 50"))
    path = node_file(tree, "node_type: COMPUTE\nsubcontracts:\n"
                           "  - path: ../../../mixins/mixin_greet.yaml\n")
    with pytest.raises(ContractError) as info:
        load_contract(path, registry=reg)
    assert "mixin_greet.yaml:10: greet_config.times: must be at most 5, got 50 " \
           "(configuration of 'greet', referenced by subcontracts[0])" in str(info.value)


def test_referenced_mixin_not_applicable(tree, reg):
    path = node_file(tree, "node_type: REDUCER\nsubcontracts:\n"
                           "  - path: ../../../mixins/mixin_send.yaml\n")
    with pytest.raises(ContractError) as info:
        load_contract(path, registry=reg)
    assert "Mixin 'mixin_send' not applicable to node type 'REDUCER'. Applicable types: " \
           "[EFFECT]" in str(info.value)


def test_reference_capability_mismatch(tree, reg):
    path = node_file(tree, "node_type: COMPUTE\nsubcontracts:\n"
                           "  - {path: ../../../mixins/mixin_greet.yaml, capability: bus}\n")
    with pytest.raises(ContractError, match="reference says capability 'bus'"):
        load_contract(path, registry=reg)


def test_contract_built_in_python_resolves_against_the_working_folder(tree, reg, monkeypatch):
    monkeypatch.chdir(tree)
    c = ModelContractCompute.model_validate(
        {"subcontracts": [{"path": "mixins/mixin_greet.yaml"}]}, context={"registry": reg})
    assert c.greet_configuration.times == 2


# -- capabilities against the registry ---------------------------------------------------------


def test_unknown_capability_with_did_you_mean(reg):
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "capabilities": ["gret"]}, registry=reg)
    assert "unknown capability 'gret' (did you mean 'greet'?)" in str(info.value)


def test_listed_capability_not_applicable(reg):
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "capabilities": ["send"]}, registry=reg)
    assert "Mixin 'mixin_send' not applicable to node type 'COMPUTE'" in str(info.value)


def test_every_problem_listed_in_one_error(reg):
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": "COMPUTE", "capabilities": ["gret", "send"]}, registry=reg)
    assert len(info.value.problems) == 2


# -- composition -------------------------------------------------------------------------------


def test_compose_from_contract_adds_subcontract_capabilities(reg):
    cls = compose_from_contract({"node_type": "COMPUTE", "capabilities": ["salutation"],
                                 "subcontracts": {"event_kind": {"topic": "t"}}}, registry=reg)
    assert issubclass(cls, NodeCompute)
    assert set(cls.__composition__.capabilities) == {"greet", "bus"}


def test_load_node_feeds_every_subcontract(tree, reg):
    path = node_file(tree, """\
node_type: EFFECT
capabilities: [greet]
subcontracts:
  - path: ../../../mixins/mixin_greet.yaml
  - capability: send
    config: {target: "queue"}
  - capability: event_kind
    config: {topic: "orders"}
""")
    node = load_node(path, registry=reg)
    assert isinstance(node, NodeEffect)
    assert node.greet("ada") == "hi hi ada"
    assert node.send_config.target == "queue"
    assert node.bus_config.topic == "orders"
    sources = {c["name"]: c.get("config_source", "")
               for c in explain(node).to_dict()["capabilities"]}
    assert "subcontracts[0] -> ../../../mixins/mixin_greet.yaml" in sources["greet"]
    assert "subcontracts[1]" in sources["send"]


def test_capability_config_overrides_the_contract(reg):
    node = load_node({"node_type": "COMPUTE", "subcontracts": {"greet": {"times": 2}}},
                     registry=reg, capability_config={"greet": {"times": 3}})
    assert node.greet_config.times == 3
    with pytest.raises(ConfigurationError, match="no capability 'gret'"):
        load_node({"node_type": "COMPUTE", "capabilities": ["greet"]}, registry=reg,
                  capability_config={"gret": {}})


def test_defaults_when_the_contract_is_silent(reg):
    node = load_node({"node_type": "COMPUTE", "capabilities": ["greet"]}, registry=reg)
    assert node.greet_config == GreetConfig()


def test_loaded_node_pickles(tree, reg):
    path = node_file(tree, "node_type: COMPUTE\nsubcontracts:\n"
                           "  - {capability: greet, config: {times: 2}}\n")
    cls = compose_from_contract(path, registry=reg)
    node = cls(load_contract(path, registry=reg))
    clone = pickle.loads(pickle.dumps(node))
    assert clone.greet_config.times == 2


def test_base_must_match_the_node_type(reg):
    with pytest.raises(ContractError, match="the contract is for COMPUTE nodes but base "
                                            "NodeEffect"):
        compose_from_contract({"node_type": "COMPUTE", "capabilities": ["greet"]},
                              base=NodeEffect, registry=reg)


def test_compose_from_a_mixin_contract_is_refused(tree, reg):
    with pytest.raises(ContractError, match="is a mixin contract"):
        compose_from_contract(tree / "mixins" / "mixin_greet.yaml", registry=reg)


def test_python_model_checked_against_the_registry_too(reg):
    with pytest.raises(ContractError, match="unknown capability 'gret'"):
        compose_from_contract(ModelContractCompute(capabilities=["gret"]), registry=reg)


def test_seed000_style_hand_written_initialize_mixins(reg):
    contract = load_contract({"node_type": "COMPUTE",
                              "subcontracts": {"greet": {"greeting": "hey"}}}, registry=reg)
    seen = SimpleNamespace(config=None)
    if hasattr(contract.subcontracts, "greet"):
        seen.config = contract.subcontracts.greet
    if hasattr(contract.subcontracts, "event_kind"):
        pytest.fail("no bus subcontract was given")
    assert seen.config.greeting == "hey"


# -- with the built-in capabilities (default registry) -----------------------------------------


def test_seed000_event_type_key_reaches_event_bus():
    contract = load_contract({"node_type": "COMPUTE",
                              "subcontracts": {"event_type": {"namespace": "orders"}}})
    assert hasattr(contract.subcontracts, "event_type")
    assert contract.subcontracts.event_type.namespace == "orders"
    assert contract.subcontracts.event_bus is contract.subcontracts.event_type
    cls = compose_from_contract(contract)
    assert "event_bus" in cls.__composition__.capabilities
    node = cls(contract)
    source = {c["name"]: c.get("config_source", "")
              for c in explain(node).to_dict()["capabilities"]}["event_bus"]
    assert "subcontracts.event_type" in source


def test_builtin_capability_inline_config_is_validated():
    with pytest.raises(ContractError, match="did you mean 'namespace'"):
        load_contract({"node_type": "COMPUTE", "subcontracts": {"caching": {"namespce": "x"}}})


# -- registering a capability from its YAML contract ---------------------------------------------


def test_register_contract_takes_metadata_from_the_yaml(tree):
    from onex_compose.model.contracts import register_contract

    path = tree / "mixins" / "mixin_send.yaml"
    with pytest.raises(ContractError, match="composition.module is required"):
        register_contract(path, registry=Registry())
    path.write_text(path.read_text() + f"""\
requires_dependencies:
  - {{name: greet, type: capability, description: "greets first", optional: false}}
composition:
  module: "{__name__}"
  config_model: "SendConfig"
  aliases: ["sender"]
  rank: 200
""")
    reg = Registry()
    reg.register(MixinGreet, name="greet", config=GreetConfig)
    spec = register_contract(path, registry=reg)
    assert spec.name == "send"
    assert spec.mixin_ref == f"{__name__}:MixinSend"
    assert spec.requires == {"greet"}
    assert spec.applicable_node_types == {"EFFECT"}
    assert spec.rank == 200
    assert spec.config_model is SendConfig
    assert reg.aliases["sender"] == ("send",)
    node = load_node({"node_type": "EFFECT", "capabilities": ["sender"],
                      "subcontracts": {"send": {"target": "t"}}}, registry=reg)
    assert node.send_config.target == "t" and node.greet("x") == "hello x"


# -- aliases and bundles as subcontract keys ---------------------------------------------------


def test_a_subcontract_keyed_by_an_alias_configures_its_capability() -> None:
    # seed 000 names capabilities health_monitoring / performance_metrics; the node used to
    # fail with "the contract configures capabilities NodeCompute[...] does not have"
    node = load_node({"node_type": "COMPUTE", "subcontracts": {
        "health_monitoring": {"check_timeout": 7}, "performance_metrics": {"namespace": "zz"}}})
    assert type(node).__name__ == "NodeCompute[health_check,metrics]"
    assert node.health.config.check_timeout == 7 and node.metrics.config.namespace == "zz"
    contract = node.contract
    assert contract.health_check_configuration.check_timeout == 7
    assert contract.subcontracts.health_monitoring is contract.subcontracts.health_check
    with pytest.raises(ContractError, match=r"unknown key 'check_timeot' \(did you mean "
                                            r"'check_timeout'\?\)"):
        load_node({"node_type": "COMPUTE", "subcontracts": [
            {"capability": "health_monitoring", "config": {"check_timeot": 1}}]})


def test_a_subcontract_keyed_by_a_bundle_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="'fault_tolerance', a bundle of retry, "
                                            "circuit_breaker: a bundle has no configuration"):
        load_node({"node_type": "COMPUTE", "subcontracts": {"fault_tolerance": {}}})
