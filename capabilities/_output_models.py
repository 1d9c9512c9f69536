"""Pydantic models built from a mixin contract's ``output_models`` section (seed 002).

Seed 002 describes the shape of an action's output in the contract::

    output_models:
      error_handling_result:
        error_category: "string"
        recovery_possible: "boolean"
        recovery_suggestions:
          type: "array"
          items: "string"

:func:`output_model` turns one entry into a Pydantic model class: ``string`` -> ``str``,
``integer`` -> ``int``, ``float`` -> ``float``, ``boolean`` -> ``bool``, ``timestamp`` -> an aware
``datetime``, ``array`` (with ``items``) -> ``list``, ``object`` (with ``properties``) -> a nested
model (without ``properties``: ``dict[str, Any]``). Every declared field is required and unknown
keys are refused (a typo in an output is an error, never dropped). Models are built once per
(registry, capability, model name, contract) and cached. Serialization's
``Serializer.output_model()`` and validation's ``check_output()`` use it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from onex_compose.exceptions import OnexError, did_you_mean

if TYPE_CHECKING:
    from onex_compose._contracts import ModelMixinContract, ModelOutputField
    from onex_compose._registry import Registry

__all__ = ["UnknownOutputModelError", "output_model", "output_model_names"]

_SCALARS: dict[str, Any] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "timestamp": AwareDatetime,
}

_cache: dict[tuple[int, str, str, str], type[BaseModel]] = {}
_contracts: dict[str, ModelMixinContract] = {}
_lock = threading.Lock()


class UnknownOutputModelError(OnexError, LookupError):
    """The capability's contract declares no output model of that name.

    Attributes:
        capability: the capability asked about.
        model_name: the name asked for.
        known: the output models its contract declares.
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, capability: str, model_name: str, known: list[str]) -> None:
        self.capability = capability
        self.model_name = model_name
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "(none: its contract has no output_models)"
        super().__init__(
            f"capability {capability!r} declares no output model {model_name!r}"
            f"{did_you_mean(model_name, self.known)}; its contract's output_models: {listed}")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part) or "Model"


def _contract_file(capability: str, contract: str) -> Path:
    from onex_compose._manifest import contract_paths

    path = Path(contract)
    if path.is_absolute() or path.exists():
        return path
    for candidate in contract_paths():  # a built-in contract: beside its module or in its package
        if candidate.name == path.name:
            return candidate
    raise LookupError(f"capability {capability!r}: its contract {contract!r} was not found among "
                      "the built-in contracts; register it with register_contract(<path>)")


def _load(capability: str, contract: str) -> ModelMixinContract:
    key = contract
    found = _contracts.get(key)
    if found is not None:
        return found
    from onex_compose._contracts import ModelMixinContract
    from onex_compose._loading import load_yaml

    path = _contract_file(capability, contract)
    model = ModelMixinContract.model_validate(load_yaml(path).data)
    _contracts[key] = model
    return model


def _field_type(field: ModelOutputField, owner: str, name: str) -> Any:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    if field.type == "array":
        if field.items is None:
            return list[Any]
        item = _field_type(field.items, owner, name + "_item")
        return list[item]  # type: ignore[valid-type]
    # object
    if field.properties is None:
        return dict[str, Any]
    return _build(owner + _camel(name), field.properties)


def _build(class_name: str, fields: dict[str, ModelOutputField]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for name, field in fields.items():
        annotation = _field_type(field, class_name, name)
        info = Field(description=field.description) if field.description else Field()
        definitions[name] = (annotation, info)
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        class_name,
        __config__=ConfigDict(extra="forbid", frozen=True),
        __module__=__name__,
        **definitions,
    )
    return model


def output_model_names(capability: str, *, registry: Registry | None = None) -> list[str]:
    """The output models a capability's contract declares (sorted).

    Example:
        >>> output_model_names("error_handling")[:2]
        ['circuit_status_result', 'error_handling_result']
    """
    from onex_compose._registry import default_registry

    spec = (registry if registry is not None else default_registry).get(capability)
    if spec.contract is None:
        return []
    return sorted(_load(spec.name, spec.contract).output_models)


def output_model(capability: str, model_name: str, *,
                 registry: Registry | None = None) -> type[BaseModel]:
    """The Pydantic model of one ``output_models`` entry of a capability's contract (cached).

    Args:
        capability: a registered capability (``"error_handling"``).
        model_name: the entry's name (``"error_handling_result"``).
        registry: where the capability is registered (default: the default registry).

    Raises:
        UnknownCapabilityError: no capability of that name (with a did-you-mean).
        UnknownOutputModelError: its contract declares no such output model (did-you-mean).

    Example:
        >>> Model = output_model("error_handling", "error_handling_result")
        >>> Model.__name__
        'ErrorHandlingResult'
        >>> Model(error_category="fatal", handling_action="fail", recovery_possible=False,
        ...       recovery_suggestions=["check the input"]).recovery_possible
        False
    """
    from onex_compose._registry import default_registry

    reg = registry if registry is not None else default_registry
    spec = reg.get(capability)
    key = (id(reg), spec.name, model_name, spec.contract or "")
    found = _cache.get(key)
    if found is not None:
        return found
    with _lock:
        found = _cache.get(key)
        if found is not None:
            return found
        if spec.contract is None:
            raise UnknownOutputModelError(spec.name, model_name, [])
        contract = _load(spec.name, spec.contract)
        fields = contract.output_models.get(model_name)
        if fields is None:
            raise UnknownOutputModelError(spec.name, model_name, list(contract.output_models))
        model = _build(_camel(model_name), fields)
        _cache[key] = model
        return model
