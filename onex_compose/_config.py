"""Capability configuration: validation of a model or a plain mapping, and where values come from.

Every capability's configuration reaches it through one path: the node contract's subcontracts,
or a ``capability_config=`` mapping keyed by canonical capability name. Values are validated by
the capability's Pydantic model (unknown keys rejected with a did-you-mean) before its setup hook
sees them, and the source of each value is recorded for ``explain()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onex_compose import _redact
from onex_compose.exceptions import ConfigurationError, did_you_mean

__all__ = ["check_contract", "coerce_config", "contract_capabilities", "contract_config",
           "overlay_config"]

_SCALARS = (str, bytes, int, float, bool)


def check_contract(contract: Any, owner: str, node_type: str | None) -> None:
    """Refuse a contract the node cannot read, or one written for another node type.

    Raises:
        ConfigurationError: naming the problem and what to pass instead.
    """
    if isinstance(contract, _SCALARS):
        hint = (" To build a node from a YAML contract file use load_node(path), or "
                "load_contract(path) and pass the result.") if isinstance(contract, str) else ""
        raise ConfigurationError(
            f"{owner} takes a node contract (a ModelContract*, a mapping with 'subcontracts', or "
            f"an object with a 'subcontracts' attribute), got {_redact.quote(contract)}.{hint}")
    declared = (contract.get("node_type") if isinstance(contract, Mapping)
                else getattr(contract, "node_type", None))
    if node_type is not None and declared is not None:
        declared = str(getattr(declared, "value", declared))
        if declared in ("COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR") and declared != node_type:
            raise ConfigurationError(
                f"The contract is for {declared} nodes, but {owner} is a {node_type} node; use "
                f"a {node_type.title()} contract (ModelContract{node_type.title()}) or a "
                f"{declared.title()} node class.")


def contract_capabilities(contract: Any) -> list[str] | None:
    """The capability names (or subcontract keys) a contract configures; ``None`` if unknown."""
    subs = (contract.get("subcontracts") if isinstance(contract, Mapping)
            else getattr(contract, "subcontracts", None))
    if subs is None:
        return []
    listed = getattr(subs, "capabilities", None)  # ModelContract's subcontract collection
    if isinstance(listed, list):
        return [str(n) for n in listed]
    if isinstance(subs, Mapping):
        return [str(k) for k in subs]
    if type(subs).__name__ == "SimpleNamespace":
        return [k for k in vars(subs) if not k.startswith("_")]
    return None


def _format_pydantic(exc: Any, model: Any) -> list[str]:
    fields = list(getattr(model, "model_fields", {}))
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        if err.get("type") == "extra_forbidden":
            key = str(err["loc"][-1]) if err.get("loc") else loc
            lines.append(f"{loc}: unknown key{did_you_mean(key, fields)}; known keys: "
                         f"{', '.join(fields)}")
        else:
            # the validator's own words, scrubbed in case one quotes what it rejected
            msg = _redact.scrub_text(str(err.get("msg", "")).removeprefix("Value error, "))
            if err.get("type") == "value_error" or _redact.sensitive_field(loc):
                lines.append(f"{loc}: {msg}")  # a value under such a field may hold a secret
            else:
                lines.append(f"{loc}: {msg} (got {_redact.quote(err.get('input'), limit=80)})")
    return lines



#: model classes already checked by coerce_config (a set lookup instead of a check per setup)
_MODELS: set[Any] = set()


def _check_model(model: Any, capability: str) -> None:
    if not (isinstance(model, type) and hasattr(model, "model_validate")):
        raise ConfigurationError(
            f"The configuration model of capability {capability!r} must be a Pydantic model "
            f"class (a BaseModel subclass) or None, got {model!r}. Declare it as "
            "`class MyConfig(BaseModel): ...` and pass the class itself.",
            capability=capability)
    _MODELS.add(model)


def coerce_config(model: Any, value: Any, capability: str) -> Any:
    """Validate ``value`` (a model instance, a mapping or ``None``) into ``model``.

    Args:
        model: the capability's Pydantic model class (``None``: the value passes through).
        value: ``None`` (defaults), a mapping, an instance of ``model``, or another Pydantic
            model whose fields ``model`` accepts (such as a seed subcontract model).
        capability: the capability's name, for error messages.

    Raises:
        ConfigurationError: with one line per problem and its field path.

    Example:
        >>> from pydantic import BaseModel, ConfigDict
        >>> class RetryConfig(BaseModel):
        ...     model_config = ConfigDict(extra="forbid")
        ...     max_attempts: int = 3
        >>> coerce_config(RetryConfig, {"max_attempts": 5}, "retry").max_attempts
        5
    """
    if model is None:
        return value
    try:
        checked = model in _MODELS
    except TypeError:  # unhashable: certainly not a model class
        checked = False
    if not checked:
        _check_model(model, capability)
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    from pydantic import BaseModel, ValidationError

    data: Any = value
    if isinstance(value, BaseModel):
        data = value.model_dump(exclude_unset=True)
    elif not isinstance(value, Mapping):
        raise ConfigurationError(
            f"Configuration for {capability!r} must be a mapping or a {model.__name__}, got "
            f"{type(value).__name__}.", capability=capability)
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigurationError(
            f"Invalid configuration for capability {capability!r} ({model.__name__}):",
            capability=capability, problems=_format_pydantic(exc, model)) from None


def contract_config(contract: Any, name: str, key: str) -> tuple[Any, str] | None:
    """Find the configuration a node contract gives one capability, and say where it was.

    Looks, in order, at ``contract.capability_config_for(name, key)`` (contract models provide
    it), ``contract.subcontracts.<key>`` (seed 000), ``contract.<name>_configuration`` (seed
    002's default integration field) and, for plain mappings, ``contract["subcontracts"][key]``.
    """
    if contract is None:
        return None
    finder = getattr(contract, "capability_config_for", None)
    if callable(finder):
        found = finder(name, key)
        if found is None:
            return None
        if not (isinstance(found, tuple) and len(found) == 2 and isinstance(found[1], str)):
            raise ConfigurationError(
                f"{type(contract).__name__}.capability_config_for({name!r}, {key!r}) must return "
                f"(config, source) or None, got {_redact.quote(found)}; the node contract is "
                "not usable.",
                capability=name)
        return found[0], found[1]
    if isinstance(contract, Mapping):
        subs = contract.get("subcontracts")
        if isinstance(subs, Mapping):
            for k in dict.fromkeys((key, name)):
                if k in subs:
                    return subs[k], f"contract subcontracts[{k!r}]"
        return None
    subs = getattr(contract, "subcontracts", None)
    if subs is not None:
        for k in dict.fromkeys((key, name)):
            if isinstance(subs, Mapping):
                if k in subs:
                    return subs[k], f"contract.subcontracts[{k!r}]"
            elif hasattr(subs, k):
                return getattr(subs, k), f"contract.subcontracts.{k}"
    field = f"{name}_configuration"
    if hasattr(contract, field):
        value = getattr(contract, field)
        if value is not None:
            return value, f"contract.{field}"
    return None


def overlay_config(model: Any, base: Any, overrides: Any, capability: str) -> Any:
    """``overrides`` laid key by key over ``base`` (the contract's configuration), validated.

    Both may be models or mappings; a field the override leaves out keeps the contract's value.
    """
    from pydantic import BaseModel

    def as_dict(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if isinstance(value, BaseModel):
            return value.model_dump(exclude_unset=True)
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigurationError(
            f"Configuration for {capability!r} must be a mapping or a model, got "
            f"{type(value).__name__}.", capability=capability)

    if model is None:
        return {**as_dict(base), **as_dict(overrides)}
    return coerce_config(model, {**as_dict(base), **as_dict(overrides)}, capability)
