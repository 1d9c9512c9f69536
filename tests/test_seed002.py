"""Seed 002 ("Creating Mixins - Step-by-Step Guide") as written, with our import paths.

The unit tests of the Pydantic model are the seed's, verbatim (``omnibase_core`` read as
``onex_compose``). The integration test is the seed's too; the helpers it calls but never
defines (``_risky_operation``, ``_check_circuit_breaker``, ``_should_retry``,
``_retry_operation``) are supplied here, and ``__test__ = False`` stops pytest from collecting
the node class as a test class. The YAML contract is the seed's, assembled from its Step 2
snippets (tests/fixtures/contracts/mixins/mixin_error_handling.yaml).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from onex_compose import NodeCompute as _NodeCompute
from onex_compose import Registry, coerce_config, explain
from onex_compose._cli import main
from onex_compose.model.contracts import (
    ModelContractCompute,
    ModelMixinContract,
    compose_from_contract,
    load_contract,
    load_node,
)
from onex_compose.model.subcontracts import (
    EnumCircuitBreakerState,
    ModelErrorHandlingResult,
    ModelErrorHandlingSubcontract,
)
from onex_compose.nodes import NodeCompute

FIXTURES = Path(__file__).parent / "fixtures" / "contracts"
SEED_YAML = FIXTURES / "mixins" / "mixin_error_handling.yaml"
NODE_CONTRACT = FIXTURES / "nodes" / "error_node" / "contract.yaml"

SEED_CHECK_LINES = """\
✓ YAML syntax valid
✓ Schema validation passed
✓ All required fields present
✓ Node type constraints valid
✓ Action definitions complete
"""


# -- Step 5: the seed's unit tests, verbatim ------------------------------------------------------


def test_error_handling_subcontract_defaults():
    """Test default values."""
    mixin = ModelErrorHandlingSubcontract()

    assert mixin.subcontract_name == "mixin_error_handling"
    assert mixin.subcontract_version == "1.0.0"
    assert mixin.enable_circuit_breaker is True
    assert mixin.error_retry_attempts == 3


def test_error_handling_subcontract_validation():
    """Test field validation."""
    # Valid configuration
    mixin = ModelErrorHandlingSubcontract(
        circuit_failure_threshold=10,
        error_retry_attempts=5
    )
    assert mixin.circuit_failure_threshold == 10

    # Invalid: threshold too high
    with pytest.raises(ValidationError):
        ModelErrorHandlingSubcontract(circuit_failure_threshold=101)

    # Invalid: retry attempts too low
    with pytest.raises(ValidationError):
        ModelErrorHandlingSubcontract(error_retry_attempts=0)


def test_error_handling_subcontract_custom_error_types():
    """Test custom error type configuration."""
    mixin = ModelErrorHandlingSubcontract(
        retriable_error_types=["CustomError1", "CustomError2"],
        fatal_error_types=["FatalCustomError"]
    )

    assert "CustomError1" in mixin.retriable_error_types
    assert "FatalCustomError" in mixin.fatal_error_types


# -- Step 4: the model, field for field ---------------------------------------------------------


def test_seed_model_fields_defaults_and_ranges():
    m = ModelErrorHandlingSubcontract()
    assert m.applicable_node_types == ["COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR"]
    assert (m.enable_circuit_breaker, m.circuit_failure_threshold, m.circuit_timeout_ms) == \
        (True, 5, 30000)
    assert (m.error_retry_attempts, m.error_retry_delay_ms) == (3, 1000)
    assert m.retriable_error_types == ["TimeoutError", "ConnectionError", "TemporaryFailure"]
    assert m.fatal_error_types == ["AuthenticationError", "ValidationError", "ConfigurationError"]
    bounds = {
        "circuit_failure_threshold": (1, 100),
        "circuit_timeout_ms": (1000, 300000),
        "error_retry_attempts": (1, 10),
        "error_retry_delay_ms": (100, 60000),
    }
    for field, (low, high) in bounds.items():
        ModelErrorHandlingSubcontract(**{field: low})
        ModelErrorHandlingSubcontract(**{field: high})
        for bad in (low - 1, high + 1):
            with pytest.raises(ValidationError):
                ModelErrorHandlingSubcontract(**{field: bad})


def test_model_covers_every_key_of_the_seed_yaml_config_section():
    section = yaml.safe_load(SEED_YAML.read_text("utf-8"))["error_handling_config"]
    model = ModelErrorHandlingSubcontract()
    dumped = model.model_dump(mode="json")
    for key, value in section.items():
        assert dumped[key] == value, key
    extra = {"circuit_half_open_max_calls": 3, "error_retry_backoff_multiplier": 2.0,
             "max_retry_delay_ms": 30000, "enable_error_metrics": True,
             "sensitive_data_scrubbing": True, "error_log_level": "ERROR"}
    assert {k: dumped[k] for k in extra} == extra
    # the YAML section is exactly the model's configuration fields
    meta = {"subcontract_name", "subcontract_version", "applicable_node_types"}
    assert set(section) == set(dumped) - meta
    # and the section validates into the model
    assert ModelErrorHandlingSubcontract.model_validate(section) == model


def test_yaml_only_keys_have_ranges_and_cross_field_rules():
    with pytest.raises(ValidationError):
        ModelErrorHandlingSubcontract(circuit_half_open_max_calls=0)
    with pytest.raises(ValidationError):
        ModelErrorHandlingSubcontract(error_retry_backoff_multiplier=0.5)
    with pytest.raises(ValidationError):
        ModelErrorHandlingSubcontract(error_log_level="LOUD")
    with pytest.raises(ValidationError):
        ModelErrorHandlingSubcontract(max_retry_delay_ms=99)
    with pytest.raises(ValidationError, match="both retriable and fatal"):
        ModelErrorHandlingSubcontract(retriable_error_types=["X"], fatal_error_types=["X"])


def test_model_config_is_pydantic_v2_and_forbids_unknown_keys():
    assert ModelErrorHandlingSubcontract.model_config["extra"] == "forbid"
    assert "Config" not in vars(ModelErrorHandlingSubcontract)
    example = ModelErrorHandlingSubcontract.model_json_schema()["example"]
    assert example == {"enable_circuit_breaker": True, "circuit_failure_threshold": 5,
                       "error_retry_attempts": 3}
    with pytest.raises(ValidationError, match="enable_circuit_braker"):
        ModelErrorHandlingSubcontract(enable_circuit_braker=False)


def test_circuit_state_and_result_models():
    assert [s.value for s in EnumCircuitBreakerState] == ["closed", "open", "half_open"]
    assert EnumCircuitBreakerState.OPEN == "open"
    result = ModelErrorHandlingResult(error_category="transient", handling_action="retry",
                                      recovery_possible=True)
    assert result.recovery_suggestions == []
    with pytest.raises(ValidationError):
        ModelErrorHandlingResult(error_category="x", handling_action="y")
    with pytest.raises(ValidationError):
        ModelErrorHandlingResult(error_category="x", handling_action="y",
                                 recovery_possible=False, extra_field=1)


# -- Step 2/3: the YAML contract and the validator ---------------------------------------------


def test_seed_yaml_contract_validates_with_the_seed_output(capsys):
    code = main(["run", "contract_validator", "--contract", str(SEED_YAML)])
    assert code == 0
    assert capsys.readouterr().out == SEED_CHECK_LINES


def test_seed_yaml_contract_loads():
    model = load_contract(SEED_YAML)
    assert isinstance(model, ModelMixinContract)
    assert model.capability == "error_handling"
    assert ModelErrorHandlingSubcontract.model_validate(model.config) == \
        ModelErrorHandlingSubcontract()


def test_seed_common_validation_errors(tmp_path, capsys):
    cases = {
        "missing_description.yaml": (
            'mixin_name: "mixin_example"\nmixin_version: {major: 1, minor: 0, patch: 0}\n'
            'applicable_node_types: ["COMPUTE"]\n'
            'actions: [{name: a, description: d, inputs: [], outputs: []}]\n',
            ":1: 'description' field required"),
        "invalid_type.yaml": (
            'mixin_name: "mixin_example"\nmixin_version: {major: 1, minor: 0, patch: 0}\n'
            'description: "Example mixin description"\n'
            'applicable_node_types: ["COMPUTE", "INVALID_TYPE"]\n'
            'actions: [{name: a, description: d, inputs: [], outputs: []}]\n',
            ":4: applicable_node_types[1]: 'INVALID_TYPE' not in [COMPUTE, EFFECT, REDUCER, "
            "ORCHESTRATOR]"),
        "missing_outputs.yaml": (
            'mixin_name: "mixin_example"\nmixin_version: {major: 1, minor: 0, patch: 0}\n'
            'description: "Example mixin description"\napplicable_node_types: ["COMPUTE"]\n'
            'actions:\n  - name: "process_data"\n    description: "Process data"\n'
            '    inputs: ["data"]\n',
            ":6: actions[0]: 'outputs' field required"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert main(["run", "contract_validator", "--contract", str(path)]) == 1
        out = capsys.readouterr().out
        assert f"    ✗ {path}{expected}" in out, out


# -- Step 5: integration with a node ------------------------------------------------------------


class TestNodeWithErrorHandling(NodeCompute):
    """Test node with error handling mixin."""

    __test__ = False  # a node, not a pytest test class

    async def execute_compute(self, contract: ModelContractCompute):
        # Access error handling configuration
        error_config = contract.error_handling_configuration

        try:
            result = await self._risky_operation()
            return result
        except Exception as e:
            # Use mixin capabilities
            if error_config.enable_circuit_breaker:
                circuit_status = await self._check_circuit_breaker(
                    operation_key="risky_operation"
                )

                if circuit_status.status == "open":
                    raise RuntimeError("Circuit breaker open")

            # Retry logic
            if self._should_retry(e, error_config):
                return await self._retry_operation(error_config)

            raise

    # -- the pieces seed 002 leaves undefined --------------------------------------------------

    async def _risky_operation(self):
        self.__dict__["attempts"] = self.__dict__.get("attempts", 0) + 1
        raise ConnectionError("backend unreachable")

    async def _check_circuit_breaker(self, operation_key: str):
        failures = self.__dict__.get("attempts", 0)
        threshold = self.__dict__.get("circuit_threshold",
                                      ModelErrorHandlingSubcontract().circuit_failure_threshold)
        state = EnumCircuitBreakerState.OPEN if failures >= threshold else \
            EnumCircuitBreakerState.CLOSED
        return SimpleNamespace(status=state.value, failure_count=failures)

    def _should_retry(self, error: Exception, config: ModelErrorHandlingSubcontract) -> bool:
        return type(error).__name__ in config.retriable_error_types

    async def _retry_operation(self, config: ModelErrorHandlingSubcontract):
        last: Exception | None = None
        for _ in range(config.error_retry_attempts):
            try:
                return await self._risky_operation()
            except Exception as exc:
                last = exc
        raise RuntimeError(f"gave up after {config.error_retry_attempts} retries") from last


async def test_error_handling_mixin_integration():
    """Test error handling mixin integrated into node."""
    # Create contract with error handling mixin
    contract = ModelContractCompute(
        subcontracts=[
            ModelErrorHandlingSubcontract(
                enable_circuit_breaker=True,
                error_retry_attempts=3
            )
        ]
    )

    # Create node instance
    node = TestNodeWithErrorHandling()

    # Test error handling
    with pytest.raises(RuntimeError):
        await node.execute_compute(contract)
    assert node.attempts == 1 + 3  # the first call and three retries


async def test_integration_circuit_opens_at_the_threshold():
    contract = ModelContractCompute(subcontracts=[
        ModelErrorHandlingSubcontract(circuit_failure_threshold=1, error_retry_attempts=3)])
    node = TestNodeWithErrorHandling()
    node.circuit_threshold = contract.error_handling_configuration.circuit_failure_threshold
    with pytest.raises(RuntimeError, match="Circuit breaker open"):
        await node.execute_compute(contract)
    assert node.attempts == 1


# -- Step 6: the node-contract reference ("Basic Configuration") -----------------------------


def test_node_contract_reference_reaches_the_integration_field():
    contract = load_contract(NODE_CONTRACT, registry=_registry())
    assert isinstance(contract, ModelContractCompute)
    config = contract.error_handling_configuration
    assert isinstance(config, ModelErrorHandlingSubcontract)
    assert config == ModelErrorHandlingSubcontract()
    assert contract.subcontracts.error_handling is config
    assert hasattr(contract.subcontracts, "error_handling")
    assert not hasattr(contract.subcontracts, "caching")


def test_troubleshooting_missing_integration_field_wording():
    contract = ModelContractCompute(subcontracts=[ModelErrorHandlingSubcontract()])
    with pytest.raises(AttributeError) as info:
        contract.your_mixin_configuration
    message = str(info.value)
    assert message.startswith(
        "'ModelContractCompute' has no attribute 'your_mixin_configuration'")
    assert "known integration fields: error_handling_configuration" in message


def test_advanced_configuration_snippet():
    error_config = ModelErrorHandlingSubcontract(
        enable_circuit_breaker=True,
        circuit_failure_threshold=10,
        error_retry_attempts=5,
        error_retry_delay_ms=2000
    )
    contract = ModelContractCompute(subcontracts=[error_config])
    assert contract.error_handling_configuration is error_config


# -- contract-driven composition with an error_handling capability -----------------------------


class MixinErrorHandlingProbe:
    """A stand-in error_handling capability that records the configuration it is given."""

    __slots__ = ()

    def setup_error_handling(self, config=None) -> None:
        self.error_settings = coerce_config(ModelErrorHandlingSubcontract, config,
                                            "error_handling")


def _registry() -> Registry:
    reg = Registry(name="seed002")
    reg.register(MixinErrorHandlingProbe, name="error_handling",
                 config=ModelErrorHandlingSubcontract)
    return reg


def test_load_node_feeds_the_referenced_subcontract_to_its_capability():
    reg = _registry()
    cls = compose_from_contract(NODE_CONTRACT, registry=reg)
    assert issubclass(cls, _NodeCompute)
    assert cls.__composition__.capabilities == ("error_handling",)
    node = load_node(NODE_CONTRACT, registry=reg)
    assert node.error_settings == ModelErrorHandlingSubcontract()
    source = explain(node).to_dict()["capabilities"][0]["config_source"]
    assert "subcontracts[0] -> ../../mixins/mixin_error_handling.yaml" in source


def test_seed_node_contract_with_the_builtin_error_handling_capability():
    node = load_node(NODE_CONTRACT)
    assert "error_handling" in type(node).__composition__.capabilities
    assert node.contract.error_handling_configuration == ModelErrorHandlingSubcontract()


def test_load_node_with_an_inline_seed_subcontract():
    reg = _registry()
    contract = ModelContractCompute(subcontracts=[
        ModelErrorHandlingSubcontract(error_retry_attempts=7)])
    node = load_node(contract, registry=reg)
    assert node.error_settings.error_retry_attempts == 7


def test_reference_overrides_are_validated_by_the_model(tmp_path):
    root = tmp_path / "tree"
    (root / "mixins").mkdir(parents=True)
    (root / "nodes" / "n").mkdir(parents=True)
    (root / ".onex-root").touch()
    (root / "mixins" / "mixin_error_handling.yaml").write_text(SEED_YAML.read_text("utf-8"))
    contract = root / "nodes" / "n" / "contract.yaml"
    contract.write_text(
        "node_type: EFFECT\nsubcontracts:\n"
        "  - path: ../../mixins/mixin_error_handling.yaml\n"
        "    integration_field: errors\n"
        "    config: {error_retry_attempts: 6}\n")
    node = load_node(contract, registry=_registry())
    assert node.error_settings.error_retry_attempts == 6
    assert node.contract.errors.error_retry_attempts == 6
    contract.write_text(contract.read_text().replace("6}", "60}"))
    assert main(["validate", str(contract)]) == 1


def test_onex_validate_json_for_the_seed_contract():
    proc = subprocess.run([sys.executable, "-m", "onex_compose._cli", "validate", "--format",
                           "json", str(SEED_YAML)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    assert [c["name"] for c in data["reports"][0]["checks"]] == [
        line[2:] for line in SEED_CHECK_LINES.splitlines()]


def test_seed_model_is_a_plain_pydantic_model():
    assert issubclass(ModelErrorHandlingSubcontract, BaseModel)
