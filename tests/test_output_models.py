"""Pydantic models built from a contract's seed 002 ``output_models`` entries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml
from pydantic import ValidationError

from onex_compose import Registry
from onex_compose._registry import CapabilitySpec
from onex_compose.capabilities._output_models import (
    UnknownOutputModelError,
    output_model,
    output_model_names,
)
from onex_compose.exceptions import UnknownCapabilityError

# seed 002's "Step 2: output models" example, as data
SEED_RESULT = {
    "error_category": "network",
    "handling_action": "retry",
    "recovery_possible": True,
    "recovery_suggestions": ["check the connection", "retry later"],
}


def test_error_handling_result_accepts_the_seed_shape() -> None:
    Model = output_model("error_handling", "error_handling_result")
    value = Model.model_validate(SEED_RESULT)
    assert value.model_dump() == SEED_RESULT
    assert Model.__name__ == "ErrorHandlingResult"


def test_error_handling_result_rejects_maybe() -> None:
    Model = output_model("error_handling", "error_handling_result")
    with pytest.raises(ValidationError) as info:
        Model.model_validate({**SEED_RESULT, "recovery_possible": "maybe"})
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("recovery_possible",)]


def test_fields_are_required_and_unknown_keys_refused() -> None:
    Model = output_model("error_handling", "error_handling_result")
    missing = dict(SEED_RESULT)
    del missing["handling_action"]
    with pytest.raises(ValidationError, match="handling_action"):
        Model.model_validate(missing)
    with pytest.raises(ValidationError, match="recovery_posible"):
        Model.model_validate({**SEED_RESULT, "recovery_posible": True})
    with pytest.raises(ValidationError, match=r"recovery_suggestions\.1"):
        Model.model_validate({**SEED_RESULT, "recovery_suggestions": ["a", {"b": 1}]})


def test_type_mapping_of_the_seed_models() -> None:
    Status = output_model("error_handling", "circuit_status_result")
    ok = Status.model_validate({"status": "open", "failure_count": 3, "failure_rate": 12.5,
                                "last_failure_time": "2026-12-04T10:00:00+01:00"})
    assert ok.last_failure_time == datetime(2026, 12, 4, 9, 0, tzinfo=UTC)  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="timezone"):  # timestamp = aware datetime
        Status.model_validate({"status": "open", "failure_count": 3, "failure_rate": 1.0,
                               "last_failure_time": "2026-12-04T10:00:00"})
    with pytest.raises(ValidationError, match="failure_count"):
        Status.model_validate({"status": "open", "failure_count": "three", "failure_rate": 1.0,
                               "last_failure_time": "2026-12-04T10:00:00Z"})
    Retry = output_model("error_handling", "retry_decision_result")
    assert set(Retry.model_fields) == {"should_retry", "retry_delay_ms", "retry_attempt",
                                       "max_attempts_reached"}


def test_models_are_cached() -> None:
    a = output_model("error_handling", "error_handling_result")
    assert output_model("error_handling", "error_handling_result") is a


def test_unknown_model_name_says_did_you_mean() -> None:
    with pytest.raises(UnknownOutputModelError) as info:
        output_model("error_handling", "error_handling_reslt")
    text = str(info.value)
    assert "did you mean 'error_handling_result'?" in text
    assert "circuit_status_result" in text  # the known ones are listed
    assert isinstance(info.value, LookupError)
    assert info.value.known == output_model_names("error_handling")


def test_unknown_capability_says_did_you_mean() -> None:
    with pytest.raises(UnknownCapabilityError, match="Did you mean 'error_handling'"):
        output_model("error_handlin", "error_handling_result")


def test_nested_objects_and_arrays_from_a_private_contract(tmp_path) -> None:
    contract = {
        "mixin_name": "mixin_shapes",
        "mixin_version": {"major": 1, "minor": 0, "patch": 0},
        "description": "A contract whose output models nest objects and arrays",
        "applicable_node_types": ["COMPUTE"],
        "actions": [{"name": "shape", "description": "Shape data", "inputs": ["x"],
                     "outputs": ["order_result"]}],
        "output_models": {"order_result": {
            "id": "string",
            "when": "timestamp",
            "customer": {"type": "object", "properties": {
                "name": "string", "tags": {"type": "array", "items": "string"}}},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "sku": "string", "qty": "integer", "price": "float"}}},
            "meta": "object",
            "anything": "array",
        }},
    }
    path = tmp_path / "mixin_shapes.yaml"
    path.write_text(yaml.safe_dump(contract), "utf-8")
    reg = Registry()
    reg.register(CapabilitySpec(name="shapes", mixin_ref="nowhere:Mixin", contract=str(path)))
    Model = output_model("shapes", "order_result", registry=reg)
    good = {"id": "o1", "when": "2026-12-04T10:00:00Z",
            "customer": {"name": "Ada", "tags": ["vip"]},
            "lines": [{"sku": "A", "qty": 2, "price": 1.5}],
            "meta": {"k": [1, 2]}, "anything": [1, "x", None]}
    value = Model.model_validate(good)
    assert value.customer.tags == ["vip"]  # type: ignore[attr-defined]
    assert type(value.customer).__name__ == "OrderResultCustomer"  # type: ignore[attr-defined]
    with pytest.raises(ValidationError) as info:
        Model.model_validate({**good, "lines": [{"sku": "A", "qty": "two", "price": 1.5}]})
    assert [e["loc"] for e in info.value.errors()] == [("lines", 0, "qty")]
    with pytest.raises(ValidationError):
        Model.model_validate({**good, "customer": {"name": "Ada", "tags": "vip"}})
    # the default registry does not know this capability
    with pytest.raises(UnknownCapabilityError):
        output_model("shapes", "order_result")


def test_capability_without_output_models(tmp_path) -> None:
    with pytest.raises(UnknownOutputModelError, match="no output model 'x'.*none"):
        output_model("node_service", "x")
    reg = Registry()
    reg.register(CapabilitySpec(name="bare", mixin_ref="nowhere:Mixin"))
    with pytest.raises(UnknownOutputModelError, match="'bare' declares no output model"):
        output_model("bare", "x", registry=reg)
