"""Node contracts: node type, capability list and subcontracts (references or inline models).

A node contract says what a node is made of and how each capability is configured::

    node_type: COMPUTE
    name: price_calculator
    capabilities: [caching, metrics]
    subcontracts:
      - path: "../../mixins/mixin_error_handling.yaml"      # seed 002: a reference
        integration_field: "error_handling_configuration"
      - capability: caching                                 # inline configuration
        config: {backend: memory}

or, in Python, seed 002's ``ModelContractCompute(subcontracts=[ModelErrorHandlingSubcontract(...)])``.

How a subcontract is addressed (both seeds' spellings work):

* ``contract.<integration_field>``: seed 002's ``contract.error_handling_configuration``. A
  reference names its field; an inline subcontract's default is ``<capability>_configuration``.
  An unknown field raises ``AttributeError`` naming it and the known ones.
* ``contract.subcontracts.<capability>`` (or the capability's subcontract key): seed 000's
  ``hasattr(contract.subcontracts, 'health_check')`` and ``contract.subcontracts.event_type``.
* ``contract.capability_config_for(name, key)``: what the engine calls to feed each capability
  its configuration, with a description of where it came from (``explain()`` shows it).

A reference's path is relative to the contract file (or to the working folder for a contract
built in Python), must stay inside the contract tree (see :mod:`onex_compose._loading`), and
must name a mixin contract; its ``<capability>_config`` section, overlaid with the reference's
own ``config`` overrides, is the capability's configuration, validated by the capability's
config model when the registry knows it (so a bad value is reported at its file and line).
Seed 002's troubleshooting errors are real: a missing file ("Subcontract file not found"), an
integration field used twice, a mixin not applicable to the node type.

Contract data never imports capability code except to validate a configuration against its
registered config model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    InstanceOf,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from onex_compose._contracts import (
    NODE_TYPES,
    ModelMixinContract,
    ModelSemVer,
    ProblemList,
    SnakeName,
    _Strict,
    check_node_type,
    config_keys,
    problems_from_error,
)
from onex_compose._loading import (
    ContractProblem,
    LineIndex,
    PathPart,
    confine,
    find_root,
    load_yaml,
)
from onex_compose._node_types import EnumNodeType
from onex_compose.exceptions import ContractError, did_you_mean

__all__ = [
    "ConfigView",
    "ModelContract",
    "ModelContractCompute",
    "ModelContractEffect",
    "ModelContractOrchestrator",
    "ModelContractReducer",
    "ModelInlineSubcontract",
    "ModelSubcontractReference",
    "SubcontractEntry",
    "Subcontracts",
    "contract_class_for",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(f"integration_field {value!r} must be a Python identifier "
                         "(letters, digits, underscores), e.g. 'caching_configuration'")
    return value


FieldName = Annotated[StrictStr, AfterValidator(_identifier)]


class ConfigView(dict[str, Any]):
    """A read-only mapping that also allows attribute access (``cfg.enable_circuit_breaker``).

    Used for a subcontract's configuration when no config model is registered for its
    capability, so seed 002's ``contract.error_handling_configuration.enable_circuit_breaker``
    works either way. Nested mappings are views too.

    Example:
        >>> cfg = ConfigView({"backend": "memory", "l2": {"ttl": 5}})
        >>> cfg.backend, cfg.l2.ttl, cfg["backend"]
        ('memory', 5, 'memory')
        >>> cfg.bakend
        Traceback (most recent call last):
        ...
        AttributeError: configuration has no key 'bakend' (did you mean 'backend'?); keys: backend, l2
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__({k: _view(v) for k, v in (data or {}).items()})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            keys = [str(k) for k in self]
            raise AttributeError(
                f"configuration has no key {name!r}{did_you_mean(name, keys)}; keys: "
                f"{', '.join(keys) or '(none)'}") from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a contract's configuration is read-only; build a new contract or pass "
                        "capability_config= to override values")

    __setitem__ = __delitem__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __setattr__(self, name: str, value: Any) -> None:
        self._readonly()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigView, (_plain(self),))

    def __repr__(self) -> str:
        return f"ConfigView({dict.__repr__(self)})"


def _view(value: Any) -> Any:
    if isinstance(value, ConfigView):
        return value
    if isinstance(value, Mapping):
        return ConfigView(value)
    if isinstance(value, list):
        return [_view(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A configuration value as plain JSON-like data (models dumped, views unwrapped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class ModelSubcontractReference(_Strict):
    """A reference to a mixin contract file (seed 002's ``path`` + ``integration_field``).

    Attributes:
        path: the mixin contract, relative to the node contract's folder.
        integration_field: the attribute the configuration is available under on the contract
            (default ``<capability>_configuration``).
        capability: the capability it configures (default: read from the referenced file);
            when given, it must match.
        config: overrides laid over the referenced file's ``<capability>_config`` section.
    """

    __onex_tag__: ClassVar[str] = "<reference>"

    path: StrictStr
    integration_field: FieldName | None = None
    capability: SnakeName | None = None
    config: dict[StrictStr, Any] | None = None


class ModelInlineSubcontract(_Strict):
    """A capability's configuration written in the node contract itself.

    Attributes:
        capability: the capability (or its subcontract key, e.g. ``event_type``).
        config: its configuration (a mapping or a config model instance; none: defaults).
        integration_field: the attribute it is available under (default
            ``<capability>_configuration``).
    """

    __onex_tag__: ClassVar[str] = "<inline>"

    capability: SnakeName
    config: dict[StrictStr, Any] | InstanceOf[BaseModel] | None = None
    integration_field: FieldName | None = None


def _item_kind(value: Any) -> str | None:
    if isinstance(value, ModelSubcontractReference):
        return "<reference>"
    if isinstance(value, ModelInlineSubcontract):
        return "<inline>"
    if isinstance(value, BaseModel):
        return "<model>"
    if isinstance(value, Mapping):
        return "<reference>" if "path" in value else "<inline>"
    return None


_Item = Annotated[
    Annotated[ModelSubcontractReference, Tag("<reference>")]
    | Annotated[ModelInlineSubcontract, Tag("<inline>")]
    | Annotated[InstanceOf[BaseModel], Tag("<model>")],
    Discriminator(
        _item_kind, custom_error_type="subcontract_item",
        custom_error_message="a subcontract is a mapping with 'path' (a reference) or "
        "'capability' (inline configuration), or a config model instance"),
]

_Raw = Annotated[
    Annotated[list[_Item], Tag("<list>")] | Annotated[dict[SnakeName, Any], Tag("<mapping>")],
    Discriminator(
        lambda v: "<list>" if isinstance(v, list | tuple) else (
            "<mapping>" if isinstance(v, Mapping) else None),
        custom_error_type="subcontracts_type",
        custom_error_message="subcontracts must be a list of subcontracts (or a mapping "
        "capability -> configuration)"),
]


@dataclass(frozen=True)
class SubcontractEntry:
    """One resolved subcontract.

    Attributes:
        capability: the capability it configures (canonical when the registry knows it).
        integration_field: the contract attribute it is available under.
        config: the configuration: a config model instance, or a :class:`ConfigView`.
        source: where it came from, for ``explain()``.
        kind: ``"reference"``, ``"inline"`` or ``"model"``.
        key: the capability's subcontract key (``event_type`` for event_bus), if known.
        node_types: node types the mixin applies to, if known.
        mixin: the referenced mixin contract, for references.
        reference: the reference as written, for references.
        location: its path inside the node contract (``("subcontracts", 0)``).
        explicit_field: whether the integration field was written out.
    """

    capability: str
    integration_field: str
    config: Any
    source: str
    kind: str
    key: str | None = None
    node_types: frozenset[str] | None = None
    mixin: ModelMixinContract | None = None
    reference: ModelSubcontractReference | None = None
    location: tuple[PathPart, ...] = ()
    explicit_field: bool = False

    def to_data(self) -> dict[str, Any]:
        """The entry as it is written in a contract (list form)."""
        if self.kind == "reference" and self.reference is not None:
            return self.reference.model_dump(mode="json", exclude_none=True)
        out: dict[str, Any] = {"capability": self.capability, "config": _plain(self.config)}
        if self.explicit_field:
            out["integration_field"] = self.integration_field
        return out

    def _key(self) -> tuple[Any, ...]:
        return (self.capability, self.integration_field, repr(_plain(self.config)),
                self.reference)


def _canonical_name(name: str) -> str:
    return name.removeprefix("mixin_")


def _capability_of_model(model: BaseModel) -> str | None:
    """Which capability a config model instance configures.

    Its ``__onex_capability__`` class attribute; else its ``subcontract_name`` field
    (``mixin_error_handling``); else its class name (``ModelCachingSubcontract``,
    ``CachingConfig``).
    """
    cap = getattr(type(model), "__onex_capability__", None)
    if isinstance(cap, str):
        return cap
    sub = getattr(model, "subcontract_name", None)
    if isinstance(sub, str) and sub:
        return _canonical_name(sub)
    name = type(model).__name__
    m = re.fullmatch(r"Model(\w+?)Subcontract", name) or re.fullmatch(r"(\w+?)Config", name)
    if m:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", m[1]).lower()
    return None


class _Resolver:
    """Where references are resolved from and how configurations are validated."""

    def __init__(self, context: Mapping[str, Any] | None) -> None:
        ctx = dict(context or {})
        self.file: str | None = ctx.get("file")
        base = ctx.get("base_dir")
        self.base_dir = Path(base) if base is not None else Path.cwd()
        root = ctx.get("root")
        self.root = Path(root).resolve() if root is not None else find_root(self.base_dir)
        self.registry = ctx.get("registry")
        self.config_model_for: Callable[[str], Any] | None = ctx.get("config_model_for")
        self.cache: dict[Path, Any] = ctx.setdefault("_mixin_cache", {}) if isinstance(
            context, dict) else {}

    def spec(self, name: str) -> Any:
        """The registry's spec for a capability name or subcontract key, or ``None``."""
        registry = self.registry
        if registry is None:
            from onex_compose._registry import default_registry

            registry = default_registry
        try:
            if name in registry:
                try:
                    return registry.get(name)
                except LookupError:  # an alias (seed 000's health_monitoring) or a bundle
                    targets = registry.aliases.get(name) or ()
                    return registry.get(targets[0]) if len(targets) == 1 else None
            for spec in registry:
                if spec.subcontract_key == name:
                    return spec
        except Exception:  # a broken plugin registry must not break contract loading
            return None
        return None

    def model_for(self, capability: str) -> Any:
        if self.config_model_for is not None:
            return self.config_model_for(capability)
        spec = self.spec(capability)
        return None if spec is None else spec.config_model

    def display(self, path: Path) -> str:
        try:
            return os.path.relpath(path)
        except ValueError:  # pragma: no cover - another drive on Windows
            return str(path)


class Subcontracts(Sequence[SubcontractEntry]):
    """The resolved subcontracts of a node contract; attribute access by capability.

    ``contract.subcontracts.caching`` (by capability), ``.event_type`` (by subcontract key)
    and ``.caching_configuration`` (by integration field) return the configuration;
    ``hasattr`` is false for a capability that has none. Iteration yields
    :class:`SubcontractEntry` records.
    """

    # the models its list entries are validated as (names the keys of an unknown-key error)
    __onex_models__: ClassVar[tuple[type[BaseModel], ...]] = (
        ModelSubcontractReference, ModelInlineSubcontract)

    def __init__(self, entries: Sequence[SubcontractEntry] = ()) -> None:
        self._entries: tuple[SubcontractEntry, ...] = tuple(entries)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(
            cls._validate, handler.generate_schema(_Raw),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.to_data() if isinstance(v, Subcontracts) else v))

    @classmethod
    def _validate(cls, raw: Any, info: ValidationInfo) -> Subcontracts:
        if isinstance(raw, Subcontracts):
            return raw
        return _build_entries(raw, _Resolver(info.context))

    # -- lookup -----------------------------------------------------------------------------

    def find(self, name: str) -> SubcontractEntry | None:
        """The entry for a capability name, subcontract key or integration field."""
        for entry in self._entries:
            if name in (entry.capability, entry.key, entry.integration_field):
                return entry
        return None

    def for_capability(self, name: str, key: str | None = None) -> SubcontractEntry | None:
        """The entry configuring capability ``name`` (or addressed by its subcontract key)."""
        for entry in self._entries:
            if entry.capability == name or (key is not None and key in (entry.capability,
                                                                         entry.key)):
                return entry
        return None

    def by_field(self, name: str) -> SubcontractEntry | None:
        """The entry whose integration field is ``name``."""
        for entry in self._entries:
            if entry.integration_field == name:
                return entry
        return None

    @property
    def capabilities(self) -> list[str]:
        """The capabilities configured, in contract order."""
        return [e.capability for e in self._entries]

    @property
    def integration_fields(self) -> list[str]:
        """Every integration field, in contract order."""
        return [e.integration_field for e in self._entries]

    def get(self, name: str, default: Any = None) -> Any:
        """The configuration for ``name`` (capability, key or field), or ``default``."""
        entry = self.find(name)
        return default if entry is None else entry.config

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        entry = self.find(name)
        if entry is None:
            # seed 000 asks for event_bus's configuration by its key 'event_type'
            spec = _Resolver(None).spec(name)
            if spec is not None:
                entry = self.for_capability(spec.name, spec.subcontract_key)
        if entry is None:
            known = sorted({*self.capabilities, *(e.key for e in self._entries if e.key)})
            raise AttributeError(
                f"the contract has no subcontract for {name!r}{did_you_mean(name, known)}; "
                f"configured: {', '.join(known) or '(none)'}")
        return entry.config

    def __contains__(self, name: object) -> bool:
        if isinstance(name, SubcontractEntry):
            return name in self._entries
        return isinstance(name, str) and self.find(name) is not None

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            entry = self.find(index)
            if entry is None:
                raise KeyError(index)
            return entry.config
        return self._entries[index]

    def __iter__(self) -> Iterator[SubcontractEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subcontracts):
            return NotImplemented
        return [e._key() for e in self._entries] == [e._key() for e in other._entries]

    def __hash__(self) -> int:
        return hash(tuple(e.capability for e in self._entries))

    def __repr__(self) -> str:
        inner = ", ".join(f"{e.capability} -> {e.integration_field}" for e in self._entries)
        return f"Subcontracts({inner})"

    def to_data(self) -> list[dict[str, Any]]:
        """The subcontracts as written in a contract (list form)."""
        return [e.to_data() for e in self._entries]


def _config_value(capability: str, config: Any, res: _Resolver, path: tuple[PathPart, ...],
                  problems: list[ContractProblem]) -> Any:
    """Validate an inline configuration through the capability's model (if registered)."""
    if isinstance(config, BaseModel):
        return config
    try:
        model = res.model_for(capability)
    except Exception as exc:
        problems.append(ContractProblem(
            f"cannot load the config model of capability {capability!r}: {exc}", path))
        return ConfigView(config)
    if model is None:
        return ConfigView(config)
    try:
        return model.model_validate(dict(config or {}))
    except ValidationError as exc:
        for p in problems_from_error(exc, model, dict(config or {}), root_kind="node"):
            problems.append(ContractProblem(p.message, (*path, *p.path), check="schema"))
        return ConfigView(config)


def _load_mixin(target: Path, ref: str, res: _Resolver, where: tuple[PathPart, ...],
                problems: list[ContractProblem]) -> tuple[ModelMixinContract, Any, str] | None:
    cached = res.cache.get(target)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    name = res.display(target)
    rel = where[1:]  # problems of the node contract are relative to its subcontracts
    try:
        loaded = load_yaml(target, source=name)
    except ContractError as exc:
        for item in exc.problems:
            if item.get("line") is None:
                # the file as a whole (missing, a folder, too large, binary): point at the
                # reference in the node contract, which is what the user has to change
                problems.append(ContractProblem(
                    f"{ref!r}: {item['message']}", (*rel, "path"), check="references"))
            else:
                problems.append(ContractProblem(
                    f"{item['message']} (referenced by {_fmt(where)})", (), item.get("line"),
                    name, "references"))
        return None
    data = loaded.data
    if not isinstance(data, Mapping) or "mixin_name" not in data:
        what = "a node contract" if isinstance(data, Mapping) and (
            "node_type" in data or "subcontracts" in data) else "not a mixin contract"
        problems.append(ContractProblem(
            f"{ref!r} is {what}: a subcontract reference must point to a mixin contract "
            "(a file with mixin_name, e.g. mixin_caching.yaml)", (*rel, "path"),
            check="references"))
        return None
    try:
        mixin = ModelMixinContract.model_validate(data)
    except ValidationError as exc:
        for p in problems_from_error(exc, ModelMixinContract, data, lines=loaded.lines,
                                     file=name):
            problems.append(ContractProblem(
                f"{p.message} (in the mixin contract referenced by {_fmt(where)})",
                p.path, p.line, name, "references"))
        return None
    result = (mixin, loaded, name)
    res.cache[target] = result
    return result


def _fmt(path: Sequence[PathPart]) -> str:
    from onex_compose._loading import format_path

    return format_path(path)


def _reference_entry(i: int, ref: ModelSubcontractReference, res: _Resolver,
                     problems: list[ContractProblem]) -> SubcontractEntry | None:
    where: tuple[PathPart, ...] = (i,)
    try:
        target = confine(ref.path, res.base_dir, res.root)
    except ContractError as exc:
        problems.append(ContractProblem(str(exc.problems[0]["message"]), (*where, "path"),
                                        check="references"))
        return None
    if not target.exists():
        problems.append(ContractProblem(
            f"Subcontract file not found: {ref.path} (looked for {target})", (*where, "path"),
            check="references"))
        return None
    found = _load_mixin(target, ref.path, res, ("subcontracts", i), problems)
    if found is None:
        return None
    mixin, loaded, name = found
    capability = mixin.capability
    if ref.capability is not None and ref.capability != capability:
        problems.append(ContractProblem(
            f"reference says capability {ref.capability!r} but {ref.path} is the contract of "
            f"{capability!r}", (*where, "capability"), check="references"))
    spec = res.spec(capability)
    canonical = spec.name if spec is not None else capability
    base_config = dict(mixin.config or {})
    overrides = dict(ref.config or {})
    merged = {**base_config, **overrides}
    section = next((k for k in config_keys(loaded.data) if k in loaded.data), mixin.config_key)
    value: Any = ConfigView(merged)
    try:
        model = res.model_for(canonical)
    except Exception as exc:
        problems.append(ContractProblem(
            f"cannot load the config model of capability {canonical!r}: {exc}", where,
            check="references"))
        model = None
    if model is not None:
        try:
            value = model.model_validate(merged)
        except ValidationError as exc:
            for p in problems_from_error(exc, model, merged, root_kind="node"):
                head = p.path[0] if p.path else p.key  # an unknown key has no path of its own
                if head in overrides:
                    problems.append(ContractProblem(p.message, (*where, "config", *p.path)))
                else:
                    mpath = (section, *p.path)
                    problems.append(ContractProblem(
                        f"{p.message} (configuration of {canonical!r}, referenced by "
                        f"{_fmt(('subcontracts', *where))})", mpath,
                        loaded.lines.line_of(mpath), name, "references"))
    field = ref.integration_field or f"{canonical}_configuration"
    key = mixin.composition.subcontract_key if mixin.composition else None
    if key is None and spec is not None:
        key = spec.subcontract_key
    source = f"subcontracts[{i}] -> {ref.path}"
    return SubcontractEntry(
        capability=canonical, integration_field=field, config=value, source=source,
        kind="reference", key=key, node_types=frozenset(mixin.applicable_node_types),
        mixin=mixin, reference=ref, location=("subcontracts", i),
        explicit_field=ref.integration_field is not None)


def _inline_entry(label: tuple[PathPart, ...], name: str, config: Any, field: str | None,
                  kind: str, res: _Resolver, problems: list[ContractProblem],
                  source: str, *, nested: bool = True) -> SubcontractEntry:
    """One inline subcontract; ``nested``: its configuration sits under a ``config`` key
    (list form) rather than directly under the capability's name (mapping form)."""
    spec = res.spec(name)
    canonical = spec.name if spec is not None else name
    key = spec.subcontract_key if spec is not None else None
    if key is None and name != canonical:
        key = name
    cfg_path = (*label, "config") if kind == "inline" and nested else label
    value = _config_value(canonical, config, res, cfg_path, problems)
    if value is None:
        value = ConfigView({})
    node_types = getattr(value, "applicable_node_types", None)
    if spec is not None and spec.applicable_node_types:
        spec_types = frozenset(spec.applicable_node_types)
        node_types = spec_types if node_types is None else frozenset(node_types) & spec_types
    return SubcontractEntry(
        capability=canonical, integration_field=field or f"{canonical}_configuration",
        config=value, source=source, kind=kind, key=key,
        node_types=frozenset(node_types) if node_types is not None else None,
        location=("subcontracts", *label), explicit_field=field is not None)


def _build_entries(raw: Any, res: _Resolver) -> Subcontracts:
    problems: list[ContractProblem] = []
    entries: list[SubcontractEntry] = []
    if isinstance(raw, Mapping):
        for name, config in raw.items():
            if config is not None and not isinstance(config, Mapping | BaseModel):
                problems.append(ContractProblem(
                    f"the configuration of {name!r} must be a mapping, got "
                    f"{type(config).__name__}", (name,)))
                continue
            if isinstance(config, Mapping):
                bad = [k for k in config if not isinstance(k, str)]
                if bad:
                    problems.append(ContractProblem(
                        f"configuration key {bad[0]!r} of {name!r} is not a string; "
                        "configuration keys are field names", (name,)))
                    continue
            entries.append(_inline_entry((name,), name, config, None, "inline", res, problems,
                                         f"subcontracts.{name}", nested=False))
    else:
        for i, item in enumerate(raw):
            if isinstance(item, ModelSubcontractReference):
                entry = _reference_entry(i, item, res, problems)
                if entry is not None:
                    entries.append(entry)
            elif isinstance(item, ModelInlineSubcontract):
                entries.append(_inline_entry((i,), item.capability, item.config,
                                             item.integration_field, "inline", res, problems,
                                             f"subcontracts[{i}] (inline)"))
            else:
                cap = _capability_of_model(item)
                if cap is None:
                    problems.append(ContractProblem(
                        f"cannot tell which capability a {type(item).__name__} configures; "
                        "give the model class an __onex_capability__ = '<name>' attribute or "
                        "wrap it: {'capability': '<name>', 'config': model}", (i,)))
                    continue
                entries.append(_inline_entry((i,), cap, item, None, "model", res, problems,
                                             f"subcontracts[{i}] ({type(item).__name__})"))
    seen_fields: dict[str, SubcontractEntry] = {}
    seen_caps: dict[str, SubcontractEntry] = {}
    for entry in entries:
        loc = entry.location[1:]
        other = seen_fields.get(entry.integration_field)
        if other is not None:
            problems.append(ContractProblem(
                f"Integration field {entry.integration_field!r} used multiple times "
                f"({_fmt(other.location)} and {_fmt(entry.location)}); each subcontract needs "
                "its own integration_field", loc, check="references"))
        elif entry.integration_field in _RESERVED:
            problems.append(ContractProblem(
                f"integration_field {entry.integration_field!r} clashes with a contract "
                f"attribute of the same name; choose another, e.g. "
                f"'{entry.capability}_configuration'", loc, check="references"))
        seen_fields.setdefault(entry.integration_field, entry)
        twin = seen_caps.get(entry.capability)
        if twin is not None and other is None:
            problems.append(ContractProblem(
                f"capability {entry.capability!r} is configured twice ({_fmt(twin.location)} "
                f"and {_fmt(entry.location)}); merge them into one subcontract", loc,
                check="references"))
        seen_caps.setdefault(entry.capability, entry)
    if problems:
        raise ProblemList(problems)
    return Subcontracts(entries)


def _node_type(value: Any) -> EnumNodeType:
    return EnumNodeType(check_node_type(value))


NodeTypeField = Annotated[EnumNodeType, Field(json_schema_extra={"enum": list(NODE_TYPES)})]


class ModelContract(_Strict):
    """A node contract: node type, capabilities and their subcontracts.

    Args:
        node_type: COMPUTE, EFFECT, REDUCER or ORCHESTRATOR (fixed by the subclasses).
        name: the node's name.
        version: ``{major, minor, patch}`` or ``"1.0.0"``.
        description: free text.
        capabilities: capability names (aliases and bundles allowed) to compose.
        subcontracts: references (``path`` + ``integration_field``), inline configurations
            (``capability`` + ``config``) or config model instances; or a mapping
            ``capability -> configuration``.
        metadata: free-form data for your own tools (never read by onex-compose).

    Example:
        >>> from onex_compose.model.subcontracts import ModelErrorHandlingSubcontract
        >>> contract = ModelContractCompute(subcontracts=[
        ...     ModelErrorHandlingSubcontract(enable_circuit_breaker=True, error_retry_attempts=3)])
        >>> contract.error_handling_configuration.error_retry_attempts
        3
        >>> contract.subcontracts.error_handling is contract.error_handling_configuration
        True
        >>> contract.your_mixin_configuration  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AttributeError: 'ModelContractCompute' has no attribute 'your_mixin_configuration'...
    """

    NODE_TYPE: ClassVar[EnumNodeType | None] = None

    node_type: NodeTypeField
    name: StrictStr | None = None
    version: ModelSemVer | None = None
    description: StrictStr | None = None
    capabilities: list[SnakeName] = Field(default_factory=list)
    subcontracts: Subcontracts = Field(default_factory=Subcontracts)
    metadata: dict[StrictStr, Any] = Field(default_factory=dict)

    @field_validator("node_type", mode="before")
    @classmethod
    def _check_type(cls, value: Any) -> Any:
        node_type = _node_type(value)
        if cls.NODE_TYPE is not None and node_type != cls.NODE_TYPE:
            right = contract_class_for(node_type).__name__
            raise ValueError(
                f"node_type {node_type.value!r} does not match {cls.__name__} "
                f"({cls.NODE_TYPE.value}); use {right}, or load_contract(), which picks the "
                "class from node_type")
        return node_type

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ModelSemVer.parse(value)
        return value

    @field_validator("capabilities")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dup = [c for i, c in enumerate(value) if c in value[:i]]
        if dup:
            raise ValueError(f"capability {dup[0]!r} listed twice")
        return value

    @model_validator(mode="after")
    def _applicable(self) -> ModelContract:
        problems = []
        node_type = self.node_type.value
        for entry in self.subcontracts:
            if entry.node_types is not None and node_type not in entry.node_types:
                mixin = f"mixin_{entry.capability}"
                problems.append(ContractProblem(
                    f"Mixin {mixin!r} not applicable to node type {node_type!r}. Applicable "
                    f"types: [{', '.join(t for t in NODE_TYPES if t in entry.node_types)}]",
                    entry.location, check="node_types"))
        if problems:
            raise ProblemList(problems)
        return self

    # -- addressing -----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            pass
        subs = self.__dict__.get("subcontracts")
        if isinstance(subs, Subcontracts):
            entry = subs.by_field(name)
            if entry is not None:
                return entry.config
            known = subs.integration_fields
        else:
            known = []
        raise AttributeError(
            f"{type(self).__name__!r} has no attribute {name!r}{did_you_mean(name, known)}; "
            f"known integration fields: {', '.join(known) or '(none)'}. Check the "
            "subcontract's integration_field and path, and that the contract loaded.")

    def capability_config_for(self, name: str, key: str | None = None) -> tuple[Any, str] | None:
        """The configuration this contract gives capability ``name``, and where it came from.

        Args:
            name: the canonical capability name.
            key: its subcontract key, when it differs (event_bus: ``event_type``).

        Returns:
            ``(config, source)`` or ``None`` when the contract does not configure it.
        """
        entry = self.subcontracts.for_capability(name, key)
        if entry is None:
            return None
        return entry.config, f"contract {entry.source}"

    @property
    def all_capabilities(self) -> list[str]:
        """``capabilities`` followed by those only named by a subcontract (no repeats)."""
        out = list(self.capabilities)
        out += [c for c in self.subcontracts.capabilities if c not in out]
        return out

    def to_data(self) -> dict[str, Any]:
        """The contract as YAML-shaped plain data."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["node_type"] = self.node_type.value
        return {"node_type": data.pop("node_type"), **data}


_RESERVED = frozenset(dir(ModelContract)) | frozenset(ModelContract.model_fields)


class ModelContractCompute(ModelContract):
    """A COMPUTE node's contract (``node_type`` defaults to COMPUTE)."""

    NODE_TYPE: ClassVar[EnumNodeType | None] = EnumNodeType.COMPUTE
    node_type: NodeTypeField = EnumNodeType.COMPUTE


class ModelContractEffect(ModelContract):
    """An EFFECT node's contract."""

    NODE_TYPE: ClassVar[EnumNodeType | None] = EnumNodeType.EFFECT
    node_type: NodeTypeField = EnumNodeType.EFFECT


class ModelContractReducer(ModelContract):
    """A REDUCER node's contract."""

    NODE_TYPE: ClassVar[EnumNodeType | None] = EnumNodeType.REDUCER
    node_type: NodeTypeField = EnumNodeType.REDUCER


class ModelContractOrchestrator(ModelContract):
    """An ORCHESTRATOR node's contract."""

    NODE_TYPE: ClassVar[EnumNodeType | None] = EnumNodeType.ORCHESTRATOR
    node_type: NodeTypeField = EnumNodeType.ORCHESTRATOR


_BY_TYPE: dict[str, type[ModelContract]] = {
    "COMPUTE": ModelContractCompute,
    "EFFECT": ModelContractEffect,
    "REDUCER": ModelContractReducer,
    "ORCHESTRATOR": ModelContractOrchestrator,
}


def contract_class_for(node_type: Any) -> type[ModelContract]:
    """The contract class of a node type (``"EFFECT"`` -> :class:`ModelContractEffect`).

    Example:
        >>> contract_class_for("REDUCER").__name__
        'ModelContractReducer'
    """
    return _BY_TYPE[check_node_type(node_type)]


NodeKind = Literal["mixin", "node"]


def validation_context(path: str | os.PathLike[str] | None = None, *,
                       root: str | os.PathLike[str] | None = None, registry: Any = None,
                       lines: LineIndex | None = None) -> dict[str, Any]:
    """The Pydantic validation context for a node contract loaded from ``path``."""
    ctx: dict[str, Any] = {"registry": registry}
    if path is not None:
        p = Path(path)
        ctx["file"] = str(path)
        ctx["base_dir"] = p.resolve().parent
        ctx["root"] = Path(root).resolve() if root is not None else find_root(p)
    elif root is not None:
        ctx["root"] = Path(root).resolve()
    if lines is not None:
        ctx["lines"] = lines
    return ctx
