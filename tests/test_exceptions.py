"""The exception tree: roots, built-in bases, carried data, folding, messages, pickling."""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest

import onex_compose
from onex_compose import exceptions as exc_mod
from onex_compose.exceptions import (
    CapabilityConflictError,
    CompositionError,
    ConfigurationError,
    ContractError,
    DependencyCycleError,
    MixinDefinitionError,
    MROError,
    NotApplicableError,
    OnexError,
    RegistrationError,
    ServiceUnavailableError,
    UnknownCapabilityError,
    did_you_mean,
)

TREE = {
    CompositionError: (OnexError,),
    UnknownCapabilityError: (CompositionError, LookupError),
    DependencyCycleError: (CompositionError, ValueError),
    CapabilityConflictError: (CompositionError, TypeError),
    NotApplicableError: (CompositionError, TypeError),
    MixinDefinitionError: (CompositionError, TypeError),
    MROError: (CompositionError, TypeError),
    RegistrationError: (CompositionError, ValueError),
    ConfigurationError: (OnexError, ValueError),
    ContractError: (OnexError, ValueError),
    ServiceUnavailableError: (OnexError, RuntimeError),
}


@pytest.mark.parametrize(("cls", "bases"), list(TREE.items()), ids=lambda v: getattr(v, "__name__", ""))
def test_every_error_has_its_root_and_its_builtin(cls: type, bases: tuple[type, ...]) -> None:
    for base in bases:
        assert issubclass(cls, base), f"{cls.__name__} must subclass {base.__name__}"
    assert issubclass(cls, OnexError)


def test_configuration_and_contract_errors_are_not_composition_errors() -> None:
    assert not issubclass(ConfigurationError, CompositionError)
    assert not issubclass(ContractError, CompositionError)


def test_docstring_tree_names_every_error_class() -> None:
    doc = exc_mod.__doc__ or ""
    drawn = set(re.findall(r"([A-Z][A-Za-z]+Error)\b", doc))
    classes = {n for n in exc_mod.__all__ if n.endswith("Error")}
    assert classes <= drawn | {"OnexError"}
    assert "OnexError" in doc


def test_errors_are_exported_from_the_package() -> None:
    for cls in TREE:
        assert getattr(onex_compose, cls.__name__) is cls


def test_did_you_mean() -> None:
    assert did_you_mean("cachng", ["caching", "metrics"]) == " (did you mean 'caching'?)"
    assert did_you_mean("zzzzzz", ["caching"]) == ""
    assert did_you_mean("x", []) == ""


def test_single_error_lists_itself_and_str_is_the_message() -> None:
    err = CompositionError("broken")
    assert err.errors == [err] and str(err) == "broken" and err.args == ("broken",)


def _unknown(name: str) -> UnknownCapabilityError:
    return UnknownCapabilityError(name, ["caching", "metrics"])


def test_collect_single_problem_returns_it() -> None:
    one = _unknown("cachng")
    assert CompositionError.collect([one]) is one


def test_collect_one_kind_keeps_the_kind_and_the_first_problems_data() -> None:
    problems = [_unknown("cachng"), _unknown("metrix")]
    err = CompositionError.collect(problems)
    assert type(err) is UnknownCapabilityError
    assert err.errors == problems
    assert err.name == "cachng" and err.suggestion == "caching"  # type: ignore[attr-defined]
    assert str(err).splitlines()[0] == "2 problems in one composition:"
    assert str(err).splitlines()[1].startswith("  1. Unknown capability 'cachng'")
    assert str(err).splitlines()[2].startswith("  2. Unknown capability 'metrix'")


def test_collect_mixed_kinds_is_a_plain_composition_error() -> None:
    problems: list[CompositionError] = [
        _unknown("x"), DependencyCycleError(["a", "b", "a"], ["a requires b", "b requires a"])]
    err = CompositionError.collect(problems)
    assert type(err) is CompositionError and err.errors == problems
    with pytest.raises(CompositionError):
        raise err


def test_unknown_capability_error_data_and_message() -> None:
    err = UnknownCapabilityError("cachng", ["metrics", "caching"], what="capability")
    assert err.name == "cachng" and err.known == ["caching", "metrics"]
    assert err.suggestion == "caching"
    assert str(err) == ("Unknown capability 'cachng'. Did you mean 'caching'? Known names: "
                        "caching, metrics. Register it with registry.register(...) or install "
                        "the package that provides it.")


def test_cycle_error_data_and_message() -> None:
    err = DependencyCycleError(["a", "b", "c", "a"], ["b after a", "c requires b", "a requires c"])
    assert err.cycle == ["a", "b", "c", "a"]
    assert "Dependency cycle: a -> b -> c -> a." in str(err)
    assert "Constraints on the loop: b after a; c requires b; a requires c." in str(err)


@pytest.mark.parametrize(("kind", "fragment"), [
    ("declared", "declare each other as conflicting"),
    ("protocol", "both provide protocol 'p'"),
    ("member", "both define public name 'p'"),
    ("base-member", "both define public name 'p'"),
])
def test_conflict_error_wording_per_kind(kind: str, fragment: str) -> None:
    err = CapabilityConflictError("a", "b", kind=kind, member="p",
                                  where={"a": "a.py:1", "b": "b.py:2"})
    text = str(err)
    assert text.startswith("Capabilities 'a' and 'b' ")
    assert fragment in text
    assert "(a at a.py:1; b at b.py:2)" in text
    assert "Ways out:" in text
    assert (err.first, err.second, err.kind, err.member) == ("a", "b", kind, "p")


def test_conflict_error_custom_hint_replaces_the_default_ways_out() -> None:
    err = CapabilityConflictError("a", "b", kind="declared", hint="do this instead")
    assert str(err).endswith("do this instead.")
    assert "Ways out" not in str(err)


def test_not_applicable_error_is_worded_as_the_seed() -> None:
    err = NotApplicableError("metrics", "COMPUTE", ["REDUCER", "EFFECT"])
    assert str(err).startswith("Mixin 'mixin_metrics' not applicable to node type 'COMPUTE'")
    assert err.applicable == ["EFFECT", "REDUCER"] and err.mixin == "mixin_metrics"


def test_mro_error_names_base_capabilities_and_tried_order() -> None:
    class Base:
        pass

    class M:
        pass

    err = MROError(Base, ["m"], [Base, M], "layout clash")
    assert str(err).startswith("Cannot build ")
    assert "layout clash" in str(err) and err.tried == [Base, M] and err.capabilities == ["m"]


def test_configuration_error_lists_problems() -> None:
    err = ConfigurationError("bad config:", capability="retry",
                             problems=["max_attempts: too big", "x: unknown key"])
    assert str(err) == "bad config:\n  - max_attempts: too big\n  - x: unknown key"
    assert err.capability == "retry"


def test_contract_error_lists_problems_with_file_and_line() -> None:
    err = ContractError("invalid contract:", source="mixin_x.yaml",
                        problems=[{"path": "actions.0.outputs", "message": "field required",
                                   "line": 12}, {"message": "no path"}])
    assert str(err) == ("invalid contract:\n  - mixin_x.yaml:12: actions.0.outputs: field "
                        "required\n  - no path")


def test_service_unavailable_is_raisable_as_in_seed_000() -> None:
    with pytest.raises(RuntimeError, match="Service unhealthy"):
        raise ServiceUnavailableError("Service unhealthy")



class _M:
    pass


@pytest.mark.parametrize("err", [
    pytest.param(UnknownCapabilityError("x", ["y"]), id="unknown"),
    pytest.param(DependencyCycleError(["a", "b", "a"], ["x", "y"]),
                 id="cycle"),
    pytest.param(CapabilityConflictError("a", "b", kind="member", member="m"), id="conflict"),
    pytest.param(NotApplicableError("a", "COMPUTE", ["EFFECT"]),
                 id="not-applicable"),
    pytest.param(MROError(_M, ["a"], [_M], "why"), id="mro"),
    pytest.param(MixinDefinitionError("a", _M, "defines __init__", "why"),
                 id="mixin-definition"),
    pytest.param(RegistrationError("dup", name="n"), id="registration"),
    pytest.param(ConfigurationError("bad", capability="c", problems=["p"]), id="configuration"),
    pytest.param(ContractError("bad", source="s", problems=[{"message": "m"}]), id="contract"),
    pytest.param(ServiceUnavailableError("down"), id="unavailable"),
    pytest.param(CompositionError("plain"), id="composition"),
])
def test_errors_pickle_with_their_message_and_data(err: Any) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    for key, value in vars(err).items():
        if key != "errors":
            assert getattr(back, key) == value, key


@pytest.mark.parametrize("name", ["service_protocol"])
def test_a_planned_seed_capability_is_named_as_planned_not_given_a_look_alike(name: str) -> None:
    from onex_compose import NodeCompute, compose

    with pytest.raises(UnknownCapabilityError) as info:
        compose(NodeCompute, [name])
    err = info.value
    assert err.planned and err.suggestion is None
    assert f"{name!r} is a seed capability that is not available yet (planned)" in str(err)
    assert "Did you mean" not in str(err)


def test_real_typos_keep_their_suggestion_and_a_typo_of_a_planned_name_says_planned() -> None:
    from onex_compose import NodeCompute, compose

    with pytest.raises(UnknownCapabilityError, match="Did you mean 'caching'") as info:
        compose(NodeCompute, ["cachng"])
    assert not info.value.planned
    with pytest.raises(UnknownCapabilityError) as info:
        compose(NodeCompute, ["service_protocl"])
    assert info.value.suggestion is None
    assert "Close to 'service_protocol', a seed capability that is not available yet" in str(
        info.value)


def test_a_planned_name_registered_by_the_user_is_an_ordinary_name() -> None:
    err = UnknownCapabilityError("authenticaton", ["authentication", "caching"])
    assert err.suggestion == "authentication" and "Did you mean 'authentication'" in str(err)
    assert not UnknownCapabilityError("tracing", ["tracing"]).planned


@pytest.mark.parametrize("model", [int, 3, {"a": 1}, type(None)])
@pytest.mark.parametrize("value", [{}, None])
def test_coerce_config_with_something_that_is_not_a_model_class_is_a_configuration_error(
        model: object, value: object) -> None:
    from onex_compose import ConfigurationError
    from onex_compose._config import coerce_config

    with pytest.raises(ConfigurationError, match=r"configuration model of capability 'x' must be "
                       r"a Pydantic model class \(a BaseModel subclass\) or None") as info:
        coerce_config(model, value, "x")
    assert info.value.capability == "x"
