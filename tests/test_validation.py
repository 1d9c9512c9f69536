"""Tests of the validation capability: models from config, annotations, node contracts and
actions; error reporting; output errors; pipeline position; fail-fast helpers; hypothesis."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger
from pydantic import BaseModel, create_model
from validation_models import Item, Order, Quantities

from onex_compose import (
    ConfigurationError,
    NodeCompute,
    NodeEffect,
    compose,
    explain,
    load_node,
)
from onex_compose.capabilities.rate_limiting import RateLimitExceededError
from onex_compose.capabilities.validation import (
    FailFastError,
    InputValidationError,
    OutputValidationError,
    ValidationConfig,
    Validator,
    fail_fast,
)

CONTRACT = Path(__file__).parent.parent / "capabilities" / "mixin_validation.yaml"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


GOOD = {"customer": "ann", "items": [{"sku": "a", "qty": 1}], "total": 9.5}


class Annotated(NodeCompute):
    """process() annotated: the models come from the annotations."""

    async def process(self, order: Order) -> float:
        self.seen = order
        return order.total


class Unannotated(NodeCompute):
    async def process(self, data):  # type: ignore[no-untyped-def]
        self.seen = data
        return data


# -- contract and configuration ----------------------------------------------------------------


def test_config_section_matches_model() -> None:
    section = yaml.safe_load(CONTRACT.read_text("utf-8"))["validation_config"]
    assert section == ValidationConfig().model_dump(mode="json")


def test_contract_metrics_cover_what_the_code_counts() -> None:
    declared = {m["name"] for m in yaml.safe_load(CONTRACT.read_text("utf-8"))["metrics"]}
    node = compose(Annotated, ["validation"])()
    run(node.process(GOOD))
    with pytest.raises(InputValidationError):
        run(node.process({}))
    counted = {key.split("{")[0] for key in node.metrics.snapshot()["counters"]}
    assert counted == {"validations_total"} <= declared


def test_registered_with_guard_rank_35_and_placed_between_metrics_and_caching() -> None:
    cls = compose(Annotated, ["validation", "caching", "retry", "rate_limiting", "logging"])
    assert cls.__onex_pipeline__ == ("logging", "metrics", "validation", "caching", "retry",
                                     "rate_limiting")
    assert "validation" in explain(cls).to_dict()["pipeline"]


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="strct"):
        compose(Annotated, ["validation"])(capability_config={"validation": {"strct": True}})


# -- where the model comes from ----------------------------------------------------------------


def test_annotated_process_validates_input_and_output_resolved_once_per_class() -> None:
    cls = compose(Annotated, ["validation"])
    node = cls()
    assert run(node.process(GOOD)) == 9.5
    assert isinstance(node.seen, Order) and node.seen.items[0] == Item(sku="a", qty=1)
    with pytest.raises(InputValidationError):
        run(node.process({"customer": "ann"}))
    from onex_compose.capabilities import validation as mod

    assert cls in mod._signatures  # resolved once for the class, shared by its instances
    assert cls().validator.input_schema.type is Order


def test_any_or_missing_annotation_is_not_checked() -> None:
    node = compose(Unannotated, ["validation"])()
    assert node.validator.plan is None
    assert run(node.process({"whatever": 1})) == {"whatever": 1}
    assert node._onex_chain[1] is not None


def test_model_from_config_reference_overrides_annotations() -> None:
    node = compose(Unannotated, ["validation"])(capability_config={"validation": {
        "input_model": "validation_models:Item"}})
    run(node.process({"sku": "x", "qty": "3"}))
    assert node.seen == Item(sku="x", qty=3)
    with pytest.raises(InputValidationError, match="model Item"):
        run(node.process({"sku": "x"}))


def test_any_type_adapter_accepts_works_as_a_reference() -> None:
    node = compose(Unannotated, ["validation"])(capability_config={"validation": {
        "input_model": "validation_models:Quantities"}})
    assert run(node.process(["1", 2])) == [1, 2]
    with pytest.raises(InputValidationError) as info:
        run(node.process([1, "x", 3]))
    assert info.value.errors[0]["loc"] == "1"
    assert node.validator.check(["4"], Quantities) == [4]


@pytest.mark.parametrize(("ref", "fragment"), [
    ("validation_models:Ordr", "has no attribute 'Ordr' (did you mean 'Order'?)"),
    ("validation_models:not_a_type", "is a int, not a type"),
    ("validation_modelz:Order", "cannot import module 'validation_modelz'"),
    ("validation_modelz:Order", "(did you mean 'validation_models'?)"),
    ("json.decodr:X", "(did you mean 'decoder'?)"),
    ("validation_models.Order", "is not a model reference"),
])
def test_bad_model_references_are_configuration_errors_at_setup(ref: str, fragment: str) -> None:
    cls = compose(Unannotated, ["validation"])
    with pytest.raises(ConfigurationError) as info:
        cls(capability_config={"validation": {"output_model": ref}})
    assert fragment in str(info.value)
    assert "output_model" in str(info.value)


def test_unresolvable_annotation_is_a_configuration_error() -> None:
    class Broken(NodeCompute):
        async def process(self, data: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
            return 1

    cls = compose(Broken, ["validation"])
    with pytest.raises(ConfigurationError, match="cannot resolve the annotations"):
        cls()
    cls(capability_config={"validation": {"from_annotations": False}})  # the way out


def test_validation_subcontract_in_a_yaml_node_contract(tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(yaml.safe_dump({
        "node_type": "COMPUTE", "name": "orders", "capabilities": ["validation"],
        "subcontracts": {"validation": {"input_model": "validation_models:Order",
                                        "output_model": "validation_models:Receipt",
                                        "strict": True}}}), "utf-8")

    class Receipts(NodeCompute):
        async def process(self, order):  # type: ignore[no-untyped-def]
            return {"order_total": order.total, "lines": len(order.items)}

    node = load_node(path, base=Receipts)
    assert node.validator.config.strict is True
    result = run(node.process(GOOD))
    assert result.order_total == 9.5 and result.lines == 1  # the output, validated
    with pytest.raises(InputValidationError):  # strict: "9.5" is not a float
        run(node.process({**GOOD, "total": "9.5"}))


class Users(NodeEffect):
    async def process(self, request):  # type: ignore[no-untyped-def]
        if request.action == "create":
            return {"user_id": 7} if request.name != "bug" else {"user_id": "seven"}
        return {"deleted": True}


USERS = {"action_key": "action", "actions": {
    "create": {"input_model": "validation_models:CreateUser",
               "output_model": "validation_models:Created"},
    "delete": {"input_model": "validation_models:DeleteUser",
               "output_model": "validation_models:Deleted"}}}


def test_multi_action_node_validates_each_action_with_its_models() -> None:
    node = compose(Users, ["validation"])(capability_config={"validation": USERS})
    assert run(node.process({"action": "create", "name": "ann", "age": "3"})).user_id == 7
    assert run(node.process({"action": "delete", "user_id": 7})).deleted is True
    with pytest.raises(InputValidationError) as info:
        run(node.process({"action": "delete", "name": "ann"}))
    assert [e["loc"] for e in info.value.errors] == ["user_id"]
    assert info.value.action == "delete"
    with pytest.raises(OutputValidationError, match="action 'create'"):
        run(node.process({"action": "create", "name": "bug", "age": 1}))


def test_undeclared_or_missing_action_is_an_input_error_listing_the_declared_ones() -> None:
    node = compose(Users, ["validation"])(capability_config={"validation": USERS})
    with pytest.raises(InputValidationError) as info:
        run(node.process({"action": "creat", "name": "x"}))
    text = str(info.value)
    assert "undeclared action 'creat' (did you mean 'create'?)" in text
    assert "declared actions: ['create', 'delete']" in text
    assert info.value.errors[0]["loc"] == "action"
    with pytest.raises(InputValidationError, match="action key is missing"):
        run(node.process({"name": "x"}))
    with pytest.raises(InputValidationError, match="declared actions"):
        node.validator.validate_input({"action": "purge"})
    assert node.validator.validate_output({"deleted": 1}, action="delete").deleted is True
    with pytest.raises(KeyError, match="did you mean 'delete'"):
        node.validator.validate_output({}, action="delet")


# -- error reporting ---------------------------------------------------------------------------


def test_three_wrong_fields_give_three_errors_with_paths() -> None:
    node = compose(Annotated, ["validation"])()
    bad = {"customer": 5, "items": [{"sku": "a", "qty": 1}] * 3 + [{"sku": "b", "qty": "x"}],
           "total": "lots"}
    with pytest.raises(InputValidationError) as info:
        run(node.process(bad))
    err = info.value
    assert [e["loc"] for e in err.errors] == ["customer", "items.3.qty", "total"]
    assert all(set(e) == {"loc", "msg", "type"} for e in err.errors)
    assert err.total == 3 and "(3 errors)" in str(err)
    for loc in ("customer:", "items.3.qty:", "total:"):
        assert f"- {loc}" in str(err)
    assert err.onex_retriable is False and err.onex_breaker_neutral is True
    assert isinstance(err, ValueError)
    assert pickle.loads(pickle.dumps(err)).errors == err.errors


def test_max_errors_bounds_the_list_and_says_how_many_more() -> None:
    node = compose(Unannotated, ["validation"])(capability_config={"validation": {
        "input_model": "validation_models:Quantities", "max_errors": 2}})
    with pytest.raises(InputValidationError) as info:
        run(node.process(["a", "b", "c", "d"]))
    assert len(info.value.errors) == 2 and info.value.total == 4
    assert "and 2 more" in str(info.value)


def test_secret_looking_field_values_are_not_echoed() -> None:
    class Login(BaseModel):
        user: str
        password: int
        api_key: int

    v = Validator(ValidationConfig())
    with pytest.raises(InputValidationError) as info:
        v.check({"user": 3, "password": "hunter2-secret", "api_key": "sk-live-zzz"}, Login)
    text = str(info.value)
    assert "hunter2" not in text and "sk-live" not in text
    assert "input=3" in text  # a harmless field still shows its value
    assert "secret-looking field" in text


def test_strict_mode_refuses_what_lax_mode_coerces() -> None:
    cls = compose(Unannotated, ["validation"])
    lax = cls(capability_config={"validation": {"input_model": "validation_models:Item"}})
    strict = cls(capability_config={"validation": {"input_model": "validation_models:Item",
                                                   "strict": True}})
    assert run(lax.process({"sku": "a", "qty": "1"})) == Item(sku="a", qty=1)
    with pytest.raises(InputValidationError) as info:
        run(strict.process({"sku": "a", "qty": "1"}))
    assert info.value.errors[0]["loc"] == "qty"
    assert run(strict.process({"sku": "a", "qty": 1})) == Item(sku="a", qty=1)


def test_pass_model_false_passes_the_original_data_once_validated() -> None:
    cls = compose(Unannotated, ["validation"])
    node = cls(capability_config={"validation": {"input_model": "validation_models:Item",
                                                 "pass_model": False}})
    data = {"sku": "a", "qty": "1"}
    assert run(node.process(data)) is data  # the original object, not the model
    with pytest.raises(InputValidationError):
        run(node.process({"sku": "a"}))
    on = cls(capability_config={"validation": {"input_model": "validation_models:Item"}})
    assert run(on.process(data)) == Item(sku="a", qty=1)


def test_input_given_by_keyword_is_validated_and_replaced() -> None:
    node = compose(Annotated, ["validation"])()
    assert run(node.process(order=GOOD)) == 9.5
    assert isinstance(node.seen, Order)
    with pytest.raises(InputValidationError):
        run(node.process(order={"customer": "x"}))


# -- output ------------------------------------------------------------------------------------


class WrongOutput(NodeCompute):
    calls: list[Any] = []

    async def process(self, order: Order) -> int:
        WrongOutput.calls.append(order)
        return "not a number"  # type: ignore[return-value]


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []
    logger.enable("onex_compose")
    handler = logger.add(lambda m: captured.append(
        {"message": m.record["message"], "level": m.record["level"].name,
         "extra": dict(m.record["extra"])}), level="DEBUG", format="{message}")
    try:
        yield captured
    finally:
        logger.remove(handler)
        logger.disable("onex_compose")


def test_wrong_output_raises_is_not_retried_and_is_logged(records: list[dict[str, Any]]) -> None:
    WrongOutput.calls.clear()
    node = compose(WrongOutput, ["validation", "retry"])(capability_config={
        "retry": {"max_attempts": 5, "sleep": False}})
    with pytest.raises(OutputValidationError) as info:
        run(node.process(GOOD))
    assert len(WrongOutput.calls) == 1  # outside retry: never retried, never hidden
    err = info.value
    assert isinstance(err, TypeError) and err.onex_retriable is False
    assert err.operation == "WrongOutput.process" and "WrongOutput.process" in str(err)
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1 and "WrongOutput.process" in errors[0]["message"]
    snap = node.metrics.snapshot()["counters"]
    assert snap['validations_total{direction="output",outcome="invalid"}'] == 1
    assert snap['validations_total{direction="input",outcome="ok"}'] == 1


def test_output_errors_go_through_the_nodes_logger_when_logging_is_composed(
        records: list[dict[str, Any]]) -> None:
    node = compose(WrongOutput, ["validation", "logging"])(node_id="n-9")
    with pytest.raises(OutputValidationError):
        run(node.process(GOOD))
    errors = [r for r in records if r["level"] == "ERROR"]
    assert errors and errors[0]["extra"].get("node_id") == "n-9"


def test_validate_output_off_lets_the_wrong_output_through() -> None:
    node = compose(WrongOutput, ["validation"])(capability_config={"validation": {
        "validate_output": False}})
    assert run(node.process(GOOD)) == "not a number"


# -- pipeline position -------------------------------------------------------------------------


def test_bad_input_spends_no_rate_limit_permit() -> None:
    node = compose(Annotated, ["validation", "rate_limiting"])(capability_config={
        "rate_limiting": {"limit": 1, "period": 3600}})
    for _ in range(10):
        with pytest.raises(InputValidationError):
            run(node.process({"customer": "x"}))
    assert run(node.process(GOOD)) == 9.5  # the one permit was still there
    with pytest.raises(RateLimitExceededError):
        run(node.process(GOOD))


def test_bad_input_reaches_neither_cache_nor_retry() -> None:
    node = compose(Annotated, ["validation", "caching", "retry"])(capability_config={
        "caching": {"wrap_process": True}, "retry": {"max_attempts": 3, "sleep": False}})
    with pytest.raises(InputValidationError):
        run(node.process({"customer": "x"}))
    assert node.cache.stats()["entries"] == 0
    snap = node.metrics.snapshot()["counters"]
    assert not any(k.startswith("retry_attempts_total") for k in snap)


class SyncOrders(NodeCompute):
    def process(self, order: Order) -> float:
        return order.total


def test_sync_process_is_guarded_and_stays_sync() -> None:
    cls = compose(SyncOrders, ["validation", "rate_limiting"])
    assert cls.__onex_pipeline_kind__ == "sync"
    node = cls(capability_config={"rate_limiting": {"limit": 1, "period": 3600}})
    for _ in range(3):
        with pytest.raises(InputValidationError):
            node.process({"total": "x"})
    assert node.process(GOOD) == 9.5


def test_both_directions_off_removes_the_guard_and_reconfiguring_restores_it() -> None:
    cls = compose(Annotated, ["validation"])
    node = cls(capability_config={"validation": {"validate_input": False,
                                                 "validate_output": False}})
    with pytest.raises(AttributeError):  # not validated: process() itself fails on the dict
        run(node.process({"anything": 1}))
    # the guard stepped aside: metrics' link wraps the bound process() itself, no link between
    assert inspect.ismethod(node._onex_chain[1].__wrapped__)
    node.setup_validation({})
    with pytest.raises(InputValidationError):
        run(node.process({"anything": 1}))
    assert not inspect.ismethod(node._onex_chain[1].__wrapped__)
    node.setup_validation({"validate_input": False, "validate_output": False})
    assert node.validator.plan is None


def test_a_validator_assigned_directly_is_followed() -> None:
    node = compose(Unannotated, ["validation"])(capability_config={"validation": {
        "input_model": "validation_models:Item"}})
    assert run(node.process({"sku": "a", "qty": 1})) == Item(sku="a", qty=1)
    node.validator = Validator(ValidationConfig(input_model="validation_models:Order"),
                               owner=type(node))
    with pytest.raises(InputValidationError, match="model Order"):
        run(node.process({"sku": "a", "qty": 1}))

    sync = compose(SyncOrders, ["validation"])()
    assert sync.process(GOOD) == 9.5
    sync.validator = Validator(ValidationConfig(input_model="validation_models:Item"))
    with pytest.raises(InputValidationError, match="model Item"):
        sync.process(GOOD)


def test_works_across_repeated_event_loops_and_pickles() -> None:
    node = compose(Annotated, ["validation"])()
    for _ in range(3):
        assert run(node.process(GOOD)) == 9.5
    copy = pickle.loads(pickle.dumps(node))
    with pytest.raises(InputValidationError):
        run(copy.process({}))


# -- ad hoc checks -----------------------------------------------------------------------------


def test_validate_input_output_and_check_on_the_facility() -> None:
    node = compose(Annotated, ["validation"])()
    v = node.validator
    assert v.validate_input(GOOD) == Order.model_validate(GOOD)
    assert v.validate_output("2.5") == 2.5
    with pytest.raises(OutputValidationError):
        v.validate_output("x")
    assert v.check("3", int) == 3
    with pytest.raises(InputValidationError, match="model int"):
        v.check("x", int)
    assert "Validator input=Order" in repr(v)


# -- fail-fast helpers (omnibase's wording, word for word) --------------------------------------


def test_require() -> None:
    v = Validator()
    assert v.require(0, "x") == 0
    with pytest.raises(FailFastError) as info:
        v.require(None, "x")
    assert str(info.value) == "Required field 'x' is missing"
    assert (info.value.code, info.value.field) == ("REQUIRED", "x")


@pytest.mark.parametrize("empty", ["", [], {}, None, (), set()])
def test_not_empty(empty: Any) -> None:
    with pytest.raises(FailFastError) as info:
        Validator.not_empty(empty, "x")
    assert str(info.value) == "Field 'x' cannot be empty" and info.value.code == "EMPTY"


def test_not_empty_passes_values_through() -> None:
    assert Validator.not_empty([1], "x") == [1]
    assert Validator.not_empty(0, "x") == 0  # a number is not "empty"


def test_one_of() -> None:
    assert Validator.one_of("a", ["a", "b"], "x") == "a"
    with pytest.raises(FailFastError) as info:
        Validator.one_of("v", ["a", "b"], "x")
    assert str(info.value) == "Field 'x' must be one of ['a', 'b'] got 'v'"
    assert info.value.code == "NOT_ALLOWED"
    with pytest.raises(FailFastError) as info:
        Validator.one_of("hunter2", ["a"], "password")
    assert "hunter2" not in str(info.value)


def test_dependency_falsy_or_raising_check() -> None:
    v = Validator()

    async def up() -> bool:
        return True

    def boom() -> bool:
        raise ConnectionError("refused by redis://:hunter2@cache:6379")

    run(v.dependency(up, "redis"))
    run(v.dependency(lambda: 1, "redis"))
    with pytest.raises(FailFastError) as info:
        run(v.dependency(lambda: False, "redis"))
    assert info.value.code == "DEPENDENCY_FAILED" and info.value.field == "redis"
    with pytest.raises(FailFastError) as info:
        run(v.dependency(boom, "redis"))
    assert info.value.code == "DEPENDENCY_FAILED"
    assert isinstance(info.value.__cause__, ConnectionError)  # the cause is kept
    assert "hunter2" not in str(info.value)


def test_ensure() -> None:
    Validator.ensure(True, "fine")
    with pytest.raises(FailFastError) as info:
        Validator.ensure(1 > 2, "one must exceed two")
    assert str(info.value) == "one must exceed two"
    assert info.value.code == "CONTRACT_VIOLATION" and info.value.field is None


def test_fail_fast_decorator_passes_results_and_never_exits() -> None:
    @fail_fast
    def ok(x: int) -> int:
        return x + 1

    @fail_fast
    def bad() -> None:
        raise KeyError("k")

    @fail_fast
    def exits() -> None:
        sys.exit(3)

    @fail_fast
    def own() -> None:
        Validator.require(None, "y")

    @Validator.fail_fast
    async def async_bad() -> None:
        raise RuntimeError("nope")

    assert ok(1) == 2
    with pytest.raises(FailFastError) as info:
        bad()
    assert info.value.code == "UNEXPECTED" and isinstance(info.value.__cause__, KeyError)
    with pytest.raises(FailFastError) as info:  # never a SystemExit
        exits()
    assert info.value.code == "UNEXPECTED" and isinstance(info.value.__cause__, SystemExit)
    with pytest.raises(FailFastError) as info:
        own()
    assert info.value.code == "REQUIRED"  # its own errors pass through unchanged
    with pytest.raises(FailFastError, match="RuntimeError: nope"):
        run(async_bad())


# -- hypothesis --------------------------------------------------------------------------------


_FIELD_TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "int": (int, st.integers(-(2**63), 2**63 - 1)),
    "str": (str, st.text(max_size=20)),
    "float": (float, st.floats(allow_nan=False, allow_infinity=False)),
    "bool": (bool, st.booleans()),
    "ints": (list[int], st.lists(st.integers(-1000, 1000), max_size=5)),
    "strs": (dict[str, str], st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                             max_size=3)),
}


@st.composite
def model_and_instance(draw: st.DrawFn) -> tuple[type[BaseModel], dict[str, Any], str]:
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1,
                          max_size=6, unique=True))
    kinds = [draw(st.sampled_from(sorted(_FIELD_TYPES))) for _ in names]
    model = create_model("Generated", **{n: (_FIELD_TYPES[k][0], ...)  # type: ignore[call-overload]
                                         for n, k in zip(names, kinds, strict=True)})
    data = {n: draw(_FIELD_TYPES[k][1]) for n, k in zip(names, kinds, strict=True)}
    mutated = draw(st.sampled_from(names))
    return model, data, mutated


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_instance())
def test_generated_models_valid_data_round_trips_and_a_mutated_field_is_located(
        case: tuple[type[BaseModel], dict[str, Any], str]) -> None:
    model, data, mutated = case
    for strict in (False, True):
        v = Validator(ValidationConfig(strict=strict))
        assert v.check(data, model).model_dump() == data
        bad = {**data, mutated: {"not": object()}}  # no field type accepts this
        with pytest.raises(InputValidationError) as info:
            v.check(bad, model)
        assert [e["loc"].split(".")[0] for e in info.value.errors] == [mutated]


# -- check_output: seed 002 output models ------------------------------------------------------


SEED_RESULT = {"error_category": "transient", "handling_action": "retry",
               "recovery_possible": True, "recovery_suggestions": ["wait", "retry"]}


def test_check_output_accepts_seed_002_shape_and_rejects_a_wrong_field() -> None:
    from onex_compose.capabilities._output_models import UnknownOutputModelError

    v = compose(NodeCompute, ["validation"])().validator
    model = v.check_output("error_handling", "error_handling_result", SEED_RESULT)
    assert model.recovery_suggestions == ["wait", "retry"]
    with pytest.raises(OutputValidationError) as info:
        v.check_output("error_handling", "error_handling_result",
                       {**SEED_RESULT, "recovery_possible": "maybe"})
    assert [e["loc"] for e in info.value.errors] == ["recovery_possible"]
    assert "error_handling_result" in str(info.value)
    with pytest.raises(UnknownOutputModelError, match="did you mean 'error_handling_result'"):
        v.check_output("error_handling", "error_handlng_result", SEED_RESULT)


def test_check_output_against_validations_own_contract_models() -> None:
    v = Validator()
    with pytest.raises(InputValidationError) as info:
        v.check({"customer": 1}, Order)
    err = info.value
    shape = {"model": err.model, "total": err.total, "action": "", "errors": err.errors}
    assert v.check_output("validation", "validation_error", shape).total == 3
    with pytest.raises(OutputValidationError):
        v.check_output("validation", "validation_error", {**shape, "errors": [{"loc": 1}]})


class Opaque:
    pass


class OpaqueNode(NodeCompute):
    async def process(self, data: Opaque) -> int:
        return 1


def test_an_annotation_pydantic_cannot_validate_is_a_configuration_error_with_the_way_out() -> None:
    cls = compose(OpaqueNode, ["validation"])
    with pytest.raises(ConfigurationError, match="pydantic cannot validate") as info:
        cls()
    assert "from_annotations: false" in str(info.value)
    assert run(cls(capability_config={"validation": {"from_annotations": False}}).process(
        Opaque())) == 1
